"""The protocol server: ``codemode serve`` (docs/protocol.md).

A thin adapter. Each ``session/open`` creates one :class:`~codemode.session.SessionRuntime`
whose delegate forwards ``invoke_tool`` as a ``tool/invoke`` request to the client and ``notify``
as ``cell/notify`` (and cancels them with ``$/cancelRequest`` when the runtime cancels the
callback); every other method calls the runtime method of that name. All rules of sessions and
cells stay in the runtime. What lives here is protocol state only:

- the connection's handshake (``initialize``) and its sessions (ids stay known until the
  connection ends; a connection's sessions are shut down when it ends, docs/protocol.md, and the
  requests it had sent are still answered if the output is open, within
  :data:`INCOMING_GRACE`);
- the **observation records** of docs/protocol.md, kept by the sans-IO
  :class:`~codemode.protocol.observations.ObservationRecords` (one per session): per cell, the
  latest observation generation with its request and its state (pending, finished with an event
  or an error, or released), so that a re-sent ``cell/wait`` / ``cell/waitToPending`` replays its
  outcome. This module only starts the observation task and reports its outcome.

With a store (``codemode serve --store PATH``, docs/protocol.md "Durable sessions") the
sessions are durable: a connection that ends *suspends* its sessions instead of shutting them
down (their cells stay in the store), and ``session/open`` with a ``sessionId`` reattaches to
one, recovering its live cells, whose ids and kinds the result lists. The server remembers which
durable sessions its connections hold: a reattach to one of them is ``SessionBusy`` while its
connection lives, and waits for its suspension while that connection is ending. A nested call
whose connection ended is left unanswered (so nothing is recorded for it) until the suspension
cancels it; the next open issues it again. A source that keeps its sessions in a store
(``serve --cluster``) is served the same way, through the same ``session/open`` path. An
observation that carries ``delivered`` (docs/protocol.md, "Re-delivery") goes to the runtime's
``observe_numbered`` and a release to its ``acknowledge``, whatever the runtime: in process, or
a cluster session that passes the number on to its host.

Decisions where the spec is silent:

- Before ``initialize`` every request (known method or not) gets ``-32002``; notifications other
  than ``$/cancelRequest`` are ignored. Unknown notifications are ignored, unknown requests get
  ``-32601``. Unknown members of params are ignored; ``session/open`` limits must name
  ``CellLimits`` fields.
- Limits above a ceiling, or an engine other than ``"v8"``, get ``-32602``.
- Cancelling one of several requests joined to one pending observation (replays) cancels that
  observation; all of them are answered ``-32800``.
- The cap of 4096 unreleased terminal records per session drops the oldest *payload*: that
  record then answers like a released one. Records of closed cells beyond
  :data:`MAX_RECORDS` per session are dropped entirely, oldest first.
- A tool/invoke answered with an error rejects the call with the error's ``message``; a result
  without ``output`` rejects it with a message saying so.
- A ``$/cancelRequest`` of a ``cell/create`` cancels the runtime's create like a caller that went
  away: a keyed admission still finishes and is recorded, an unkeyed one admits nothing or is
  terminated (docs/sessions.md); the request is answered ``-32800`` unless it had already finished.
- Integers may be sent as integral floats (``1.0``), as JSON Schema counts them;
  ``yieldAfterMs`` is at most ``1e15``.
- ``codemode serve`` on stdio keeps the original stdout for protocol lines and points file
  descriptor 1 at stderr, so a stray ``print`` (or native output) cannot corrupt the stream.
  SIGTERM and SIGINT stop it like the end of stdin (sessions shut down, exit 0).
- WebSocket: only the path ``/`` is served (others get HTTP 404); binary messages are read as
  UTF-8 text; per-message compression is off; the bound URL is printed on stderr as
  ``codemode serve: listening on ws://HOST:PORT/`` (useful with port 0). ``--token-env`` without
  ``--listen``, or naming an unset variable, is a usage error (exit 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import secrets
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Final

from codemode import tracing
from codemode.cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    StoreOptions,
    configure_logging,
    parse_host_port,
    session_id_problem,
)
from codemode.engine.base import Engine
from codemode.engine.choice import engine_factory, wire_engine_name
from codemode.errors import (
    CodeModeError,
    EngineError,
    MissingCell,
    SessionBusy,
    UnknownSession,
    WrongCellKind,
)
from codemode.model import (
    ApprovalRequest,
    CellLimits,
    Completed,
    CreateCellRequest,
    NestedToolCall,
    Pending,
    Terminated,
    Yielded,
)
from codemode.protocol.codec import (
    approval_to_wire,
    error_to_wire,
    event_to_wire,
    limits_from_wire,
    limits_to_wire,
    tool_from_wire,
    tool_ref_to_wire,
    tool_to_wire,
)
from codemode.protocol.messages import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    MAX_FRAME_BYTES,
    METHOD_NOT_FOUND,
    NOT_INITIALIZED,
    PROTOCOL_VERSION,
    REQUEST_CANCELLED,
    SERVER_METHODS,
    SUPPORTED_VERSIONS,
    as_int,
    codemode_version,
)
from codemode.protocol.observations import (
    MAX_RECORDS,
    MAX_TERMINAL_RECORDS,
    ObservationRecord,
    ObservationRecords,
    ObservationRequest,
)
from codemode.protocol.policy import UNREADY_FRAME_BYTES, ServePolicy, is_loopback, origin_allowed
from codemode.protocol.rpc import ConnectionLost, Endpoint, IncomingRequest, RpcError
from codemode.protocol.sources import ServedRuntime, SessionSource, new_session_id
from codemode.protocol.transport import Transport, WebSocketTransport, open_stdio
from codemode.session import SessionRuntime
from codemode.store.base import SessionStore

__all__ = [
    "MAX_RECORDS",
    "MAX_TERMINAL_RECORDS",
    "ProtocolServer",
    "parse_listen",
    "serve_main",
    "serve_stdio",
    "serve_websocket",
]

logger = logging.getLogger("codemode.protocol.server")

INCOMING_GRACE: Final = 5.0
"""Seconds a connection that ended gives its running requests to finish and be answered."""
ENGINES: Final = ("v8",)


class ToolCallRejected(Exception):
    """A ``tool/invoke`` the client answered with an error (or could not answer)."""


# ---------------------------------------------------------------------------- the delegate


class _ForwardingDelegate:
    """The runtime's delegate: nested calls and notifications go to the client."""

    def __init__(self, connection: _Connection, session_id: str, *, durable: bool = False) -> None:
        self._connection = connection
        self._session_id = session_id
        self._durable = durable

    async def invoke_tool(self, call: NestedToolCall) -> Any:
        params = {
            "sessionId": self._session_id,
            "cellId": call.cell_id,
            "callId": call.call_id,
            "tool": tool_ref_to_wire(call.tool),
            "input": call.input,
        }
        meta = tracing.inject()  # the nested call's span, so the client's tool spans join it
        if meta is not None:
            params["_meta"] = meta
        try:
            result = await self._connection.endpoint.request("tool/invoke", params)
        except RpcError as exc:
            raise ToolCallRejected(exc.message or f"tool `{call.tool.name}` failed") from None
        except ConnectionLost as exc:
            if self._durable:
                # The connection ended: the durable session is being suspended, which cancels
                # this call. Left unanswered, nothing is recorded for it, and the next open of
                # the session issues it again (docs/durability.md).
                await asyncio.get_running_loop().create_future()
            raise ToolCallRejected(f"the client connection ended: {exc.reason}") from None
        if not isinstance(result, dict) or "output" not in result:
            raise ToolCallRejected(
                f"the client answered tool/invoke for `{call.tool.name}` without an output"
            )
        return result["output"]

    async def notify(self, call_id: str, cell_id: str, text: str) -> None:
        if not self._connection.notify_enabled:
            return
        params = {"sessionId": self._session_id, "cellId": cell_id, "callId": call_id, "text": text}
        try:
            await self._connection.endpoint.request("cell/notify", params)
        except RpcError as exc:
            logger.warning(
                "session %s cell %s: cell/notify failed: %s", self._session_id, cell_id, exc
            )
        except ConnectionLost as exc:
            logger.debug("session %s cell %s: cell/notify lost: %s", self._session_id, cell_id, exc)


