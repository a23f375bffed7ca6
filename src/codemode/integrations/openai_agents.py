"""The OpenAI Agents SDK in code mode: :func:`code_mode_tools` (extra ``codemode[openai-agents]``;
docs/integrations.md).

``code_mode_tools(tools)`` turns the SDK's ``FunctionTool`` s into the two tools of code mode for
an ``Agent(tools=...)``: ``exec`` (by default a Responses *custom* tool taking the raw JavaScript,
as codex has it; ``freeform=False`` makes it a function tool taking ``{code}``, for models without
custom tools such as Chat Completions) and ``wait``. The wrapped tools are declared in TypeScript
in ``exec``'s description; a cell's ``tools.<name>(args)`` calls the ``FunctionTool``'s
``on_invoke_tool`` with a ``ToolContext`` derived from the ``exec`` call's: the same run context
(``context``, usage, agent, run config), the tool's name, the arguments as JSON, and the call id
``{exec call id}:{tool-N}``, inside a function span of the SDK's trace, child of ``exec``'s.
The MCP servers' tools join as ``FunctionTool`` s, listed once with
:func:`mcp_function_tools`.

What a nested call reports to the cell: the tool's return value as JSON. A ``FunctionTool`` made
with ``@function_tool`` turns its own exceptions into an error *string* (the SDK's failure error
function), which the cell receives as the result; a tool without one rejects the call's promise
with the exception's message. Tools the cell cannot run as the SDK would (those with
``needs_approval``, input or output guardrails, or that are not ``FunctionTool`` s: hosted,
computer, shell tools...) are returned unchanged next to ``exec`` and ``wait``, for the model to
call directly.

``session`` is as in every adapter (``None``: an in-process ``SessionRuntime`` made on first use,
owned by the tools; see :func:`close_code_mode_tools`).
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agents import Agent, CustomTool, FunctionTool, RunContextWrapper, Tool
from agents.mcp import MCPServer, MCPUtil
from agents.tool import ToolOutputImage, ToolOutputText
from agents.tool_context import ToolContext
from agents.tracing import function_span, get_current_span

from codemode.integrations._bridge import Bridge, SessionArgument, jsonable, tool_definition
from codemode.model import ImageItem, NestedToolCall, TextItem
from codemode.tools.description import EXEC_TOOL_NAME, WAIT_TOOL_NAME
from codemode.tools.result import ToolResult

__all__ = ["close_code_mode_tools", "code_mode_tools", "mcp_function_tools"]


@dataclass(frozen=True)
class _Run:
    context: ToolContext[Any]
    span: Any  # the SDK's trace span current in the exec or wait call (its function span)


class _Adapter:
    def __init__(self, tools: Sequence[FunctionTool], session: SessionArgument) -> None:
        self.by_name = {tool.name: tool for tool in tools}
        self.bridge = Bridge(session, self.run_nested)
        self.definitions = tuple(
            tool_definition(t.name, t.description, t.params_json_schema, t.output_json_schema)
            for t in tools
        )
        self.bridge.code_mode_tools(self.definitions)  # checks the names now
        self.current: contextvars.ContextVar[_Run | None] = contextvars.ContextVar(
            "codemode_openai_agents_run", default=None
        )
        self.latest: _Run | None = None

    async def run_nested(self, call: NestedToolCall) -> Any:
        run = self.current.get() or self.latest
        if run is None:
            raise RuntimeError(f"tool `{call.tool.name}` was called outside an agent run")
        tool = self.by_name[call.tool.name]
        outer = run.context
        arguments = json.dumps(call.input, ensure_ascii=False)
        context = ToolContext(
            context=outer.context,
            usage=outer.usage,
            tool_name=tool.name,
            tool_call_id=f"{outer.tool_call_id}:{call.call_id}",
            tool_arguments=arguments,
            agent=outer.agent,
            run_config=outer.run_config,
        )
        # A function span in the SDK's own trace, child of exec's, as the runner makes for the
        # tools it calls.
        with function_span(tool.name, input=arguments, parent=run.span) as span:
            result = jsonable(await tool.on_invoke_tool(context, arguments))
            span.span_data.output = result if isinstance(result, str) else json.dumps(result)
        return result

    async def call(self, name: str, context: ToolContext[Any], arguments: str) -> ToolResult:
        run = _Run(context, get_current_span())
        self.latest = run
        token = self.current.set(run)
        try:
            code_tools = self.bridge.code_mode_tools(self.definitions)
            return await code_tools.call(name, arguments, context.tool_call_id)
        finally:
            self.current.reset(token)


def _runs_nested(tool: Tool) -> bool:
    return (
        isinstance(tool, FunctionTool)
        and tool.needs_approval is False
        and not tool.tool_input_guardrails
        and not tool.tool_output_guardrails
    )


def code_mode_tools(
    tools: Sequence[Tool], *, session: SessionArgument = None, freeform: bool = True
) -> list[Tool]:
    """``exec`` and ``wait`` over ``tools``' function tools, then the tools a cell cannot run.
    Tools with ``is_enabled=False`` are left out; a callable ``is_enabled`` is not consulted
    for nested calls (the cell sees the tool).

    Raises ``ValueError`` when a wrapped tool is named ``exec`` or ``wait``.
    """
    enabled = [tool for tool in tools if getattr(tool, "is_enabled", True) is not False]
    nested = [tool for tool in enabled if _runs_nested(tool)]
    direct = [tool for tool in enabled if not _runs_nested(tool)]
    adapter = _Adapter(nested, session)  # type: ignore[arg-type]
    code_tools = adapter.bridge.code_mode_tools(adapter.definitions)

    async def run_exec_freeform(context: ToolContext[Any], source: str) -> str:
        return (await adapter.call(EXEC_TOOL_NAME, context, source)).text

    async def run_exec(context: ToolContext[Any], arguments: str) -> Any:
        return tool_output(await adapter.call(EXEC_TOOL_NAME, context, arguments))

    async def run_wait(context: ToolContext[Any], arguments: str) -> Any:
        return tool_output(await adapter.call(WAIT_TOOL_NAME, context, arguments))

    exec_tool: Tool
    if freeform:
        spec = code_tools.exec_tool_spec(freeform=True)
        exec_tool = CustomTool(
            name=EXEC_TOOL_NAME,
            description=spec["description"],
            on_invoke_tool=run_exec_freeform,
            format=spec["format"],
        )
    else:
        spec = code_tools.exec_tool_spec()
        exec_tool = FunctionTool(
            name=EXEC_TOOL_NAME,
            description=spec["description"],
            params_json_schema=spec["parameters"],
            on_invoke_tool=run_exec,
            strict_json_schema=False,
        )
    wait_spec = code_tools.wait_tool_spec()
    wait_tool = FunctionTool(
        name=WAIT_TOOL_NAME,
        description=wait_spec["description"],
        params_json_schema=wait_spec["parameters"],
        on_invoke_tool=run_wait,
        strict_json_schema=False,
    )
    setattr(exec_tool, _ADAPTER_ATTRIBUTE, adapter)  # the SDK dataclasses have no field for it
    return [exec_tool, wait_tool, *direct]


_ADAPTER_ATTRIBUTE = "_codemode_adapter"


async def close_code_mode_tools(tools: Sequence[Tool]) -> None:
    """Shut down the session :func:`code_mode_tools` made for ``tools`` (its cells are
    terminated); a session given to it is left alone. Harmless to repeat."""
    for tool in tools:
        adapter = getattr(tool, _ADAPTER_ATTRIBUTE, None)
        if isinstance(adapter, _Adapter):
            await adapter.bridge.aclose()


def tool_output(result: ToolResult) -> str | list[ToolOutputText | ToolOutputImage]:
    """A code mode result as a function tool's output: text, or text and images in order."""
    if not any(isinstance(item, ImageItem) for item in result.items):
        return result.text
    return [
        ToolOutputText(text=item.text)
        if isinstance(item, TextItem)
        else ToolOutputImage(image_url=item.image_url, detail=_detail(item))
        for item in result.items
    ]


def _detail(item: ImageItem) -> Any:
    detail = item.detail.value if item.detail is not None else None
    return detail if detail in ("low", "high", "auto") else None


async def mcp_function_tools(
    servers: Sequence[MCPServer], *, agent: Agent[Any] | None = None
) -> list[FunctionTool]:
    """The tools of connected MCP servers as ``FunctionTool`` s, to pass to
    :func:`code_mode_tools` (listed once: tools a server adds later are not seen)."""
    owner: Agent[Any] = agent or Agent(name="codemode")
    found: list[FunctionTool] = []
    for index, server in enumerate(servers):
        tools = await MCPUtil.get_function_tools(
            server,
            convert_schemas_to_strict=False,
            run_context=RunContextWrapper(context=None),
            agent=owner,
            server_index=index,
        )
        found.extend(tool for tool in tools if isinstance(tool, FunctionTool))
    return found
