"""Cancelling an MCP ``exec`` terminates its cell (issue 12 point 1).

MCP says a receiver of ``notifications/cancelled`` should stop the work. The client of a cancelled
``exec`` never learned the cell id, so nobody could observe or stop that cell: ``codemode mcp``
terminates it (its stored writes are discarded, its calls in flight cancelled, as for any
termination) and refuses every nested call it still makes, even one racing the termination.

:class:`ExecCells` is the session as :class:`~codemode.tools.CodeModeTools` sees it: it forwards
everything to the :class:`~codemode.session.SessionRuntime` and remembers, per ``exec`` call id,
the creation of its cell (which finishes even when the caller is cancelled, since every ``exec``
of ``codemode mcp`` is keyed).
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Any, Self

from codemode.contract import DEFAULT_REJECT_REASON, Session
from codemode.errors import CodeModeError
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
from codemode.session import SessionRuntime

__all__ = ["CancelledExecError", "ExecCells"]

logger = logging.getLogger("codemode.mcp")


class CancelledExecError(Exception):
    """A nested call of a cell whose ``exec`` the client cancelled (the cell is being
    terminated); the call never reaches an upstream server."""


class ExecCells(Session):
    """A :class:`SessionRuntime` that can terminate the cell of a cancelled ``exec``."""

    def __init__(self, runtime: SessionRuntime) -> None:
        self._runtime = runtime
        self._loop = asyncio.get_running_loop()
        self._creations: dict[str, asyncio.Task[Cell]] = {}
        self._deciding: set[asyncio.Future[None]] = set()
        self._refused: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ the session protocol

    @property
    def limits(self) -> Any:
        """The session's per-cell limits (``exec``'s description states them)."""
        return self._runtime.limits

    async def create_cell(self, request: CreateCellRequest) -> Cell:
        """Create as the runtime does; the creation is remembered under the request's
        ``tool_call_id`` (and finishes even if the caller is cancelled)."""
        task = self._loop.create_task(self._runtime.create_cell(request))
        if request.tool_call_id:
            self._creations[request.tool_call_id] = task
        return await asyncio.shield(task)

    @property
    def language(self) -> str:
        """The language of the runtime's cells."""
        return self._runtime.language

    @property
    def is_alive(self) -> bool:
        return self._runtime.is_alive

    async def create_pausable_cell(self, request: CreateCellRequest) -> PausableCell:
        return await self._runtime.create_pausable_cell(request)

    async def wait(self, cell: Cell, yield_after: float) -> CellEvent:
        return await self._runtime.wait(cell, yield_after)

    async def wait_to_pending(self, cell: PausableCell) -> PausableCellEvent:
        return await self._runtime.wait_to_pending(cell)

    async def resume(self, cell: PausableCell, generation: int) -> ResumeOutcome:
        return await self._runtime.resume(cell, generation)

    async def terminate(self, cell: Cell | PausableCell | str) -> Completed | Terminated:
        return await self._runtime.terminate(cell)

    async def shutdown(self) -> None:
        await self._runtime.shutdown()

    def cell(self, cell_id: str) -> Cell:
        return self._runtime.cell(cell_id)

    def pausable_cell(self, cell_id: str) -> PausableCell:
        return self._runtime.pausable_cell(cell_id)

    def awaiting_approval(self, cell: Cell | PausableCell | str) -> tuple[ApprovalRequest, ...]:
        return self._runtime.awaiting_approval(cell)

    async def approve(self, cell: Cell | PausableCell | str, call_id: str) -> None:
        await self._runtime.approve(cell, call_id)

    async def reject(
        self,
        cell: Cell | PausableCell | str,
        call_id: str,
        reason: str = DEFAULT_REJECT_REASON,
    ) -> None:
        await self._runtime.reject(cell, call_id, reason)

    async def __aenter__(self) -> Self:
        await self._runtime.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._runtime.__aexit__(exc_type, exc, tb)

    # ------------------------------------------------------------------ exec calls

    def finished(self, call_id: str) -> None:
        """The ``exec`` of ``call_id`` returned: forget its creation."""
        self._creations.pop(call_id, None)

    def cancelled(self, call_id: str) -> None:
        """The ``exec`` of ``call_id`` was cancelled: terminate its cell (in the background)."""
        creation = self._creations.pop(call_id, None)
        if creation is None:
            return  # no cell was asked for (e.g. a bad pragma)
        decided: asyncio.Future[None] = self._loop.create_future()
        self._deciding.add(decided)
        task = self._loop.create_task(self._stop(call_id, creation, decided))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stop(
        self, call_id: str, creation: asyncio.Task[Cell], decided: asyncio.Future[None]
    ) -> None:
        cell: Cell | None = None
        try:
            try:
                cell = await creation
            except (Exception, asyncio.CancelledError):
                cell = None  # nothing was admitted
            if cell is not None:
                self._refused.add(cell.cell_id)
        finally:
            self._deciding.discard(decided)
            decided.set_result(None)
        if cell is None:
            return
        logger.info("exec call %s was cancelled: terminating cell %s", call_id, cell.cell_id)
        try:
            await self._runtime.terminate(cell)
        except CodeModeError as error:  # it had already ended, or is being terminated
            logger.debug("cell %s of cancelled exec %s: %s", cell.cell_id, call_id, error)
        finally:
            self._refused.discard(cell.cell_id)

    async def check_call(self, cell_id: str) -> None:
        """Raise :class:`CancelledExecError` when ``cell_id`` belongs to a cancelled ``exec``.
        A cell calling a tool is admitted, so the cancellations still deciding end soon."""
        while self._deciding:
            await asyncio.wait(set(self._deciding))
        if cell_id in self._refused:
            raise CancelledExecError(
                f"cell {cell_id} is being terminated: the client cancelled its exec"
            )

    async def aclose(self) -> None:
        """Wait for the terminations under way (the runtime's shutdown ends them anyway)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5.0)