# ---------------------------------------------------------------------------- one session


@dataclass(eq=False)
class _ServedSession:
    session_id: str
    runtime: ServedRuntime
    cell_ids: set[str] = field(default_factory=set)
    records: ObservationRecords = field(init=False)
    # A durable session (the server has a store): suspended, not shut down, when its
    # connection ends; ``connection`` holds it in this process until ``released`` is set.
    durable: bool = False
    connection: _Connection | None = None
    ended: bool = False  # suspended or shut down by this server
    released: asyncio.Event = field(default_factory=asyncio.Event)
    # Delivery numbers of finished numbered observations, by id() of their record, until
    # ``finished`` puts them in the answer.
    deliveries: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.records = ObservationRecords(self.is_live)

    async def leave(self) -> None:
        """The connection ended: suspend a durable session (it stays in the store for a later
        ``session/open`` with its id), shut any other down."""
        await self.end(suspend=self.durable)

    async def end(self, *, suspend: bool) -> None:
        """Suspend or shut the runtime down (once), then give the session's id up."""
        if self.ended:
            return
        self.ended = True
        try:
            if not self.runtime.is_alive:
                pass
            elif suspend:
                await self.runtime.suspend()
                logger.info("session %s suspended", self.session_id)
            else:
                await self.runtime.shutdown()
        finally:
            self.released.set()
            if self.connection is not None:
                self.connection.server._let_go(self)

    def is_live(self, cell_id: str) -> bool:
        """Whether the runtime still has the cell, of either kind."""
        return self.runtime.is_live(cell_id)

    def live_cells(self) -> list[str]:
        live = [c for c in self.cell_ids if self.is_live(c)]
        self.cell_ids = set(live)
        return live

    def held_calls(self, cell_id: str, event: object) -> tuple[ApprovalRequest, ...]:
        """The cell's held calls, sent with a ``yielded`` event (a frontier carries its own)."""
        if not isinstance(event, Yielded):
            return ()
        try:
            return self.runtime.awaiting_approval(cell_id)
        except MissingCell:
            return ()

    def created(self, cell_id: str) -> None:
        self.cell_ids.add(cell_id)
        if len(self.cell_ids) > 2 * self.runtime.limits.max_live_cells + 64:
            self.live_cells()

    # ------------------------------------------------------------------ records

    def finished(self, record: ObservationRecord, task: asyncio.Task[Any]) -> None:
        """The observation task of ``record`` ended: record its outcome."""
        cell_id = record.request.cell_id
        if task.cancelled():
            error = {"code": REQUEST_CANCELLED, "message": "request cancelled"}
            self.records.finish(record, error=error, terminal=True)
            return
        exc = task.exception()
        delivery = self.deliveries.pop(id(record), None)
        if exc is None:
            event = task.result()
            result = event_to_wire(event, self.held_calls(cell_id, event))
            if delivery is not None:
                result["delivery"] = delivery
            self.records.finish(
                record, result=result, terminal=isinstance(event, Completed | Terminated)
            )
        elif isinstance(exc, CodeModeError):
            self.records.finish(record, error=error_to_wire(exc), terminal=True)
        else:
            logger.error(
                "session %s cell %s: observation failed inside codemode",
                self.session_id,
                cell_id,
                exc_info=exc,
            )
            error = {
                "code": INTERNAL_ERROR,
                "message": f"internal error: {type(exc).__name__}: {exc}",
            }
            self.records.finish(record, error=error, terminal=True)


