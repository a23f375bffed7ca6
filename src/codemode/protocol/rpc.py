"""A JSON-RPC 2.0 endpoint over a frame transport, used by both the server and the client.

Both sides send requests (docs/protocol.md). An :class:`Endpoint`:

- reads frames in order and answers what is malformed: a frame that is not JSON (or not UTF-8)
  with ``-32700`` and id ``null``, a batch or anything else that is not a request, notification
  or response with ``-32600``, a request whose id is still pending with ``-32600``; whitespace-only
  lines are skipped; the connection goes on after each;
- hands each request to its :class:`Dispatcher` in arrival order and runs it as its own task, so
  requests run concurrently and are answered in any order; a
  :class:`~codemode.errors.CodeModeError` becomes ``-32000`` (docs/protocol.md);
- handles ``$/cancelRequest``: a pending request whose method is cancellable is stopped (its
  dispatcher decides how, through :attr:`IncomingRequest.on_cancel`) and answered ``-32800``; a
  cancel for a finished or unknown request is ignored;
- matches responses to its own requests; a response to an unknown id is logged and ignored (quietly
  for a request it abandoned itself);
- on its own requests: :meth:`Endpoint.request` sends ``$/cancelRequest`` when its caller is
  cancelled, and fails with :class:`ConnectionLost` when the connection ends.

The endpoint does not close anything by itself when the input ends; :meth:`Endpoint.run` returns
the reason and the owner shuts down in the order its side needs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeGuard

from codemode.errors import CodeModeError
from codemode.protocol.codec import error_to_wire
from codemode.protocol.messages import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    PARSE_ERROR,
    REQUEST_CANCELLED,
)
from codemode.protocol.transport import FrameTooLarge, Transport, TransportClosed
from codemode.textsafe import valid_json

__all__ = [
    "ConnectionLost",
    "Dispatcher",
    "Endpoint",
    "IncomingRequest",
    "OutgoingRequest",
    "PreEncoded",
    "RpcError",
]

logger = logging.getLogger("codemode.protocol.rpc")

RequestId = str | int

# Frames larger than this are parsed on a worker thread, so the event loop keeps running.
_THREAD_PARSE_BYTES = 1 << 20
# Requests of one peer running at once; more are answered with an internal error.
MAX_IN_FLIGHT = 16384
# Ids of requests we abandoned whose late responses are dropped without a warning.
_ABANDONED_MEMORY = 4096
MAX_QUEUED_BYTES = 16 * 1024 * 1024
"""Default bound on the bytes of messages waiting to be written to one peer: above it the endpoint
stops reading that peer's frames (backpressure) until its queue drains below half of it."""
MAX_FRAME_CONTAINERS = 1_000_000
"""The most JSON objects and arrays (counted as ``{`` and ``[`` bytes, strings included) a frame may
hold; a frame over it is answered ``-32600`` without being parsed (a Python container costs ~25
times its JSON text)."""


class RpcError(Exception):
    """A JSON-RPC error response, received or to be sent."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_wire(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class ConnectionLost(Exception):
    """The connection ended before a response arrived (or before a request could be sent)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class PreEncoded:
    """A result already encoded as JSON text, embedded in the response as is."""

    text: str


@dataclass(eq=False)
class IncomingRequest:
    """A request from the peer. ``on_cancel`` is what a ``$/cancelRequest`` does (``None``:
    nothing, the request runs to completion); dispatchers may replace it while it runs."""

    id: RequestId
    method: str
    on_cancel: Callable[[], None] | None = None
    task: asyncio.Task[None] | None = None
    cancel_requested: bool = False
    started: bool = False
    responding: bool = False
    coro: Coroutine[Any, Any, Any] | None = field(default=None, repr=False)


@dataclass(eq=False)
class OutgoingRequest:
    """One of our requests: its id and the future of its result (``RpcError`` on an error)."""

    id: RequestId
    method: str
    future: asyncio.Future[Any] = field(repr=False)


class Dispatcher(Protocol):
    """The side-specific part: what requests and notifications do."""

    def dispatch_request(self, request: IncomingRequest, params: Any) -> Coroutine[Any, Any, Any]:
        """Called in arrival order; returns the coroutine computing the result (run as a task),
        or raises :class:`RpcError` to answer at once. May set ``request.on_cancel``."""
        ...

    def dispatch_notification(self, method: str, params: Any) -> None:
        """A notification other than ``$/cancelRequest``; never answered."""
        ...


