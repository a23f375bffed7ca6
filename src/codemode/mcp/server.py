"""``codemode mcp``: an MCP server whose only tools are ``exec`` and ``wait`` (docs/protocol.md).

The nested tools of every cell are the tools of the upstream MCP servers of the configuration
(:mod:`codemode.mcp.upstream`). ``exec`` and ``wait`` are :class:`~codemode.tools.CodeModeTools`
with ``code_mode_only=True``; this module only adapts them to MCP:

- ``tools/list`` answers ``exec`` and ``wait`` with the descriptions and input schemas of
  :meth:`~codemode.tools.CodeModeTools.exec_tool_spec` (the function form, ``{code}``) and
  :meth:`~codemode.tools.CodeModeTools.wait_tool_spec`. Another tool name in ``tools/call`` is a
  JSON-RPC ``-32602`` error (as MCP requires for unknown tools).
- A result becomes ``CallToolResult`` content: each text item a text block, each image item an
  image block (its ``data:`` URL split into base64 data and MIME type, its detail kept in
  ``_meta["codex/imageDetail"]``, the key ``image()`` reads), ``isError`` from
  :attr:`~codemode.tools.ToolResult.is_error`.
- ``notify(...)`` in a cell becomes ``notifications/progress`` (progress 1, 2, 3, ... and the
  text as ``message``) when the call observing the cell carried a progress token in
  ``params._meta.progressToken``, else ``notifications/message`` at level ``info`` (logger
  ``codemode``, the text as ``data``). The observing call is the ``wait`` observing the cell if
  there is one, else the ``exec`` that created it while it runs. A notification while no call
  observes its cell goes out as ``notifications/message`` on the connection's standalone channel.
- When the upstream tools change (``notifications/tools/list_changed`` upstream), later ``exec``
  calls create cells with the new tools, the ``exec`` description changes, and the connection
  is sent ``notifications/tools/list_changed`` (the server declares ``tools.listChanged``). A
  ``wait`` goes to the ``CodeModeTools`` whose ``exec`` returned its cell (else the current
  one), so output that object carries over for the cell is not lost.

- Approvals: tools named by the configuration's ``approval`` key (glob patterns, and upstream
  ``destructiveHint`` with ``"destructive": true``) need approval; each held call is decided
  inside the ``exec``/``wait`` request that meets it, by elicitation when the client supports
  it, else rejected as unavailable (:mod:`codemode.mcp.approval`, ``docs/approvals.md``).

Connections and sessions: one :class:`~codemode.session.SessionRuntime` serves one MCP connection.
Over stdio the process serves exactly one connection. Over streamable HTTP each MCP session
(``Mcp-Session-Id``) is one connection, and its runtime is shut down when the session ends;
sessionless requests (stateless or 2026-07-28 clients) share one runtime, since cell ids (80
random bits) are their only handle anyway.

Each ``exec`` gets a fresh call id (``mcp-{n}-{random}``): MCP has no model-visible call id, and
JSON-RPC ids repeat across connections and sessions, so an id of the client's would turn an
unrelated call into an idempotent retry.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import itertools
import logging
import os
import secrets
import signal
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, cast
from urllib.parse import unquote_to_bytes

import mcp.types as mcp_types
from mcp.server import NotificationOptions, Server
from mcp.server.context import ServerRequestContext
from mcp.server.models import InitializationOptions
from mcp.server.session import ServerSession
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp.shared.jsonrpc_dispatcher import progress_token_from_params

from codemode.cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    configure_logging,
    parse_host_port,
)
from codemode.engine.base import Engine
from codemode.engine.choice import engine_factory
from codemode.mcp.approval import (
    UNAVAILABLE_REASON,
    ApprovalPolicy,
    ask_by_elicitation,
    load_approval_policy,
)
from codemode.mcp.cancel import ExecCells
from codemode.mcp.config import ConfigError, load_config
from codemode.mcp.upstream import UpstreamSet, exec_annotations
from codemode.model import (
    ApprovalRequest,
    CellLimits,
    ImageItem,
    NestedToolCall,
    OutputItem,
    TextItem,
)
from codemode.session import SessionRuntime
from codemode.textsafe import valid_text
from codemode.tools import CodeModeTools, ToolResult
from codemode.tools.description import EXEC_TOOL_NAME, WAIT_TOOL_NAME

__all__ = [
    "LOG_LOGGER_NAME",
    "McpFront",
    "mcp_main",
    "parse_http_address",
    "to_call_tool_result",
]

logger = logging.getLogger("codemode.mcp")

LOG_LOGGER_NAME: Final = "codemode"
"""The ``logger`` field of the ``notifications/message`` a cell's ``notify`` becomes."""
SERVER_NAME: Final = "codemode"
INSTRUCTIONS: Final = (
    "Code mode: call `exec` with JavaScript that calls the tools of the configured MCP servers "
    "as `tools.mcp__{server}__{tool}(args)` and prints what you need; use `wait` to follow a "
    "cell that is still running."
)
HTTP_SHUTDOWN_GRACE: Final = 0.1
"""Seconds open HTTP connections get to finish when ``codemode mcp --http`` stops."""
SIGNAL_EXIT_GRACE: Final = 0.8
"""Seconds ``codemode mcp`` (stdio) spends closing sessions and upstreams on SIGTERM/SIGINT."""
_STATE_KEY: Final = "codemode.mcp"
_IMAGE_DETAIL_META: Final = "codex/imageDetail"
_WAIT_ANNOTATIONS: Final = mcp_types.ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
)
# The MCP request being served in this task: where an approval is asked (docs/approvals.md).
_REQUEST: contextvars.ContextVar[tuple[ServerSession, mcp_types.RequestId | None]] = (
    contextvars.ContextVar("codemode_mcp_request")
)