# ---------------------------------------------------------------------------- one connection


Handler = Callable[[IncomingRequest, dict[str, Any]], Coroutine[Any, Any, Any]]


class _Connection:
    """One client connection: its handshake state and its sessions."""

    def __init__(self, server: ProtocolServer, transport: Transport) -> None:
        self.server = server
        self.name = transport.name
        self.endpoint = Endpoint(transport, self, name=transport.name, id_prefix="s-")
        self.endpoint.max_queued_bytes = server.policy.max_queued_bytes
        self.endpoint.unready_frame_limit = UNREADY_FRAME_BYTES
        self.endpoint.unready_error = (
            NOT_INITIALIZED,
            "the server is not initialized: send initialize first",
        )
        self.initialized = False
        self.notify_enabled = True
        # The client numbers its deliveries (capabilities.redelivery): session/open lists the
        # closed cells whose completion it may get again (docs/protocol.md, Re-delivery).
        self.redelivery = False
        self.sessions: dict[str, _ServedSession] = {}
        self.task: asyncio.Task[Any] | None = None  # the task serving this connection
        self._closed: asyncio.Future[None] | None = None
        self._handlers: dict[str, Handler] = {
            "session/open": self._open,
            "session/shutdown": self._shutdown_session,
            "cell/create": self._create,
            "cell/wait": self._observe,
            "cell/waitToPending": self._observe,
            "cell/resume": self._resume,
            "cell/terminate": self._terminate,
            "cell/awaitingApproval": self._awaiting_approval,
            "cell/approve": self._approve,
            "cell/reject": self._reject,
            "observation/release": self._release,
        }

    async def run(self) -> str:
        """Serve until the connection ends (or this task is cancelled: the server stops), then
        shut its sessions down."""
        logger.info("%s: connected", self.name)
        self.task = asyncio.current_task()
        try:
            reason = await self.endpoint.run()
        except asyncio.CancelledError:
            await asyncio.shield(self.close("the server is stopping"))
            raise
        await self.close(reason)
        return reason

    async def close(self, reason: str) -> None:
        """Shut down every session of the connection (its outstanding tool calls and
        notifications cancelled, docs/protocol.md), then close the transport. Idempotent."""
        if self._closed is not None:
            await asyncio.shield(self._closed)
            return
        self._closed = asyncio.get_running_loop().create_future()
        try:
            await self._close(reason)
        finally:
            self._closed.set_result(None)

    async def _close(self, reason: str) -> None:
        logger.info(
            "%s: connection ends (%s); shutting down %d sessions",
            self.name,
            reason,
            len(self.sessions),
        )
        await self._shutdown_sessions()
        # Requests already read still get their answers (stdin may close right after them);
        # with every session shut down they end quickly. What is left then is cancelled.
        await self.endpoint.drain_incoming(INCOMING_GRACE)
        await self.endpoint.cancel_incoming()
        await self._shutdown_sessions()  # any opened by a request that was still running
        self.endpoint.fail_outgoing(f"the connection ended: {reason}")
        await self.endpoint.close()
        self.server._ended(self)

    async def _shutdown_sessions(self) -> None:
        """Shut down (suspend, for durable ones) every session of the connection."""
        sessions = [s for s in self.sessions.values() if not s.ended]
        if sessions:
            await asyncio.gather(*(s.leave() for s in sessions), return_exceptions=True)

    @property
    def live(self) -> bool:
        """Whether the connection is still served (its end has not begun)."""
        return self._closed is None

    # ------------------------------------------------------------------ dispatch

    def dispatch_request(self, request: IncomingRequest, params: Any) -> Coroutine[Any, Any, Any]:
        method = request.method
        if method == "initialize":
            return self._initialize(params)
        if not self.initialized:
            raise RpcError(NOT_INITIALIZED, "the server is not initialized: send initialize first")
        definition = SERVER_METHODS.get(method)
        handler = self._handlers.get(method)
        if definition is None or handler is None:
            raise RpcError(METHOD_NOT_FOUND, f"method not found: {method}")
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise RpcError(INVALID_PARAMS, "params must be an object")
        problem = definition.params.check(params, "")
        if problem is not None:
            raise RpcError(INVALID_PARAMS, f"invalid params: {problem}")
        if definition.cancellable:
            request.on_cancel = lambda: _cancel_task(request)
        return handler(request, params)

    def dispatch_notification(self, method: str, params: Any) -> None:
        logger.debug("%s: ignoring notification %s", self.name, method)

    # ------------------------------------------------------------------ handshake

    def _initialize(self, params: Any) -> Coroutine[Any, Any, Any]:
        if self.initialized:
            raise RpcError(INVALID_REQUEST, "initialize was already called on this connection")
        supported = {"supportedVersions": list(SUPPORTED_VERSIONS)}
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise RpcError(INVALID_PARAMS, "params must be an object", supported)
        problem = SERVER_METHODS["initialize"].params.check(params, "")
        if problem is not None:
            raise RpcError(INVALID_PARAMS, f"invalid params: {problem}", supported)
        version = params["protocolVersion"]
        if version not in SUPPORTED_VERSIONS:
            raise RpcError(
                INVALID_PARAMS,
                f"unsupported protocol version {version}; this server supports "
                f"{', '.join(map(str, SUPPORTED_VERSIONS))}",
                supported,
            )
        self.initialized = True
        self.endpoint.unready_frame_limit = None
        capabilities = params.get("capabilities", {})
        self.notify_enabled = capabilities.get("notify", True)
        self.redelivery = capabilities.get("redelivery", False) is True
        client = params.get("clientInfo") or {}
        logger.info("%s: initialized by %s", self.name, client.get("name", "a client"))
        return _value(
            {
                "protocolVersion": PROTOCOL_VERSION,
                "serverInfo": {"name": "codemode", "version": codemode_version()},
                "capabilities": {
                    "cellKinds": ["continuing", "pausable"],
                    "engines": [self.server.engine_name],
                    "observationReplay": True,
                    "limits": limits_to_wire(self.server.ceilings),
                },
            }
        )

    # ------------------------------------------------------------------ sessions

    def _session(self, params: dict[str, Any]) -> _ServedSession:
        session_id = params["sessionId"]
        session = self.sessions.get(session_id)
        if session is None:
            raise UnknownSession(session_id)
        return session

    async def _open(self, request: IncomingRequest, params: dict[str, Any]) -> Any:
        requested_id: str | None = params.get("sessionId")
        if requested_id is not None:
            problem = session_id_problem(requested_id)
            if problem is not None:
                raise RpcError(INVALID_PARAMS, f"invalid params: sessionId {problem}")
            if self.server.durable_store is None:
                raise UnknownSession(requested_id)  # nothing outlives its connection here
        ceilings = self.server.ceilings
        limits = ceilings
        if "limits" in params:
            try:
                limits = limits_from_wire(params["limits"], ceilings)
            except ValueError as exc:
                raise RpcError(INVALID_PARAMS, f"invalid params: {exc}") from None
        engine_name = params.get("engine", self.server.engine_name)
        if engine_name != self.server.engine_name:
            raise RpcError(
                INVALID_PARAMS,
                f"invalid params: unknown engine {engine_name!r}; this server offers "
                f"{self.server.engine_name}",
            )
        self.server.check_session_cap()
        store = self.server.durable_store
        if store is not None:
            return await self._open_durable(store, limits, requested_id)
        if self.server.source is not None:
            return await self._open_from(self.server.source, limits)
        session_id = f"s{secrets.token_hex(8)}"
        engine = self.server.engine_factory() if self.server.engine_factory else None
        runtime = SessionRuntime(
            _ForwardingDelegate(self, session_id), limits=limits, engine=engine
        )
        session = _ServedSession(session_id, runtime)
        self.sessions[session_id] = session
        logger.info("%s: session %s opened", self.name, session_id)
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            # docs/protocol.md: a session opened for a cancelled session/open is shut down.
            await asyncio.shield(runtime.shutdown())
            raise
        return {"sessionId": session_id}

    async def _open_durable(
        self, store: SessionStore, limits: CellLimits, requested_id: str | None
    ) -> dict[str, Any]:
        """``session/open`` on a server whose sessions are durable (``--store``, or a source
        that keeps its sessions in a store: ``--cluster``): create one, or reattach to
        ``requested_id`` (its cells recovered, listed from ``store``). A session this process
        serves on a live connection is busy, and so is one another ``session/open`` is opening;
        one whose connection is ending is waited for (it is being suspended)."""
        reattach = requested_id is not None
        if requested_id is not None:
            await self.server._wait_released(requested_id)
        session_id = requested_id or new_session_id()
        self.server._reserve(session_id)  # SessionBusy while another open of this id runs
        try:
            opening = asyncio.get_running_loop().create_task(self._open_runtime(session_id, limits))
            try:
                runtime = await asyncio.shield(opening)
            except asyncio.CancelledError:
                # docs/protocol.md: a session opened for a cancelled session/open is shut down;
                # one asked for by id existed before (or was meant to): it is only suspended.
                await asyncio.shield(_end_opened(opening, suspend=reattach))
                raise
        finally:
            self.server._unreserve(session_id)
        session = _ServedSession(session_id, runtime, durable=True, connection=self)
        self.server._hold(session)
        try:
            # The store's open cells: a closed one whose completion awaits its acknowledgement
            # is among them (its closing is recorded once acknowledged) and is listed to a client
            # that numbers its deliveries (docs/protocol.md, Re-delivery).
            cells = self._recovered_cells(session, await store.list_cells(session_id, state="open"))
        except asyncio.CancelledError:
            await asyncio.shield(session.end(suspend=reattach))  # as above
            raise
        except BaseException:
            await asyncio.shield(session.end(suspend=True))
            raise
        self.sessions[session_id] = session
        logger.info(
            "%s: durable session %s opened (%d cells listed)", self.name, session_id, len(cells)
        )
        return {
            "sessionId": session_id,
            "durable": True,
            "limits": limits_to_wire(runtime.limits),  # a reattached session keeps its own
            "cells": cells,
        }

    async def _open_runtime(self, session_id: str, limits: CellLimits) -> ServedRuntime:
        """Open the durable session ``session_id`` (create it, or recover it from the store):
        from the server's source when it has one, else as a :class:`SessionRuntime` on the
        server's store. ``SessionBusy`` when another process holds it, ``StoreError`` when the
        store cannot serve it; ``-32602`` for limits the source cannot apply."""
        delegate = _ForwardingDelegate(self, session_id, durable=True)
        source = self.server.source
        if source is not None:
            try:
                return await source.open_session(delegate, limits, session_id)
            except ValueError as exc:
                raise RpcError(INVALID_PARAMS, f"invalid params: {exc}") from None
        engine = self.server.engine_factory() if self.server.engine_factory else None
        runtime = SessionRuntime(
            delegate, limits=limits, engine=engine, store=self.server.store, session_id=session_id
        )
        await runtime.open()
        return runtime

    def _recovered_cells(self, session: _ServedSession, records: Any) -> list[dict[str, Any]]:
        """The cells of a durable session just opened, of the store's ``records``: its live
        cells with their kinds (the client rebuilds its record of cells from them), and, for a
        client that announced ``redelivery``, the closed cells whose delivered completion awaits
        its acknowledgement (``completed: true``)."""
        runtime = session.runtime
        cells: list[dict[str, Any]] = []
        for record in records:
            cell_id = record.cell_id
            if not runtime.is_live(cell_id):
                if self.redelivery and runtime.delivered_completion(cell_id):
                    # Closed, its completion delivered but never acknowledged: a client that
                    # numbers its deliveries may get it again (docs/protocol.md, Re-delivery).
                    session.created(cell_id)
                    cells.append(
                        {
                            "cellId": cell_id,
                            "kind": str(record.kind),
                            **_recorded_tools(record),
                            "completed": True,
                        }
                    )
                continue
            try:
                runtime.pausable_cell(cell_id)
                kind = "pausable"
            except WrongCellKind:
                kind = "continuing"
            except MissingCell:
                continue
            session.created(cell_id)
            cells.append({"cellId": cell_id, "kind": kind, **_recorded_tools(record)})
        return cells

    async def _open_from(self, source: SessionSource, limits: CellLimits) -> dict[str, Any]:
        """``session/open`` on a server with a session source (``serve --cluster``)."""
        session_id = new_session_id()
        try:
            runtime = await source.open_session(
                _ForwardingDelegate(self, session_id), limits, session_id
            )
        except ValueError as exc:
            raise RpcError(INVALID_PARAMS, f"invalid params: {exc}") from None
        self.sessions[session_id] = _ServedSession(session_id, runtime)
        logger.info("%s: session %s opened (%s)", self.name, session_id, source.description)
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            await asyncio.shield(runtime.shutdown())  # as _open: docs/protocol.md
            raise
        return {"sessionId": session_id}

    async def _shutdown_session(self, request: IncomingRequest, params: dict[str, Any]) -> Any:
        session = self._session(params)
        if session.durable:
            await session.end(suspend=False)  # ends it: its cells are deleted from the store
        else:
            await session.runtime.shutdown()
        logger.info("%s: session %s shut down", self.name, session.session_id)
        return {}

    # ------------------------------------------------------------------ cells

    async def _create(self, request: IncomingRequest, params: dict[str, Any]) -> Any:
        session = self._session(params)
        create = CreateCellRequest(
            source=params["source"],
            tools=tuple(tool_from_wire(t) for t in params.get("tools", ())),
            tool_call_id=params.get("toolCallId", ""),
            idempotency_key=params.get("idempotencyKey"),
        )
        with self.server.cell_admission(), tracing.extracted(params.get("_meta")):
            if params["kind"] == "pausable":
                cell_id = (await session.runtime.create_pausable_cell(create)).cell_id
            else:
                cell_id = (await session.runtime.create_cell(create)).cell_id
        session.created(cell_id)
        logger.debug(
            "session %s: cell %s created (%s)", session.session_id, cell_id, params["kind"]
        )
        return {"cellId": cell_id}

    def _observe(
        self, request: IncomingRequest, params: dict[str, Any]
    ) -> Coroutine[Any, Any, Any]:
        """``cell/wait`` and ``cell/waitToPending``: the record of docs/protocol.md is consulted and
        updated synchronously, in arrival order; the returned coroutine awaits the outcome."""
        session = self._session(params)
        cell_id: str = params["cellId"]
        generation = as_int(params["observation"])
        method = request.method
        request_key = ObservationRequest(
            method, params["sessionId"], cell_id, generation, params.get("yieldAfterMs")
        )
        record, new = session.records.observe(request_key)
        if new:
            self._start_observation(session, record, params)
        else:
            logger.debug(
                "session %s cell %s: replay of observation %d",
                session.session_id,
                cell_id,
                generation,
            )
        task = record.task
        if record.pending and task is not None:
            # A cancel of this request (or of any replay joined to it) stops the observation;
            # its outcome is then -32800 (docs/protocol.md).
            request.on_cancel = lambda: _cancel_quietly(task)
        else:
            request.on_cancel = None
        return _outcome(record)

    def _start_observation(
        self, session: _ServedSession, record: ObservationRecord, params: dict[str, Any]
    ) -> None:
        runtime = session.runtime
        request = record.request
        cell_id = request.cell_id

        numbered = "delivered" in params
        server = self.server

        async def observe() -> Yielded | Completed | Terminated | Pending:
            if numbered:
                # The client numbers what it received (docs/protocol.md, "Re-delivery"): the
                # answer carries the event's delivery number, and a completion's closing is
                # held until the client releases the observation. One rule for every runtime
                # (in process, or a cluster session passing the number on to its host).
                budget = params["yieldAfterMs"] / 1000.0 if request.method == "cell/wait" else None
                seen = params["delivered"]
                event, delivery = await runtime.observe_numbered(
                    cell_id,
                    max(budget, 0.0) if budget is not None else None,
                    None if seen is None else as_int(seen),
                )
                if delivery is not None:
                    session.deliveries[id(record)] = delivery
                    server.delivery_recorded()
                return event
            if request.method == "cell/wait":
                return await runtime.wait(runtime.cell(cell_id), params["yieldAfterMs"] / 1000.0)
            return await runtime.wait_to_pending(runtime.pausable_cell(cell_id))

        task = asyncio.get_running_loop().create_task(
            observe(), name=f"codemode-observe-{session.session_id}-{cell_id}-{request.generation}"
        )
        record.task = task
        task.add_done_callback(lambda t: session.finished(record, t))

    async def _resume(self, request: IncomingRequest, params: dict[str, Any]) -> Any:
        session = self._session(params)
        runtime = session.runtime
        outcome = await runtime.resume(
            runtime.pausable_cell(params["cellId"]), as_int(params["generation"])
        )
        return {"outcome": outcome.value}

    async def _terminate(self, request: IncomingRequest, params: dict[str, Any]) -> Any:
        session = self._session(params)
        event = await session.runtime.terminate(params["cellId"])
        return event_to_wire(event)

    async def _awaiting_approval(self, request: IncomingRequest, params: dict[str, Any]) -> Any:
        session = self._session(params)
        held = session.runtime.awaiting_approval(params["cellId"])
        return {"calls": [approval_to_wire(a) for a in held]}

    async def _approve(self, request: IncomingRequest, params: dict[str, Any]) -> Any:
        session = self._session(params)
        await session.runtime.approve(params["cellId"], params["callId"])
        return {}

    async def _reject(self, request: IncomingRequest, params: dict[str, Any]) -> Any:
        session = self._session(params)
        if "reason" in params:
            await session.runtime.reject(params["cellId"], params["callId"], params["reason"])
        else:
            await session.runtime.reject(params["cellId"], params["callId"])
        return {}

    async def _release(self, request: IncomingRequest, params: dict[str, Any]) -> Any:
        session = self._session(params)
        session.records.release(params["cellId"], as_int(params["observation"]))
        # The client received the cell's terminal outcome: a completion's closing held by a
        # numbered observation is recorded now (docs/protocol.md, "Re-delivery").
        session.runtime.acknowledge(params["cellId"])
        return {}


