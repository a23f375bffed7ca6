"""What the framework adapters share: the session they run cells in, the delegate that routes
nested calls back to the framework's tools, and conversions (docs/integrations.md).

Every adapter is a thin layer over :class:`~codemode.tools.exec_wait.CodeModeTools`: the
framework's tools become :class:`~codemode.model.ToolDefinition` s declared to the model in the
``exec`` description, and a nested call to one runs the framework's tool through
:class:`Bridge`'s delegate. Nothing here imports a framework.

**The session.** ``session`` may be

- ``None``: a :class:`~codemode.session.SessionRuntime` owned by the adapter, created on first use
  on the running event loop and shut down by :meth:`Bridge.aclose`;
- a *factory*, a callable taking the adapter's delegate and returning a session or an awaitable of
  one (``lambda delegate: RemoteSession.spawn(delegate)``, ``lambda d: SessionRuntime(d,
  limits=...)``): called once on first use; the adapter owns the session it returns;
- a session object (``SessionRuntime`` or ``RemoteSession``): used as is, never shut down by the
  adapter; its own delegate runs the nested calls, so it must know the framework's tools (use a
  factory to have the adapter's delegate run them).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from types import TracebackType
from typing import Any, TypeAlias

from codemode.contract import DEFAULT_REJECT_REASON, Session
from codemode.errors import MissingCell
from codemode.model import (
    ApprovalRequest,
    Cell,
    CellEvent,
    CellLimits,
    Completed,
    CreateCellRequest,
    NestedToolCall,
    PausableCell,
    PausableCellEvent,
    ResumeOutcome,
    SessionDelegate,
    Terminated,
    ToolDefinition,
)
from codemode.tools.exec_wait import CodeModeTools

__all__ = ["Bridge", "NestedHandler", "SessionArgument", "jsonable", "tool_definition"]

logger = logging.getLogger("codemode.integrations")

NestedHandler: TypeAlias = Callable[[NestedToolCall], Awaitable[Any]]
"""Runs one nested call with the framework's tool; returns its JSON-able result or raises."""

SessionFactory: TypeAlias = Callable[[SessionDelegate], "Session | Awaitable[Session]"]
SessionArgument: TypeAlias = "Session | SessionFactory | None"
"""``session=`` of every adapter: ``None``, a factory taking the delegate, or a session."""


class _Delegate:
    """The adapter's :class:`~codemode.model.SessionDelegate`: nested calls go to the handler."""

    def __init__(self, handler: NestedHandler) -> None:
        self._handler = handler

    async def invoke_tool(self, call: NestedToolCall) -> Any:
        return await self._handler(call)

    async def notify(self, call_id: str, cell_id: str, text: str) -> None:
        logger.info("cell %s (call %s) notifies: %s", cell_id, call_id, text)


