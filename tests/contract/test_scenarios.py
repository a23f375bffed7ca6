"""The contract suite (scenario 80): one set of scenarios, the same expectations, run against the
in-process ``SessionRuntime`` (``local``), ``RemoteSession.spawn`` (``spawn``) and, for a subset,
``RemoteSession.connect`` over WebSocket (``ws``).

The scenarios are adapted from 27-64 of docs/sessions.md (continuing, pausable, idempotent,
lifecycle). Errors must be the same classes with the same fields and messages in every mode.
Where the wire may legitimately deliver output in another grouping (an event the server had
already sent to a cancelled ``wait`` is returned by the next observation, docs/protocol.md), a scenario
checks the concatenated output instead of one event.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from protocol_support import HANG, eventually

from codemode import (
    AlreadyTerminating,
    BusyObserver,
    CellKind,
    CellLimits,
    ClosedCell,
    Completed,
    CreateCellRequest,
    EngineError,
    ForeignHandle,
    IdempotencyConflict,
    InvalidGeneration,
    MissingCell,
    NestedToolCall,
    OutputItem,
    Pending,
    PendingFrontier,
    ResumeOutcome,
    ShuttingDown,
    Terminated,
    ToolDefinition,
    WrongCellKind,
    Yielded,
)
from conftest import BLOCK, ECHO, RecordingDelegate, request
from contract.conftest import CORE, CORE_NEUTRAL, EVERY, EVERY_NEUTRAL, SessionFactory
from scenarios import (
    ECHO_SOURCE,
    ECHO_TEXT,
    MISMATCHES,
    STUBBORN,
    StubbornDelegate,
    T,
    assert_missing,
    assert_same_handle,
    base_request,
    completion_of,
    create,
    drain_continuing,
    drain_pausable,
    finish,
    frontier_of,
    gen1_of_two_sequential,
    gen2_of_two_sequential,
    heartbeat,
    still_pending,
    texts,
)

RESUMED = ResumeOutcome.RESUMED
ALREADY_RUNNING = ResumeOutcome.ALREADY_RUNNING
KINDS = [
    pytest.param(CellKind.CONTINUING, id="continuing"),
    pytest.param(CellKind.PAUSABLE, id="pausable"),
]


# ---------------------------------------------------------------------------- continuing (27-36)


@EVERY
async def test_27_cell_runs_before_any_observation(rt: Any, delegate: RecordingDelegate) -> None:
    first, second = ToolDefinition("first"), ToolDefinition("second")
    cell = await rt.create_cell(
        request('await tools.first({}); await tools.second({}); text("done")', first, second)
    )
    await delegate.wait_calls(1)
    delegate.release("tool-1")
    await delegate.wait_calls(2)
    assert delegate.names() == ["first", "second"]
    assert delegate.calls[0].tool == first and delegate.calls[0].cell_id == cell.cell_id
    delegate.release("tool-2")
    assert await rt.wait(cell, 10) == Completed(T("done"))


@EVERY_NEUTRAL
async def test_28_initial_yield(rt: Any) -> None:
    cell = await rt.create_cell(request('text("before"); yield_control(); text("after")'))
    async with asyncio.timeout(HANG):
        assert await rt.wait(cell, 60) == Yielded(T("before"))
        assert await rt.wait(cell, 60) == Completed(T("after"))
    with pytest.raises(MissingCell) as info:
        await rt.wait(cell, 1)
    assert info.value.cell_id == cell.cell_id
    assert str(info.value) == f"exec cell {cell.cell_id} not found"


@CORE
async def test_29_initial_yield_then_blocking_tool(rt: Any, delegate: RecordingDelegate) -> None:
    cell = await rt.create_cell(
        request('text("before"); yield_control(); await tools.block({}); text("after")')
    )
    await delegate.wait_calls(1)
    assert await rt.wait(cell, 60) == Yielded(T("before"))
    waiter = asyncio.ensure_future(rt.wait(cell, 60))
    await still_pending(waiter, 0.02)
    delegate.release()
    assert await asyncio.wait_for(waiter, HANG) == Completed(T("after"))


@CORE
async def test_30_unattached_yield_after_first_delivery_does_not_end_wait(
    rt: Any, delegate: RecordingDelegate
) -> None:
    cell = await rt.create_cell(
        request(
            'text("a"); yield_control(); await tools.block({}); text("b"); yield_control();'
            "await tools.block({}); text('c')"
        )
    )
    assert await rt.wait(cell, 60) == Yielded(T("a"))
    delegate.release("tool-1")
    await delegate.wait_calls(2)
    waiter = asyncio.ensure_future(rt.wait(cell, 60))
    await still_pending(waiter, 0.02)
    delegate.release("tool-2")
    assert await asyncio.wait_for(waiter, HANG) == Completed(T("b", "c"))


@CORE
async def test_31_budget_runs_out_and_the_cell_keeps_running(
    rt: Any, delegate: RecordingDelegate
) -> None:
    cell = await rt.create_cell(request('await tools.block({}); text("after")'))
    await delegate.wait_calls(1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await rt.wait(cell, 0.05) == Yielded(())
    assert loop.time() - started >= 0.05
    delegate.release()
    assert await rt.wait(cell, 10) == Completed(T("after"))


@CORE_NEUTRAL
async def test_32_completion_is_buffered(rt: Any) -> None:
    cell = await rt.create_cell(request('text("done")'))
    await asyncio.sleep(0.1)
    assert await asyncio.wait_for(rt.wait(cell, 60), HANG) == Completed(T("done"))
    with pytest.raises(MissingCell):
        await rt.wait(cell, 1)


@EVERY
async def test_33_second_observer_is_busy(rt: Any, delegate: RecordingDelegate) -> None:
    cell = await rt.create_cell(request("await tools.block({})"))
    first = asyncio.ensure_future(rt.wait(cell, 60))
    await asyncio.sleep(0.05)
    with pytest.raises(BusyObserver) as info:
        await rt.wait(cell, 1)
    assert info.value.cell_id == cell.cell_id
    assert str(info.value) == f"exec cell {cell.cell_id} already has an active observer"
    assert await rt.terminate(cell) == Terminated(())
    assert await asyncio.wait_for(first, HANG) == Terminated(())


@EVERY
async def test_34_cancelled_wait_loses_nothing(
    rt: Any, factory: SessionFactory, delegate: RecordingDelegate
) -> None:
    cell = await rt.create_cell(
        request('text("a"); await tools.block({}); text("b"); await tools.block({}); text("c")')
    )
    await delegate.wait_calls(1)
    waiter = asyncio.ensure_future(rt.wait(cell, 60))
    await asyncio.sleep(0.05)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    delegate.release("tool-1")
    await delegate.wait_calls(2)
    delegate.release("tool-2")
    await asyncio.sleep(0.05)
    if factory.in_process:  # nothing reached the cancelled observer: one event has it all
        assert await rt.wait(cell, 5) == Completed(T("a", "b", "c"))
        return
    items, end = await drain_continuing(rt, cell)
    assert end == Completed(end.items) and texts(items) == ["a", "b", "c"]


@CORE
async def test_34b_cancel_racing_a_delivery_loses_nothing(
    rt: Any, factory: SessionFactory, delegate: RecordingDelegate
) -> None:
    cell = await rt.create_cell(request('text("a"); await tools.block({}); text("b")'))
    await delegate.wait_calls(1)
    if factory.in_process:
        # The event is prepared (the deadline fired) but the waiting task is cancelled before
        # it resumes: the prepared items go back and reach the next observer, in one event.
        waiter = asyncio.ensure_future(rt.wait(cell, 0))
        await asyncio.sleep(0)  # the observer attaches; its zero deadline is scheduled
        await asyncio.sleep(0)  # the deadline fires and prepares Yielded(["a"])
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        delegate.release()
        assert await rt.wait(cell, 5) == Completed(T("a", "b"))
        return
    for rounds in range(4):  # cancel at several points of a zero-budget observation
        waiter = asyncio.ensure_future(rt.wait(cell, 0))
        for _ in range(rounds):
            await asyncio.sleep(0)
        waiter.cancel()
        try:
            got = await waiter
        except asyncio.CancelledError:
            got = None
        assert got is None or got == Yielded(got.items)
        if got is not None:
            break
    delegate.release()
    items, end = await drain_continuing(rt, cell)
    delivered = ([] if got is None else texts(got.items)) + texts(items)
    assert delivered == ["a", "b"] and isinstance(end, Completed)


@CORE
async def test_35_three_yields_deliver_everything_once(rt: Any) -> None:
    source = "".join(f'text("a{i}"); text("b{i}"); yield_control();' for i in range(3))
    cell = await rt.create_cell(request(source + 'text("end")'))
    items, end = await drain_continuing(rt, cell)
    assert isinstance(end, Completed)
    assert tuple(items) == T("a0", "b0", "a1", "b1", "a2", "b2", "end")


@CORE_NEUTRAL
async def test_36_completion_waits_for_notifications(rt: Any, delegate: RecordingDelegate) -> None:
    delegate.notify_gate = asyncio.Event()
    cell = await rt.create_cell(
        request('notify("n1"); notify("n2"); text("done")', tool_call_id="call-36")
    )
    await asyncio.wait_for(delegate.notify_started.wait(), HANG)
    waiter = asyncio.ensure_future(rt.wait(cell, 60))
    await still_pending(waiter, 0.05)
    delegate.notify_gate.set()
    assert await asyncio.wait_for(waiter, HANG) == Completed(T("done"))
    assert delegate.notifications == [
        ("call-36", cell.cell_id, "n1"),
        ("call-36", cell.cell_id, "n2"),
    ]


@CORE
async def test_notifications_are_delivered_in_order(rt: Any, delegate: RecordingDelegate) -> None:
    cell = await rt.create_cell(request("for (let i = 0; i < 20; i++) notify(`n${i}`)"))
    await rt.wait(cell, 10)
    assert [n[2] for n in delegate.notifications] == [f"n{i}" for i in range(20)]


@CORE
async def test_negative_budget_counts_as_zero(rt: Any) -> None:
    cell = await rt.create_cell(request("await tools.block({})"))
    assert await asyncio.wait_for(rt.wait(cell, -5), HANG) == Yielded(())


@CORE
async def test_yield_control_while_observed_returns_at_once(rt: Any) -> None:
    cell = await rt.create_cell(
        request(
            'await new Promise(r => setTimeout(r, 20)); text("x"); yield_control();'
            "await new Promise(() => {})"
        )
    )
    assert await asyncio.wait_for(rt.wait(cell, 60), HANG) == Yielded(T("x"))
    await rt.terminate(cell)


# ---------------------------------------------------------------------------- handles (37-38)


@EVERY
async def test_37_wrong_cell_kind(rt: Any) -> None:
    paused = await rt.create_pausable_cell(request("await tools.block({})"))
    cont = await rt.create_cell(request("await tools.block({})"))
    pid, cid = paused.cell_id, cont.cell_id
    with pytest.raises(WrongCellKind) as exc:
        await rt.wait(paused, 0.01)
    assert (exc.value.cell_id, exc.value.expected, exc.value.actual) == (
        pid,
        "continuing",
        "pausable",
    )
    assert str(exc.value) == f"exec cell {pid} is pausable, expected continuing"
    for op in (rt.wait_to_pending(cont), rt.resume(cont, 1)):
        with pytest.raises(WrongCellKind) as exc:
            await op
        assert (exc.value.cell_id, exc.value.expected, exc.value.actual) == (
            cid,
            "pausable",
            "continuing",
        )
        assert str(exc.value) == f"exec cell {cid} is continuing, expected pausable"
    with pytest.raises(WrongCellKind) as exc:
        rt.cell(pid)
    assert (exc.value.expected, exc.value.actual) == ("continuing", "pausable")
    assert str(exc.value) == f"exec cell {pid} is pausable, expected continuing"
    with pytest.raises(WrongCellKind) as exc:
        rt.pausable_cell(cid)
    assert (exc.value.expected, exc.value.actual) == ("pausable", "continuing")
    assert str(exc.value) == f"exec cell {cid} is continuing, expected pausable"
    assert rt.pausable_cell(pid) == paused and rt.cell(cid) == cont
    assert hash(rt.cell(cid)) == hash(cont)
    assert cont.kind is CellKind.CONTINUING and paused.kind is CellKind.PAUSABLE
    assert (await frontier_of(rt, paused)).pending_tool_call_ids == ("tool-1",)


@CORE
async def test_38_foreign_handle_and_unknown_id(
    factory: SessionFactory, delegate: RecordingDelegate
) -> None:
    a = await factory.session(delegate)
    b = await factory.session(RecordingDelegate())
    cell = await a.create_pausable_cell(request("await tools.block({})"))
    await frontier_of(a, cell)
    msg = f"exec cell {cell.cell_id} belongs to another session"
    for op in (b.wait_to_pending(cell), b.resume(cell, 1), b.terminate(cell)):
        with pytest.raises(ForeignHandle) as exc:
            await op
        assert str(exc.value) == msg and exc.value.cell_id == cell.cell_id
    with pytest.raises(ForeignHandle):
        await b.wait(cell, 0.01)
    assert (await frontier_of(a, cell)).generation == 1
    assert await a.resume(cell, 1) is RESUMED
    unknown = "0000000000000000"
    for call in (lambda: b.pausable_cell(unknown), lambda: b.cell(unknown)):
        with pytest.raises(MissingCell) as missing:
            call()
        assert str(missing.value) == f"exec cell {unknown} not found"
    with pytest.raises(MissingCell) as missing:
        await b.terminate(unknown)
    assert missing.value.cell_id == unknown
    assert str(missing.value) == f"exec cell {unknown} not found"
    with pytest.raises(MissingCell):
        b.pausable_cell(cell.cell_id)
    # A continuing cell's handle is bound to its session the same way.
    cont = await a.create_cell(request("await new Promise(() => {})"))
    with pytest.raises(ForeignHandle) as exc:
        await b.wait(cont, 1)
    assert str(exc.value) == f"exec cell {cont.cell_id} belongs to another session"
    with pytest.raises(ForeignHandle):
        await b.terminate(cont)
    with pytest.raises(MissingCell):
        b.cell(cont.cell_id)
    assert a.cell(cont.cell_id) == cont


# ---------------------------------------------------------------------------- pausable (39-50)


@EVERY
async def test_39_first_frontier_is_repeatable_and_paused(
    rt: Any, delegate: RecordingDelegate
) -> None:
    cell, f1 = await gen1_of_two_sequential(rt)
    assert await frontier_of(rt, cell) == f1
    delegate.release("tool-1")
    await asyncio.sleep(0.05)
    assert delegate.names() == ["block"]
    assert await frontier_of(rt, cell) == f1


@EVERY
async def test_40_concurrent_duplicate_resumes_then_gen_2(
    rt: Any, delegate: RecordingDelegate
) -> None:
    cell, f2 = await gen2_of_two_sequential(rt, delegate)
    assert [c.call_id for c in delegate.calls] == ["tool-1", "tool-2"]
    assert delegate.calls[1].input == {"n": 2}
    assert await frontier_of(rt, cell) == f2


@EVERY
async def test_41_stale_future_and_current_resumes_then_completion(
    rt: Any, delegate: RecordingDelegate
) -> None:
    cell, _ = await gen2_of_two_sequential(rt, delegate)
    assert await rt.resume(cell, 1) is ALREADY_RUNNING
    with pytest.raises(InvalidGeneration) as exc:
        await rt.resume(cell, 3)
    assert (exc.value.cell_id, exc.value.requested, exc.value.latest) == (cell.cell_id, 3, 2)
    assert (
        str(exc.value)
        == f"exec cell {cell.cell_id} cannot resume generation 3; latest generation is 2"
    )
    assert await rt.resume(cell, 2) is RESUMED
    assert await rt.resume(cell, 2) is ALREADY_RUNNING
    delegate.release("tool-2")
    done = await completion_of(rt, cell)
    assert texts(done.items) == ["done"] and done.error_text is None
    with pytest.raises(MissingCell):
        await rt.resume(cell, 2)


@CORE
async def test_42_parallel_calls_answered_one_per_frontier(
    rt: Any, delegate: RecordingDelegate
) -> None:
    cell = await rt.create_pausable_cell(
        request(
            "const r = await Promise.all([tools.block({n: 1}), tools.block({n: 2})]);"
            "text(JSON.stringify(r))"
        )
    )
    f1 = await frontier_of(rt, cell)
    assert f1.pending_tool_call_ids == ("tool-1", "tool-2")
    delegate.release("tool-1")
    assert await rt.resume(cell, 1) is RESUMED
    f2 = await frontier_of(rt, cell)
    assert (f2.generation, f2.items, f2.pending_tool_call_ids) == (2, (), ("tool-2",))
    delegate.release("tool-2")
    assert await rt.resume(cell, 2) is RESUMED
    assert texts((await completion_of(rt, cell)).items) == ['[{"n":1},{"n":2}]']


@CORE
async def test_43_parallel_frontier_drained_in_at_most_three_rounds(
    rt: Any, delegate: RecordingDelegate
) -> None:
    cell = await rt.create_pausable_cell(
        request("await Promise.all([tools.block({n: 1}), tools.block({n: 2})]); text('done')")
    )
    generations: list[int] = []
    items: list[OutputItem] = []
    event: Any = None
    for _ in range(3):
        event = await asyncio.wait_for(rt.wait_to_pending(cell), HANG)
        items.extend(event.frontier.items if isinstance(event, Pending) else event.items)
        if not isinstance(event, Pending):
            break
        generations.append(event.frontier.generation)
        delegate.release()
        assert await rt.resume(cell, event.frontier.generation) is RESUMED
    else:
        event = await asyncio.wait_for(rt.wait_to_pending(cell), HANG)
        items.extend(event.items)
    assert isinstance(event, Completed), event
    assert generations == sorted(set(generations)) and generations[0] == 1
    assert texts(items) == ["done"]


@CORE
async def test_44_wait_to_pending_after_resume_waits_for_new_work(
    rt: Any, delegate: RecordingDelegate
) -> None:
    cell = await rt.create_pausable_cell(request("await tools.block({}); text('done')"))
    await frontier_of(rt, cell)
    assert await rt.resume(cell, 1) is RESUMED
    task = asyncio.ensure_future(rt.wait_to_pending(cell))
    await still_pending(task, 0.05)
    delegate.release()
    assert await asyncio.wait_for(task, HANG) == Completed(T("done"))


@CORE
async def test_45_promise_nothing_settles_then_terminate(rt: Any) -> None:
    cell = await rt.create_pausable_cell(request('text("before"); await new Promise(() => {})'))
    assert await frontier_of(rt, cell) == PendingFrontier(1, T("before"), ())
    assert await asyncio.wait_for(rt.terminate(cell), HANG) == Terminated(())
    with pytest.raises(MissingCell):
        await rt.wait_to_pending(cell)


@CORE_NEUTRAL
async def test_46_synchronous_cell_completes_from_first_wait_to_pending(rt: Any) -> None:
    cell = await rt.create_pausable_cell(request('text("done")'))
    assert await completion_of(rt, cell) == Completed(T("done"))
    with pytest.raises(MissingCell):
        await rt.wait_to_pending(cell)
    with pytest.raises(MissingCell):
        rt.pausable_cell(cell.cell_id)


@CORE
async def test_47_timer_adds_a_call_in_a_later_frontier(
    rt: Any, delegate: RecordingDelegate
) -> None:
    cell = await rt.create_pausable_cell(
        request(
            "const third = new Promise(r => setTimeout(() => r(tools.block({n: 3})), 300));"
            "const all = await Promise.all([tools.block({n: 1}), tools.block({n: 2}), third]);"
            "text(all.map(x => x.n).join(','))"
        )
    )
    f1 = await frontier_of(rt, cell)
    assert f1.pending_tool_call_ids == ("tool-1", "tool-2")
    assert await rt.resume(cell, 1) is RESUMED
    f2 = await frontier_of(rt, cell)  # after the timer fired
    assert (f2.generation, f2.items, f2.pending_tool_call_ids) == (
        2,
        (),
        ("tool-1", "tool-2", "tool-3"),
    )
    assert [c.call_id for c in delegate.calls] == ["tool-1", "tool-2", "tool-3"]
    delegate.release()
    assert await rt.resume(cell, 2) is RESUMED
    frontiers, end = await drain_pausable(rt, cell)
    assert isinstance(end, Completed) and texts(end.items) == ["1,2,3"]
    assert all(f.items == () for f in frontiers)


@CORE
async def test_48_paused_cell_consumes_no_result_and_fires_no_timer(
    rt: Any, delegate: RecordingDelegate
) -> None:
    cell = await rt.create_pausable_cell(
        request(
            "const t = new Promise(r => setTimeout(() => { text('tick'); r(); }, 20));"
            "const v = await tools.block({n: 1}); await t; text('got ' + v.n)"
        )
    )
    f1 = await frontier_of(rt, cell)
    assert f1 == PendingFrontier(1, (), ("tool-1",))
    delegate.release("tool-1")
    await asyncio.sleep(0.15)
    assert await frontier_of(rt, cell) == f1
    assert await rt.resume(cell, 1) is RESUMED
    frontiers, end = await drain_pausable(rt, cell)
    assert isinstance(end, Completed)
    assert texts([i for f in frontiers for i in f.items] + list(end.items)) == ["tick", "got 1"]


@CORE
async def test_49_resume_without_any_frontier_is_invalid_generation_none(rt: Any) -> None:
    busy = await rt.create_pausable_cell(
        request("const t = Date.now(); while (Date.now() - t < 300) {} await tools.block({})")
    )
    with pytest.raises(InvalidGeneration) as exc:
        await rt.resume(busy, 1)
    assert (exc.value.cell_id, exc.value.requested, exc.value.latest) == (busy.cell_id, 1, None)
    assert (
        str(exc.value)
        == f"exec cell {busy.cell_id} cannot resume generation 1; latest generation is none"
    )
    await rt.terminate(busy)

    # A cell that completed (buffered) without ever reaching a frontier.
    done = await rt.create_pausable_cell(request("text('done')"))
    await asyncio.sleep(0.1)
    with pytest.raises(InvalidGeneration) as exc:
        await rt.resume(done, 1)
    assert (exc.value.requested, exc.value.latest) == (1, None)
    assert str(exc.value).endswith("latest generation is none")
    assert await completion_of(rt, done) == Completed(T("done"))


@CORE
async def test_50_cancelled_wait_to_pending_loses_nothing_and_unobserved_frontier(
    rt: Any, delegate: RecordingDelegate
) -> None:
    cell = await rt.create_pausable_cell(
        request(
            "text('a'); await tools.block({n: 1}); text('b'); await tools.block({n: 2}); text('c')"
        )
    )
    f1 = await frontier_of(rt, cell)
    assert texts(f1.items) == ["a"]
    assert await rt.resume(cell, 1) is RESUMED
    task = asyncio.ensure_future(rt.wait_to_pending(cell))
    await still_pending(task, 0.03)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    delegate.release("tool-1")
    await delegate.wait_calls(2)
    f2 = await frontier_of(rt, cell)
    assert (f2.generation, texts(f2.items), f2.pending_tool_call_ids) == (2, ["b"], ("tool-2",))

    other = await rt.create_pausable_cell(
        request("text('x'); await tools.block({n: 1}); text('y'); await tools.block({n: 2})")
    )
    g1 = await frontier_of(rt, other)
    assert texts(g1.items) == ["x"]
    assert await rt.resume(other, 1) is RESUMED
    delegate.release(g1.pending_tool_call_ids[0])
    await delegate.wait_calls(4)
    await asyncio.sleep(0.05)
    assert await asyncio.wait_for(rt.terminate(other), HANG) == Terminated(T("y"))


# ---------------------------------------------------------------------------- idempotent (51-55)


@EVERY
async def test_51_concurrent_keyed_creates_admit_one_cell(
    rt: Any, delegate: RecordingDelegate
) -> None:
    req = request(ECHO_SOURCE, idempotency_key="k51")
    handles = await asyncio.gather(*(rt.create_cell(req) for _ in range(5)))
    assert len(set(handles)) == 1 and len({hash(h) for h in handles}) == 1
    with pytest.raises(WrongCellKind) as info:
        await rt.create_pausable_cell(req)
    assert (info.value.cell_id, info.value.expected, info.value.actual) == (
        handles[0].cell_id,
        "pausable",
        "continuing",
    )
    assert str(info.value) == f"exec cell {handles[0].cell_id} is continuing, expected pausable"
    assert await rt.wait(handles[0], 10) == Completed(T('{"v":1}'))
    await asyncio.sleep(0.1)
    assert [c.cell_id for c in delegate.calls] == [handles[0].cell_id]


@CORE
async def test_52_key_reused_for_another_request(rt: Any) -> None:
    await rt.create_cell(request(ECHO_SOURCE, idempotency_key="k52"))
    with pytest.raises(IdempotencyConflict) as info:
        await rt.create_cell(request("text(2)", idempotency_key="k52"))
    assert info.value.key == "k52"
    assert str(info.value) == "idempotency key k52 was reused for a different request"
    with pytest.raises(IdempotencyConflict):  # another tool list is another request too
        await rt.create_cell(request(ECHO_SOURCE, ECHO, idempotency_key="k52"))


@CORE
@pytest.mark.parametrize("kind", KINDS)
async def test_52_every_field_of_the_request_counts(
    rt: Any, delegate: RecordingDelegate, kind: CellKind
) -> None:
    """Each way a request can differ is a conflict, before and after the cell closed; the
    conflict admits nothing and leaves the record; an equal request built from fresh objects
    (schema keys in another order) is a retry."""
    firsts = {}
    for mismatch, make in MISMATCHES.items():
        key = f"key-52-{kind}-{mismatch}"
        first = await create(rt, kind, base_request(key))
        firsts[key] = first
        differing = make(key)
        assert differing != base_request(key)
        with pytest.raises(IdempotencyConflict) as info:
            await create(rt, kind, differing)
        assert info.value.key == key
        assert str(info.value) == f"idempotency key {key} was reused for a different request"
        assert_same_handle(await create(rt, kind, base_request(key)), first)
        assert texts((await finish(rt, first)).items) == [ECHO_TEXT]
        with pytest.raises(IdempotencyConflict):  # still a conflict once the cell has closed
            await create(rt, kind, differing)
    await asyncio.sleep(0.05)
    assert [c.cell_id for c in delegate.calls] == [f.cell_id for f in firsts.values()]

    fresh = await create(rt, kind, base_request(f"key-fresh-{kind}"))
    rebuilt = CreateCellRequest(
        source=str(ECHO_SOURCE),
        tools=[
            ToolDefinition(
                "echo",
                "Returns its input.",
                # same schema, keys inserted in another order
                input_schema={"properties": {"v": {"type": "number"}}, "type": "object"},
                output_schema={"type": "object"},
            ),
            ToolDefinition(BLOCK.name, BLOCK.description),
        ],
        tool_call_id="call-52",
        idempotency_key=f"key-fresh-{kind}",
    )
    assert_same_handle(await create(rt, kind, rebuilt), fresh)
    await finish(rt, fresh)
    assert len(delegate.calls) == len(firsts) + 1


@CORE
async def test_53_keyed_retry_after_the_cell_closed(rt: Any, delegate: RecordingDelegate) -> None:
    req = request(ECHO_SOURCE, idempotency_key="k53")
    first = await rt.create_pausable_cell(req)
    _, end = await drain_pausable(rt, first)
    assert isinstance(end, Completed) and texts(end.items) == ['{"v":1}']
    retry = await rt.create_pausable_cell(req)
    assert retry == first
    with pytest.raises(MissingCell):
        rt.pausable_cell(retry.cell_id)
    with pytest.raises(MissingCell):
        await rt.wait_to_pending(retry)
    with pytest.raises(MissingCell):
        await rt.resume(retry, 1)
    with pytest.raises(MissingCell):
        await rt.terminate(retry)
    assert len(delegate.calls) == 1


@CORE
@pytest.mark.parametrize("kind", KINDS)
async def test_53_every_operation_on_the_retried_handle_is_missing(
    rt: Any, delegate: RecordingDelegate, kind: CellKind
) -> None:
    req = request(ECHO_SOURCE, idempotency_key=f"key-53-{kind}")
    first = await create(rt, kind, req)
    assert texts((await finish(rt, first)).items) == [ECHO_TEXT]
    await assert_missing(rt, first)
    retry = await create(rt, kind, req)
    assert_same_handle(retry, first)
    await assert_missing(rt, retry)
    assert_same_handle(await create(rt, kind, req), first)
    await asyncio.sleep(0.05)
    assert [c.cell_id for c in delegate.calls] == [first.cell_id]


@CORE
async def test_54_failed_keyed_admission_records_nothing(
    factory: SessionFactory, delegate: RecordingDelegate
) -> None:
    # The admission fails with EngineError because the session is full (docs/safety.md).
    rt = await factory.session(delegate, CellLimits(max_live_cells=1))
    blocker = await rt.create_cell(request("await tools.block({})"))
    req = request(ECHO_SOURCE, idempotency_key="k54")
    with pytest.raises(EngineError) as info:
        await rt.create_cell(req)
    assert info.value.text == "code mode session has too many live cells (1)"
    assert str(info.value) == info.value.text
    await rt.terminate(blocker)
    cell = await rt.create_cell(req)  # nothing was recorded: the retry admits
    assert await rt.wait(cell, 10) == Completed(T('{"v":1}'))
    assert await rt.create_cell(req) == cell


@CORE
async def test_55_keyed_create_cancelled_is_found_by_its_retry(
    rt: Any, delegate: RecordingDelegate
) -> None:
    for attempt in range(4):
        req = request(
            f"text(JSON.stringify(await tools.echo({{a: {attempt}}})))",
            idempotency_key=f"k55-{attempt}",
        )
        creator = asyncio.ensure_future(rt.create_cell(req))
        for _ in range(attempt):
            await asyncio.sleep(0)
        creator.cancel()
        try:
            first = await creator
        except asyncio.CancelledError:
            first = None
        retry = await asyncio.wait_for(rt.create_cell(req), HANG)
        assert first is None or retry == first
        assert await rt.wait(retry, 10) == Completed(T(f'{{"a":{attempt}}}'))
    await asyncio.sleep(0.1)
    assert [c.input for c in delegate.calls] == [{"a": i} for i in range(4)]


@CORE
async def test_55_unkeyed_create_cancelled_leaves_no_running_cell(
    rt: Any, delegate: RecordingDelegate
) -> None:
    cancelled: set[int] = set()
    for attempt in range(4):
        creator = asyncio.ensure_future(
            rt.create_cell(request(f"await tools.block({{a: {attempt}}})"))
        )
        for _ in range(attempt):
            await asyncio.sleep(0)
        creator.cancel()
        try:
            cell = await creator
        except asyncio.CancelledError:
            cancelled.add(attempt)
        else:
            await rt.terminate(cell)
    await asyncio.sleep(0.3)
    # Any call a cancelled create's cell made was cancelled: that cell was terminated.
    await eventually(lambda: len(delegate.cancelled) == len(delegate.calls), HANG)


# ---------------------------------------------------------------------------- lifecycle (56-64)


@EVERY
async def test_56_terminate_never_observed_and_completed_cells(
    rt: Any, delegate: RecordingDelegate
) -> None:
    cell = await rt.create_cell(request('text("a"); await tools.block({})'))
    await delegate.wait_calls(1)
    assert await rt.terminate(cell) == Terminated(T("a"))
    done = await rt.create_cell(request('text("x")'))
    await asyncio.sleep(0.1)
    assert await rt.terminate(done.cell_id) == Completed(T("x"))
    with pytest.raises(MissingCell):
        await rt.terminate(done)
    with pytest.raises(MissingCell):
        rt.cell(done.cell_id)


@CORE
async def test_57_second_terminate_during_cleanup(factory: SessionFactory) -> None:
    d = StubbornDelegate(hold=0.05)
    rt = await factory.session(d)
    cell = await rt.create_cell(request("await tools.stubborn({})", STUBBORN))
    await d.wait_calls(1)
    first = asyncio.ensure_future(rt.terminate(cell))
    await asyncio.sleep(0)  # the termination begins
    with pytest.raises(AlreadyTerminating) as info:
        await rt.terminate(cell)
    assert info.value.cell_id == cell.cell_id
    assert str(info.value) == f"exec cell {cell.cell_id} is already terminating"
    with pytest.raises(ClosedCell) as closed:
        await rt.wait(cell, 1)
    assert str(closed.value) == f"exec cell {cell.cell_id} closed unexpectedly"
    assert await asyncio.wait_for(first, HANG) == Terminated(())
    await eventually(lambda: d.cancelled == ["tool-1"])


@CORE
async def test_58_stubborn_tool_delays_neither_terminate_nor_shutdown(
    factory: SessionFactory,
) -> None:
    d = StubbornDelegate(hold=30)
    rt = await factory.session(d)
    cell = await rt.create_cell(request("await tools.stubborn({})", STUBBORN))
    await d.wait_calls(1)
    started = time.monotonic()
    assert await rt.terminate(cell) == Terminated(())
    if factory.in_process:
        assert time.monotonic() - started < 1.0
    await rt.create_cell(request("await tools.stubborn({})", STUBBORN))
    await d.wait_calls(2)
    shutdown_started = time.monotonic()
    await asyncio.wait_for(rt.shutdown(), HANG)
    if factory.in_process:
        assert time.monotonic() - shutdown_started < 1.0
    assert time.monotonic() - started < 10  # a hang bound: 30 s holds are not waited for


@CORE
@pytest.mark.parametrize(
    "source",
    [
        "while (true) {}",
        "await tools.echo({}); while (true) {}",
        "Promise.resolve().then(() => { while (true) {} }); await new Promise(() => {})",
        "setTimeout(() => { for (;;) {} }, 1); await new Promise(() => {})",
    ],
)
async def test_59_runaway_loop_is_observed_and_terminated(
    rt: Any, factory: SessionFactory, source: str
) -> None:
    async with heartbeat() as hb:
        cell = await rt.create_cell(request(source))
        await asyncio.sleep(0.05)
        assert await asyncio.wait_for(rt.wait(cell, 0.001), HANG) == Yielded(())
        started = time.monotonic()
        assert await asyncio.wait_for(rt.terminate(cell), HANG) == Terminated(())
        if factory.in_process:
            assert time.monotonic() - started < 1.0
    # The loop ticked while the runaway spun. How often it ticked also depends on how much CPU
    # the loop's thread got: the runaway holds one of the test machine's two cores and a pool
    # refill may hold the other (CI once saw 4 ticks of 5 ms in the block's ~60 ms), so the
    # heartbeat's stall bound (a gap minus the time spent waiting for a CPU) is the measure of
    # responsiveness and the count only shows that the loop ran.
    assert hb.ticks >= 3


@EVERY
async def test_60_shutdown_interrupts_cpu_bound_cells(
    factory: SessionFactory, delegate: RecordingDelegate
) -> None:
    rt = await factory.session(delegate)
    async with heartbeat():
        cells = [await rt.create_cell(request("while (true) {}")) for _ in range(3)]
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await asyncio.wait_for(rt.shutdown(), HANG)
        if factory.in_process:
            assert time.monotonic() - started < 1.0
    assert rt.is_alive is False
    with pytest.raises(ShuttingDown) as info:
        await rt.create_cell(request("text(1)"))
    assert str(info.value) == "code mode session is shutting down"
    with pytest.raises(ShuttingDown):
        await rt.create_pausable_cell(request("text(1)"))
    with pytest.raises(MissingCell):
        await rt.wait(cells[0], 0)
    with pytest.raises(MissingCell):
        rt.cell(cells[1].cell_id)
    await rt.shutdown()  # idempotent


@CORE
async def test_61_concurrent_and_cancelled_shutdowns(
    factory: SessionFactory, delegate: RecordingDelegate
) -> None:
    rt = await factory.session(delegate)
    cell = await rt.create_cell(request("await tools.block({})"))
    await delegate.wait_calls(1)
    racing = asyncio.ensure_future(rt.create_cell(request("text(1)")))
    s1 = asyncio.ensure_future(rt.shutdown())
    s2 = asyncio.ensure_future(rt.shutdown())
    await asyncio.wait_for(asyncio.gather(s1, s2), HANG)
    try:
        raced = await racing
    except ShuttingDown:
        pass
    else:
        with pytest.raises(MissingCell):
            await rt.wait(raced, 0)
    with pytest.raises(MissingCell):
        await rt.wait(cell, 0)

    rt2 = await factory.session(RecordingDelegate())
    await rt2.create_cell(request("while (true) {}"))
    s3 = asyncio.ensure_future(rt2.shutdown())
    await asyncio.sleep(0)
    s3.cancel()
    with pytest.raises(asyncio.CancelledError):
        await s3
    assert rt2.is_alive is False
    await asyncio.wait_for(rt2.shutdown(), HANG)


@CORE
async def test_62_shutdown_cancels_a_draining_notification(factory: SessionFactory) -> None:
    d = RecordingDelegate()
    d.notify_gate = asyncio.Event()
    rt = await factory.session(d)
    cell = await rt.create_cell(request('notify("n"); text("done")'))
    await asyncio.wait_for(d.notify_started.wait(), HANG)
    waiter = asyncio.ensure_future(rt.wait(cell, 60))
    await asyncio.sleep(0.02)
    await asyncio.wait_for(rt.shutdown(), HANG)
    assert await asyncio.wait_for(waiter, HANG) == Terminated(T("done"))


@CORE
async def test_63_termination_beats_a_completion_waiting_to_commit(factory: SessionFactory) -> None:
    d = RecordingDelegate()
    d.notify_gate = asyncio.Event()
    rt = await factory.session(d)
    cell = await rt.create_cell(request('store("k", 1); notify("n"); text("done")'))
    await asyncio.wait_for(d.notify_started.wait(), HANG)
    assert await rt.terminate(cell) == Terminated(T("done"))
    check = await rt.create_cell(request('text(String(load("k")))'))
    assert await rt.wait(check, 10) == Completed(T("undefined"))


@EVERY
async def test_64_completion_cancels_unawaited_calls_first(
    rt: Any, factory: SessionFactory, delegate: RecordingDelegate
) -> None:
    cell = await rt.create_cell(request('tools.block({}); text("done")'))
    assert await rt.wait(cell, 10) == Completed(T("done"))
    if factory.in_process:  # before the completion was delivered
        assert delegate.cancelled == ["tool-1"]
    await eventually(lambda: delegate.cancelled == ["tool-1"])


# ---------------------------------------------------------------------------- more of the API


@EVERY
async def test_nested_calls_values_errors_and_stored_values(
    rt: Any, delegate: RecordingDelegate
) -> None:
    cell = await rt.create_cell(
        request(
            'store("k", {n: 1}); text(await tools.echo({v: [1, "two", null]}));'
            'text(await tools.upper("abc"));'
            'try { await tools.fail({message: "boom"}) } catch (e) { text(e.message) }'
        )
    )
    assert await rt.wait(cell, 10) == Completed(T('{"v":[1,"two",null]}', "ABC", "boom"))
    assert [c.call_id for c in delegate.calls] == ["tool-1", "tool-2", "tool-3"]
    assert delegate.calls[1].input == "abc" and delegate.calls[1].tool.kind == "freeform"
    later = await rt.create_cell(request('text(JSON.stringify(load("k")))'))
    assert await rt.wait(later, 10) == Completed(T('{"n":1}'))
    failing = await rt.create_cell(request('text("before"); throw new Error("bad")'))
    event = await rt.wait(failing, 10)
    assert isinstance(event, Completed) and event.items == T("before")
    assert event.error_text is not None and "Error: bad" in event.error_text


@CORE
async def test_limits_apply_to_every_cell(
    factory: SessionFactory, delegate: RecordingDelegate
) -> None:
    limits = CellLimits(max_tool_calls=2)
    rt = await factory.session(delegate, limits)
    assert rt.limits == limits
    cell = await rt.create_cell(
        request("for (let i = 0; i < 3; i++) { text(String(i)); await tools.echo({i}) }")
    )
    event = await rt.wait(cell, 10)
    assert event == Completed(T("0", "1", "2"), "exec cell exceeded max_tool_calls (2)")


@CORE
async def test_delegate_raising_cancellation_itself_rejects_the_call(
    factory: SessionFactory,
) -> None:
    class SelfCancelling(RecordingDelegate):
        async def invoke_tool(self, call: NestedToolCall) -> Any:
            raise asyncio.CancelledError()

    rt = await factory.session(SelfCancelling())
    cell = await rt.create_cell(
        request("try { await tools.echo({}) } catch (e) { text(e.message) }")
    )
    assert await rt.wait(cell, 10) == Completed(T("tool `echo` was cancelled"))


@CORE
async def test_tool_results_that_are_not_json_and_failing_notifications(
    factory: SessionFactory,
) -> None:
    class Odd(RecordingDelegate):
        async def invoke_tool(self, call: NestedToolCall) -> Any:
            return {1, 2}  # not JSON

        async def notify(self, call_id: str, cell_id: str, text: str) -> None:
            raise RuntimeError("notify broke")

    rt = await factory.session(Odd())
    cell = await rt.create_cell(
        request('notify("x"); try { await tools.echo({}) } catch (e) { text(e.message) }')
    )
    assert await rt.wait(cell, 10) == Completed(T("tool `echo` returned a value that is not JSON"))


@CORE
async def test_wait_caller_cancelled_while_cell_spins(rt: Any) -> None:
    async with heartbeat():
        cell = await rt.create_cell(request("while (true) {}"))
        waiter = asyncio.ensure_future(rt.wait(cell, 60))
        await asyncio.sleep(0.02)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert await asyncio.wait_for(rt.terminate(cell), HANG) == Terminated(())


@CORE
async def test_delegate_that_never_returns_is_cancelled_by_terminate(
    rt: Any, factory: SessionFactory, delegate: RecordingDelegate
) -> None:
    cell = await rt.create_cell(request("await tools.block({})"))
    await delegate.wait_calls(1)
    assert await rt.wait(cell, 0.02) == Yielded(())
    assert await rt.terminate(cell) == Terminated(())
    if factory.in_process:  # cancelled before terminate returned
        assert delegate.cancelled == ["tool-1"]
    await eventually(lambda: delegate.cancelled == ["tool-1"])


@CORE
async def test_create_request_must_be_a_request(rt: Any) -> None:
    with pytest.raises(TypeError):
        await rt.create_cell("text(1)")
    with pytest.raises(TypeError):
        await rt.create_cell(CreateCellRequest("text(1)", tools=["echo"]))  # type: ignore[list-item]


@CORE
async def test_async_with_shuts_down(factory: SessionFactory, delegate: RecordingDelegate) -> None:
    rt = await factory.session(delegate)
    async with rt as same:
        assert same is rt
        cell = await rt.create_cell(request("while (true) {}"))
        assert rt.is_alive
    assert not rt.is_alive
    with pytest.raises(MissingCell):
        await rt.wait(cell, 0)


@CORE
async def test_tools_normalised_and_default_function_input(
    rt: Any, delegate: RecordingDelegate
) -> None:
    hidden = ToolDefinition(
        "hidden-dynamic-tool", "d", namespace="ns", input_schema={"type": "object"}
    )
    cell = await rt.create_cell(
        request("text(JSON.stringify(await tools.hidden_dynamic_tool()))", hidden, BLOCK)
    )
    assert await rt.wait(cell, 10) == Completed(T("{}"))
    assert delegate.calls[0].tool == hidden and delegate.calls[0].input == {}