def _recorded_tools(record: Any) -> dict[str, Any]:
    """``{"tools": [...]}``: the wire form of the tools a recorded cell was created with (so
    that a client that reattaches can hand its delegate the full definitions); empty when the
    record cannot say."""
    from codemode.cell.journal import request_from_json

    try:
        request, _ = request_from_json(record.request)
    except Exception:  # a record this codemode cannot read: the client falls back to names
        logger.debug("cell %s: its recorded tools are unreadable", record.cell_id, exc_info=True)
        return {}
    return {"tools": [tool_to_wire(t) for t in request.tools]}


async def _end_opened(opening: asyncio.Task[ServedRuntime], *, suspend: bool) -> None:
    """A ``session/open`` was cancelled while ``opening`` opened its runtime: once that open
    settles, suspend or shut down what it opened (docs/protocol.md)."""
    await asyncio.wait({opening})
    if opening.cancelled() or opening.exception() is not None:
        return  # nothing was opened
    runtime = opening.result()
    try:
        await (runtime.suspend() if suspend else runtime.shutdown())
    except Exception:
        logger.warning("ending a session opened for a cancelled session/open failed", exc_info=True)


def _cancel_task(request: IncomingRequest) -> None:
    if request.task is not None:
        request.task.cancel()


def _cancel_quietly(task: asyncio.Future[Any]) -> None:
    task.cancel()


