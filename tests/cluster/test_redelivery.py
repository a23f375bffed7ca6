"""A host that dies after recording a delivery and before its reply reaches the caller: the
caller's retried observation, on the host that recovered the session, gets that event again
(its items reproduced by replay), so every item arrives exactly once (docs/cluster.md,
re-delivery). The host is killed by its fault drill at exactly that point."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from codemode import (
    Completed,
    CreateCellRequest,
    NestedToolCall,
    Pending,
    ResumeOutcome,
    ToolDefinition,
    Yielded,
)
from codemode.cluster import NAMESPACE, ClusterSession

pytestmark = pytest.mark.fault

HANG = 90.0
STEP = ToolDefinition("step")


class Echo:
    """Every nested call answers its input after a pause (so the caller's next observation is
    attached when the cell yields); the calls are recorded."""

    def __init__(self) -> None:
        self.calls: list[NestedToolCall] = []

    async def invoke_tool(self, call: NestedToolCall) -> Any:
        self.calls.append(call)
        await asyncio.sleep(0.3)
        return call.input

    async def notify(self, call_id: str, cell_id: str, text: str) -> None:
        pass


def texts(items: Any) -> list[str]:
    return [i.text for i in items]


async def arm_drill(session: ClusterSession, cell_id: str) -> str:
    """Make the session's host die right after the next delivery of ``cell_id`` is recorded."""
    import ray

    attachment = session._attachment
    assert attachment is not None
    host = ray.get_actor(attachment.name, namespace=NAMESPACE)
    await host.drill_die_after_delivery.remote(session.session_id, cell_id)
    return attachment.name


CONTINUING = """
text('a1'); text('a2'); yield_control();
const r = await tools.step({i: 1}); text('b' + r.i); text('b' + (r.i + 1)); yield_control();
const s = await tools.step({i: 3}); text('c' + s.i); yield_control();
text('end');
"""


@pytest.mark.parametrize("lost", [0, 1, 3])
async def test_a_continuing_cells_lost_event_is_delivered_again(
    make_cluster: Any, lost: int
) -> None:
    """The event lost is the initial yield (0), one after a call (1), or the completion (3);
    each item arrives once, each call is asked once."""
    cluster = await make_cluster()
    echo = Echo()
    session: ClusterSession = await cluster.session(echo)
    try:
        cell = await session.create_cell(CreateCellRequest(CONTINUING, tools=[STEP]))
        out: list[str] = []
        events: list[Any] = []
        index = 0
        while True:
            if index == lost:
                await arm_drill(session, cell.cell_id)
            event = await asyncio.wait_for(session.wait(cell, 30.0), HANG)
            events.append(event)
            out += texts(event.items)
            index += 1
            if not isinstance(event, Yielded):
                break
        assert session.failovers == 1
        assert isinstance(events[-1], Completed) and events[-1].error_text is None
        assert out == ["a1", "a2", "b1", "b2", "c3", "end"], events
        ids = [(c.cell_id, c.call_id) for c in echo.calls]
        assert len(ids) == len(set(ids)) == 2
    finally:
        await session.shutdown()


async def test_a_pausable_cells_lost_frontier_and_completion_are_delivered_again(
    make_cluster: Any,
) -> None:
    cluster = await make_cluster()
    echo = Echo()
    session: ClusterSession = await cluster.session(echo)
    try:
        cell = await session.create_pausable_cell(
            CreateCellRequest(
                "text('p0'); const r = await tools.step({i: 1}); text('p' + r.i);"
                "const s = await tools.step({i: 2}); text('q' + s.i);",
                tools=[STEP],
            )
        )
        first = await asyncio.wait_for(session.wait_to_pending(cell), HANG)
        assert isinstance(first, Pending) and texts(first.frontier.items) == ["p0"]
        assert await session.resume(cell, 1) is ResumeOutcome.RESUMED
        await arm_drill(session, cell.cell_id)
        second = await asyncio.wait_for(session.wait_to_pending(cell), HANG)
        assert session.failovers == 1
        assert isinstance(second, Pending) and second.frontier.generation == 2
        assert texts(second.frontier.items) == ["p1"]
        assert await session.resume(cell, 2) is ResumeOutcome.RESUMED
        await arm_drill(session, cell.cell_id)  # and its completion is lost too
        end = await asyncio.wait_for(session.wait_to_pending(cell), HANG)
        assert isinstance(end, Completed) and texts(end.items) == ["q2"]
        assert session.failovers == 2
        ids = [(c.cell_id, c.call_id) for c in echo.calls]
        assert len(ids) == len(set(ids)) == 2
    finally:
        await session.shutdown()