# ---------------------------------------------------------------------- results


def _image_block(item: ImageItem) -> mcp_types.ImageContent | mcp_types.TextContent:
    header, comma, payload = item.image_url.partition(",")
    if not comma or not header.lower().startswith("data:"):
        # image() only admits data: URLs, so this is never reached by a cell's output.
        return mcp_types.TextContent(text=item.image_url)
    params = header[5:].split(";")
    mime = params[0] or "application/octet-stream"
    if any(p.lower() == "base64" for p in params[1:]):
        data = payload
    else:
        data = base64.b64encode(unquote_to_bytes(payload)).decode("ascii")
    meta = {_IMAGE_DETAIL_META: str(item.detail)} if item.detail is not None else None
    return mcp_types.ImageContent(data=data, mime_type=mime, _meta=meta)


def _content_block(item: OutputItem) -> mcp_types.ContentBlock:
    if isinstance(item, TextItem):
        return mcp_types.TextContent(text=item.text)
    return _image_block(item)


def to_call_tool_result(result: ToolResult) -> mcp_types.CallToolResult:
    """An ``exec``/``wait`` result as MCP content: text and image blocks in order, ``isError``
    from ``result.is_error``."""
    return mcp_types.CallToolResult(
        content=[_content_block(item) for item in result.items], is_error=result.is_error
    )


# ---------------------------------------------------------------------- per connection


@dataclass
class _Observer:
    """An MCP request observing a cell: where its notifications go."""

    session: ServerSession
    request_id: mcp_types.RequestId | None
    progress_token: mcp_types.ProgressToken | None
    sent: int = 0


