"""Teardown on real V8 that only an in-process session shows (docs/sessions.md; scenario 65): garbage
collection, the loop closing without a shutdown, a late answer into a spinning cell. The scenarios
that hold for every kind of session (37-38, 56-64) are in ``tests/contract/test_scenarios.py``.

Every test that involves a hostile or stuck cell runs a heartbeat task and checks that the event
loop never stalled, so "the host process is sacred" is pinned, not assumed.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import time
import weakref
from typing import Any

import pytest

from codemode import (
    SessionRuntime,
    Terminated,
)
from codemode.engine.v8 import V8Engine
from conftest import RecordingDelegate, engine_thread_ids, request
from scenarios import heartbeat

# ---------------------------------------------------------------- termination


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


async def test_65_garbage_collected_runtime_stops_its_cells() -> None:
    async with SessionRuntime(RecordingDelegate()) as warm:  # start the executor's thread
        await warm.wait(await warm.create_cell(request("text(1)")), 5)
    base = engine_thread_ids()
    rt = SessionRuntime(RecordingDelegate())
    alive = weakref.ref(rt)
    await rt.create_cell(request("while (true) {}"))
    await asyncio.sleep(0.05)
    started = engine_thread_ids() - base  # the isolates' threads (the cell's, the pool's)
    assert started
    del rt
    gc.collect()
    assert alive() is None, "the runtime is still referenced"
    for _ in range(2000):  # a hang guard (20 s): a loaded machine tears isolates down slowly
        if not started & engine_thread_ids():
            break
        await asyncio.sleep(0.01)
    assert not started & engine_thread_ids()


def test_loop_closing_without_shutdown_stops_cells() -> None:
    """docs/sessions.md: a runtime whose loop closes without a shutdown stops its cells' JavaScript,
    even while the runtime object itself is still referenced."""
    kept: list[SessionRuntime] = []
    started: set[int] = set()  # the native threads the cells' isolates run on

    async def warm() -> None:
        async with SessionRuntime(RecordingDelegate()) as rt:
            await rt.wait(await rt.create_cell(request("text(1)")), 5)

    async def leave_spinning() -> None:
        rt = SessionRuntime(RecordingDelegate())
        kept.append(rt)
        await rt.create_cell(request("while (true) {}"))
        await rt.create_cell(request("await new Promise(() => {})"))
        await asyncio.sleep(0.05)
        started.update(engine_thread_ids() - base)

    asyncio.run(warm())
    # By ids, not counts: the whole suite's process has other native threads, of whatever
    # started them, and a count in CI once stayed 3 above its base for 5 s.
    base = engine_thread_ids()
    asyncio.run(leave_spinning())
    assert started
    for _ in range(2000):  # a hang guard (20 s): a loaded machine tears isolates down slowly
        if not started & engine_thread_ids():
            break
        time.sleep(0.01)
    assert not started & engine_thread_ids()
    assert kept[0].is_alive is False


def test_an_answer_after_the_loop_closed_is_dropped_quietly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An isolate still working when its event loop closes (the pool's next isolate, being made
    while the application shuts down) answers into a closed loop: nothing may be raised on the
    isolate's thread, where it was printed as "Exception ignored on calling ctypes callback"."""
    from py_mini_racer._mini_racer import _make_context

    from codemode.engine import v8

    V8Engine(pool_size=0).close()  # V8 initialised with codemode's flags
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    loop = asyncio.new_event_loop()
    manager = _make_context(loop)
    context = v8._enter_context(manager)
    guarded, answered = context.handle_callback_from_v8, threading.Event()

    def observed(callback_id: int, raw: Any) -> None:
        try:
            guarded(callback_id, raw)
        finally:
            answered.set()

    object.__setattr__(context, "handle_callback_from_v8", observed)
    try:
        code = context._python_to_value_handle(
            "const t = Date.now(); while (Date.now() - t < 100) {} 1"
        )
        context._dll.mr_eval(context._ctx, code.raw, next(context._next_async_callback_id))
        loop.close()  # while the isolate is still running the eval
        assert answered.wait(30)
    finally:
        v8._disarm_value_handles(context)
        v8._exit_context(manager)
    assert unraisable == []
