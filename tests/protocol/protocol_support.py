"""Helpers of the protocol tests: a raw JSON-RPC client, server processes, session harnesses.

Imported by the ``test_protocol_*`` modules (``tests/protocol`` is on ``sys.path`` under pytest's
default import mode; ``tests/`` has no ``__init__`` files and only one ``conftest``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from codemode import CellLimits, RemoteSession, SessionRuntime
from codemode.protocol.server import ProtocolServer
from codemode.protocol.transport import LineTransport, memory_pair

SERVE = [sys.executable, "-m", "codemode", "serve"]
HANG = 20.0  # a generous bound for anything that should happen "soon"


async def eventually(condition: Callable[[], bool], bound: float = 5.0) -> None:
    """Wait (bounded) until ``condition()`` holds."""
    deadline = time.monotonic() + bound
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


class RawError(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("message"))
        self.code = error.get("code")
        self.message: Any = error.get("message")
        self.data = error.get("data")


class RawClient:
    """Speaks raw JSON-RPC lines to a server: sends any bytes, sorts what comes back.

    Responses to our ids resolve :meth:`request`; requests from the server (``tool/invoke``,
    ``cell/notify``, ``$/cancelRequest``) queue in :attr:`server_messages`; responses with an id we
    did not send (``null`` for parse errors) queue in :attr:`orphans`.
    """

    def __init__(self, transport: LineTransport) -> None:
        self.transport = transport
        self.pending: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self.server_messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.orphans: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.all: list[dict[str, Any]] = []
        self.eof = asyncio.Event()
        self._next = 0
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            while True:
                line = await self.transport.receive()
                if line is None:
                    break
                message = json.loads(line)
                self.all.append(message)
                if "method" in message:
                    await self.server_messages.put(message)
                    continue
                future = self.pending.pop(message.get("id"), None)
                if future is not None and not future.done():
                    future.set_result(message)
                else:
                    await self.orphans.put(message)
        finally:
            self.eof.set()
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("the server closed the connection"))

    def new_id(self) -> int:
        self._next += 1
        return self._next

    async def send(self, message: Any) -> None:
        """A dict is sent as one JSON line, a str as a line, bytes as they are."""
        if isinstance(message, bytes):
            await self.transport.send_raw(message)
        elif isinstance(message, str):
            await self.transport.send_raw(message.encode() + b"\n")
        else:
            await self.transport.send_raw(json.dumps(message).encode() + b"\n")

    def expect(self, request_id: Any) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        return future

    async def request(
        self, method: str, params: Any = None, *, request_id: Any = None, bound: float = HANG
    ) -> dict[str, Any]:
        """Send a request and return the whole response message."""
        request_id = self.new_id() if request_id is None else request_id
        future = self.expect(request_id)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        await self.send(message)
        return await asyncio.wait_for(future, bound)

    async def call(self, method: str, params: Any = None, bound: float = HANG) -> Any:
        """A request's result, or :class:`RawError`."""
        response = await self.request(method, params, bound=bound)
        if "error" in response:
            raise RawError(response["error"])
        return response["result"]

    async def initialize(self, notify: bool = True) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(
            "initialize",
            {
                "protocolVersion": 1,
                "clientInfo": {"name": "raw-test"},
                "capabilities": {"notify": notify},
            },
        )
        return result

    async def open_session(self, **params: Any) -> str:
        result = await self.call("session/open", params)
        return str(result["sessionId"])

    async def server_message(
        self, method: str | None = None, bound: float = HANG
    ) -> dict[str, Any]:
        """The next request or notification from the server (of ``method``, others skipped)."""
        async with asyncio.timeout(bound):
            while True:
                message = await self.server_messages.get()
                if method is None or message["method"] == method:
                    return message

    async def orphan(self, bound: float = HANG) -> dict[str, Any]:
        return await asyncio.wait_for(self.orphans.get(), bound)

    async def respond(self, request_id: Any, result: Any) -> None:
        await self.send({"jsonrpc": "2.0", "id": request_id, "result": result})

    async def close(self) -> None:
        await self.transport.close()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self._reader, 5)