class _ConnectionFront:
    """The code mode state of one MCP connection: its session runtime and its exec/wait tools."""

    def __init__(self, front: McpFront, label: str) -> None:
        self._front = front
        self.label = label
        engine = front.engine_factory() if front.engine_factory is not None else None
        self.runtime = SessionRuntime(_ConnectionDelegate(self), limits=front.limits, engine=engine)
        self.exec_cells = ExecCells(self.runtime)  # a cancelled exec terminates its cell
        self._tools: CodeModeTools | None = None
        self._generation = -1
        self._owners: dict[str, CodeModeTools] = {}
        self._exec_observers: dict[str, _Observer] = {}
        self._wait_observers: dict[str, _Observer] = {}
        self._standalone: ServerSession | None = None
        self._closed = False

    @property
    def upstreams(self) -> UpstreamSet:
        """The upstream servers that run this connection's nested calls."""
        return self._front.upstreams

    def code_mode_tools(self) -> CodeModeTools:
        """The exec/wait tools over the current upstream tools (rebuilt after a change)."""
        upstreams = self._front.upstreams
        if self._tools is None or self._generation != upstreams.generation:
            self._generation = upstreams.generation
            self._tools = CodeModeTools(
                self.exec_cells,
                self._front.approval.mark(upstreams),
                code_mode_only=True,
                max_wait_ms=self._front.max_wait_ms,
                approver=self._approve,
            )
        return self._tools

    def remember(self, session: ServerSession) -> None:
        """Keep ``session`` for notifications that no request observes."""
        self._standalone = session

    async def call(
        self, ctx: ServerRequestContext[Any], name: str, arguments: Mapping[str, Any]
    ) -> ToolResult:
        """Run ``exec`` or ``wait`` for one ``tools/call`` request."""
        self.remember(ctx.session)
        observer = _Observer(ctx.session, ctx.request_id, progress_token_from_params(ctx.params))
        _REQUEST.set((ctx.session, ctx.request_id))
        if name == EXEC_TOOL_NAME:
            return await self._exec(observer, arguments)
        return await self._wait(observer, arguments)

    async def _exec(self, observer: _Observer, arguments: Mapping[str, Any]) -> ToolResult:
        call_id = self._front.next_call_id()
        tools = self.code_mode_tools()
        self._exec_observers[call_id] = observer
        try:
            result = await tools.call(EXEC_TOOL_NAME, arguments, call_id)
        except asyncio.CancelledError:
            self.exec_cells.cancelled(call_id)  # notifications/cancelled: stop the cell
            raise
        finally:
            del self._exec_observers[call_id]
            self.exec_cells.finished(call_id)
        self._prune_owners()
        if result.cell_id is not None and self._cell_alive(result.cell_id):
            self._owners[result.cell_id] = tools
        return result

    async def _wait(self, observer: _Observer, arguments: Mapping[str, Any]) -> ToolResult:
        raw_id = arguments.get("cell_id")
        cell_id = raw_id if isinstance(raw_id, str) else None
        tools = self._owners.get(cell_id, None) if cell_id is not None else None
        if tools is None:
            tools = self.code_mode_tools()
        mine = cell_id is not None and cell_id not in self._wait_observers
        if mine:
            assert cell_id is not None
            self._wait_observers[cell_id] = observer
        try:
            return await tools.call(WAIT_TOOL_NAME, arguments, "")
        finally:
            if mine:
                assert cell_id is not None
                self._wait_observers.pop(cell_id, None)
                if not self._cell_alive(cell_id):
                    self._owners.pop(cell_id, None)

    async def _approve(self, request: ApprovalRequest) -> bool | str:
        """Decide a held call by asking the client of the request that met it."""
        current = _REQUEST.get(None)
        if current is None:
            return UNAVAILABLE_REASON
        return await ask_by_elicitation(current[0], current[1], request)

    def _cell_alive(self, cell_id: str) -> bool:
        return self.runtime.is_live(cell_id)

    def _prune_owners(self) -> None:
        for cell_id in [c for c in self._owners if not self._cell_alive(c)]:
            del self._owners[cell_id]

    async def notify(self, call_id: str, cell_id: str, text: str) -> None:
        """Deliver a cell's ``notify(text)`` (see the module docstring)."""
        text = valid_text(text)  # results are ToolResults, already valid (codemode.textsafe)
        observer = self._wait_observers.get(cell_id) or self._exec_observers.get(call_id)
        if observer is not None and observer.progress_token is not None:
            observer.sent += 1
            await observer.session.report_progress(observer.sent, None, text)
            return
        if observer is not None:
            await _send_log(observer.session, text, observer.request_id)
            return
        if self._standalone is not None:
            await _send_log(self._standalone, text, None)
            return
        logger.info("cell %s: notify with no MCP client to tell: %s", cell_id, text)

    async def tools_changed(self) -> None:
        """Tell the client that ``exec``'s description changed (best effort)."""
        session = self._standalone
        if session is None or self._closed:
            return
        try:
            await session.send_tool_list_changed()
        except Exception as error:  # a notification is advisory
            logger.debug("%s: tools/list_changed not sent: %s", self.label, error)

    async def aclose(self) -> None:
        """Shut the connection's session down (its cells are terminated)."""
        if self._closed:
            return
        self._closed = True
        self._front.forget(self)
        await self.runtime.shutdown()
        await self.exec_cells.aclose()
        logger.info("%s closed", self.label)


