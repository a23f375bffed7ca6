"""A pydantic-ai agent in code mode: its tools run inside a JavaScript cell.

``CodeModeToolset`` wraps the agent's toolset: the model sees only ``exec`` and ``wait``, with the
wrapped tools declared in TypeScript, and writes one cell that calls them in parallel.

- Without ``OPENAI_API_KEY``: pydantic-ai's ``FunctionModel`` plays the model (it writes the cell,
  then answers from the result). No network.
- With ``OPENAI_API_KEY``: a real OpenAI model (``CODEMODE_EXAMPLE_MODEL``, default
  ``openai:gpt-4.1-mini``; needs ``pip install 'pydantic-ai-slim[openai]'``).

Run it with ``python examples/pydantic_ai_agent.py``.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models import Model
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.toolsets import FunctionToolset

from codemode.integrations.pydantic_ai import CodeModeToolset

QUESTION = "Which is warmer right now, Paris or Tokyo, and which is bigger?"


@dataclass
class Deps:
    """The agent's dependencies (a real app would hold API clients here)."""

    units: str = "°C"


weather_tools: FunctionToolset[Deps] = FunctionToolset()


@weather_tools.tool
async def get_weather(ctx: RunContext[Deps], city: str) -> dict[str, object]:
    """The current weather in a city."""
    await asyncio.sleep(0.2)  # a slow API: code mode calls it in parallel
    temperature = {"Paris": 18, "Tokyo": 24}.get(city, 20)
    return {"city": city, "temperature": temperature, "units": ctx.deps.units}


@weather_tools.tool
async def get_population(ctx: RunContext[Deps], city: str) -> int:
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


def scripted_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """The stand-in for an LLM: writes the cell, then answers from its output."""
    last = messages[-1]
    returns = (
        [p for p in last.parts if isinstance(p, ToolReturnPart)]
        if isinstance(last, ModelRequest)
        else []
    )
    if not returns:
        return ModelResponse(parts=[ToolCallPart("exec", {"code": CELL}, tool_call_id="call_1")])
    return ModelResponse(parts=[TextPart(f"From the cell:\n{returns[0].model_response_str()}")])


def choose_model() -> Model | str:
    if os.environ.get("OPENAI_API_KEY"):
        return os.environ.get("CODEMODE_EXAMPLE_MODEL", "openai:gpt-4.1-mini")
    return FunctionModel(scripted_model)


async def main() -> None:
    agent = Agent(choose_model(), deps_type=Deps, toolsets=[CodeModeToolset(weather_tools)])
    result = await agent.run(QUESTION, deps=Deps())
    print(result.output)


if __name__ == "__main__":
    asyncio.run(main())
