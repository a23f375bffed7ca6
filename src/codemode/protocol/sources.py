"""Where ``codemode serve`` gets its sessions when they do not run in its own process.

By default every ``session/open`` creates an in-process
:class:`~codemode.session.SessionRuntime`. A :class:`SessionSource` replaces that: the server
starts it once, asks it for one session per ``session/open`` (giving it the delegate that
forwards nested calls to the client) and closes it when the server stops. ``codemode serve
--cluster`` uses one that opens sessions on a Ray cluster
(:mod:`codemode.protocol.cluster_source`, docs/scaling.md). Everything else the server does (the
observation records, caps, the connection's end) is the same for every source.
"""

from __future__ import annotations

from typing import Protocol

from codemode.contract import Session
from codemode.model import CellLimits, Completed, Pending, SessionDelegate, Terminated, Yielded
from codemode.session import new_cell_id
from codemode.store.base import SessionStore

__all__ = ["ServedRuntime", "SessionSource", "new_session_id"]


def new_session_id() -> str:
    """A fresh session id: 16 characters in the alphabet of cell ids (80 random bits)."""
    return new_cell_id()


class ServedRuntime(Session, Protocol):
    """A session as the protocol server drives it: the whole :class:`Session` contract, plus
    its limits and a liveness check that never raises."""

    @property
    def limits(self) -> CellLimits:
        """The limits applied to every cell of this session."""
        ...

    def is_live(self, cell_id: str) -> bool:
        """Whether ``cell_id`` names a live cell of this session, of either kind."""
        ...

    async def suspend(self) -> None:
        """Stop here without ending anything (a durable session: its cells are recovered by the
        next open); a session that cannot be suspended raises ``RuntimeError``."""
        ...

    async def observe_numbered(
        self, cell_id: str, yield_after: float | None, seen: int | None = None
    ) -> tuple[Yielded | Completed | Terminated | Pending, int | None]:
        """An observation whose client numbers what it receives (docs/protocol.md,
        "Re-delivery"): ``wait`` for ``yield_after`` seconds (``None``: ``wait_to_pending``),
        with the event's delivery number (``None`` when the session does not number them). With
        ``seen`` one less than the number of events delivered, the last one is given again. A
        completion's closing waits for :meth:`acknowledge` (SessionRuntime.observe_numbered)."""
        ...

    def acknowledge(self, cell_id: str) -> None:
        """The client released the cell's terminal outcome: a completion's closing held by
        :meth:`observe_numbered` is recorded now (idempotent; never raises)."""
        ...

    def delivered_completion(self, cell_id: str) -> bool:
        """Whether ``cell_id`` closed with a delivered completion not acknowledged yet (which
        :meth:`observe_numbered` can give again)."""
        ...


class SessionSource(Protocol):
    """Opens the sessions of a protocol server (see the module docstring)."""

    @property
    def description(self) -> str:
        """What the server logs once the source started (where its sessions run)."""
        ...

    @property
    def store(self) -> SessionStore | None:
        """The store the source's sessions live in, or ``None``. With a store the server
        suspends a session whose connection ends and ``session/open`` with a ``sessionId``
        reopens it (docs/protocol.md, durable sessions); it reads the live cells' records there."""
        ...

    async def start(self) -> None:
        """Get ready to open sessions; an exception says why the server cannot start."""
        ...

    async def open_session(
        self, delegate: SessionDelegate, limits: CellLimits, session_id: str
    ) -> ServedRuntime:
        """Open the session ``session_id`` whose nested calls go to ``delegate``. ``limits``
        are those the client asked for (the server's ceilings when it asked for none); a
        source that cannot apply them raises ``ValueError`` saying why (the client gets
        ``-32602``)."""
        ...

    async def close(self) -> None:
        """Release what :meth:`start` took. Sessions still open were shut down before."""
        ...
