"""Durable sessions: a cell comes back by replay when its session is reopened (docs/durability.md)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from durable_support import (  # the fixtures: imported for pytest to find them
    Runtimes,
    backend_fixture,  # noqa: F401
    postgres_server_fixture,  # noqa: F401
    runtimes_fixture,  # noqa: F401
)

from codemode import Completed, Pending, ResumeOutcome, Yielded
from conftest import RecordingDelegate, request

SEQUENTIAL = """
for (let i = 0; i < 6; i++) {
  const r = await tools.block({ i });
  text(`got ${r.i}`);
}
text("done");
"""


async def test_a_continuing_cell_survives_its_runtime(runtimes: Runtimes) -> None:
    first = RecordingDelegate()
    rt = runtimes.make(first)
    await rt.open()
    cell = await rt.create_cell(request(SEQUENTIAL))
    for n in range(1, 4):
        await first.wait_calls(n)
        first.release(f"tool-{n}")
    await first.wait_calls(4)  # tool-4 in flight
    event = await rt.wait(cell, 0.2)
    assert isinstance(event, Yielded)
    assert [i.text for i in event.items] == ["got 0", "got 1", "got 2"]
    await rt.suspend()

    second = RecordingDelegate()
    second.release()  # every call answers at once
    rt2 = runtimes.make(second, rt.session_id)
    await rt2.open()
    handle = rt2.cell(cell.cell_id)
    event = await rt2.wait(handle, 10)
    assert isinstance(event, Completed), event
    assert event.error_text is None
    assert [i.text for i in event.items] == ["got 3", "got 4", "got 5", "done"]
    # recorded calls never reach the delegate again; the one in flight is issued again
    assert [c.call_id for c in second.calls] == ["tool-4", "tool-5", "tool-6"]
    assert second.calls[0].input == {"i": 3}
    await rt2.shutdown()


async def test_a_pausable_cell_comes_back_at_its_frontier(runtimes: Runtimes) -> None:
    first = RecordingDelegate()
    first.release()
    rt = runtimes.make(first)
    async with asyncio.timeout(10):
        await rt.open()
        cell = await rt.create_pausable_cell(
            request(
                "text('a'); const r = await tools.echo({x: 1}); text(`r=${r.x}`); "
                "const s = await tools.echo({x: 2}); text(`s=${s.x}`);"
            )
        )
        event = await rt.wait_to_pending(cell)
        assert isinstance(event, Pending)
        assert event.frontier.generation == 1
        assert await rt.resume(cell, 1) is ResumeOutcome.RESUMED
        event = await rt.wait_to_pending(cell)
        assert isinstance(event, Pending)
        assert event.frontier.generation == 2
        assert [i.text for i in event.frontier.items] == ["r=1"]
        await rt.suspend()

        second = RecordingDelegate()
        second.release()
        rt2 = runtimes.make(second, rt.session_id)
        await rt2.open()
        handle = rt2.pausable_cell(cell.cell_id)
        again = await rt2.wait_to_pending(handle)
        assert again == event
        assert await rt2.resume(handle, 1) is ResumeOutcome.ALREADY_RUNNING
        assert await rt2.resume(handle, 2) is ResumeOutcome.RESUMED
        done = await rt2.wait_to_pending(handle)
        assert isinstance(done, Completed)
        assert [i.text for i in done.items] == ["s=2"]
        assert second.calls == []  # both calls were answered before
        await rt2.shutdown()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_cell_before_open_is_refused(runtimes: Runtimes) -> None:
    rt = runtimes.make(RecordingDelegate())
    with pytest.raises(RuntimeError, match="open the session first"):
        rt.cell("0123456789abcdef")
    assert rt.is_durable
    assert len(rt.session_id) == 16
