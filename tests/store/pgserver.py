"""A throwaway PostgreSQL server for the store tests and benchmarks.

It uses the server binaries of Debian's ``postgresql`` package (``./dev`` installs it when missing
and apt is available). ``initdb`` runs in a temporary directory as an unprivileged user (``nobody``
when we are root: PostgreSQL refuses to run as root), the server listens on 127.0.0.1 at a free
port and on a Unix socket in that directory only, and :meth:`PostgresServer.stop` removes it all.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path


def find_bindir() -> Path | None:
    """The newest PostgreSQL server binaries on this machine, or None."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """``PostgresServer(fsync=False).start()``; ``dsn()``; ``stop()``."""

    def __init__(self, *, fsync: bool = False) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError(
                "PostgreSQL server binaries not found (apt-get install -y postgresql)"
            )
        self.bindir = bindir
        self.fsync = fsync
        # As root the server runs as nobody, who must reach its directory: keep it in /tmp.
        tmp = "/tmp" if os.geteuid() == 0 else None
        self.root = Path(tempfile.mkdtemp(prefix="codemode-pg-", dir=tmp))
        self.data = self.root / "data"
        self.port = free_port()
        self.user = "codemode"
        self._run_as: list[str] = []
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(self.root, nobody.pw_uid, nobody.pw_gid)
            self._run_as = ["runuser", "-u", "nobody", "--"]
        self.started = False

    def _cmd(self, *args: str) -> list[str]:
        return [*self._run_as, *args]

    def start(self) -> PostgresServer:
        env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        subprocess.run(
            self._cmd(
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                self.user,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ),
            check=True,
            capture_output=True,
            env=env,
            cwd=self.root,
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
            f"-c fsync={'on' if self.fsync else 'off'} -c max_connections=60 "
            "-c shared_buffers=32MB"
        )
        subprocess.run(
            self._cmd(
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.root / "server.log"),
                "-o",
                options,
                "-w",
                "-t",
                "120",
                "start",
            ),
            check=True,
            capture_output=True,
            env=env,
            cwd=self.root,
        )
        self.started = True
        return self

    def dsn(self, dbname: str = "postgres", **options: str) -> str:
        opts = " ".join(f"-c {k}={v}" for k, v in options.items())
        dsn = f"host=127.0.0.1 port={self.port} user={self.user} dbname={dbname}"
        return f"{dsn} options='{opts}'" if opts else dsn

    def new_schema(self) -> str:
        """A fresh schema; a DSN whose search_path is that schema isolates one test's tables."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
        return name

    def stop(self) -> None:
        if self.started:
            subprocess.run(
                self._cmd(
                    str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"
                ),
                capture_output=True,
                cwd=self.root,
            )
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)
