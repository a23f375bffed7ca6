"""Durable sessions: a recovered V8 cell's recorded steps run back to back (engine/v8.py
``replay_steps``), with the host's checks unchanged (docs/durability.md, *Replay*)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from durable_support import (  # the fixtures: imported for pytest to find them
    Runtimes,
    backend_fixture,  # noqa: F401
    postgres_server_fixture,  # noqa: F401
    runtimes_fixture,  # noqa: F401
)

from codemode import Completed, TextItem
from codemode.engine import v8
from conftest import RecordingDelegate, request

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

# Steps that read the clock and the random source here and there, a timer, parallel calls; its
# reads go to the delegate (recorded) and into its output (replayed).
MIXED = """
const seen = [];
for (let i = 0; i < 40; i++) {
  const t = i % 7 === 0 ? Date.now() : 0;
  const x = i % 11 === 0 ? Math.random() : 0;
  const r = await tools.echo({ i, t, x });
  seen.push([r.i, t, x]);
  if (i % 13 === 0) await new Promise(ok => setTimeout(ok, 1));
  if (i % 5 === 0) {
    const rs = await Promise.all([tools.echo({ a: i }), tools.echo({ b: i })]);
    seen.push(rs.length);
  }
}
text(JSON.stringify(seen));
const last = await tools.block({});
text(`end ${last.v}`);
"""


class Spy:
    """Counts the engine's back-to-back runs and what they returned."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.results: list[int | None] = []
        original = v8._V8Cell.replay_steps
        spy = self

        async def replay_steps(cell: Any, steps: Any) -> Any:
            reports = await original(cell, steps)
            spy.results.append(None if reports is None else len(reports))
            return reports

        monkeypatch.setattr(v8._V8Cell, "replay_steps", replay_steps)


async def _recorded_mixed(runtimes: Runtimes) -> tuple[str, str, list[Any]]:
    """Run MIXED until it waits on `block`, suspend; the session id, the cell id, and the
    values the cell read (as it sent them to the delegate)."""
    first = RecordingDelegate()
    rt = runtimes.make(first)
    await rt.open()
    cell = await rt.create_cell(request(MIXED))
    async with asyncio.timeout(20):
        while not first.calls or first.calls[-1].tool.name != "block":
            await first.invoked.wait()
            first.invoked.clear()
    await asyncio.sleep(0.05)
    await rt.suspend()
    seen: list[Any] = []
    for call in first.calls:
        if "i" in call.input:
            seen.append([call.input["i"], call.input["t"], call.input["x"]])
        elif "a" in call.input:
            seen.append(2)
    return rt.session_id, cell.cell_id, seen


