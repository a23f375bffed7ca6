"""pydantic-ai in code mode: :class:`CodeModeToolset` and :class:`CodeModeCapability`
(extra ``codemode[pydantic-ai]``; docs/integrations.md).

``CodeModeToolset(wrapped)`` wraps any pydantic-ai toolset (a ``FunctionToolset``, an MCP server,
a combination) and offers the model ``exec`` and ``wait`` instead of the wrapped tools, which it
declares in TypeScript in ``exec``'s description. A cell's ``tools.<name>(args)`` runs the wrapped
tool through pydantic-ai's own tool path, with the run context of the ``exec`` call that created
the cell: the same ``deps``, the per-tool retry counts of the run, argument validation against the
tool's schema, the agent's capability hooks (instrumentation included) and its usage limits. A
nested call's pydantic-ai ``tool_call_id`` is ``{exec call id}:{tool-N}``.

What a nested call reports to the cell: the tool's return value as JSON (as pydantic serialises
it). A ``ModelRetry``, a validation error or any other exception rejects the call's promise with
its message; such a failure is the cell's to handle and does not consume the tool's retry budget.
Tools the cell cannot run (kinds other than ``function``: external tools, tools needing approval,
deferred tools) stay visible to the model as they are, next to ``exec`` and ``wait``.

``session`` is as in every adapter (``None``: an in-process ``SessionRuntime`` owned by the
toolset, created on first use and shut down when the toolset is exited, i.e. at the end of each
agent run that entered it; a factory taking the delegate; or a session object).
"""

from __future__ import annotations

import contextvars
import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Final

from pydantic_ai import RunContext
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.messages import ImageUrl, ToolCallPart
from pydantic_ai.tool_manager import ToolManager
from pydantic_ai.tools import AgentDepsT, ToolDefinition
from pydantic_ai.toolsets import AbstractToolset, WrapperToolset
from pydantic_ai.toolsets.abstract import ToolsetTool
from pydantic_core import SchemaValidator, core_schema

from codemode.integrations._bridge import Bridge, SessionArgument, jsonable, tool_definition
from codemode.model import ImageItem, NestedToolCall, TextItem
from codemode.model import ToolDefinition as NestedTool
from codemode.tools.description import EXEC_TOOL_NAME, WAIT_TOOL_NAME
from codemode.tools.exec_wait import CodeModeTools
from codemode.tools.result import ToolResult

__all__ = ["DEFAULT_ID", "CodeModeCapability", "CodeModeToolset"]

DEFAULT_ID: Final = "codemode"
"""The toolset ``id`` when none is given (stable, as durable execution needs)."""

_ARGS_VALIDATOR: Final = SchemaValidator(
    core_schema.dict_schema(core_schema.str_schema(), core_schema.any_schema())
)


@dataclass
class _Run:
    """The pydantic-ai context of one ``exec`` or ``wait`` call, for the nested calls of the cells
    it runs; the nested tool manager is made on the first nested call."""

    ctx: RunContext[Any]
    wrapped: AbstractToolset[Any]
    manager: ToolManager[Any] | None = None

    async def tool_manager(self) -> ToolManager[Any]:
        if self.manager is None:
            ctx = replace(self.ctx)  # a copy: the agent's own context keeps its tool manager
            parent = self.ctx.tool_manager
            root = parent.root_capability if parent is not None else self.ctx.root_capability
            tools = await self.wrapped.get_tools(ctx)
            manager = ToolManager[Any](
                toolset=self.wrapped, root_capability=root, ctx=ctx, tools=tools
            )
            ctx.tool_manager = manager
            self.manager = manager
        return self.manager


class _State:
    """What every copy of one :class:`CodeModeToolset` shares (pydantic-ai copies toolsets per
    run and per step): the bridge to the session and the context of the latest call."""

    def __init__(self, session: SessionArgument) -> None:
        self.bridge = Bridge(session, self.run_nested)
        self.current: contextvars.ContextVar[_Run | None] = contextvars.ContextVar(
            "codemode_pydantic_ai_run", default=None
        )
        self.latest: _Run | None = None
        self.entered = 0

    async def run_nested(self, call: NestedToolCall) -> Any:
        # In-process, the cell's tasks inherit the context of the exec call that created it;
        # across a connection (a RemoteSession), the latest exec or wait call stands in.
        run = self.current.get() or self.latest
        if run is None:
            raise RuntimeError(f"tool `{call.tool.name}` was called outside an agent run")
        manager = await run.tool_manager()
        part = ToolCallPart(
            tool_name=call.tool.name,
            args=call.input,
            tool_call_id=f"{run.ctx.tool_call_id or 'exec'}:{call.call_id}",
        )
        validated = await manager.validate_tool_call(part, wrap_validation_errors=False)
        result = await manager.execute_tool_call(validated, wrap_validation_errors=False)
        return jsonable(result)


