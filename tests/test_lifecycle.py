"""Handles, termination, shutdown and teardown on real V8 (SPEC 1.4, 7; scenarios 37-38, 56-65).

Every test that involves a hostile or stuck cell runs a heartbeat task and checks that the event
loop never stalled, so "the host process is sacred" is pinned, not assumed.
"""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from typing import Any

import pytest

from codemode import (
    AlreadyTerminating,
    CellKind,
    Completed,
    CreateCellRequest,
    ForeignHandle,
    MissingCell,
    NestedToolCall,
    SessionRuntime,
    ShuttingDown,
    Terminated,
    WrongCellKind,
    Yielded,
)
from conftest import RecordingDelegate, engine_threads, request
from scenarios import STUBBORN, StubbornDelegate, T, heartbeat

# ---------------------------------------------------------------- handles


async def test_37_wrong_kind(runtime: SessionRuntime) -> None:
    c = await runtime.create_cell(request("await new Promise(() => {})"))
    p = await runtime.create_pausable_cell(request("await new Promise(() => {})"))
    with pytest.raises(WrongCellKind) as info:
        await runtime.wait_to_pending(c)  # type: ignore[arg-type]
    assert (info.value.expected, info.value.actual) == ("pausable", "continuing")
    assert str(info.value) == f"exec cell {c.cell_id} is continuing, expected pausable"
    with pytest.raises(WrongCellKind) as info:
        await runtime.wait(p, 1)  # type: ignore[arg-type]
    assert (info.value.expected, info.value.actual) == ("continuing", "pausable")
    with pytest.raises(WrongCellKind):
        runtime.cell(p.cell_id)
    with pytest.raises(WrongCellKind):
        runtime.pausable_cell(c.cell_id)
    assert runtime.cell(c.cell_id) == c and runtime.pausable_cell(p.cell_id) == p
    assert c.kind is CellKind.CONTINUING and p.kind is CellKind.PAUSABLE
    assert hash(runtime.cell(c.cell_id)) == hash(c)


async def test_38_foreign_handle_and_unknown_id(make_runtime: Any) -> None:
    a, b = make_runtime(), make_runtime()
    cell = await a.create_cell(request("await new Promise(() => {})"))
    with pytest.raises(ForeignHandle) as info:
        await b.wait(cell, 1)
    assert str(info.value) == f"exec cell {cell.cell_id} belongs to another session"
    with pytest.raises(ForeignHandle):
        await b.terminate(cell)
    with pytest.raises(MissingCell) as missing:
        b.cell("0000000000000000")
    assert str(missing.value) == "exec cell 0000000000000000 not found"
    with pytest.raises(MissingCell):
        await b.terminate("0000000000000000")
    assert cell != b.cell  # handles of different runtimes never compare equal


# ---------------------------------------------------------------- termination


