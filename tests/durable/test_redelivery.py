"""Re-delivery: an event whose delivery was recorded but whose reply never reached its caller
(the process answering died in between) is given again to that caller's retried observation
by the runtime that recovers the session, through ``SessionRuntime.observe_numbered``
(docs/cluster.md, re-delivery). Here the first runtime stops right after recording the delivery
(``suspend`` writes nothing a dead process would not have written); the cluster tests kill a
real host at that point."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from durable_support import (  # the fixtures: imported for pytest to find them
    Runtimes,
    backend_fixture,  # noqa: F401
    postgres_server_fixture,  # noqa: F401
    runtimes_fixture,  # noqa: F401
)

import codemode.cell.journal as journal_module
from codemode import (
    Completed,
    CreateCellRequest,
    MissingCell,
    NestedToolCall,
    Pending,
    ResumeOutcome,
    ToolDefinition,
    Yielded,
)

STEP = ToolDefinition("step")


class Slow:
    """``step`` answers its input after a short pause, so an observer is attached when the
    cell yields; every call is recorded."""

    def __init__(self) -> None:
        self.calls: list[NestedToolCall] = []

    async def invoke_tool(self, call: NestedToolCall) -> Any:
        self.calls.append(call)
        await asyncio.sleep(0.05)
        return call.input

    async def notify(self, call_id: str, cell_id: str, text: str) -> None:
        pass


def texts(event: Any) -> list[str]:
    items = event.frontier.items if isinstance(event, Pending) else event.items
    return [i.text for i in items]


SOURCE = """
text('a1'); yield_control();
const r = await tools.step({i: 1}); text('b' + r.i); text('b2'); yield_control();
const s = await tools.step({i: 3}); text('c' + s.i);
"""


async def test_a_lost_yield_and_a_lost_completion_come_again(runtimes: Runtimes) -> None:
    delegate = Slow()
    rt = runtimes.make(delegate)
    await rt.open()
    cell = await rt.create_cell(CreateCellRequest(SOURCE, tools=[STEP]))
    first, n1 = await rt.observe_numbered(cell.cell_id, 10.0, 0)
    assert isinstance(first, Yielded) and texts(first) == ["a1"] and n1 == 1
    second, n2 = await rt.observe_numbered(cell.cell_id, 10.0, 1)
    assert isinstance(second, Yielded) and texts(second) == ["b1", "b2"] and n2 == 2
    await rt.suspend()  # as if it died before its reply left

    rt2 = runtimes.make(delegate, rt.session_id)
    await rt2.open()
    # The caller saw one event: the second comes again, the same items, the same number.
    again, n = await rt2.observe_numbered(cell.cell_id, 10.0, 1)
    assert isinstance(again, Yielded) and texts(again) == ["b1", "b2"] and n == 2
    # A caller that saw it observes on.
    done, n3 = await rt2.observe_numbered(cell.cell_id, 10.0, 2)
    assert isinstance(done, Completed) and texts(done) == ["c3"] and n3 == 3
    await rt2.suspend()  # the completion's closing was not acknowledged: it is held

    rt3 = runtimes.make(delegate, rt.session_id)
    await rt3.open()
    assert not rt3.is_live(cell.cell_id)  # closed at recovery, its completion kept
    done_again, n = await rt3.observe_numbered(cell.cell_id, 10.0, 2)
    assert done_again == done and n == 3
    with pytest.raises(MissingCell):
        await rt3.observe_numbered(cell.cell_id, 10.0, 3)  # seen it: the cell is closed
    with pytest.raises(MissingCell):
        await rt3.observe_numbered(cell.cell_id, 10.0, None)  # another caller: closed too
    rt3.acknowledge(cell.cell_id)
    with pytest.raises(MissingCell):
        await rt3.observe_numbered(cell.cell_id, 10.0, 2)
    # The answered call was not asked again (tool-2 was in flight at the suspend: asked again).
    assert [c.call_id for c in delegate.calls].count("tool-1") == 1
    await rt3.shutdown()


async def test_a_kept_completion_survives_a_second_crash(runtimes: Runtimes) -> None:
    """The runtime that recovered a delivered, unacknowledged completion keeps its closing
    held too: when it dies before the caller's retry, the next one derives it again; once
    acknowledged, the cell is closed in the store."""
    delegate = Slow()
    rt = runtimes.make(delegate)
    await rt.open()
    cell = await rt.create_cell(CreateCellRequest(SOURCE, tools=[STEP]))
    seen = 0
    while True:
        event, number = await rt.observe_numbered(cell.cell_id, 10.0, seen)
        assert number == seen + 1
        seen = number
        if isinstance(event, Completed):
            break
    done = event
    assert texts(done) == ["c3"]
    await rt.suspend()  # the first crash: its reply never left
    sid = rt.session_id
    for _ in range(2):  # each runtime recovers it, then dies before the caller's retry
        again = runtimes.make(delegate, sid)
        await again.open()
        assert again.delivered_completion(cell.cell_id)
        await again.suspend()
        record = await runtimes.backend.make().get_cell(sid, cell.cell_id)
        assert record is not None and record.state == "open"  # its closing still held
    last = runtimes.make(delegate, sid)
    await last.open()
    done_again, n = await last.observe_numbered(cell.cell_id, 10.0, seen - 1)
    assert done_again == done and n == seen
    last.acknowledge(cell.cell_id)
    await last.suspend()  # (writes what was recorded: the closing, released)
    record = await runtimes.backend.make().get_cell(sid, cell.cell_id)
    assert record is not None and record.state == "closed"
    final = runtimes.make(delegate, sid)
    await final.open()
    assert not final.delivered_completion(cell.cell_id)
    with pytest.raises(MissingCell):
        await final.observe_numbered(cell.cell_id, 10.0, seen - 1)
    assert [c.call_id for c in delegate.calls] == ["tool-1", "tool-2"]  # none asked again
    await final.shutdown()


async def test_kept_completions_beyond_the_cap_are_given_up_and_closed(
    runtimes: Runtimes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A runtime keeps at most ``_ENDED_KEPT`` completions: the oldest beyond is given up and
    its cell's closing recorded, so it does not stay in the store for ever."""
    monkeypatch.setattr(journal_module, "_ENDED_KEPT", 1)
    rt = runtimes.make(Slow())
    await rt.open()
    ids = []
    for text in ("x", "y"):
        cell = await rt.create_cell(CreateCellRequest(f"text('{text}')", tools=[]))
        done, number = await rt.observe_numbered(cell.cell_id, 10.0, 0)
        assert isinstance(done, Completed) and number == 1
        ids.append(cell.cell_id)
    await rt.suspend()  # neither acknowledged
    rt2 = runtimes.make(Slow(), rt.session_id)
    await rt2.open()
    kept = [i for i in ids if rt2.delivered_completion(i)]
    assert len(kept) == 1
    await rt2.suspend()
    store = runtimes.backend.make()
    states = {i: (await store.get_cell(rt.session_id, i)).state for i in ids}  # type: ignore[union-attr]
    assert states == {i: "open" if i in kept else "closed" for i in ids}


