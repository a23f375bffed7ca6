"""How the V8 engine takes its isolates' answers (docs/call-path.md, "Answers without Python on
the isolate's thread"): natively through eventfds where it can, else through mini-racer's Python
callback. Both ways run the same cells with the same outcomes, and the native way gives back
every eventfd it took, whatever became of the tasks."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
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
from codemode.engine import v8, v8native
from codemode.engine.base import CellBoot, EngineLost, ToolCallRequested, ToolResultInput
from codemode.engine.v8 import V8Engine
from conftest import NATIVE_HERE

ECHO = (ToolDefinition("echo"),)


async def _echo(value: Any) -> Any:
    return value


@pytest.fixture(params=["native", "python"])
def answers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each test once per way of taking answers (read when an isolate is made)."""
    mode = str(request.param)
    if mode == "native" and not NATIVE_HERE:
        pytest.skip("native answers need Linux on x86-64 or arm64")
    monkeypatch.setenv(v8native.ENV, mode)
    yield mode


@pytest.fixture
async def engine(answers: str) -> AsyncIterator[V8Engine]:
    eng = V8Engine(pool_size=0)  # every isolate made now, under this test's mode
    try:
        yield eng
    finally:
        await eng.aclose()
        await v8.wait_freed()


def _boot(source: str, limits: CellLimits | None = None, cell_id: str = "c") -> CellBoot:
    return CellBoot(cell_id, source, ECHO, {}, limits or CellLimits(), False)


def _mode_of(cell: Any) -> str:
    kind = type(cell._bridge.quiet)
    return "native" if kind is v8native.NativeAnswers else "python"


async def _run_echoing(cell: Any) -> tuple[list[str], str | None]:
    """Run ``cell`` to its end, answering every call with its input; its texts and error."""
    report = await cell.run()
    texts: list[str] = []
    while True:
        texts += [e.item.text for e in report.events if hasattr(e, "item")]
        if report.settlement is not None:
            return texts, report.settlement.error_text
        calls = [e for e in report.events if isinstance(e, ToolCallRequested)]
        report = await cell.step(
            [ToolResultInput(c.call_id, True, json.dumps(c.input)) for c in calls]
        )


def _held() -> int:
    pool = v8native.POOL
    return pool.opened - pool.idle()


_held_at_start = [0]


@pytest.fixture(autouse=True)
async def _eventfds_held_before() -> None:
    """How many eventfds earlier tests of this process still hold (a loop closed while an
    answer was on its way keeps one for good): each test checks only what it gave back."""
    await v8.wait_freed()
    _held_at_start[0] = _held()


async def _eventfds_back() -> None:
    """Wait until every eventfd this test took is back in the pools (the frees run on reaper
    threads)."""
    await v8.wait_freed()
    for _ in range(200):
        if _held() <= _held_at_start[0]:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{_held() - _held_at_start[0]} eventfd(s) not given back")


def test_native_answers_are_used_where_they_can_be(monkeypatch: pytest.MonkeyPatch) -> None:
    """On Linux x86-64/arm64 with mini-racer's pinned callback type the native way is on;
    ``CODEMODE_V8_ANSWERS=python`` turns it off."""
    monkeypatch.delenv(v8native.ENV, raising=False)
    assert v8native.available() is NATIVE_HERE
    monkeypatch.setenv(v8native.ENV, "python")
    assert v8native.available() is False


async def test_sequential_and_parallel_calls(engine: V8Engine, answers: str) -> None:
    src = (
        "let n = 0; for (let i = 0; i < 50; i++) n += (await tools.echo({i})).i;"
        "const r = await Promise.all(Array.from({length: 300}, (_, i) => tools.echo({i})));"
        "text(n + r.reduce((a, x) => a + x.i, 0))"
    )
    cell = await engine.open_cell(_boot(src))
    assert _mode_of(cell) == answers
    texts, error = await _run_echoing(cell)
    assert error is None and texts == [str(sum(range(50)) + sum(range(300)))]
    if answers == "native":
        await _eventfds_back()


async def test_a_javascript_error_and_a_syntax_error(engine: V8Engine) -> None:
    cell = await engine.open_cell(_boot("await tools.echo({}); null.x"))
    _, error = await _run_echoing(cell)
    assert error is not None and "TypeError" in error
    cell = await engine.open_cell(_boot("let = ;"))
    _, error = await _run_echoing(cell)
    assert error is not None and "SyntaxError" in error


async def test_a_runaway_step_is_stopped_at_its_cpu_limit(engine: V8Engine, answers: str) -> None:
    limits = CellLimits(max_cpu_seconds=0.3)
    cell = await engine.open_cell(_boot("text('a'); await tools.echo({}); while (true) {}", limits))
    started = time.monotonic()
    texts, error = await _run_echoing(cell)
    assert error is not None and "max_cpu_seconds" in error
    assert texts == ["a"]
    assert time.monotonic() - started < 10  # a hang guard, not a timing
    if answers == "native":
        await _eventfds_back()


async def test_a_step_abandoned_midway_leaves_nothing_behind(
    engine: V8Engine, answers: str
) -> None:
    """Cancelling a step in flight (its JavaScript spinning) abandons its tasks; stopping the
    cell then salvages its output; their answers, when they come, are freed unread."""
    cell = await engine.open_cell(_boot("text('x'); await tools.echo({}); for (;;) {}"))
    report = await cell.run()
    (call,) = [e for e in report.events if isinstance(e, ToolCallRequested)]
    step = asyncio.ensure_future(cell.step([ToolResultInput(call.call_id, True, "1")]))
    await asyncio.sleep(0.05)
    step.cancel()
    with pytest.raises((asyncio.CancelledError, EngineLost)):
        await step
    await cell.stop()
    assert cell.closed
    if answers == "native":
        await _eventfds_back()


