"""The OpenAI Agents SDK in code mode: a real ``Agent`` and ``Runner``, driven by a model that
implements the SDK's ``Model`` interface, runs a cell calling two wrapped tools in parallel and
answers from the result. The SDK's tracing is disabled: nothing leaves the process."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from agents import (
    Agent,
    CustomTool,
    FunctionTool,
    Model,
    ModelResponse,
    RunConfig,
    RunContextWrapper,
    Runner,
    Usage,
    function_tool,
)
from agents.tracing import FunctionSpanData, TracingProcessor, set_trace_processors
from openai.types.responses import (
    ResponseCustomToolCall,
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)

from codemode import SessionRuntime
from codemode.integrations.openai_agents import (
    close_code_mode_tools,
    code_mode_tools,
    mcp_function_tools,
)

CELL = """
const [weather, population] = await Promise.all([
  tools.get_weather({city: "Paris"}),
  tools.get_population({city: "Paris", year: 2020}),
]);
text(`${weather.summary}; ${population} people`);
"""

NO_TRACING = RunConfig(tracing_disabled=True)


@dataclass
class Deps:
    units: str
    seen: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)
    arrived: int = 0
    both: asyncio.Event = field(default_factory=asyncio.Event)

    async def meet(self) -> None:
        self.arrived += 1
        if self.arrived == 2:
            self.both.set()
        await asyncio.wait_for(self.both.wait(), 30)


@function_tool
async def get_weather(ctx: RunContextWrapper[Deps], city: str) -> dict[str, str]:
    """The current weather in a city."""
    assert isinstance(ctx, RunContextWrapper)
    ctx.context.seen.append(("get_weather", {"city": city}, getattr(ctx, "tool_call_id", "")))
    await ctx.context.meet()
    return {"summary": f"sunny in {city}, 21 {ctx.context.units}"}


@function_tool
async def get_population(ctx: RunContextWrapper[Deps], city: str, year: int) -> int:
    """The population of a city in a year."""
    ctx.context.seen.append(
        ("get_population", {"city": city, "year": year}, getattr(ctx, "tool_call_id", ""))
    )
    await ctx.context.meet()
    return 2_100_000


class ScriptedModel(Model):
    """The model: calls ``exec`` with ``code`` first, then answers with what ``exec`` returned."""

    def __init__(self, code: str, *, freeform: bool = True) -> None:
        self.code = code
        self.freeform = freeform
        self.tools_seen: list[list[Any]] = []
        self.outputs: list[dict[str, Any]] = []

    async def get_response(
        self,
        system_instructions: str | None,
        input: Any,
        model_settings: Any,
        tools: list[Any],
        output_schema: Any,
        handoffs: list[Any],
        tracing: Any,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: Any,
        **kwargs: Any,
    ) -> ModelResponse:
        self.tools_seen.append(list(tools))
        items = input if isinstance(input, list) else []
        outputs = [
            dict(i)
            for i in items
            if isinstance(i, dict)
            and i.get("type") in ("custom_tool_call_output", "function_call_output")
        ]
        if not outputs:
            call: Any
            if self.freeform:
                call = ResponseCustomToolCall(
                    call_id="call_1", input=self.code, name="exec", type="custom_tool_call"
                )
            else:
                call = ResponseFunctionToolCall(
                    call_id="call_1",
                    arguments=json.dumps({"code": self.code}),
                    name="exec",
                    type="function_call",
                )
            return ModelResponse(output=[call], usage=Usage(), response_id=None)
        self.outputs.extend(outputs)
        text = outputs[0]["output"]
        if not isinstance(text, str):
            text = json.dumps(text)
        message = ResponseOutputMessage(
            id="msg_1",
            content=[
                ResponseOutputText(annotations=[], text=f"answer: {text}", type="output_text")
            ],
            role="assistant",
            status="completed",
            type="message",
        )
        return ModelResponse(output=[message], usage=Usage(), response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        raise NotImplementedError


def check_exec_description(description: str) -> None:
    assert "get_weather(args: { city: string; }): Promise<" in description
    assert (
        "get_population(args: {\n  city: string;\n  // integer\n  year: number;\n}): Promise<"
        in description
    )
    assert "The current weather in a city." in description


@pytest.mark.parametrize("freeform", [True, False])
async def test_agent_runs_two_wrapped_tools_in_parallel_in_one_cell(freeform: bool) -> None:
    tools = code_mode_tools([get_weather, get_population], freeform=freeform)
    model = ScriptedModel(CELL, freeform=freeform)
    agent = Agent[Deps](name="assistant", model=model, tools=tools)
    deps = Deps(units="°C")
    try:
        result = await Runner.run(
            agent, "Weather and population of Paris?", context=deps, run_config=NO_TRACING
        )
    finally:
        await close_code_mode_tools(tools)

    (seen,) = model.tools_seen[:1]
    assert [t.name for t in seen] == ["exec", "wait"]
    exec_tool = seen[0]
    assert isinstance(exec_tool, CustomTool if freeform else FunctionTool)
    check_exec_description(exec_tool.description)
    if freeform:
        assert isinstance(exec_tool, CustomTool)
        assert exec_tool.tool_config["format"] == {"type": "text"}
    # The wrapped tools got the run context and their arguments, in parallel.
    assert sorted(s[:2] for s in deps.seen) == [
        ("get_population", {"city": "Paris", "year": 2020}),
        ("get_weather", {"city": "Paris"}),
    ]
    assert sorted(s[2] for s in deps.seen) == ["call_1:tool-1", "call_1:tool-2"]
    # The model saw the cell's result and answered from it.
    (output,) = model.outputs
    assert output["call_id"] == "call_1"
    content = output["output"]
    assert content.startswith("Script completed\nWall time ")
    assert content.endswith("Output:\n\nsunny in Paris, 21 °C; 2100000 people")
    assert result.final_output == f"answer: {content}"


async def test_tools_needing_approval_stay_outside_and_a_given_session_is_used() -> None:
    @function_tool(needs_approval=True)
    def delete_everything() -> str:
        """Deletes everything."""
        return "gone"

    async with SessionRuntime(_echo_delegate()) as session:
        tools = code_mode_tools([get_weather, delete_everything], session=session)
        assert [t.name for t in tools] == ["exec", "wait", "delete_everything"]
        assert isinstance(tools[0], FunctionTool | CustomTool)
        assert "delete_everything" not in tools[0].description
        model = ScriptedModel('text("hi")')
        agent = Agent[Deps](name="a", model=model, tools=tools)
        result = await Runner.run(agent, "go", context=Deps(units="K"), run_config=NO_TRACING)
        assert result.final_output.endswith("Output:\n\nhi")
        await close_code_mode_tools(tools)
        assert session.is_alive  # given, not owned


def _echo_delegate() -> Any:
    from codemode import tools_delegate

    return tools_delegate({})


def test_the_tools_work_across_event_loops() -> None:
    """Each ``asyncio.run`` is a new loop: the owned session follows (a new one per loop, with
    a fresh memory of call ids: the scripted model reuses ``call_1``)."""
    tools = code_mode_tools([get_weather, get_population])
    for units in ("K", "°F"):
        model = ScriptedModel(CELL)
        agent = Agent[Deps](name="a", model=model, tools=tools)
        result = asyncio.run(
            Runner.run(agent, "go", context=Deps(units=units), run_config=NO_TRACING)
        )
        assert result.final_output.endswith(f"sunny in Paris, 21 {units}; 2100000 people")
    asyncio.run(close_code_mode_tools(tools))


class Spans(TracingProcessor):
    """Keeps the SDK's finished spans in memory (replaces the exporter: nothing is sent)."""

    def __init__(self) -> None:
        self.ended: list[Any] = []

    def on_trace_start(self, trace: Any) -> None:
        pass

    def on_trace_end(self, trace: Any) -> None:
        pass

    def on_span_start(self, span: Any) -> None:
        pass

    def on_span_end(self, span: Any) -> None:
        self.ended.append(span)

    def shutdown(self) -> None:
        pass

    def force_flush(self) -> None:
        pass


