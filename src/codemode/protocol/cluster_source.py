"""``codemode serve --cluster ADDRESS``: the protocol server as a front door to a Ray cluster.

Each ``session/open`` opens a :class:`~codemode.cluster.ClusterSession` through one
:class:`~codemode.cluster.SessionCluster` that the server starts with it (``--hosts`` session
hosts, ``--store`` the store the hosts share). The cells run on the cluster's hosts; their nested
calls come back to this process (the session's delegate runs where the session was opened) and
from here to the client as ``tool/invoke``, exactly as for in-process sessions. So a client in any
language reaches cluster sessions with the protocol it already speaks (docs/scaling.md).

A ``session/open`` may ask for limits up to the server's ceilings (the limit flags), as with
in-process sessions; the host applies them. The sessions live in the store (:attr:`store`), so
the server serves them as ``serve --store`` serves its durable sessions: a connection that ends
suspends its sessions, and ``session/open`` with a ``sessionId`` reopens one (from another
connection, or another server process on the same cluster and store). Stopping the server
suspends its connections' sessions, then leaves the cluster (its host actors keep running for
other front doors; ``SessionCluster.close`` stops nothing it did not start).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from codemode.cli_common import open_store
from codemode.model import CellLimits, SessionDelegate
from codemode.store.base import SessionStore

if TYPE_CHECKING:
    from codemode.cluster import SessionCluster
    from codemode.protocol.sources import ServedRuntime

__all__ = ["ClusterSource", "add_cluster_flags", "open_store", "source_from_args"]

DEFAULT_HOSTS = 2


class ClusterSource:
    """A :class:`~codemode.protocol.sources.SessionSource` opening sessions on a Ray cluster."""

    def __init__(
        self,
        address: str,
        store: SessionStore,
        *,
        hosts: int = DEFAULT_HOSTS,
        limits: CellLimits | None = None,
    ) -> None:
        if hosts < 1:
            raise ValueError("--hosts must be at least 1")
        self.address = address
        self.store = store
        self.hosts = hosts
        self.limits = limits or CellLimits()
        self._cluster: SessionCluster | None = None

    @property
    def description(self) -> str:
        return f"the Ray cluster at {self.address} ({self.hosts} session hosts)"

    async def start(self) -> None:
        """Connect to the cluster and make sure its session hosts run."""
        try:
            from codemode.cluster import SessionCluster
        except ImportError as exc:  # the ray extra is missing
            raise RuntimeError(
                f"--cluster needs Ray: pip install 'codemode[ray]' ({exc})"
            ) from None
        self._cluster = await SessionCluster.start(
            store=self.store, hosts=self.hosts, address=self.address, limits=self.limits
        )

    async def open_session(
        self, delegate: SessionDelegate, limits: CellLimits, session_id: str
    ) -> ServedRuntime:
        if self._cluster is None:
            raise RuntimeError("the cluster source was not started")
        session: ServedRuntime = await self._cluster.open_session(
            delegate, session_id=session_id, limits=limits
        )
        return session

    async def close(self) -> None:
        cluster, self._cluster = self._cluster, None
        try:
            if cluster is not None:
                await cluster.close()
        finally:
            await self.store.close()


def add_cluster_flags(parser: argparse.ArgumentParser) -> None:
    """``--cluster``, ``--hosts`` and (unless another flag group already defines it) ``--store``
    of ``codemode serve``."""
    group = parser.add_argument_group("sessions on a Ray cluster (docs/scaling.md)")
    group.add_argument(
        "--cluster",
        metavar="ADDRESS",
        help="open every session on the Ray cluster at ADDRESS (HOST:PORT of its head, or "
        "'auto'); needs --store, shared by the cluster's session hosts",
    )
    group.add_argument(
        "--hosts",
        type=int,
        default=DEFAULT_HOSTS,
        metavar="N",
        help=f"with --cluster: session-host actors to keep running (default {DEFAULT_HOSTS})",
    )
    if "--store" not in parser._option_string_actions:
        group.add_argument(
            "--store",
            metavar="PATH_OR_DSN",
            help="with --cluster: the store the session hosts share: a PostgreSQL DSN "
            "(postgresql://...) or, on one machine, a SQLite file",
        )


def source_from_args(args: argparse.Namespace, limits: CellLimits) -> ClusterSource | None:
    """The cluster source named by ``--cluster`` (None without it); ``ValueError`` for a usage
    error."""
    if getattr(args, "cluster", None) is None:
        return None
    if not args.store:
        raise ValueError("--cluster needs --store PATH_OR_DSN (the store the hosts share)")
    lease_seconds = float(getattr(args, "lease_seconds", None) or 10.0)
    store = open_store(args.store, lease_seconds=lease_seconds)
    return ClusterSource(args.cluster, store, hosts=args.hosts, limits=limits)
