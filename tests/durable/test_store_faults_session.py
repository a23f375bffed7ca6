"""Store faults seen from a durable session (``SessionRuntime(store=..., session_id=...)``).

The store's own faults (torn transactions, a full or read-only database, a newer schema, racing
``open_session`` calls) are tested at the store level in tests/store/test_store_faults.py; these
tests check what a *session* makes of them: a journal from a newer schema refused on ``open``,
processes racing to open one session, a process killed while a step's batch is written, and a
store that becomes read-only or full under running cells. (A SQLite file cannot be made read-only
under a running session: a filesystem with files open for writing cannot be remounted read-only;
the store tests open one on a read-only filesystem. PostgreSQL can, with a configuration reload.)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "store"))
from fault_session_child import (
    BIG,
    NEVER,
    TORN_SOURCE,
    BigDelegate,
    token,
    torn_expected,
)
from pgserver import PostgresServer
from store_support import (  # the fixtures: imported for pytest to find them
    Backend,
    backend_fixture,  # noqa: F401
    new_id,
    postgres_server_fixture,  # noqa: F401
)
from test_store_faults import tmpfs  # the store tests' small tmpfs (root only; skips otherwise)

from codemode import (
    Completed,
    CreateCellRequest,
    NestedToolCall,
    OutputItem,
    Pending,
    PostgresStore,
    SessionBusy,
    SessionRuntime,
    SqliteStore,
    StoreError,
    TextItem,
    ToolDefinition,
    Yielded,
)
from codemode.store import sqlite as sqlite_module
from codemode.store.lease import LeaseKeeper

CHILD = Path(__file__).parent / "fault_session_child.py"

pytestmark = pytest.mark.skipif(
    "store" not in inspect.signature(SessionRuntime.__init__).parameters,
    reason="durable sessions (SessionRuntime(store=...)) not built yet",
)


def _texts(items: Sequence[OutputItem]) -> list[str]:
    assert all(isinstance(item, TextItem) for item in items), items
    return [item.text for item in items if isinstance(item, TextItem)]


def child(backend: Backend, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), backend.name, backend.location, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def _readline(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = (await asyncio.to_thread(proc.stdout.readline)).strip()
    if not line and proc.stderr is not None:
        raise AssertionError(await asyncio.to_thread(proc.stderr.read))
    return line


def _runtime(backend: Backend, sid: str, delegate: Any = None, lease: float = 10.0) -> Any:
    return SessionRuntime(
        delegate or BigDelegate(), store=backend.make(lease_seconds=lease), session_id=sid
    )


async def _open_when_free(backend: Backend, sid: str, delegate: Any, lease: float) -> Any:
    """Open ``sid`` once the (2 s) lease of a killed holder has run out; this runtime's own
    lease is ``lease`` (a loaded machine may stall a loop for a second). The store of each
    refused attempt is closed (a PostgreSQL server has few connections to spare)."""
    deadline = time.monotonic() + 60
    while True:
        store = backend.make_store(backend.location, lease_seconds=lease)
        rt = SessionRuntime(delegate, store=store, session_id=sid)
        try:
            await rt.open()
        except SessionBusy:
            await store.close()
            assert time.monotonic() < deadline, "the dead holder's lease never ran out"
            await asyncio.sleep(0.1)
            continue
        backend.stores.append(store)
        return rt


@contextlib.asynccontextmanager
async def _children(procs: list[subprocess.Popen[str]]) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            await asyncio.to_thread(proc.wait)


# ------------------------------------------------------------------------------ newer schema


async def _set_version(backend: Backend, version: int) -> None:
    if backend.name == "sqlite":
        conn = sqlite3.connect(backend.location)
        with conn:
            conn.execute("UPDATE codemode_schema_version SET version = ?", (version,))
        conn.close()
    else:
        async with await psycopg.AsyncConnection.connect(backend.location, autocommit=True) as c:
            await c.execute("UPDATE codemode_schema_version SET version = %s", (version,))


async def test_a_journal_from_a_newer_schema_is_refused_on_open_and_left_intact(
    backend: Backend,
) -> None:
    """A session whose store was written by a newer codemode: ``open`` raises ``StoreError``
    naming both versions, the runtime stays unopened (``cell()`` still says to open first), and
    the store is untouched: once the version is back, the session opens and its cell is there."""
    sid = new_id()
    rt = _runtime(backend, sid)
    await rt.open()
    cell = await rt.create_cell(
        CreateCellRequest("await tools.never({});", (NEVER,), idempotency_key="k")
    )
    await rt.suspend()
    supported = sqlite_module.SCHEMA_VERSION
    await _set_version(backend, supported + 1)
    refused = _runtime(backend, sid)
    with pytest.raises(StoreError) as info:
        await refused.open()
    text = str(info.value)
    assert f"schema version {supported + 1}" in text, text
    assert f"newer than this codemode supports ({supported})" in text, text
    with pytest.raises(RuntimeError, match="open the session first"):
        refused.cell(cell.cell_id)
    await _set_version(backend, supported)
    again = _runtime(backend, sid)
    await again.open()
    assert again.cell(cell.cell_id).cell_id == cell.cell_id
    await again.shutdown()


# ------------------------------------------------------------------------------ racing opens


async def test_processes_racing_to_open_one_session_exactly_one_wins(
    backend: Backend, tmp_path: Path
) -> None:
    """Four processes open one session at once: exactly one gets it, the others ``SessionBusy``.
    While the winner holds it, this process cannot open it either; once the winner suspends, it
    opens at once and finds the winner's cell recovered (its unanswered call asked again)."""
    sid = new_id()
    go, stop = tmp_path / "go", tmp_path / "stop"
    procs = [child(backend, "open", sid, f"owner-{i}", str(go), str(stop)) for i in range(4)]
    async with _children(procs):
        for proc in procs:
            assert await _readline(proc) == "ready"
        go.touch()
        results = [await _readline(proc) for proc in procs]
        assert sorted(results) == ["busy", "busy", "busy", "won"], results
        winner = procs[results.index("won")]
        cell_id = await _readline(winner)
        for proc in procs:
            if proc is not winner:
                assert await asyncio.to_thread(proc.wait) == 0
        with pytest.raises(SessionBusy, match=f"code mode session {sid} is open elsewhere"):
            await _runtime(backend, sid).open()
        stop.touch()
        assert await asyncio.wait_for(asyncio.to_thread(winner.wait), 60) == 0
    delegate = BigDelegate()
    rt = _runtime(backend, sid, delegate)
    await rt.open()  # released by the winner's suspend: no wait for the lease
    assert rt.cell(cell_id).cell_id == cell_id
    for _ in range(200):
        if delegate.calls:
            break
        await asyncio.sleep(0.02)
    assert delegate.calls == [(cell_id, "tool-1")]
    await rt.shutdown()


