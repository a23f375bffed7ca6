"""Connections to the upstream MCP servers whose tools become the nested tools of cells
(docs/protocol.md).

:class:`UpstreamSet` starts every configured server, lists its tools (all pages) and maps each to
the nested function tool ``mcp__{server}__{tool}``: namespace ``{server}``, the upstream
description and ``inputSchema``, and an MCP-shaped output schema (:func:`mcp_output_schema`)
whose ``structuredContent`` is the upstream ``outputSchema``. A nested call is a ``tools/call``
upstream; it resolves with the ``CallToolResult`` as JSON (``isError: true`` is data, not a
rejection). Failures reject the call with an :class:`UpstreamError` whose message names the
server and the tool.

Decided here, where the spec is silent:

- **Start.** All servers start concurrently; each has its ``startup_timeout_sec`` to connect,
  answer ``initialize`` (the 2025-11-25 handshake, which every server speaks and which carries
  ``notifications/tools/list_changed``) and list its tools. A server that fails is logged and
  left out for the life of the set; the others serve.
- **Crash and restart.** Each connection runs in a task of its own and watches its transport:
  when the server process exits (or the HTTP transport fails) the connection is marked dead and
  logged. A call in flight at that moment is rejected (``closed the connection``); the next call
  to that server starts it again (one restart shared by concurrent callers, bounded by the startup
  timeout) and re-lists its tools. A call is never retried by us: the server may have acted on it.
  If the restart fails, that call is rejected and the next one tries again.
- **Timeout.** A call that gets no answer within ``tool_timeout_sec`` is rejected with a message
  saying so; the SDK sends ``notifications/cancelled`` upstream, and the connection stays up.
- **Cancellation.** Cancelling a nested call (its cell was terminated or completed) cancels the
  upstream request the same way.
- **Tool changes.** ``notifications/tools/list_changed`` from a server re-lists its tools in the
  background; the new set is visible through :attr:`UpstreamSet.tools` (a new
  :attr:`UpstreamSet.generation`) and listeners are told, so later cells get it. Routing of nested
  names only ever grows, so a cell created before the change still reaches the tools it was given
  (a tool the server dropped answers with the server's own error).
- **Name clashes.** Two upstream tools with the same nested name (``a__b``/``c`` and
  ``a``/``b__c``): the first in configuration order wins, the other is logged and left out.
- **Result JSON.** ``CallToolResult`` as the upstream sent it, camelCase, ``null`` fields left
  out; the SDK-internal ``resultType: "complete"`` marker is dropped.
- **Tasks.** A tool whose ``execution.taskSupport`` is ``"required"`` can only run as an MCP task,
  never through a plain ``tools/call``: it is left out (with a log line saying why).
- **Annotations.** The hints an upstream tool declares (``readOnlyHint``, ``destructiveHint``,
  ``idempotentHint``, ``openWorldHint``) are appended to its nested description as a last line,
  ``Annotations: readOnlyHint: true; openWorldHint: false`` (only the hints it gives), so the model
  sees them in the declarations; :func:`exec_annotations` derives the ``exec`` tool's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

import anyio
import httpx2
import mcp.types as mcp_types
from anyio.streams.memory import MemoryObjectSendStream
from mcp.client.session import ClientSession, IncomingMessage
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage

from codemode.mcp.config import HttpServerConfig, StdioServerConfig, UpstreamConfig
from codemode.mcp.process import guarded_stdio_client
from codemode.model import NestedToolCall, SessionDelegate, ToolDefinition, ToolKind

__all__ = [
    "MAX_TOOL_PAGES",
    "Upstream",
    "UpstreamError",
    "UpstreamSet",
    "call_result_json",
    "exec_annotations",
    "mcp_output_schema",
    "nested_tool_definition",
    "nested_tool_name",
    "requires_task",
]

logger = logging.getLogger("codemode.mcp")

MAX_TOOL_PAGES: Final = 1000
"""The most ``tools/list`` pages read from one server (a guard against a cursor that never ends)."""

_CLOSE_TIMEOUT: Final = 10.0
"""Seconds to wait for a connection's task to wind down (the SDK bounds its own steps)."""

