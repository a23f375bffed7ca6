"""Whole-node fault drills: a Ray node dies (its raylet and every worker on it) while cells run
on the session hosts it carried; the sessions come back on live hosts by replay from the shared
store and their callers see no error, nothing lost and nothing repeated (docs/scaling.md).

Each drill adds a node of its own to the test cluster, starts a ``SessionCluster`` (on SQLite,
and once on a real PostgreSQL started by the test run) with a host on that node, opens sessions
until that host holds some, starts cells on all of them, and kills the node: with
``ray.cluster_utils.Cluster.remove_node`` (the raylet and its workers are killed), or by SIGKILL
of the raylet process alone (its workers live on until Ray declares the node dead; a session host
ends itself when its raylet is gone, so the leases it held expire).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from codemode import (
    Completed,
    CreateCellRequest,
    NestedToolCall,
    Pending,
    PostgresStore,
    SqliteStore,
    TextItem,
    ToolDefinition,
)

ray = pytest.importorskip("ray")
from codemode.cluster import SessionCluster  # noqa: E402

pytestmark = [pytest.mark.fault, pytest.mark.timeout(200)]

ECHO = ToolDefinition("echo", "Returns its input after a short pause.")
LEASE = 2.0  # seconds: a dead host's sessions may be taken over this long after its last renewal
CALLS = 12
HOLD_FROM = 3  # the drill holds every cell at its call `i = 3`


class SlowEcho:
    """A delegate whose ``echo`` answers after ``pause`` seconds; records every invocation.
    With ``hold_from``, a call whose input ``i`` is at least that waits until ``gate`` is set
    (so a drill can kill a node while every cell is mid-run, waiting on a call)."""

    def __init__(self, pause: float = 0.05, hold_from: int | None = None) -> None:
        self.pause = pause
        self.hold_from = hold_from
        self.gate = asyncio.Event()
        self.calls: list[NestedToolCall] = []
        self.answered: list[tuple[str, str]] = []

    async def invoke_tool(self, call: NestedToolCall) -> Any:
        self.calls.append(call)
        if self.hold_from is not None and call.input.get("i", -1) >= self.hold_from:
            await self.gate.wait()
        await asyncio.sleep(self.pause)
        self.answered.append((call.cell_id, call.call_id))
        return call.input

    async def notify(self, call_id: str, cell_id: str, text: str) -> None:
        return None

    def seen(self, cell_id: str) -> int:
        return sum(1 for c in self.calls if c.cell_id == cell_id)


def counting_source(calls: int) -> str:
    return (
        f"for (let i = 0; i < {calls}; i++) {{ const r = await tools.echo({{i}}); text(`n${{r.i}}`); }}\n"
        "text('done');"
    )


def texts(items: Any) -> list[str]:
    return [i.text for i in items if isinstance(i, TextItem)]


async def observe_to_end(session: Any, cell: Any) -> list[str]:
    """Every text the cell outputs, over as many observations as it takes."""
    out: list[str] = []
    while True:
        event = await asyncio.wait_for(session.wait(cell, 5.0), 120)
        out += texts(event.items)
        if isinstance(event, Completed):
            assert event.error_text is None, event.error_text
            return out


async def start_with_a_host_on(
    ray_cluster: Any, node: Any, tmp_path: Path, postgres: Any = None
) -> tuple[SessionCluster, Any]:
    """A session cluster of 3 hosts (one per node, softly) of which one runs on ``node``.

    Ray's soft node affinity is a preference: right after a node joins, a host may still be
    placed elsewhere. Then that cluster is closed (its hosts stopped) and another one, on a
    fresh store (so with other host actors), is started, a few times at most."""
    for attempt in range(5):
        for _ in range(200):  # until the new node's resources are visible to the scheduler
            if ray.cluster_resources().get("CPU", 0) >= len(ray_cluster.node_ids()):
                break
            await asyncio.sleep(0.05)
        store: Any = SqliteStore(tmp_path / f"sessions-{attempt}.db", lease_seconds=LEASE)
        if postgres is not None:  # a schema of its own: other tables, other host actors
            dsn = postgres.dsn(search_path=postgres.new_schema())
            store = PostgresStore(dsn, lease_seconds=LEASE)
        cluster = await SessionCluster.start(store=store, hosts=3, address=ray_cluster.address)
        if any(h.node_id == node.node_id for h in await cluster.hosts()):
            return cluster, store
        await cluster.close()
        await store.close()
    pytest.fail("no session host was placed on the new node in 5 attempts")


@pytest.fixture
async def victim(ray_cluster: Any) -> AsyncIterator[Any]:
    """A node of the test cluster that the drill may kill (removed afterwards if still alive)."""
    node = ray_cluster.add_node()
    yield node
    if node in ray_cluster.cluster.worker_nodes:
        ray_cluster.cluster.remove_node(node)


async def sessions_on(
    cluster: SessionCluster, node_id: str, delegate: SlowEcho, wanted: int, most: int = 12
) -> list[tuple[Any, Any]]:
    """Open sessions, each with a running cell, until ``wanted`` of the hosts on ``node_id``
    hold sessions; returns ``(session, cell)`` for all of them."""
    opened: list[tuple[Any, Any]] = []
    for _ in range(most):
        session = await cluster.session(delegate)
        cell = await session.create_cell(CreateCellRequest(counting_source(CALLS), (ECHO,)))
        opened.append((session, cell))
        busy = [h for h in await cluster.hosts() if h.node_id == node_id and h.alive and h.sessions]
        if len(busy) >= wanted and len(opened) >= 3:
            return opened
    pytest.fail(f"no session was placed on a host of node {node_id}: {await cluster.hosts()}")


async def all_on_live_nodes(
    cluster: SessionCluster, ray_cluster: Any, node: Any, sessions: list[Any]
) -> None:
    """Every session is now open on a host that runs on a live node other than ``node``."""
    where = {h.actor_name: h for h in await cluster.hosts()}
    live = ray_cluster.node_ids() - {node.node_id}
    for session in sessions:
        host = where[session.host_name]
        assert host.alive and host.node_id in live, (session.session_id, host)


def kill_raylet(node: Any) -> None:
    """SIGKILL the node's raylet process alone (not its workers)."""
    process = node.all_processes["raylet"][0].process
    os.kill(process.pid, signal.SIGKILL)


