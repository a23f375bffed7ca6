"""Durable sessions: one owner at a time (leases), and replay that departs from its record."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from durable_support import (  # the fixtures: imported for pytest to find them
    Runtimes,
    WrappedCell,
    backend_fixture,  # noqa: F401
    postgres_server_fixture,  # noqa: F401
    runtimes_fixture,  # noqa: F401
)

from codemode import Completed, SessionBusy, TextItem
from codemode.engine.base import CellBoot, Engine, EngineCell, EngineLost, StepInput, StepReport
from codemode.engine.choice import default_engine
from conftest import RecordingDelegate, request


async def test_a_second_open_is_refused_while_the_lease_is_held(runtimes: Runtimes) -> None:
    rt = runtimes.make(RecordingDelegate())
    await rt.open()
    other = runtimes.make(RecordingDelegate(), rt.session_id)
    with pytest.raises(SessionBusy) as info:
        await other.open()
    assert str(info.value) == f"code mode session {rt.session_id} is open elsewhere"
    await rt.suspend()
    await other.open()  # the lease was released
    await other.shutdown()


async def test_a_holder_whose_renewals_hang_stops_before_a_takeover(runtimes: Runtimes) -> None:
    first = RecordingDelegate()
    rt = runtimes.make(first, lease_seconds=1.5)
    await rt.open()
    cell = await rt.create_cell(request("const r = await tools.block({n: 1}); text(`got ${r.n}`)"))
    await first.wait_calls(1)
    store: Any = rt._store

    async def hang(*args: Any, **kw: Any) -> Any:
        await asyncio.Event().wait()

    store.renew_lease = hang  # a partition: renewals never arrive

    second = RecordingDelegate()
    second.release()
    rt2 = runtimes.make(second, rt.session_id, lease_seconds=1.5)
    async with asyncio.timeout(20):
        while True:
            try:
                await rt2.open()
                break
            except SessionBusy:
                await asyncio.sleep(0.1)
        # The old holder had stopped its cells before the takeover succeeded.
        assert rt._core.lost
    await asyncio.sleep(0.05)
    assert first.cancelled == ["tool-1"]
    with pytest.raises(SessionBusy):
        await rt.wait(cell, 1)
    with pytest.raises(SessionBusy):
        rt.cell(cell.cell_id)
    event = await rt2.wait(rt2.cell(cell.cell_id), 10)
    assert event == Completed((TextItem("got 1"),))
    assert [c.call_id for c in second.calls] == ["tool-1"]  # issued again, same id
    await rt2.shutdown()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_replay_that_departs_from_the_record_ends_the_cell(runtimes: Runtimes) -> None:
    first = RecordingDelegate()
    rt = runtimes.make(first)
    cell = await rt.create_cell(
        request("const a = await tools.echo({n: 1}); await tools.block({n: a.n + 1}); text('x')")
    )
    await first.wait_calls(2)
    await asyncio.sleep(0.05)
    await rt.suspend()
    with sqlite3.connect(runtimes.backend.location) as db:  # the record now says "upper"
        db.execute(
            "UPDATE codemode_journal SET payload = replace(payload, '\"echo\"', '\"upper\"') "
            "WHERE kind = 'step'"
        )
    second = RecordingDelegate()
    rt2 = runtimes.make(second, rt.session_id)
    await rt2.open()
    event = await rt2.wait(rt2.cell(cell.cell_id), 10)
    assert event == Completed(
        (),
        f"exec cell {cell.cell_id} could not be recovered: replay diverged at step 1: "
        "tool-1 called tool echo, the record has upper",
    )
    assert second.calls == []  # nothing else happens
    other = await rt2.create_cell(request("text('session goes on')"))
    assert await rt2.wait(other, 10) == Completed((TextItem("session goes on"),))
    await rt2.shutdown()


class _DyingCell(WrappedCell):
    async def run(self) -> StepReport:
        self.inner.close()
        raise EngineLost("the sandbox died")


class _DyingEngine(Engine):
    """Every cell's sandbox dies as soon as it starts."""

    def __init__(self) -> None:
        self.inner = default_engine()
        self.opened = 0

    async def open_cell(self, boot: CellBoot) -> EngineCell:
        self.opened += 1
        return _DyingCell(await self.inner.open_cell(boot))

    def close(self) -> None:
        self.inner.close()


async def test_a_sandbox_that_dies_twice_during_replay_ends_the_cell(runtimes: Runtimes) -> None:
    first = RecordingDelegate()
    rt = runtimes.make(first)
    cell = await rt.create_cell(request("await tools.block({}); text('x')"))
    await first.wait_calls(1)
    await rt.suspend()
    engine = _DyingEngine()
    rt2 = runtimes.make(RecordingDelegate(), rt.session_id, engine=engine)
    await rt2.open()
    event = await rt2.wait(rt2.cell(cell.cell_id), 10)
    assert event == Completed(
        (), f"exec cell {cell.cell_id} could not be recovered: its sandbox died during replay"
    )
    assert engine.opened == 2
    await rt2.shutdown()


class _LosingCell(WrappedCell):
    async def step(self, inputs: Sequence[StepInput]) -> StepReport:
        self.inner.close()
        raise EngineLost("the sandbox died")


class _LosingEngine(_DyingEngine):
    """Every cell's sandbox dies at its first step."""

    async def open_cell(self, boot: CellBoot) -> EngineCell:
        return _LosingCell(await self.inner.open_cell(boot))


async def test_a_cell_whose_engine_was_lost_is_recovered_as_lost(runtimes: Runtimes) -> None:
    first = RecordingDelegate()
    first.release()
    rt = runtimes.make(first, engine=_LosingEngine())
    cell = await rt.create_cell(request("text('a'); await tools.echo({}); text('b')"))
    await first.wait_calls(1)
    await asyncio.sleep(0.2)  # the engine is lost at the step with the answer: completed
    rt2 = runtimes.make(RecordingDelegate(), rt.session_id)
    await rt.suspend()
    await rt2.open()
    event = await rt2.wait(rt2.cell(cell.cell_id), 10)
    assert event == Completed((TextItem("a"),), "exec runtime ended unexpectedly")
    await rt2.shutdown()
