"""Fixtures of the store contract suite: every test runs against SqliteStore and PostgresStore.

The PostgreSQL server is real: started once per test session from the machine's PostgreSQL
binaries (``./dev`` installs Debian's ``postgresql`` package when it is missing), each test in a
schema of its own. When the binaries cannot be found the PostgreSQL half is skipped, loudly.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pgserver import PostgresServer, find_bindir
from store_support import Backend

from codemode import PostgresStore, SqliteStore

_NO_POSTGRES = (
    "\n" + "!" * 78 + "\n"
    "PostgreSQL server binaries are missing, so the PostgresStore tests are SKIPPED.\n"
    "Install them with: apt-get update && apt-get install -y postgresql  (./dev does this)\n"
    + "!"
    * 78
)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    if find_bindir() is None:
        warnings.warn(_NO_POSTGRES, stacklevel=1)
        sys.stderr.write(_NO_POSTGRES + "\n")
        pytest.skip(_NO_POSTGRES)
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
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
        for store in b.stores:
            await store.close()
