"""``Session``: the one contract every kind of code-mode session fulfils (docs/design.md).

:class:`~codemode.session.SessionRuntime` (cells in this process),
:class:`~codemode.protocol.client.RemoteSession` (cells in a ``codemode serve`` process) and the
adapters' lazy session all implement this protocol, and mypy checks each of them against it: they
inherit from it explicitly. The fronts (:class:`~codemode.tools.CodeModeTools`, the integrations)
take a ``Session``, so a new kind of session works with every front once it fits here.

This module is plain typing over :mod:`codemode.model`: importing it loads no engine, no asyncio
server and no websockets.
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, Self

from codemode.model import (
    ApprovalRequest,
    Cell,
    CellEvent,
    Completed,
    CreateCellRequest,
    PausableCell,
    PausableCellEvent,
    ResumeOutcome,
    Terminated,
)

__all__ = ["DEFAULT_REJECT_REASON", "Session"]

DEFAULT_REJECT_REASON = "the host rejected this call"
"""The reason :meth:`Session.reject` gives a held call when the host names none."""


class Session(Protocol):
    """A code-mode session: its cells, their observation, termination and approvals.

    Every operation raises the :class:`~codemode.errors.CodeModeError` subclasses documented in
    ``docs/`` (``ShuttingDown``, ``MissingCell``, ``ForeignHandle``, ``WrongCellKind``,
    ``BusyObserver``, ...); a handle is bound to the session that created it. All methods must be
    called from the event loop the session lives on.
    """

    @property
    def is_alive(self) -> bool:
        """False once shutdown began (or, for a remote session, the connection was lost)."""
        ...

    async def create_cell(self, request: CreateCellRequest) -> Cell:
        """Admit a continuing cell (idempotent by ``request.idempotency_key``) and return its
        handle without waiting for it to run."""
        ...

    async def create_pausable_cell(self, request: CreateCellRequest) -> PausableCell:
        """Admit a pausable cell; it runs to its first frontier and pauses there."""
        ...

    async def wait(self, cell: Cell, yield_after: float) -> CellEvent:
        """Observe a continuing cell for up to ``yield_after`` seconds: ``Yielded`` (the cell
        keeps running), ``Completed`` or ``Terminated``, with the output since the last event."""
        ...

    async def wait_to_pending(self, cell: PausableCell) -> PausableCellEvent:
        """The current frontier of a pausable cell (repeatably), or wait for the next one."""
        ...

    async def resume(self, cell: PausableCell, generation: int) -> ResumeOutcome:
        """Continue a pausable cell past frontier ``generation``; retry-safe."""
        ...

    async def terminate(self, cell: Cell | PausableCell | str) -> Completed | Terminated:
        """Stop a cell of either kind and return its final event."""
        ...

    async def shutdown(self) -> None:
        """Terminate every cell and release the session. Idempotent."""
        ...

    def cell(self, cell_id: str) -> Cell:
        """A handle on the live continuing cell ``cell_id``: ``MissingCell`` for an unknown or
        closed cell, ``WrongCellKind`` for a pausable one."""
        ...

    def pausable_cell(self, cell_id: str) -> PausableCell:
        """A handle on the live pausable cell ``cell_id`` (see :meth:`cell`)."""
        ...

    def awaiting_approval(self, cell: Cell | PausableCell | str) -> tuple[ApprovalRequest, ...]:
        """The calls of ``cell`` held for the host's approval, sorted by call id
        (docs/approvals.md)."""
        ...

    async def approve(self, cell: Cell | PausableCell | str, call_id: str) -> None:
        """Let the held call ``call_id`` reach the delegate; ``NotAwaitingApproval`` when it is
        not held."""
        ...

    async def reject(
        self,
        cell: Cell | PausableCell | str,
        call_id: str,
        reason: str = DEFAULT_REJECT_REASON,
    ) -> None:
        """Reject the held call ``call_id``: its promise in the cell rejects with ``reason``."""
        ...

    async def __aenter__(self) -> Self:
        """``async with session:`` shuts the session down on exit."""
        ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