async def _send_log(
    session: ServerSession, text: str, related_request_id: mcp_types.RequestId | None
) -> None:
    # The SDK marks logging deprecated for the 2026-07-28 protocol (SEP-2577); for a connection at
    # that version it sends only what the request opted into. docs/protocol.md asks for it, so the
    # warning is silenced here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        sending = session.send_log_message(
            "info", text, logger=LOG_LOGGER_NAME, related_request_id=related_request_id
        )
    await sending


class _ConnectionDelegate:
    """The session delegate of one connection: nested calls go upstream, notifications back."""

    def __init__(self, connection: _ConnectionFront) -> None:
        self._connection = connection

    async def invoke_tool(self, call: NestedToolCall) -> Any:
        await self._connection.exec_cells.check_call(call.cell_id)
        return await self._connection.upstreams.invoke_tool(call)

    async def notify(self, call_id: str, cell_id: str, text: str) -> None:
        await self._connection.notify(call_id, cell_id, text)


# ---------------------------------------------------------------------- the front


class _CodeModeServer(Server[Any]):
    """The SDK's low-level server, declaring ``tools.listChanged`` on every transport."""

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        return super().create_initialization_options(
            notification_options or NotificationOptions(tools_changed=True),
            experimental_capabilities,
            extensions,
        )


