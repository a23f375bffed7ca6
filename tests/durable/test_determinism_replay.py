"""Durable sessions: a cell that reads the clock and the random source replays identically."""

from __future__ import annotations

import asyncio
import json
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

from codemode import Completed, PythonEngine, TextItem, Yielded
from conftest import RecordingDelegate, request

SOURCE = """
const t = Date.now(); const d = new Date().getTime(); const r = Math.random();
await new Promise(ok => setTimeout(ok, 5));
const a = await tools.echo({ t, d, r, later: Date.now(), r2: Math.random() });
text(JSON.stringify(a));
await tools.block({});
text(JSON.stringify([Date.now() >= t, Math.random() < 1]));
"""


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_clock_and_random_reads_replay_identically(runtimes: Runtimes) -> None:
    first = RecordingDelegate()
    rt = runtimes.make(first)
    cell = await rt.create_cell(request(SOURCE))
    await first.wait_calls(2)
    seen = await rt.wait(cell, 0.2)
    assert isinstance(seen, Yielded) and len(seen.items) == 1
    echoed = first.calls[0].input
    assert json.loads(seen.items[0].text) == echoed  # type: ignore[union-attr]
    await rt.suspend()
    await asyncio.sleep(0.05)  # the clock moves on; the replay must not see it
    second = RecordingDelegate()
    second.release()
    rt2 = runtimes.make(second, rt.session_id)
    await rt2.open()
    event = await rt2.wait(rt2.cell(cell.cell_id), 10)
    assert event == Completed((TextItem("[true,true]"),))
    assert [c.call_id for c in second.calls] == ["tool-2"]  # echo's record matched: no divergence
    await rt2.shutdown()


PYTHON_SOURCE = """
import datetime
t = datetime.datetime.now().isoformat()
await asyncio.sleep(0.005)
a = await tools.echo({'t': t, 'later': datetime.datetime.now().isoformat()})
print(a['t'])
await tools.block({})
print('end')
"""


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_python_clock_reads_replay_identically(runtimes: Runtimes) -> None:
    first = RecordingDelegate()
    rt = runtimes.make(first, engine=PythonEngine())
    cell = await rt.create_cell(request(PYTHON_SOURCE))
    await first.wait_calls(2)
    await rt.suspend()
    await asyncio.sleep(0.05)
    second = RecordingDelegate()
    second.release()
    rt2 = runtimes.make(second, rt.session_id, engine=PythonEngine())
    await rt2.open()
    event = await rt2.wait(rt2.cell(cell.cell_id), 10)
    assert event == Completed((TextItem(first.calls[0].input["t"]), TextItem("end")))
    assert [c.call_id for c in second.calls] == ["tool-2"]
    await rt2.shutdown()