async def test_an_acknowledged_completion_closes_the_cell_in_the_store(
    runtimes: Runtimes,
) -> None:
    rt = runtimes.make(Slow())
    await rt.open()
    cell = await rt.create_cell(CreateCellRequest("text('x')", tools=[]))
    done, _ = await rt.observe_numbered(cell.cell_id, 10.0, 0)
    assert isinstance(done, Completed) and texts(done) == ["x"]
    rt.acknowledge(cell.cell_id)
    await rt.suspend()
    rt2 = runtimes.make(Slow(), rt.session_id)
    await rt2.open()
    with pytest.raises(MissingCell):
        await rt2.observe_numbered(cell.cell_id, 10.0, 0)
    assert await rt2._store.list_cells(rt.session_id, state="open") == []  # type: ignore[union-attr]
    await rt2.shutdown()


async def test_the_runtime_that_delivered_a_completion_gives_it_again_until_acknowledged(
    runtimes: Runtimes,
) -> None:
    """The process that answered died, not the runtime (``serve --cluster``'s serve process,
    the session still open on its host): a retry with ``seen`` one less than the delivered
    count gets the completion again from the same runtime, until it is acknowledged."""
    rt = runtimes.make(Slow())
    await rt.open()
    cell = await rt.create_cell(CreateCellRequest("text('x')", tools=[]))
    done, number = await rt.observe_numbered(cell.cell_id, 10.0, 0)
    assert isinstance(done, Completed) and texts(done) == ["x"] and number == 1
    assert not rt.is_live(cell.cell_id) and rt.delivered_completion(cell.cell_id)
    again, number = await rt.observe_numbered(cell.cell_id, 10.0, 0)
    assert again is done and number == 1
    rt.acknowledge(cell.cell_id)
    assert not rt.delivered_completion(cell.cell_id)
    with pytest.raises(MissingCell):
        await rt.observe_numbered(cell.cell_id, 10.0, 0)
    await rt.shutdown()


async def test_a_caller_that_did_not_lose_anything_gets_no_repeat(runtimes: Runtimes) -> None:
    """``seen`` equal to the delivered count, or unknown (``None``): a plain observation."""
    delegate = Slow()
    rt = runtimes.make(delegate)
    await rt.open()
    cell = await rt.create_cell(CreateCellRequest(SOURCE, tools=[STEP]))
    first, _ = await rt.observe_numbered(cell.cell_id, 10.0, 0)
    assert texts(first) == ["a1"]
    await rt.suspend()
    rt2 = runtimes.make(delegate, rt.session_id)
    await rt2.open()
    rest: list[str] = []
    n: int | None = None
    while True:  # (where the cell yields again depends on what the suspend interrupted)
        event, n = await rt2.observe_numbered(cell.cell_id, 10.0, None if n is None else n)
        rest += texts(event)
        if isinstance(event, Completed):
            break
    assert rest == ["b1", "b2", "c3"]
    rt2.acknowledge(cell.cell_id)
    await rt2.shutdown()


async def test_a_pausable_cells_lost_frontier_and_completion_come_again(
    runtimes: Runtimes,
) -> None:
    delegate = Slow()
    rt = runtimes.make(delegate)
    await rt.open()
    cell = await rt.create_pausable_cell(
        CreateCellRequest(
            "text('p0'); const r = await tools.step({i: 1}); text('p' + r.i);", tools=[STEP]
        )
    )
    frontier, n1 = await rt.observe_numbered(cell.cell_id, None, 0)
    assert isinstance(frontier, Pending) and texts(frontier) == ["p0"] and n1 == 1
    await rt.suspend()
    rt2 = runtimes.make(delegate, rt.session_id)
    await rt2.open()
    again, n = await rt2.observe_numbered(cell.cell_id, None, 0)
    assert again == frontier and n == 1
    assert await rt2.resume(rt2.pausable_cell(cell.cell_id), 1) is ResumeOutcome.RESUMED
    done, n2 = await rt2.observe_numbered(cell.cell_id, None, 1)
    assert isinstance(done, Completed) and texts(done) == ["p1"] and n2 == 2
    await rt2.suspend()
    rt3 = runtimes.make(delegate, rt.session_id)
    await rt3.open()
    done_again, n = await rt3.observe_numbered(cell.cell_id, None, 1)
    assert done_again == done and n == 2
    await rt3.shutdown()
