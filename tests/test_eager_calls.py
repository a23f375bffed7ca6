"""Nested calls whose delegate answers at once start eagerly (docs/call-path.md): no asyncio task
is scheduled for them, yet a tool still runs as a task of its own (``current_task``,
``asyncio.timeout``, cancellation), and queueing, approvals and errors behave as before."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pytest

from codemode import (
    CellLimits,
    Completed,
    CreateCellRequest,
    SessionRuntime,
    Terminated,
    TextItem,
    ToolDefinition,
    tools_delegate,
)
from codemode.cell.eager import start_eager

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


async def run(rt: SessionRuntime, source: str, *tools: str) -> Completed:
    cell = await rt.create_cell(
        CreateCellRequest(source, tuple(ToolDefinition(t) for t in tools or ("t",)))
    )
    ev = await asyncio.wait_for(rt.wait(cell, 60), 90)
    assert isinstance(ev, Completed), ev
    return ev


# ------------------------------------------------------------------ start_eager itself


async def test_a_coroutine_that_does_not_suspend_finishes_inside_start_eager() -> None:
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    seen: list[Any] = []

    async def quick() -> int:
        seen.append(asyncio.current_task())
        return 7

    task = start_eager(loop, quick())
    assert task.done() and task.result() == 7
    assert seen == [task]  # its own task, not the caller's
    assert asyncio.current_task() is me  # the caller's task is current again


async def test_a_coroutine_that_suspends_goes_on_as_the_same_task() -> None:
    loop = asyncio.get_running_loop()
    gate = loop.create_future()
    seen: list[Any] = []

    async def slow() -> str:
        seen.append(asyncio.current_task())
        await gate
        seen.append(asyncio.current_task())
        return "ok"

    task = start_eager(loop, slow())
    assert not task.done()
    assert task in asyncio.all_tasks()
    gate.set_result(None)
    assert await task == "ok"
    assert seen == [task, task]


async def test_a_timeout_inside_an_eager_task_cancels_that_task_only() -> None:
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    assert me is not None

    async def times_out() -> None:
        async with asyncio.timeout(0.01):
            await asyncio.sleep(10)

    task = start_eager(loop, times_out())
    with pytest.raises(TimeoutError):
        await task
    assert me.cancelling() == 0


async def test_cancelling_an_eager_task_and_context_variables() -> None:
    loop = asyncio.get_running_loop()
    VAR.set("caller")

    async def sets_var() -> str:
        before = VAR.get()
        VAR.set("tool")
        await asyncio.sleep(10)
        return before

    task = start_eager(loop, sets_var())
    assert VAR.get() == "caller"  # the task has a copy of the context, as create_task gives
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


# ------------------------------------------------------------------ through a session


async def test_tools_that_answer_at_once_need_no_task_per_call() -> None:
    loop = asyncio.get_running_loop()
    created = 0
    factory = loop.get_task_factory()

    def counting(lp: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
        nonlocal created
        created += 1
        return asyncio.Task(coro, loop=lp, **kw)

    def plain(value: Any) -> Any:  # a sync function
        return value

    async def quick(value: Any) -> Any:  # an async one that never suspends
        return value

    limits = CellLimits(max_parallel_tool_calls=10, max_tool_calls=1000)
    async with SessionRuntime(tools_delegate({"p": plain, "q": quick}), limits=limits) as rt:
        await run(rt, "await tools.p({}); await tools.q({})", "p", "q")  # warm the pool
        loop.set_task_factory(counting)  # type: ignore[arg-type]
        try:
            ev = await run(
                rt,
                "let n = 0; for (let i = 0; i < 50; i++) n += (await tools.p({i})).i"
                " + (await tools.q({i})).i;"
                "const r = await Promise.all(Array.from({length: 100}, (_, i) => tools.q({i})));"
                "text(String(n + r.length))",
                "p",
                "q",
            )
        finally:
            loop.set_task_factory(factory)
    assert ev.items == (TextItem(str(2 * 1225 + 100)),)
    # The cell's own tasks (pump, observer...), not one per call: 200 calls were made.
    assert created < 20, created


async def test_a_tool_using_timeout_and_current_task_inside_a_cell() -> None:
    """asyncio.timeout and current_task in a tool see the tool's own task: a timeout that fires
    rejects that call only, and the cell goes on."""
    tasks: list[Any] = []

    async def timed(value: Any) -> Any:
        tasks.append(asyncio.current_task())
        async with asyncio.timeout(0.02 if value.get("slow") else 5):
            if value.get("slow"):
                await asyncio.sleep(10)
        return {"ok": asyncio.current_task() is tasks[-1]}

    async with SessionRuntime(tools_delegate({"t": timed})) as rt:
        ev = await run(
            rt,
            "const a = await tools.t({});"
            "let b; try { await tools.t({slow: true}); } catch (e) { b = e.message; }"
            "text(JSON.stringify([a, b]))",
        )
    assert ev.items == (TextItem('[{"ok":true},"TimeoutError"]'),)
    assert len(tasks) == 2 and tasks[0] is not tasks[1]
    assert all(t is not None for t in tasks)


async def test_a_tool_that_cancels_itself_is_rejected_as_cancelled() -> None:
    async def cancels(value: Any) -> Any:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(0)
        return value

    async with SessionRuntime(tools_delegate({"t": cancels})) as rt:
        ev = await run(
            rt, "try { await tools.t({}); } catch (e) { text(e.message); } text('after')"
        )
    assert ev.items == (TextItem("tool `t` was cancelled"), TextItem("after"))


async def test_errors_queueing_and_termination_with_eager_calls() -> None:
    """Delegate errors reject, max_parallel_tool_calls queues calls in issue order (a call that
    answers at once frees its slot for the next), and terminating a cell cancels the calls
    still at the delegate."""
    order: list[int] = []
    blocked: list[int] = []
    gate = asyncio.Event()

    def quick(value: Any) -> Any:
        order.append(value["i"])
        if value["i"] == 3:
            raise ValueError("three")
        return value

    async def block(value: Any) -> Any:
        blocked.append(value["i"])
        try:
            await gate.wait()
        except asyncio.CancelledError:
            blocked.append(-value["i"])
            raise
        return value

    limits = CellLimits(max_parallel_tool_calls=2)
    async with SessionRuntime(tools_delegate({"q": quick, "b": block}), limits=limits) as rt:
        ev = await run(
            rt,
            "const r = await Promise.allSettled(Array.from({length: 6}, (_, i) => tools.q({i})));"
            "text(r.map(x => x.status === 'fulfilled' ? x.value.i : x.reason.message).join())",
            "q",
            "b",
        )
        assert ev.items == (TextItem("0,1,2,three,4,5"),)
        assert order == [0, 1, 2, 3, 4, 5]
        cell = await rt.create_cell(
            CreateCellRequest(
                "text('x'); await Promise.all([tools.b({i: 1}), tools.b({i: 2}), tools.b({i: 3})])",
                (ToolDefinition("q"), ToolDefinition("b")),
            )
        )
        for _ in range(200):
            if len(blocked) >= 2:
                break
            await asyncio.sleep(0.01)
        assert blocked == [1, 2]  # the third waits for a slot
        assert await rt.terminate(cell) == Terminated((TextItem("x"),))
    assert sorted(blocked) == [-2, -1, 1, 2]


@pytest.mark.parametrize(
    "value",
    [
        {"i": 5},
        {"a": "\u00e9\u2028\U0001f600", "b": 1.5, "c": None, "d": True, "e": -0.0},
        [1, 2, "x", False],
        "text",
        3,
        2.5e300,
        None,
        {1: 2},
        {"n": float("nan")},
        {"t": (1,)},
        {(1,): 2},
        [float("inf")],
    ],
)
async def test_small_results_are_encoded_as_before(value: Any) -> None:
    """The fast path for small results gives the cell exactly what the general encoder gives."""
    from codemode.cell import delegate as boundary
    from codemode.model import NestedToolCall

    async def invoke(call: NestedToolCall) -> Any:
        return value

    call = NestedToolCall("c", "tool-1", ToolDefinition("t"), {})
    fast = await boundary.call_delegate(invoke, call, cancel_requested=lambda: False, max_bytes=100)
    general = await boundary._encode_result("tool-1", "t", value, 100, None)
    assert fast == general
