"""docs/model-tools.md end to end through ``CodeModeTools`` on real V8: scenarios 72-78 and the tool front."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import pytest

from codemode import (
    CellLimits,
    CreateCellRequest,
    SessionRuntime,
    Terminated,
    TextItem,
    ToolDefinition,
)
from codemode.tools import CodeModeTools, ToolResult, exec_wait
from codemode.tools.description import (
    exec_description,
    exec_tool_spec_dict,
    wait_description,
    wait_tool_spec_dict,
)
from codemode.tools.exec_wait import NO_NEW_OUTPUT_TEXT, missing_cell_text
from codemode.tools.pragma import BLANK_SOURCE_MESSAGE, MISSING_CODE_MESSAGE, NOT_OBJECT_MESSAGE
from conftest import BLOCK, DEFAULT_TOOLS, ECHO, RecordingDelegate

HEADER = re.compile(r"^(?P<status>.+)\nWall time (?P<wall>\d+\.\d) seconds\nOutput:\n$")


@pytest.fixture
def tools(runtime: SessionRuntime) -> CodeModeTools:
    return CodeModeTools(runtime, DEFAULT_TOOLS)


def status(result: ToolResult) -> str:
    first = result.items[0]
    assert isinstance(first, TextItem)
    match = HEADER.match(first.text)
    assert match, first.text
    return match["status"]


def wall(result: ToolResult) -> float:
    first = result.items[0]
    assert isinstance(first, TextItem)
    match = HEADER.match(first.text)
    assert match, first.text
    return float(match["wall"])


def body(result: ToolResult) -> list[str]:
    """The texts after the header."""
    return [item.text for item in result.items[1:] if isinstance(item, TextItem)]


def running(cell_id: str | None) -> str:
    return f"Script running with cell ID {cell_id}"


def usage_error(result: ToolResult) -> str:
    assert result.is_error
    assert len(result.items) == 1
    item = result.items[0]
    assert isinstance(item, TextItem)
    return item.text


# --- construction and specs --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["exec", "wait"])
def test_nested_tool_named_like_a_code_mode_tool_is_rejected(
    runtime: SessionRuntime, name: str
) -> None:
    with pytest.raises(ValueError, match=name):
        CodeModeTools(runtime, [ECHO, ToolDefinition(name)])


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_max_wait_ms_must_be_a_positive_integer(runtime: SessionRuntime, bad: Any) -> None:
    with pytest.raises(ValueError, match="max_wait_ms"):
        CodeModeTools(runtime, [ECHO], max_wait_ms=bad)


def test_specs_render_the_session_limits_and_options(runtime: SessionRuntime) -> None:
    code_mode = CodeModeTools(
        runtime, DEFAULT_TOOLS, describe_tools=False, code_mode_only=True, max_wait_ms=5000
    )
    description = exec_description(
        DEFAULT_TOOLS, describe_tools=False, code_mode_only=True, limits=runtime.limits
    )
    assert code_mode.exec_tool_spec() == exec_tool_spec_dict(description)
    assert code_mode.exec_tool_spec(freeform=True) == exec_tool_spec_dict(
        description, freeform=True
    )
    assert code_mode.wait_tool_spec() == wait_tool_spec_dict(wait_description(5000))
    spec = code_mode.exec_tool_spec()
    spec["parameters"]["properties"].clear()
    assert code_mode.exec_tool_spec()["parameters"]["properties"] == {"code": {"type": "string"}}


async def test_limits_in_the_description_come_from_the_session(make_runtime: Any) -> None:
    rt = make_runtime(CellLimits(max_tool_calls=7))
    text = CodeModeTools(rt, [ECHO]).exec_tool_spec()["description"]
    assert "at most 7 tool calls" in text


# --- scenario 72: pragma errors are returned by exec -------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("  \n\t", BLANK_SOURCE_MESSAGE),
        ("// @exec: {}\n   \n", MISSING_CODE_MESSAGE),
        ("// @exec:\ntext(1)", NOT_OBJECT_MESSAGE),
        ("// @exec: [1]\ntext(1)", NOT_OBJECT_MESSAGE),
        (
            "// @exec: {nope\ntext(1)",
            "exec pragma must be valid JSON with supported fields `yield_time_ms` and "
            "`max_output_tokens`: Expecting property name enclosed in double quotes: "
            "line 1 column 2 (char 1)",
        ),
        (
            '// @exec: {"timeout": 1}\ntext(1)',
            "exec pragma only supports `yield_time_ms` and `max_output_tokens`; got `timeout`",
        ),
        (
            '// @exec: {"yield_time_ms": -1}\ntext(1)',
            "exec pragma fields `yield_time_ms` and `max_output_tokens` must be non-negative "
            "safe integers: yield_time_ms: expected a non-negative integer, got -1",
        ),
        (
            '// @exec: {"max_output_tokens": 9007199254740992}\ntext(1)',
            "exec pragma field `max_output_tokens` must be a non-negative safe integer",
        ),
    ],
)
async def test_scenario_72_pragma_errors_are_usage_errors(
    tools: CodeModeTools, delegate: RecordingDelegate, source: str, message: str
) -> None:
    result = await tools.exec(source, "call-1")
    assert usage_error(result) == message
    assert result.cell_id is None
    # The call id was not spent on a cell: the same id works with a valid source.
    ok = await tools.exec("text(1)", "call-1")
    assert status(ok) == "Script completed"


async def test_scenario_72_pragma_sets_the_yield_time(tools: CodeModeTools) -> None:
    started = time.monotonic()
    result = await tools.exec('// @exec: {"yield_time_ms": 50}\nawait tools.block({})', "c")
    assert time.monotonic() - started < 5
    assert status(result) == running(result.cell_id)
    assert body(result) == []
    assert not result.is_error


async def test_yield_time_is_capped_at_max_wait_ms(runtime: SessionRuntime) -> None:
    code_mode = CodeModeTools(runtime, DEFAULT_TOOLS, max_wait_ms=50)
    started = time.monotonic()
    result = await code_mode.exec("await tools.block({})", "c")
    assert time.monotonic() - started < 5
    assert status(result) == running(result.cell_id)
    waited = await code_mode.wait(str(result.cell_id), yield_time_ms=60_000)
    assert time.monotonic() - started < 5
    assert status(waited) == running(result.cell_id)
    completed = await code_mode.wait(str(result.cell_id), until="completed")
    assert status(completed) == running(result.cell_id)
    assert time.monotonic() - started < 5


# --- scenario 73: headers and is_error --------------------------------------------------------


async def test_scenario_73_completed_header(tools: CodeModeTools) -> None:
    result = await tools.exec('text("a"); text({b: 1})', "c")
    assert status(result) == "Script completed"
    assert wall(result) < 5
    assert body(result) == ["a", '{"b":1}']
    assert not result.is_error
    assert result.text.endswith('seconds\nOutput:\n\na\n{"b":1}')


async def test_scenario_73_failed_header_and_script_error(tools: CodeModeTools) -> None:
    result = await tools.exec('text("before"); throw new Error("boom")', "c")
    assert status(result) == "Script failed"
    assert result.is_error
    texts = body(result)
    assert texts[0] == "before"
    assert texts[-1].startswith("Script error:\nError: boom")
    assert len(texts) == 2


async def test_scenario_73_running_header_names_the_cell(tools: CodeModeTools) -> None:
    result = await tools.exec(
        '// @exec: {"yield_time_ms": 30}\ntext("early"); await tools.block({})', "c"
    )
    assert result.cell_id is not None and len(result.cell_id) == 16
    assert status(result) == running(result.cell_id)
    assert body(result) == ["early"]
    assert not result.is_error


async def test_wall_time_covers_the_whole_call(tools: CodeModeTools) -> None:
    result = await tools.exec("await new Promise(r => setTimeout(r, 250)); text(1)", "c")
    assert status(result) == "Script completed"
    assert wall(result) >= 0.2


async def test_terminated_header_is_not_an_error(tools: CodeModeTools) -> None:
    result = await tools.exec('// @exec: {"yield_time_ms": 20}\nawait tools.block({})', "c")
    terminated = await tools.wait(str(result.cell_id), terminate=True)
    assert status(terminated) == "Script terminated"
    assert not terminated.is_error


# --- scenario 74: wait on an unknown id, terminate --------------------------------------------


async def test_scenario_74_wait_on_unknown_id(tools: CodeModeTools) -> None:
    result = await tools.wait("nosuchcell")
    assert status(result) == "Script failed"
    assert body(result) == [f"Script error:\n{missing_cell_text('nosuchcell')}"]
    assert result.is_error
    assert result.cell_id == "nosuchcell"
    terminated = await tools.wait("nosuchcell", terminate=True)
    assert body(terminated) == [f"Script error:\n{missing_cell_text('nosuchcell')}"]


async def test_scenario_74_terminate(tools: CodeModeTools, delegate: RecordingDelegate) -> None:
    result = await tools.exec(
        '// @exec: {"yield_time_ms": 20}\ntext("a"); await tools.block({}); text("b")', "c"
    )
    assert body(result) == ["a"]
    cell_id = str(result.cell_id)
    terminated = await tools.wait(cell_id, terminate=True)
    assert status(terminated) == "Script terminated"
    assert body(terminated) == []
    assert delegate.cancelled == ["tool-1"]
    again = await tools.wait(cell_id)
    assert body(again) == [f"Script error:\n{missing_cell_text(cell_id)}"]


async def test_terminate_returns_a_completion_not_yet_delivered(
    tools: CodeModeTools, delegate: RecordingDelegate
) -> None:
    result = await tools.exec(
        '// @exec: {"yield_time_ms": 20}\n'
        'text("a"); await tools.block({}); text("b"); store("done", 1)',
        "c",
    )
    delegate.release()
    # The cell completes with no observer: its completion (and its store) is committed, buffered.
    for attempt in range(250):
        probe = await tools.exec('text(String(load("done")))', f"probe-{attempt}")
        if body(probe) == ["1"]:
            break
        await asyncio.sleep(0.02)
    terminated = await tools.wait(str(result.cell_id), terminate=True)
    assert status(terminated) == "Script completed"
    assert body(terminated) == ["b"]


async def test_terminate_during_an_observation(
    tools: CodeModeTools, delegate: RecordingDelegate
) -> None:
    result = await tools.exec(
        '// @exec: {"yield_time_ms": 20}\ntext("a"); await tools.block({})', "c"
    )
    cell_id = str(result.cell_id)
    observer = asyncio.create_task(tools.wait(cell_id, until="completed"))
    await asyncio.sleep(0.1)
    terminated = await tools.wait(cell_id, terminate=True)
    observed = await asyncio.wait_for(observer, 5)
    assert status(terminated) == "Script terminated"
    assert status(observed) == "Script terminated"
    assert body(observed) == body(terminated) == []
    assert delegate.cancelled == ["tool-1"]


# --- wait: nothing new, usage errors ----------------------------------------------------------


async def test_wait_with_nothing_new_says_so(tools: CodeModeTools) -> None:
    result = await tools.exec('// @exec: {"yield_time_ms": 20}\nawait tools.block({})', "c")
    waited = await tools.wait(str(result.cell_id), yield_time_ms=20)
    assert status(waited) == running(result.cell_id)
    assert body(waited) == [NO_NEW_OUTPUT_TEXT]
    assert not waited.is_error


async def test_wait_on_a_pausable_cell_is_a_usage_error(
    tools: CodeModeTools, runtime: SessionRuntime
) -> None:
    cell = await runtime.create_pausable_cell(CreateCellRequest("text(1)", DEFAULT_TOOLS))
    result = await tools.wait(cell.cell_id)
    assert usage_error(result) == f"exec cell {cell.cell_id} is pausable, expected continuing"
    terminated = await tools.wait(cell.cell_id, terminate=True)
    assert usage_error(terminated) == (f"exec cell {cell.cell_id} is pausable, expected continuing")


async def test_concurrent_waits_give_busy_observer(
    tools: CodeModeTools, runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    result = await tools.exec('// @exec: {"yield_time_ms": 20}\nawait tools.block({})', "c")
    cell_id = str(result.cell_id)
    first = asyncio.create_task(tools.wait(cell_id, yield_time_ms=300))
    await asyncio.sleep(0.02)
    second = await tools.wait(cell_id)
    message = f"exec cell {cell_id} already has an active observer"
    assert usage_error(second) == message
    assert status(await first) == running(cell_id)
    # An observer outside these tools is reported the same way, by the session.
    outside = asyncio.create_task(runtime.wait(runtime.cell(cell_id), 0.3))
    await asyncio.sleep(0.02)
    assert usage_error(await tools.wait(cell_id)) == message
    await outside


async def test_wait_rejects_an_unknown_until(tools: CodeModeTools) -> None:
    result = await tools.wait("x", until="forever")
    assert usage_error(result) == 'wait `until` must be "yield" or "completed", got "forever"'


# --- scenario 75: until="completed" -----------------------------------------------------------


YIELDS_TWICE = """\
await tools.block({});
text("one"); yield_control();
await new Promise(r => setTimeout(r, 30));
text("two"); yield_control();
await new Promise(r => setTimeout(r, 30));
text("three");
"""


async def test_scenario_75_until_completed_gathers_every_yield(
    tools: CodeModeTools, delegate: RecordingDelegate
) -> None:
    result = await tools.exec('// @exec: {"yield_time_ms": 20}\n' + YIELDS_TWICE, "c")
    assert status(result) == running(result.cell_id)
    assert body(result) == []
    delegate.release()
    done = await tools.wait(str(result.cell_id), until="completed")
    assert status(done) == "Script completed"
    assert body(done) == ["one", "two", "three"]
    assert not done.is_error


async def test_scenario_75_shorter_cap_returns_the_running_status(
    tools: CodeModeTools, delegate: RecordingDelegate
) -> None:
    source = (
        'text("a"); yield_control(); text("b"); yield_control(); await tools.block({}); text("c")'
    )
    result = await tools.exec(source, "c")
    cell_id = str(result.cell_id)
    assert body(result) == ["a"]
    started = time.monotonic()
    capped = await tools.wait(cell_id, yield_time_ms=200, until="completed")
    elapsed = time.monotonic() - started
    assert 0.15 <= elapsed < 5
    assert status(capped) == running(cell_id)
    assert body(capped) == ["b"]
    capped_again = await tools.wait(cell_id, yield_time_ms=50, until="completed")
    assert body(capped_again) == [NO_NEW_OUTPUT_TEXT]
    delegate.release()
    done = await tools.wait(cell_id, until="completed")
    assert status(done) == "Script completed"
    assert body(done) == ["c"]


async def test_until_completed_reports_a_failure(
    tools: CodeModeTools, delegate: RecordingDelegate
) -> None:
    source = 'text("a"); yield_control(); text("b"); yield_control(); throw new Error("late")'
    result = await tools.exec(source, "c")
    done = await tools.wait(str(result.cell_id), until="completed")
    assert status(done) == "Script failed"
    assert done.is_error
    texts = body(done)
    assert texts[:-1] == ["b"]
    assert texts[-1].startswith("Script error:\nError: late")


async def test_cancelled_until_completed_loses_nothing(
    tools: CodeModeTools, runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    source = 'await tools.block({}); text("a"); yield_control(); await tools.block({}); text("b")'
    result = await tools.exec('// @exec: {"yield_time_ms": 20}\n' + source, "c")
    cell_id = str(result.cell_id)
    waiter = asyncio.create_task(tools.wait(cell_id, until="completed"))
    delegate.release("tool-1")
    await delegate.wait_calls(2)
    await asyncio.sleep(0.05)  # "a" has been gathered by the waiter
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    delegate.release("tool-2")
    done = await tools.wait(cell_id, until="completed")
    assert status(done) == "Script completed"
    assert body(done) == ["a", "b"]


async def test_gathered_output_of_a_vanished_cell_comes_with_not_found(
    tools: CodeModeTools, runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    source = 'await tools.block({}); text("a"); yield_control(); await tools.block({}); text("b")'
    result = await tools.exec('// @exec: {"yield_time_ms": 20}\n' + source, "c")
    cell_id = str(result.cell_id)
    waiter = asyncio.create_task(tools.wait(cell_id, until="completed"))
    delegate.release("tool-1")
    await delegate.wait_calls(2)
    await asyncio.sleep(0.05)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await runtime.terminate(cell_id)  # closed behind the tools' back
    gone = await tools.wait(cell_id)
    assert status(gone) == "Script failed"
    assert body(gone) == ["a", f"Script error:\n{missing_cell_text(cell_id)}"]


# --- scenario 76: truncation through exec -----------------------------------------------------


async def test_scenario_76_truncation_through_exec(tools: CodeModeTools) -> None:
    result = await tools.exec(
        '// @exec: {"max_output_tokens": 5}\ntext("0123456789".repeat(8))', "c"
    )
    assert body(result) == ["0123456789…15 tokens truncated…0123456789"]
    zero = await tools.exec('// @exec: {"max_output_tokens": 0}\ntext("0123456789".repeat(8))', "d")
    assert body(zero) == ["…20 tokens truncated…"]


async def test_truncation_through_wait_and_of_the_error(
    tools: CodeModeTools, delegate: RecordingDelegate
) -> None:
    source = 'await tools.block({}); text("0123456789".repeat(8)); throw "x".repeat(40)'
    result = await tools.exec('// @exec: {"yield_time_ms": 20}\n' + source, "c")
    delegate.release()
    done = await tools.wait(str(result.cell_id), max_tokens=5)
    assert body(done) == [
        "0123456789…15 tokens truncated…0123456789",
        "Script error:\nxxxxxxxxxx…5 tokens truncated…xxxxxxxxxx",
    ]


# --- scenario 78: retried exec ----------------------------------------------------------------


ONE_CALL = "text(JSON.stringify(await tools.echo({n: 1})))"


async def test_scenario_78_retry_after_completion_returns_the_same_result(
    tools: CodeModeTools, delegate: RecordingDelegate
) -> None:
    first = await tools.exec(ONE_CALL, "call-1")
    assert status(first) == "Script completed"
    retry = await tools.exec(ONE_CALL, "call-1")
    assert retry == first
    assert delegate.names() == ["echo"]


async def test_scenario_78_retry_of_a_running_cell(
    tools: CodeModeTools, delegate: RecordingDelegate
) -> None:
    source = '// @exec: {"yield_time_ms": 30}\ntext("a"); await tools.block({}); text("b")'
    first = await tools.exec(source, "call-1")
    assert status(first) == running(first.cell_id)
    retry = await tools.exec(source, "call-1")
    assert retry == first
    assert delegate.names() == ["block"]
    delegate.release()
    done = await tools.wait(str(first.cell_id), until="completed")
    assert body(done) == ["b"]
    assert delegate.names() == ["block"]


async def test_scenario_78_concurrent_retries_share_one_cell(
    tools: CodeModeTools, delegate: RecordingDelegate
) -> None:
    source = "text(JSON.stringify(await tools.block({n: 1})))"
    calls = [asyncio.create_task(tools.exec(source, "call-1")) for _ in range(3)]
    await delegate.wait_calls(1)
    await asyncio.sleep(0.05)
    delegate.release()
    results = await asyncio.gather(*calls)
    assert results[0] == results[1] == results[2]
    assert body(results[0]) == ['{"n":1}']
    assert delegate.names() == ["block"]


async def test_scenario_78_retry_after_a_cancelled_exec_observes_the_same_cell(
    tools: CodeModeTools, delegate: RecordingDelegate
) -> None:
    source = 'text("a"); text(JSON.stringify(await tools.block({n: 1})))'
    first = asyncio.create_task(tools.exec(source, "call-1"))
    await delegate.wait_calls(1)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    delegate.release()
    retry = await tools.exec(source, "call-1")
    assert status(retry) == "Script completed"
    assert body(retry) == ["a", '{"n":1}']
    assert delegate.names() == ["block"]


async def test_scenario_78_retry_with_other_code_is_an_idempotency_conflict(
    tools: CodeModeTools, delegate: RecordingDelegate
) -> None:
    await tools.exec(ONE_CALL, "call-1")
    other = await tools.exec("text(2)", "call-1")
    assert usage_error(other) == "idempotency key call-1 was reused for a different request"
    assert delegate.names() == ["echo"]


async def test_scenario_78_retry_with_another_pragma_reaches_the_same_cell(
    tools: CodeModeTools, delegate: RecordingDelegate
) -> None:
    source = 'text("a"); await tools.block({}); text("b")'
    first = await tools.exec('// @exec: {"yield_time_ms": 20}\n' + source, "call-1")
    assert body(first) == ["a"]
    delegate.release()
    retry = await tools.exec('// @exec: {"yield_time_ms": 5000}\n' + source, "call-1")
    assert retry.cell_id == first.cell_id
    assert status(retry) == "Script completed"
    assert body(retry) == ["b"]
    assert delegate.names() == ["block"]


async def test_scenario_78_evicted_result_falls_back_to_the_closed_cell(
    runtime: SessionRuntime, delegate: RecordingDelegate, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exec_wait, "RETRY_CACHE_ENTRIES", 1)
    code_mode = CodeModeTools(runtime, DEFAULT_TOOLS)
    first = await code_mode.exec(ONE_CALL, "call-1")
    await code_mode.exec("text(2)", "call-2")
    retry = await code_mode.exec(ONE_CALL, "call-1")
    assert status(retry) == "Script failed"
    assert first.cell_id is not None
    assert body(retry) == [f"Script error:\n{missing_cell_text(first.cell_id)}"]
    assert delegate.names() == ["echo"]


async def test_empty_call_id_gives_no_identity(tools: CodeModeTools) -> None:
    first = await tools.exec("text(1)", "")
    second = await tools.exec("text(1)", "")
    assert first.cell_id != second.cell_id
    assert body(first) == body(second) == ["1"]


async def test_exec_after_shutdown_is_a_usage_error(
    tools: CodeModeTools, runtime: SessionRuntime
) -> None:
    await runtime.shutdown()
    result = await tools.exec("text(1)", "c")
    assert usage_error(result) == "code mode session is shutting down"


async def test_exec_passes_the_call_id_to_the_cell(
    tools: CodeModeTools, delegate: RecordingDelegate
) -> None:
    await tools.exec('notify("hi")', "call-7")
    assert [(c, t) for c, _, t in delegate.notifications] == [("call-7", "hi")]


# --- call(): raw model tool calls -------------------------------------------------------------


async def test_call_exec_forms(tools: CodeModeTools) -> None:
    as_json = await tools.call("exec", '{"code": "text(1)"}', "a")
    as_mapping = await tools.call("exec", {"code": "text(2)"}, "b")
    as_freeform = await tools.call("exec", "text(3)", "c")
    json_without_code = await tools.call("exec", '{"a": 1}', "d")
    assert body(as_json) == ["1"]
    assert body(as_mapping) == ["2"]
    assert body(as_freeform) == ["3"]
    # A JSON object without a string `code` is taken as the source itself: not valid JavaScript.
    assert status(json_without_code) == "Script failed"
    assert "SyntaxError" in body(json_without_code)[-1]


@pytest.mark.parametrize(
    ("arguments", "detail"),
    [
        ({}, "missing field `code`"),
        ({"code": 5}, "invalid type for `code`: expected a string, got 5"),
    ],
)
async def test_call_exec_mapping_errors(
    tools: CodeModeTools, arguments: dict[str, Any], detail: str
) -> None:
    result = await tools.call("exec", arguments, "a")
    assert usage_error(result) == f"failed to parse function arguments: {detail}"


async def test_call_exec_blank_code_is_the_pragma_message(tools: CodeModeTools) -> None:
    assert usage_error(await tools.call("exec", '{"code": ""}', "a")) == BLANK_SOURCE_MESSAGE


@pytest.mark.parametrize(
    ("arguments", "detail"),
    [
        ("", "Expecting value: line 1 column 1 (char 0)"),
        ("[1]", "expected a JSON object, got [1]"),
        ("{}", "missing field `cell_id`"),
        ('{"cell_id": 5}', "invalid type for `cell_id`: expected a string, got 5"),
        ('{"cell_id": "x", "extra": 1}', "unknown field `extra`"),
        (
            '{"cell_id": "x", "yield_time_ms": "10"}',
            'invalid type for `yield_time_ms`: expected a number, got "10"',
        ),
        (
            '{"cell_id": "x", "max_tokens": true}',
            "invalid type for `max_tokens`: expected a number, got true",
        ),
        (
            '{"cell_id": "x", "yield_time_ms": NaN}',
            "invalid JSON constant NaN",
        ),
        (
            '{"cell_id": "x", "terminate": "yes"}',
            'invalid type for `terminate`: expected a boolean, got "yes"',
        ),
        (
            '{"cell_id": "x", "until": "done"}',
            'invalid value for `until`: expected "yield" or "completed", got "done"',
        ),
    ],
)
async def test_call_wait_schema_errors(tools: CodeModeTools, arguments: str, detail: str) -> None:
    result = await tools.call("wait", arguments, "w")
    assert usage_error(result) == f"failed to parse function arguments: {detail}"


async def test_call_wait_dispatches_every_argument(
    tools: CodeModeTools, delegate: RecordingDelegate
) -> None:
    source = 'text("0123456789".repeat(8)); yield_control(); await tools.block({}); text("z")'
    result = await tools.exec(source, "c")
    cell_id = str(result.cell_id)
    nothing = await tools.call(
        "wait",
        {"cell_id": cell_id, "yield_time_ms": 20.5, "max_tokens": None, "until": None},
        "w1",
    )
    assert body(nothing) == [NO_NEW_OUTPUT_TEXT]
    stopped = await tools.call(
        "wait", f'{{"cell_id": "{cell_id}", "terminate": true, "max_tokens": 1.9}}', "w2"
    )
    assert status(stopped) == "Script terminated"
    assert (await tools.call("wait", {"cell_id": cell_id}, "w3")).is_error


async def test_call_unknown_tool(tools: CodeModeTools) -> None:
    result = await tools.call("search", "{}", "x")
    assert usage_error(result) == "unknown code mode tool search"


# --- nested tools are those given to CodeModeTools --------------------------------------------


async def test_cells_get_only_the_configured_tools(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    code_mode = CodeModeTools(runtime, [ECHO, BLOCK])
    result = await code_mode.exec("text(ALL_TOOLS.map(t => t.name).join(','))", "c")
    assert body(result) == ["echo,block"]


async def test_a_cpu_bound_cell_runs_on_and_terminates(tools: CodeModeTools) -> None:
    result = await tools.exec('// @exec: {"yield_time_ms": 50}\nwhile (true) {}', "c")
    assert status(result) == running(result.cell_id)
    assert body(result) == []
    started = time.monotonic()
    terminated = await tools.wait(str(result.cell_id), terminate=True)
    assert time.monotonic() - started < 1.0
    assert status(terminated) == "Script terminated"


_LOST_OUTPUT = (
    "BUG: output appended before a CPU-bound loop (text('go'); while (true) {}) is lost when the "
    "cell is terminated or the session shuts down: Terminated(()) instead of Terminated(['go']) "
    "(docs/sessions.md / 4.8 'whole output, each item exactly once', 7.1 'Terminated(undelivered items)'); "
    "the max_cpu_seconds path keeps it (Completed(['go'], ...))"
)


async def test_terminate_keeps_output_written_before_a_cpu_bound_loop(
    runtime: SessionRuntime,
) -> None:
    cell = await runtime.create_cell(CreateCellRequest('text("go"); while (true) {}'))
    await runtime.wait(cell, 0.1)  # Yielded(()) is allowed here (docs/sessions.md) ...
    assert await runtime.terminate(cell) == Terminated((TextItem("go"),))  # ... but not a loss


async def test_shutdown_keeps_output_written_before_a_cpu_bound_loop(
    runtime: SessionRuntime,
) -> None:
    cell = await runtime.create_cell(CreateCellRequest('text("go"); while (true) {}'))
    observer = asyncio.create_task(runtime.wait(cell, 30))
    await asyncio.sleep(0.1)
    await runtime.shutdown()
    assert await observer == Terminated((TextItem("go"),))


async def test_cpu_limit_keeps_output_written_before_a_cpu_bound_loop(make_runtime: Any) -> None:
    """The contrast to the two bugs above: the CPU-limit path does keep the output."""
    rt = make_runtime(CellLimits(max_cpu_seconds=0.3))
    code_mode = CodeModeTools(rt, [])
    result = await code_mode.exec('text("go"); while (true) {}', "c")
    assert status(result) == "Script failed"
    assert body(result) == ["go", "Script error:\nexec cell exceeded max_cpu_seconds (0.3)"]
