"""``examples/agent_loop.py``: a scripted model driving ``exec`` and ``wait`` end to end on V8."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from codemode import SessionRuntime, TextItem, tools_delegate
from codemode.tools import CodeModeTools
from codemode.tools.description import CODE_MODE_ONLY_TEXT, to_openai_responses
from codemode.tools.exec_wait import missing_cell_text

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "agent_loop.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("agent_loop_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being created
    spec.loader.exec_module(module)
    return module


def texts(result: Any) -> list[str]:
    return [item.text for item in result.items if isinstance(item, TextItem)]


@pytest.mark.parametrize("freeform", [False, True])
async def test_exec_in_parallel_then_wait_then_not_found(
    example: ModuleType, freeform: bool
) -> None:
    weather = example.WeatherService(latency=0.1, forecast_latency=0.2)
    delegate = tools_delegate(
        {"get_weather": weather.get_weather, "get_forecast": weather.get_forecast}
    )
    async with SessionRuntime(delegate) as session:
        code_mode = CodeModeTools(session, example.WEATHER_TOOLS, code_mode_only=True)
        model = example.ScriptedModel(example.demo_script(freeform=freeform))
        run = await example.run_agent(model, code_mode, "weather?", freeform_exec=freeform)

        # The model was offered exactly exec and wait, as the adapters render them.
        offered = model.requests[0]["tools"]
        assert offered == [
            to_openai_responses(code_mode.exec_tool_spec(freeform=freeform)),
            to_openai_responses(code_mode.wait_tool_spec()),
        ]
        assert offered[0]["description"].startswith(CODE_MODE_ONLY_TEXT)
        assert "### `get_weather`" in offered[0]["description"]

        (exec_call, exec_result), (_, wait_result), (_, gone_result) = run.results
        assert exec_call["type"] == ("custom_tool_call" if freeform else "function_call")

        # exec: three tool calls in parallel, then yield_control() hands back the first part.
        cell_id = exec_result.cell_id
        assert texts(exec_result)[0].startswith(f"Script running with cell ID {cell_id}\n")
        assert texts(exec_result)[1:] == ["Paris: 18.5 °C", "Oslo: 9 °C", "Lima: 22 °C"]
        assert not exec_result.is_error
        assert weather.max_in_flight == 3
        assert weather.calls[:3] == [
            ("get_weather", "Paris"),
            ("get_weather", "Oslo"),
            ("get_weather", "Lima"),
        ]

        # wait (until completed) returns the rest and closes the cell.
        assert texts(wait_result)[0].startswith("Script completed\n")
        assert texts(wait_result)[1:] == ["Tomorrow in Lima: sunny, 24 °C"]
        assert weather.calls[3:] == [("get_forecast", "Lima")]

        # A second wait on the closed cell: a failed script with the not-found error.
        assert gone_result.is_error
        assert texts(gone_result)[0].startswith("Script failed\n")
        assert texts(gone_result)[1:] == [f"Script error:\n{missing_cell_text(cell_id)}"]

    # Every tool call got its output, under its call id, in the conversation.
    outputs = {
        item["call_id"]: item["output"]
        for item in run.conversation
        if item.get("type") in ("function_call_output", "custom_tool_call_output")
    }
    assert list(outputs) == ["call_exec_1", "call_wait_1", "call_wait_2"]
    assert outputs["call_wait_2"] == gone_result.text
    assert run.answer.startswith("Lima is the warmest")


async def test_main_runs_the_demo(example: ModuleType) -> None:
    run = await example.main(verbose=False)
    assert [result.is_error for _, result in run.results] == [False, False, True]
    assert run.answer


async def test_images_become_content_parts(example: ModuleType, runtime: SessionRuntime) -> None:
    code_mode = CodeModeTools(runtime, [])
    result = await code_mode.exec('text("see"); image("data:image/png;base64,AAAA", "low")', "c")
    parts = example.tool_output(result)
    assert [part["type"] for part in parts] == ["input_text", "input_text", "input_image"]
    assert parts[2] == {
        "type": "input_image",
        "image_url": "data:image/png;base64,AAAA",
        "detail": "low",
    }
    assert example.tool_output(await code_mode.exec("text(1)", "d")).endswith("Output:\n\n1")


def test_the_scripted_model_runs_out_of_steps(example: ModuleType) -> None:
    model = example.ScriptedModel([[example.assistant_message("hi")]])
    assert model.create(input=[], tools=[])["output"][0]["type"] == "message"
    with pytest.raises(RuntimeError, match="out of steps"):
        model.create(input=[], tools=[])


def test_the_example_runs_as_a_script() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "Script running with cell ID" in done.stdout
    assert "not found" in done.stdout
    assert done.stdout.rstrip().endswith("tomorrow it will be sunny, 24 °C.")
