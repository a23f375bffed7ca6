"""Durable sessions: a cell comes back by replay when its session is reopened (docs/durability.md)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from durable_support import (  # the fixtures: imported for pytest to find them
    Runtimes,
    backend_fixture,  # noqa: F401
    postgres_server_fixture,  # noqa: F401
    runtimes_fixture,  # noqa: F401
)

from codemode import (
    Cell,
    Completed,
    CreateCellRequest,
    IdempotencyConflict,
    MissingCell,
    Pending,
    PythonEngine,
    ResumeOutcome,
    SessionRuntime,
    ShuttingDown,
    TextItem,
    ToolDefinition,
    WrongCellKind,
    Yielded,
)
from conftest import RecordingDelegate, request


def T(*texts: str) -> tuple[TextItem, ...]:
    return tuple(TextItem(t) for t in texts)


SEQUENTIAL = """
for (let i = 0; i < 6; i++) {
  const r = await tools.block({ i });
  text(`got ${r.i}`);
}
text("done");
"""


async def test_a_continuing_cell_survives_its_runtime(runtimes: Runtimes) -> None:
    first = RecordingDelegate()
    rt = runtimes.make(first)
    await rt.open()
    cell = await rt.create_cell(request(SEQUENTIAL))
    for n in range(1, 4):
        await first.wait_calls(n)
        first.release(f"tool-{n}")
    await first.wait_calls(4)  # tool-4 in flight
    event = await rt.wait(cell, 0.2)
    assert isinstance(event, Yielded)
    assert [i.text for i in event.items] == ["got 0", "got 1", "got 2"]
    await rt.suspend()

    second = RecordingDelegate()
    second.release()  # every call answers at once
    rt2 = runtimes.make(second, rt.session_id)
    await rt2.open()
    handle = rt2.cell(cell.cell_id)
    event = await rt2.wait(handle, 10)
    assert isinstance(event, Completed), event
    assert event.error_text is None
    assert [i.text for i in event.items] == ["got 3", "got 4", "got 5", "done"]
    # recorded calls never reach the delegate again; the one in flight is issued again
    assert [c.call_id for c in second.calls] == ["tool-4", "tool-5", "tool-6"]
    assert second.calls[0].input == {"i": 3}
    await rt2.shutdown()


async def test_a_pausable_cell_comes_back_at_its_frontier(runtimes: Runtimes) -> None:
    first = RecordingDelegate()
    first.release()
    rt = runtimes.make(first)
    async with asyncio.timeout(10):
        await rt.open()
        cell = await rt.create_pausable_cell(
            request(
                "text('a'); const r = await tools.echo({x: 1}); text(`r=${r.x}`); "
                "const s = await tools.echo({x: 2}); text(`s=${s.x}`);"
            )
        )
        event = await rt.wait_to_pending(cell)
        assert isinstance(event, Pending)
        assert event.frontier.generation == 1
        assert await rt.resume(cell, 1) is ResumeOutcome.RESUMED
        event = await rt.wait_to_pending(cell)
        assert isinstance(event, Pending)
        assert event.frontier.generation == 2
        assert [i.text for i in event.frontier.items] == ["r=1"]
        await rt.suspend()

        second = RecordingDelegate()
        second.release()
        rt2 = runtimes.make(second, rt.session_id)
        await rt2.open()
        handle = rt2.pausable_cell(cell.cell_id)
        again = await rt2.wait_to_pending(handle)
        assert again == event
        assert await rt2.resume(handle, 1) is ResumeOutcome.ALREADY_RUNNING
        assert await rt2.resume(handle, 2) is ResumeOutcome.RESUMED
        done = await rt2.wait_to_pending(handle)
        assert isinstance(done, Completed)
        assert [i.text for i in done.items] == ["s=2"]
        assert second.calls == []  # both calls were answered before
        await rt2.shutdown()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_cell_before_open_is_refused(runtimes: Runtimes) -> None:
    rt = runtimes.make(RecordingDelegate())
    with pytest.raises(RuntimeError, match="open the session first"):
        rt.cell("0123456789abcdef")
    assert rt.is_durable
    assert len(rt.session_id) == 16


async def _output(rt: SessionRuntime, cell: Cell, n: int) -> list[str]:
    """Observe ``cell`` until it has delivered ``n`` more text items."""
    texts: list[str] = []
    async with asyncio.timeout(10):
        while len(texts) < n:
            event = await rt.wait(cell, 0.05)
            assert isinstance(event, Yielded), event
            texts += [item.text for item in event.items if isinstance(item, TextItem)]
    assert len(texts) == n
    return texts


async def _reopened(
    runtimes: Runtimes, rt: SessionRuntime, delegate: RecordingDelegate
) -> SessionRuntime:
    await rt.suspend()
    again = runtimes.make(delegate, rt.session_id)
    await again.open()
    return again


async def test_delivered_output_is_not_delivered_again(runtimes: Runtimes) -> None:
    first = RecordingDelegate()
    rt = runtimes.make(first)
    cell = await rt.create_cell(
        request("text('a'); yield_control(); text('b'); await tools.block({}); text('c')")
    )
    await first.wait_calls(1)
    assert await rt.wait(cell, 10) == Yielded(T("a"))  # the initial yield
    second = RecordingDelegate()
    second.release()
    rt2 = await _reopened(runtimes, rt, second)
    assert await rt2.wait(rt2.cell(cell.cell_id), 10) == Completed(T("b", "c"))
    with pytest.raises(MissingCell):
        rt2.cell(cell.cell_id)
    await rt2.shutdown()


async def test_an_initial_yield_nobody_received_is_kept(runtimes: Runtimes) -> None:
    first = RecordingDelegate()
    rt = runtimes.make(first)
    cell = await rt.create_cell(
        request("text('a'); yield_control(); text('b'); await tools.block({}); text('c')")
    )
    await first.wait_calls(1)
    second = RecordingDelegate()
    second.release()
    rt2 = await _reopened(runtimes, rt, second)
    handle = rt2.cell(cell.cell_id)
    assert await rt2.wait(handle, 10) == Yielded(T("a"))
    assert await rt2.wait(handle, 10) == Completed(T("b", "c"))
    await rt2.shutdown()


async def test_a_completion_not_delivered_is_delivered_once_and_commits_once(
    runtimes: Runtimes,
) -> None:
    first = RecordingDelegate()
    first.release()
    rt = runtimes.make(first)
    writer = await rt.create_cell(
        request("const n = (load('n') ?? 0) + 1; store('n', n); text(`n=${n}`)")
    )
    await asyncio.sleep(0.3)  # completes unobserved: its completion is buffered
    rt2 = await _reopened(runtimes, rt, RecordingDelegate())
    assert await rt2.wait(rt2.cell(writer.cell_id), 10) == Completed(T("n=1"))
    reader = await rt2.create_cell(request("text(`n=${load('n')}`)"))
    assert await rt2.wait(reader, 10) == Completed(T("n=1"))
    rt3 = await _reopened(runtimes, rt2, RecordingDelegate())
    with pytest.raises(MissingCell):
        rt3.cell(writer.cell_id)
    third = await rt3.create_cell(request("text(`n=${load('n')}`)"))
    assert await rt3.wait(third, 10) == Completed(T("n=1"))
    await rt3.shutdown()


async def test_idempotent_create_across_reopen(runtimes: Runtimes) -> None:
    first = RecordingDelegate()
    rt = runtimes.make(first)
    req = request("await tools.block({}); text('x')", idempotency_key="k1")
    cell = await rt.create_cell(req)
    done = await rt.create_cell(request("text('y')", idempotency_key="k2"))
    assert await rt.wait(done, 10) == Completed(T("y"))
    await first.wait_calls(1)
    second = RecordingDelegate()
    second.release()
    rt2 = await _reopened(runtimes, rt, second)
    assert await rt2.create_cell(req) == rt2.cell(cell.cell_id)
    with pytest.raises(WrongCellKind):
        await rt2.create_pausable_cell(req)
    with pytest.raises(IdempotencyConflict):
        await rt2.create_cell(request("text('other')", idempotency_key="k1"))
    closed = await rt2.create_cell(request("text('y')", idempotency_key="k2"))
    assert closed.cell_id == done.cell_id
    with pytest.raises(MissingCell):
        await rt2.wait(closed, 1)
    assert await rt2.wait(rt2.cell(cell.cell_id), 10) == Completed(T("x"))
    await rt2.shutdown()


async def test_timers_replay_without_waiting(runtimes: Runtimes) -> None:
    first = RecordingDelegate()
    rt = runtimes.make(first)
    cell = await rt.create_cell(
        request(
            "for (let i = 0; i < 3; i++) { await new Promise(r => setTimeout(r, 500)); "
            "text(`t${i}`); } await tools.block({}); text('end')"
        )
    )
    await first.wait_calls(1)
    second = RecordingDelegate()
    second.release()
    rt2 = await _reopened(runtimes, rt, second)
    event = await rt2.wait(rt2.cell(cell.cell_id), 1.0)  # not 1.5 s of timers again
    assert event == Completed(T("t0", "t1", "t2", "end"))
    await rt2.shutdown()


async def test_shutdown_ends_cells_and_suspend_keeps_them(runtimes: Runtimes) -> None:
    first = RecordingDelegate()
    rt = runtimes.make(first)
    kept = await rt.create_cell(request("await tools.block({}); text('kept')"))
    await first.wait_calls(1)
    rt2 = await _reopened(runtimes, rt, RecordingDelegate())
    assert rt2.is_live(kept.cell_id)
    await rt2.create_cell(request("store('v', 7)"))
    await asyncio.sleep(0.2)
    await rt2.shutdown()
    assert not rt2.is_alive
    rt3 = runtimes.make(RecordingDelegate(), rt.session_id)
    await rt3.open()
    with pytest.raises(MissingCell):
        rt3.cell(kept.cell_id)
    reader = await rt3.create_cell(request("text(load('v'))"))
    assert await rt3.wait(reader, 10) == Completed(T("7"))
    await rt3.shutdown()


async def test_a_held_call_is_held_again_and_decisions_survive(runtimes: Runtimes) -> None:
    guarded = ToolDefinition("guarded", "needs approval", needs_approval=True)
    first = RecordingDelegate()
    rt = runtimes.make(first)
    cell = await rt.create_pausable_cell(
        CreateCellRequest(
            "const [a, b] = await Promise.all([tools.guarded({n: 1}), tools.guarded({n: 2})]);"
            "text(`${a.n}${b.n}`)",
            (guarded,),
        )
    )
    event = await rt.wait_to_pending(cell)
    assert isinstance(event, Pending)
    assert [r.call_id for r in event.frontier.awaiting_approval] == ["tool-1", "tool-2"]
    await rt.approve(cell, "tool-1")
    await first.wait_calls(1)
    await asyncio.sleep(0.05)
    second = RecordingDelegate()
    rt2 = await _reopened(runtimes, rt, second)
    handle = rt2.pausable_cell(cell.cell_id)
    assert [r.call_id for r in rt2.awaiting_approval(handle)] == ["tool-2"]
    await rt2.approve(handle, "tool-2")
    assert await rt2.resume(handle, 1) is ResumeOutcome.RESUMED
    done = None
    for _ in range(5):
        done = await rt2.wait_to_pending(handle)
        if isinstance(done, Completed):
            break
        await rt2.resume(handle, done.frontier.generation)
    assert done == Completed(T("12"))
    assert sorted(c.call_id for c in second.calls) == ["tool-2"] or sorted(
        c.call_id for c in second.calls
    ) == ["tool-1", "tool-2"]
    await rt2.shutdown()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_python_cells_replay_the_same_way(runtimes: Runtimes) -> None:
    first = RecordingDelegate()
    rt = runtimes.make(first, engine=PythonEngine())
    source = (
        "for i in range(4):\n"
        "    r = await tools.block({'i': i})\n"
        "    print(f\"got {r['i']}\")\n"
        "print('done')\n"
    )
    cell = await rt.create_cell(request(source))
    for n in range(1, 3):
        await first.wait_calls(n)
        first.release(f"tool-{n}")
    await first.wait_calls(3)
    assert await rt.wait(cell, 0.3) == Yielded(T("got 0", "got 1"))
    await rt.suspend()
    second = RecordingDelegate()
    second.release()
    rt2 = runtimes.make(second, rt.session_id, engine=PythonEngine())
    await rt2.open()
    event = await rt2.wait(rt2.cell(cell.cell_id), 10)
    assert event == Completed(T("got 2", "got 3", "done"))
    assert [c.call_id for c in second.calls] == ["tool-3", "tool-4"]
    await rt2.shutdown()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_long_record_replays_without_asking_the_delegate(runtimes: Runtimes) -> None:
    first = RecordingDelegate()
    rt = runtimes.make(first)
    cell = await rt.create_cell(
        request(
            "let s = 0; for (let i = 0; i < 300; i++) { s += (await tools.echo({i})).i; }"
            "text(`s=${s}`); await tools.block({}); text('end')"
        )
    )
    async with asyncio.timeout(60):  # 300 recorded calls: slow on a loaded machine
        while len(first.calls) < 301:
            first.invoked.clear()
            await first.invoked.wait()
    await rt.suspend()
    second = RecordingDelegate()
    second.release()
    rt2 = runtimes.make(second, rt.session_id)
    await rt2.open()
    assert await rt2.wait(rt2.cell(cell.cell_id), 10) == Completed(T("s=44850", "end"))
    assert [c.call_id for c in second.calls] == ["tool-301"]
    await rt2.shutdown()


async def test_a_result_that_reached_a_paused_cell_is_kept(runtimes: Runtimes) -> None:
    first = RecordingDelegate()
    first.release()
    rt = runtimes.make(first)
    cell = await rt.create_pausable_cell(request("const r = await tools.echo({v: 3}); text(r.v)"))
    await first.wait_calls(1)
    await asyncio.sleep(0.1)  # the answer is queued at the unobserved frontier 1
    second = RecordingDelegate()
    rt2 = await _reopened(runtimes, rt, second)
    handle = rt2.pausable_cell(cell.cell_id)
    event = await rt2.wait_to_pending(handle)
    assert isinstance(event, Pending)
    assert (event.frontier.generation, event.frontier.pending_tool_call_ids) == (1, ("tool-1",))
    assert await rt2.resume(handle, 1) is ResumeOutcome.RESUMED
    assert await rt2.wait_to_pending(handle) == Completed(T("3"))
    assert second.calls == []  # the answer was recorded when it arrived
    await rt2.shutdown()


async def test_parallel_calls_answered_out_of_order_replay_in_their_order(
    runtimes: Runtimes,
) -> None:
    first = RecordingDelegate()
    rt = runtimes.make(first)
    cell = await rt.create_cell(
        request(
            "const ps = [0, 1, 2, 3, 4].map(i => tools.block({i}).then(r => text(`r${r.i}`)));"
            "await Promise.all(ps); text('all')"
        )
    )
    await first.wait_calls(5)
    seen: list[str] = []
    for call_id in ("tool-4", "tool-2"):
        first.release(call_id)
        seen += await _output(rt, cell, 1)
    assert seen == ["r3", "r1"]
    second = RecordingDelegate()
    rt2 = await _reopened(runtimes, rt, second)
    await second.wait_calls(3)
    assert sorted(c.call_id for c in second.calls) == ["tool-1", "tool-3", "tool-5"]
    handle = rt2.cell(cell.cell_id)
    for call_id in ("tool-5", "tool-1"):
        second.release(call_id)
        seen += await _output(rt2, handle, 1)
    second.release("tool-3")
    assert await rt2.wait(handle, 10) == Completed(T("r2", "all"))
    assert seen == ["r3", "r1", "r4", "r0"]
    await rt2.shutdown()


async def test_an_observer_waiting_when_the_session_is_suspended_is_told(
    runtimes: Runtimes,
) -> None:
    first = RecordingDelegate()
    rt = runtimes.make(first)
    cell = await rt.create_pausable_cell(request("await tools.block({}); text('x')"))
    assert isinstance(await rt.wait_to_pending(cell), Pending)
    await rt.resume(cell, 1)
    observer = asyncio.ensure_future(rt.wait_to_pending(cell))
    await asyncio.sleep(0.05)
    await rt.suspend()
    with pytest.raises(ShuttingDown):
        await asyncio.wait_for(observer, 5)
    assert first.cancelled == ["tool-1"]  # the call stops here, and is issued again later
    with pytest.raises(ShuttingDown):
        await rt.create_cell(request("text(1)"))


async def test_a_session_without_a_store_needs_no_open() -> None:
    rt = SessionRuntime(RecordingDelegate())
    assert not rt.is_durable
    assert len(rt.session_id) == 16
    assert await rt.open() is rt
    cell = await rt.create_cell(request("text('x')"))
    assert rt.cell(cell.cell_id) == cell
    with pytest.raises(RuntimeError):
        await rt.suspend()
    await rt.shutdown()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_shutdown_does_not_wait_for_a_spinning_replay(runtimes: Runtimes) -> None:
    first = RecordingDelegate()
    first.release()
    rt = runtimes.make(first)
    cell = await rt.create_cell(request("await tools.echo({}); while (true) {}"))
    await first.wait_calls(1)
    await asyncio.sleep(0.2)  # it spins in the step that took the answer
    await rt.suspend()
    rt2 = runtimes.make(RecordingDelegate(), rt.session_id)
    await asyncio.wait_for(rt2.open(), 20)  # open waits for the spinning replay a moment only
    assert rt2.is_live(cell.cell_id)
    await asyncio.wait_for(rt2.shutdown(), 5)  # ends it at once
    rt3 = runtimes.make(RecordingDelegate(), rt.session_id)
    await rt3.open()
    with pytest.raises(MissingCell):
        rt3.cell(cell.cell_id)
    await rt3.shutdown()
