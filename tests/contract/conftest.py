"""The session factories of the scenario suite: one per kind of session.

Every scenario of ``test_scenarios.py`` runs against each factory its mark names. A new kind of
session (a :class:`codemode.Session`) joins the suite by adding a factory to :data:`FACTORIES` and
its name to :data:`EVERY_KIND` (the scenarios that run on every kind) and, when each scenario
should run on it, to :data:`CORE_KINDS`.

``durable`` is a ``SessionRuntime`` with a ``SqliteStore`` in a temporary directory (opened before
the scenario starts); ``reopen`` is the same, except that after the scenario's first
``create_cell``/``create_pausable_cell`` returns, the runtime is suspended and a second runtime
reopens the session (docs/durability.md), and the scenario goes on against the second one through
the same object.

``python`` (a ``SessionRuntime`` on the ``PythonEngine``) runs only the scenarios marked
``NEUTRAL``: those whose cell source is the same program in JavaScript and in Python
(``text("done")``, ``notify("n"); text("done")``); the Python twins of the others are in
``tests/test_python_cells.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from codemode import (
    CellLimits,
    PythonEngine,
    RemoteSession,
    Session,
    SessionDelegate,
    SessionRuntime,
    SqliteStore,
    WorkerEngine,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "protocol"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "cluster"))

import ray_support
from protocol_support import HANG, WebSocketServer

from conftest import RecordingDelegate


class FactoryContext:
    """What a factory may need beyond the delegate and limits: shared servers, made lazily."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self._request = request
        self.stores: list[SqliteStore] = []
        self._paths = itertools.count()

    def sqlite_store(self) -> SqliteStore:
        tmp: Path = self._request.getfixturevalue("tmp_path")
        store = SqliteStore(tmp / f"sessions-{next(self._paths)}.db")
        self.stores.append(store)
        return store

    def ws_url(self) -> str:
        server: WebSocketServer = self._request.getfixturevalue("ws_server")
        return server.url

    def session_cluster(self) -> Any:
        return self._request.getfixturevalue("contract_session_cluster")


MakeSession = Callable[[SessionDelegate, CellLimits | None, FactoryContext], Awaitable[Session]]


async def _local(
    delegate: SessionDelegate, limits: CellLimits | None, _: FactoryContext
) -> Session:
    return SessionRuntime(delegate, limits=limits)


async def _worker(
    delegate: SessionDelegate, limits: CellLimits | None, _: FactoryContext
) -> Session:
    return SessionRuntime(delegate, limits=limits, engine=WorkerEngine())


async def _spawn(
    delegate: SessionDelegate, limits: CellLimits | None, _: FactoryContext
) -> Session:
    return await RemoteSession.spawn(delegate, limits=limits)


async def _ws(delegate: SessionDelegate, limits: CellLimits | None, ctx: FactoryContext) -> Session:
    return await RemoteSession.connect(ctx.ws_url(), delegate, limits=limits)


async def _durable(
    delegate: SessionDelegate, limits: CellLimits | None, ctx: FactoryContext
) -> Session:
    return await SessionRuntime(delegate, limits=limits, store=ctx.sqlite_store()).open()


class ReopenedSession:
    """A durable ``SessionRuntime`` that, once its first cell was created, suspends and
    continues on a second runtime that reopens the same session (each with a store of its own,
    as another process would): every later call goes to the reopened one."""

    def __init__(
        self, delegate: SessionDelegate, limits: CellLimits | None, ctx: FactoryContext
    ) -> None:
        self._delegate = delegate
        self._limits = limits
        self._current = SessionRuntime(delegate, limits=limits, store=ctx.sqlite_store())
        self._ctx = ctx
        self._reopened = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._current, name)

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._current.shutdown()

    async def _reopen(self) -> None:
        if self._reopened:
            return
        self._reopened = True
        old = self._current
        await old.suspend()
        store = old._store
        assert store is not None
        reopened_store = SqliteStore(store.path)  # type: ignore[attr-defined]
        self._ctx.stores.append(reopened_store)
        self._current = SessionRuntime(
            self._delegate,
            limits=self._limits,
            store=reopened_store,
            session_id=old.session_id,
        )
        await self._current.open()

    async def create_cell(self, request: Any) -> Any:
        cell = await self._current.create_cell(request)
        await self._reopen()
        return self._current._core.cells.handle(cell.cell_id, cell.kind)

    async def create_pausable_cell(self, request: Any) -> Any:
        cell = await self._current.create_pausable_cell(request)
        await self._reopen()
        return self._current._core.cells.handle(cell.cell_id, cell.kind)