# -------------------------------------------------------------------- torn write of a batch


async def test_a_process_killed_while_writing_a_steps_batch_leaves_a_consistent_session(
    backend: Backend, tmp_path: Path
) -> None:
    """A child runs a cell whose steps each record hundreds of ~1 KB tool results in one batch
    and is SIGKILLed at a random instant (four rounds). This process then reopens the session
    and observes the cell to its end: the output is exactly the expected one (the child never
    observed it, so nothing was delivered before), the journal has no gap, and no call whose
    result the store holds is asked again, while every other call is."""
    seed = int(os.environ.get("CODEMODE_FAULT_SEED") or random.randrange(2**32))
    print(f"\ntorn batch: CODEMODE_FAULT_SEED={seed}")
    rng = random.Random(seed)
    for round_ in range(4):
        sid = new_id()
        log = tmp_path / f"calls-{round_}.log"
        proc = child(backend, "torn", sid, str(log))
        async with _children([proc]):
            ready, cell_id = (await _readline(proc)).split()
            assert ready == "ready"
            await asyncio.sleep(rng.uniform(0.0, 0.25))  # the cell runs for ~0.2 s
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait)
        reader = backend.make()
        journal = await reader.read_journal(sid, cell_id)
        assert [e.seq for e in journal] == list(range(1, len(journal) + 1))
        recorded = json.dumps([e.payload for e in journal])
        child_calls = {tuple(json.loads(line)) for line in log.read_text().splitlines()}
        delegate = BigDelegate()
        rt = await _open_when_free(backend, sid, delegate, 10.0)
        cell = await rt.create_cell(CreateCellRequest(TORN_SOURCE, (BIG,), idempotency_key="torn"))
        assert cell.cell_id == cell_id
        items: list[str] = []
        while True:
            event = await rt.wait(cell, 30)
            items.extend(_texts(event.items))
            if not isinstance(event, Yielded):
                break
        assert isinstance(event, Completed) and event.error_text is None, event
        assert items == torn_expected()
        asked_again = [c for c in delegate.calls if token(*c) in recorded]
        assert asked_again == [], f"round {round_}: recorded calls asked again: {asked_again[:5]}"
        assert len(delegate.calls) == len(set(delegate.calls))
        unrecorded = {c for c in child_calls if token(*c) not in recorded}
        assert unrecorded <= set(delegate.calls), "a call issued, unanswered, never issued again"
        await rt.shutdown()


