"""Helpers and fixtures of the store tests: every test runs against SqliteStore and PostgresStore.

The PostgreSQL server is real: started once per test session from the machine's PostgreSQL
binaries (``./dev`` installs Debian's ``postgresql`` package when it is missing), each test in a
schema of its own. When the binaries cannot be found the PostgreSQL half is skipped, loudly.
Test modules import the fixtures ``backend`` and ``postgres_server`` from here (a conftest.py in
this directory would shadow the one of tests/, which test modules import by name).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pgserver import PostgresServer, find_bindir

from codemode import PostgresStore, SqliteStore
from codemode.store.base import SessionStore

CHILD = Path(__file__).parent / "store_child.py"
_SERVER: PostgresServer | None = None


@dataclass
class Backend:
    """One store backend of a test: ``make()`` opens another store on the same database (as
    another process would), ``location`` is what a child process needs to do the same."""

    name: str
    location: str
    make_store: Callable[..., SessionStore]
    stores: list[SessionStore] = field(default_factory=list)
    keepers: list[Any] = field(default_factory=list)  # LeaseKeepers, stopped at teardown
    server: PostgresServer | None = None
    schema: str | None = None

    def make(self, *, lease_seconds: float = 10.0) -> Any:
        store = self.make_store(self.location, lease_seconds=lease_seconds)
        self.stores.append(store)
        return store

    def child(self, *args: str) -> subprocess.Popen[str]:
        """A child process running tests/store/store_child.py against this backend."""
        return subprocess.Popen(
            [sys.executable, str(CHILD), self.name, self.location, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def new_id() -> str:
    return uuid.uuid4().hex[:16]


_NO_POSTGRES = (
    "\n" + "!" * 78 + "\n"
    "PostgreSQL server binaries are missing, so the PostgresStore tests are SKIPPED.\n"
    "Install them with: apt-get update && apt-get install -y postgresql  (./dev does this)\n"
    + "!"
    * 78
)


@pytest.fixture(scope="session", name="postgres_server")
def postgres_server_fixture() -> Iterator[PostgresServer]:
    if find_bindir() is None:
        warnings.warn(_NO_POSTGRES, stacklevel=1)
        sys.stderr.write(_NO_POSTGRES + "\n")
        pytest.skip(_NO_POSTGRES)
    global _SERVER
    if _SERVER is None:
        _SERVER = PostgresServer().start()
    # Each test module imports this fixture (so pytest sees one definition per module): the
    # server is shared, started by the first and stopped at the end of the session.
    try:
        yield _SERVER
    finally:
        if _SERVER is not None:
            _SERVER.stop()
            _SERVER = None


@pytest.fixture(params=["sqlite", "postgres"], name="backend")
async def backend_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        b = Backend("sqlite", str(tmp_path / "sessions.db"), SqliteStore)
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        schema = server.new_schema()
        b = Backend(
            "postgres",
            server.dsn(search_path=schema),
            PostgresStore,
            server=server,
            schema=schema,
        )
    try:
        yield b
    finally:
        for keeper in b.keepers:
            await keeper.stop()
        for store in b.stores:
            await store.close()