class CodeModeToolset(WrapperToolset[AgentDepsT]):
    """A pydantic-ai toolset that offers the model ``exec`` and ``wait`` over ``wrapped``'s tools.

    ``id`` (default :data:`DEFAULT_ID`) is this toolset's stable id; give each its own when an
    agent has several. The session is shared by every copy pydantic-ai makes of the toolset; an
    owned one is shut down when the toolset is exited as often as it was entered.
    """

    def __init__(
        self,
        wrapped: AbstractToolset[AgentDepsT],
        *,
        session: SessionArgument = None,
        id: str | None = None,
    ) -> None:
        super().__init__(wrapped)
        self._id = id or DEFAULT_ID
        self._state = _State(session)

    # ------------------------------------------------------------------ identity and lifecycle

    @property
    def id(self) -> str | None:
        return self._id

    @property
    def label(self) -> str:
        return f"CodeModeToolset({self.wrapped.label})"

    @property
    def code_mode_session(self) -> Any:
        """The session cells run in (``None`` until the first ``exec`` made an owned one)."""
        return self._state.bridge.session._session

    def _derived(self, wrapped: AbstractToolset[AgentDepsT]) -> CodeModeToolset[AgentDepsT]:
        if wrapped is self.wrapped:
            return self
        twin = copy.copy(self)
        twin.wrapped = wrapped
        return twin

    async def for_run(self, ctx: RunContext[AgentDepsT]) -> AbstractToolset[AgentDepsT]:
        return self._derived(await self.wrapped.for_run(ctx))

    async def for_run_step(self, ctx: RunContext[AgentDepsT]) -> AbstractToolset[AgentDepsT]:
        return self._derived(await self.wrapped.for_run_step(ctx))

    def visit_and_replace(
        self, visitor: Callable[[AbstractToolset[AgentDepsT]], AbstractToolset[AgentDepsT]]
    ) -> AbstractToolset[AgentDepsT]:
        return self._derived(self.wrapped.visit_and_replace(visitor))

    async def __aenter__(self) -> CodeModeToolset[AgentDepsT]:
        await self.wrapped.__aenter__()
        self._state.entered += 1
        return self

    async def __aexit__(self, *args: Any) -> bool | None:
        try:
            return await self.wrapped.__aexit__(*args)
        finally:
            self._state.entered -= 1
            if self._state.entered <= 0:
                self._state.entered = 0
                await self._state.bridge.aclose()

    async def aclose(self) -> None:
        """Shut an owned session down now (its running cells are terminated)."""
        await self._state.bridge.aclose()

    # ------------------------------------------------------------------ tools

    async def _split(
        self, ctx: RunContext[AgentDepsT]
    ) -> tuple[CodeModeTools, dict[str, ToolsetTool[AgentDepsT]]]:
        """The ``CodeModeTools`` over the wrapped function tools, and the tools a cell cannot run
        (they stay visible to the model)."""
        nested: list[NestedTool] = []
        direct: dict[str, ToolsetTool[AgentDepsT]] = {}
        for name, tool in (await self.wrapped.get_tools(ctx)).items():
            tool_def = tool.tool_def
            if tool_def.kind == "function" and not tool_def.defer_loading:
                schema = dict(tool_def.parameters_json_schema)
                returns = dict(tool_def.return_schema) if tool_def.return_schema else None
                nested.append(tool_definition(name, tool_def.description, schema, returns))
            else:
                direct[name] = tool
        return self._state.bridge.code_mode_tools(tuple(nested)), direct

    async def get_tools(self, ctx: RunContext[AgentDepsT]) -> dict[str, ToolsetTool[AgentDepsT]]:
        code_tools, direct = await self._split(ctx)
        tools: dict[str, ToolsetTool[AgentDepsT]] = {}
        for spec in (code_tools.exec_tool_spec(), code_tools.wait_tool_spec()):
            tool_def = ToolDefinition(
                name=spec["name"],
                parameters_json_schema=spec["parameters"],
                description=spec["description"],
            )
            tools[spec["name"]] = ToolsetTool(
                toolset=self, tool_def=tool_def, max_retries=1, args_validator=_ARGS_VALIDATOR
            )
        tools.update(direct)
        return tools

    async def call_tool(
        self,
        name: str,
        tool_args: dict[str, Any],
        ctx: RunContext[AgentDepsT],
        tool: ToolsetTool[AgentDepsT],
    ) -> Any:
        if name not in (EXEC_TOOL_NAME, WAIT_TOOL_NAME):  # a tool a cell cannot run
            return await self.wrapped.call_tool(name, tool_args, ctx, tool)
        code_tools, _ = await self._split(ctx)
        run = _Run(ctx, self.wrapped)
        state = self._state
        state.latest = run
        token = state.current.set(run)
        try:
            result = await code_tools.call(name, tool_args, ctx.tool_call_id or "")
        finally:
            state.current.reset(token)
        return model_content(result)


def model_content(result: ToolResult) -> str | list[Any]:
    """A code mode result as pydantic-ai tool output: its text, or text and images in order."""
    if not any(isinstance(item, ImageItem) for item in result.items):
        return result.text
    content: list[Any] = []
    for item in result.items:
        if isinstance(item, TextItem):
            content.append(item.text)
        else:
            content.append(ImageUrl(url=item.image_url))
    return content


@dataclass
class CodeModeCapability(AbstractCapability[AgentDepsT]):
    """The agent's whole toolset in code mode, as a capability:
    ``Agent(model, tools=[...], capabilities=[CodeModeCapability()])``.

    Each run wraps the agent's assembled toolset in a :class:`CodeModeToolset` with this
    ``session`` (``None``: one owned ``SessionRuntime`` per run, shut down when the run ends) and
    ``id``.
    """

    session: SessionArgument = None
    id: str | None = None

    @classmethod
    def get_serialization_name(cls) -> str | None:
        return None  # takes a session object or a callable

    def get_wrapper_toolset(
        self, toolset: AbstractToolset[AgentDepsT]
    ) -> AbstractToolset[AgentDepsT] | None:
        return CodeModeToolset(toolset, session=self.session, id=self.id)