# ------------------------------------------------------------------- stopping a lease keeper


class _StopOnRenewal:
    """A SqliteStore whose ``renew_lease``, once armed, asks the keeper to stop just as the
    renewal returns (what a ``shutdown()`` or ``suspend()`` does when it comes at that moment)."""

    def __init__(self, inner: SqliteStore) -> None:
        self.inner = inner
        self.keeper: LeaseKeeper | None = None
        self.armed = False
        self.stopper: asyncio.Future[None] | None = None
        self.stopping = asyncio.Event()

    @property
    def lease_seconds(self) -> float:
        return self.inner.lease_seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def renew_lease(self, session_id: str, owner: str) -> Any:
        lease = await self.inner.renew_lease(session_id, owner)
        if self.armed and self.keeper is not None:
            self.armed = False
            self.stopper = asyncio.ensure_future(self.keeper.stop(release=True))
            self.stopping.set()
        return lease


async def test_a_lease_keeper_stopped_as_a_renewal_returns_stops(tmp_path: Path) -> None:
    """Deterministic: the stop is requested from inside the renewal, so the keeper's task is
    cancelled after ``renew_lease`` completed and before ``wait_for`` resumed."""
    store = _StopOnRenewal(SqliteStore(tmp_path / "s.db", lease_seconds=0.3))
    keeper = LeaseKeeper(store, "s1", "A")
    store.keeper = keeper
    try:
        await keeper.open(limits={})
        store.armed = True
        await asyncio.wait_for(store.stopping.wait(), 10)
        assert store.stopper is not None
        done, _ = await asyncio.wait({store.stopper}, timeout=5)
        assert done, "LeaseKeeper.stop() did not return"
    finally:
        keeper.cancel()
        await store.inner.close()


# ------------------------------------------------------- a store that fails under running cells

STEP = ToolDefinition("step", "Returns its input's i after 30 ms.")
RUNNER = "for (let i = 0; i < 40; i++) { text(`a${i}`); await tools.step({i}); } store('a', 40);"
PAUSED = "text('b0'); const x = await tools.step({i: 7}); text(`b${x}`); store('b', x);"


class _Slow:
    async def invoke_tool(self, call: NestedToolCall) -> Any:
        await asyncio.sleep(0.03)
        return call.input["i"]

    async def notify(self, call_id: str, cell_id: str, text: str) -> None:
        pass


