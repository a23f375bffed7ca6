"""Helpers shared by the scenario suite (``contract/test_scenarios.py``, every kind of session)
and the in-process suites (test_pausable, test_lifecycle, test_idempotent). ``rt`` is any
:class:`codemode.Session`: the helpers use only that contract."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from codemode import (
    Cell,
    CellKind,
    Completed,
    CreateCellRequest,
    MissingCell,
    NestedToolCall,
    OutputItem,
    PausableCell,
    Pending,
    PendingFrontier,
    ResumeOutcome,
    Terminated,
    TextItem,
    ToolDefinition,
    ToolKind,
    Yielded,
)
from conftest import BLOCK, ECHO, RecordingDelegate, request

# Bounds that only catch hangs (a spawned server under load can be slow).
HANG = 20.0

Handle = Cell | PausableCell

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


def runqueue_wait() -> float:
    """Seconds the calling thread has spent runnable but not running (Linux schedstat; 0.0
    where the kernel does not say)."""
    try:
        with open("/proc/thread-self/schedstat") as fh:
            return int(fh.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


# A gap this long fails whatever the reason: a hang guard, far above any scheduling noise.
HANG_GAP = 5.0


class Heartbeat:
    """Ticks every ``interval`` seconds; records the longest gap between ticks (``max_gap``)
    and the longest stall (``max_stall``): a gap minus the time the loop's thread was waiting
    for a CPU (runnable but not scheduled).

    The test machine runs several suites on 2 cores, so the OS may not run the loop for
    hundreds of milliseconds at a load of 30; that is not a stall of the event loop. Everything
    else is: running the host's own code, blocking in a system call, waiting for the GIL or a
    lock."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.ticks = 0
        self.max_gap = 0.0
        self.max_stall = 0.0
        self._last, self._last_wait = time.monotonic(), runqueue_wait()

    def tick(self) -> None:
        now, wait = time.monotonic(), runqueue_wait()
        gap = now - self._last
        self.max_gap = max(self.max_gap, gap)
        self.max_stall = max(self.max_stall, gap - (wait - self._last_wait))
        self._last, self._last_wait = now, wait
        self.ticks += 1

    async def run(self) -> None:
        self._last, self._last_wait = time.monotonic(), runqueue_wait()
        while True:
            await asyncio.sleep(self.interval)
            self.tick()


@asynccontextmanager
async def heartbeat(limit: float = 0.5, *, interval: float = 0.005) -> AsyncIterator[Heartbeat]:
    """Run a heartbeat for the block; fail if the event loop stalled for ``limit`` seconds or
    more (time spent waiting for a CPU aside), or went :data:`HANG_GAP` seconds without a tick
    whatever the reason."""
    hb = Heartbeat(interval)
    task = asyncio.ensure_future(hb.run())
    await asyncio.sleep(0)  # ticking from here
    try:
        yield hb
    finally:
        task.cancel()
        hb.tick()  # the gap up to now counts too
    assert hb.max_stall < limit, f"event loop stalled for {hb.max_stall:.3f} s"
    assert hb.max_gap < HANG_GAP, f"event loop did not run for {hb.max_gap:.3f} s"


# ---------------------------------------------------------------------------- idempotent creation (docs/sessions.md)


def other(kind: CellKind) -> CellKind:
    return CellKind.PAUSABLE if kind is CellKind.CONTINUING else CellKind.CONTINUING


async def create(rt: Any, kind: CellKind, req: CreateCellRequest) -> Handle:
    if kind is CellKind.CONTINUING:
        return await rt.create_cell(req)
    return await rt.create_pausable_cell(req)


def handle_type(kind: CellKind) -> type[Handle]:
    return Cell if kind is CellKind.CONTINUING else PausableCell


async def finish(rt: Any, cell: Handle) -> Completed:
    """Drive a cell of either kind to its completion (resuming every frontier) and deliver it."""
    async with asyncio.timeout(10):
        if isinstance(cell, PausableCell):
            event: Any = await rt.wait_to_pending(cell)
            while isinstance(event, Pending):
                await rt.resume(cell, event.frontier.generation)
                event = await rt.wait_to_pending(cell)
        else:
            event = await rt.wait(cell, 10)
            while isinstance(event, Yielded):
                event = await rt.wait(cell, 10)
    assert isinstance(event, Completed), event
    return event