# JSON-RPC error codes of the SDK's dispatcher (mcp_types).
_CONNECTION_CLOSED: Final = mcp_types.CONNECTION_CLOSED
_REQUEST_TIMEOUT: Final = mcp_types.REQUEST_TIMEOUT

_HTTP_TIMEOUT: Final = httpx2.Timeout(30.0, read=300.0)
"""The SDK's own defaults for its HTTP client: 30 s to connect/write, 300 s to read a stream."""

ToolsListener = Callable[[], None]


class UpstreamError(Exception):
    """A nested call or a connection to an upstream server failed; ``str`` names the server."""


def nested_tool_name(server: str, tool: str) -> str:
    """The raw name of the nested tool for ``tool`` of ``server``: ``mcp__{server}__{tool}``."""
    return f"mcp__{server}__{tool}"


def mcp_output_schema(structured: Mapping[str, Any] | None) -> dict[str, Any]:
    """The MCP-shaped output schema of a nested tool (docs/model-tools.md): a ``CallToolResult``
    object whose
    ``structuredContent`` is ``structured`` (the upstream ``outputSchema``) when there is one.

    The upstream schema's ``$defs`` and ``definitions`` are also copied to the root, since local
    ``$ref``s (``#/$defs/...``) resolve against the whole output schema."""
    properties: dict[str, Any] = {
        "content": {"type": "array", "items": {"type": "object"}},
        "isError": {"type": "boolean"},
    }
    schema: dict[str, Any] = {"type": "object", "properties": properties, "required": ["content"]}
    if structured is not None:
        properties["structuredContent"] = dict(structured)
        for key in ("$defs", "definitions"):
            if isinstance(structured.get(key), Mapping):
                schema[key] = structured[key]
    return schema


def call_result_json(result: mcp_types.CallToolResult) -> dict[str, Any]:
    """``result`` as the JSON value a cell receives (see the module docstring)."""
    data = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    if data.get("resultType") == "complete":
        del data["resultType"]
    return data


_HINTS: Final = (
    ("readOnlyHint", "read_only_hint"),
    ("destructiveHint", "destructive_hint"),
    ("idempotentHint", "idempotent_hint"),
    ("openWorldHint", "open_world_hint"),
)


def annotations_line(tool: mcp_types.Tool) -> str | None:
    """``Annotations: readOnlyHint: true; ...``: the behaviour hints ``tool`` declares, in the
    MCP order, or None when it declares none."""
    annotations = tool.annotations
    if annotations is None:
        return None
    parts = []
    for wire, field in _HINTS:
        value = getattr(annotations, field, None)
        if isinstance(value, bool):
            parts.append(f"{wire}: {'true' if value else 'false'}")
    return "Annotations: " + "; ".join(parts) if parts else None


def requires_task(tool: mcp_types.Tool) -> bool:
    """Whether ``tool`` can only run as an MCP task (``execution.taskSupport == "required"``),
    which a plain ``tools/call`` cannot do."""
    execution = tool.execution
    return execution is not None and execution.task_support == "required"


def exec_annotations(tools: Sequence[mcp_types.Tool]) -> mcp_types.ToolAnnotations:
    """The annotations of ``exec`` given the upstream tools its cells can call, honest for all
    of them (MCP defaults for hints a tool leaves out: not read-only, destructive, not idempotent,
    open world): ``readOnlyHint`` only if every tool is read-only; ``destructiveHint`` if any
    tool that is not read-only may be destructive; ``idempotentHint`` only if every tool is
    read-only or idempotent; ``openWorldHint`` if any tool may reach an open world. With no
    tools, a cell can only compute: read-only, not destructive, idempotent, closed world."""
    read_only = all(_hint(t, "read_only_hint", False) for t in tools)
    destructive = any(
        not _hint(t, "read_only_hint", False) and _hint(t, "destructive_hint", True) for t in tools
    )
    idempotent = all(
        _hint(t, "read_only_hint", False) or _hint(t, "idempotent_hint", False) for t in tools
    )
    open_world = any(_hint(t, "open_world_hint", True) for t in tools)
    return mcp_types.ToolAnnotations(
        read_only_hint=read_only,
        destructive_hint=destructive,
        idempotent_hint=idempotent,
        open_world_hint=open_world,
    )