class ServeProcess:
    """``codemode serve`` on stdio as a child, driven through a :class:`RawClient`."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        assert process.stdout is not None and process.stdin is not None
        assert process.stderr is not None
        self.client = RawClient(LineTransport(process.stdout, process.stdin, "serve"))
        self.stderr: list[str] = []
        self._stderr_task = asyncio.ensure_future(self._drain(process.stderr))

    @classmethod
    async def start(cls, *args: str, env: dict[str, str] | None = None) -> ServeProcess:
        process = await asyncio.create_subprocess_exec(
            *SERVE,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=2**27,
            env={**os.environ, **(env or {})},
        )
        return cls(process)

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.stderr.append(line.decode(errors="replace"))

    async def close_stdin(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()

    async def wait_exit(self, bound: float = HANG) -> int:
        return await asyncio.wait_for(self.process.wait(), bound)

    async def stop(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(Exception):
                await self.close_stdin()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        await self.client.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._stderr_task, 5)


class InProcessServer:
    """A :class:`ProtocolServer` in this process; each :meth:`connect` is an in-memory line
    connection (the stdio framing code path) driven by a :class:`RawClient`."""

    def __init__(self, ceilings: CellLimits | None = None) -> None:
        self.server = ProtocolServer(ceilings)
        self.tasks: list[asyncio.Task[str]] = []

    def connect(self) -> tuple[RawClient, asyncio.Task[str]]:
        client_side, server_side = memory_pair()
        task = asyncio.ensure_future(self.server.serve_connection(server_side))
        self.tasks.append(task)
        return RawClient(client_side), task

    async def close(self) -> None:
        await asyncio.wait_for(self.server.close(), HANG)
        for task in self.tasks:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, HANG)


class WebSocketServer:
    """``codemode serve --listen 127.0.0.1:0`` as a child; its URL is read from stderr."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [*SERVE, "--listen", "127.0.0.1:0", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        self.stderr: list[str] = []
        self.url = ""
        ready = threading.Event()

        def drain() -> None:
            assert self.process.stderr is not None
            for raw in self.process.stderr:
                line = raw.decode(errors="replace")
                self.stderr.append(line)
                match = re.search(r"listening on (ws://\S+)", line)
                if match:
                    self.url = match.group(1)
                    ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        if not ready.wait(HANG) or not self.url:
            self.stop()
            raise RuntimeError(f"the WebSocket server did not start: {''.join(self.stderr)}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(HANG)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


class Harness:
    """Makes sessions of one mode: ``local`` (SessionRuntime), ``spawn`` (RemoteSession over a
    child ``codemode serve``) or ``ws`` (RemoteSession over WebSocket); shuts them all down."""

    def __init__(self, mode: str, ws_url: str | None = None) -> None:
        self.mode = mode
        self.ws_url = ws_url
        self.sessions: list[Any] = []

    async def session(self, delegate: Any, limits: CellLimits | None = None) -> Any:
        session: Any
        if self.mode == "local":
            session = SessionRuntime(delegate, limits=limits)
        elif self.mode == "spawn":
            session = await RemoteSession.spawn(delegate, limits=limits)
        else:
            assert self.ws_url is not None
            session = await RemoteSession.connect(self.ws_url, delegate, limits=limits)
        self.sessions.append(session)
        return session

    async def close(self) -> None:
        for session in self.sessions:
            await asyncio.wait_for(session.shutdown(), HANG)


@contextlib.asynccontextmanager
async def serve_process(*args: str) -> AsyncIterator[ServeProcess]:
    server = await ServeProcess.start(*args)
    try:
        yield server
    finally:
        await server.stop()


# ---------------------------------------------------------------------------- hypothesis strategies


def json_values(max_leaves: int = 10) -> Any:
    """Any JSON value (as ``json.loads`` returns them)."""
    from hypothesis import strategies as st

    scalars = (
        st.none()
        | st.booleans()
        | st.integers(-(2**64), 2**64)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=20)
    )
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=max_leaves,
    )


def values_for(type_: Any, depth: int = 0) -> Any:
    """Mostly well-typed values for a :mod:`codemode.protocol.messages` type, with random JSON
    mixed in, so a checker sees both sides of every rule."""
    from hypothesis import strategies as st

    from codemode.protocol import jsontypes as m

    anything = json_values(6)
    if isinstance(type_, m.Ref):
        return values_for(type_.target, depth)
    if isinstance(type_, m.Str):
        good: Any = st.text(max_size=12)
    elif isinstance(type_, m.Int):
        low = type_.minimum if type_.minimum is not None else -5
        good = st.integers(low - 1, low + 20) | st.just(float(low + 1))
    elif isinstance(type_, m.Num):
        good = st.floats(-10, 1e6, allow_nan=False) | st.integers(-5, 10**6)
    elif isinstance(type_, m.Bool):
        good = st.booleans()
    elif isinstance(type_, m.Null):
        good = st.none()
    elif isinstance(type_, m.AnyJson):
        good = anything
    elif isinstance(type_, m.Const):
        good = st.just(type_.value)
    elif isinstance(type_, m.Enum):
        good = st.sampled_from(type_.values) | st.text(max_size=5)
    elif isinstance(type_, m.Arr):
        good = st.lists(values_for(type_.items, depth + 1), max_size=3 if depth < 2 else 0)
    elif isinstance(type_, m.Union):
        good = st.one_of(*(values_for(o, depth + 1) for o in type_.options))
    elif isinstance(type_, m.Obj):
        if depth > 3 or not type_.fields:
            good = st.dictionaries(st.text(max_size=6), anything, max_size=3)
        else:
            required = {f.name: values_for(f.type, depth + 1) for f in type_.fields if f.required}
            optional = {
                f.name: values_for(f.type, depth + 1) for f in type_.fields if not f.required
            }
            good = st.fixed_dictionaries(required, optional=optional)
    else:  # pragma: no cover - a new type builder
        raise TypeError(type_)
    return st.one_of(good, good, good, anything)