async def test_56_terminate_never_observed_and_completed_cells(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cell = await runtime.create_cell(request("await tools.block({})"))
    await delegate.wait_calls(1)
    assert await runtime.terminate(cell) == Terminated(())
    done = await runtime.create_cell(request('text("x")'))
    await asyncio.sleep(0.1)
    assert await runtime.terminate(done) == Completed(T("x"))
    with pytest.raises(MissingCell):
        await runtime.terminate(done)
    with pytest.raises(MissingCell):
        runtime.cell(done.cell_id)


async def test_terminate_returns_unobserved_output(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cell = await runtime.create_cell(request('text("a"); await tools.block({})'))
    await delegate.wait_calls(1)
    assert await runtime.terminate(cell.cell_id) == Terminated(T("a"))


async def test_57_second_terminate_during_cleanup(make_runtime: Any) -> None:
    d = StubbornDelegate(hold=0.05)
    rt = make_runtime(d=d)
    cell = await rt.create_cell(request("await tools.stubborn({})", STUBBORN))
    await d.wait_calls(1)
    first = asyncio.ensure_future(rt.terminate(cell))
    await asyncio.sleep(0.01)
    with pytest.raises(AlreadyTerminating) as info:
        await rt.terminate(cell)
    assert str(info.value) == f"exec cell {cell.cell_id} is already terminating"
    assert await first == Terminated(())
    assert d.cancelled == ["tool-1"]


async def test_58_stubborn_tool_delays_nothing(make_runtime: Any) -> None:
    d = StubbornDelegate(hold=30)
    rt = make_runtime(d=d)
    cell = await rt.create_cell(request("await tools.stubborn({})", STUBBORN))
    await d.wait_calls(1)
    started = time.monotonic()
    assert await rt.terminate(cell) == Terminated(())
    assert time.monotonic() - started < 1.0
    await rt.create_cell(request("await tools.stubborn({})", STUBBORN))
    await d.wait_calls(2)
    started = time.monotonic()
    await rt.shutdown()
    assert time.monotonic() - started < 1.0


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
    runtime: SessionRuntime, source: str
) -> None:
    async with heartbeat() as hb:
        cell = await runtime.create_cell(request(source))
        await asyncio.sleep(0.05)
        assert await asyncio.wait_for(runtime.wait(cell, 0.001), 1) == Yielded(())
        started = time.monotonic()
        assert await asyncio.wait_for(runtime.terminate(cell), 1) == Terminated(())
        assert time.monotonic() - started < 1.0
    assert hb.ticks > 5


async def test_late_answer_into_a_spinning_cell(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    async with heartbeat():
        cell = await runtime.create_cell(
            request("tools.block({}).then(() => text('r')); await tools.echo({}); while (true) {}")
        )
        await delegate.wait_calls(2)
        delegate.release()  # an answer arrives while the isolate spins
        await asyncio.sleep(0.05)
        assert await asyncio.wait_for(runtime.terminate(cell), 1) == Terminated(())


async def test_60_shutdown_interrupts_cpu_bound_cells(make_runtime: Any) -> None:
    rt = make_runtime()
    async with heartbeat():
        for _ in range(3):
            await rt.create_cell(request("while (true) {}"))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await asyncio.wait_for(rt.shutdown(), 2)
        assert time.monotonic() - started < 1.0
    assert rt.is_alive is False
    with pytest.raises(ShuttingDown) as info:
        await rt.create_cell(request("text(1)"))
    assert str(info.value) == "code mode session is shutting down"
    with pytest.raises(ShuttingDown):
        await rt.create_pausable_cell(request("text(1)"))


async def test_61_concurrent_and_cancelled_shutdowns(
    make_runtime: Any, delegate: RecordingDelegate
) -> None:
    rt = make_runtime()
    cell = await rt.create_cell(request("await tools.block({})"))
    await delegate.wait_calls(1)
    racing = asyncio.ensure_future(rt.create_cell(request("text(1)")))
    s1 = asyncio.ensure_future(rt.shutdown())
    s2 = asyncio.ensure_future(rt.shutdown())
    await asyncio.wait_for(asyncio.gather(s1, s2), 2)
    try:
        raced = await racing
    except ShuttingDown:
        pass
    else:
        with pytest.raises(MissingCell):
            await rt.wait(raced, 0)  # it registered, and was terminated with the rest
    with pytest.raises(MissingCell):
        await rt.wait(cell, 0)

    rt2 = make_runtime()
    await rt2.create_cell(request("while (true) {}"))
    s3 = asyncio.ensure_future(rt2.shutdown())
    await asyncio.sleep(0)
    s3.cancel()
    with pytest.raises(asyncio.CancelledError):
        await s3
    assert rt2.is_alive is False
    await asyncio.wait_for(rt2.shutdown(), 2)  # the cleanup went on and finishes


async def test_62_shutdown_cancels_a_draining_notification(make_runtime: Any) -> None:
    d = RecordingDelegate()
    d.notify_gate = asyncio.Event()  # never set: the notification hangs
    rt = make_runtime(d=d)
    cell = await rt.create_cell(request('notify("n"); text("done")'))
    await asyncio.wait_for(d.notify_started.wait(), 2)
    waiter = asyncio.ensure_future(rt.wait(cell, 60))
    await asyncio.sleep(0.02)
    await asyncio.wait_for(rt.shutdown(), 2)
    assert await asyncio.wait_for(waiter, 1) == Terminated(T("done"))


async def test_63_termination_beats_a_completion_waiting_to_commit(make_runtime: Any) -> None:
    d = RecordingDelegate()
    d.notify_gate = asyncio.Event()
    rt = make_runtime(d=d)
    cell = await rt.create_cell(request('store("k", 1); notify("n"); text("done")'))
    await asyncio.wait_for(d.notify_started.wait(), 2)  # the completion waits on the notification
    assert await rt.terminate(cell) == Terminated(T("done"))
    check = await rt.create_cell(request('text(String(load("k")))'))
    assert await rt.wait(check, 5) == Completed(T("undefined"))


async def test_64_completion_cancels_unawaited_calls_first(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cell = await runtime.create_cell(request('tools.block({}); text("done")'))
    assert await runtime.wait(cell, 5) == Completed(T("done"))
    assert delegate.cancelled == ["tool-1"]


async def test_65_garbage_collected_runtime_stops_its_cells() -> None:
    async with SessionRuntime(RecordingDelegate()) as warm:  # start the executor's thread
        await warm.wait(await warm.create_cell(request("text(1)")), 5)
    base = engine_threads()
    rt = SessionRuntime(RecordingDelegate())
    alive = weakref.ref(rt)
    await rt.create_cell(request("while (true) {}"))
    await asyncio.sleep(0.05)
    assert engine_threads() > base
    del rt
    gc.collect()
    assert alive() is None, "the runtime is still referenced"
    for _ in range(100):  # up to 1 s
        if engine_threads() <= base:
            break
        await asyncio.sleep(0.01)
    assert engine_threads() <= base


async def test_async_with_shuts_down(delegate: RecordingDelegate) -> None:
    async with SessionRuntime(delegate) as rt:
        cell = await rt.create_cell(request("while (true) {}"))
        assert rt.is_alive
    assert not rt.is_alive
    with pytest.raises(MissingCell):
        await rt.wait(cell, 0)


# ---------------------------------------------------------------- bad delegates


async def test_delegate_that_never_returns_is_cancelled_by_terminate(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cell = await runtime.create_cell(request("await tools.block({})"))
    await delegate.wait_calls(1)
    assert await runtime.wait(cell, 0.02) == Yielded(())
    assert await runtime.terminate(cell) == Terminated(())
    assert delegate.cancelled == ["tool-1"]


async def test_delegate_raising_base_cancellation_itself(make_runtime: Any) -> None:
    class SelfCancelling(RecordingDelegate):
        async def invoke_tool(self, call: NestedToolCall) -> Any:
            raise asyncio.CancelledError()

    rt = make_runtime(d=SelfCancelling())
    cell = await rt.create_cell(request("try { await tools.echo({}) } catch (e) { text(e.message) }"))
    assert await asyncio.wait_for(rt.wait(cell, 5), 5) == Completed(T("tool `echo` was cancelled"))


async def test_notify_failures_are_only_logged(make_runtime: Any) -> None:
    class BadNotify(RecordingDelegate):
        async def notify(self, call_id: str, cell_id: str, text: str) -> None:
            raise RuntimeError("notify broke")

    rt = make_runtime(d=BadNotify())
    cell = await rt.create_cell(request('notify("x"); text("ok")'))
    assert await rt.wait(cell, 5) == Completed(T("ok"))


async def test_wait_caller_cancelled_while_cell_spins(runtime: SessionRuntime) -> None:
    async with heartbeat():
        cell = await runtime.create_cell(request("while (true) {}"))
        waiter = asyncio.ensure_future(runtime.wait(cell, 60))
        await asyncio.sleep(0.02)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert await runtime.terminate(cell) == Terminated(())


async def test_create_request_must_be_a_request(runtime: SessionRuntime) -> None:
    with pytest.raises(TypeError):
        await runtime.create_cell("text(1)")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await runtime.create_cell(CreateCellRequest("text(1)", tools=["echo"]))  # type: ignore[list-item]


def test_loop_closing_without_shutdown_stops_cells() -> None:
    """SPEC 7.5: a runtime whose loop closes without a shutdown stops its cells' JavaScript,
    even while the runtime object itself is still referenced."""
    kept: list[SessionRuntime] = []

    async def warm() -> None:
        async with SessionRuntime(RecordingDelegate()) as rt:
            await rt.wait(await rt.create_cell(request("text(1)")), 5)

    async def leave_spinning() -> None:
        rt = SessionRuntime(RecordingDelegate())
        kept.append(rt)
        await rt.create_cell(request("while (true) {}"))
        await rt.create_cell(request("await new Promise(() => {})"))
        await asyncio.sleep(0.05)

    asyncio.run(warm())
    base = engine_threads()
    asyncio.run(leave_spinning())
    for _ in range(100):  # up to 1 s
        if engine_threads() <= base:
            break
        time.sleep(0.01)
    assert engine_threads() <= base
    assert kept[0].is_alive is False
