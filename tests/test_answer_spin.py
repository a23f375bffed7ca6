"""Polling for a quick answer instead of sleeping for it (docs/call-path.md, "Polling for a
quick answer"; ``engine/spin.py``): the in-process engine polls its isolate's answer, the
worker engine's host its worker's answer pipe and the worker its command pipe. Each polls only
after its loop took a turn and only when the loop has nothing else ready, for a bounded time,
and stops while answers are slow; every other task keeps running."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from codemode import (
    CellLimits,
    Completed,
    CreateCellRequest,
    SessionRuntime,
    ToolDefinition,
    tools_delegate,
)
from codemode.engine import spin, v8, v8native
from codemode.engine.v8 import DEFAULT_ANSWER_SPIN, V8Engine
from codemode.engine.worker import DEFAULT_WORKER_SPIN, WorkerEngine
from conftest import NATIVE_HERE

ECHO = (ToolDefinition("echo"),)
# A cell of this many sequential calls runs for a few hundred milliseconds: without a turn of
# the loop per step, a task waiting for a timer would wait that long.
_LONG = 3000


@pytest.fixture
def native(monkeypatch: pytest.MonkeyPatch) -> None:
    """Answers taken natively, which polling needs (skipped where they cannot be)."""
    if not NATIVE_HERE:
        pytest.skip("polling needs native answers (Linux on x86-64 or arm64)")
    monkeypatch.setenv(v8native.ENV, "native")


def _seq(n: int, work_ms: float = 0) -> str:
    """A cell of ``n`` sequential awaited calls; each step spins ``work_ms`` first."""
    spin_js = f"const t0 = Date.now(); while (Date.now() - t0 < {work_ms}) {{}}" if work_ms else ""
    return (
        f"let s = 0; for (let i = 0; i < {n}; i++) {{ {spin_js} s += await tools.echo({{x: i}}); }}"
        " text(String(s))"
    )


async def _run(rt: SessionRuntime, n: int, work_ms: float = 0) -> None:
    cell = await rt.create_cell(CreateCellRequest(_seq(n, work_ms), ECHO))
    event = await rt.wait(cell, 60)
    assert isinstance(event, Completed) and event.error_text is None, event
    assert event.items[0].text == str(n * (n - 1) // 2)  # type: ignore[union-attr]


def _runtime(engine: Any, n: int) -> SessionRuntime:
    limits = CellLimits(max_tool_calls=n + 10, max_cpu_seconds=60)
    return SessionRuntime(
        tools_delegate({"echo": lambda value: value["x"]}), limits=limits, engine=engine
    )


@pytest.fixture
def answer_polls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    """What each poll of the in-process engine for an answer gave (True: the answer came)."""
    seen: list[bool] = []
    original = v8native.NativeAnswers.spin

    def counted(self: Any, callback_id: int, seconds: float) -> bool:
        got = original(self, callback_id, seconds)
        seen.append(got)
        return got

    monkeypatch.setattr(v8native.NativeAnswers, "spin", counted)
    yield seen


class _Sleeps:
    """Counts the times the running loop had to wait in its selector (nothing was ready yet):
    without polling, about once per step of a sequential cell."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.count = 0
        selector = loop._selector  # type: ignore[attr-defined]
        original = selector.select

        def select(timeout: float | None = None) -> Any:
            if timeout is not None and timeout <= 0:
                return original(timeout)
            ready = original(0)  # what is ready already costs no sleep
            if ready:
                return ready
            self.count += 1
            return original(timeout)

        selector.select = select


@pytest.fixture
def pipe_polls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    """What each poll of a pipe in this process gave."""
    seen: list[bool] = []
    original = spin.ReadablePoll.spin

    def counted(self: Any, seconds: float) -> bool:
        got = original(self, seconds)
        seen.append(got)
        return got

    monkeypatch.setattr(spin.ReadablePoll, "spin", counted)
    yield seen


# ------------------------------------------------------------------ the pieces


def test_bad_budgets_are_refused() -> None:
    for bad in (-0.0001, 0.0011, 1.0, True):
        with pytest.raises(ValueError, match=r"answer_spin must be between 0 and 0\.001 seconds"):
            V8Engine(answer_spin=bad)
        with pytest.raises(ValueError, match=r"answer_spin must be between 0 and 0\.001 seconds"):
            WorkerEngine(answer_spin=bad)
    assert V8Engine().answer_spin == DEFAULT_ANSWER_SPIN == 0.0001
    assert V8Engine(answer_spin=0).answer_spin == 0.0
    assert V8Engine().hold is True
    with pytest.raises(TypeError, match="hold must be True or False"):
        V8Engine(hold=1)  # type: ignore[arg-type]
    assert DEFAULT_WORKER_SPIN == 0.0003