def lookup(rt: Any, cell: Handle) -> Handle:
    """Re-hydrate a handle from the id: succeeds exactly while the cell is registered."""
    if isinstance(cell, PausableCell):
        return rt.pausable_cell(cell.cell_id)
    return rt.cell(cell.cell_id)


async def assert_missing(rt: Any, cell: Handle) -> None:
    """Every operation on a closed cell's handle raises MissingCell for that id."""
    message = f"exec cell {cell.cell_id} not found"
    with pytest.raises(MissingCell, match=f"^{message}$") as info:
        lookup(rt, cell)
    assert info.value.cell_id == cell.cell_id
    with pytest.raises(MissingCell, match=f"^{message}$"):
        await rt.terminate(cell)
    with pytest.raises(MissingCell, match=f"^{message}$"):
        await rt.terminate(cell.cell_id)
    if isinstance(cell, PausableCell):
        with pytest.raises(MissingCell, match=f"^{message}$"):
            await rt.wait_to_pending(cell)
        with pytest.raises(MissingCell, match=f"^{message}$"):
            await rt.resume(cell, 1)
    else:
        with pytest.raises(MissingCell, match=f"^{message}$"):
            await rt.wait(cell, 0.01)


def assert_same_handle(got: Handle, first: Handle) -> None:
    assert type(got) is type(first)
    assert got == first
    assert hash(got) == hash(first)
    assert got.cell_id == first.cell_id


# A request and every way another request may differ from it (scenario 52).
ECHO_SOURCE = "text(JSON.stringify(await tools.echo({v: 1})))"
ECHO_TEXT = '{"v":1}'

SCHEMA = {"type": "object", "properties": {"v": {"type": "number"}}}
ECHO_FULL = ToolDefinition(
    "echo",
    "Returns its input.",
    input_schema=SCHEMA,
    output_schema={"type": "object"},
    namespace=None,
)
BASE_TOOLS = (ECHO_FULL, BLOCK)


def base_request(key: str, **changes: Any) -> CreateCellRequest:
    fields: dict[str, Any] = {
        "source": ECHO_SOURCE,
        "tools": BASE_TOOLS,
        "tool_call_id": "call-52",
        "idempotency_key": key,
    }
    fields.update(changes)
    return CreateCellRequest(**fields)


def with_echo(**changes: Any) -> tuple[ToolDefinition, ...]:
    fields: dict[str, Any] = {
        "name": ECHO_FULL.name,
        "description": ECHO_FULL.description,
        "kind": ECHO_FULL.kind,
        "namespace": ECHO_FULL.namespace,
        "input_schema": ECHO_FULL.input_schema,
        "output_schema": ECHO_FULL.output_schema,
    }
    fields.update(changes)
    return (ToolDefinition(**fields), BLOCK)


MISMATCHES: dict[str, Callable[[str], CreateCellRequest]] = {
    "other_source": lambda k: base_request(
        k, source="text(JSON.stringify(await tools.echo({v: 2})))"
    ),
    "other_tools": lambda k: base_request(k, tools=(ECHO_FULL,)),
    "more_tools": lambda k: base_request(k, tools=(*BASE_TOOLS, ECHO)),
    "reordered_tools": lambda k: base_request(k, tools=(BLOCK, ECHO_FULL)),
    "other_tool_call_id": lambda k: base_request(k, tool_call_id="call-other"),
    "empty_tool_call_id": lambda k: base_request(k, tool_call_id=""),
    "tool_description": lambda k: base_request(k, tools=with_echo(description="Echoes.")),
    "tool_input_schema": lambda k: base_request(
        k, tools=with_echo(input_schema={"type": "object", "properties": {"v": {"type": "string"}}})
    ),
    "tool_input_schema_missing": lambda k: base_request(k, tools=with_echo(input_schema=None)),
    "tool_output_schema": lambda k: base_request(k, tools=with_echo(output_schema=None)),
    "tool_namespace": lambda k: base_request(k, tools=with_echo(namespace="mcp__x")),
    "tool_kind": lambda k: base_request(k, tools=with_echo(kind=ToolKind.FREEFORM)),
}