async def _fail_under_running_cells(
    make_runtime: Any, break_store: Any, repair_store: Any, says: str
) -> None:
    """The scenario of the two tests below: a continuing cell that calls a tool every 30 ms and
    a pausable cell at its first frontier run in a durable session when the store starts
    refusing writes. What a caller of the first runtime sees, precisely:

    - the running cell's next step cannot be recorded, so every cell stops here, as at a
      suspend (nothing a cell did after its last recorded step reaches anyone): the next
      ``wait`` raises ``StoreError`` with the store's text, and so does every later call of the
      runtime on any cell, the same error each time (never ``MissingCell``: the cells are not
      closed, the store holds them open, and ``is_live`` says so);
    - ``create_cell`` raises ``StoreError`` (its admission cannot be recorded);
    - ``shutdown()`` returns (it cannot delete the session's cells: they stay in the store).

    Nothing recorded is lost: once the store accepts writes again, a new runtime reopens the
    session and recovers both cells. Across the two runtimes the continuing cell's output is
    whole, each item once; the pausable cell is back at its first frontier and completes."""
    rt = await make_runtime()
    runner = await rt.create_cell(CreateCellRequest(RUNNER, (STEP,), idempotency_key="runner"))
    paused = await rt.create_pausable_cell(
        CreateCellRequest(PAUSED, (STEP,), idempotency_key="paused")
    )
    first = await rt.wait(runner, 0.3)
    assert isinstance(first, Yielded) and first.items
    items = _texts(first.items)
    frontier = await rt.wait_to_pending(paused)
    assert isinstance(frontier, Pending) and frontier.frontier.generation == 1
    await break_store()
    with pytest.raises(StoreError, match=says) as info:
        for _ in range(50):  # the cell's next step is at most 30 ms away
            event = await rt.wait(runner, 0.1)
            assert isinstance(event, Yielded), event
            items.extend(_texts(event.items))
    failure = info.value
    for _ in range(2):
        with pytest.raises(StoreError) as again:
            await rt.wait(runner, 0.1)
        assert again.value is failure
    assert rt.is_live(runner.cell_id) and rt.is_live(paused.cell_id)
    with pytest.raises(StoreError, match=says):
        await rt.create_cell(CreateCellRequest("text(1)"))
    for call in (
        lambda: rt.wait_to_pending(paused),
        lambda: rt.resume(paused, 1),
        lambda: rt.terminate(runner),
        lambda: rt.create_cell(CreateCellRequest(RUNNER, (STEP,), idempotency_key="runner")),
    ):
        with pytest.raises(StoreError) as again:
            await call()
        assert again.value is failure
    for sync_call in (
        lambda: rt.cell(runner.cell_id),
        lambda: rt.pausable_cell(paused.cell_id),
        lambda: rt.awaiting_approval(paused),
    ):
        with pytest.raises(StoreError) as again:
            sync_call()
        assert again.value is failure
    await asyncio.wait_for(rt.shutdown(), 30)
    assert not rt.is_alive

    await repair_store()
    deadline = time.monotonic() + 60
    while True:
        try:
            rt2 = await make_runtime()
            break
        except SessionBusy:  # the first runtime could not release its lease
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    while True:
        event = await rt2.wait(rt2.cell(runner.cell_id), 10)
        items.extend(item.text for item in event.items)
        if not isinstance(event, Yielded):
            break
    assert isinstance(event, Completed) and event.error_text is None, event
    assert items == [f"a{i}" for i in range(40)]
    handle = rt2.pausable_cell(paused.cell_id)
    back = await rt2.wait_to_pending(handle)
    assert back == frontier
    await rt2.resume(handle, 1)
    end = await rt2.wait_to_pending(handle)
    assert isinstance(end, Completed) and _texts(end.items) == ["b7"], end
    await rt2.shutdown()


async def test_a_sqlite_store_that_fills_up_under_running_cells() -> None:
    with tmpfs("4m") as where:
        sid = new_id()
        filler = where / "filler"

        async def make_runtime() -> SessionRuntime:
            store = SqliteStore(where / "sessions.db", lease_seconds=1.0)
            rt = SessionRuntime(_Slow(), store=store, session_id=sid)
            try:
                await rt.open()
            except BaseException:
                await store.close()
                raise
            return rt

        async def fill() -> None:
            def run() -> None:
                with contextlib.suppress(OSError), filler.open("wb") as f:
                    while True:
                        f.write(b"x" * 65536)
                        f.flush()

            await asyncio.to_thread(run)

        async def free() -> None:
            filler.unlink()

        await _fail_under_running_cells(make_runtime, fill, free, "is full")


async def test_a_postgres_store_that_becomes_read_only_under_running_cells(
    postgres_server: PostgresServer,
) -> None:
    """The server is switched to read-only transactions (``default_transaction_read_only``,
    reloaded: the store's open connection is affected at its next transaction)."""
    sid = new_id()
    dsn = postgres_server.dsn(search_path=postgres_server.new_schema())

    async def make_runtime() -> SessionRuntime:
        rt = SessionRuntime(_Slow(), store=PostgresStore(dsn, lease_seconds=1.0), session_id=sid)
        await rt.open()
        return rt

    async def read_only(on: bool) -> None:
        async with await psycopg.AsyncConnection.connect(
            postgres_server.dsn(), autocommit=True
        ) as admin:
            await admin.execute("SET default_transaction_read_only = off")
            if on:
                await admin.execute("ALTER SYSTEM SET default_transaction_read_only = on")
            else:
                await admin.execute("ALTER SYSTEM RESET default_transaction_read_only")
            await admin.execute("SELECT pg_reload_conf()")
        await asyncio.sleep(0.2)  # the reload reaches every backend

    try:
        await _fail_under_running_cells(
            make_runtime, lambda: read_only(True), lambda: read_only(False), "read-only"
        )
    finally:
        await read_only(False)
