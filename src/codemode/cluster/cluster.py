"""``SessionCluster``: session hosts on Ray, and sessions placed among them (docs/cluster.md).

The hosts are async Ray actors (:class:`~codemode.cluster.host.SessionHost`), named
``codemode-host-{store}-{i}`` in the Ray namespace ``codemode`` (``{store}`` is a digest of the
store's description, so clusters on different stores never share hosts), detached (they outlive
the process that started them, so a caller's crash takes no session with it), restarted by Ray
without limit when they or their node die, spread over the nodes, and using no CPU slot of their
own (a cell's work is bursty; the hosts share their node's cores).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass
from typing import Any, Final

from codemode.model import CellLimits, SessionDelegate
from codemode.session import new_cell_id
from codemode.store.base import SessionStore

from .orphans import orphan_grace
from .spec import StoreSpec

__all__ = ["NAMESPACE", "HostInfo", "SessionCluster"]

logger = logging.getLogger("codemode.cluster")

NAMESPACE: Final = "codemode"
"""The Ray namespace of the session hosts."""
PROBE_TIMEOUT: Final = 5.0
"""How long placement and :meth:`SessionCluster.hosts` wait for a host to answer."""


@dataclass(frozen=True)
class HostInfo:
    """One session host: its id, the Ray node it runs on, its open sessions and live cells,
    whether it answered, and the named Ray actor (``ray.get_actor(actor_name,
    namespace=namespace)``)."""

    host_id: str
    node_id: str
    sessions: int
    live_cells: int
    alive: bool
    actor_name: str
    namespace: str


class SessionCluster:
    """Session hosts on a Ray cluster; :meth:`session` opens sessions on them by load."""

    def __init__(
        self,
        spec: StoreSpec,
        names: list[str],
        limits: CellLimits | None,
        *,
        started_ray: bool,
        _token: object,
    ) -> None:
        if _token is not _CONSTRUCT:
            raise TypeError("use await SessionCluster.start(...)")
        self._spec = spec
        self._names = names
        self._limits = limits
        self._started_ray = started_ray
        self._started_hosts: list[str] = []
        self._handles: dict[str, Any] = {}
        self._sessions: set[Any] = set()
        self._closed = False

    @classmethod
    async def start(
        cls,
        *,
        store: SessionStore,
        hosts: int = 2,
        address: str | None = None,
        limits: CellLimits | None = None,
    ) -> SessionCluster:
        """Connect to the Ray cluster at ``address`` (``None``: start or join a local one, as
        ``ray.init`` does; an already initialized Ray is used as it is) and make sure ``hosts``
        session-host actors run, spread over the cluster's nodes. Each host builds its own store
        from ``store``'s description (a ``SqliteStore`` path or a ``PostgresStore`` DSN, with
        its ``lease_seconds``)."""
        import ray

        if hosts < 1:
            raise ValueError("a cluster needs at least one host")
        spec = StoreSpec.of(store)
        started_ray = False
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
            started_ray = True
        names = [f"codemode-host-{spec.label()}-{i}" for i in range(hosts)]
        cluster = cls(spec, names, limits, started_ray=started_ray, _token=_CONSTRUCT)
        # Host i is placed on node i (round robin over the live nodes, sorted by id).
        nodes = sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))  # type: ignore[no-untyped-call]
        for i, name in enumerate(names):
            try:
                ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:
                cluster._create_host(name, nodes[i % len(nodes)] if nodes else None)
                cluster._started_hosts.append(name)
        await asyncio.gather(*(cluster._handle(n).ping.remote() for n in names))
        logger.info(
            "cluster of %d hosts ready (%d started here)", hosts, len(cluster._started_hosts)
        )
        return cluster

    def _create_host(self, name: str, node_id: str | None) -> None:
        """Create the host actor ``name``: on ``node_id`` (a hard placement: Ray's soft one
        may put two hosts on one node), or anywhere (``SPREAD``). A host whose node dies cannot
        be restarted there: Ray marks it dead and the cluster makes it again elsewhere
        (:meth:`_revive`); a host that dies on a live node is restarted by Ray."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from .host import SessionHost

        strategy: Any = "SPREAD"
        if node_id is not None:
            strategy = NodeAffinitySchedulingStrategy(node_id, soft=False)
        ray.remote(SessionHost).options(
            name=name,
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1,
            max_task_retries=0,
            num_cpus=0,
            scheduling_strategy=strategy,
        ).remote(name, self._spec, self._limits, orphan_grace())

    def _revive(self, name: str) -> None:
        """Make the host ``name`` again if Ray gave it up (its node died)."""
        import ray

        self._handles.pop(name, None)
        try:
            ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            logger.warning("host %s is gone; starting it again", name)
            self._create_host(name, None)

    def _handle(self, name: str) -> Any:
        handle = self._handles.get(name)
        if handle is None:
            import ray

            handle = ray.get_actor(name, namespace=NAMESPACE)
            self._handles[name] = handle
        return handle

    async def session(self, delegate: SessionDelegate, *, session_id: str | None = None) -> Any:
        """Open (or, with ``session_id``, reopen) a session on a host chosen by load; the
        delegate runs in this process. Returns a :class:`~codemode.cluster.ClusterSession`."""
        return await self.open_session(delegate, session_id=session_id)

    async def open_session(
        self,
        delegate: SessionDelegate,
        *,
        session_id: str | None = None,
        limits: CellLimits | None = None,
    ) -> Any:
        """:meth:`session` with ``limits`` for a new session (default: the cluster's)."""
        from .session import _CONSTRUCT as SESSION_TOKEN
        from .session import ClusterSession

        if self._closed:
            raise RuntimeError("the cluster is closed")
        session = ClusterSession(
            self,
            delegate,
            session_id or new_cell_id(),
            limits or self._limits,
            _token=SESSION_TOKEN,
        )
        await session._open(None)
        self._sessions.add(session)
        return session

    def _forget_session(self, session: Any) -> None:
        self._sessions.discard(session)

    async def _probe(self, name: str, session_id: str) -> tuple[bool, int, int] | None:
        import ray.exceptions

        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                result: tuple[bool, int, int] = await self._handle(name).load.remote(session_id)
                return result
        except (ray.exceptions.ActorDiedError, ValueError) as exc:
            logger.debug("host %s is dead: %s", name, exc)
            self._revive(name)
            return None
        except ray.exceptions.ActorUnschedulableError as exc:
            # Pinned to a node that died: give it up, so that it is made again elsewhere.
            logger.warning("host %s cannot be scheduled (%s); starting it again", name, exc)
            with contextlib.suppress(Exception):
                ray.kill(self._handle(name), no_restart=True)
            self._revive(name)
            return None
        except Exception as exc:  # a restarting or unreachable host
            logger.debug("host %s did not answer: %s", name, exc)
            return None

    async def _candidates(self, session_id: str) -> list[tuple[str, Any]]:
        """The hosts to open ``session_id`` on, best first: the one holding it now, then the
        live hosts by fewest live cells (then fewest sessions)."""
        answers = await asyncio.gather(*(self._probe(n, session_id) for n in self._names))
        live = [(name, a) for name, a in zip(self._names, answers, strict=True) if a is not None]
        # Ties are broken at random: sessions opened at once all see the same loads, and would
        # otherwise all go to the first host.
        live.sort(key=lambda pair: (not pair[1][0], pair[1][1], pair[1][2], random.random()))
        return [(name, self._handle(name)) for name, _ in live]

    async def hosts(self) -> list[HostInfo]:
        """Every host of this cluster, with its node, sessions and live cells; a host that does
        not answer within a few seconds (dead, restarting) is listed with ``alive`` false."""

        async def one(name: str) -> HostInfo:
            try:
                async with asyncio.timeout(PROBE_TIMEOUT):
                    info = await self._handle(name).info.remote()
            except Exception:
                return HostInfo(name, "", 0, 0, False, name, NAMESPACE)
            return HostInfo(
                info["host_id"],
                info["node_id"],
                info["sessions"],
                info["live_cells"],
                True,
                name,
                NAMESPACE,
            )

        return list(await asyncio.gather(*(one(n) for n in self._names)))

    async def close(self) -> None:
        """Let go of the cluster: sessions opened here and still open are suspended (they stay
        in the store), host actors started here are stopped, and Ray is shut down if this call's
        ``start`` initialized it. Hosts and a Ray it found running are left running."""
        if self._closed:
            return
        self._closed = True
        for session in list(self._sessions):
            try:
                await session.suspend()
            except Exception as exc:
                logger.warning("suspending session %s: %s", session.session_id, exc)
        import ray

        for name in self._started_hosts:
            try:
                handle = self._handle(name)
                async with asyncio.timeout(30.0):
                    await handle.stop.remote()
                ray.kill(handle, no_restart=True)
            except Exception as exc:
                logger.warning("stopping host %s: %s", name, exc)
        if self._started_ray:
            ray.shutdown()

    async def __aenter__(self) -> SessionCluster:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


_CONSTRUCT = object()
