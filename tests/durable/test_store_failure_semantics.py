"""What a caller of a durable session sees once its store refuses a write (docs/durability.md,
"When the store fails"): every cell stops here as at a suspend, every later call raises that
same ``StoreError`` (never ``MissingCell``: the cells are not closed), observers waiting at that
moment get it at once, and nothing is lost or repeated: a later runtime recovers every cell
from its last recorded step.

The faults are injected into a real ``SqliteStore`` (its ``write`` refuses while a flag is set,
with the text a full disk gives), so each test picks the exact step that fails; the tests of
real full and read-only stores are in test_store_faults_session.py."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from codemode import (
    Completed,
    CreateCellRequest,
    NestedToolCall,
    Pending,
    SessionRuntime,
    SqliteStore,
    StoreError,
    TextItem,
    ToolDefinition,
    Yielded,
)
from codemode.store import Batch, Entry

STEP = ToolDefinition("step", "One step.")
FULL = "the SQLite store x is full: database or disk is full"


class FlakyStore(SqliteStore):
    """A real SqliteStore whose writes fail with ``StoreError`` while :attr:`refusing`."""

    refusing = False

    async def write(self, session_id: str, owner: str, batch: Batch) -> list[int]:
        if self.refusing:
            raise StoreError(FULL)
        return await super().write(session_id, owner, batch)

    def write_now(self, session_id: str, owner: str, batch: Batch) -> list[int] | None:
        """A store's synchronous fast path of ``write``, where it has one (None: not written,
        use ``write``)."""
        if self.refusing:
            raise StoreError(FULL)
        inner = getattr(super(), "write_now", None)
        return None if inner is None else inner(session_id, owner, batch)

    def write_entry_now(self, session_id: str, owner: str, entry: Entry) -> int | None:
        """The same for a batch of one entry (an engine step's)."""
        if self.refusing:
            raise StoreError(FULL)
        return super().write_entry_now(session_id, owner, entry)


class Gate:
    """A delegate whose calls wait until :attr:`release` is set; each answers its input's ``i``."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls: list[tuple[str, str]] = []

    async def invoke_tool(self, call: NestedToolCall) -> Any:
        self.calls.append((call.cell_id, call.call_id))
        await self.release.wait()
        return call.input["i"]

    async def notify(self, call_id: str, cell_id: str, text: str) -> None:
        pass


def texts(items: Any) -> list[str]:
    return [item.text for item in items if isinstance(item, TextItem)]


async def until(condition: Any, bound: float = 20.0) -> None:
    deadline = time.monotonic() + bound
    while not await condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def observe_to_end(rt: SessionRuntime, cell_id: str) -> tuple[list[str], Any]:
    items: list[str] = []
    while True:
        event = await rt.wait(rt.cell(cell_id), 10)
        items += texts(event.items)
        if not isinstance(event, Yielded):
            return items, event


async def test_a_completion_whose_delivery_cannot_be_recorded_is_never_lost(
    tmp_path: Path,
) -> None:
    """The cell completes in memory, but the write that would record its completion (with its
    delivery) fails: the ``wait`` that would have delivered it raises ``StoreError``, so do the
    next ones (not ``MissingCell``), and the recovered cell delivers the completion with the
    output not delivered before, each item once."""
    path = tmp_path / "s.db"
    gate = Gate()
    store = FlakyStore(path, lease_seconds=10.0)
    rt = SessionRuntime(gate, store=store)
    await rt.open()
    cell = await rt.create_cell(
        CreateCellRequest('text("a"); const r = await tools.step({i: "r"}); text(r);', (STEP,))
    )
    first = await rt.wait(cell, 0.3)
    assert isinstance(first, Yielded) and texts(first.items) == ["a"]
    assert gate.calls == [(cell.cell_id, "tool-1")]
    gate.release.set()  # the step with tool-1's result is recorded; the cell completes in memory

    async def step_recorded() -> bool:
        journal = await store.read_journal(rt.session_id, cell.cell_id)
        return any(entry.kind == "step" for entry in journal)

    await until(step_recorded)
    store.refusing = True
    with pytest.raises(StoreError, match="is full") as info:
        await rt.wait(cell, 5)
    for _ in range(2):
        with pytest.raises(StoreError) as again:
            await rt.wait(cell, 5)
        assert again.value is info.value
    await rt.shutdown()
    await store.close()

    rt2 = SessionRuntime(gate, store=SqliteStore(path), session_id=rt.session_id)
    async with rt2:
        items, end = await observe_to_end(rt2, cell.cell_id)
        assert isinstance(end, Completed) and end.error_text is None, end
        assert items == ["r"]  # "a" was delivered before the failure: not again
        assert gate.calls == [(cell.cell_id, "tool-1")]  # the recorded answer is not asked again


async def test_observers_waiting_when_the_store_fails_get_the_store_error_at_once(
    tmp_path: Path,
) -> None:
    """A ``wait`` with a long budget and a ``wait_to_pending`` in flight when a step cannot be
    recorded both end with the ``StoreError`` at once (not at their budget, never hung); after
    repair a new runtime carries both cells on, asking again only the calls whose answers were
    not recorded."""
    path = tmp_path / "s.db"
    gate = Gate()
    store = FlakyStore(path, lease_seconds=10.0)
    rt = SessionRuntime(gate, store=store)
    await rt.open()
    running = await rt.create_cell(
        CreateCellRequest('const r = await tools.step({i: "r"}); text(r);', (STEP,))
    )
    paused = await rt.create_pausable_cell(
        CreateCellRequest(
            'text("p0"); const q = await tools.step({i: "q"}); text(q); '
            'const q2 = await tools.step({i: "q2"}); text(q2);',
            (STEP,),
        )
    )
    frontier = await rt.wait_to_pending(paused)
    assert isinstance(frontier, Pending) and texts(frontier.frontier.items) == ["p0"]
    await until(lambda: _true(len(gate.calls) == 2))
    assert await rt.resume(paused, 1) is not None
    long_wait = asyncio.ensure_future(rt.wait(running, 60))
    next_frontier = asyncio.ensure_future(rt.wait_to_pending(paused))
    await asyncio.sleep(0.2)
    assert not long_wait.done() and not next_frontier.done()
    store.refusing = True
    gate.release.set()  # both calls answer; the first step that follows cannot be recorded
    started = time.monotonic()
    for observer in (long_wait, next_frontier):
        with pytest.raises(StoreError, match="is full"):
            await asyncio.wait_for(observer, 20)
    assert time.monotonic() - started < 20
    assert rt.is_live(running.cell_id) and rt.is_live(paused.cell_id)
    await rt.shutdown()
    await store.close()

    gate2 = Gate()
    gate2.release.set()
    async with SessionRuntime(gate2, store=SqliteStore(path), session_id=rt.session_id) as rt2:
        items, end = await observe_to_end(rt2, running.cell_id)
        assert isinstance(end, Completed) and items == ["r"], (end, items)
        handle = rt2.pausable_cell(paused.cell_id)
        event = await rt2.wait_to_pending(handle)
        while isinstance(event, Pending):
            items += texts(event.frontier.items)
            await rt2.resume(handle, event.frontier.generation)
            event = await rt2.wait_to_pending(handle)
        assert isinstance(event, Completed) and event.error_text is None, event
        items += texts(event.items)
        assert items == ["r", "q", "q2"], items  # "p0" was delivered before the failure
        assert sorted(gate2.calls) == sorted(
            [(running.cell_id, "tool-1"), (paused.cell_id, "tool-1"), (paused.cell_id, "tool-2")]
        )


async def _true(value: bool) -> bool:
    return value
