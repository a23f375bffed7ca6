"""Continuing cells on real V8: observation rules of SPEC section 4 (scenarios 27-36)."""

from __future__ import annotations

import asyncio

import pytest

from codemode import (
    BusyObserver,
    Completed,
    MissingCell,
    SessionRuntime,
    Terminated,
    TextItem,
    ToolDefinition,
    Yielded,
)
from conftest import RecordingDelegate, request


def T(*texts: str) -> tuple[TextItem, ...]:
    return tuple(TextItem(t) for t in texts)


async def test_27_cell_runs_before_any_observation(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    first, second = ToolDefinition("first"), ToolDefinition("second")
    cell = await runtime.create_cell(
        request('await tools.first({}); await tools.second({}); text("done")', first, second)
    )
    await delegate.wait_calls(1)
    delegate.release("tool-1")
    await delegate.wait_calls(2)
    assert delegate.names() == ["first", "second"]
    delegate.release("tool-2")
    assert await runtime.wait(cell, 10) == Completed(T("done"))


async def test_28_initial_yield(runtime: SessionRuntime) -> None:
    cell = await runtime.create_cell(request('text("before"); yield_control(); text("after")'))
    async with asyncio.timeout(2):
        assert await runtime.wait(cell, 60) == Yielded(T("before"))
        assert await runtime.wait(cell, 60) == Completed(T("after"))
    with pytest.raises(MissingCell):
        await runtime.wait(cell, 1)


async def test_29_initial_yield_then_blocking_tool(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cell = await runtime.create_cell(
        request('text("before"); yield_control(); await tools.block({}); text("after")')
    )
    await delegate.wait_calls(1)
    assert await runtime.wait(cell, 60) == Yielded(T("before"))
    waiter = asyncio.ensure_future(runtime.wait(cell, 60))
    await asyncio.sleep(0.02)
    assert not waiter.done()
    delegate.release()
    assert await asyncio.wait_for(waiter, 5) == Completed(T("after"))


async def test_30_unattached_yield_after_first_delivery_does_not_end_wait(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cell = await runtime.create_cell(
        request(
            'text("a"); yield_control(); await tools.block({}); text("b"); yield_control();'
            "await tools.block({}); text('c')"
        )
    )
    assert await runtime.wait(cell, 60) == Yielded(T("a"))
    delegate.release("tool-1")
    await delegate.wait_calls(2)  # the second yield happened with no observer attached
    waiter = asyncio.ensure_future(runtime.wait(cell, 60))
    await asyncio.sleep(0.02)
    assert not waiter.done()
    delegate.release("tool-2")
    assert await asyncio.wait_for(waiter, 5) == Completed(T("b", "c"))


async def test_31_budget_runs_out_and_the_cell_keeps_running(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cell = await runtime.create_cell(request('await tools.block({}); text("after")'))
    await delegate.wait_calls(1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await runtime.wait(cell, 0.05) == Yielded(())
    assert loop.time() - started >= 0.05
    delegate.release()
    assert await runtime.wait(cell, 10) == Completed(T("after"))


async def test_32_completion_is_buffered(runtime: SessionRuntime) -> None:
    cell = await runtime.create_cell(request('text("done")'))
    await asyncio.sleep(0.1)
    assert await asyncio.wait_for(runtime.wait(cell, 60), 1) == Completed(T("done"))
    with pytest.raises(MissingCell):
        await runtime.wait(cell, 1)


async def test_33_second_observer_is_busy(runtime: SessionRuntime, delegate: RecordingDelegate) -> None:
    cell = await runtime.create_cell(request("await tools.block({})"))
    first = asyncio.ensure_future(runtime.wait(cell, 60))
    await asyncio.sleep(0.01)
    with pytest.raises(BusyObserver) as info:
        await runtime.wait(cell, 1)
    assert str(info.value) == f"exec cell {cell.cell_id} already has an active observer"
    assert await runtime.terminate(cell) == Terminated(())
    assert await asyncio.wait_for(first, 2) == Terminated(())


async def test_34_cancelled_wait_loses_nothing(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cell = await runtime.create_cell(
        request('text("a"); await tools.block({}); text("b"); await tools.block({}); text("c")')
    )
    await delegate.wait_calls(1)
    waiter = asyncio.ensure_future(runtime.wait(cell, 60))
    await asyncio.sleep(0.02)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    delegate.release("tool-1")
    await delegate.wait_calls(2)
    delegate.release("tool-2")
    await asyncio.sleep(0.05)
    assert await runtime.wait(cell, 5) == Completed(T("a", "b", "c"))


async def test_34b_cancel_racing_a_delivery_loses_nothing(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    # The event is prepared (the deadline fired) but the waiting task is cancelled before it
    # resumes: the prepared items go back and reach the next observer.
    cell = await runtime.create_cell(request('text("a"); await tools.block({}); text("b")'))
    await delegate.wait_calls(1)
    waiter = asyncio.ensure_future(runtime.wait(cell, 0))
    await asyncio.sleep(0)  # the observer attaches; its zero deadline is scheduled
    await asyncio.sleep(0)  # the deadline fires and prepares Yielded(["a"])
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    delegate.release()
    assert await runtime.wait(cell, 5) == Completed(T("a", "b"))


async def test_35_three_yields_deliver_everything_once(runtime: SessionRuntime) -> None:
    source = "".join(f'text("a{i}"); text("b{i}"); yield_control();' for i in range(3))
    cell = await runtime.create_cell(request(source + 'text("end")'))
    items: list[TextItem] = []
    while True:
        event = await runtime.wait(cell, 5)
        items.extend(event.items)  # type: ignore[arg-type]
        if not isinstance(event, Yielded):
            break
    assert tuple(items) == T("a0", "b0", "a1", "b1", "a2", "b2", "end")


async def test_36_completion_waits_for_notifications(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    delegate.notify_gate = asyncio.Event()
    cell = await runtime.create_cell(request('notify("n1"); text("done")'))
    await asyncio.wait_for(delegate.notify_started.wait(), 2)
    waiter = asyncio.ensure_future(runtime.wait(cell, 60))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    delegate.notify_gate.set()
    assert await asyncio.wait_for(waiter, 2) == Completed(T("done"))
    assert [n[2] for n in delegate.notifications] == ["n1"]


async def test_notifications_are_delivered_in_order(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cell = await runtime.create_cell(request("for (let i = 0; i < 20; i++) notify(`n${i}`)"))
    await runtime.wait(cell, 5)
    assert [n[2] for n in delegate.notifications] == [f"n{i}" for i in range(20)]


async def test_negative_budget_counts_as_zero(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cell = await runtime.create_cell(request("await tools.block({})"))
    assert await asyncio.wait_for(runtime.wait(cell, -5), 1) == Yielded(())


async def test_yield_control_while_observed_returns_at_once(runtime: SessionRuntime) -> None:
    cell = await runtime.create_cell(
        request(
            'await new Promise(r => setTimeout(r, 20)); text("x"); yield_control();'
            "await new Promise(() => {})"
        )
    )
    assert await asyncio.wait_for(runtime.wait(cell, 60), 2) == Yielded(T("x"))
    await runtime.terminate(cell)
