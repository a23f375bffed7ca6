"""Pausable cells on real V8, in process: the synchronous host driver, timers, stored values and
races (docs/sessions.md). Scenarios 37-50, which hold for every kind of session, are in
``tests/contract/test_scenarios.py``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from codemode import (
    BusyObserver,
    ClosedCell,
    Completed,
    CreateCellRequest,
    InvalidGeneration,
    MissingCell,
    NestedToolCall,
    PausableCell,
    Pending,
    PendingFrontier,
    ResumeOutcome,
    SessionRuntime,
    Terminated,
    TextItem,
    ToolDefinition,
)
from conftest import RecordingDelegate, request
from scenarios import (
    completion_of,
    frontier_of,
    still_pending,
    texts,
)

RESUMED = ResumeOutcome.RESUMED
ALREADY_RUNNING = ResumeOutcome.ALREADY_RUNNING


# ---------------------------------------------------------------------------- the synchronous host driver


class ParkingDelegate:
    """docs/sessions.md step 1: each call parks a future keyed by its call id until the host answers."""

    def __init__(self) -> None:
        self.futures: dict[tuple[str, str], asyncio.Future[Any]] = {}
        self.calls: dict[tuple[str, str], NestedToolCall] = {}
        self.invocations = 0

    async def invoke_tool(self, call: NestedToolCall) -> Any:
        key = (call.cell_id, call.call_id)
        self.invocations += 1
        self.calls[key] = call
        future = self.futures.setdefault(key, asyncio.get_running_loop().create_future())
        return await future

    def answer(self, cell_id: str, call_id: str, value: Any) -> bool:
        future = self.futures.setdefault(
            (cell_id, call_id), asyncio.get_running_loop().create_future()
        )
        if future.done():
            return False  # a duplicate answer is ignored
        future.set_result(value)
        return True

    async def notify(self, call_id: str, cell_id: str, text: str) -> None:
        return None


LOOKUP = ToolDefinition("lookup", "Looks a word up.")


async def test_synchronous_host_driver_with_duplicate_and_stale_resumes(make_runtime: Any) -> None:
    parking = ParkingDelegate()
    rt: SessionRuntime = make_runtime(d=parking)
    source = (
        'const a = await tools.lookup({q: "x"}); text("a=" + a);'
        'const [b, c] = await Promise.all([tools.lookup({q: "y"}), tools.lookup({q: "z"})]);'
        'text(b + c); text("done")'
    )
    created = await rt.create_pausable_cell(CreateCellRequest(source, (LOOKUP,)))
    cell_id = created.cell_id

    async def handle(generation: int | None, answers: dict[str, Any]) -> Any:
        """One client request: answer calls, resume, and return the next event."""
        for call_id, value in answers.items():
            parking.answer(cell_id, call_id, value)
        cell = rt.pausable_cell(cell_id)  # re-hydrated from the id, as a server would
        if generation is not None:
            await rt.resume(cell, generation)
        return await asyncio.wait_for(rt.wait_to_pending(cell), 5)

    ev1 = await handle(None, {})
    assert isinstance(ev1, Pending) and ev1.frontier.pending_tool_call_ids == ("tool-1",)
    assert parking.calls[(cell_id, "tool-1")].input == {"q": "x"}
    assert await handle(None, {}) == ev1  # a retried first request: the same frontier

    # Resume first, answer later: the order does not matter (docs/sessions.md step 4).
    assert await rt.resume(rt.pausable_cell(cell_id), 1) is RESUMED
    ev2 = await handle(1, {"tool-1": "X"})  # the client's request: a duplicate resume of gen 1
    assert isinstance(ev2, Pending)
    assert (ev2.frontier.generation, texts(ev2.frontier.items)) == (2, ["a=X"])
    assert ev2.frontier.pending_tool_call_ids == ("tool-2", "tool-3")

    # The client answers only tool-3; then retries the same request (duplicate answer + resume).
    ev3 = await handle(2, {"tool-3": "Z"})
    assert isinstance(ev3, Pending)
    assert (ev3.frontier.generation, ev3.frontier.items, ev3.frontier.pending_tool_call_ids) == (
        3,
        (),
        ("tool-2",),
    )
    assert await handle(2, {"tool-3": "Z!"}) == ev3  # stale: ALREADY_RUNNING, same frontier
    assert await rt.resume(rt.pausable_cell(cell_id), 1) is ALREADY_RUNNING

    end = await handle(3, {"tool-2": "Y"})
    assert end == Completed((TextItem("YZ"), TextItem("done")))
    assert parking.invocations == 3
    # After the program is over the cell is closed: a late retry finds no cell.
    with pytest.raises(MissingCell):
        await handle(3, {"tool-2": "Y"})


async def test_parallel_tools_answered_one_frontier_at_a_time(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cell = await runtime.create_pausable_cell(
        request(
            "const ps = [1, 2, 3].map(n => tools.block({n}).then(v => text('got ' + v.n)));"
            "await Promise.all(ps); text('done')"
        )
    )
    f = await frontier_of(runtime, cell)
    assert f.pending_tool_call_ids == ("tool-1", "tool-2", "tool-3")
    seen: list[PendingFrontier] = [f]
    for call_id, remaining in (("tool-2", ("tool-1", "tool-3")), ("tool-3", ("tool-1",))):
        delegate.release(call_id)
        assert await runtime.resume(cell, f.generation) is RESUMED
        f = await frontier_of(runtime, cell)
        assert f.pending_tool_call_ids == remaining
        assert texts(f.items) == [f"got {call_id[-1]}"]
        seen.append(f)
    delegate.release("tool-1")
    assert await runtime.resume(cell, f.generation) is RESUMED
    done = await completion_of(runtime, cell)
    assert texts(done.items) == ["got 1", "done"]
    assert [s.generation for s in seen] == [1, 2, 3]


async def test_wait_to_pending_after_resume_waits_for_the_next_frontier(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cell = await runtime.create_pausable_cell(
        request("await tools.block({n: 1}); text('mid'); await tools.block({n: 2}); text('done')")
    )
    await frontier_of(runtime, cell)
    assert await runtime.resume(cell, 1) is RESUMED
    task = asyncio.create_task(runtime.wait_to_pending(cell))
    await still_pending(task, 0.05)
    with pytest.raises(BusyObserver) as busy:
        await runtime.wait_to_pending(cell)
    assert str(busy.value) == f"exec cell {cell.cell_id} already has an active observer"
    delegate.release("tool-1")
    event = await asyncio.wait_for(task, 5)
    assert event == Pending(PendingFrontier(2, (TextItem("mid"),), ("tool-2",)))


async def test_resume_with_nothing_queued_never_repeats_the_consumed_frontier(
    runtime: SessionRuntime,
) -> None:
    cell = await runtime.create_pausable_cell(request("text('x'); await new Promise(() => {})"))
    await frontier_of(runtime, cell)
    assert await runtime.resume(cell, 1) is RESUMED
    task = asyncio.create_task(runtime.wait_to_pending(cell))
    await still_pending(task, 0.1)
    assert await runtime.resume(cell, 1) is ALREADY_RUNNING
    with pytest.raises(InvalidGeneration) as exc:
        await runtime.resume(cell, 2)
    assert (exc.value.requested, exc.value.latest) == (2, 1)
    assert await asyncio.wait_for(runtime.terminate(cell), 5) == Terminated(())
    assert await asyncio.wait_for(task, 5) == Terminated(())


async def test_pending_ids_are_sorted_by_number(runtime: SessionRuntime) -> None:
    cell = await runtime.create_pausable_cell(
        request("await Promise.all(Array.from({length: 11}, (_, i) => tools.block({i})))")
    )
    f1 = await frontier_of(runtime, cell)
    assert f1.pending_tool_call_ids == tuple(f"tool-{n}" for n in range(1, 12))


async def test_a_due_timer_runs_before_the_first_frontier(runtime: SessionRuntime) -> None:
    cell = await runtime.create_pausable_cell(
        request("setTimeout(() => text('t0'), 0); text('a'); await tools.block({})")
    )
    f1 = await frontier_of(runtime, cell)
    assert f1 == PendingFrontier(1, (TextItem("a"), TextItem("t0")), ("tool-1",))


async def test_timer_is_frozen_while_paused_and_fires_after_resume(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cell = await runtime.create_pausable_cell(
        request("setTimeout(() => text('tick'), 30); await tools.block({}); text('done')")
    )
    f1 = await frontier_of(runtime, cell)
    assert f1 == PendingFrontier(1, (), ("tool-1",))
    await asyncio.sleep(0.15)  # the timer fell due long ago, but the cell is paused
    assert await frontier_of(runtime, cell) == f1
    assert await runtime.resume(cell, 1) is RESUMED
    f2 = await frontier_of(runtime, cell)  # the due timer ran right after the resume
    assert f2 == PendingFrontier(2, (TextItem("tick"),), ("tool-1",))
    delegate.release()
    assert await runtime.resume(cell, 2) is RESUMED
    assert await completion_of(runtime, cell) == Completed((TextItem("done"),))


async def test_timer_not_yet_due_is_an_empty_frontier_then_fires_after_resume(
    runtime: SessionRuntime,
) -> None:
    cell = await runtime.create_pausable_cell(
        request("text('a'); await new Promise(r => setTimeout(r, 100)); text('b')")
    )
    f1 = await frontier_of(runtime, cell)
    assert f1 == PendingFrontier(1, (TextItem("a"),), ())
    await asyncio.sleep(0.2)
    assert await frontier_of(runtime, cell) == f1
    assert await runtime.resume(cell, 1) is RESUMED
    assert await completion_of(runtime, cell) == Completed((TextItem("b"),))


async def test_terminate_paused_cell_returns_its_unobserved_frontier_output(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cell = await runtime.create_pausable_cell(
        request("text('one'); console.log('two', 2); await tools.block({}); text('never')")
    )
    await delegate.wait_calls(1)
    await asyncio.sleep(0.02)
    event = await asyncio.wait_for(runtime.terminate(cell), 5)
    assert event == Terminated((TextItem("one"), TextItem("two 2")))
    assert delegate.cancelled == ["tool-1"]
    with pytest.raises(MissingCell):
        await runtime.terminate(cell)
    with pytest.raises(MissingCell):
        await runtime.resume(cell, 1)


async def test_terminate_paused_cell_after_frontier_was_observed_returns_nothing(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cell = await runtime.create_pausable_cell(request("text('one'); await tools.block({})"))
    assert texts((await frontier_of(runtime, cell)).items) == ["one"]
    assert await asyncio.wait_for(runtime.terminate(cell), 5) == Terminated(())


class StubbornDelegate(RecordingDelegate):
    """``block`` ignores its first cancellation, keeping the termination in progress."""

    async def invoke_tool(self, call: NestedToolCall) -> Any:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(0.5)
        return None


async def test_paused_cell_while_terminating(make_runtime: Any) -> None:
    rt: SessionRuntime = make_runtime(d=StubbornDelegate())
    cell = await rt.create_pausable_cell(request("await tools.block({})"))
    await frontier_of(rt, cell)
    term = asyncio.create_task(rt.terminate(cell))
    await asyncio.sleep(0.02)
    with pytest.raises(ClosedCell) as closed:
        await rt.resume(cell, 1)
    assert str(closed.value) == f"exec cell {cell.cell_id} closed unexpectedly"
    with pytest.raises(ClosedCell):
        await rt.wait_to_pending(cell)
    assert await asyncio.wait_for(term, 2) == Terminated(())
    with pytest.raises(MissingCell):
        await rt.resume(cell, 1)


async def test_output_before_first_frontier_appears_exactly_once(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    # Observed: "before" is in gen 1 only.
    cell = await runtime.create_pausable_cell(
        request("text('before'); await tools.block({}); text('after')")
    )
    f1 = await frontier_of(runtime, cell)
    assert await frontier_of(runtime, cell) == f1
    assert texts(f1.items) == ["before"]
    delegate.release()
    assert await runtime.resume(cell, 1) is RESUMED
    assert await completion_of(runtime, cell) == Completed((TextItem("after"),))

    # Never observed, resumed blind: the items move on to the next event, still once.
    blind = await runtime.create_pausable_cell(
        request("text('before'); await tools.block({}); text('after')")
    )
    await delegate.wait_calls(2)
    await asyncio.sleep(0.02)
    assert await runtime.resume(blind, 1) is RESUMED
    end = await completion_of(runtime, blind)
    assert texts(end.items) == ["before", "after"]


async def test_yield_control_is_a_no_op_in_a_pausable_cell(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cell = await runtime.create_pausable_cell(
        request(
            "text('a'); const r = yield_control(); text(String(r)); text('b');"
            "await tools.block({}); yield_control(); text('c')"
        )
    )
    f1 = await frontier_of(runtime, cell)
    assert f1 == PendingFrontier(
        1, (TextItem("a"), TextItem("undefined"), TextItem("b")), ("tool-1",)
    )
    delegate.release()
    assert await runtime.resume(cell, 1) is RESUMED
    assert await completion_of(runtime, cell) == Completed((TextItem("c"),))


async def load_text(rt: SessionRuntime, key: str) -> str:
    cell = await rt.create_cell(request(f"text(String(JSON.stringify(load({key!r}))))"))
    event = await rt.wait(cell, 5)
    assert isinstance(event, Completed), event
    return texts(event.items)[0]


async def test_stored_writes_commit_only_at_completion(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cell = await runtime.create_pausable_cell(
        request(
            "store('k', {v: 1}); text(JSON.stringify(load('k'))); await tools.block({}); store('k2', 2)"
        )
    )
    f1 = await frontier_of(runtime, cell)
    assert texts(f1.items) == ['{"v":1}']  # the cell sees its own write at once
    assert await load_text(runtime, "k") == "undefined"  # not committed at a frontier
    delegate.release()
    assert await runtime.resume(cell, 1) is RESUMED
    assert isinstance(await completion_of(runtime, cell), Completed)
    assert await load_text(runtime, "k") == '{"v":1}'
    assert await load_text(runtime, "k2") == "2"


async def test_stored_writes_lost_when_terminated_while_paused(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cell = await runtime.create_pausable_cell(
        request("store('candidate', 1); await tools.block({}); text('x')")
    )
    await frontier_of(runtime, cell)
    delegate.release()  # even with its result already returned
    await asyncio.sleep(0.02)
    assert await asyncio.wait_for(runtime.terminate(cell), 5) == Terminated(())
    assert await load_text(runtime, "candidate") == "undefined"


async def test_completed_pausable_cell_before_observation_resume_and_terminate(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cell = await runtime.create_pausable_cell(request("text('a'); await tools.echo({}); text('b')"))
    f1 = await frontier_of(runtime, cell)
    assert await runtime.resume(cell, 1) is RESUMED
    await asyncio.sleep(0.1)  # the completion is buffered, undelivered
    assert await runtime.resume(cell, 1) is ALREADY_RUNNING
    with pytest.raises(InvalidGeneration) as exc:
        await runtime.resume(cell, f1.generation + 1)
    assert exc.value.latest == 1
    assert await runtime.terminate(cell) == Completed((TextItem("b"),))
    with pytest.raises(MissingCell):
        await runtime.wait_to_pending(cell)


# ---------------------------------------------------------------------------- bugs


class ResumeOnInvokeDelegate(RecordingDelegate):
    """Resumes generation 1 of ``cell`` at the moment its first call reaches the host, i.e.
    after the frontier was taken and its observer woken, before that observer collected it.
    (A host whose retried ``resume(1)`` races the ``wait_to_pending`` that reports gen 1.)"""

    rt: SessionRuntime
    cell: PausableCell
    outcome: ResumeOutcome | None = None

    async def invoke_tool(self, call: NestedToolCall) -> Any:
        if call.call_id == "tool-1":
            self.outcome = await self.rt.resume(self.cell, 1)
        return await super().invoke_tool(call)


async def test_resume_racing_the_observer_of_that_frontier_delivers_items_once(
    make_runtime: Any,
) -> None:
    d = ResumeOnInvokeDelegate()
    rt: SessionRuntime = make_runtime(d=d)
    d.rt = rt
    d.cell = await rt.create_pausable_cell(
        request("text('before'); await tools.block({}); text('done')")
    )
    first = await asyncio.wait_for(rt.wait_to_pending(d.cell), 5)  # attached before the frontier
    assert first == Pending(PendingFrontier(1, (TextItem("before"),), ("tool-1",)))
    assert d.outcome is RESUMED
    d.release()
    end = await asyncio.wait_for(rt.wait_to_pending(d.cell), 5)
    assert end == Completed((TextItem("done"),))  # actual: Completed(("before", "done"))
