"""Faults a store must survive: a writer killed mid-transaction, processes racing to open one
session, a schema from a newer or an older codemode, a read-only or a full database."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pgserver import PostgresServer
from store_support import (  # the fixtures: imported for pytest to find them
    Backend,
    backend_fixture,  # noqa: F401
    new_id,
    postgres_server_fixture,  # noqa: F401
)

from codemode import PostgresStore, SqliteStore, StoreError
from codemode.store import Batch, Delivery, Entry, NewCell
from codemode.store import postgres as pg_module
from codemode.store import sqlite as sqlite_module

BATCH = 300


async def _readline(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return (await asyncio.to_thread(proc.stdout.readline)).strip()


async def test_a_writer_killed_mid_transaction_leaves_no_torn_batch(backend: Backend) -> None:
    """A child appends batches of BATCH entries plus a stored value, one transaction each, and is
    SIGKILLed at a random instant, three times: every batch is wholly there or wholly absent,
    the stored value matches the last whole batch, and a new owner continues the journal."""
    rng = random.Random(15)
    reader = backend.make(lease_seconds=1.0)
    for round_ in range(3):
        sid = new_id()
        proc = backend.child("writer", sid, str(BATCH))
        try:
            line = await _readline(proc)
            assert line == "ready", (line, proc.stderr.read() if proc.stderr else "")
            committed: list[str] = []
            # Let a few batches commit, then kill at a random instant of the write loop.
            while len(committed) < 2:
                committed.append(await _readline(proc))
            await asyncio.sleep(rng.uniform(0.0, 0.25))
        finally:
            proc.send_signal(signal.SIGKILL)
            # Read the rest through the same buffered reader (communicate() would skip what
            # readline() already buffered).
            assert proc.stdout is not None
            out = await asyncio.to_thread(proc.stdout.read)
            await asyncio.to_thread(proc.wait)
        reported = [int(x) for x in [*committed, *out.split()] if x.strip()]
        journal = await reader.read_journal(sid, "c1")
        batches: dict[int, int] = {}
        for entry in journal:
            batches[entry.payload["batch"]] = batches.get(entry.payload["batch"], 0) + 1
        whole = len(batches)
        assert set(batches) == set(range(whole)), f"round {round_}: batches {sorted(batches)}"
        assert all(n == BATCH for n in batches.values()), f"round {round_}: a torn batch"
        assert [e.seq for e in journal] == list(range(1, whole * BATCH + 1))
        # Every batch the child saw committed is there; at most one more committed unseen.
        assert reported == list(range(len(reported)))
        assert whole in (len(reported), len(reported) + 1)
        assert await reader.get_values(sid) == {"last": whole - 1}
    # The last round's session: its holder is dead; a new owner takes over after the lease.
    await asyncio.sleep(1.2)
    taker = backend.make(lease_seconds=5.0)
    assert (await taker.open_session(sid, "taker", limits={})).lease.taken_over
    seqs = await taker.write(sid, "taker", Batch(entries=[Entry("c1", "step", "after")]))
    assert seqs == [whole * BATCH + 1]


async def test_two_processes_write_their_sessions_in_one_store_at_once(backend: Backend) -> None:
    """Two writer processes share the store (for SQLite: one file), each appending to its own
    session as fast as it can: neither fails on the other's locks, and both journals hold only
    whole batches, in order."""
    sids = [new_id(), new_id()]
    procs = [backend.child("writer", sid, "50") for sid in sids]
    try:
        for proc in procs:
            line = await _readline(proc)
            assert line == "ready", (line, proc.stderr.read() if proc.stderr else "")
        for _ in range(8):  # both make progress while the other writes
            for proc in procs:
                assert (await _readline(proc)).isdigit()
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
        for proc in procs:
            await asyncio.to_thread(proc.wait)
    reader = backend.make()
    for sid in sids:
        journal = await reader.read_journal(sid, "c1")
        assert len(journal) >= 8 * 50 and len(journal) % 50 == 0
        assert [e.seq for e in journal] == list(range(1, len(journal) + 1))
        assert [e.payload["batch"] for e in journal[::50]] == list(range(len(journal) // 50))


async def test_processes_racing_to_open_one_session_exactly_one_wins(
    backend: Backend, tmp_path: Path
) -> None:
    sid = new_id()
    gofile = tmp_path / "go"
    procs = [backend.child("open", sid, f"owner-{i}", str(gofile)) for i in range(4)]
    try:
        for proc in procs:
            line = await _readline(proc)
            assert line == "ready", (line, proc.stderr.read() if proc.stderr else "")
        gofile.touch()
        results = []
        for proc in procs:
            assert proc.stdout is not None and proc.stderr is not None
            out = await asyncio.to_thread(proc.stdout.read)
            err = await asyncio.to_thread(proc.stderr.read)
            assert await asyncio.to_thread(proc.wait) == 0, err
            results.append(out.strip())
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert sorted(results) == ["busy", "busy", "busy", "won"]
    winner = f"owner-{results.index('won')}"
    store = backend.make()
    lease = await store.get_lease(sid)
    assert lease is not None and lease.owner == winner and lease.epoch == 1
    session = await store.get_session(sid)
    assert session is not None and session.limits == {"owner": winner}


# ---------------------------------------------------------------------------------- schemas


async def _set_version(backend: Backend, version: int) -> None:
    if backend.name == "sqlite":
        conn = sqlite3.connect(backend.location)
        with conn:
            conn.execute("UPDATE codemode_schema_version SET version = ?", (version,))
        conn.close()
    else:
        async with await psycopg.AsyncConnection.connect(backend.location, autocommit=True) as c:
            await c.execute("UPDATE codemode_schema_version SET version = %s", (version,))


async def test_a_store_from_a_newer_schema_is_refused(backend: Backend) -> None:
    store = backend.make()
    await store.open_session("s1", "A", limits={})
    await store.close()
    newer = sqlite_module.SCHEMA_VERSION + 1
    await _set_version(backend, newer)
    fresh = backend.make()
    with pytest.raises(StoreError) as info:
        await fresh.get_session("s1")
    text = str(info.value)
    assert f"schema version {newer}" in text and "newer than this codemode supports" in text
    assert "upgrade codemode" in text


async def test_a_store_of_the_previous_schema_is_migrated_forward(backend: Backend) -> None:
    """A database written by the previous schema (version 1: no delivered-event boundaries)
    is migrated on open; its sessions, cells, journals, values and keys are kept."""
    assert sqlite_module.SCHEMA_VERSION == pg_module.SCHEMA_VERSION == 2
    rows = [
        "INSERT INTO codemode_sessions VALUES ('s1', '{\"max_cells\":2}', 1.0)",
        "INSERT INTO codemode_leases (session_id, owner, expires_at, epoch) "
        "VALUES ('s1', NULL, {zero}, 3)",
        "INSERT INTO codemode_cells (session_id, cell_id, kind, request, idempotency_key, "
        "fingerprint, state, created, entries) "
        "VALUES ('s1', 'c1', 'pausable', '{\"code\":\"x\"}', 'k1', 'fp', 'open', 2.0, 2)",
        "INSERT INTO codemode_journal VALUES ('s1', 'c1', 1, 'boot', '{}')",
        "INSERT INTO codemode_journal VALUES ('s1', 'c1', 2, 'step', '[1]')",
        "INSERT INTO codemode_values VALUES ('s1', 'v', '\"kept\"')",
        "INSERT INTO codemode_keys (session_id, key, fingerprint, cell_id) "
        "VALUES ('s1', 'k1', 'fp', 'c1')",
    ]
    if backend.name == "sqlite":
        conn = sqlite3.connect(backend.location, isolation_level=None)
        SqliteStore(backend.location)._migrate(conn, 1)
        for row in rows:
            conn.execute(row.replace("{zero}", "0"))
        conn.close()
    else:
        async with await psycopg.AsyncConnection.connect(backend.location, autocommit=True) as c:
            await pg_module.migrate(c, 1, "test")
            for row in rows:
                await c.execute(row.replace("{zero}", "'epoch'"))
    store = backend.make()
    opened = await store.open_session("s1", "A", limits={})
    assert not opened.created and opened.session.limits == {"max_cells": 2}
    assert opened.lease.epoch == 4
    cell = await store.get_cell("s1", "c1")
    assert cell is not None and cell.entries == 2 and cell.delivered == 0
    assert [e.payload for e in await store.read_journal("s1", "c1")] == [{}, [1]]
    assert await store.get_values("s1") == {"v": "kept"}
    # What version 2 added works on the migrated data.
    assert await store.write(
        "s1", "A", Batch(entries=[Entry("c1", "step", 3)], deliveries=[Delivery("c1", 4)])
    ) == [3]
    assert await store.deliveries("s1", "c1") == [4]
    if backend.name == "sqlite":
        conn = sqlite3.connect(backend.location)
        assert conn.execute("SELECT version FROM codemode_schema_version").fetchall() == [(2,)]
        conn.close()


# ------------------------------------------------------------------- read-only and full stores


@contextlib.contextmanager
def tmpfs(size: str) -> Iterator[Path]:
    """A small tmpfs mounted on a fresh directory (root only); skips the test otherwise."""
    where = Path(tempfile.mkdtemp(prefix="codemode-tmpfs-"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs to fill up or make read-only: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
        with contextlib.suppress(OSError):
            where.rmdir()


async def test_sqlite_on_a_read_only_filesystem_gives_a_clear_store_error() -> None:
    with tmpfs("4m") as where:
        path = where / "sessions.db"
        store = SqliteStore(path)
        await store.open_session("s1", "A", limits={})
        await store.write("s1", "A", Batch(values={"v": 1}))
        await store.release_lease("s1", "A")
        await store.close()
        remount = ["mount", "-o", "remount,ro", str(where)]
        await asyncio.to_thread(subprocess.run, remount, check=True)
        ro = SqliteStore(path)
        try:
            with pytest.raises(StoreError, match="read-only"):
                await ro.open_session("s1", "B", limits={})
        finally:
            await ro.close()


async def test_sqlite_on_a_full_disk_gives_a_clear_store_error_and_keeps_what_committed() -> None:
    with tmpfs("1m") as where:
        path = where / "sessions.db"
        store = SqliteStore(path)
        await store.open_session("s1", "A", limits={})
        await store.write("s1", "A", Batch(cells=[NewCell("c1", "continuing", {})]))
        written = 0
        with pytest.raises(StoreError, match="full") as info:
            for _ in range(200):
                entries = [Entry("c1", "step", "x" * 2000) for _ in range(20)]
                await store.write("s1", "A", Batch(entries=entries))
                written += 20
        assert written > 0, info.value
        # The failed batch left nothing; the store still answers, and a reader agrees.
        assert len(await store.read_journal("s1", "c1")) == written
        await store.close()
        reader = SqliteStore(path)
        try:
            assert len(await reader.read_journal("s1", "c1")) == written
        finally:
            await reader.close()


async def test_postgres_read_only_database_gives_a_clear_store_error(backend: Backend) -> None:
    if backend.name != "postgres":
        pytest.skip("PostgreSQL only (SQLite: the read-only filesystem test)")
    store = backend.make()
    await store.open_session("s1", "A", limits={"n": 1})
    await store.release_lease("s1", "A")
    assert backend.server is not None and backend.schema is not None
    ro = PostgresStore(
        backend.server.dsn(search_path=backend.schema, default_transaction_read_only="on")
    )
    backend.stores.append(ro)
    session = await ro.get_session("s1")  # reading still works
    assert session is not None and session.limits == {"n": 1}
    with pytest.raises(StoreError, match="read-only"):
        await ro.open_session("s1", "B", limits={})


async def test_postgres_full_tablespace_gives_a_clear_store_error(backend: Backend) -> None:
    if backend.name != "postgres":
        pytest.skip("PostgreSQL only (SQLite: the full-disk test)")
    assert backend.server is not None and backend.schema is not None
    with tmpfs("2m") as where:
        if os.geteuid() == 0:
            import pwd

            nobody = pwd.getpwnam("nobody")
            os.chown(where, nobody.pw_uid, nobody.pw_gid)
        name = "tiny_" + new_id()
        async with await psycopg.AsyncConnection.connect(
            backend.server.dsn(), autocommit=True
        ) as admin:
            await admin.execute(f"CREATE TABLESPACE {name} LOCATION '{where}'")
        store = PostgresStore(
            backend.server.dsn(search_path=backend.schema, default_tablespace=name)
        )
        backend.stores.append(store)
        try:
            await store.open_session("s1", "A", limits={})
            await store.write("s1", "A", Batch(cells=[NewCell("c1", "continuing", {})]))
            written = 0
            with pytest.raises(StoreError, match="full"):
                for _ in range(400):
                    entries = [Entry("c1", "step", os.urandom(1500).hex()) for _ in range(20)]
                    await store.write("s1", "A", Batch(entries=entries))
                    written += 20
            assert written > 0
            assert len(await store.read_journal("s1", "c1")) == written
        finally:
            await store.close()
            async with await psycopg.AsyncConnection.connect(
                backend.server.dsn(search_path=backend.schema), autocommit=True
            ) as admin:
                for table in (
                    "codemode_journal",
                    "codemode_deliveries",
                    "codemode_cells",
                    "codemode_values",
                    "codemode_keys",
                    "codemode_leases",
                    "codemode_sessions",
                    "codemode_schema_version",
                ):
                    await admin.execute(f"DROP TABLE IF EXISTS {table}")
                await admin.execute(f"DROP TABLESPACE IF EXISTS {name}")


# ------------------------------------------------------------- unreachable, corrupt, cancelled


async def test_a_cancelled_write_lands_whole_or_not_at_all_and_the_store_goes_on(
    backend: Backend,
) -> None:
    store = backend.make()
    sid = new_id()
    await store.open_session(sid, "A", limits={})
    await store.write(sid, "A", Batch(cells=[NewCell("c1", "continuing", {})]))
    big = Batch(entries=[Entry("c1", "step", {"i": i, "pad": "y" * 300}) for i in range(3000)])
    task = asyncio.create_task(store.write(sid, "A", big))
    await asyncio.sleep(0.005)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    after = await store.write(sid, "A", Batch(entries=[Entry("c1", "step", "next")]))
    journal = await store.read_journal(sid, "c1")
    assert len(journal) in (1, 3001)
    assert after == [len(journal)]
    assert journal[-1].payload == "next"


async def test_sqlite_a_file_that_is_not_a_database_gives_a_clear_store_error(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sessions.db"
    path.write_bytes(b"this is not a database, " * 200)
    store = SqliteStore(path)
    try:
        with pytest.raises(StoreError, match="corrupt or not a SQLite database"):
            await store.get_session("s1")
    finally:
        await store.close()


async def test_postgres_unreachable_then_a_dropped_connection_is_replaced(
    backend: Backend,
) -> None:
    if backend.name != "postgres":
        pytest.skip("PostgreSQL only")
    assert backend.server is not None
    from pgserver import free_port

    nowhere = PostgresStore(f"host=127.0.0.1 port={free_port()} user=x dbname=x")
    backend.stores.append(nowhere)
    with pytest.raises(StoreError, match="unreachable"):
        await nowhere.get_session("s1")
    store = backend.make()
    await store.open_session("s1", "A", limits={})
    async with await psycopg.AsyncConnection.connect(backend.server.dsn(), autocommit=True) as c:
        await c.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND query NOT LIKE '%%pg_stat_activity%%' "
            "AND datname = 'postgres' AND backend_type = 'client backend'"
        )
    with pytest.raises(StoreError, match="unreachable"):
        await store.get_session("s1")
    session = await store.get_session("s1")  # a new connection
    assert session is not None
    await store.write("s1", "A", Batch(values={"v": 1}))
    assert await store.get_values("s1") == {"v": 1}


def test_a_store_serves_one_event_loop_after_another(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """A store outlives an event loop: each ``asyncio.run`` may use it (PostgresStore opens a
    new connection for the new loop)."""
    dsn = postgres_server.dsn(search_path=postgres_server.new_schema())
    for store in (SqliteStore(tmp_path / "s.db"), PostgresStore(dsn)):
        asyncio.run(store.open_session("s1", "A", limits={"n": 1}))
        asyncio.run(store.write("s1", "A", Batch(values={"v": 2})))
        assert asyncio.run(store.get_values("s1")) == {"v": 2}
        asyncio.run(store.close())
