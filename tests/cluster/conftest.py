"""Fixtures of the cluster tests: the shared multi-node Ray cluster and session clusters on it.

``ray_cluster`` (package scope) is the real cluster of :mod:`ray_support`; ``session_cluster``
(module scope) is a :class:`~codemode.cluster.SessionCluster` of two hosts on it with a SQLite
store of its own, closed at the end of the module. ``make_cluster`` makes more (any store, any
number of hosts), each closed at the end of its test.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "store"))

import ray_support
from store_support import postgres_server_fixture

from codemode import PostgresStore, SqliteStore
from codemode.cluster import SessionCluster

LEASE = 2.0
"""The lease of the tests' stores: failover waits for it, so it is short."""

__all__ = ["LEASE", "postgres_server_fixture"]  # the store tests' PostgreSQL server fixture


@pytest.fixture(scope="package")
def ray_cluster() -> Iterator[ray_support.RayCluster]:
    shared = ray_support.acquire()
    try:
        yield shared
    finally:
        ray_support.release()


@pytest.fixture(scope="module")
def session_cluster(
    ray_cluster: ray_support.RayCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SessionCluster]:
    path = tmp_path_factory.mktemp("cluster") / "sessions.db"
    cluster = ray_support.run_sync(
        lambda: SessionCluster.start(
            store=SqliteStore(path, lease_seconds=LEASE), hosts=2, address=ray_cluster.address
        )
    )
    try:
        yield cluster
    finally:
        ray_support.run_sync(cluster.close)


@pytest.fixture(params=["sqlite", "postgres"])
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A store for a cluster: SQLite in a file, or PostgreSQL (a real server started by the
    run, a schema of this test's own)."""
    if request.param == "sqlite":
        return SqliteStore(tmp_path / "shared.db", lease_seconds=LEASE)
    server = request.getfixturevalue("postgres_server")
    return PostgresStore(server.dsn(search_path=server.new_schema()), lease_seconds=LEASE)


@pytest.fixture
async def make_cluster(
    ray_cluster: ray_support.RayCluster, tmp_path: Path
) -> AsyncIterator[Callable[..., Any]]:
    made: list[SessionCluster] = []

    async def make(*, store: Any = None, hosts: int = 2) -> SessionCluster:
        if store is None:
            store = SqliteStore(tmp_path / f"sessions-{len(made)}.db", lease_seconds=LEASE)
        cluster = await SessionCluster.start(store=store, hosts=hosts, address=ray_cluster.address)
        made.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            await cluster.close()