def test_a_pipe_is_polled_until_readable_or_the_budget_is_spent() -> None:
    read_end, write_end = os.pipe()
    try:
        poll = spin.ReadablePoll(read_end)
        started = time.perf_counter()
        assert poll.spin(0.0005) is False
        assert time.perf_counter() - started >= 0.0005
        os.write(write_end, b"x")
        assert poll.spin(0.0005) is True
        assert poll.spin(0.0) is True  # readable: no budget needed
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_poller_yields_its_cpu_between_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Between two polls the thread yields its CPU, so a thread waiting for that CPU (the one
    that will answer, on a machine with fewer cores than busy threads) runs first."""
    yields = []
    monkeypatch.setattr(spin, "yield_cpu", lambda: yields.append(1))
    read_end, write_end = os.pipe()
    try:
        assert spin.ReadablePoll(read_end).spin(0.0005) is False
    finally:
        os.close(read_end)
        os.close(write_end)
    assert yields


async def test_a_loop_with_work_ready_counts_as_busy() -> None:
    loop = asyncio.get_running_loop()
    assert spin.loop_busy(loop) is False
    handle = loop.call_soon(lambda: None)
    assert spin.loop_busy(loop) is True
    handle.cancel()
    await asyncio.sleep(0)

    class OtherLoop:  # a loop that is not asyncio's own (uvloop, ...): never polled on
        pass

    assert spin.loop_busy(OtherLoop()) is True  # type: ignore[arg-type]


def test_still_quick() -> None:
    assert spin.still_quick(0.0001, 0.0001)
    assert spin.still_quick(0.0002, 0.0001)
    assert not spin.still_quick(0.00021, 0.0001)


# ------------------------------------------------------------------ in process


async def test_quick_answers_are_taken_without_sleeping(
    answer_polls: list[bool], native: None
) -> None:
    """Once its JavaScript is warm, a quick step's answer is there after the loop's one turn
    (then the loop does not sleep for it either) or comes while the loop polls."""
    async with _runtime(V8Engine(pool_size=0, answer_spin=0.001), _LONG) as rt:
        await _run(rt, 300)  # V8 compiles the prelude's and the cell's hot code
        sleeps = _Sleeps(asyncio.get_running_loop())
        await _run(rt, _LONG)
    await v8.wait_freed()
    assert answer_polls
    assert sleeps.count < _LONG // 2, sleeps.count


async def test_no_polling_when_turned_off_or_the_portable_way(
    answer_polls: list[bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _runtime(V8Engine(pool_size=0, answer_spin=0), 50) as rt:
        await _run(rt, 50)
    monkeypatch.setenv(v8native.ENV, "python")
    async with _runtime(V8Engine(pool_size=0), 50) as rt:
        await _run(rt, 50)
    await v8.wait_freed()
    assert answer_polls == []
    assert v8._QuietResults.spin(None, 1, 0.001) is False  # type: ignore[arg-type]


class _Ticker:
    """A task that wakes every millisecond and records the longest gap between its turns."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.turns = 0
        self._stop = False
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        last = time.perf_counter()
        while not self._stop:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            self.longest = max(self.longest, now - last)
            self.turns += 1
            last = now

    async def stop(self) -> None:
        self._stop = True
        await self._task


async def test_every_other_task_runs_while_a_cell_polls(
    answer_polls: list[bool], native: None
) -> None:
    """A polled answer resolves the step without a turn of the loop; the turn taken before
    polling keeps other tasks running (here a timer's, every millisecond)."""
    async with _runtime(V8Engine(pool_size=0, answer_spin=0.001), _LONG) as rt:
        ticker = _Ticker()
        started = time.perf_counter()
        await _run(rt, _LONG)
        took = time.perf_counter() - started
        await ticker.stop()
    await v8.wait_freed()
    assert answer_polls
    assert ticker.longest < min(0.1, took / 2), (ticker.longest, took)


async def test_a_cell_with_slow_steps_stops_polling(answer_polls: list[bool], native: None) -> None:
    """Steps that take longer than twice the budget turn the polling off (it would only spend
    the budget); a quick step turns it on again."""
    async with _runtime(V8Engine(pool_size=0, answer_spin=0.0002), 20) as rt:
        await _run(rt, 12, work_ms=5)
    await v8.wait_freed()
    # The first step polls (nothing known yet), then at most every other step: a step that
    # was not polled and took 5 ms leaves it off.
    assert len(answer_polls) <= 3
    assert not any(answer_polls[1:])


