"""A timer pending when its cell's process stopped fires at the wall-clock time it was due at,
not a whole delay after the reopen (docs/durability.md, "Replay"): the journal records each
timer's due time with the step that set it."""

from __future__ import annotations

import asyncio
import sys
import time
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

DELAY = 5.0  # seconds: the cell's timer
DOWN = 5.3  # seconds the session stays suspended: the timer is overdue at the reopen
SOURCE = (
    'text("a"); const r = await tools.echo({n: 1}); '
    f"await new Promise((resolve) => setTimeout(resolve, {int(DELAY * 1000)})); "
    'text("b" + r.n);'
)


def texts(items: tuple[object, ...]) -> list[str]:
    return [item.text for item in items if isinstance(item, TextItem)]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_timer_overdue_at_the_reopen_fires_at_once(runtimes: Runtimes) -> None:
    first = RecordingDelegate()
    first.release()
    rt = runtimes.make(first)
    cell = await rt.create_cell(request(SOURCE))
    set_at = time.time()
    event = await rt.wait(cell, 0.3)  # the timer is set in the step that took echo's answer
    assert isinstance(event, Yielded) and texts(event.items) == ["a"]
    store = runtimes.backend.make()
    journal = await store.read_journal(rt.session_id, cell.cell_id)
    [entry] = [e for e in journal if e.kind == "timers"]
    [[timer_id, due]] = entry.payload["t"]
    assert isinstance(timer_id, int)
    assert set_at + DELAY - 1 < due < time.time() + DELAY  # the wall-clock time it is due at
    await rt.suspend()

    await asyncio.sleep(DOWN)  # the process is "down" longer than the timer's delay
    second = RecordingDelegate()
    rt2 = runtimes.make(second, rt.session_id)
    await rt2.open()
    # Overdue, it fires at once: well within a budget shorter than its whole delay.
    event = await rt2.wait(rt2.cell(cell.cell_id), DELAY - 2.0)
    assert isinstance(event, Completed), event
    assert event.error_text is None and texts(event.items) == ["b1"]
    assert second.calls == []  # echo's recorded answer is not asked again
    await rt2.shutdown()