class McpFront:
    """The process-wide part of ``codemode mcp``: the upstreams, the limits and one
    :class:`_ConnectionFront` per MCP connection. Build the SDK server with :meth:`server`."""

    def __init__(
        self,
        upstreams: UpstreamSet,
        limits: CellLimits | None = None,
        *,
        single_connection: bool = False,
        max_wait_ms: int = 600_000,
        approval: ApprovalPolicy | None = None,
        engine_factory: Callable[[], Engine] | None = None,
    ) -> None:
        """``single_connection``: the transport serves one connection (stdio), so every request
        belongs to it. ``approval``: which nested tools need the client's approval.
        ``engine_factory`` makes each connection's engine (None: V8)."""
        self.approval = approval if approval is not None else ApprovalPolicy()
        self.engine_factory = engine_factory
        self.upstreams = upstreams
        self.limits = limits if limits is not None else CellLimits()
        self.max_wait_ms = max_wait_ms
        self._single_connection = single_connection
        self._single: _ConnectionFront | None = None
        self._shared: _ConnectionFront | None = None
        self._connections: set[_ConnectionFront] = set()
        self._counter = itertools.count(1)
        self._background: set[asyncio.Task[None]] = set()
        upstreams.add_listener(self._tools_changed)

    def next_call_id(self) -> str:
        """A call id no other ``exec`` of this process uses."""
        return f"mcp-{next(self._counter)}-{secrets.token_hex(4)}"

    def server(self) -> Server[Any]:
        """The SDK low-level server answering ``tools/list`` and ``tools/call``."""
        from codemode import __version__

        return _CodeModeServer(
            SERVER_NAME,
            version=__version__,
            instructions=INSTRUCTIONS,
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
        )

    def connection(self, ctx: ServerRequestContext[Any]) -> _ConnectionFront:
        """The state of the MCP connection ``ctx`` belongs to (created on first use)."""
        if self._single_connection:
            if self._single is None:
                self._single = self._new_connection("the MCP connection")
            return self._single
        # SDK 2.3 hands low-level handlers no public `Connection` (its `Context.connection` is
        # not constructed yet), so it is read off the request's session; without it, or for a
        # sessionless request, the shared state serves.
        connection = getattr(ctx.session, "_connection", None)
        session_id = getattr(connection, "session_id", None)
        state = getattr(connection, "state", None)
        stack = getattr(connection, "exit_stack", None)
        if session_id is None or not isinstance(state, dict) or stack is None:
            if self._shared is None:
                self._shared = self._new_connection("sessionless MCP requests")
            return self._shared
        front = state.get(_STATE_KEY)
        if not isinstance(front, _ConnectionFront):
            front = self._new_connection(f"MCP session {str(session_id)[:12]}")
            state[_STATE_KEY] = front
            stack.push_async_callback(front.aclose)
        return front

    def _new_connection(self, label: str) -> _ConnectionFront:
        front = _ConnectionFront(self, label)
        self._connections.add(front)
        logger.info("%s opened", label)
        return front

    def forget(self, connection: _ConnectionFront) -> None:
        """Drop a closed connection's state."""
        self._connections.discard(connection)
        if self._single is connection:
            self._single = None
        if self._shared is connection:
            self._shared = None

    async def aclose(self) -> None:
        """Shut every connection's session down."""
        self.upstreams.remove_listener(self._tools_changed)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*(c.aclose() for c in list(self._connections)), return_exceptions=True)

    def _tools_changed(self) -> None:
        for connection in list(self._connections):
            task = asyncio.get_running_loop().create_task(connection.tools_changed())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _list_tools(
        self, ctx: ServerRequestContext[Any], params: mcp_types.PaginatedRequestParams | None
    ) -> mcp_types.ListToolsResult:
        connection = self.connection(ctx)
        connection.remember(ctx.session)
        tools = connection.code_mode_tools()
        exec_spec = tools.exec_tool_spec()
        wait_spec = tools.wait_tool_spec()
        return mcp_types.ListToolsResult(
            tools=[
                mcp_types.Tool(
                    name=EXEC_TOOL_NAME,
                    description=exec_spec["description"],
                    input_schema=exec_spec["parameters"],
                    # Honest for every tool a cell can reach (see exec_annotations).
                    annotations=exec_annotations(self.upstreams.enabled_tools),
                ),
                mcp_types.Tool(
                    name=WAIT_TOOL_NAME,
                    description=wait_spec["description"],
                    input_schema=wait_spec["parameters"],
                    # wait observes, or stops a cell: no effect of its own on the world.
                    annotations=_WAIT_ANNOTATIONS,
                ),
            ]
        )

    async def _call_tool(
        self, ctx: ServerRequestContext[Any], params: mcp_types.CallToolRequestParams
    ) -> mcp_types.CallToolResult:
        if params.name not in (EXEC_TOOL_NAME, WAIT_TOOL_NAME):
            raise MCPError(
                code=mcp_types.INVALID_PARAMS,
                message=f"Unknown tool: {params.name} (this server offers only exec and wait)",
            )
        connection = self.connection(ctx)
        result = await connection.call(ctx, params.name, params.arguments or {})
        return to_call_tool_result(result)


# ---------------------------------------------------------------------- running it


def parse_http_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``:PORT`` binds 127.0.0.1, ``[::1]:PORT`` for IPv6) as
    ``(host, port)``, the forms ``codemode serve --listen`` takes; ``ValueError`` when it is not
    one. Port 0 is refused: the URL to connect to must be known."""
    return parse_host_port(text, "--http", allow_port_zero=False)


def _configure_logging() -> None:
    configure_logging()  # as `codemode serve` and `codemode run` do


async def serve_stdio(front: McpFront) -> None:
    """Serve one MCP connection on stdin/stdout until stdin closes."""
    server = front.server()
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def _quiet_stop(record: logging.LogRecord) -> bool:
    """Drop uvicorn's errors about cutting open streams when it stops (HTTP_SHUTDOWN_GRACE):
    stopping with a client connected is normal, not an error."""
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, asyncio.CancelledError):
        return False
    return "timeout graceful shutdown exceeded" not in record.getMessage()


async def serve_http(front: McpFront, host: str, port: int, stop: asyncio.Event) -> None:
    """Serve streamable HTTP at ``http://{host}:{port}/mcp`` until ``stop`` is set."""
    import uvicorn

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Any:  # signals are handled by mcp_main
            yield

    app = front.server().streamable_http_app(streamable_http_path="/mcp", host=host)
    logging.getLogger("uvicorn.error").addFilter(_quiet_stop)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        lifespan="on",
        # Open streams (a client's SSE channel) are cut after this on SIGTERM, so the process
        # exits within a second (issue 12.3); uvicorn accepts a float here despite its hint.
        timeout_graceful_shutdown=cast(int, HTTP_SHUTDOWN_GRACE),
    )
    server = _Server(config)

    async def stopper() -> None:
        await stop.wait()
        server.should_exit = True

    watcher = asyncio.create_task(stopper())
    try:
        logger.info("serving MCP over streamable HTTP at http://%s:%d/mcp", host, port)
        try:
            await server.serve()
        except SystemExit:
            raise OSError(f"cannot serve HTTP on {host}:{port}") from None
    finally:
        watcher.cancel()


