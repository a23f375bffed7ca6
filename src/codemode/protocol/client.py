"""``RemoteSession``: a code-mode session served by ``codemode serve`` (docs/protocol.md).

It has the methods, semantics and errors of :class:`~codemode.session.SessionRuntime`; the cells
run in the server process, the delegate's tools run here. A thin adapter: the server's runtime
applies every rule of sessions and cells; this side adds only what the wire needs:

- **Handles** are minted here and bound to this object (another session's handle raises
  ``ForeignHandle``). ``cell()`` / ``pausable_cell()`` answer from this client's record of the
  cells it created (it is the session's only client); a cell leaves the record when its terminal
  event is delivered, its termination returns, or the server reports it missing.
- **Observations** are numbered per cell from 0 (docs/protocol.md). A second concurrent ``wait`` /
  ``wait_to_pending`` of a cell raises ``BusyObserver`` here; one while this client terminates the
  cell raises ``ClosedCell``. After each terminal event (and each error outcome) the client sends
  ``observation/release`` in the background; failures are logged.
- **Cancellation.** When the caller of ``wait`` / ``wait_to_pending`` is cancelled the client sends
  ``$/cancelRequest`` and keeps listening: an event the server had already sent is returned by the
  cell's next observation, so no output is lost. A cancelled ``create_cell`` also sends
  ``$/cancelRequest``; if the server had admitted the cell anyway, a keyed cell is kept (a retry
  finds it) and an unkeyed one is terminated, as in-process (docs/sessions.md). ``resume`` and
  ``terminate`` run to completion on the server whatever happens to their caller.
- **Errors** of the server's runtime are rebuilt as the same class with the same fields; a
  standard JSON-RPC error (or a malformed answer) raises ``ProtocolError``.
- **Connection loss** (the server died, the socket closed): ``is_alive`` turns false, pending and
  later calls raise ``SessionLost`` naming the cause, the delegate's running calls are cancelled,
  and a spawned server is reaped.
- ``shutdown`` shuts the server session down, lets answers already on their way arrive (bounded),
  closes the connection and, for a spawned server, waits for it to exit after closing its stdin
  (killing it after :data:`CHILD_EXIT_GRACE` seconds). Afterwards creates raise ``ShuttingDown``
  and cell operations ``MissingCell``, as in-process.

The delegate's tool calls run as tasks of this event loop; all methods must be called from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
from collections import OrderedDict
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Final

from codemode import tracing
from codemode.cell.delegate import call_delegate
from codemode.cell.machine import Phase, call_number, check_refused
from codemode.cell.observers import refuse_second_observer
from codemode.contract import Session
from codemode.errors import (
    BusyObserver,
    CodeModeError,
    MissingCell,
    NotAwaitingApproval,
    ObservationConflict,
    ProtocolError,
    SessionLost,
    ShuttingDown,
    UnknownSession,
)
from codemode.model import (
    ApprovalRequest,
    Cell,
    CellEvent,
    CellKind,
    CellLimits,
    Completed,
    CreateCellRequest,
    NestedToolCall,
    OutputItem,
    PausableCell,
    PausableCellEvent,
    Pending,
    ResumeOutcome,
    SessionDelegate,
    Terminated,
    ToolDefinition,
    ToolKind,
    Yielded,
)
from codemode.protocol.codec import (
    CODEMODE_ERROR,
    approvals_from_wire,
    error_from_wire,
    event_from_wire,
    limits_from_wire,
    limits_to_wire,
    tool_from_wire,
    tool_ref_to_wire,
    tool_to_wire,
)
from codemode.protocol.messages import (
    CLIENT_METHODS,
    INVALID_PARAMS,
    MAX_FRAME_BYTES,
    MAX_YIELD_AFTER_MS,
    METHOD_NOT_FOUND,
    METHODS,
    PROTOCOL_VERSION,
    REQUEST_CANCELLED,
    TOOL_ERROR,
    codemode_version,
)
from codemode.protocol.rpc import (
    ConnectionLost,
    Endpoint,
    IncomingRequest,
    OutgoingRequest,
    PreEncoded,
    RpcError,
    encode,
)
from codemode.protocol.transport import LineTransport, Transport, WebSocketTransport
from codemode.registry import CellRegistry

__all__ = ["CHILD_EXIT_GRACE", "HANDSHAKE_TIMEOUT", "RemoteSession"]

logger = logging.getLogger("codemode.protocol.client")

CHILD_EXIT_GRACE: Final = 5.0
"""Seconds a spawned server has to exit after its stdin closes before it is killed."""
SHUTDOWN_TIMEOUT: Final = 30.0
"""The longest ``shutdown`` waits for the server to shut the session down."""
IN_FLIGHT_GRACE: Final = 5.0
"""The longest ``shutdown`` waits for answers already on their way before closing."""
HANDSHAKE_TIMEOUT: Final = 60.0
"""The longest ``spawn`` / ``connect`` wait for ``initialize`` and ``session/open`` answers."""
_KNOWN_TOOLS: Final = 4096
_DELIVERIES_KEPT: Final = 65536
_CLOSED: Final = -1

# Re-delivery (docs/protocol.md): per (session id, cell id), the delivery number of the last
# event this process received from a durable server, or _CLOSED once the cell's terminal
# outcome arrived. It lives in the process, not in one RemoteSession, so that a RemoteSession
# reattached with ``connect(..., session_id=)`` / ``spawn(..., session_id=)`` after a lost
# connection sends it; a new process has none (docs/cluster.md, "Limits of the guarantee").
_deliveries: OrderedDict[tuple[str, str], int] = OrderedDict()


def _remember_delivery(session_id: str, cell_id: str, number: int) -> None:
    key = (session_id, cell_id)
    _deliveries[key] = number
    _deliveries.move_to_end(key)
    while len(_deliveries) > _DELIVERIES_KEPT:
        _deliveries.popitem(last=False)


AnyEvent = Yielded | Completed | Terminated | Pending


class _ObservationCancelled(Exception):
    """The server answered an observation with -32800: nothing was delivered."""


@dataclass(eq=False)
class _Observation:
    """One ``cell/wait`` or ``cell/waitToPending`` request, which may outlive its caller."""

    generation: int
    task: asyncio.Task[AnyEvent] | None = None
    request_id: int | str | None = None
    cancel_wanted: bool = False
    cancel_sent: bool = False


@dataclass(eq=False)
class _CellRecord:
    cell_id: str
    kind: CellKind
    tools: tuple[ToolDefinition, ...]
    next_observation: int = 0
    observation: _Observation | None = None  # the outstanding one, if any
    observer_waiting: bool = False
    terminating: bool = False
    # The cell's held calls as of its latest event or approval request (see awaiting_approval).
    held: dict[str, ApprovalRequest] = field(default_factory=dict)
    held_frontier: int = 0  # the frontier generation the held calls were last taken from
    # The delivery number of the last event received (durable servers; None: unknown).
    delivered: int | None = 0


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


class RemoteSession(Session):
    """A session on a ``codemode serve`` process (``spawn``) or WebSocket server (``connect``),
    with the methods, semantics and errors of ``SessionRuntime`` (docs/sessions.md).

    Create it with :meth:`spawn` or :meth:`connect`; use it as ``async with`` or call
    :meth:`shutdown`.
    """

    def __init__(
        self, delegate: SessionDelegate, limits: CellLimits | None, name: str, *, _token: object
    ) -> None:
        if _token is not _CONSTRUCT:
            raise TypeError("use RemoteSession.spawn(...) or RemoteSession.connect(...)")
        self._delegate = delegate
        self._requested_limits = limits
        self._limits = limits or CellLimits()
        self._name = name
        self._endpoint: Endpoint | None = None
        self._reader: asyncio.Task[None] | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self._session_id = ""
        self._requested_session_id: str | None = None  # reattach to this durable session
        self._durable = False
        self._suspending = False
        self._open_answered = asyncio.Event()  # session/open answered, its cells recorded
        self._server_info: dict[str, Any] = {}
        # This client's record of its cells; owns the identity its handles are bound to.
        self._cells: CellRegistry[_CellRecord] = CellRegistry()
        self._owner = self._cells.owner
        # Ids of cells this client saw close (so a keyed retry naming one stays closed here).
        self._closed_ids: OrderedDict[str, None] = OrderedDict()
        self._known_tools: OrderedDict[tuple[str, str | None, str], ToolDefinition] = OrderedDict()
        self._alive = False
        self._shutdown_began = False
        self._shutdown_task: asyncio.Task[None] | None = None
        self._lost_reason: str | None = None
        self._lost = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    # ------------------------------------------------------------------ construction

    @classmethod
    async def spawn(
        cls,
        delegate: SessionDelegate,
        *,
        limits: CellLimits | None = None,
        command: Sequence[str] | None = None,
        store: str | os.PathLike[str] | None = None,
        session_id: str | None = None,
    ) -> RemoteSession:
        """Start ``command`` (default: this interpreter with ``-m codemode serve``) as a child on
        pipes, log its stderr, and open one session on it with ``limits`` (default: the server's).

        With ``store`` (a SQLite file, or a PostgreSQL DSN such as ``postgresql://...``),
        ``--store PATH_OR_DSN`` is appended to the command: the session
        is durable (docs/durability.md, "Fronts"). With ``session_id`` too, the session of that
        id in the store is reattached (its live cells recovered; see :meth:`connect`), or
        created with that id. ``session_id`` without ``store`` asks the server for a session it
        cannot have: ``UnknownSession``.

        Raises ``OSError`` if the command cannot start, ``SessionLost`` if the server ends during
        the handshake, ``ProtocolError`` if it refuses the handshake or the limits or does not
        answer within :data:`HANDSHAKE_TIMEOUT` seconds (the child is then reaped), and the
        server's ``SessionBusy`` or ``StoreError`` if the durable session cannot be opened.
        """
        argv = list(command) if command is not None else [sys.executable, "-m", "codemode", "serve"]
        if store is not None:
            argv += ["--store", os.fspath(store)]
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=MAX_FRAME_BYTES,
        )
        name = f"codemode serve [pid {process.pid}]"
        session = cls(delegate, limits, name, _token=_CONSTRUCT)
        session._requested_session_id = session_id
        session._process = process
        assert process.stdout is not None and process.stdin is not None
        assert process.stderr is not None
        session._stderr_task = asyncio.ensure_future(session._log_stderr(process.stderr))
        try:
            await session._start(LineTransport(process.stdout, process.stdin, name))
        except BaseException:
            await asyncio.shield(session._abort())
            raise
        return session

    @classmethod
    async def connect(
        cls,
        url: str,
        delegate: SessionDelegate,
        *,
        limits: CellLimits | None = None,
        token: str | None = None,
        session_id: str | None = None,
    ) -> RemoteSession:
        """Connect to ``codemode serve --listen`` at ``url`` (``ws://HOST:PORT/``), sending
        ``token`` as ``Authorization: Bearer {token}``, and open one session.

        With ``session_id``, on a server with a store (``serve --store PATH``), reattach to
        that durable session (after a restart of the server, or once the connection that held
        it is gone), or create it with that id. The session's live cells are recovered and known
        to this client: ``cell()`` / ``pausable_cell()`` give their handles, and their nested
        calls reach ``delegate`` with the tool definitions the cells were created with.

        Raises ``OSError`` if the server cannot be reached, ``ProtocolError`` if the WebSocket
        handshake is refused (e.g. HTTP 401 for a wrong token) or the protocol handshake fails
        or takes longer than :data:`HANDSHAKE_TIMEOUT` seconds; for ``session_id``, the
        server's ``SessionBusy`` (another connection or process holds the session),
        ``StoreError`` or ``UnknownSession`` (the server has no store).
        """
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

        headers = {"Authorization": f"Bearer {token}"} if token is not None else None
        try:
            websocket = await connect(
                url,
                additional_headers=headers,
                max_size=MAX_FRAME_BYTES,
                compression=None,
                open_timeout=30,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise ProtocolError(
                f"the server at {url} refused the connection: HTTP {status}"
            ) from None
        except (InvalidHandshake, InvalidURI) as exc:
            raise ProtocolError(f"cannot open a WebSocket to {url}: {exc}") from None
        name = f"ws {url}"
        session = cls(delegate, limits, name, _token=_CONSTRUCT)
        session._requested_session_id = session_id
        try:
            await session._start(WebSocketTransport(websocket, name))
        except BaseException:
            await asyncio.shield(session._abort())
            raise
        return session

    async def _start(self, transport: Transport) -> None:
        self._endpoint = Endpoint(transport, self, name=self._name)
        self._alive = True
        self._reader = asyncio.ensure_future(self._read())
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                await self._handshake()
        except TimeoutError:
            raise ProtocolError(
                f"{self._name} did not complete the handshake within {HANDSHAKE_TIMEOUT:g} s"
            ) from None

    async def _handshake(self) -> None:
        init = await self._call(
            "initialize",
            {
                "protocolVersion": PROTOCOL_VERSION,
                "clientInfo": {"name": "codemode-python", "version": codemode_version()},
                # It numbers its deliveries (docs/protocol.md, Re-delivery).
                "capabilities": {"notify": True, "redelivery": True},
            },
        )
        self._server_info = dict(init.get("serverInfo", {}))
        ceilings = limits_from_wire(init["capabilities"]["limits"])
        params: dict[str, Any] = {}
        if self._requested_limits is not None:
            params["limits"] = limits_to_wire(self._requested_limits)
        if self._requested_session_id is not None:
            params["sessionId"] = self._requested_session_id
        opened = await self._call("session/open", params)
        self._session_id = opened["sessionId"]
        self._durable = bool(opened.get("durable", False))
        if "limits" in opened:  # a durable session's own (a reattached one keeps its limits)
            self._limits = limits_from_wire(opened["limits"])
        else:
            self._limits = self._requested_limits or ceilings
        for cell in opened.get("cells", ()):
            # A reattached durable session's live cells, with the tools they were created with.
            tools = tuple(tool_from_wire(t) for t in cell.get("tools", ()))
            cell_id = cell["cellId"]
            known = _deliveries.get((self._session_id, cell_id))
            if known == _CLOSED:
                # Its terminal outcome reached this process before the connection was lost,
                # the release perhaps not: release it again (the server records the closing).
                params = {"sessionId": self._session_id, "cellId": cell_id, "observation": 0}
                assert self._endpoint is not None
                self._endpoint.background(self._release_quietly(params))
                continue
            if known is None and cell.get("completed") is True:
                continue  # closed; without this process's numbers its completion is not ours
            self._admitted(cell_id, CellKind(cell["kind"]), tools)
            record = self._cells.get(cell_id)
            if record is not None:
                record.delivered = known  # None in a new process: nothing to send
        self._open_answered.set()
        logger.info(
            "%s: session %s opened%s",
            self._name,
            self._session_id,
            " (durable)" if self._durable else "",
        )

    async def _abort(self) -> None:
        """A failed start: close everything without a session/shutdown."""
        self._shutdown_began = True
        self._alive = False
        if self._endpoint is not None:
            await self._endpoint.close()
        await self._reap()
        if self._reader is not None:
            await asyncio.wait({self._reader}, timeout=CHILD_EXIT_GRACE)

    # ------------------------------------------------------------------ properties

    @property
    def is_alive(self) -> bool:
        """False once ``shutdown`` began or the connection to the server was lost."""
        return self._alive

    @property
    def limits(self) -> CellLimits:
        """The limits applied to every cell of this session (the requested ones, or the
        server's defaults)."""
        return self._limits

    @property
    def session_id(self) -> str:
        """The server's id of this session (of a durable one: the id to reattach with)."""
        return self._session_id

    @property
    def is_durable(self) -> bool:
        """Whether the session lives in the server's store (``serve --store``)."""
        return self._durable

    @property
    def server_info(self) -> dict[str, Any]:
        """The ``serverInfo`` of the ``initialize`` result."""
        return dict(self._server_info)

    @property
    def server_pid(self) -> int | None:
        """The process id of a spawned server (``None`` for ``connect``)."""
        return None if self._process is None else self._process.pid

    # ------------------------------------------------------------------ calls

    def _lost_error(self) -> SessionLost:
        return SessionLost(self._lost_reason or "the connection to the server ended")

    def _rebuild(self, exc: RpcError) -> CodeModeError:
        if exc.code == CODEMODE_ERROR:
            return error_from_wire(exc.message, exc.data)
        return ProtocolError(exc.message, exc.code)

    def _checked(self, method: str, result: Any) -> Any:
        expected = METHODS[method].result
        problem = None if expected is None else expected.check(result, "result")
        if problem is not None:
            raise ProtocolError(f"malformed {method} result from the server: {problem}")
        return result

    async def _call(self, method: str, params: dict[str, Any], *, cancel: bool = True) -> Any:
        """One request; server errors rebuilt, a lost connection raised as ``SessionLost``."""
        endpoint = self._endpoint
        if endpoint is None or self._lost_reason is not None:
            raise self._lost_error()
        try:
            result = await endpoint.request(method, params, cancel=cancel)
        except RpcError as exc:
            raise self._rebuild(exc) from None
        except ConnectionLost:
            raise self._lost_error() from None
        return self._checked(method, result)

    def _usable(self, cell_id: str | None) -> None:
        """After shutdown: creates raise ShuttingDown, cell operations MissingCell (as
        in-process); after a lost connection: SessionLost."""
        if self._shutdown_began:
            raise ShuttingDown() if cell_id is None else MissingCell(cell_id)
        if self._lost_reason is not None:
            raise self._lost_error()

    def _record(self, handle: Cell | PausableCell, expected: CellKind) -> _CellRecord:
        cell_id = self._cells.cell_id_of(handle, accept_ids=False)
        self._usable(cell_id)
        return self._cells.find_kind(cell_id, expected)

    def _lookup(self, cell_id: str, expected: CellKind) -> _CellRecord:
        return self._cells.find_kind(cell_id, expected)

    def _forget(self, cell_id: str) -> None:
        """The cell closed: drop its record, remember its id (bounded)."""
        self._cells.remove(cell_id)
        self._closed_ids[cell_id] = None
        self._closed_ids.move_to_end(cell_id)
        while len(self._closed_ids) > max(self._limits.max_idempotency_keys, 1024):
            self._closed_ids.popitem(last=False)

    def _admitted(self, cell_id: str, kind: CellKind, tools: tuple[ToolDefinition, ...]) -> None:
        """A create answered ``cell_id``: record it unless it is known to be closed (a keyed
        retry of a closed cell, docs/sessions.md rule 3)."""
        if cell_id not in self._cells and cell_id not in self._closed_ids:
            self._cells.add(_CellRecord(cell_id, kind, tools))

    # ------------------------------------------------------------------ creation

    async def create_cell(self, request: CreateCellRequest) -> Cell:
        """Admit a continuing cell on the server and return its handle (docs/sessions.md rule 1,
        6)."""
        return Cell(await self._create(request, CellKind.CONTINUING), self._owner)

    async def create_pausable_cell(self, request: CreateCellRequest) -> PausableCell:
        """Admit a pausable cell on the server and return its handle (docs/sessions.md)."""
        return PausableCell(await self._create(request, CellKind.PAUSABLE), self._owner)

    async def _create(self, request: CreateCellRequest, kind: CellKind) -> str:
        self._usable(None)
        if not isinstance(request, CreateCellRequest):
            raise TypeError(f"expected a CreateCellRequest, got {type(request).__name__}")
        tools = tuple(request.tools)
        for tool in tools:
            if not isinstance(tool, ToolDefinition):
                raise TypeError(f"tools must be ToolDefinition objects, got {type(tool).__name__}")
            self._remember_tool(tool)
        params: dict[str, Any] = {
            "sessionId": self._session_id,
            "kind": str(kind),
            "source": request.source,
            "tools": [tool_to_wire(t) for t in tools],
            "toolCallId": request.tool_call_id,
        }
        if request.idempotency_key is not None:
            params["idempotencyKey"] = request.idempotency_key
        meta = tracing.inject()  # the caller's trace context, so the cell's spans join it
        if meta is not None:
            params["_meta"] = meta
        endpoint = self._endpoint
        assert endpoint is not None
        try:
            out = await endpoint.start_request("cell/create", params)
        except ConnectionLost:
            raise self._lost_error() from None
        try:
            result = await asyncio.shield(out.future)
        except asyncio.CancelledError:
            endpoint.send_cancel(out.id)
            out.future.add_done_callback(
                lambda f: self._late_create(f, kind, tools, request.idempotency_key)
            )
            raise
        except RpcError as exc:
            raise self._rebuild(exc) from None
        except ConnectionLost:
            raise self._lost_error() from None
        cell_id: str = self._checked("cell/create", result)["cellId"]
        self._admitted(cell_id, kind, tools)
        if self._durable and (self._session_id, cell_id) not in _deliveries:
            _remember_delivery(self._session_id, cell_id, 0)  # for a reattach (Re-delivery)
        return cell_id

    def _late_create(
        self,
        future: asyncio.Future[Any],
        kind: CellKind,
        tools: tuple[ToolDefinition, ...],
        key: str | None,
    ) -> None:
        """The answer to a create whose caller was cancelled."""
        if future.cancelled() or future.exception() is not None:
            return
        result = future.result()
        if not isinstance(result, dict) or not isinstance(result.get("cellId"), str):
            return
        cell_id = result["cellId"]
        if key is not None:
            self._admitted(cell_id, kind, tools)
            return
        # Nobody can reach an unkeyed cell whose creator went away: terminate it (docs/sessions.md).
        logger.debug("%s: terminating cell %s whose create was cancelled", self._name, cell_id)
        if self._endpoint is not None and self._lost_reason is None:
            self._endpoint.background(self._terminate_quietly(cell_id))

    async def _terminate_quietly(self, cell_id: str) -> None:
        try:
            await self._call("cell/terminate", {"sessionId": self._session_id, "cellId": cell_id})
        except CodeModeError as exc:
            logger.debug("%s: terminating cell %s: %s", self._name, cell_id, exc)

    def _remember_tool(self, tool: ToolDefinition) -> None:
        key = (tool.name, tool.namespace, str(tool.kind))
        self._known_tools[key] = tool
        self._known_tools.move_to_end(key)
        while len(self._known_tools) > _KNOWN_TOOLS:
            self._known_tools.popitem(last=False)

    # ------------------------------------------------------------------ handles

    def cell(self, cell_id: str) -> Cell:
        """A handle on a live continuing cell of this session; ``MissingCell`` for an unknown or
        closed one, ``WrongCellKind`` for a pausable one."""
        self._usable(cell_id)
        self._lookup(cell_id, CellKind.CONTINUING)
        return Cell(cell_id, self._owner)

    def is_live(self, cell_id: str) -> bool:
        """Whether ``cell_id`` names a live cell of this session as this client knows it (of
        either kind; false after shutdown or a lost connection). Never raises."""
        if self._shutdown_began or self._lost_reason is not None:
            return False
        return self._cells.is_live(str(cell_id))

    def pausable_cell(self, cell_id: str) -> PausableCell:
        """A handle on a live pausable cell of this session (see :meth:`cell`)."""
        self._usable(cell_id)
        self._lookup(cell_id, CellKind.PAUSABLE)
        return PausableCell(cell_id, self._owner)

    # ------------------------------------------------------------------ observation

    async def wait(self, cell: Cell, yield_after: float) -> CellEvent:
        """Observe a continuing cell for up to ``yield_after`` seconds (docs/sessions.md)."""
        record = self._record(cell, CellKind.CONTINUING)
        seconds = float(yield_after)
        if math.isnan(seconds) or seconds < 0:
            seconds = 0.0
        ms = min(seconds * 1000.0, MAX_YIELD_AFTER_MS)
        event = await self._observe(
            record, "cell/wait", {"yieldAfterMs": int(ms) if ms.is_integer() else ms}
        )
        if not isinstance(event, Yielded | Completed | Terminated):
            raise ProtocolError(f"cell/wait answered a {type(event).__name__} event")
        return event

    async def wait_to_pending(self, cell: PausableCell) -> PausableCellEvent:
        """The current frontier of a pausable cell, or wait for the next one (docs/sessions.md)."""
        record = self._record(cell, CellKind.PAUSABLE)
        event = await self._observe(record, "cell/waitToPending", {})
        if not isinstance(event, Pending | Completed | Terminated):
            raise ProtocolError(f"cell/waitToPending answered a {type(event).__name__} event")
        return event

    async def _observe(self, record: _CellRecord, method: str, extra: dict[str, Any]) -> AnyEvent:
        if record.terminating:
            check_refused("observe", Phase.TERMINATING, record.cell_id)
        refuse_second_observer(record.cell_id, record.observer_waiting)
        record.observer_waiting = True
        try:
            while True:
                if record.observation is None:
                    record.observation = self._start_observation(record, method, extra)
                observation = record.observation
                assert observation.task is not None
                try:
                    event = await asyncio.shield(observation.task)
                except asyncio.CancelledError:
                    if not observation.task.done():
                        # Our caller went away: ask the server to stop; whatever it answers
                        # stays with the observation for the cell's next observer.
                        self._cancel_observation(observation)
                    raise
                except _ObservationCancelled:
                    record.observation = None
                    continue
                except MissingCell:
                    record.observation = None
                    self._forget(record.cell_id)
                    raise
                except BaseException:
                    record.observation = None
                    raise
                record.observation = None
                if isinstance(event, Completed | Terminated):
                    self._forget(record.cell_id)
                    self._release(record.cell_id, observation.generation)
                return event
        finally:
            record.observer_waiting = False

    def _start_observation(
        self, record: _CellRecord, method: str, extra: dict[str, Any]
    ) -> _Observation:
        observation = _Observation(record.next_observation)
        record.next_observation += 1
        params = {
            "sessionId": self._session_id,
            "cellId": record.cell_id,
            **extra,
            "observation": observation.generation,
        }
        if self._durable:
            params["delivered"] = record.delivered
        observation.task = self._loop.create_task(
            self._run_observation(observation, record.cell_id, method, params),
            name=f"codemode-remote-observe-{record.cell_id}-{observation.generation}",
        )
        observation.task.add_done_callback(_retrieve)
        return observation

    async def _run_observation(
        self, observation: _Observation, cell_id: str, method: str, params: dict[str, Any]
    ) -> AnyEvent:
        endpoint = self._endpoint
        if endpoint is None or self._lost_reason is not None:
            raise self._lost_error()
        try:
            out: OutgoingRequest = await endpoint.start_request(method, params)
        except ConnectionLost:
            raise self._lost_error() from None
        observation.request_id = out.id
        if observation.cancel_wanted:
            self._cancel_observation(observation)
        try:
            result = await out.future
        except RpcError as exc:
            if exc.code == REQUEST_CANCELLED:
                raise _ObservationCancelled() from None
            error = self._rebuild(exc)
            if exc.code == CODEMODE_ERROR and not isinstance(
                error, BusyObserver | ObservationConflict | UnknownSession | ProtocolError
            ):
                # The runtime's error is the generation's recorded outcome: release it too.
                self._release(cell_id, observation.generation)
            raise error from None
        except ConnectionLost:
            raise self._lost_error() from None
        try:
            data = self._checked(method, result)
            event = event_from_wire(data)
            held = self._held_from_wire(cell_id, data)
        except ValueError as exc:
            raise ProtocolError(f"malformed {method} result from the server: {exc}") from None
        if isinstance(event, Pending):
            event = Pending(replace(event.frontier, awaiting_approval=held))
        record = self._cells.get(cell_id)
        delivery = data.get("delivery")
        if isinstance(delivery, int) and not isinstance(delivery, bool):
            closed = isinstance(event, Completed | Terminated)
            _remember_delivery(self._session_id, cell_id, _CLOSED if closed else delivery)
            if record is not None:
                record.delivered = delivery
        if record is not None:
            if isinstance(event, Yielded):  # the server's list when it delivered the event
                record.held = {a.call_id: a for a in held}
            elif isinstance(event, Pending) and event.frontier.generation > record.held_frontier:
                # A frontier's list is a snapshot: a repeated frontier must not bring back
                # calls decided since.
                record.held_frontier = event.frontier.generation
                record.held = {a.call_id: a for a in held}
        return event

    def _held_from_wire(self, cell_id: str, data: dict[str, Any]) -> tuple[ApprovalRequest, ...]:
        """The ``awaitingApproval`` of a result, each with the full tool definition this client
        sent (the wire names only the tool)."""
        return tuple(
            replace(a, tool=self._tool(cell_id, tool_ref_to_wire(a.tool)))
            for a in approvals_from_wire(data)
        )

    def _cancel_observation(self, observation: _Observation) -> None:
        observation.cancel_wanted = True
        if observation.request_id is None or observation.cancel_sent:
            return
        observation.cancel_sent = True
        if self._endpoint is not None:
            self._endpoint.send_cancel(observation.request_id)

    def _release(self, cell_id: str, generation: int) -> None:
        if self._endpoint is None or self._lost_reason is not None:
            return
        params = {"sessionId": self._session_id, "cellId": cell_id, "observation": generation}
        self._endpoint.background(self._release_quietly(params))

    async def _release_quietly(self, params: dict[str, Any]) -> None:
        try:
            await self._call("observation/release", params, cancel=False)
        except SessionLost:
            pass
        except CodeModeError as exc:
            logger.warning(
                "%s: observation/release of cell %s failed: %s", self._name, params["cellId"], exc
            )

    # ------------------------------------------------------------------ resume and terminate

    async def resume(self, cell: PausableCell, generation: int) -> ResumeOutcome:
        """Continue a pausable cell past frontier ``generation`` (docs/sessions.md); retry-safe."""
        record = self._record(cell, CellKind.PAUSABLE)
        if record.terminating:
            check_refused("resume", Phase.TERMINATING, record.cell_id)
        params = {
            "sessionId": self._session_id,
            "cellId": record.cell_id,
            "generation": int(generation),
        }
        try:
            result = await self._call("cell/resume", params, cancel=False)
        except MissingCell:
            if record.observation is None:
                self._forget(record.cell_id)
            raise
        return ResumeOutcome(result["outcome"])

    async def terminate(self, cell: Cell | PausableCell | str) -> Completed | Terminated:
        """Stop a cell of either kind (docs/sessions.md); runs to completion on the server even if
        the
        caller is cancelled."""
        cell_id = self._cells.cell_id_of(cell)
        self._usable(cell_id)
        record = self._cells.find(cell_id)
        if record.terminating:
            check_refused("terminate", Phase.TERMINATING, cell_id)
        record.terminating = True
        try:
            try:
                result = await self._call(
                    "cell/terminate",
                    {"sessionId": self._session_id, "cellId": cell_id},
                    cancel=False,
                )
            except MissingCell:
                kept = await self._claim_kept_event(record)
                self._forget(cell_id)
                if isinstance(kept, Completed | Terminated):
                    return kept  # the cell had ended; its event waited for an observer
                raise
            kept = await self._claim_kept_event(record)
        finally:
            record.terminating = False
        self._forget(cell_id)
        event = event_from_wire(result)
        assert isinstance(event, Completed | Terminated)
        kept_items: tuple[OutputItem, ...] = ()
        if isinstance(kept, Yielded):
            kept_items = kept.items
        elif isinstance(kept, Pending):
            kept_items = kept.frontier.items
        if kept_items:
            # Output the server delivered to an observation whose caller went away: it was kept
            # for the cell's next observer, and terminate is the last one (docs/protocol.md).
            items = (*kept_items, *event.items)
            if isinstance(event, Completed):
                return Completed(items, event.error_text)
            return Terminated(items)
        return event

    async def _claim_kept_event(self, record: _CellRecord) -> AnyEvent | None:
        """The event of an observation whose caller was cancelled (kept for the next observer),
        taken by ``terminate`` when no observer waits for it; ``None`` when there is none. The
        observation's request is answered once the cell is terminated, so this is bounded."""
        observation = record.observation
        if observation is None or record.observer_waiting or observation.task is None:
            return None
        record.observation = None
        try:
            event = await asyncio.shield(observation.task)
        except asyncio.CancelledError:
            if not observation.task.done():
                record.observation = observation  # still the next observer's
            raise
        except Exception:  # cancelled on the server (-32800), or an error: nothing was kept
            return None
        if isinstance(event, Completed | Terminated):
            self._release(record.cell_id, observation.generation)
        return event

    # ------------------------------------------------------------------ approvals

    def _any_record(self, cell: Cell | PausableCell | str) -> _CellRecord:
        cell_id = self._cells.cell_id_of(cell)
        self._usable(cell_id)
        record = self._cells.find(cell_id)
        return record

    def awaiting_approval(self, cell: Cell | PausableCell | str) -> tuple[ApprovalRequest, ...]:
        """The cell's calls held for approval, sorted by call id, as this client last learned
        them: from the cell's latest ``Yielded`` or ``Pending`` event (a call that becomes held
        ends the current observation at once, so an observation brings it), less the calls it
        has since decided. :meth:`fetch_awaiting_approval` asks the server instead."""
        record = self._any_record(cell)
        return tuple(sorted(record.held.values(), key=lambda a: call_number(a.call_id)))

    async def fetch_awaiting_approval(
        self, cell: Cell | PausableCell | str
    ) -> tuple[ApprovalRequest, ...]:
        """The cell's held calls as the server knows them now (and remember them)."""
        record = self._any_record(cell)
        params = {"sessionId": self._session_id, "cellId": record.cell_id}
        try:
            result = await self._call("cell/awaitingApproval", params, cancel=False)
        except MissingCell:
            self._forget(record.cell_id)
            raise
        held = self._held_from_wire(record.cell_id, {"awaitingApproval": result["calls"]})
        record.held = {a.call_id: a for a in held}
        return held

    async def approve(self, cell: Cell | PausableCell | str, call_id: str) -> None:
        """Let the held call reach the delegate (SessionRuntime.approve)."""
        await self._decide(cell, "cell/approve", {"callId": str(call_id)})

    async def reject(
        self,
        cell: Cell | PausableCell | str,
        call_id: str,
        reason: str = "the host rejected this call",
    ) -> None:
        """Reject the held call with ``reason`` (SessionRuntime.reject)."""
        await self._decide(cell, "cell/reject", {"callId": str(call_id), "reason": str(reason)})

    async def _decide(
        self, cell: Cell | PausableCell | str, method: str, extra: dict[str, Any]
    ) -> None:
        record = self._any_record(cell)
        params = {"sessionId": self._session_id, "cellId": record.cell_id, **extra}
        try:
            await self._call(method, params, cancel=False)
        except NotAwaitingApproval:
            record.held.pop(extra["callId"], None)
            raise
        except MissingCell:
            if record.observation is None:
                self._forget(record.cell_id)
            raise
        record.held.pop(extra["callId"], None)

    # ------------------------------------------------------------------ shutdown

    async def shutdown(self) -> None:
        """Shut the server session down and close the connection (docs/sessions.md). Idempotent;
        concurrent calls share one cleanup, which goes on if a caller is cancelled."""
        self._alive = False
        self._shutdown_began = True
        if self._shutdown_task is None:
            self._shutdown_task = self._loop.create_task(self._shutdown())
        await asyncio.shield(self._shutdown_task)

    async def open(self) -> RemoteSession:
        """``SessionRuntime.open``'s counterpart: a no-op, since ``spawn`` and ``connect``
        return an open session (a durable one already reattached and recovered)."""
        return self

    async def suspend(self) -> None:
        """Leave the session without ending it: close the connection (the server suspends a
        durable session whose connection ends) and, for a spawned server, wait for it to exit.
        The session's cells stay in the store; reattach with ``connect(..., session_id=)`` or
        ``spawn(..., store=, session_id=)``. Afterwards this object behaves as after
        :meth:`shutdown`. A session that is not durable is shut down by its server instead
        (docs/protocol.md). Idempotent, like :meth:`shutdown` (whichever comes first wins)."""
        self._alive = False
        self._shutdown_began = True
        if self._shutdown_task is None:
            self._suspending = True
            self._shutdown_task = self._loop.create_task(self._shutdown())
        await asyncio.shield(self._shutdown_task)

    async def _shutdown(self) -> None:
        endpoint = self._endpoint
        if endpoint is not None and self._lost_reason is None and not self._suspending:
            try:
                async with asyncio.timeout(SHUTDOWN_TIMEOUT):
                    await self._call(
                        "session/shutdown", {"sessionId": self._session_id}, cancel=False
                    )
            except SessionLost as exc:
                logger.debug("%s: session/shutdown: %s", self._name, exc)
            except (CodeModeError, TimeoutError) as exc:
                logger.warning("%s: session/shutdown failed: %s", self._name, exc)
            # Answers already on their way (creates racing the shutdown, observers getting
            # their Terminated) arrive before the connection closes.
            pending = endpoint.pending_futures()
            if pending:
                await asyncio.wait(pending, timeout=IN_FLIGHT_GRACE)
        if endpoint is not None:
            await endpoint.close()
        await self._reap()
        reader = self._reader
        if reader is not None:
            # The input ends once the server has closed its side (a spawned server has exited).
            await asyncio.wait({reader}, timeout=1.0)
            if not reader.done() and self._lost_reason is None:
                reader.cancel()  # still reading (the peer keeps its side open): stop here
                await asyncio.wait({reader}, timeout=1.0)
                await self._connection_lost("closed by shutdown")
            elif not reader.done():
                await asyncio.wait({reader}, timeout=CHILD_EXIT_GRACE)
        logger.info(
            "%s: session %s %s",
            self._name,
            self._session_id,
            "suspended" if self._suspending else "shut down",
        )

    async def _reap(self) -> None:
        """Wait for a spawned server to exit (its stdin is closed), killing it after the grace."""
        process = self._process
        if process is None:
            return
        if process.stdin is not None and not process.stdin.is_closing():
            process.stdin.close()
        try:
            async with asyncio.timeout(CHILD_EXIT_GRACE):
                await process.wait()
        except TimeoutError:
            logger.warning("%s did not exit; killing it", self._name)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        if self._stderr_task is not None:
            await asyncio.wait({self._stderr_task}, timeout=1.0)

    async def __aenter__(self) -> RemoteSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()

    def __repr__(self) -> str:
        if self._alive:
            state = "alive"
        elif self._shutdown_began:
            state = "shut down"
        else:
            state = f"lost ({self._lost_reason})"
        return f"<RemoteSession {self._session_id or '?'} on {self._name}, {state}>"

    # ------------------------------------------------------------------ the connection

    async def _read(self) -> None:
        assert self._endpoint is not None
        reason = await self._endpoint.run()
        await asyncio.shield(self._connection_lost(reason))

    async def _connection_lost(self, reason: str) -> None:
        """The input ended (or the shutdown closed it): fail what is pending, cancel the
        delegate's calls, reap a spawned server. Runs once."""
        endpoint = self._endpoint
        assert endpoint is not None
        if self._lost.is_set() or self._lost_reason is not None:
            return
        if self._shutdown_began:
            detail = "the session was shut down"
        else:
            detail = f"the connection to the server ended ({reason})"
            process = self._process
            if process is not None:
                try:
                    async with asyncio.timeout(1.0):
                        await process.wait()
                except TimeoutError:
                    pass
                code = process.returncode
                if code is not None and code < 0:
                    detail = f"the server process was killed by {_signal_name(code)}"
                elif code is not None:
                    detail = f"the server process exited with status {code}"
            logger.warning("%s: %s", self._name, detail)
        self._lost_reason = detail
        self._alive = False
        endpoint.fail_outgoing(detail)
        await endpoint.cancel_incoming()
        await endpoint.close()
        if not self._shutdown_began:
            await self._reap()
        self._lost.set()

    async def _log_stderr(self, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line over the reader's limit: skip it
                continue
            except (ConnectionError, OSError):
                return
            if not line:
                return
            logger.info("%s: %s", self._name, line.decode("utf-8", "replace").rstrip())

    # ------------------------------------------------------------------ requests from the server

    def dispatch_request(self, request: IncomingRequest, params: Any) -> Coroutine[Any, Any, Any]:
        definition = CLIENT_METHODS.get(request.method)
        if definition is None or definition.result is None:
            raise RpcError(METHOD_NOT_FOUND, f"method not found: {request.method}")
        if not isinstance(params, dict):
            raise RpcError(INVALID_PARAMS, "params must be an object")
        problem = definition.params.check(params, "")
        if problem is not None:
            raise RpcError(INVALID_PARAMS, f"invalid params: {problem}")
        if params["sessionId"] not in (self._session_id, self._requested_session_id):
            # (A reattached session's recovered cells may call before session/open answers.)
            raise UnknownSession(params["sessionId"])
        request.on_cancel = lambda: _cancel_task(request)
        if request.method == "tool/invoke":
            return self._invoke(request, params)
        return self._notify(params)

    def dispatch_notification(self, method: str, params: Any) -> None:
        logger.debug("%s: ignoring notification %s", self._name, method)

    def _tool(self, cell_id: str, wire: dict[str, Any]) -> ToolDefinition:
        name, namespace, kind = wire["name"], wire["namespace"], wire["kind"]
        record = self._cells.get(cell_id)
        if record is not None:
            for tool in record.tools:
                if (tool.name, tool.namespace, str(tool.kind)) == (name, namespace, kind):
                    return tool
        known = self._known_tools.get((name, namespace, kind))
        if known is not None:
            return known
        return ToolDefinition(name, kind=ToolKind(kind), namespace=namespace)

    async def _invoke(self, request: IncomingRequest, params: dict[str, Any]) -> PreEncoded:
        # A recovered cell may call before session/open answers with the cells and their tools.
        await self._open_answered.wait()
        tool = self._tool(params["cellId"], params["tool"])
        call = NestedToolCall(params["cellId"], params["callId"], tool, params["input"])
        meta = params.get("_meta")

        async def invoke(call: NestedToolCall) -> Any:
            with tracing.extracted(meta):
                return await self._delegate.invoke_tool(call)

        # A delegate's own CancelledError is a rejection, as in-process.
        result = await call_delegate(
            invoke,
            call,
            cancel_requested=lambda: (
                request.cancel_requested or self._endpoint is None or self._endpoint.closing
            ),
            encode=encode,
        )
        if not result.ok:
            raise RpcError(TOOL_ERROR, result.message)
        text = result.value_json
        return PreEncoded('{"output":' + text + "}")

    async def _notify(self, params: dict[str, Any]) -> dict[str, Any]:
        try:
            await self._delegate.notify(params["callId"], params["cellId"], params["text"])
        except Exception as exc:
            raise RpcError(TOOL_ERROR, str(exc) or type(exc).__name__) from None
        return {}


_CONSTRUCT = object()


def _cancel_task(request: IncomingRequest) -> None:
    if request.task is not None:
        request.task.cancel()


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark an abandoned observation's failure as seen (no "never retrieved" warning)."""
    if not task.cancelled():
        task.exception()