async def test_a_quick_step_is_taken_by_a_blocked_loop(answers: str) -> None:
    """``step_wait`` (the worker's engine): the loop's thread waits for the drain's answer
    itself, natively by polling its eventfd."""
    engine = V8Engine(pool_size=0, step_wait=0.002)
    try:
        cell = await engine.open_cell(
            _boot("let n = 0; for (let i = 0; i < 20; i++) n += (await tools.echo({i})).i; text(n)")
        )
        texts, error = await _run_echoing(cell)
        assert error is None and texts == [str(sum(range(20)))]
    finally:
        await engine.aclose()
    if answers == "native":
        await _eventfds_back()


async def test_a_session_and_its_termination(answers: str) -> None:
    limits = CellLimits(max_parallel_tool_calls=200, max_tool_calls=5000)
    async with SessionRuntime(tools_delegate({"echo": _echo}), limits=limits) as rt:
        cell = await rt.create_cell(
            CreateCellRequest(
                "const r = await Promise.all(Array.from({length: 100}, (_, i) => tools.echo({i})));"
                "text(r.length)",
                ECHO,
            )
        )
        event = await asyncio.wait_for(rt.wait(cell, 30), 60)
        assert isinstance(event, Completed) and event.error_text is None
        assert [i.text for i in event.items if isinstance(i, TextItem)] == ["100"]
        spinning = await rt.create_cell(CreateCellRequest("text('s'); for (;;) {}", ECHO))
        await asyncio.sleep(0.05)
        ended = await asyncio.wait_for(rt.terminate(spinning), 30)
        assert isinstance(ended, (Terminated, Completed))
    if answers == "native":
        await _eventfds_back()


async def test_replayed_steps_back_to_back_span_several_batches(engine: V8Engine) -> None:
    """A back-to-back replay posts its tasks a batch at a time (each native task holds an
    eventfd until read); the reports are those of step-by-step steps, in order."""
    steps = 3 * v8._REPLAY_POSTED + 5
    src = f"let n = 0; for (let i = 0; i < {steps}; i++) n += (await tools.echo({{i}})).i; text(n)"
    live = await engine.open_cell(_boot(src, cell_id="a"))
    recorded: list[list[Any]] = []
    report = await live.run()
    while report.settlement is None:
        calls = [e for e in report.events if isinstance(e, ToolCallRequested)]
        inputs = [ToolResultInput(c.call_id, True, json.dumps(c.input)) for c in calls]
        recorded.append(inputs)
        report = await live.step(inputs)
    assert report.settlement.error_text is None and len(recorded) == steps
    replayed = await engine.open_cell(_boot(src, cell_id="a"))
    await replayed.run()
    reports = await replayed.replay_steps(recorded)  # type: ignore[attr-defined]
    assert reports is not None and len(reports) == steps
    assert reports[-1].settlement is not None and reports[-1].settlement.error_text is None
    assert [e.item.text for e in reports[-1].events if hasattr(e, "item")] == [
        str(sum(range(steps)))
    ]


def test_eventfd_pool_closes_what_it_does_not_keep() -> None:
    if not hasattr(os, "eventfd"):
        pytest.skip("no eventfd here")
    pool = v8native._FdPool()
    fds = [pool.take() for _ in range(v8native._POOL_KEEP + 3)]
    assert pool.opened == len(fds)
    for fd in fds:
        pool.give(fd)
    assert pool.opened == v8native._POOL_KEEP == len(pool._free)
    with pytest.raises(OSError):
        os.fstat(fds[-1])  # one of those closed
    for fd in list(pool._free):
        os.close(fd)


async def test_a_forked_child_never_shares_an_eventfd_with_its_parent(engine: V8Engine) -> None:
    """A child forked after cells ran must not take an eventfd of the parent's pools (the
    same open file: the parent's isolates answer into it): its copies are closed."""
    if not hasattr(os, "fork"):
        pytest.skip("no fork here")
    cell = await engine.open_cell(_boot("await tools.echo({}); text('ok')"))
    assert (await _run_echoing(cell))[1] is None
    await v8.wait_freed()
    pool = v8native.POOL
    parents = set(pool._free)
    for watched in list(v8native._WATCHED.values()):
        parents |= set(watched._idle)
    assert parents  # the pools hold some now
    pid = os.fork()
    if pid == 0:  # the child: only os._exit, never back into pytest
        code = 0
        try:
            gc.collect()  # a loop of the parent's collected here gives nothing back
            if pool._free or v8native._WATCHED:
                code = 2
            elif any(_is_open(fd) for fd in parents):
                code = 3
        except BaseException:
            code = 4
        os._exit(code)
    _, status = await asyncio.to_thread(os.waitpid, pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert all(_is_open(fd) for fd in parents)  # the parent's stay


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_an_id_given_back_after_the_free_is_never_read_again() -> None:
    """Once the isolate is freed its quiet ids go back to the pool; a late ``take`` or
    ``discard`` of one (a replay's clean-up after its cell closed) must not read it: another
    task may own it by then."""
    if not NATIVE_HERE:
        pytest.skip("native answers need Linux on x86-64 or arm64")
    answers = v8native.NativeAnswers(SimpleNamespace(event_loop=None, _free=lambda raw: None))
    pool = v8native.POOL
    fd = answers.quiet_id()
    os.eventfd_write(fd, 1234)  # its task answered
    answers.after_free()  # the context freed: the answer is read, the id given back
    assert fd in pool._free
    assert pool._free.pop() == fd  # another task takes it...
    os.eventfd_write(fd, 5678)  # ...and is answered
    assert answers.take(fd) is None
    answers.discard(fd)
    assert os.eventfd_read(fd) == 5678  # still there for its owner
    pool.give(fd)
