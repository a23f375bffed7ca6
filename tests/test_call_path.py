"""The call path of the V8 engine (docs/call-path.md): one wait for the isolate per step, inputs
through the inbox, and nothing lost or weakened on the way."""

from __future__ import annotations

import asyncio
import select
import time
from collections.abc import AsyncIterator, Callable
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
from codemode.engine.base import (
    CellBoot,
    EngineLost,
    OutputProduced,
    ToolCallRequested,
    ToolResultInput,
)
from codemode.engine.v8 import V8Engine
from codemode.engine.v8native import NativeAnswers

ECHO = (ToolDefinition("echo"),)


async def _echo(value: Any) -> Any:
    return value


@pytest.fixture
async def rt() -> AsyncIterator[SessionRuntime]:
    limits = CellLimits(max_parallel_tool_calls=300, max_tool_calls=5000)
    async with SessionRuntime(tools_delegate({"echo": _echo}), limits=limits) as runtime:
        yield runtime


async def run(rt: SessionRuntime, source: str) -> Completed:
    cell = await rt.create_cell(CreateCellRequest(source, ECHO))
    ev = await asyncio.wait_for(rt.wait(cell, 60), 90)
    assert isinstance(ev, Completed), ev
    return ev


async def test_sequential_calls_wait_for_the_isolate_once_per_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Per step: two calls submitted together (the step, the drain behind it) and no blocking
    native call (the inputs go through the inbox); with polling on, at most one more: the hold
    behind them (docs/call-path.md, "Polling for a quick answer")."""
    from py_mini_racer import _dll

    # The engine first: it initialises V8 with codemode's flags. Initialising mini-racer here
    # first would fix V8's default flags for the rest of the process (no `gc` for the prelude's
    # typed-array accounting; tests/test_process_state.py).
    engine = V8Engine(pool_size=0, answer_spin=0)
    polling = V8Engine(pool_size=0)
    dll = _dll.init_mini_racer(ignore_duplicate_init=True)
    counts = {"submitted": 0, "blocking": 0}
    submit, set_item = dll.mr_call_function, dll.mr_set_object_item

    def counted_submit(*a: Any) -> Any:
        counts["submitted"] += 1
        return submit(*a)

    def counted_set(*a: Any) -> Any:
        counts["blocking"] += 1
        return set_item(*a)

    monkeypatch.setattr(dll, "mr_call_function", counted_submit)
    monkeypatch.setattr(dll, "mr_set_object_item", counted_set)
    n = 200
    steps = n + 1  # the start, then one step per result
    for eng, per_step in ((engine, 2), (polling, 3)):
        async with SessionRuntime(
            tools_delegate({"echo": _echo}), limits=CellLimits(), engine=eng
        ) as runtime:
            await run(runtime, "text('warm')")  # isolate creation and the warm-up cell
            before = dict(counts)
            ev = await run(
                runtime,
                f"let n = 0; for (let i = 0; i < {n}; i++) n += (await tools.echo({{i}})).i;"
                " text(String(n))",
            )
            assert ev.items == (TextItem(str(n * (n - 1) // 2)),)
            # the isolate made on demand and its warm-up cell take a few of their own
            assert counts["submitted"] - before["submitted"] <= per_step * steps + 10
            assert counts["blocking"] - before["blocking"] <= 10  # never one per step


async def test_inputs_through_the_inbox_arrive_intact(rt: SessionRuntime) -> None:
    """Many results in one step (several inbox chunks), characters outside the BMP, and a cell
    that put an index setter on Array.prototype: its own view only, never the inputs."""
    ev = await run(
        rt,
        "Object.defineProperty(Array.prototype, '0', {set() {}, get() { return 'x' },"
        " configurable: true});"
        "const big = 'é\\u{1F600}\\ud800'.repeat(3000);"
        "const r = await Promise.all(Array.from({length: 250},"
        " (_, i) => tools.echo({i, s: i === 7 ? big : 'y'})));"
        "text(String(r.reduce((a, x) => a + x.i, 0)) + ' ' + (r[7].s === big))",
    )
    assert ev.items == (TextItem("31125 true"),)


async def test_inputs_larger_than_the_inbox_still_arrive(rt: SessionRuntime) -> None:
    ev = await run(
        rt,
        "const s = 'z'.repeat(600 * 1024); const r = await tools.echo({s});text(String(r.s === s))",
    )
    assert ev.items == (TextItem("true"),)


async def test_a_large_source_starts_without_the_inbox(rt: SessionRuntime) -> None:
    body = "let x = 0;" + "x += 1;" * 40_000 + "text(String(x + (await tools.echo({a: 1})).a))"
    ev = await run(rt, body)
    assert ev.items == (TextItem("40001"),)


async def test_a_runaway_step_stops_and_keeps_its_output(rt: SessionRuntime) -> None:
    """The drain queued behind an abandoned step reports what the step wrote."""
    for source, expected in (
        # spinning in the step itself: the step is terminated, the drain behind it reports
        ("text('a'); await tools.echo({}); text('b'); while (true) {}", ["a", "b"]),
        # spinning in a continuation after the step returned: from the journal
        ("await tools.echo({}); text('c'); await null; while (true) {}", ["c"]),
    ):
        cell = await rt.create_cell(CreateCellRequest(source, ECHO))
        await asyncio.sleep(0.2)
        ev = await asyncio.wait_for(rt.terminate(cell), 30)
        assert isinstance(ev, Terminated)
        assert [i.text for i in ev.items if isinstance(i, TextItem)] == expected


async def test_a_step_past_its_cpu_budget_keeps_its_output() -> None:
    async with SessionRuntime(
        tools_delegate({"echo": _echo}), limits=CellLimits(max_cpu_seconds=0.3)
    ) as runtime:
        ev = await run(runtime, "await tools.echo({}); text('before'); while (true) {}")
        assert ev.error_text == "exec cell exceeded max_cpu_seconds (0.3)"
        assert ev.items == (TextItem("before"),)


async def _quick_steps(engine: V8Engine, steps: int) -> int:
    """Drive ``steps`` steps of a cell of sequential calls, each started as an eager task (as
    the worker process starts its commands); returns how many answered without suspending."""
    boot = CellBoot(
        "quick",
        f"for (let i = 0; i < {steps}; i++) await tools.echo({{i}}); text('end')",
        ECHO,
        {},
        CellLimits(max_tool_calls=steps + 1),
        False,
    )
    cell = await engine.open_cell(boot)
    loop = asyncio.get_running_loop()
    report = await cell.run()
    at_once = 0
    try:
        for i in range(steps):
            call = report.events[-1]
            assert isinstance(call, ToolCallRequested) and call.input == {"i": i}
            task = start_eager(loop, cell.step([ToolResultInput(call.call_id, True, "7")]))
            at_once += task.done()
            report = await task
        assert report.settlement is not None and report.settlement.error_text is None
        assert report.events == (OutputProduced(TextItem("end")),)
    finally:
        cell.close()
        await engine.aclose()
    return at_once


async def test_step_wait_takes_a_quick_answer_on_the_loop_thread() -> None:
    """With ``step_wait`` (the worker process's engine) a quick step's answer is handed to the
    blocked loop thread: the step finishes without suspending. Without it (the in-process
    default) a step never blocks the loop: it always suspends."""
    assert await _quick_steps(V8Engine(step_wait=0.01), 30) > 0
    assert await _quick_steps(V8Engine(), 30) == 0


async def test_step_wait_keeps_every_runaway_stoppable() -> None:
    """A step longer than the blocking wait goes on asynchronously: the CPU deadline, a stop
    and a flagged limit still end it, with the output it made before."""
    limits = CellLimits(max_cpu_seconds=0.3, max_output_bytes=1000)
    async with SessionRuntime(
        tools_delegate({"echo": _echo}), limits=limits, engine=V8Engine(step_wait=0.01)
    ) as runtime:
        ev = await run(runtime, "await tools.echo({}); text('before'); while (true) {}")
        assert ev.error_text == "exec cell exceeded max_cpu_seconds (0.3)"
        assert ev.items == (TextItem("before"),)
        ev = await run(
            runtime,
            "await tools.echo({}); text('a'); try { text('x'.repeat(2000)) } catch {}; "
            "while (true) {}",
        )
        assert ev.error_text == "exec cell exceeded max_output_bytes (1000)"
        cell = await runtime.create_cell(
            CreateCellRequest("await tools.echo({}); text('c'); while (true) {}", ECHO)
        )
        await asyncio.sleep(0.1)
        stopped = await asyncio.wait_for(runtime.terminate(cell), 30)
        assert isinstance(stopped, Terminated)
        assert [i.text for i in stopped.items if isinstance(i, TextItem)] == ["c"]


def test_step_wait_is_bounded() -> None:
    with pytest.raises(ValueError, match="step_wait"):
        V8Engine(step_wait=1.0)
    with pytest.raises(ValueError, match="step_wait"):
        V8Engine(step_wait=-0.001)


async def _pool_full(pool: Any, size: int) -> None:
    for _ in range(6000):  # a hang guard of a minute
        if len(pool._ready) >= size and not pool._filling:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the pool was not refilled")


async def test_the_pool_replaces_an_isolate_off_the_cells_path() -> None:
    """docs/call-path.md: the isolate a cell took is replaced once that cell closes, not while
    it runs its calls; a cell that lives on does not leave the pool short (a bounded delay);
    a take that empties the pool refills it at once."""
    from codemode.engine.base import CellBoot

    engine = V8Engine(pool_size=2)
    boot = CellBoot("c1", "text('x')", (), {}, CellLimits(), False)
    try:
        first = await engine.open_cell(boot)  # made on demand; the empty pool fills at once
        pool = engine._pool
        assert pool is not None
        await _pool_full(pool, 2)
        second = await engine.open_cell(boot)
        assert len(pool._ready) == 1 and not pool._filling  # not while `second` runs
        second.close()
        assert pool._filling  # its close starts the refill
        await _pool_full(pool, 2)
        third = await engine.open_cell(boot)
        await _pool_full(pool, 2)  # refilled while `third` lives on
        report = await third.run()
        assert report.settlement is not None and report.settlement.error_text is None
        first.close()
    finally:
        await engine.aclose()


def _answer_queued(answers: Any) -> Callable[[], bool]:
    """Whether the one loud answer ``answers`` waits for has been queued for the loop: written
    to its eventfd (native answers), or handed over by mini-racer's Python callback."""
    if isinstance(answers, NativeAnswers):
        (fd,) = [fd for fd, callback in answers._loud.items() if callback is not None]
        poll = select.poll()
        poll.register(fd, select.POLLIN)
        return lambda: bool(poll.poll(0))
    direct = answers.direct
    assert direct
    return lambda: not direct


async def test_an_answer_queued_when_its_cell_closes_is_not_read() -> None:
    """The drain's answer is handed to the loop raw; when the cell closes after the isolate's
    thread queued it and before the loop ran it (the isolate is then being freed, its values
    with it), the answer is dropped unread: the step ends with ``EngineLost`` and nothing is
    raised on the loop."""
    loop = asyncio.get_running_loop()
    raised: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: raised.append(context))
    engine = V8Engine(pool_size=0)
    boot = CellBoot("q", "await tools.echo({}); text('end')", ECHO, {}, CellLimits(), False)
    cell = await engine.open_cell(boot)
    try:
        report = await cell.run()
        call = report.events[-1]
        assert isinstance(call, ToolCallRequested)
        step = asyncio.ensure_future(cell.step([ToolResultInput(call.call_id, True, "7")]))
        await asyncio.sleep(0)  # submitted: the drain's answer is expected
        queued = _answer_queued(cell._bridge.quiet)  # type: ignore[attr-defined]
        for _ in range(2000):  # the loop's thread waits (blocking) until the answer is queued
            if queued():
                break
            time.sleep(0.001)  # noqa: ASYNC251 - the loop must not run meanwhile
        assert queued()
        cell.close()  # before the loop runs the queued answer
        with pytest.raises(EngineLost):
            await step
        await asyncio.sleep(0.05)
    finally:
        cell.close()
        await engine.aclose()
        loop.set_exception_handler(None)
    assert raised == []