async def test_nested_calls_appear_in_the_sdks_trace_under_exec() -> None:
    spans = Spans()
    set_trace_processors([spans])
    tools = code_mode_tools([get_weather, get_population])
    try:
        agent = Agent[Deps](name="a", model=ScriptedModel(CELL), tools=tools)
        await Runner.run(agent, "go", context=Deps(units="K"))
    finally:
        set_trace_processors([])
        await close_code_mode_tools(tools)
    functions = {
        s.span_data.name: s for s in spans.ended if isinstance(s.span_data, FunctionSpanData)
    }
    exec_span = next(s for s in spans.ended if getattr(s.span_data, "name", None) == "exec")
    for name in ("get_weather", "get_population"):
        assert functions[name].parent_id == exec_span.span_id
        assert functions[name].trace_id == exec_span.trace_id
    assert functions["get_weather"].span_data.input == '{"city": "Paris"}'
    assert functions["get_population"].span_data.output == "2100000"


def test_a_wrapped_tool_named_exec_is_refused() -> None:
    @function_tool(name_override="exec")
    def clash() -> str:
        """Clashes."""
        return ""

    with pytest.raises(ValueError, match="cannot be named `exec`"):
        code_mode_tools([clash])


async def test_mcp_server_tools_run_in_a_cell() -> None:
    from agents.mcp import MCPServerStdio

    server = MCPServerStdio(
        params={
            "command": sys.executable,
            "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"],
        },
        client_session_timeout_seconds=60,
    )
    async with server:
        mcp_tools = await mcp_function_tools([server])
        assert "convert_time" in [t.name for t in mcp_tools]
        tools = code_mode_tools(mcp_tools)
        code = """
        const [a, b] = await Promise.all([
          tools.get_current_time({timezone: "Europe/Paris"}),
          tools.convert_time({source_timezone: "UTC", time: "12:00", target_timezone: "Asia/Tokyo"}),
        ]);
        text(JSON.stringify([a, b]));
        """
        model = ScriptedModel(code)
        agent = Agent[Deps](name="a", model=model, tools=tools)
        try:
            await Runner.run(agent, "go", context=Deps(units="K"), run_config=NO_TRACING)
        finally:
            await close_code_mode_tools(tools)
    content = model.outputs[0]["output"]
    assert content.startswith("Script completed"), content
    assert "Europe/Paris" in content and "Asia/Tokyo" in content and "21:00" in content
