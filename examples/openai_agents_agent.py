"""An OpenAI Agents SDK agent in code mode: its tools run inside a JavaScript cell.

``code_mode_tools`` turns the agent's ``FunctionTool`` s into ``exec`` (a custom tool taking raw
JavaScript) and ``wait``; the model writes one cell that calls the tools in parallel.

- Without ``OPENAI_API_KEY``: a class implementing the SDK's ``Model`` interface plays the model
  (it writes the cell, then answers from the result), and the SDK's tracing is disabled. No
  network.
- With ``OPENAI_API_KEY``: a real OpenAI model (``CODEMODE_EXAMPLE_MODEL``, default
  ``gpt-4.1-mini``) through the Responses API, which supports custom tools.

Run it with ``python examples/openai_agents_agent.py``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

from agents import (
    Agent,
    Model,
    ModelResponse,
    RunConfig,
    Runner,
    Usage,
    function_tool,
)
from openai.types.responses import (
    ResponseCustomToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)

from codemode.integrations.openai_agents import close_code_mode_tools, code_mode_tools

QUESTION = "Which is warmer right now, Paris or Tokyo, and which is bigger?"


@function_tool
async def get_weather(city: str) -> dict[str, object]:
    """The current weather in a city."""
    await asyncio.sleep(0.2)  # a slow API: code mode calls it in parallel
    return {"city": city, "temperature": {"Paris": 18, "Tokyo": 24}.get(city, 20), "units": "°C"}


@function_tool
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


class ScriptedModel(Model):
    """The stand-in for an LLM: writes the cell, then answers from its output."""

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        items = kwargs.get("input", args[1] if len(args) > 1 else [])
        outputs = [
            i
            for i in (items if isinstance(items, list) else [])
            if isinstance(i, dict) and i.get("type") == "custom_tool_call_output"
        ]
        if not outputs:
            call = ResponseCustomToolCall(
                call_id="call_1", input=CELL, name="exec", type="custom_tool_call"
            )
            return ModelResponse(output=[call], usage=Usage(), response_id=None)
        answer = ResponseOutputText(
            annotations=[], text=f"From the cell:\n{outputs[0]['output']}", type="output_text"
        )
        message = ResponseOutputMessage(
            id="msg_1", content=[answer], role="assistant", status="completed", type="message"
        )
        return ModelResponse(output=[message], usage=Usage(), response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        raise NotImplementedError


async def main() -> None:
    tools = code_mode_tools([get_weather, get_population])
    if os.environ.get("OPENAI_API_KEY"):
        model: Model | str = os.environ.get("CODEMODE_EXAMPLE_MODEL", "gpt-4.1-mini")
        run_config = RunConfig()
    else:
        model, run_config = ScriptedModel(), RunConfig(tracing_disabled=True)
    agent = Agent(name="assistant", model=model, tools=tools)
    try:
        result = await Runner.run(agent, QUESTION, run_config=run_config)
    finally:
        await close_code_mode_tools(tools)
    print(result.final_output)


if __name__ == "__main__":
    asyncio.run(main())