async def _value(value: Any) -> Any:
    return value


async def _outcome(record: ObservationRecord) -> dict[str, Any]:
    task = record.task
    if record.pending and task is not None:
        await asyncio.wait({task})
    return record.outcome()


# ---------------------------------------------------------------------------- the server


class ProtocolServer:
    """Serves protocol connections; every session it opens is limited by ``ceilings``.

    One object serves any number of connections (one stdio connection for ``codemode serve``,
    one per WebSocket with ``--listen``). :meth:`serve_connection` returns when its connection
    has ended and all its sessions are shut down.
    """

    def __init__(
        self,
        ceilings: CellLimits | None = None,
        *,
        engine_factory: Callable[[], Engine] | None = None,
        engine_name: str = ENGINES[0],
        policy: ServePolicy | None = None,
        store: SessionStore | None = None,
        source: SessionSource | None = None,
    ) -> None:
        self.ceilings = ceilings or CellLimits()
        # With a store, sessions are durable (docs/durability.md, "Fronts"): a connection that
        # ends suspends them, and session/open with a sessionId reattaches.
        self.store = store
        self._held: dict[str, _ServedSession] = {}  # durable sessions served by this process
        self._reserved: set[str] = set()  # ids of durable sessions being opened now
        self.source = source  # None: every session is a SessionRuntime in this process
        self.engine_factory = engine_factory
        self.engine_name = engine_name  # what session/open offers ("v8", "python")
        self.policy = policy or ServePolicy()
        self._connections: set[_Connection] = set()
        self._leaked_cells = 0
        self._admitting = 0
        # A fault drill for tests: with CODEMODE_TEST_KILL_AT_DELIVERY=N, this process kills
        # itself (SIGKILL) right after the Nth numbered delivery is recorded in the store, before
        # its answer is written (docs/protocol.md, "Re-delivery").
        drill = os.environ.get("CODEMODE_TEST_KILL_AT_DELIVERY", "")
        self._kill_at_delivery = int(drill) if drill.isdigit() else None
        self._deliveries = 0

    def delivery_recorded(self) -> None:
        """A numbered observation's delivery was recorded (the fault drill counts them)."""
        self._deliveries += 1
        if self._kill_at_delivery is not None and self._deliveries == self._kill_at_delivery:
            logger.error("the fault drill CODEMODE_TEST_KILL_AT_DELIVERY ends this process")
            os.kill(os.getpid(), signal.SIGKILL)

    def _open_sessions(self) -> list[_ServedSession]:
        return [s for c in self._connections for s in c.sessions.values() if s.runtime.is_alive]

    def check_session_cap(self) -> None:
        """Raise ``EngineError`` when the server has ``policy.max_sessions`` open sessions."""
        cap = self.policy.max_sessions
        if len(self._open_sessions()) >= cap:
            raise EngineError(
                f"the server has too many open sessions ({cap}); shut one down, or start the "
                "server with a larger --max-sessions"
            )

    @contextlib.contextmanager
    def cell_admission(self) -> Iterator[None]:
        """Count one cell being created; raise ``EngineError`` when the server already has
        ``policy.max_live_cells_total`` live cells (admissions in progress included)."""
        cap = self.policy.max_live_cells_total
        live = sum(len(s.live_cells()) for s in self._open_sessions()) + self._admitting
        if live >= cap:
            raise EngineError(
                f"the server has too many live cells ({cap}); terminate some, or start the "
                "server with a larger --max-live-cells-total"
            )
        self._admitting += 1
        try:
            yield
        finally:
            self._admitting -= 1

    @property
    def durable_store(self) -> SessionStore | None:
        """The store of this server's durable sessions: ``--store``'s, or its source's (``None``:
        sessions end with their connection)."""
        return self.store if self.source is None else self.source.store

    def _hold(self, session: _ServedSession) -> None:
        """Serve the durable session ``session`` in this process (its id was reserved while it
        opened, so no other session of this process holds it)."""
        assert session.session_id not in self._held
        self._held[session.session_id] = session

    def _reserve(self, session_id: str) -> None:
        """Mark ``session_id`` as being opened (``SessionBusy`` if it is already, or if a
        connection of this process holds it)."""
        if session_id in self._reserved or session_id in self._held:
            raise SessionBusy(session_id)
        self._reserved.add(session_id)

    def _unreserve(self, session_id: str) -> None:
        self._reserved.discard(session_id)

    def _let_go(self, session: _ServedSession) -> None:
        if self._held.get(session.session_id) is session:
            del self._held[session.session_id]

    async def _wait_released(self, session_id: str) -> None:
        """Return once this process no longer serves ``session_id``: at once if it does not,
        after its suspension if its connection is ending; ``SessionBusy`` if a live connection
        (this one included) holds it."""
        while (held := self._held.get(session_id)) is not None:
            connection = held.connection
            if not held.ended and (connection is None or connection.live):
                raise SessionBusy(session_id)
            logger.info(
                "session %s: waiting for its suspension by the ended connection", session_id
            )
            await held.released.wait()

    async def serve_connection(self, transport: Transport) -> str:
        """Serve one connection until it ends; returns why it ended."""
        connection = _Connection(self, transport)
        self._connections.add(connection)
        return await connection.run()

    def _ended(self, connection: _Connection) -> None:
        self._connections.discard(connection)
        for session in connection.sessions.values():
            if session.durable:
                continue  # suspended: its cells stay in the store, not in this process
            live = session.live_cells()
            if live:  # shutdown returns only when every cell closed: this would be a bug
                logger.error(
                    "session %s ended with live cells: %s", session.session_id, ", ".join(live)
                )
                self._leaked_cells += len(live)

    def stats(self) -> dict[str, int]:
        """Diagnostics: open connections and sessions, live cells in them, cells found still
        live when their connection ended (always 0 unless there is a bug), and the clients'
        requests running now."""
        open_sessions = [s for c in self._connections for s in c.sessions.values()]
        return {
            "connections": len(self._connections),
            "sessions": len(open_sessions),
            "liveCells": sum(len(s.live_cells()) for s in open_sessions),
            "liveCellsOfEndedSessions": self._leaked_cells,
            "pendingRequests": sum(c.endpoint.incoming_count() for c in self._connections),
        }

    async def close(self) -> None:
        """Stop serving: every connection's sessions are shut down and its transport closed."""
        connections = list(self._connections)
        tasks = [c.task for c in connections if c.task is not None and not c.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(
            *tasks,
            *(c.close("the server is stopping") for c in connections),
            return_exceptions=True,
        )


# ---------------------------------------------------------------------------- entry points


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6); ``:PORT`` binds 127.0.0.1; port 0 picks a free
    port. The same forms as ``codemode mcp --http`` (:mod:`codemode.cli_common`)."""
    return parse_host_port(listen, "--listen")


def _stop_on_signals(stop: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop)


async def _start_store(options: StoreOptions | None) -> tuple[bool, SessionStore | None]:
    """Open the store of ``--store PATH_OR_DSN`` (if any) and reach it once, so that a server
    whose store is unreachable, refused or of a newer schema says so at its start instead of at
    its first ``session/open``: ``(False, None)``, with the reason on stderr."""
    if options is None:
        return True, None
    store = options.open()
    try:
        await store.get_lease("-")  # a read: connects, migrates the schema forward
    except Exception as exc:
        logger.debug("the session store did not open", exc_info=True)
        if isinstance(exc, ImportError):
            text = f"a PostgreSQL store needs pip install 'codemode[postgres]' ({exc})"
        else:
            text = str(exc)
        print(f"codemode serve: cannot start: {text}", file=sys.stderr, flush=True)
        await _close_store(store)
        return False, None
    return True, store


async def _close_store(store: SessionStore | None) -> None:
    if store is not None:
        try:
            await store.close()
        except Exception:
            logger.exception("closing the session store failed")


async def _start_source(source: SessionSource | None) -> bool:
    """Start ``source`` (if any); False, with the reason on stderr, when it cannot start."""
    if source is None:
        return True
    try:
        await source.start()
    except Exception as exc:
        logger.debug("the session source did not start", exc_info=True)
        print(f"codemode serve: cannot start: {exc}", file=sys.stderr, flush=True)
        return False
    logger.info("sessions run on %s", source.description)
    return True


async def _close_source(source: SessionSource | None) -> None:
    if source is not None:
        try:
            await source.close()
        except Exception:
            logger.warning("closing the session source failed", exc_info=True)


async def serve_stdio(
    ceilings: CellLimits,
    engine: str = "v8",
    policy: ServePolicy | None = None,
    store: StoreOptions | None = None,
    source: SessionSource | None = None,
) -> int:
    """Serve one connection on stdin/stdout until stdin closes (or SIGTERM/SIGINT); its sessions
    are shut down (durable ones, with ``store``, suspended) before returning 0. ``engine`` names
    the sessions' engine (``v8``, ``python``); with ``source``, sessions come from it instead
    (started first: 1 if it cannot start)."""
    transport = await open_stdio()
    if not await _start_source(source):
        await transport.close()
        return EXIT_FAILED
    started, session_store = await _start_store(store)
    if not started:
        await _close_source(source)
        await transport.close()
        return EXIT_FAILED
    server = ProtocolServer(
        ceilings,
        engine_factory=engine_factory(engine),
        engine_name=wire_engine_name(engine),
        policy=policy,
        store=session_store,
        source=source,
    )
    task = asyncio.ensure_future(server.serve_connection(transport))
    _stop_on_signals(lambda: _cancel_quietly(task))
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        await _close_source(source)
        await _close_store(session_store)
    return EXIT_OK


async def serve_websocket(
    host: str,
    port: int,
    ceilings: CellLimits,
    *,
    token: str | None = None,
    ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
    engine: str = "v8",
    policy: ServePolicy | None = None,
    store: StoreOptions | None = None,
    source: SessionSource | None = None,
) -> int:
    """Serve WebSocket connections on ``ws://host:port/`` until ``stop`` is set (or SIGTERM or
    SIGINT); then every session is shut down (durable ones, with ``store``, suspended). With
    ``token``, the opening handshake must carry ``Authorization: Bearer <token>`` (else HTTP
    401). ``ready`` receives the URL once bound. ``engine`` names the sessions' engine (``v8``,
    ``python``); with ``source``, sessions come from it instead (started before listening: 1 if
    it cannot start)."""
    if not await _start_source(source):
        return EXIT_FAILED
    try:
        return await _serve_websocket(
            host, port, ceilings, token, ready, stop, engine, policy, store, source
        )
    finally:
        await _close_source(source)


async def _serve_websocket(
    host: str,
    port: int,
    ceilings: CellLimits,
    token: str | None,
    ready: Callable[[str], None] | None,
    stop: asyncio.Event | None,
    engine: str,
    policy: ServePolicy | None,
    store: StoreOptions | None,
    source: SessionSource | None,
) -> int:
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.http11 import Request, Response

    started, session_store = await _start_store(store)
    if not started:
        return EXIT_FAILED
    server = ProtocolServer(
        ceilings,
        engine_factory=engine_factory(engine),
        engine_name=wire_engine_name(engine),
        policy=policy,
        store=session_store,
        source=source,
    )
    stop_event = stop or asyncio.Event()
    expected = f"Bearer {token}".encode() if token is not None else None
    allowed_origins = server.policy.allow_origins

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        if request.path.split("?", 1)[0] != "/":
            return connection.respond(HTTPStatus.NOT_FOUND, "codemode serves ws://HOST:PORT/\n")
        origin = request.headers.get("Origin")
        if not origin_allowed(origin, allowed_origins):
            # A web page (browsers always send Origin) must not drive cells (docs/protocol.md).
            logger.warning(
                "refused a connection from %s: Origin %r is not allowed (see --allow-origin)",
                connection.remote_address,
                origin,
            )
            return connection.respond(
                HTTPStatus.FORBIDDEN, f"Origin {origin} is not allowed (see --allow-origin)\n"
            )
        if expected is not None:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                logger.warning(
                    "refused a connection from %s: bad or missing bearer token",
                    connection.remote_address,
                )
                response = connection.respond(
                    HTTPStatus.UNAUTHORIZED, "missing or invalid bearer token\n"
                )
                response.headers["WWW-Authenticate"] = "Bearer"
                return response
        return None

    async def handler(websocket: ServerConnection) -> None:
        peer = websocket.remote_address
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        await server.serve_connection(WebSocketTransport(websocket, f"ws {where}"))

    async with serve(
        handler,
        host,
        port,
        process_request=process_request,
        max_size=MAX_FRAME_BYTES,
        compression=None,
    ) as ws_server:
        bound = ws_server.sockets[0].getsockname() if ws_server.sockets else (host, port)
        shown = f"[{bound[0]}]" if ":" in str(bound[0]) else str(bound[0])
        url = f"ws://{shown}:{bound[1]}/"
        print(f"codemode serve: listening on {url}", file=sys.stderr, flush=True)
        if ready is not None:
            ready(url)
        _stop_on_signals(stop_event.set)
        await stop_event.wait()
        await server.close()
        await _close_store(session_store)
        ws_server.close()
        await ws_server.wait_closed()
    return EXIT_OK


def _configure_logging() -> None:
    configure_logging()  # as `codemode mcp` and `codemode run` do


def serve_main(
    listen: str | None,
    token_env: str | None,
    limits: CellLimits,
    engine: str = "v8",
    policy: ServePolicy | None = None,
    store: StoreOptions | None = None,
    source: SessionSource | None = None,
) -> int:
    """``codemode serve``: stdio (default) or WebSocket (``listen``), with durable sessions in
    ``store`` when given (``--store PATH``); returns the exit status
    (0 after a clean end, 1 when it cannot listen, 2 for a usage error: among them a
    non-loopback ``listen`` without a token or ``--no-auth``). Logs go to stderr as
    :func:`codemode.cli_common.configure_logging` sets up (``CODEMODE_LOG_LEVEL``, default INFO)."""
    _configure_logging()
    policy = policy or ServePolicy()
    token: str | None = None
    if token_env is not None:
        if listen is None:
            print("codemode serve: --token-env needs --listen", file=sys.stderr)
            return EXIT_USAGE
        token = os.environ.get(token_env)
        if token is None:
            print(
                f"codemode serve: the environment variable {token_env} is not set", file=sys.stderr
            )
            return EXIT_USAGE
        if not token:
            print(f"codemode serve: the environment variable {token_env} is empty", file=sys.stderr)
            return EXIT_USAGE
    if listen is None:
        return asyncio.run(serve_stdio(limits, engine, policy, store, source))
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        print(f"codemode serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if token is None and not is_loopback(host) and not policy.no_auth:
        print(
            f"codemode serve: refusing to listen on {host} (not a loopback address) without a "
            "token: give --token-env NAME, or --no-auth to accept any client that can reach it",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        return asyncio.run(
            serve_websocket(
                host,
                port,
                limits,
                token=token,
                engine=engine,
                policy=policy,
                store=store,
                source=source,
            )
        )
    except OSError as exc:
        print(f"codemode serve: cannot listen on {listen}: {exc}", file=sys.stderr)
        return EXIT_FAILED