def _hint(tool: mcp_types.Tool, field: str, default: bool) -> bool:
    value = getattr(tool.annotations, field, None) if tool.annotations is not None else None
    return value if isinstance(value, bool) else default


def nested_tool_definition(server: str, tool: mcp_types.Tool) -> ToolDefinition:
    """The nested function tool for ``tool`` of ``server`` (docs/protocol.md):
    ``mcp__{server}__{tool}``
    in namespace ``server``, the upstream description (its title when it has none) with the
    annotations line appended (see the module docstring), its ``inputSchema``, and the MCP-shaped
    output schema of its ``outputSchema``."""
    description = tool.description or tool.title or ""
    hints = annotations_line(tool)
    if hints is not None:
        description = f"{description.rstrip()}\n\n{hints}" if description.strip() else hints
    return ToolDefinition(
        name=nested_tool_name(server, tool.name),
        description=description,
        kind=ToolKind.FUNCTION,
        namespace=server,
        input_schema=dict(tool.input_schema),
        output_schema=mcp_output_schema(tool.output_schema),
    )


@dataclass
class _Connection:
    """One live connection: the session and the task that owns its transport."""

    session: ClientSession
    task: asyncio.Task[None]
    stop: asyncio.Event
    dead: asyncio.Event


class Upstream:
    """One upstream MCP server: its connection (restarted after a crash) and its tool listing.

    All coroutines must run on one asyncio event loop.
    """

    def __init__(self, config: UpstreamConfig, on_tools_changed: Callable[[Upstream], None]):
        """Describe the server; nothing starts until :meth:`start`."""
        self.config = config
        self._on_tools_changed = on_tools_changed
        self._connection: _Connection | None = None
        self._lock = asyncio.Lock()
        self._tools: tuple[mcp_types.Tool, ...] = ()
        self._background: set[asyncio.Task[None]] = set()
        self._refresh_again = False
        self._refreshing = False
        self._closed = False
        self.restarts = 0
        """How many times the server was started again after its connection died."""

    @property
    def name(self) -> str:
        """The server's name in the configuration."""
        return self.config.name

    @property
    def tools(self) -> tuple[mcp_types.Tool, ...]:
        """The server's tools at the last listing (all pages)."""
        return self._tools

    @property
    def alive(self) -> bool:
        """Whether a connection is up and its transport has not ended."""
        connection = self._connection
        return connection is not None and not connection.dead.is_set()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect, initialize and list the tools, within the startup timeout.

        Raises :class:`UpstreamError` on any failure (the connection is then torn down).
        """
        async with self._lock:
            await self._connect_and_list()

    async def _connect_and_list(self) -> None:
        timeout = self.config.startup_timeout
        try:
            async with asyncio.timeout(timeout):
                connection = await self._connect()
                try:
                    tools = await self._list_tools(connection.session)
                except BaseException:
                    await self._stop(connection)
                    raise
        except TimeoutError:
            raise UpstreamError(
                f"MCP server `{self.name}` did not start within {timeout:g} seconds"
            ) from None
        except UpstreamError:
            raise
        except Exception as error:
            raise UpstreamError(
                f"MCP server `{self.name}` failed to start: {_describe(error)}"
            ) from error
        self._connection = connection
        self._set_tools(tools)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[ClientSession] = loop.create_future()
        # A failure that lands after we stopped waiting is not "never retrieved".
        ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        stop = asyncio.Event()
        dead = asyncio.Event()
        task = asyncio.create_task(
            self._run_connection(ready, stop, dead), name=f"mcp-upstream-{self.name}"
        )
        try:
            session = await asyncio.shield(ready)
        except BaseException:
            stop.set()
            task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, _CLOSE_TIMEOUT)
            raise
        return _Connection(session=session, task=task, stop=stop, dead=dead)

    def _transport(self) -> contextlib.AbstractAsyncContextManager[Any]:
        config = self.config
        if isinstance(config, StdioServerConfig):
            # Its own process group under a guardian with a parent-death signal: the server
            # never outlives codemode, and stopping it takes under a second (issue 12.3).
            if os.name == "posix":
                return guarded_stdio_client(
                    config.command, list(config.args), dict(config.env) or None, config.cwd
                )
            params = StdioServerParameters(
                command=config.command,
                args=list(config.args),
                env=dict(config.env) or None,
                cwd=config.cwd,
            )
            return stdio_client(params)
        assert isinstance(config, HttpServerConfig)
        return _http_transport(config)

    async def _run_connection(
        self, ready: asyncio.Future[ClientSession], stop: asyncio.Event, dead: asyncio.Event
    ) -> None:
        """Own one connection from spawn to teardown (anyio contexts must exit in their task)."""
        try:
            async with AsyncExitStack() as stack:
                read_stream, write_stream = await stack.enter_async_context(self._transport())
                relay_send, relay_receive = anyio.create_memory_object_stream[
                    SessionMessage | Exception
                ](0)
                stack.push_async_callback(relay_receive.aclose)
                group = await stack.enter_async_context(anyio.create_task_group())
                stack.callback(group.cancel_scope.cancel)
                group.start_soon(_relay, read_stream, relay_send, dead)
                session = await stack.enter_async_context(
                    ClientSession(
                        relay_receive,
                        write_stream,
                        message_handler=self._on_message,
                        client_info=_client_info(),
                    )
                )
                await session.initialize()
                if not ready.done():
                    ready.set_result(session)
                stopping = asyncio.ensure_future(stop.wait())
                ending = asyncio.ensure_future(dead.wait())
                try:
                    await asyncio.wait({stopping, ending}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopping.cancel()
                    ending.cancel()
                if dead.is_set() and not stop.is_set():
                    logger.warning(
                        "MCP server `%s` closed its connection (exited?); "
                        "it will be restarted on next use",
                        self.name,
                    )
        except BaseException as error:
            if not ready.done():
                ready.set_exception(
                    error if isinstance(error, Exception) else UpstreamError("cancelled")
                )
            elif isinstance(error, Exception):
                logger.warning("MCP server `%s`: connection ended: %s", self.name, _describe(error))
            if not isinstance(error, Exception):
                raise
        finally:
            dead.set()

    async def _stop(self, connection: _Connection) -> None:
        connection.stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(connection.task), _CLOSE_TIMEOUT)
        except TimeoutError:
            logger.warning("MCP server `%s`: shutdown took too long; abandoning it", self.name)
            connection.task.cancel()
        except BaseException as error:  # the task's own failure was logged there
            if isinstance(error, asyncio.CancelledError) and not connection.task.done():
                raise

    async def aclose(self) -> None:
        """Stop the server (close its stdin or the HTTP session) and background refreshes."""
        self._closed = True
        for task in list(self._background):
            task.cancel()
        async with self._lock:
            connection, self._connection = self._connection, None
            if connection is not None:
                await self._stop(connection)

    async def _live_session(self, tool: str) -> ClientSession:
        """The session of a live connection, restarting a dead one first."""
        connection = self._connection
        if connection is not None and not connection.dead.is_set():
            return connection.session
        if self._closed:
            raise UpstreamError(f"MCP server `{self.name}` is shut down")
        async with self._lock:
            connection = self._connection
            if connection is not None and not connection.dead.is_set():
                return connection.session
            if connection is not None:
                self._connection = None
                await self._stop(connection)
            logger.warning("MCP server `%s` is not running; starting it again", self.name)
            try:
                await self._connect_and_list()
            except UpstreamError as error:
                raise UpstreamError(
                    f"MCP server `{self.name}` is not running and could not be restarted "
                    f"for tool `{tool}`: {error}"
                ) from None
            self.restarts += 1
            assert self._connection is not None
            return self._connection.session

    # ------------------------------------------------------------------ tools

    async def _list_tools(self, session: ClientSession) -> tuple[mcp_types.Tool, ...]:
        tools: list[mcp_types.Tool] = []
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(MAX_TOOL_PAGES):
            params = mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None
            page = await session.list_tools(params=params)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                return tuple(tools)
            if cursor in seen:
                logger.warning(
                    "MCP server `%s` repeated the tools/list cursor %r; stopping there",
                    self.name,
                    cursor,
                )
                return tuple(tools)
            seen.add(cursor)
        logger.warning(
            "MCP server `%s`: more than %d tools/list pages; using the first %d",
            self.name,
            MAX_TOOL_PAGES,
            MAX_TOOL_PAGES,
        )
        return tuple(tools)

    def _set_tools(self, tools: tuple[mcp_types.Tool, ...]) -> None:
        old = [t.model_dump(mode="json", by_alias=True) for t in self._tools]
        new = [t.model_dump(mode="json", by_alias=True) for t in tools]
        self._tools = tools
        if old != new:
            if old:
                logger.info("MCP server `%s` now offers %d tools", self.name, len(tools))
            self._on_tools_changed(self)

    async def refresh_tools(self) -> None:
        """List the tools again (all pages) and publish any change. Failures are logged only."""
        if self._refreshing:
            self._refresh_again = True
            return
        self._refreshing = True
        try:
            while True:
                self._refresh_again = False
                connection = self._connection
                if connection is None or connection.dead.is_set():
                    return
                try:
                    tools = await asyncio.wait_for(
                        self._list_tools(connection.session), self.config.startup_timeout
                    )
                except Exception as error:
                    logger.warning(
                        "MCP server `%s`: re-listing its tools failed: %s",
                        self.name,
                        _describe(error),
                    )
                    return
                self._set_tools(tools)
                if not self._refresh_again:
                    return
        finally:
            self._refreshing = False

    async def _on_message(self, message: IncomingMessage) -> None:
        if isinstance(message, Exception):
            logger.warning("MCP server `%s`: transport error: %s", self.name, _describe(message))
            return
        if isinstance(message, mcp_types.ToolListChangedNotification):
            logger.info("MCP server `%s` changed its tools; listing them again", self.name)
            task = asyncio.get_running_loop().create_task(self.refresh_tools())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ calls

    async def call_tool(self, tool: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """Call ``tool`` upstream and return its ``CallToolResult`` as JSON.

        Raises :class:`UpstreamError` when the server cannot be reached or restarted, closes the
        connection during the call, does not answer within ``tool_timeout_sec``, answers with a
        JSON-RPC error, or answers with something that is not a valid result.
        """
        session = await self._live_session(tool)
        timeout = self.config.tool_timeout
        try:
            result = await session.call_tool(tool, dict(arguments), read_timeout_seconds=timeout)
        except MCPError as error:
            if error.code == _REQUEST_TIMEOUT:
                raise UpstreamError(
                    f"MCP server `{self.name}` did not answer tool `{tool}` within "
                    f"{timeout:g} seconds"
                ) from None
            if error.code == _CONNECTION_CLOSED:
                self._mark_dead()
                raise UpstreamError(
                    f"MCP server `{self.name}` closed the connection during tool `{tool}` "
                    "(the server exited?); it will be restarted on next use"
                ) from None
            raise UpstreamError(
                f"MCP server `{self.name}` refused tool `{tool}`: {error.error.message} "
                f"(JSON-RPC error {error.code})"
            ) from None
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as error:
            self._mark_dead()
            raise UpstreamError(
                f"MCP server `{self.name}`: the connection failed during tool `{tool}`: "
                f"{_describe(error)}; it will be restarted on next use"
            ) from None
        except Exception as error:
            raise UpstreamError(
                f"MCP server `{self.name}` returned an invalid result for tool `{tool}`: "
                f"{_describe(error)}"
            ) from None
        return call_result_json(result)

    def _mark_dead(self) -> None:
        connection = self._connection
        if connection is not None:
            connection.dead.set()


class UpstreamSet:
    """Every configured upstream server and the nested tools they offer.

    Use as ``async with UpstreamSet(configs) as upstreams:`` (or :meth:`start` /
    :meth:`aclose`). All coroutines must run on one asyncio event loop.
    """

    def __init__(self, configs: Sequence[UpstreamConfig]) -> None:
        """Describe the servers; nothing starts until :meth:`start`."""
        self._configs = tuple(configs)
        self._upstreams: list[Upstream] = []
        self._routes: dict[str, tuple[Upstream, str]] = {}
        self._tools: tuple[ToolDefinition, ...] = ()
        self._enabled_tools: tuple[mcp_types.Tool, ...] = ()
        self._listeners: list[ToolsListener] = []
        self._generation = 0
        self._started = False
        self.failed: dict[str, str] = {}
        """Servers that failed to start, with the reason; they are left out."""

    async def __aenter__(self) -> UpstreamSet:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Start every server concurrently and list their tools; failures are logged and the
        failing servers left out (:attr:`failed`). Never raises for an upstream's failure."""
        if self._started:
            return
        self._started = True
        candidates = [Upstream(config, self._tools_changed) for config in self._configs]
        outcomes = await asyncio.gather(
            *(upstream.start() for upstream in candidates), return_exceptions=True
        )
        for upstream, outcome in zip(candidates, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if isinstance(outcome, asyncio.CancelledError):
                    raise outcome
                reason = str(outcome) or type(outcome).__name__
                logger.error("skipping MCP server `%s`: %s", upstream.name, reason)
                self.failed[upstream.name] = reason
                continue
            self._upstreams.append(upstream)
            logger.info("MCP server `%s` started with %d tools", upstream.name, len(upstream.tools))
        self._rebuild()

    async def aclose(self) -> None:
        """Stop every server; safe to call more than once."""
        upstreams, self._upstreams = self._upstreams, []
        await asyncio.gather(*(u.aclose() for u in upstreams), return_exceptions=True)

    @property
    def upstreams(self) -> tuple[Upstream, ...]:
        """The servers that started (in configuration order)."""
        return tuple(self._upstreams)

    def upstream(self, name: str) -> Upstream | None:
        """The started server named ``name``, if any."""
        return next((u for u in self._upstreams if u.name == name), None)

    @property
    def tools(self) -> tuple[ToolDefinition, ...]:
        """The nested tools of every started server, in configuration then listing order."""
        return self._tools

    @property
    def enabled_tools(self) -> tuple[mcp_types.Tool, ...]:
        """The upstream tools behind :attr:`tools`, as the servers listed them, in the same
        order (what :func:`exec_annotations` summarises)."""
        return self._enabled_tools

    @property
    def generation(self) -> int:
        """Increases each time :attr:`tools` changes."""
        return self._generation

    def add_listener(self, listener: ToolsListener) -> None:
        """Call ``listener()`` after each change of :attr:`tools`; its failures are logged."""
        self._listeners.append(listener)

    def remove_listener(self, listener: ToolsListener) -> None:
        """Stop calling ``listener``."""
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def _tools_changed(self, upstream: Upstream) -> None:
        if self._started and upstream in self._upstreams:
            self._rebuild()

    def _rebuild(self) -> None:
        definitions: list[ToolDefinition] = []
        enabled: list[mcp_types.Tool] = []
        taken: dict[str, Upstream] = {}
        for upstream in self._upstreams:
            for tool in upstream.tools:
                if requires_task(tool):
                    logger.warning(
                        "MCP server `%s`: leaving out tool `%s`: its execution.taskSupport is "
                        '"required" (it runs only as an MCP task), which tools/call cannot do',
                        upstream.name,
                        tool.name,
                    )
                    continue
                definition = nested_tool_definition(upstream.name, tool)
                owner = taken.get(definition.name)
                if owner is not None:
                    logger.warning(
                        "MCP server `%s`: tool `%s` clashes with a tool of `%s` as `%s`; "
                        "leaving it out",
                        upstream.name,
                        tool.name,
                        owner.name,
                        definition.name,
                    )
                    continue
                taken[definition.name] = upstream
                definitions.append(definition)
                enabled.append(tool)
                self._routes[definition.name] = (upstream, tool.name)
        new = tuple(definitions)
        self._enabled_tools = tuple(enabled)
        if new == self._tools and self._generation > 0:
            return
        self._tools = new
        self._generation += 1
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                logger.exception("a tools listener failed")

    async def call(self, name: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """Call the nested tool ``name`` (``mcp__{server}__{tool}``) with ``arguments``.

        Returns the upstream ``CallToolResult`` as JSON; raises :class:`UpstreamError`.
        """
        route = self._routes.get(name)
        if route is None:
            raise UpstreamError(f"no MCP server offers the tool `{name}`")
        upstream, tool = route
        if upstream not in self._upstreams:
            raise UpstreamError(f"MCP server `{upstream.name}` is shut down")
        return await upstream.call_tool(tool, arguments)

    async def invoke_tool(self, call: NestedToolCall) -> Any:
        """Run one nested call (the :class:`~codemode.model.SessionDelegate` method)."""
        arguments = call.input if isinstance(call.input, Mapping) else {}
        return await self.call(call.tool.name, arguments)

    def delegate(self, notify: Callable[[str, str, str], Any] | None = None) -> SessionDelegate:
        """A session delegate whose nested calls go upstream and whose notifications go to
        ``notify(call_id, cell_id, text)`` (an async function; ``None`` logs them)."""
        return _UpstreamDelegate(self, notify)


class _UpstreamDelegate:
    """A :class:`~codemode.model.SessionDelegate` over an :class:`UpstreamSet`."""

    def __init__(self, upstreams: UpstreamSet, notify: Callable[[str, str, str], Any] | None):
        self._upstreams = upstreams
        self._notify = notify

    async def invoke_tool(self, call: NestedToolCall) -> Any:
        return await self._upstreams.invoke_tool(call)

    async def notify(self, call_id: str, cell_id: str, text: str) -> None:
        if self._notify is None:
            logger.info("cell %s: notify: %s", cell_id, text, extra={"cell_id": cell_id})
            return
        await self._notify(call_id, cell_id, text)


async def _relay(
    source: Any, sink: MemoryObjectSendStream[SessionMessage | Exception], dead: asyncio.Event
) -> None:
    """Forward the transport's messages to the session; set ``dead`` when the transport ends."""
    try:
        async with sink:
            async for item in source:
                await sink.send(item)
    except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream):
        pass
    finally:
        dead.set()


@contextlib.asynccontextmanager
async def _http_transport(config: HttpServerConfig) -> Any:
    async with (
        httpx2.AsyncClient(headers=dict(config.headers), timeout=_HTTP_TIMEOUT) as client,
        streamable_http_client(config.url, http_client=client) as streams,
    ):
        yield streams


def _client_info() -> mcp_types.Implementation:
    from codemode import __version__

    return mcp_types.Implementation(name="codemode", version=__version__)


def _describe(error: BaseException) -> str:
    if isinstance(error, MCPError):
        return f"{error.error.message} (JSON-RPC error {error.code})"
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in error.exceptions)
    if isinstance(error, FileNotFoundError) and error.filename:
        return f"command not found: {error.filename}"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
