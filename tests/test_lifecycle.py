"""Teardown on real V8 that only an in-process session shows (docs/sessions.md; scenario 65): garbage
collection, the loop closing without a shutdown, a late answer into a spinning cell. The scenarios
that hold for every kind of session (37-38, 56-64) are in ``tests/contract/test_scenarios.py``.

Every test that involves a hostile or stuck cell runs a heartbeat task and checks that the event
loop never stalled, so "the host process is sacred" is pinned, not assumed.
"""

from __future__ import annotations

import asyncio
import gc
import time
import weakref

from codemode import (
    SessionRuntime,
    Terminated,
)
from conftest import RecordingDelegate, engine_threads, request
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


def test_loop_closing_without_shutdown_stops_cells() -> None:
    """docs/sessions.md: a runtime whose loop closes without a shutdown stops its cells' JavaScript,
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