async def _reopen(
    delegate: SessionDelegate, limits: CellLimits | None, ctx: FactoryContext
) -> Session:
    session = ReopenedSession(delegate, limits, ctx)
    await session._current.open()
    return session  # type: ignore[return-value]


async def _python(
    delegate: SessionDelegate, limits: CellLimits | None, _: FactoryContext
) -> Session:
    return SessionRuntime(delegate, limits=limits, engine=PythonEngine())


async def _cluster(
    delegate: SessionDelegate, limits: CellLimits | None, ctx: FactoryContext
) -> Session:
    cluster = ctx.session_cluster()
    session: Session = await cluster.open_session(delegate, limits=limits)
    return session


FACTORIES: dict[str, MakeSession] = {
    "local": _local,  # SessionRuntime in this process
    "worker": _worker,  # SessionRuntime whose cells run in a worker process (WorkerEngine)
    "spawn": _spawn,  # RemoteSession over a child `codemode serve` (stdio)
    "ws": _ws,  # RemoteSession over WebSocket to one shared `codemode serve --listen`
    "python": _python,  # SessionRuntime on Python cells (language-neutral scenarios only)
    "durable": _durable,  # SessionRuntime with a SqliteStore
    "reopen": _reopen,  # durable, suspended and reopened after its first create
    "cluster": _cluster,  # ClusterSession on a two-node Ray cluster (tests/cluster)
}
IN_PROCESS = {"local", "python", "durable"}
"""Kinds whose events reach the caller exactly as the cell layer prepared them (no wire that may
regroup output across a cancelled observation, docs/protocol.md) and whose loop runs the cells: the
scenarios add their exact-grouping and timing assertions for these."""

CORE_KINDS = ["local", "worker", "spawn", "durable", "reopen", "cluster"]
"""Every scenario runs on these."""
EVERY_KIND = ["local", "spawn", "ws", "cluster"]
"""A subset of the scenarios also runs on these (a WebSocket session per test is slower)."""

NEUTRAL_KINDS = ["python"]
"""Added to a scenario's kinds when its cell sources are language-neutral (``*_NEUTRAL``)."""

CORE = pytest.mark.parametrize("factory", CORE_KINDS, indirect=True)
EVERY = pytest.mark.parametrize("factory", EVERY_KIND, indirect=True)
CORE_NEUTRAL = pytest.mark.parametrize("factory", CORE_KINDS + NEUTRAL_KINDS, indirect=True)
EVERY_NEUTRAL = pytest.mark.parametrize("factory", EVERY_KIND + NEUTRAL_KINDS, indirect=True)


class SessionFactory:
    """Makes sessions of one kind (``factory.session(delegate, limits)``); shuts them all down."""

    def __init__(self, kind: str, context: FactoryContext) -> None:
        self.kind = kind
        self.in_process = kind in IN_PROCESS
        self._make = FACTORIES[kind]
        self._context = context
        self.sessions: list[Session] = []

    async def session(self, delegate: Any, limits: CellLimits | None = None) -> Any:
        session = await self._make(delegate, limits, self._context)
        self.sessions.append(session)
        return session

    async def close(self) -> None:
        for session in self.sessions:
            await asyncio.wait_for(session.shutdown(), HANG)
        for store in self._context.stores:
            await store.close()


@pytest.fixture(scope="module")
def ws_server() -> Iterator[WebSocketServer]:
    server = WebSocketServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def contract_session_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A SessionCluster of two hosts on the shared two-node Ray cluster (tests/cluster)."""
    from codemode import SqliteStore
    from codemode.cluster import SessionCluster

    shared = ray_support.acquire()
    store = SqliteStore(tmp_path_factory.mktemp("contract-cluster") / "sessions.db")
    try:
        cluster = ray_support.run_sync(
            lambda: SessionCluster.start(store=store, address=shared.address)
        )
        try:
            yield cluster
        finally:
            ray_support.run_sync(cluster.close)
    finally:
        ray_support.release()


REOPEN_SKIPS = {
    "test_49_resume_without_any_frontier_is_invalid_generation_none": "its cell must still be "
    "busy when it resumes, but a reopen replays the cell to its first frontier first",
}
"""Scenarios whose premise a suspend-and-reopen after the first create changes (the reason)."""


@pytest.fixture
async def factory(request: pytest.FixtureRequest) -> AsyncIterator[SessionFactory]:
    if request.param == "reopen":
        reason = REOPEN_SKIPS.get(request.node.originalname)
        if reason is not None:
            pytest.skip(f"not a reopen scenario: {reason}")
    made = SessionFactory(request.param, FactoryContext(request))
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture
async def rt(factory: SessionFactory, delegate: RecordingDelegate) -> Any:
    """A session of the factory's kind, on the recording delegate."""
    return await factory.session(delegate)
