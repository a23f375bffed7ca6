"""Durable sessions: a reopen recovers its cells concurrently, with the guarantees of one at a
time (docs/durability.md, "Opening, leaving, ending")."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from durable_support import (  # the fixtures: imported for pytest to find them
    Runtimes,
    WrappedCell,
    backend_fixture,  # noqa: F401
    postgres_server_fixture,  # noqa: F401
    runtimes_fixture,  # noqa: F401
)

from codemode import (
    Completed,
    EngineError,
    MissingCell,
    Pending,
    ResumeOutcome,
    TextItem,
)
from codemode.engine.base import CellBoot, Engine, EngineCell, StepReport
from codemode.engine.choice import default_engine
from codemode.session import _RECOVERING_AT_ONCE
from codemode.store import Batch, Entry
from conftest import RecordingDelegate, request

CELLS = _RECOVERING_AT_ONCE + 4
SOURCE = """
const r = await tools.echo({ n: %d });
text(`r=${r.n}`);
await tools.block({});
text("done");
"""


class _StartedCell(WrappedCell):
    def __init__(self, inner: EngineCell, started: list[str], cell_id: str) -> None:
        super().__init__(inner)
        self._started = started
        self._cell_id = cell_id

    async def run(self) -> StepReport:
        self._started.append(self._cell_id)
        return await self.inner.run()


class _LateEngine(Engine):
    """Opens each sandbox late, the later the earlier its cell was admitted (so the sandboxes
    are ready in the reverse of the admission order), refuses the sandbox of ``failing``,
    counts how many sandboxes are being opened at once and records the order in which the
    cells start running."""

    def __init__(self, order: list[str], failing: str) -> None:
        self.inner = default_engine()
        self.order = order
        self.failing = failing
        self.opening = 0
        self.most = 0
        self.started: list[str] = []

    async def open_cell(self, boot: CellBoot) -> EngineCell:
        if boot.cell_id == self.failing:
            raise EngineError("no sandbox for this cell")
        self.opening += 1
        self.most = max(self.most, self.opening)
        try:
            await asyncio.sleep(0.01 * (len(self.order) - self.order.index(boot.cell_id)))
        finally:
            self.opening -= 1
        return _StartedCell(await self.inner.open_cell(boot), self.started, boot.cell_id)

    def close(self) -> None:
        self.inner.close()


async def test_cells_are_recovered_concurrently_in_admission_order(runtimes: Runtimes) -> None:
    """Sandboxes open concurrently (bounded), the cells start in their admission order whatever
    order their sandboxes are ready in, and a cell whose sandbox cannot be opened, or whose
    journal cannot be read, is closed without holding up or breaking the others."""
    first = RecordingDelegate()
    rt = runtimes.make(first)
    await rt.open()
    cells = []
    for n in range(CELLS):
        cell = await rt.create_pausable_cell(request(SOURCE % n, idempotency_key=f"k{n}"))
        event = await rt.wait_to_pending(cell)
        assert isinstance(event, Pending)
        assert await rt.resume(cell, event.frontier.generation) is ResumeOutcome.RESUMED
        event = await rt.wait_to_pending(cell)
        assert isinstance(event, Pending) and event.frontier.pending_tool_call_ids == ("tool-2",)
        cells.append((cell, event))
    await rt.suspend()

    order = [cell.cell_id for cell, _ in cells]
    failing = order[3]
    # Another cell's journal gets an entry its recovery cannot read (written as a process of
    # some other version could have).
    malformed = order[6]
    store = runtimes.backend.make()
    await store.open_session(rt.session_id, "tamper", limits={})
    await store.write(rt.session_id, "tamper", Batch(entries=[Entry(malformed, "step", {"i": 5})]))
    await store.release_lease(rt.session_id, "tamper")
    engine = _LateEngine(order, failing)
    second = RecordingDelegate()
    rt2 = runtimes.make(second, rt.session_id, engine=engine)
    async with asyncio.timeout(30):
        await rt2.open()
    assert 1 < engine.most <= _RECOVERING_AT_ONCE  # concurrent, and bounded
    lost = (failing, malformed)
    assert engine.started == [i for i in order if i not in lost]  # admission order
    for cell_id in lost:
        record = await store.get_cell(rt.session_id, cell_id)
        assert record is not None and record.state == "closed"  # not recovered again later
    for cell, event in cells:
        if cell.cell_id in lost:
            assert not rt2.is_live(cell.cell_id)
            try:
                rt2.pausable_cell(cell.cell_id)
            except MissingCell:
                pass
            else:
                raise AssertionError("the cell without a sandbox is still live")
            continue
        again = await rt2.wait_to_pending(rt2.pausable_cell(cell.cell_id))
        assert again == event  # back at its frontier, nothing lost, nothing twice
    # The recorded answers were not asked again; the unanswered calls are issued again.
    assert sorted(c.cell_id for c in second.calls) == sorted(i for i in order if i not in lost)
    assert {c.call_id for c in second.calls} == {"tool-2"}
    # Idempotency keys still name their recorded cells (the failed one's too: keys outlive).
    for n, (cell, _) in enumerate(cells):
        again_id = await rt2.create_pausable_cell(request(SOURCE % n, idempotency_key=f"k{n}"))
        assert again_id.cell_id == cell.cell_id
    second.release()
    handle = rt2.pausable_cell(order[0])
    assert await rt2.resume(handle, 2) is ResumeOutcome.RESUMED
    done = await rt2.wait_to_pending(handle)
    assert isinstance(done, Completed) and done.items == (TextItem("done"),)
    await rt2.shutdown()
