"""LangChain in code mode: :func:`code_mode_tools` and :class:`CodeModeMiddleware`
(extra ``codemode[langchain]``; docs/integrations.md).

``code_mode_tools(tools)`` turns LangChain tools (any ``BaseTool``: ``@tool`` functions,
``StructuredTool`` s, the tools of ``langchain-mcp-adapters``) into two LangChain tools, ``exec``
and ``wait``, for any agent or loop that runs LangChain tools (``create_agent``, LangGraph's
``ToolNode``). The wrapped tools are declared in TypeScript in ``exec``'s description; a cell's
``tools.<name>(args)`` runs ``tool.ainvoke(args, config)`` with the ``RunnableConfig`` of the
``exec`` call, so callbacks and tracing (LangSmith) show each nested call as a child of ``exec``.

:class:`CodeModeMiddleware` does the same inside ``langchain.agents.create_agent`` for the agent's
own tools: ``create_agent(model, tools=[...], middleware=[CodeModeMiddleware()])`` (it needs the
full ``langchain`` package; ``code_mode_tools`` needs only ``langchain-core``). Before each
model call it hides the agent's tools from the model and offers ``exec`` and ``wait`` over them
instead (provider tools given as dicts stay visible).

What a nested call reports to the cell: the tool's output (its content, for a
``content_and_artifact`` tool) as JSON. A tool that raises rejects the call's promise with the
message (a tool with ``handle_tool_error`` returns its error text instead). Synchronous use
(``invoke``, ``stream``) works too: its cells and nested calls run on a background event loop
(a daemon thread codemode starts on first use), where the owned session then lives; asynchronous
use (``ainvoke``, ``astream``) runs them on the caller's loop. Tools whose arguments LangChain
injects (``ToolRuntime``, ``InjectedState``, ``InjectedToolCallId``) get no injection when called
from a cell.

``session`` is as in every adapter (``None``: an in-process ``SessionRuntime`` made on first use,
owned by the tools; :func:`close_code_mode_tools` or :meth:`CodeModeMiddleware.aclose` shut it
down).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from langchain_core.runnables import RunnableConfig, ensure_config
from langchain_core.tools import BaseTool, InjectedToolCallId, StructuredTool
from pydantic import BaseModel, Field

from codemode.integrations._bridge import Bridge, SessionArgument, jsonable, tool_definition
from codemode.model import ImageItem, NestedToolCall, TextItem, ToolDefinition
from codemode.tools.description import EXEC_TOOL_NAME, WAIT_TOOL_NAME
from codemode.tools.exec_wait import CodeModeTools
from codemode.tools.result import ToolResult

if TYPE_CHECKING:
    from codemode.integrations._langchain_middleware import CodeModeMiddleware

__all__ = ["CodeModeMiddleware", "close_code_mode_tools", "code_mode_tools"]

_T = TypeVar("_T")


class _ExecArguments(BaseModel):
    code: str = Field(description="The JavaScript source of the cell.")
    tool_call_id: Annotated[str, InjectedToolCallId]


class _WaitArguments(BaseModel):
    cell_id: str
    yield_time_ms: float | None = None
    max_tokens: float | None = None
    terminate: bool | None = None
    until: Literal["yield", "completed"] | None = None
    tool_call_id: Annotated[str, InjectedToolCallId]


@dataclass(frozen=True)
class _Run:
    config: RunnableConfig | None


class _Adapter:
    """The tools a cell may call (by name), the bridge, and the config of the latest call."""

    def __init__(self, session: SessionArgument) -> None:
        self.by_name: dict[str, BaseTool] = {}
        self.bridge = Bridge(session, self.run_nested)
        self.definitions: tuple[ToolDefinition, ...] = ()
        self.current: contextvars.ContextVar[_Run | None] = contextvars.ContextVar(
            "codemode_langchain_run", default=None
        )
        self.latest: _Run | None = None

    def use(self, tools: Sequence[BaseTool]) -> CodeModeTools:
        """Make ``tools`` the nested tools of new cells; returns their ``CodeModeTools``."""
        self.definitions = tuple(_definition(t) for t in tools)
        code_tools = self.bridge.code_mode_tools(self.definitions)
        self.by_name.update({tool.name: tool for tool in tools})
        return code_tools

    async def run_nested(self, call: NestedToolCall) -> Any:
        run = self.current.get() or self.latest
        tool = self.by_name[call.tool.name]
        config = run.config if run is not None else None
        return jsonable(await tool.ainvoke(call.input, config=config))

    async def call(
        self, name: str, arguments: dict[str, Any], call_id: str, config: RunnableConfig | None
    ) -> str | list[dict[str, Any]]:
        run = _Run(config)
        self.latest = run
        token = self.current.set(run)
        try:
            code_tools = self.bridge.code_mode_tools(self.definitions)
            result = await code_tools.call(name, arguments, call_id)
        finally:
            self.current.reset(token)
        return tool_content(result)

    def tools(self, code_tools: CodeModeTools) -> list[BaseTool]:
        """``exec`` and ``wait`` with the descriptions of ``code_tools``."""

        # LangChain runs these inside the config of their own tool run (its callbacks are the
        # run's children): ensure_config() reads it.

        async def run_exec(code: str, tool_call_id: str) -> Any:
            return await self.call(EXEC_TOOL_NAME, {"code": code}, tool_call_id, ensure_config())

        def run_exec_sync(code: str, tool_call_id: str) -> Any:
            call = self.call(EXEC_TOOL_NAME, {"code": code}, tool_call_id, ensure_config())
            return _BACKGROUND.run(call)

        def wait_arguments(
            cell_id: str,
            yield_time_ms: float | None = None,
            max_tokens: float | None = None,
            terminate: bool | None = None,
            until: str | None = None,
        ) -> dict[str, Any]:
            return {
                "cell_id": cell_id,
                "yield_time_ms": yield_time_ms,
                "max_tokens": max_tokens,
                "terminate": terminate,
                "until": until,
            }

        async def run_wait(tool_call_id: str, **arguments: Any) -> Any:
            args = wait_arguments(**arguments)
            return await self.call(WAIT_TOOL_NAME, args, tool_call_id, ensure_config())

        def run_wait_sync(tool_call_id: str, **arguments: Any) -> Any:
            args = wait_arguments(**arguments)
            return _BACKGROUND.run(self.call(WAIT_TOOL_NAME, args, tool_call_id, ensure_config()))

        exec_spec = code_tools.exec_tool_spec()
        wait_spec = code_tools.wait_tool_spec()
        return [
            StructuredTool.from_function(
                func=run_exec_sync,
                coroutine=run_exec,
                name=EXEC_TOOL_NAME,
                description=exec_spec["description"],
                args_schema=_ExecArguments,
                infer_schema=False,
            ),
            StructuredTool.from_function(
                func=run_wait_sync,
                coroutine=run_wait,
                name=WAIT_TOOL_NAME,
                description=wait_spec["description"],
                args_schema=_WaitArguments,
                infer_schema=False,
            ),
        ]


def _definition(tool: BaseTool) -> ToolDefinition:
    schema = tool.tool_call_schema
    input_schema: dict[str, Any]
    if isinstance(schema, dict):
        input_schema = dict(schema)
    elif issubclass(schema, BaseModel):
        input_schema = schema.model_json_schema()
    else:  # a pydantic.v1 model
        input_schema = schema.schema()
    input_schema.pop("title", None)
    input_schema.pop("description", None)
    return tool_definition(tool.name, tool.description, input_schema)


_ADAPTER_ATTRIBUTE = "_codemode_adapter"


class _BackgroundLoop:
    """The event loop of synchronous use (``invoke``, ``stream``): a daemon thread, started on
    first use, where the owned session and the nested calls of synchronous runs live."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="codemode-langchain", daemon=True
                )
                thread.start()
                self._loop = loop
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()


