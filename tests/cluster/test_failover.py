"""A session host killed while its cells run: the sessions it held are reopened on a live host by
replay from the store, and the caller sees no error, no lost and no repeated output, and no
nested call asked twice (docs/cluster.md, failover)."""

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

from .conftest import LEASE

pytestmark = pytest.mark.fault

HANG = 90.0
STEP = ToolDefinition("step")
HOLD = ToolDefinition("hold")


class Steps:
    """``step({i})`` returns ``{i}`` after a short pause; when ``i`` is ``kill_at`` it kills
    the session's host first. ``hold`` answers at once. Every call is recorded."""

    def __init__(self, kill_at: int | None = None) -> None:
        self.calls: list[NestedToolCall] = []
        self.kill_at = kill_at
        self.session: ClusterSession | None = None
        self.killed: str | None = None

    async def invoke_tool(self, call: NestedToolCall) -> Any:
        self.calls.append(call)
        if call.tool.name == "step":
            if call.input["i"] == self.kill_at and self.killed is None:
                self.kill()
            await asyncio.sleep(0.01)
        return call.input

    async def notify(self, call_id: str, cell_id: str, text: str) -> None:
        pass

    def kill(self) -> None:
        import ray

        assert self.session is not None and self.session._attachment is not None
        self.killed = self.session._attachment.name
        ray.kill(ray.get_actor(self.killed, namespace=NAMESPACE), no_restart=False)


def texts(items: Any) -> list[str]:
    return [i.text for i in items]


async def drain(session: ClusterSession, cell: Any) -> list[str]:
    out: list[str] = []
    while True:
        event = await asyncio.wait_for(session.wait(cell, 0.2), HANG)
        out += texts(event.items)
        if not isinstance(event, Yielded):
            assert isinstance(event, Completed) and event.error_text is None, event
            return out


async def test_host_killed_while_cells_run_loses_and_repeats_nothing(
    make_cluster: Any, shared_store: Any
) -> None:
    cluster = await make_cluster(store=shared_store)
    steps = Steps(kill_at=8)
    session: ClusterSession = await cluster.session(steps)
    steps.session = session
    try:
        source = "for (let i = 0; i < 20; i++) { const r = await tools.step({i}); text('s' + r.i); } text('end');"
        keyed = CreateCellRequest(source, tools=[STEP], idempotency_key="k1")
        first = await session.create_cell(keyed)
        second = await session.create_cell(
            CreateCellRequest(source.replace("'s'", "'t'"), tools=[STEP])
        )
        paused = await session.create_pausable_cell(
            CreateCellRequest(
                "const r = await tools.hold({n: 1}); text('held ' + r.n);", tools=[HOLD]
            )
        )
        frontier = await asyncio.wait_for(session.wait_to_pending(paused), HANG)
        assert isinstance(frontier, Pending) and frontier.frontier.generation == 1

        out_first, out_second = await asyncio.gather(drain(session, first), drain(session, second))
        assert steps.killed is not None and session.failovers >= 1
        # Reopened within the lease plus a little (generous: the machine is shared).
        assert max(session.failover_seconds) < LEASE + HANG / 3
        assert out_first == [f"s{i}" for i in range(20)] + ["end"]
        assert out_second == [f"t{i}" for i in range(20)] + ["end"]
        # No nested call reached the delegate twice.
        ids = [(c.cell_id, c.call_id) for c in steps.calls]
        assert len(ids) == len(set(ids)) == 41

        # Idempotent creates hold across the failover: the key names the same (closed) cell.
        assert (await session.create_cell(keyed)).cell_id == first.cell_id

        # The paused cell is back at its frontier.
        assert await session.resume(paused, 1) is ResumeOutcome.RESUMED
        end = await asyncio.wait_for(session.wait_to_pending(paused), HANG)
        assert isinstance(end, Completed) and texts(end.items) == ["held 1"]
    finally:
        await session.shutdown()


async def test_operations_blocked_on_a_dead_host_complete_on_the_new_one(
    make_cluster: Any,
) -> None:
    import ray

    cluster = await make_cluster()
    gate = asyncio.Event()
    calls: list[NestedToolCall] = []

    class Gated:
        async def invoke_tool(self, call: NestedToolCall) -> Any:
            calls.append(call)
            if call.tool.name == "hold":
                await gate.wait()
            return call.input

        async def notify(self, call_id: str, cell_id: str, text: str) -> None:
            pass

    session: ClusterSession = await cluster.session(Gated())
    try:
        cont = await session.create_cell(
            CreateCellRequest(
                "text('a'); const r = await tools.hold({n: 1}); text('b' + r.n);", tools=[HOLD]
            )
        )
        paused = await session.create_pausable_cell(
            CreateCellRequest(
                "const r = await tools.step({i: 5}); text('p' + r.i); await tools.hold({n: 2}); text('q');",
                tools=[STEP, HOLD],
            )
        )
        first = await asyncio.wait_for(session.wait_to_pending(paused), HANG)
        assert isinstance(first, Pending) and first.frontier.pending_tool_call_ids == ("tool-1",)
        assert await session.resume(paused, 1) is ResumeOutcome.RESUMED
        waiting = asyncio.ensure_future(session.wait(cont, HANG))
        pending = asyncio.ensure_future(session.wait_to_pending(paused))
        await asyncio.sleep(0.5)
        assert session._attachment is not None
        ray.kill(ray.get_actor(session._attachment.name, namespace=NAMESPACE), no_restart=False)
        await asyncio.sleep(0.5)
        gate.set()  # the call running here answers the host that recovered the session
        done = await asyncio.wait_for(waiting, HANG)
        assert isinstance(done, Completed) and texts(done.items) == ["a", "b1"]
        second = await asyncio.wait_for(pending, HANG)
        assert isinstance(second, Pending) and second.frontier.generation == 2
        assert texts(second.frontier.items) == ["p5"]
        assert await session.resume(paused, 2) is ResumeOutcome.RESUMED
        end = await asyncio.wait_for(session.wait_to_pending(paused), HANG)
        assert isinstance(end, Completed) and texts(end.items) == ["q"]
        assert session.failovers >= 1
        ids = [(c.cell_id, c.call_id) for c in calls]
        assert len(ids) == len(set(ids)) == 3
    finally:
        await session.shutdown()
