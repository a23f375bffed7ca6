"""A process that stops after a cell's admission was recorded but before its first step's
clock and random reads were: the replay reads live values there, and records them before
anything it does next reaches anyone, so a second recovery reads the same values and does not
diverge (docs/durability.md, "What is recorded"). Found by the fault-injection test, whose
``clock`` cell ended with ``replay diverged at step 1: tool-1 called step with other input``
when a kill fell into that window twice in a row."""

from __future__ import annotations

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

from codemode import Completed, TextItem, Yielded
from conftest import RecordingDelegate, request

SOURCE = """
const t = Date.now();
const r = Math.random();
text(`read ${t} ${r}`);
const a = await tools.echo({r});
text(`echoed ${a.r === r}`);
await tools.block({});
text("end");
"""


def texts(items: tuple[object, ...]) -> list[str]:
    return [item.text for item in items if isinstance(item, TextItem)]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_reads_made_past_the_record_are_recorded_by_the_replay(runtimes: Runtimes) -> None:
    rt = runtimes.make(RecordingDelegate())
    cell = await rt.create_cell(request(SOURCE))
    # Leave before the cell's first step ran (its pump has not started yet): the store holds
    # its admission and nothing else.
    await rt.suspend()
    store = runtimes.backend.make()
    assert [e.kind for e in await store.read_journal(rt.session_id, cell.cell_id)] == []

    second = RecordingDelegate()
    rt2 = runtimes.make(second, rt.session_id)
    await rt2.open()
    items: list[str] = []
    while len(items) < 2:
        event = await rt2.wait(rt2.cell(cell.cell_id), 5)
        assert isinstance(event, Yielded), event
        items += texts(event.items)
    assert items[0].startswith("read ") and items[1] == "echoed true"
    await second.wait_calls(2)  # echo answered, block in flight
    await rt2.suspend()

    third = RecordingDelegate()
    third.release()
    rt3 = runtimes.make(third, rt.session_id)
    await rt3.open()
    event = await rt3.wait(rt3.cell(cell.cell_id), 10)
    assert isinstance(event, Completed), event
    assert event.error_text is None, event.error_text  # no divergence
    assert texts(event.items) == ["end"]
    assert [c.tool.name for c in third.calls] == ["block"]  # echo's answer was recorded
    await rt3.shutdown()
