"""A LangChain agent in code mode: its tools run inside a JavaScript cell.

``CodeModeMiddleware`` hides the agent's tools from the model and offers ``exec`` and ``wait``
over them instead; the model writes one cell that calls the tools in parallel.
(``code_mode_tools(tools)`` gives the same two tools for any other LangChain loop.)

- Without ``OPENAI_API_KEY``: LangChain's ``GenericFakeChatModel``, taught to bind tools and to
  answer from the last tool message, plays the model. No network.
- With ``OPENAI_API_KEY``: a real model through ``init_chat_model`` (``CODEMODE_EXAMPLE_MODEL``,
  default ``openai:gpt-4.1-mini``; needs ``pip install langchain-openai``).

Run it with ``python examples/langchain_agent.py``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool

from codemode.integrations.langchain import CodeModeMiddleware

QUESTION = "Which is warmer right now, Paris or Tokyo, and which is bigger?"


@tool
async def get_weather(city: str) -> dict[str, object]:
    """The current weather in a city."""
    await asyncio.sleep(0.2)  # a slow API: code mode calls it in parallel
    return {"city": city, "temperature": {"Paris": 18, "Tokyo": 24}.get(city, 20), "units": "°C"}


@tool
async def get_population(city: str) -> int:
    """The population of a city (metropolitan area)."""
    await asyncio.sleep(0.2)
    return {"Paris": 11_000_000, "Tokyo": 37_000_000}.get(city, 1_000_000)


CELL = """
const cities = ["Paris", "Tokyo"];
const rows = await Promise.all(cities.map(async (city) => {
  const [weather, population] = await Promise.all([
    tools.get_weather({city}), tools.get_population({city}),
  ]);
  return {city, temperature: weather.temperature, population};
}));
text(JSON.stringify(rows));
"""


class ScriptedChatModel(GenericFakeChatModel):
    """The stand-in for an LLM: writes the cell, then answers from its output."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        last = messages[-1]
        if isinstance(last, ToolMessage):
            message = AIMessage(content=f"From the cell:\n{last.content}")
        else:
            call = {"name": "exec", "args": {"code": CELL}, "id": "call_1"}
            message = AIMessage(content="", tool_calls=[call])
        return ChatResult(generations=[ChatGeneration(message=message)])


def choose_model() -> BaseChatModel:
    if os.environ.get("OPENAI_API_KEY"):
        from langchain.chat_models import init_chat_model

        return init_chat_model(os.environ.get("CODEMODE_EXAMPLE_MODEL", "openai:gpt-4.1-mini"))
    return ScriptedChatModel(messages=iter(()))


async def main() -> None:
    code_mode = CodeModeMiddleware()
    agent = create_agent(
        choose_model(), tools=[get_weather, get_population], middleware=[code_mode]
    )
    try:
        result = await agent.ainvoke({"messages": [("user", QUESTION)]})
    finally:
        await code_mode.aclose()
    print(result["messages"][-1].content)


if __name__ == "__main__":
    asyncio.run(main())
