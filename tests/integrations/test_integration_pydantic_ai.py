"""pydantic-ai in code mode: a real ``Agent`` driven by pydantic-ai's ``FunctionModel`` runs a
cell that calls two wrapped tools in parallel, then answers from the result."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic_ai import Agent, ModelRetry, RunContext
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.toolsets import FunctionToolset

from codemode import SessionRuntime
from codemode.integrations.pydantic_ai import CodeModeCapability, CodeModeToolset

CELL = """
const [weather, population] = await Promise.all([
  tools.get_weather({city: "Paris"}),
  tools.get_population({city: "Paris", year: 2020}),
]);
text(`${weather.summary}; ${population} people`);
"""


@dataclass
class Deps:
    """The agent's dependencies: what each tool saw, and a barrier proving the two calls overlap."""

    units: str
    seen: list[tuple[str, dict[str, Any], str | None, int]] = field(default_factory=list)
    arrived: int = 0
    both: asyncio.Event = field(default_factory=asyncio.Event)

    async def meet(self) -> None:
        self.arrived += 1
        if self.arrived == 2:
            self.both.set()
        await asyncio.wait_for(self.both.wait(), 30)


def make_toolset() -> FunctionToolset[Deps]:
    toolset: FunctionToolset[Deps] = FunctionToolset()

    @toolset.tool
    async def get_weather(ctx: RunContext[Deps], city: str) -> dict[str, str]:
        """The current weather in a city."""
        ctx.deps.seen.append(("get_weather", {"city": city}, ctx.tool_call_id, ctx.retry))
        await ctx.deps.meet()
        return {"summary": f"sunny in {city}, 21 {ctx.deps.units}"}

    @toolset.tool
    async def get_population(ctx: RunContext[Deps], city: str, year: int) -> int:
        """The population of a city in a year."""
        ctx.deps.seen.append(
            ("get_population", {"city": city, "year": year}, ctx.tool_call_id, ctx.retry)
        )
        await ctx.deps.meet()
        return 2_100_000

    @toolset.tool
    async def fragile(ctx: RunContext[Deps], n: int) -> int:
        """Asks for a retry."""
        raise ModelRetry(f"try again with n={n + 1}")

    return toolset


class ScriptedModel:
    """The model: first calls ``exec`` with ``code``, then answers with what ``exec`` returned."""

    def __init__(self, code: str) -> None:
        self.code = code
        self.infos: list[AgentInfo] = []
        self.returns: list[ToolReturnPart] = []

    def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.infos.append(info)
        last = messages[-1]
        assert isinstance(last, ModelRequest)
        returns = [p for p in last.parts if isinstance(p, ToolReturnPart)]
        if not returns:
            return ModelResponse(
                parts=[ToolCallPart("exec", {"code": self.code}, tool_call_id="call_1")]
            )
        self.returns.extend(returns)
        return ModelResponse(parts=[TextPart(f"answer: {returns[0].model_response_str()}")])


def check_tools_seen(info: AgentInfo) -> None:
    names = [t.name for t in info.function_tools]
    assert names == ["exec", "wait"]
    exec_def = info.function_tools[0]
    assert exec_def.parameters_json_schema["required"] == ["code"]
    description = exec_def.description or ""
    assert "get_weather(args: { city: string; }): Promise<" in description
    assert (
        "get_population(args: {\n  city: string;\n  // integer\n  year: number;\n}): Promise<"
        in description
    )
    assert "The current weather in a city." in description


async def test_agent_runs_two_wrapped_tools_in_parallel_in_one_cell() -> None:
    model = ScriptedModel(CELL)
    toolset = CodeModeToolset(make_toolset())
    agent = Agent(FunctionModel(model), deps_type=Deps, toolsets=[toolset])
    deps = Deps(units="°C")
    result = await agent.run("Weather and population of Paris?", deps=deps)

    check_tools_seen(model.infos[0])
    # The wrapped tools got the agent's deps and their arguments, validated, in parallel.
    assert sorted(s[:2] for s in deps.seen) == [
        ("get_population", {"city": "Paris", "year": 2020}),
        ("get_weather", {"city": "Paris"}),
    ]
    assert sorted(s[2] or "" for s in deps.seen) == ["call_1:tool-1", "call_1:tool-2"]
    assert all(s[3] == 0 for s in deps.seen)
    # The model saw the cell's result, and answered from it.
    (returned,) = model.returns
    assert returned.tool_name == "exec" and returned.tool_call_id == "call_1"
    content = returned.model_response_str()
    assert content.startswith("Script completed\nWall time ")
    assert content.endswith("Output:\n\nsunny in Paris, 21 °C; 2100000 people")
    assert result.output == f"answer: {content}"
    # The owned session was shut down with the run.
    assert toolset.code_mode_session is None


async def test_nested_failures_reach_the_cell_not_the_retry_budget() -> None:
    code = """
    const out = [];
    for (const call of [() => tools.fragile({n: 1}), () => tools.get_population({city: 3})]) {
      try { await call(); } catch (e) { out.push(String(e.message ?? e)); }
    }
    text(out.join(" | "));
    """
    model = ScriptedModel(code)
    agent = Agent(FunctionModel(model), deps_type=Deps, toolsets=[CodeModeToolset(make_toolset())])
    deps = Deps(units="°C")
    await agent.run("go", deps=deps)
    (returned,) = model.returns
    content = returned.model_response_str()
    assert "try again with n=2" in content
    assert "year" in content and "Field required" in content  # pydantic's validation message
    assert deps.seen == []