async def _run(
    configs: Any,
    http: tuple[str, int] | None,
    limits: CellLimits,
    approval: ApprovalPolicy | None = None,
    engine: str = "v8",
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    stopping = False
    running: list[Any] = []  # the front and the upstreams, once they exist
    background: set[asyncio.Task[None]] = set()

    def on_signal() -> None:
        nonlocal stopping
        logger.debug("stopping on a signal")
        stop.set()
        if http is None and not stopping:
            # The SDK reads stdin in a worker thread that no cancellation interrupts (it would
            # wait for the client's next line): close the sessions and the upstream servers
            # here, then end the process (issue 12.3).
            stopping = True
            task = loop.create_task(_exit_after_cleanup(running))
            background.add(task)

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, on_signal)
    try:
        async with UpstreamSet(configs) as upstreams:
            front = McpFront(
                upstreams,
                limits,
                single_connection=http is None,
                approval=approval,
                engine_factory=engine_factory(engine),
            )
            running.extend((front, upstreams))
            try:
                if http is None:
                    await serve_stdio(front)
                else:
                    await serve_http(front, http[0], http[1], stop)
            finally:
                await front.aclose()
                logger.debug("sessions closed; stopping the upstream servers")
        logger.debug("upstream servers stopped")
    except asyncio.CancelledError:
        if not stopping:
            raise
    except OSError as error:
        print(f"codemode: {error}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    return EXIT_OK


async def _exit_after_cleanup(running: list[Any]) -> None:
    """Close the sessions, then the upstream servers (bounded by :data:`SIGNAL_EXIT_GRACE`), and
    end the process with status 0."""
    try:
        async with asyncio.timeout(SIGNAL_EXIT_GRACE):
            for part in running:
                await part.aclose()
    except BaseException as error:  # exiting anyway; the guardians kill what is left
        logger.warning("stopping on a signal: cleanup incomplete: %r", error)
    finally:
        logger.debug("exiting on a signal")
        logging.shutdown()
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(EXIT_OK)


def mcp_main(config_path: str, http: str | None, limits: CellLimits, engine: str = "v8") -> int:
    """Entry point of ``codemode mcp --config PATH [--http HOST:PORT]``; returns the exit status.

    0 when stdin closes (stdio) or on SIGINT/SIGTERM, after the sessions and the upstream servers
    are shut down; 2 for a bad configuration file or ``--http`` address; 1 when the HTTP address
    cannot be served. Logs go to stderr (``CODEMODE_LOG_LEVEL`` sets codemode's level, default
    ``INFO``); over stdio, stdout carries protocol messages only.
    """
    _configure_logging()
    try:
        configs = load_config(config_path)
        approval = load_approval_policy(config_path)
    except ConfigError as error:
        print(f"codemode: {error}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    address: tuple[str, int] | None = None
    if http is not None:
        try:
            address = parse_http_address(http)
        except ValueError as error:
            print(f"codemode: {error}", file=sys.stderr, flush=True)
            return EXIT_USAGE
    if not configs:
        logger.warning("the MCP config %s lists no servers; cells get no nested tools", config_path)
    try:
        status = asyncio.run(_run(configs, address, limits, approval, engine))
    except KeyboardInterrupt:
        return EXIT_OK
    logger.debug("exiting with status %d", status)
    return status