async def test_a_recorded_cell_replays_its_steps_back_to_back(
    runtimes: Runtimes, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid, cell_id, seen = await _recorded_mixed(runtimes)
    spy = Spy(monkeypatch)
    second = RecordingDelegate()
    second.release("tool-57", {"v": 7})
    rt2 = runtimes.make(second, sid)
    await rt2.open()
    event = await rt2.wait(rt2.cell(cell_id), 10)
    assert isinstance(event, Completed) and event.error_text is None, event
    texts = [i.text for i in event.items if isinstance(i, TextItem)]
    assert json.loads(texts[0]) == seen  # the clock and random values the record holds
    assert texts[1:] == ["end 7"]
    assert [c.call_id for c in second.calls] == ["tool-57"]  # only the unanswered call
    assert len(spy.results) == 1 and spy.results[0] is not None and spy.results[0] > 40
    await rt2.shutdown()


async def test_a_divergence_in_the_middle_of_the_steps_ends_the_cell(
    runtimes: Runtimes,
) -> None:
    sid, cell_id, _ = await _recorded_mixed(runtimes)
    with sqlite3.connect(runtimes.backend.location) as db:  # step 20 now answers another call
        seq = db.execute(
            "SELECT seq FROM codemode_journal WHERE cell_id = ? AND kind = 'step' "
            "ORDER BY seq LIMIT 1 OFFSET 19",
            (cell_id,),
        ).fetchone()[0]
        db.execute(
            "UPDATE codemode_journal SET payload = replace(payload, '\"echo\"', '\"upper\"') "
            "WHERE cell_id = ? AND seq = ?",
            (cell_id, seq),
        )
    second = RecordingDelegate()
    rt2 = runtimes.make(second, sid)
    await rt2.open()
    event = await rt2.wait(rt2.cell(cell_id), 10)
    assert isinstance(event, Completed)
    assert event.error_text is not None
    assert event.error_text.startswith(
        f"exec cell {cell_id} could not be recovered: replay diverged at step 20: "
    ), event.error_text
    assert "the record has upper" in event.error_text
    assert second.calls == []  # nothing of the record, and nothing after the divergence
    await rt2.shutdown()


async def test_a_run_that_stops_early_is_replayed_step_by_step(
    runtimes: Runtimes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the back-to-back run stops (here: told it hit a limit), the cell is replayed again
    in a fresh sandbox step by step, and nothing of the first try shows."""
    sid, cell_id, seen = await _recorded_mixed(runtimes)
    spy = Spy(monkeypatch)
    # Only the back-to-back run is told it hit a limit: the step-by-step replay's own watch
    # reads the same flag, and a step slow enough to meet it (a loaded machine) must not stop.
    spied, original_flag = v8._V8Cell.replay_steps, v8._V8Cell._limit_flag
    back_to_back = False

    async def replay_steps(cell: Any, steps: Any) -> Any:
        nonlocal back_to_back
        back_to_back = True
        try:
            return await spied(cell, steps)
        finally:
            back_to_back = False

    monkeypatch.setattr(v8._V8Cell, "replay_steps", replay_steps)
    monkeypatch.setattr(
        v8._V8Cell,
        "_limit_flag",
        lambda self: "max_output_bytes" if back_to_back else original_flag(self),
    )
    steps: list[int] = []
    original_step = v8._V8Cell.step

    async def step(cell: Any, inputs: Any) -> Any:
        steps.append(len(inputs))
        return await original_step(cell, inputs)

    monkeypatch.setattr(v8._V8Cell, "step", step)
    second = RecordingDelegate()
    second.release("tool-57", {"v": 8})
    rt2 = runtimes.make(second, sid)
    await rt2.open()
    event = await rt2.wait(rt2.cell(cell_id), 10)
    assert isinstance(event, Completed) and event.error_text is None, event
    texts = [i.text for i in event.items if isinstance(i, TextItem)]
    assert json.loads(texts[0]) == seen
    assert texts[1:] == ["end 8"]
    assert spy.results == [None]
    assert len(steps) > 40  # the record, step by step (and the step after it)
    assert [c.call_id for c in second.calls] == ["tool-57"]
    await rt2.shutdown()


async def test_a_limit_reached_during_replay_ends_the_cell_as_step_by_step(
    runtimes: Runtimes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recovered cell's CPU counts again (docs/durability.md, *Limits*): when the replay
    runs out of it, the cell ends with the limit's error, as a step-by-step replay ends it."""
    # As many rounds as fit in 150 ms live; the replay answers the clock from the record, so
    # it computes as many rounds again.
    spin = (
        "let n = 0; const until = Date.now() + 150;"
        "while (Date.now() < until) { for (let k = 0; k < 2000; k++) n += k % 7; }"
    )
    source = (
        "await tools.echo({i: -1});"  # the first command spins not: the steps after do
        f"for (let i = 0; i < 3; i++) {{ {spin}; await tools.echo({{i}}); }}"
        "await tools.block({}); text('never');"
    )
    first = RecordingDelegate()
    rt = runtimes.make(first)
    await rt.open()
    cell = await rt.create_cell(request(source))
    async with asyncio.timeout(20):
        while not first.calls or first.calls[-1].tool.name != "block":
            await first.invoked.wait()
            first.invoked.clear()
    await rt.suspend()
    # The session's limits as the store holds them (a reopened session keeps those): the
    # replay's second spin passes its CPU budget.
    with sqlite3.connect(runtimes.backend.location) as db:
        db.execute(
            "UPDATE codemode_sessions SET limits = json_set(limits, '$.max_cpu_seconds', 0.2)"
        )
    spy = Spy(monkeypatch)
    second = RecordingDelegate()
    rt2 = runtimes.make(second, rt.session_id)
    await rt2.open()
    event = await rt2.wait(rt2.cell(cell.cell_id), 10)
    assert isinstance(event, Completed)
    assert event.error_text is not None and "max_cpu_seconds" in event.error_text, event
    assert spy.results == [None]  # the back-to-back run stopped at the limit
    assert second.calls == []
    await rt2.shutdown()


async def test_reads_made_past_the_record_are_recorded_before_their_effects(
    runtimes: Runtimes,
) -> None:
    """A process that died after a command's inputs were recorded but before its reads: the
    replay reads live there, and records what it read before the call made of it goes out, so
    another restart issues the same call."""
    first = RecordingDelegate()
    rt = runtimes.make(first)
    await rt.open()
    cell = await rt.create_cell(
        request(
            "const a = await tools.echo({ n: 1 }); await tools.block({t: Date.now() + a.n, r: Math.random()});"
        )
    )
    await first.wait_calls(2)
    await rt.suspend()
    with sqlite3.connect(runtimes.backend.location) as db:  # as if it died before the reads
        assert db.execute("DELETE FROM codemode_journal WHERE kind = 'reads'").rowcount == 1
    inputs = []
    for _ in range(2):
        again = RecordingDelegate()
        rt2 = runtimes.make(again, rt.session_id)
        await rt2.open()
        await again.wait_calls(1)
        assert [c.call_id for c in again.calls] == ["tool-2"]
        inputs.append(again.calls[0].input)
        await rt2.suspend()
    assert inputs[0] == inputs[1]
    rt3 = runtimes.make(RecordingDelegate(), rt.session_id)
    await rt3.open()
    assert rt3.is_live(cell.cell_id)
    await rt3.shutdown()
