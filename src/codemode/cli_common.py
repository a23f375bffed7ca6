"""What the ``codemode`` commands (``run``, ``serve``, ``mcp``) share: exit statuses, the version
line, logging to stderr, ``HOST:PORT`` parsing and a quiet end when stdout's reader goes away.

One rule, one place: the fronts call these instead of keeping copies of their own.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from codemode.store.base import SessionStore

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "LOG_FORMAT",
    "LOG_LEVEL_ENV",
    "StoreOptions",
    "configure_logging",
    "is_postgres_dsn",
    "open_store",
    "parse_host_port",
    "positive_seconds",
    "session_id_problem",
    "silence_stdout",
    "version_text",
]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_TERMINATED: Final = 3

LOG_LEVEL_ENV: Final = "CODEMODE_LOG_LEVEL"
LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def version_text() -> str:
    """``codemode {version}``: what ``codemode --version`` prints."""
    from codemode import __version__

    return f"codemode {__version__}"


def configure_logging(default_level: str = "INFO") -> None:
    """Log to stderr, one line per record (:data:`LOG_FORMAT`): codemode's own loggers at the level
    named by ``$CODEMODE_LOG_LEVEL`` (default ``default_level``: ``INFO`` for the servers, whose
    stderr is a log; an unknown name means the default), every other library at ``WARNING``.
    Leaves an application's logging alone when the root logger already has handlers (only
    codemode's level is set then)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
    known = logging.getLevelNamesMapping()
    fallback = known.get(default_level.upper(), logging.INFO)
    name = os.environ.get(LOG_LEVEL_ENV, default_level).strip().upper()
    level = known.get(name, fallback)
    logging.getLogger("codemode").setLevel(level)


def parse_host_port(text: str, flag: str, *, allow_port_zero: bool = True) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` (binds 127.0.0.1) or ``[IPv6]:PORT``, as ``(host, port)``;
    ``ValueError`` naming ``flag`` otherwise. Port 0 (any free port) only with
    ``allow_port_zero``."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not port_text.isascii() or not port_text.isdigit():
        raise ValueError(f"{flag} expects HOST:PORT or :PORT, got {text!r}")
    port = int(port_text)
    low = 0 if allow_port_zero else 1
    if not low <= port <= 65535:
        raise ValueError(f"{flag} port must be {low}-65535, got {port}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "127.0.0.1", port


def positive_seconds(text: str) -> float:
    """An ``argparse`` type: a number of seconds greater than 0 (``inf`` allowed, ``nan`` not)."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if math.isnan(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def silence_stdout() -> None:
    """After a ``BrokenPipeError`` (the reader of stdout went away, as with ``| head``): point
    stdout at the null device, so neither later prints nor the interpreter's final flush raise."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # pragma: no cover - no usable stdout
        pass


MAX_SESSION_ID: Final = 128


def session_id_problem(session_id: str) -> str | None:
    """Why ``session_id`` cannot name a durable session (``None`` if it can): it must have 1 to
    :data:`MAX_SESSION_ID` characters, none of them a control character or a space."""
    if not 0 < len(session_id) <= MAX_SESSION_ID:
        return f"must have 1 to {MAX_SESSION_ID} characters"
    if any(ch.isspace() or not ch.isprintable() for ch in session_id):
        return "must not contain spaces or control characters"
    return None


def is_postgres_dsn(where: str) -> bool:
    """Whether ``--store`` names a PostgreSQL database: a URL (``postgresql://...``,
    ``postgres://...``) or libpq ``key=value`` pairs (``host=db1 dbname=codemode``); anything
    else is the path of a SQLite file."""
    text = where.strip()
    return text.startswith(("postgresql://", "postgres://")) or "=" in text.split("/")[0]


def open_store(where: str, *, lease_seconds: float = 10.0) -> SessionStore:
    """The store named by ``--store PATH_OR_DSN`` (of ``run``, ``serve`` and ``serve
    --cluster``): a ``PostgresStore`` for a PostgreSQL DSN (:func:`is_postgres_dsn`; several
    processes on several machines may share it), else a ``SqliteStore`` on the file (several
    processes of one machine). Neither touches its database before first use."""
    if is_postgres_dsn(where):
        from codemode.store.postgres import PostgresStore

        return PostgresStore(where.strip(), lease_seconds=lease_seconds)
    from codemode.store.sqlite import SqliteStore

    return SqliteStore(where, lease_seconds=lease_seconds)


@dataclass(frozen=True)
class StoreOptions:
    """``--store PATH_OR_DSN`` and ``--lease-seconds`` of ``codemode run`` and ``codemode
    serve``: the SQLite file or PostgreSQL database durable sessions live in
    (docs/durability.md, "Fronts")."""

    path: str
    lease_seconds: float = 10.0

    def open(self) -> SessionStore:
        """The store :func:`open_store` names (it reaches its database on first use)."""
        return open_store(self.path, lease_seconds=self.lease_seconds)