_BACKGROUND = _BackgroundLoop()


def code_mode_tools(
    tools: Sequence[BaseTool], *, session: SessionArgument = None
) -> list[BaseTool]:
    """``exec`` and ``wait`` over ``tools``.

    Raises ``ValueError`` when a wrapped tool is named ``exec`` or ``wait``.
    """
    adapter = _Adapter(session)
    made = adapter.tools(adapter.use(tools))
    object.__setattr__(made[0], _ADAPTER_ATTRIBUTE, adapter)
    return made


async def close_code_mode_tools(tools: Sequence[BaseTool]) -> None:
    """Shut down the session :func:`code_mode_tools` made for ``tools`` (its cells are
    terminated); a session given to it is left alone. Harmless to repeat."""
    for tool in tools:
        adapter = getattr(tool, _ADAPTER_ATTRIBUTE, None)
        if isinstance(adapter, _Adapter):
            await adapter.bridge.aclose()


def tool_content(result: ToolResult) -> str | list[dict[str, Any]]:
    """A code mode result as a ``ToolMessage`` content: text, or text and image blocks."""
    if not any(isinstance(item, ImageItem) for item in result.items):
        return result.text
    return [
        {"type": "text", "text": item.text}
        if isinstance(item, TextItem)
        else {"type": "image_url", "image_url": {"url": item.image_url}}
        for item in result.items
    ]


def __getattr__(name: str) -> Any:
    # The middleware needs the full ``langchain`` package; ``code_mode_tools`` only
    # ``langchain-core``. Import it on first use.
    if name == "CodeModeMiddleware":
        from codemode.integrations._langchain_middleware import CodeModeMiddleware

        return CodeModeMiddleware
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
