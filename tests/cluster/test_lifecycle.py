"""The end of cluster sessions: many shut down (or suspended) at once leave nothing behind on
their hosts, nor in the store (docs/cluster.md, "Ending sessions")."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from codemode import CreateCellRequest, SqliteStore, ToolDefinition, tools_delegate
from codemode.cluster import ClusterSession, SessionCluster

from .conftest import LEASE

HANG = 120.0
ECHO = ToolDefinition("echo")
FOREVER = "text(JSON.stringify(await tools.echo({n: 1}))); await new Promise(() => {});"


def echo_delegate(answered: list[Any]) -> Any:
    async def echo(x: Any) -> Any:
        answered.append(x)
        return x

    return tools_delegate({"echo": echo})


async def open_with_live_cells(cluster: SessionCluster, n: int) -> list[ClusterSession]:
    """``n`` sessions, each with a live cell whose nested call was answered here."""
    answered: list[Any] = []
    sessions: list[ClusterSession] = list(
        await asyncio.gather(*(cluster.session(echo_delegate(answered)) for _ in range(n)))
    )
    cells = await asyncio.gather(
        *(s.create_cell(CreateCellRequest(FOREVER, tools=[ECHO])) for s in sessions)
    )
    # Every cell made its call and is now waiting forever.
    events = await asyncio.gather(*(s.wait(c, 30.0) for s, c in zip(sessions, cells, strict=True)))
    assert all([i.text for i in e.items] == ['{"n":1}'] for e in events)  # type: ignore[union-attr]
    assert len(answered) == n
    return sessions


async def assert_nothing_left(cluster: SessionCluster, store: Any, ids: list[str]) -> None:
    hosts = await cluster.hosts()
    assert [(h.sessions, h.live_cells) for h in hosts] == [(0, 0)] * len(hosts)
    for session_id in ids:
        assert await store.list_cells(session_id, state="open") == []
        assert await store.get_lease(session_id) is None


@pytest.mark.fault
async def test_a_hundred_sessions_of_one_host_shut_down_at_once(
    make_cluster: Any, tmp_path: Any
) -> None:
    """Each shutdown stops its session's lease keeper while a hundred renewals queue on the
    host's store: a stop that landed as a renewal returned used to leave the keeper renewing and
    the shutdown waiting forever (half of the runs here, before the fix in store/lease.py)."""
    store = SqliteStore(tmp_path / "many.db", lease_seconds=LEASE)
    cluster = await make_cluster(store=store, hosts=1)
    try:
        sessions = await asyncio.wait_for(open_with_live_cells(cluster, 100), HANG)
        async with asyncio.timeout(HANG):
            await asyncio.gather(*(s.shutdown() for s in sessions))
        await assert_nothing_left(cluster, store, [s.session_id for s in sessions])
    finally:
        await store.close()


@pytest.mark.fault
async def test_many_sessions_suspended_at_once_stay_in_the_store(
    make_cluster: Any, tmp_path: Any
) -> None:
    store = SqliteStore(tmp_path / "suspended.db", lease_seconds=LEASE)
    cluster = await make_cluster(store=store, hosts=2)
    try:
        sessions = await asyncio.wait_for(open_with_live_cells(cluster, 20), HANG)
        assert len({s.host_name for s in sessions}) == 2  # opened at once, placed on both
        async with asyncio.timeout(HANG):
            await asyncio.gather(*(s.suspend() for s in sessions))
        hosts = await cluster.hosts()
        assert [(h.sessions, h.live_cells) for h in hosts] == [(0, 0)] * len(hosts)
        for session in sessions:
            assert len(await store.list_cells(session.session_id, state="open")) == 1
            assert await store.get_lease(session.session_id) is None
    finally:
        await store.close()


async def host_counts(cluster: SessionCluster) -> list[dict[str, int]]:
    """Each host's own report: sessions, live cells, sessions opening, call streams running,
    tasks on its event loop."""
    import ray

    counts = []
    for info in await cluster.hosts():
        handle = ray.get_actor(info.actor_name, namespace=info.namespace)
        report = await handle.info.remote()
        keys = ("sessions", "live_cells", "opening", "streams", "tasks")
        counts.append({k: report[k] for k in keys})
    return counts


@pytest.mark.fault
async def test_two_hundred_sessions_opened_and_shut_down_at_once_leave_nothing(
    make_cluster: Any, tmp_path: Any
) -> None:
    store = SqliteStore(tmp_path / "busy.db", lease_seconds=LEASE)
    cluster = await make_cluster(store=store, hosts=2)
    try:
        # Sessions on every host first, so that each host runs what it runs for as long as it
        # lives (its watch of the callers).
        for _ in range(20):
            warm = await asyncio.gather(*(cluster.session(echo_delegate([])) for _ in range(4)))
            spread = all(c["sessions"] > 0 for c in await host_counts(cluster))
            await asyncio.gather(*(s.shutdown() for s in warm))
            if spread:
                break
        before = await host_counts(cluster)
        assert [(c["sessions"], c["streams"]) for c in before] == [(0, 0), (0, 0)]

        async with asyncio.timeout(HANG):
            sessions = await asyncio.gather(
                *(cluster.session(echo_delegate([])) for _ in range(200))
            )
            during = await host_counts(cluster)
            assert sum(c["sessions"] for c in during) == 200
            assert all(c["sessions"] > 0 for c in during)
            await asyncio.gather(*(s.shutdown() for s in sessions))
        ids = [s.session_id for s in sessions]
        await assert_nothing_left(cluster, store, ids)
        # No call stream, opening or other task left running on a host (the streams of the
        # sessions just shut down end as their callers see them end).
        after = await host_counts(cluster)
        settle = time.monotonic() + 30.0
        while after != before and time.monotonic() < settle:
            await asyncio.sleep(0.2)
            after = await host_counts(cluster)
        assert after == before
        assert not cluster._sessions
    finally:
        await store.close()
