"""LangChain in code mode: a real ``create_agent`` agent, driven by LangChain's
``GenericFakeChatModel`` (taught to bind tools and to answer from the last tool message), runs a
cell calling two wrapped tools in parallel and answers from the result."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field

from codemode.integrations.langchain import (
    CodeModeMiddleware,
    close_code_mode_tools,
    code_mode_tools,
)

CELL = """
const [weather, population] = await Promise.all([
  tools.get_weather({city: "Paris"}),
  tools.get_population({city: "Paris", year: 2020}),
]);
text(`${weather.summary}; ${population} people`);
"""

SEEN: list[tuple[str, dict[str, Any]]] = []
_BOTH: list[asyncio.Event] = []


async def _meet() -> None:
    """Both calls must be in flight at once: the first waits for the second."""
    if not _BOTH:
        _BOTH.append(asyncio.Event())
    if len(SEEN) == 2:
        _BOTH[0].set()
    await asyncio.wait_for(_BOTH[0].wait(), 30)


@tool
async def get_weather(city: str) -> dict[str, str]:
    """The current weather in a city."""
    SEEN.append(("get_weather", {"city": city}))
    await _meet()
    return {"summary": f"sunny in {city}, 21 °C"}


@tool
async def get_population(city: str, year: int) -> int:
    """The population of a city in a year."""
    SEEN.append(("get_population", {"city": city, "year": year}))
    await _meet()
    return 2_100_000


@pytest.fixture(autouse=True)
def _reset() -> None:
    SEEN.clear()
    _BOTH.clear()


class ScriptedChatModel(GenericFakeChatModel):
    """First calls ``exec`` with ``code``; once a tool answered, answers with its content."""

    code: str = ""
    bound: list[list[dict[str, Any]]] = Field(default_factory=list)
    tool_messages: list[ToolMessage] = Field(default_factory=list)

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        self.bound.append([convert_to_openai_tool(t) for t in tools])
        return self

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        last = messages[-1]
        if isinstance(last, ToolMessage):
            self.tool_messages.append(last)
            message = AIMessage(content=f"answer: {last.content}")
        else:
            message = AIMessage(
                content="",
                tool_calls=[{"name": "exec", "args": {"code": self.code}, "id": "call_1"}],
            )
        return ChatResult(generations=[ChatGeneration(message=message)])


def make_model(code: str) -> ScriptedChatModel:
    return ScriptedChatModel(messages=iter(()), code=code, bound=[], tool_messages=[])


def check_model_saw(model: ScriptedChatModel) -> None:
    functions = [t["function"] for t in model.bound[0]]
    assert [f["name"] for f in functions] == ["exec", "wait"]
    assert functions[0]["parameters"]["required"] == ["code"]
    assert "tool_call_id" not in functions[0]["parameters"]["properties"]
    description = functions[0]["description"]
    assert "get_weather(args: { city: string; }): Promise<" in description
    assert (
        "get_population(args: {\n  city: string;\n  // integer\n  year: number;\n}): Promise<"
        in description
    )
    assert "The current weather in a city." in description


def check_result(model: ScriptedChatModel, result: dict[str, Any]) -> None:
    assert sorted(SEEN) == [
        ("get_population", {"city": "Paris", "year": 2020}),
        ("get_weather", {"city": "Paris"}),
    ]
    (message,) = model.tool_messages
    assert message.tool_call_id == "call_1" and message.name == "exec"
    content = message.content
    assert isinstance(content, str)
    assert content.startswith("Script completed\nWall time ")
    assert content.endswith("Output:\n\nsunny in Paris, 21 °C; 2100000 people")
    assert result["messages"][-1].content == f"answer: {content}"


class Runs(AsyncCallbackHandler):
    """Records the tool runs LangChain's callbacks report, with their parents."""

    def __init__(self) -> None:
        self.starts: dict[Any, tuple[str, Any]] = {}

    async def on_tool_start(
        self,
        serialized: Any,
        input_str: str,
        *,
        run_id: Any,
        parent_run_id: Any = None,
        **kwargs: Any,
    ) -> None:
        self.starts[run_id] = (serialized.get("name", ""), parent_run_id)


def ask(text: str) -> Any:
    """An agent's input: one user message (typed loosely: the graph's state type is generic)."""
    return {"messages": [("user", text)]}


async def test_agent_with_code_mode_tools() -> None:
    tools = code_mode_tools([get_weather, get_population])
    model = make_model(CELL)
    agent = create_agent(model, tools=tools)
    runs = Runs()
    try:
        result = await agent.ainvoke(
            ask("Weather and population of Paris?"),
            config={"callbacks": [runs]},
        )
    finally:
        await close_code_mode_tools(tools)
    check_model_saw(model)
    check_result(model, result)
    # The nested tool runs are children of the exec tool run in LangChain's callbacks.
    by_name = {name: (run_id, parent) for run_id, (name, parent) in runs.starts.items()}
    exec_run = by_name["exec"][0]
    assert by_name["get_weather"][1] == exec_run
    assert by_name["get_population"][1] == exec_run


async def test_agent_with_the_middleware() -> None:
    model = make_model(CELL)
    middleware = CodeModeMiddleware()
    agent = create_agent(model, tools=[get_weather, get_population], middleware=[middleware])
    try:
        result = await agent.ainvoke(ask("Weather and population of Paris?"))
    finally:
        await middleware.aclose()
    check_model_saw(model)
    check_result(model, result)


async def test_a_failing_nested_tool_rejects_in_the_cell() -> None:
    @tool
    async def broken(x: int) -> int:
        """Always fails."""
        raise RuntimeError(f"broken with {x}")

    code = 'try { await tools.broken({x: 3}); } catch (e) { text("caught: " + e.message); }'
    tools = code_mode_tools([broken])
    model = make_model(code)
    try:
        await create_agent(model, tools=tools).ainvoke(ask("go"))
    finally:
        await close_code_mode_tools(tools)
    assert str(model.tool_messages[0].content).endswith("Output:\n\ncaught: broken with 3")


def test_synchronous_invoke() -> None:
    """``agent.invoke``: the cells run on codemode's background loop."""
    tools = code_mode_tools([get_weather, get_population])
    model = make_model(CELL)
    result = create_agent(model, tools=tools).invoke(ask("go"))
    check_result(model, result)
    adapter = tools[0]._codemode_adapter  # type: ignore[attr-defined]
    session = adapter.bridge.session._session
    assert session is not None and session.is_alive
    asyncio.run(close_code_mode_tools(tools))  # shuts it down on its own loop
    assert adapter.bridge.session._session is None
    assert not session.is_alive


def test_a_wrapped_tool_named_wait_is_refused() -> None:
    @tool("wait")
    def clash() -> str:
        """Clashes."""
        return ""

    with pytest.raises(ValueError, match="cannot be named `wait`"):
        code_mode_tools([clash])


def test_code_mode_tools_need_only_langchain_core() -> None:
    code = (
        "import sys\n"
        "from langchain_core.tools import tool\n"
        "from codemode.integrations.langchain import code_mode_tools\n"
        "@tool\n"
        "def f(x: int) -> int:\n"
        "    '''Doubles.'''\n"
        "    return 2 * x\n"
        "code_mode_tools([f])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('langchain', 'langgraph')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"