# ------------------------------------------------------------------ the worker engine


async def test_the_worker_engines_host_polls_the_answer_pipe(
    pipe_polls: list[bool],
) -> None:
    engine = WorkerEngine(pool_size=1, answer_spin=0.001)
    async with _runtime(engine, _LONG) as rt:
        await _run(rt, 300)  # the worker started, its V8 code warm
        pipe_polls.clear()
        sleeps = _Sleeps(asyncio.get_running_loop())
        ticker = _Ticker()
        started = time.perf_counter()
        await _run(rt, _LONG)
        took = time.perf_counter() - started
        await ticker.stop()
    assert any(pipe_polls)
    # The ticker's timer sleeps the loop about once a millisecond; the cell's steps do not.
    assert sleeps.count < _LONG // 2 + ticker.turns, (sleeps.count, ticker.turns)
    assert ticker.longest < min(0.1, took / 2), (ticker.longest, took)


async def test_a_worker_engine_without_polling(pipe_polls: list[bool]) -> None:
    engine = WorkerEngine(pool_size=1, answer_spin=0)
    async with _runtime(engine, 50) as rt:
        await _run(rt, 50)
        (child,) = engine._children
        assert child.answer_poll is None
    assert pipe_polls == []


# ------------------------------------------------------------------ holding the isolate's thread


@pytest.fixture
def holds(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The callback ids of the holds posted (bridge.hold, docs/call-path.md)."""
    posted: list[int] = []
    original = v8._Bridge.post

    def post(self: Any, fn: Any, argv: Any, callback_id: int) -> int:
        if fn is getattr(self, "hold", None):
            posted.append(callback_id)
        return original(self, fn, argv, callback_id)

    monkeypatch.setattr(v8._Bridge, "post", post)
    yield posted


async def test_quick_steps_hold_the_isolates_thread_for_the_next(
    holds: list[int], native: None
) -> None:
    async with _runtime(V8Engine(pool_size=0, answer_spin=0.001), 500) as rt:
        await _run(rt, 500)
        assert len(holds) > 250  # most steps (the first ones run cold)
        holds.clear()
        await _run(rt, 12, work_ms=5)  # the host comes back quickly, the isolate does not
    await v8.wait_freed()
    assert len(holds) <= 12


async def test_a_slow_tool_turns_the_hold_off(holds: list[int], native: None) -> None:

    async def slow(value: Any) -> Any:
        await asyncio.sleep(0.005)
        return value["x"]

    limits = CellLimits(max_tool_calls=100)
    engine = V8Engine(pool_size=0, answer_spin=0.001)
    async with SessionRuntime(tools_delegate({"echo": slow}), limits=limits, engine=engine) as rt:
        await _run(rt, 20)
    await v8.wait_freed()
    # A hold is posted only when the host came back within twice the budget last time.
    assert len(holds) <= 2


async def test_a_hold_never_delays_a_close_or_a_stop(holds: list[int], native: None) -> None:
    """A cell ends while a hold runs on its isolate's thread: the close ends the hold, so
    the isolate is freed at once; a termination mid-run is as quick as without holds."""
    engine = V8Engine(pool_size=0, answer_spin=0.001)
    async with _runtime(engine, 3000) as rt:
        for _ in range(20):
            await _run(rt, 30)
        assert holds
        cell = await rt.create_cell(CreateCellRequest(_seq(3000), ECHO))
        await asyncio.sleep(0.02)
        started = time.perf_counter()
        await rt.terminate(cell)
        assert time.perf_counter() - started < 1.0  # a hang guard
    started = time.perf_counter()
    await v8.wait_freed()
    assert time.perf_counter() - started < 1.0


async def test_no_hold_where_the_loop_does_not_poll(
    holds: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No hold when turned off, without polling (answer_spin=0, the portable way) nor in a
    worker's engine (step_wait: its loop waits for its host, and a hold would take a core
    from both)."""
    engines = (
        V8Engine(pool_size=0, answer_spin=0),
        V8Engine(pool_size=0, step_wait=0.002),
        V8Engine(pool_size=0, hold=False),
    )
    for engine in engines:
        async with _runtime(engine, 100) as rt:
            await _run(rt, 100)
    monkeypatch.setenv(v8native.ENV, "python")
    async with _runtime(V8Engine(pool_size=0), 100) as rt:
        await _run(rt, 100)
    await v8.wait_freed()
    assert holds == []
