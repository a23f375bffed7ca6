"""Helpers shared by the scenario suites: in-process (test_continuing, test_pausable,
test_lifecycle) and over the wire (protocol/test_protocol_contract). ``rt`` is a
``SessionRuntime`` or a ``RemoteSession``: the helpers use only their common API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from codemode import (
    Cell,
    Completed,
    NestedToolCall,
    OutputItem,
    PausableCell,
    Pending,
    PendingFrontier,
    ResumeOutcome,
    Terminated,
    TextItem,
    ToolDefinition,
    Yielded,
)
from conftest import RecordingDelegate, request

# Bounds that only catch hangs (a spawned server under load can be slow).
HANG = 20.0

TWO_SEQUENTIAL = "await tools.block({n: 1}); await tools.block({n: 2}); text('done')"


def T(*texts: str) -> tuple[TextItem, ...]:
    return tuple(TextItem(t) for t in texts)


def texts(items: tuple[OutputItem, ...] | list[OutputItem]) -> list[str]:
    return [i.text for i in items if isinstance(i, TextItem)]


async def frontier_of(rt: Any, cell: PausableCell) -> PendingFrontier:
    """``wait_to_pending`` that must return a frontier."""
    event = await asyncio.wait_for(rt.wait_to_pending(cell), HANG)
    assert isinstance(event, Pending), event
    frontier: PendingFrontier = event.frontier
    return frontier


async def completion_of(rt: Any, cell: PausableCell) -> Completed:
    event = await asyncio.wait_for(rt.wait_to_pending(cell), HANG)
    assert isinstance(event, Completed), event
    return event


async def still_pending(task: asyncio.Future[Any], seconds: float) -> None:
    """The task has not finished after ``seconds``."""
    await asyncio.sleep(seconds)
    assert not task.done(), f"finished early: {task}"


async def drain_continuing(rt: Any, cell: Cell) -> tuple[list[OutputItem], Any]:
    """Observe until the cell ends; all items and the last event."""
    items: list[OutputItem] = []
    for _ in range(50):
        event = await asyncio.wait_for(rt.wait(cell, 10), HANG)
        items.extend(event.items)
        if not isinstance(event, Yielded):
            return items, event
    raise AssertionError("the cell did not end")


async def drain_pausable(
    rt: Any, cell: PausableCell, max_rounds: int = 20
) -> tuple[list[PendingFrontier], Completed | Terminated]:
    """Observe and resume until the cell ends; the frontiers seen and the last event."""
    frontiers: list[PendingFrontier] = []
    for _ in range(max_rounds):
        event = await asyncio.wait_for(rt.wait_to_pending(cell), HANG)
        if not isinstance(event, Pending):
            return frontiers, event
        frontiers.append(event.frontier)
        assert await rt.resume(cell, event.frontier.generation) is ResumeOutcome.RESUMED
    raise AssertionError(f"cell did not end within {max_rounds} rounds: {frontiers}")


async def gen1_of_two_sequential(rt: Any) -> tuple[PausableCell, PendingFrontier]:
    cell = await rt.create_pausable_cell(request(TWO_SEQUENTIAL))
    f1 = await frontier_of(rt, cell)
    assert (f1.generation, f1.items, f1.pending_tool_call_ids) == (1, (), ("tool-1",))
    return cell, f1


async def gen2_of_two_sequential(
    rt: Any, delegate: RecordingDelegate
) -> tuple[PausableCell, PendingFrontier]:
    cell, _ = await gen1_of_two_sequential(rt)
    outcomes = await asyncio.gather(rt.resume(cell, 1), rt.resume(cell, 1))
    assert sorted(o.value for o in outcomes) == ["already_running", "resumed"]
    delegate.release("tool-1")
    await delegate.wait_calls(2)
    f2 = await frontier_of(rt, cell)
    assert (f2.generation, f2.items, f2.pending_tool_call_ids) == (2, (), ("tool-2",))
    return cell, f2


class StubbornDelegate(RecordingDelegate):
    """``stubborn`` ignores cancellation for ``hold`` seconds."""

    def __init__(self, hold: float = 5.0) -> None:
        super().__init__()
        self.hold = hold

    async def invoke_tool(self, call: NestedToolCall) -> Any:
        if call.tool.name != "stubborn":
            return await super().invoke_tool(call)
        self.calls.append(call)
        self.invoked.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled.append(call.call_id)
            await asyncio.sleep(self.hold)  # ignores the cancellation for a while
        return None


STUBBORN = ToolDefinition("stubborn")


class Heartbeat:
    """Ticks every 5 ms; records the longest gap between ticks."""

    def __init__(self) -> None:
        self.ticks = 0
        self.max_gap = 0.0

    async def run(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            self.max_gap = max(self.max_gap, now - last)
            last = now
            self.ticks += 1


@asynccontextmanager
async def heartbeat() -> AsyncIterator[Heartbeat]:
    """Run a heartbeat for the block; fail if the event loop stalled."""
    hb = Heartbeat()
    task = asyncio.ensure_future(hb.run())
    try:
        yield hb
    finally:
        task.cancel()
    # Generous: catches a blocked loop (seconds), not scheduling noise.
    assert hb.max_gap < 0.5, f"event loop stalled for {hb.max_gap:.3f} s"