class _LazySession(Session):
    """A :class:`~codemode.contract.Session` that makes or borrows the real session on first
    use."""

    def __init__(
        self,
        session: SessionArgument,
        delegate: SessionDelegate,
        replaced: Callable[[], None] = lambda: None,
    ) -> None:
        self._argument = session
        self._replaced = replaced
        self._delegate = delegate
        self._session: Session | None = None
        self._owned = session is None or not hasattr(session, "create_cell")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        if not self._owned:
            self._session = session  # type: ignore[assignment]

    @property
    def limits(self) -> CellLimits:
        limits = getattr(self._session or self._argument, "limits", None)
        return limits if isinstance(limits, CellLimits) else CellLimits()

    def follow_loop(self) -> None:
        """An owned session lives on the loop that made it. Called on a new loop (``run_sync``,
        a second ``asyncio.run``), forget it: the next use starts a new session, and the old
        one's cells stop when it is collected."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._session is not None and self._owned and self._loop is not loop:
            logger.info("a new event loop: starting a new code mode session")
            self._session = None
            self._replaced()

    async def get(self) -> Session:
        self.follow_loop()
        if self._session is not None:
            return self._session
        loop = asyncio.get_running_loop()
        if self._lock is None or self._loop is not loop:
            self._lock, self._loop = asyncio.Lock(), loop
        async with self._lock:
            if self._session is None:
                if self._argument is None:
                    from codemode.session import SessionRuntime

                    self._session = SessionRuntime(self._delegate)
                else:
                    made = self._argument(self._delegate)  # type: ignore[operator]
                    if inspect.isawaitable(made):
                        made = await made
                    self._session = made
                logger.debug("code mode session started: %r", self._session)
            return self._session

    # The Session surface: each operation runs on the real session, made on first use.

    @property
    def is_alive(self) -> bool:
        """True until the session in use shuts down; with none yet, the next use makes one."""
        return self._session.is_alive if self._session is not None else True

    async def create_cell(self, request: CreateCellRequest) -> Cell:
        return await (await self.get()).create_cell(request)

    async def create_pausable_cell(self, request: CreateCellRequest) -> PausableCell:
        return await (await self.get()).create_pausable_cell(request)

    async def wait(self, cell: Cell, yield_after: float) -> CellEvent:
        return await (await self.get()).wait(cell, yield_after)

    async def wait_to_pending(self, cell: PausableCell) -> PausableCellEvent:
        return await (await self.get()).wait_to_pending(cell)

    async def resume(self, cell: PausableCell, generation: int) -> ResumeOutcome:
        return await (await self.get()).resume(cell, generation)

    async def terminate(self, cell: Cell | PausableCell | str) -> Completed | Terminated:
        return await (await self.get()).terminate(cell)

    def awaiting_approval(self, cell: Cell | PausableCell | str) -> tuple[ApprovalRequest, ...]:
        if self._session is None:
            raise MissingCell(cell if isinstance(cell, str) else cell.cell_id)
        return self._session.awaiting_approval(cell)

    async def approve(self, cell: Cell | PausableCell | str, call_id: str) -> None:
        await (await self.get()).approve(cell, call_id)

    async def reject(
        self,
        cell: Cell | PausableCell | str,
        call_id: str,
        reason: str = DEFAULT_REJECT_REASON,
    ) -> None:
        await (await self.get()).reject(cell, call_id, reason)

    def cell(self, cell_id: str) -> Cell:
        if self._session is None:
            raise MissingCell(cell_id)
        return self._session.cell(cell_id)

    def pausable_cell(self, cell_id: str) -> PausableCell:
        if self._session is None:
            raise MissingCell(cell_id)
        return self._session.pausable_cell(cell_id)

    async def shutdown(self) -> None:
        """Shut the session down if the adapter owns it (:meth:`aclose`)."""
        await self.aclose()

    async def __aenter__(self) -> _LazySession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is None or not self._owned:
            self._session = session
            return
        shutdown = getattr(session, "shutdown", None)
        if shutdown is None:
            return
        loop = self._loop
        if loop is None or loop is asyncio.get_running_loop():
            await shutdown()
        elif loop.is_running():  # another thread's loop (synchronous use): shut down there
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(shutdown(), loop))
        # else: made on a loop that has ended, which cannot run its shutdown any more


class Bridge:
    """One adapter's session, delegate and ``CodeModeTools`` (one per distinct tool list)."""

    def __init__(self, session: SessionArgument, handler: NestedHandler) -> None:
        self.delegate: SessionDelegate = _Delegate(handler)
        self._tools: dict[str, CodeModeTools] = {}
        # A new session forgets the old one's cells: so do the tools' retry and carry state.
        self.session = _LazySession(session, self.delegate, self._tools.clear)

    def code_mode_tools(self, tools: tuple[ToolDefinition, ...]) -> CodeModeTools:
        """The ``CodeModeTools`` for this list of nested tools (made once per distinct list and
        session, so a retried ``exec`` and the carried output of ``wait`` survive between run
        steps). Ask for it at each call rather than keeping it."""
        self.session.follow_loop()
        key = json.dumps([asdict(t) for t in tools], sort_keys=True, default=repr)
        found = self._tools.get(key)
        if found is None:
            found = CodeModeTools(self.session, tools)
            self._tools[key] = found
        return found

    async def aclose(self) -> None:
        """Shut the session down if the adapter owns it (its cells are terminated)."""
        await self.session.aclose()


def tool_definition(
    name: str,
    description: str | None,
    input_schema: dict[str, Any] | None,
    output_schema: dict[str, Any] | None = None,
) -> ToolDefinition:
    """A framework tool as a nested tool of a cell."""
    return ToolDefinition(
        name, description or "", input_schema=input_schema, output_schema=output_schema
    )


def jsonable(value: Any) -> Any:
    """A framework tool's return value as JSON for the cell: pydantic models, dataclasses and
    other Python values are converted as pydantic does; what it cannot convert becomes its
    ``str``."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    from pydantic_core import to_jsonable_python

    return to_jsonable_python(value, fallback=str)
