"""An agent loop in code mode, driven by a scripted stand-in for an LLM.

The model sees two tools, ``exec`` and ``wait`` (their specs come from ``CodeModeTools`` through the
``to_openai_responses`` adapter). Instead of calling the weather tools one by one, it writes a
JavaScript cell that calls them in parallel, prints a summary, hands the first part back with
``yield_control()`` and keeps working; ``wait`` collects the rest.

A second demo (:func:`approval_main`) is an approval round trip: the tool ``send_sms`` is marked
``needs_approval``, so its calls are held until the host decides. The model's ``exec`` result
ends with ``Awaiting approval: tool-1 send_sms {...}``; the host (a stand-in for the user)
approves it with ``CodeModeTools.approve``, the model ``wait``s, the next call is held, the host
rejects it with a reason, and the model's program sees that reason as a rejected promise.

``ScriptedModel`` plays the model: it answers each turn with pre-scripted output items in the
OpenAI Responses shape (``function_call`` / ``custom_tool_call`` items, then a ``message``). Swap it
for a real client (``client.responses.create(model=..., input=..., tools=...)``) and the loop stays
the same.

Run it with ``python examples/agent_loop.py``.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from codemode import (
    ApprovalRequest,
    ImageItem,
    MissingCell,
    SessionRuntime,
    TextItem,
    ToolDefinition,
    tools_delegate,
)
from codemode.tools import CodeModeTools, ToolResult
from codemode.tools.description import to_openai_responses

# --------------------------------------------------------------------------- the host's tools

CITY_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "description": "A city name, e.g. Paris."}},
    "required": ["city"],
    "additionalProperties": False,
}

WEATHER_TOOLS = (
    ToolDefinition(
        "get_weather",
        "Current weather of a city.",
        namespace="weather",
        input_schema=CITY_SCHEMA,
        output_schema={
            "type": "object",
            "properties": {"city": {"type": "string"}, "temp_c": {"type": "number"}},
            "required": ["city", "temp_c"],
        },
    ),
    ToolDefinition(
        "get_forecast",
        "Tomorrow's forecast for a city (slow).",
        namespace="weather",
        input_schema=CITY_SCHEMA,
        output_schema={
            "type": "object",
            "properties": {"city": {"type": "string"}, "summary": {"type": "string"}},
            "required": ["city", "summary"],
        },
    ),
)

TEMPERATURES = {"Paris": 18.5, "Oslo": 9.0, "Lima": 22.0}

SEND_SMS = ToolDefinition(
    "send_sms",
    "Sends a text message; the user approves each one before it is sent.",
    input_schema={
        "type": "object",
        "properties": {"to": {"type": "string"}, "text": {"type": "string"}},
        "required": ["to", "text"],
        "additionalProperties": False,
    },
    output_schema={"type": "object", "properties": {"id": {"type": "string"}}},
    needs_approval=True,
)


class WeatherService:
    """The host-side implementation of the weather tools; records its calls and how many ran at
    once (a code-mode cell's ``Promise.all`` runs them in parallel)."""

    def __init__(self, latency: float = 0.05, forecast_latency: float = 0.3) -> None:
        self.latency = latency
        self.forecast_latency = forecast_latency
        self.calls: list[tuple[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def _call(self, tool: str, city: str, delay: float) -> None:
        self.calls.append((tool, city))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(delay)
        finally:
            self.in_flight -= 1

    async def get_weather(self, args: dict[str, Any]) -> dict[str, Any]:
        city = str(args["city"])
        await self._call("get_weather", city, self.latency)
        return {"city": city, "temp_c": TEMPERATURES.get(city, 15.0)}

    async def get_forecast(self, args: dict[str, Any]) -> dict[str, Any]:
        city = str(args["city"])
        await self._call("get_forecast", city, self.forecast_latency)
        return {"city": city, "summary": "sunny, 24 °C"}

    async def send_sms(self, args: dict[str, Any]) -> dict[str, Any]:
        await self._call("send_sms", str(args["to"]), self.latency)
        return {"id": f"sms-{len(self.calls)}"}


# --------------------------------------------------------------------------- the fake model

Item = dict[str, Any]
Step = Sequence[Item] | Callable[[Sequence[Item]], Sequence[Item]]


@dataclass
class ScriptedModel:
    """A stand-in for an LLM behind the OpenAI Responses API.

    Each call to :meth:`create` answers with the next step: a list of output items, or a function
    of the conversation so far returning one (to read a cell id from an earlier tool output). It
    records every request, so a test can check the tools it was offered.
    """

    steps: list[Step]
    requests: list[dict[str, Any]] = field(default_factory=list)

    def create(self, *, input: Sequence[Item], tools: Sequence[Item]) -> dict[str, Any]:
        self.requests.append({"input": list(input), "tools": list(tools)})
        turn = len(self.requests)
        if turn > len(self.steps):
            raise RuntimeError("the scripted model has run out of steps")
        step = self.steps[turn - 1]
        output = step(input) if callable(step) else step
        return {"id": f"resp_{turn}", "object": "response", "output": list(output)}


def exec_call(call_id: str, code: str, *, freeform: bool) -> Item:
    """An ``exec`` call as the Responses API emits it for the function or the freeform tool."""
    if freeform:
        return {"type": "custom_tool_call", "call_id": call_id, "name": "exec", "input": code}
    arguments = json.dumps({"code": code})
    return {"type": "function_call", "call_id": call_id, "name": "exec", "arguments": arguments}


def wait_call(call_id: str, arguments: dict[str, Any]) -> Item:
    return {
        "type": "function_call",
        "call_id": call_id,
        "name": "wait",
        "arguments": json.dumps(arguments),
    }


def assistant_message(text: str) -> Item:
    return {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text}],
    }


CELL_ID = re.compile(r"Script running with cell ID (\w+)")


def last_cell_id(conversation: Sequence[Item]) -> str:
    """The cell id of the latest ``Script running with cell ID ...`` tool output."""
    for item in reversed(conversation):
        if item.get("type") in ("function_call_output", "custom_tool_call_output"):
            match = CELL_ID.search(_output_text(item["output"]))
            if match:
                return match.group(1)
    raise LookupError("no running cell in the conversation")


DEMO_CELL = """\
const cities = ["Paris", "Oslo", "Lima"];
const reports = await Promise.all(cities.map((city) => tools.get_weather({ city })));
for (const r of reports) text(`${r.city}: ${r.temp_c} °C`);
yield_control();
const warmest = reports.reduce((a, b) => (b.temp_c > a.temp_c ? b : a));
const forecast = await tools.get_forecast({ city: warmest.city });
text(`Tomorrow in ${forecast.city}: ${forecast.summary}`);
"""


def demo_script(*, freeform: bool = False) -> list[Step]:
    """The model's turns: run a cell, wait for the rest, wait once more (the cell has closed by
    then, so that wait reports it as not found), then answer the user."""
    return [
        [exec_call("call_exec_1", DEMO_CELL, freeform=freeform)],
        lambda conversation: [
            wait_call("call_wait_1", {"cell_id": last_cell_id(conversation), "until": "completed"})
        ],
        lambda conversation: [wait_call("call_wait_2", {"cell_id": last_cell_id(conversation)})],
        [assistant_message("Lima is the warmest; tomorrow it will be sunny, 24 °C.")],
    ]


SMS_CELL = """\
const weather = await tools.get_weather({ city: "Lima" });
const sent = await tools.send_sms({ to: "+51 1 555 0100", text: `Lima: ${weather.temp_c} °C` });
text(`sent ${sent.id}`);
try {
  await tools.send_sms({ to: "+1 900 555 0199", text: "Lima is warm" });
  text("second message sent");
} catch (e) {
  text(`second message not sent: ${e.message}`);
}
"""


def approval_script() -> list[Step]:
    """The model's turns in the approval demo: run a cell that sends two messages, wait while
    the user decides each held call, then answer."""
    return [
        [exec_call("call_exec_sms", SMS_CELL, freeform=False)],
        lambda conversation: [
            wait_call(
                "call_wait_sms_1", {"cell_id": last_cell_id(conversation), "until": "completed"}
            )
        ],
        lambda conversation: [
            wait_call(
                "call_wait_sms_2", {"cell_id": last_cell_id(conversation), "until": "completed"}
            )
        ],
        [
            assistant_message(
                "I texted Lima's weather to your phone; the second number was refused."
            )
        ],
    ]


CONTACTS = ("+51 1 555 0100",)


async def user_review(request: ApprovalRequest) -> bool | str:
    """Stands in for the user asked to approve a held call: messages to contacts only."""
    if request.tool.name == "send_sms" and request.input.get("to") in CONTACTS:
        return True
    return f"{request.input.get('to')} is not in the user's contacts"


# --------------------------------------------------------------------------- the agent loop


def _output_text(output: str | Sequence[Item]) -> str:
    if isinstance(output, str):
        return output
    return "\n".join(str(part.get("text", "[image]")) for part in output)


def tool_output(result: ToolResult) -> str | list[Item]:
    """A tool result as the ``output`` of a Responses ``function_call_output``: plain text, or
    content parts when the cell produced images."""
    if all(isinstance(item, TextItem) for item in result.items):
        return result.text
    parts: list[Item] = []
    for item in result.items:
        if isinstance(item, TextItem):
            parts.append({"type": "input_text", "text": item.text})
        elif isinstance(item, ImageItem):
            detail = str(item.detail) if item.detail is not None else "auto"
            parts.append({"type": "input_image", "image_url": item.image_url, "detail": detail})
    return parts


@dataclass
class AgentRun:
    """What one run of the loop produced: the whole conversation and each tool result."""

    conversation: list[Item]
    results: list[tuple[Item, ToolResult]]

    @property
    def answer(self) -> str:
        for item in reversed(self.conversation):
            if item.get("type") == "message" and item.get("role") == "assistant":
                return "".join(part["text"] for part in item["content"])
        return ""


Reviewer = Callable[[ApprovalRequest], Any]


async def decide_held_calls(
    session: SessionRuntime, code_mode: CodeModeTools, result: ToolResult, review: Reviewer
) -> list[tuple[ApprovalRequest, bool | str]]:
    """The host's side of an approval round trip: after a tool result, ask ``review`` about each
    call the cell holds and approve or reject it. Returns the decisions."""
    if result.cell_id is None:
        return []
    try:
        held = session.awaiting_approval(result.cell_id)
    except MissingCell:  # the cell has ended: nothing is held
        return []
    decisions: list[tuple[ApprovalRequest, bool | str]] = []
    for request in held:
        decision = await review(request)
        decisions.append((request, decision))
        if decision is True:
            await code_mode.approve(request.cell_id, request.call_id)
        else:
            await code_mode.reject(request.cell_id, request.call_id, str(decision))
    return decisions


async def run_agent(
    model: ScriptedModel,
    code_mode: CodeModeTools,
    prompt: str,
    *,
    freeform_exec: bool = False,
    max_turns: int = 10,
    after_tool_call: Callable[[ToolResult], Any] | None = None,
) -> AgentRun:
    """Ask ``model`` until it answers without calling a tool; run each of its tool calls through
    ``code_mode`` and feed the results back. ``after_tool_call`` (an async function), when given,
    sees each result before the model does (the host's approvals go there)."""
    tools = [
        to_openai_responses(code_mode.exec_tool_spec(freeform=freeform_exec)),
        to_openai_responses(code_mode.wait_tool_spec()),
    ]
    conversation: list[Item] = [{"role": "user", "content": prompt}]
    results: list[tuple[Item, ToolResult]] = []
    for _ in range(max_turns):
        response = model.create(input=conversation, tools=tools)
        output: list[Item] = response["output"]
        conversation.extend(output)
        calls = [i for i in output if i["type"] in ("function_call", "custom_tool_call")]
        if not calls:
            return AgentRun(conversation, results)
        for call in calls:
            freeform = call["type"] == "custom_tool_call"
            arguments = call["input"] if freeform else call["arguments"]
            result = await code_mode.call(call["name"], arguments, call["call_id"])
            results.append((call, result))
            if after_tool_call is not None:
                await after_tool_call(result)
            conversation.append(
                {
                    "type": "custom_tool_call_output" if freeform else "function_call_output",
                    "call_id": call["call_id"],
                    "output": tool_output(result),
                }
            )
    raise RuntimeError(f"no answer after {max_turns} turns")


async def main(*, freeform_exec: bool = False, verbose: bool = True) -> AgentRun:
    """Run the demo conversation on a real V8 session and print it."""
    weather = WeatherService()
    delegate = tools_delegate(
        {"get_weather": weather.get_weather, "get_forecast": weather.get_forecast}
    )
    async with SessionRuntime(delegate) as session:
        code_mode = CodeModeTools(session, WEATHER_TOOLS, code_mode_only=True)
        model = ScriptedModel(demo_script(freeform=freeform_exec))
        run = await run_agent(
            model,
            code_mode,
            "Which city is warmest, and what's its forecast?",
            freeform_exec=freeform_exec,
        )
    if verbose:
        for call, result in run.results:
            print(f"--- {call['name']} ({call['call_id']})")
            print(result.text)
        print(f"--- answer\n{run.answer}")
    return run


async def approval_main(*, verbose: bool = True) -> tuple[AgentRun, WeatherService, list[Any]]:
    """Run the approval demo: the user approves one message and refuses the other."""
    weather = WeatherService()
    delegate = tools_delegate({"get_weather": weather.get_weather, "send_sms": weather.send_sms})
    decisions: list[Any] = []
    async with SessionRuntime(delegate) as session:
        code_mode = CodeModeTools(session, (*WEATHER_TOOLS, SEND_SMS), code_mode_only=True)

        async def review_held_calls(result: ToolResult) -> None:
            if verbose:
                print(f"--- tool result\n{result.text}")
            decided = await decide_held_calls(session, code_mode, result, user_review)
            decisions.extend(decided)
            if verbose:
                for request, decision in decided:
                    verdict = "approved" if decision is True else f"rejected: {decision}"
                    print(f"--- user: {request.call_id} {request.tool.name} {verdict}")

        model = ScriptedModel(approval_script())
        run = await run_agent(
            model,
            code_mode,
            "Text me Lima's weather.",
            after_tool_call=review_held_calls,
        )
    if verbose:
        print(f"--- answer\n{run.answer}")
    return run, weather, decisions


if __name__ == "__main__":
    asyncio.run(approval_main())
    print()
    asyncio.run(main())