async def hosts_on(cluster: SessionCluster, node_id: str) -> dict[str, int]:
    """The cluster's hosts on ``node_id``: actor name to process id (this machine's)."""
    pids = {}
    for info in await cluster.hosts():
        if info.alive and info.node_id == node_id:
            handle = ray.get_actor(info.actor_name, namespace=info.namespace)
            pids[info.actor_name] = (await handle.info.remote())["pid"]
    return pids


def process_gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


@pytest.mark.parametrize(
    ("how", "kind"),
    [("remove_node", "sqlite"), ("kill_raylet", "sqlite"), ("remove_node", "postgres")],
)
async def test_cells_survive_the_death_of_their_node(
    how: str, kind: str, ray_cluster: Any, victim: Any, tmp_path: Path, request: Any
) -> None:
    postgres = request.getfixturevalue("postgres_server") if kind == "postgres" else None
    cluster, store = await start_with_a_host_on(ray_cluster, victim, tmp_path, postgres)
    try:
        delegate = SlowEcho(hold_from=HOLD_FROM)
        opened = await sessions_on(cluster, victim.node_id, delegate, wanted=1)
        # Every cell runs until its call `i = HOLD_FROM`, which waits; then the node dies under
        # them. The calls go on only once the victim's hosts have exited: a host outlives its
        # raylet for a moment (it exits when it notices), and a cell that went on there in that
        # moment could finish without its session ever meeting the death.
        deadline = time.monotonic() + 60
        while any(delegate.seen(c.cell_id) <= HOLD_FROM for _, c in opened):
            assert time.monotonic() < deadline, "the cells did not reach their held call"
            await asyncio.sleep(0.02)
        before = {c.cell_id: delegate.seen(c.cell_id) for _, c in opened}
        doomed = await hosts_on(cluster, victim.node_id)
        on_victim = [s for s, _ in opened if s.host_name in doomed]
        assert on_victim
        if how == "remove_node":
            ray_cluster.cluster.remove_node(victim)
        else:
            kill_raylet(victim)
        while not all(process_gone(pid) for pid in doomed.values()):
            assert time.monotonic() < deadline + 60, "the dead node's hosts did not exit"
            await asyncio.sleep(0.05)
        delegate.gate.set()
        outputs = await asyncio.gather(*(observe_to_end(s, c) for s, c in opened))

        for (_, cell), out in zip(opened, outputs, strict=True):
            # Nothing lost, nothing twice: every step's output once, in order, then done.
            assert out == [f"n{i}" for i in range(CALLS)] + ["done"], (cell.cell_id, out)
            ids = [c.call_id for c in delegate.calls if c.cell_id == cell.cell_id]
            repeats = [i for i, n in Counter(ids).items() if n > 1]
            # An answered call is recorded before the cell sees it, so only the one call in
            # flight when the node died may be asked again (same cell and call id).
            assert len(repeats) <= 1, (cell.cell_id, ids)
            assert len(set(ids)) == CALLS
        assert all(before[c.cell_id] == HOLD_FROM + 1 for _, c in opened)  # all mid-run
        assert all(s.failovers >= 1 for s in on_victim)  # each met the death, and moved
        await all_on_live_nodes(cluster, ray_cluster, victim, [s for s, _ in opened])
        for session, _ in opened:
            await session.shutdown()
    finally:
        await cluster.close()
        await store.close()


async def test_a_paused_cell_and_idempotent_create_survive_a_node_death(
    ray_cluster: Any, victim: Any, tmp_path: Path
) -> None:
    """A pausable cell at its frontier on the dead node is back at the same frontier on a live
    host (same generation, same pending calls) and resumes; an idempotent create of a cell
    created before the death returns that cell."""
    cluster, store = await start_with_a_host_on(ray_cluster, victim, tmp_path)
    try:
        delegate = SlowEcho(pause=0.0)
        opened = await sessions_on(cluster, victim.node_id, delegate, wanted=1)
        source = "const r = await tools.echo({step: 1}); text(`got ${r.step}`);"
        paused = []
        for session, cell in opened:
            request = CreateCellRequest(source, (ECHO,), idempotency_key=f"key-{cell.cell_id}")
            pcell = await session.create_pausable_cell(request)
            first = await session.wait_to_pending(pcell)
            assert isinstance(first, Pending)
            paused.append((session, pcell, request, first.frontier))
        ray_cluster.cluster.remove_node(victim)
        for session, pcell, request, frontier in paused:
            again = await asyncio.wait_for(session.wait_to_pending(pcell), 120)
            assert isinstance(again, Pending)
            assert again.frontier.generation == frontier.generation
            assert again.frontier.pending_tool_call_ids == frontier.pending_tool_call_ids
            same = await session.create_pausable_cell(request)
            assert same.cell_id == pcell.cell_id
            await session.resume(pcell, frontier.generation)
            final = await asyncio.wait_for(session.wait_to_pending(pcell), 120)
            assert isinstance(final, Completed) and texts(final.items) == ["got 1"]
        for session, cell in opened:
            await observe_to_end(session, cell)
            await session.shutdown()
    finally:
        await cluster.close()
        await store.close()