_FIRST_BYTE = re.compile(rb"[ \t\r\n]*(.)", re.DOTALL)
_FIRST_CHAR = re.compile(r"[ \t\r\n]*(.)", re.DOTALL)


def _valid_id(value: Any) -> TypeGuard[RequestId]:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse(text: str) -> Any:
    return json.loads(text, parse_constant=_reject_constant)


def encode(message: Any) -> str:
    """The compact JSON text of a message, in ASCII. This is the protocol's one boundary for
    valid Unicode (:mod:`codemode.textsafe`): a lone surrogate in any string becomes U+FFFD."""
    text = json.dumps(message, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    if "\\ud" in text:  # an escaped surrogate: maybe a lone one (json.dumps writes lower case)
        cleaned = valid_json(message)
        if cleaned is not message:
            text = json.dumps(cleaned, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text


class Endpoint:
    """One side of one connection. All methods run on the event loop that created it."""

    def __init__(
        self,
        transport: Transport,
        dispatcher: Dispatcher,
        *,
        name: str,
        id_prefix: str | None = None,
    ) -> None:
        self.name = name
        self._transport = transport
        self._dispatcher = dispatcher
        self._id_prefix = id_prefix
        self._next_id = 0
        self._incoming: dict[RequestId, IncomingRequest] = {}
        self._outgoing: dict[RequestId, OutgoingRequest] = {}
        self._abandoned: deque[RequestId] = deque(maxlen=_ABANDONED_MEMORY)
        self._abandoned_set: set[RequestId] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._loop = asyncio.get_running_loop()
        self.max_queued_bytes = MAX_QUEUED_BYTES
        self._queued_bytes = 0
        self._queue_drained = asyncio.Event()
        self._queue_drained.set()
        # Set by the owner while the peer has not completed its handshake: a larger frame is
        # answered (id null) without being parsed.
        self.unready_frame_limit: int | None = None
        self.unready_error: tuple[int, str] = (INVALID_REQUEST, "frame refused")
        self.closing = False
        # Why the input ended (run returned); sending may still work (a half-closed pipe).
        self.input_end_reason: str | None = None
        # Why sending stopped: set by fail_outgoing or close; no request can start afterwards.
        self.close_reason: str | None = None

    # ------------------------------------------------------------------ reading

    async def run(self) -> str:
        """Read and handle frames until the input ends; returns why it ended. Does not close."""
        reason = "the connection closed"
        while True:
            if not self._queue_drained.is_set():
                # Backpressure: the peer does not read what we send; stop reading its frames.
                logger.debug("%s: %d bytes queued; pausing input", self.name, self._queued_bytes)
                await self._queue_drained.wait()
            try:
                frame = await self._transport.receive()
            except FrameTooLarge as exc:
                reason = str(exc)
                logger.warning("%s: %s; closing the connection", self.name, exc)
                break
            except (ConnectionError, OSError, TransportClosed) as exc:
                reason = f"transport error: {exc}"
                break
            if frame is None:
                reason = "end of input"
                break
            await self._frame(frame)
            # Let the request just started run up to its first wait, so that an answer ready at
            # once counts in the queued bytes before the next frame is read (backpressure).
            await asyncio.sleep(0)
        self.input_end_reason = reason
        return reason

    async def _frame(self, frame: bytes | str) -> None:
        refusal = self._refuse_shape(frame)
        if refusal is not None:
            await self._send_error(None, *refusal)
            return
        if isinstance(frame, bytes):
            try:
                text = frame.decode("utf-8")
            except UnicodeDecodeError as exc:
                await self._send_error(None, PARSE_ERROR, f"Parse error: invalid UTF-8 ({exc})")
                return
        else:
            text = frame
        if not text.strip():
            return
        try:
            if len(text) > _THREAD_PARSE_BYTES:
                message = await asyncio.to_thread(_parse, text)
            else:
                message = _parse(text)
        except (ValueError, RecursionError) as exc:
            await self._send_error(None, PARSE_ERROR, f"Parse error: {exc}")
            return
        await self._message(message)

    def _refuse_shape(self, frame: bytes | str) -> tuple[int, str] | None:
        """Why ``frame`` is answered without being parsed, if it is: a batch (an array), a frame
        over :attr:`unready_frame_limit` before the handshake, or one with more than
        :data:`MAX_FRAME_CONTAINERS` containers. Parsing any of them could cost far more memory
        than the frame's size."""
        limit = self.unready_frame_limit
        if limit is not None and len(frame) > limit:
            code, message = self.unready_error
            return code, f"{message} (a frame of {len(frame)} bytes before the handshake)"
        if len(frame) < 1024:
            return None
        if isinstance(frame, bytes):
            first = _FIRST_BYTE.match(frame)
            opening = first.group(1) if first else b""
            containers = frame.count(b"{") + frame.count(b"[")
            batch = opening == b"["
        else:
            first_text = _FIRST_CHAR.match(frame)
            containers = frame.count("{") + frame.count("[")
            batch = first_text is not None and first_text.group(1) == "["
        if batch:
            return INVALID_REQUEST, "batch requests are not supported"
        if containers > MAX_FRAME_CONTAINERS:
            return (
                INVALID_REQUEST,
                f"the frame may hold {containers} JSON objects or arrays; at most "
                f"{MAX_FRAME_CONTAINERS} are accepted",
            )
        return None

    async def _message(self, message: Any) -> None:
        if isinstance(message, list):
            await self._send_error(None, INVALID_REQUEST, "batch requests are not supported")
            return
        if not isinstance(message, dict):
            await self._send_error(None, INVALID_REQUEST, "a message must be a JSON object")
            return
        has_id = "id" in message
        msg_id = message.get("id")
        reply_id = msg_id if _valid_id(msg_id) else None
        if "method" in message:
            method = message["method"]
            params = message.get("params")
            if message.get("jsonrpc") != "2.0":
                await self._send_error(reply_id, INVALID_REQUEST, 'jsonrpc must be "2.0"')
            elif not isinstance(method, str):
                await self._send_error(reply_id, INVALID_REQUEST, "method must be a string")
            elif has_id and reply_id is None:
                await self._send_error(None, INVALID_REQUEST, "id must be a string or an integer")
            elif "params" in message and not isinstance(params, dict | list):
                await self._send_error(
                    reply_id, INVALID_REQUEST, "params must be an object or an array"
                )
            elif not has_id:
                self._notification(method, params)
            else:
                assert reply_id is not None
                await self._request(reply_id, method, params)
            return
        if has_id and ("result" in message or "error" in message):
            self._response(message)
            return
        await self._send_error(
            reply_id, INVALID_REQUEST, "not a JSON-RPC request, notification or response"
        )

    def _notification(self, method: str, params: Any) -> None:
        if method == "$/cancelRequest":
            self._cancel_incoming(params)
            return
        try:
            self._dispatcher.dispatch_notification(method, params)
        except Exception:
            logger.exception("%s: notification %s failed", self.name, method)

    async def _request(self, request_id: RequestId, method: str, params: Any) -> None:
        if request_id in self._incoming:
            await self._send_error(
                request_id,
                INVALID_REQUEST,
                f"duplicate request id {json.dumps(request_id)}: a request with this id is "
                "still pending",
            )
            return
        if method == "$/cancelRequest":
            self._cancel_incoming(params)
            await self._send_quietly({"jsonrpc": "2.0", "id": request_id, "result": {}})
            return
        if len(self._incoming) >= MAX_IN_FLIGHT:
            await self._send_error(
                request_id, INTERNAL_ERROR, f"too many concurrent requests ({MAX_IN_FLIGHT})"
            )
            return
        request = IncomingRequest(request_id, method)
        try:
            coro = self._dispatcher.dispatch_request(request, params)
        except RpcError as exc:
            await self._send_quietly({"jsonrpc": "2.0", "id": request_id, "error": exc.to_wire()})
            return
        except CodeModeError as exc:
            await self._send_quietly(
                {"jsonrpc": "2.0", "id": request_id, "error": error_to_wire(exc)}
            )
            return
        self._incoming[request_id] = request
        request.coro = coro
        request.task = self._loop.create_task(
            self._run_request(request, coro), name=f"{self.name}-{method}-{request_id}"
        )

    def _cancel_incoming(self, params: Any) -> None:
        if not isinstance(params, dict) or not _valid_id(params.get("id")):
            logger.debug("%s: ignoring a $/cancelRequest without a valid id", self.name)
            return
        request = self._incoming.get(params["id"])
        if request is None or request.task is None or request.task.done():
            return
        if request.cancel_requested or request.responding:
            return
        request.cancel_requested = True
        logger.debug("%s: cancel of %s %s", self.name, request.method, request.id)
        # A request whose task has not started yet sees the flag when it starts (cancelling the
        # task now would skip its body, and so its answer).
        if request.started and request.on_cancel is not None:
            request.on_cancel()

    async def _run_request(self, request: IncomingRequest, coro: Coroutine[Any, Any, Any]) -> None:
        response: dict[str, Any] | str
        request.started = True
        try:
            try:
                if request.cancel_requested and request.on_cancel is not None:
                    request.on_cancel()  # a cancel that arrived before the task started
                result = await coro
            except RpcError as exc:
                response = {"jsonrpc": "2.0", "id": request.id, "error": exc.to_wire()}
            except CodeModeError as exc:
                response = {"jsonrpc": "2.0", "id": request.id, "error": error_to_wire(exc)}
            except asyncio.CancelledError:
                if self.closing:
                    raise
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                response = {
                    "jsonrpc": "2.0",
                    "id": request.id,
                    "error": {"code": REQUEST_CANCELLED, "message": "request cancelled"},
                }
            except Exception as exc:
                logger.exception("%s: %s %s failed", self.name, request.method, request.id)
                response = {
                    "jsonrpc": "2.0",
                    "id": request.id,
                    "error": {
                        "code": INTERNAL_ERROR,
                        "message": f"internal error: {type(exc).__name__}: {exc}",
                    },
                }
            else:
                if isinstance(result, PreEncoded):
                    response = (
                        f'{{"jsonrpc":"2.0","id":{encode(request.id)},"result":{result.text}}}'
                    )
                else:
                    response = {"jsonrpc": "2.0", "id": request.id, "result": result}
            request.responding = True
            await self._send_quietly(response)
        finally:
            if self._incoming.get(request.id) is request:
                del self._incoming[request.id]

    def _response(self, message: dict[str, Any]) -> None:
        msg_id = message.get("id")
        if not _valid_id(msg_id):
            logger.warning("%s: ignoring a response with id %r", self.name, msg_id)
            return
        pending = self._outgoing.pop(msg_id, None)
        if pending is None:
            if msg_id in self._abandoned_set:
                logger.debug("%s: late response to abandoned request %r", self.name, msg_id)
            else:
                logger.warning(
                    "%s: ignoring a response to unknown request id %r", self.name, msg_id
                )
            return
        if pending.future.done():
            return
        if "error" in message:
            error = message["error"]
            if (
                isinstance(error, dict)
                and isinstance(error.get("code"), int)
                and isinstance(error.get("message"), str)
            ):
                exc = RpcError(error["code"], error["message"], error.get("data"))
            else:
                exc = RpcError(INTERNAL_ERROR, f"malformed error response: {encode(error)[:200]}")
            pending.future.set_exception(exc)
        else:
            pending.future.set_result(message["result"])

    # ------------------------------------------------------------------ sending

    async def _send_error(self, request_id: RequestId | None, code: int, message: str) -> None:
        logger.debug("%s: answering %s: %s", self.name, code, message)
        await self._send_quietly(
            {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
        )

    async def _send_quietly(self, message: dict[str, Any] | str) -> None:
        """Send, ignoring a closed transport; an unencodable response becomes an error."""
        if isinstance(message, str):
            text = message
        else:
            try:
                text = encode(message)
            except (TypeError, ValueError, RecursionError) as exc:
                logger.error("%s: cannot encode a message: %s", self.name, exc)
                text = encode(
                    {
                        "jsonrpc": "2.0",
                        "id": message.get("id"),
                        "error": {
                            "code": INTERNAL_ERROR,
                            "message": f"internal error: the result is not JSON ({exc})",
                        },
                    }
                )
        try:
            await self._send_text(text)
        except TransportClosed as exc:
            logger.debug("%s: dropped a message: %s", self.name, exc)

    async def _send_text(self, text: str) -> None:
        """Send one frame, counting it in the bytes queued for the peer while it waits."""
        size = len(text)
        self._queued_bytes += size
        if self._queued_bytes > self.max_queued_bytes:
            self._queue_drained.clear()
        try:
            await self._transport.send(text)
        finally:
            self._queued_bytes -= size
            if self._queued_bytes <= self.max_queued_bytes // 2:
                self._queue_drained.set()

    @property
    def queued_bytes(self) -> int:
        """Bytes of messages waiting to be written to the peer."""
        return self._queued_bytes

    async def notify(self, method: str, params: Any) -> None:
        """Send a notification (ignored if the connection is gone)."""
        await self._send_quietly({"jsonrpc": "2.0", "method": method, "params": params})

    async def start_request(self, method: str, params: Any) -> OutgoingRequest:
        """Send a request and return it; await its ``future`` for the result. Raises
        :class:`ConnectionLost` if the connection is gone."""
        if self.close_reason is not None:
            raise ConnectionLost(self.close_reason)
        self._next_id += 1
        request_id: RequestId = (
            self._next_id if self._id_prefix is None else f"{self._id_prefix}{self._next_id}"
        )
        out = OutgoingRequest(request_id, method, self._loop.create_future())
        self._outgoing[request_id] = out
        text = encode({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        try:
            await self._send_text(text)
        except TransportClosed as exc:
            self._outgoing.pop(request_id, None)
            raise ConnectionLost(self.close_reason or str(exc)) from exc
        except asyncio.CancelledError:
            self.abandon(request_id)
            raise
        return out

    async def request(self, method: str, params: Any, *, cancel: bool = True) -> Any:
        """Send a request and wait for its result. If the caller is cancelled, the request is
        abandoned (its late response dropped) and, with ``cancel``, the peer gets a
        ``$/cancelRequest``. Raises :class:`RpcError` or :class:`ConnectionLost`."""
        out = await self.start_request(method, params)
        try:
            return await out.future
        except asyncio.CancelledError:
            self.abandon(out.id, send_cancel=cancel)
            raise

    def abandon(self, request_id: RequestId, *, send_cancel: bool = True) -> None:
        """Stop waiting for one of our requests; optionally tell the peer to cancel it."""
        out = self._outgoing.pop(request_id, None)
        if out is None:
            return
        if not out.future.done():
            out.future.cancel()
        if len(self._abandoned) == self._abandoned.maxlen:
            self._abandoned_set.discard(self._abandoned[0])
        self._abandoned.append(request_id)
        self._abandoned_set.add(request_id)
        if send_cancel:
            self.send_cancel(request_id)

    def send_cancel(self, request_id: RequestId) -> None:
        """Send ``$/cancelRequest`` for one of our requests, in the background."""
        if self.close_reason is not None:
            return
        self.background(self.notify("$/cancelRequest", {"id": request_id}))

    def background(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the endpoint keeps a reference to."""
        task = self._loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # ------------------------------------------------------------------ ending

    def fail_outgoing(self, reason: str) -> None:
        """Fail every pending request of ours with :class:`ConnectionLost`."""
        if self.close_reason is None:
            self.close_reason = reason
        pending = list(self._outgoing.values())
        self._outgoing.clear()
        for out in pending:
            if not out.future.done():
                out.future.set_exception(ConnectionLost(reason))
                # Retrieved here so an unawaited future does not log "never retrieved".
                out.future.exception()

    async def drain_incoming(self, grace: float = 5.0) -> None:
        """Wait (at most ``grace`` seconds) for the peer's running requests to finish and be
        answered (the input has ended, the output may still be open)."""
        tasks = [r.task for r in self._incoming.values() if r.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)

    async def cancel_incoming(self, grace: float = 5.0) -> None:
        """Cancel the peer's requests still running (they are not answered) and wait for them."""
        self.closing = True
        tasks = [r.task for r in self._incoming.values() if r.task is not None]
        for request in self._incoming.values():
            if not request.started and request.coro is not None:
                request.coro.close()  # never started: no "never awaited" warning
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=grace)

    def pending_futures(self) -> set[asyncio.Future[Any]]:
        """The futures of our requests still waiting for an answer."""
        return {out.future for out in self._outgoing.values() if not out.future.done()}

    def incoming_count(self) -> int:
        """How many of the peer's requests are running."""
        return len(self._incoming)

    async def close(self) -> None:
        """Close the transport (after the owner has shut its side down)."""
        self.closing = True
        if self.close_reason is None:
            self.close_reason = "closed"
        pending = [t for t in self._background if not t.done()]
        if pending:  # let cancel notices already issued reach the peer (bounded)
            await asyncio.wait(pending, timeout=1.0)
        await self._transport.close()
        for task in list(self._background):
            if not task.done():
                task.cancel()