async def test_capability_and_a_session_factory() -> None:
    made: list[SessionRuntime] = []

    def factory(delegate: Any) -> SessionRuntime:
        made.append(SessionRuntime(delegate))
        return made[-1]

    model = ScriptedModel(CELL)
    agent = Agent(
        FunctionModel(model),
        deps_type=Deps,
        toolsets=[make_toolset()],
        capabilities=[CodeModeCapability(session=factory)],
    )
    result = await agent.run("go", deps=Deps(units="K"))
    check_tools_seen(model.infos[0])
    assert result.output.endswith("sunny in Paris, 21 K; 2100000 people")
    assert len(made) == 1 and not made[0].is_alive  # owned: shut down at the end of the run


async def test_a_given_session_is_shared_and_left_open() -> None:
    async with SessionRuntime(_no_tools()) as session:
        toolset = CodeModeToolset(make_toolset(), session=session, id="cm")
        assert toolset.id == "cm"
        model = ScriptedModel('text("hi")')
        agent = Agent(FunctionModel(model), deps_type=Deps, toolsets=[toolset])
        result = await agent.run("go", deps=Deps(units="K"))
        assert result.output.endswith("Output:\n\nhi")
        assert session.is_alive


def _no_tools() -> Any:
    from codemode import tools_delegate

    return tools_delegate({})


def test_default_id_is_stable() -> None:
    assert CodeModeToolset(make_toolset()).id == CodeModeToolset(make_toolset()).id == "codemode"


@pytest.mark.parametrize("name", ["exec", "wait"])
async def test_a_wrapped_tool_named_like_a_code_mode_tool_is_refused(name: str) -> None:
    toolset: FunctionToolset[None] = FunctionToolset()
    toolset.add_function(lambda: 1, name=name)
    agent = Agent(FunctionModel(ScriptedModel("1")), toolsets=[CodeModeToolset(toolset)])
    with pytest.raises(ValueError, match=f"cannot be named `{name}`"):
        await agent.run("go")


async def test_cells_run_in_codemode_serve_through_a_session_factory() -> None:
    """``session`` may make a ``RemoteSession``: the cell runs in a ``codemode serve`` child
    process and its nested calls come back to the agent's tools over the connection."""
    from codemode.protocol.client import RemoteSession

    model = ScriptedModel(CELL)
    toolset = CodeModeToolset(
        make_toolset(), session=lambda delegate: RemoteSession.spawn(delegate)
    )
    agent = Agent(FunctionModel(model), deps_type=Deps, toolsets=[toolset])
    deps = Deps(units="°C")
    result = await agent.run("go", deps=deps)
    assert result.output.endswith("sunny in Paris, 21 °C; 2100000 people")
    assert sorted(s[2] or "" for s in deps.seen) == ["call_1:tool-1", "call_1:tool-2"]
    assert toolset.code_mode_session is None  # the spawned server was shut down with the run


async def test_an_mcp_toolset_runs_in_a_cell() -> None:
    """A pydantic-ai ``MCPToolset`` (a stdio MCP server: mcp-server-time) wrapped whole."""
    import sys

    from pydantic_ai.mcp import MCPToolset, StdioTransport

    server = MCPToolset(
        StdioTransport(
            command=sys.executable, args=["-m", "mcp_server_time", "--local-timezone", "UTC"]
        ),
        id="time",
    )
    code = """
    const [now, converted] = await Promise.all([
      tools.get_current_time({timezone: "Europe/Paris"}),
      tools.convert_time({source_timezone: "UTC", time: "12:00", target_timezone: "Asia/Tokyo"}),
    ]);
    text(JSON.stringify([now, converted]));
    """
    model = ScriptedModel(code)
    agent = Agent(FunctionModel(model), toolsets=[CodeModeToolset(server)])
    await agent.run("What time is it?")
    description = model.infos[0].function_tools[0].description or ""
    assert "convert_time(args: {" in description and "get_current_time(args: {" in description
    content = model.returns[0].model_response_str()
    assert content.startswith("Script completed"), content
    assert "Europe/Paris" in content and "Asia/Tokyo" in content and "21:00" in content


async def test_tools_needing_approval_stay_visible_to_the_model() -> None:
    toolset = make_toolset()

    @toolset.tool(requires_approval=True)
    async def delete_city(ctx: RunContext[Deps], city: str) -> str:
        """Deletes a city."""
        return "deleted"

    model = ScriptedModel('text(typeof tools.delete_city + " " + typeof tools.get_weather)')
    agent = Agent(FunctionModel(model), deps_type=Deps, toolsets=[CodeModeToolset(toolset)])
    await agent.run("go", deps=Deps(units="K"))
    info = model.infos[0]
    assert [t.name for t in info.function_tools] == ["exec", "wait", "delete_city"]
    assert "delete_city" not in (info.function_tools[0].description or "")
    assert model.returns[0].model_response_str().endswith("Output:\n\nundefined function")
