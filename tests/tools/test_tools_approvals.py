"""Held calls through the model-facing ``exec``/``wait`` tools, on real V8 and over the wire.

A result of a running cell lists its held calls after the output, one line each
(``Awaiting approval: {call_id} {tool name} {input as JSON}``); the host decides with
``CodeModeTools.approve`` / ``.reject``.
"""

from __future__ import annotations

from typing import Any

import pytest

from codemode import (
    ApprovalRequest,
    MissingCell,
    NotAwaitingApproval,
    RemoteSession,
    SessionRuntime,
    TextItem,
    ToolDefinition,
)
from codemode.tools import CodeModeTools, ToolResult
from conftest import ECHO, RecordingDelegate

DELETE = ToolDefinition("delete_file", "Deletes a file.", needs_approval=True)
SOURCE = (
    'text("checking");'
    'const r = await tools.delete_file({path: "/tmp/é.txt", force: true});'
    "text(`deleted ${r.path}`);"
    'try { await tools.delete_file({path: "/etc"}) } catch (e) { text(e.message) }'
)


def texts(result: ToolResult) -> list[str]:
    return [i.text for i in result.items if isinstance(i, TextItem)]


async def run_round_trip(session: Any, delegate: RecordingDelegate) -> None:
    tools = CodeModeTools(session, [ECHO, DELETE])
    result = await tools.exec(SOURCE, "call-1")
    assert result.cell_id is not None and not result.is_error
    cell_id = result.cell_id
    assert texts(result)[0].startswith(f"Script running with cell ID {cell_id}")
    assert texts(result)[1:] == [
        "checking",
        'Awaiting approval: tool-1 delete_file {"path":"/tmp/é.txt","force":true}',
    ]
    assert delegate.calls == []
    await tools.approve(cell_id, "tool-1")
    with pytest.raises(NotAwaitingApproval):
        await tools.approve(cell_id, "tool-1")
    result = await tools.wait(cell_id, yield_time_ms=30_000, until="completed")
    assert texts(result)[1:] == [
        "deleted /tmp/é.txt",
        'Awaiting approval: tool-2 delete_file {"path":"/etc"}',
    ]
    await tools.reject(cell_id, "tool-2", "not /etc")
    result = await tools.wait(cell_id, yield_time_ms=30_000, until="completed")
    assert texts(result)[0].startswith("Script completed")
    assert texts(result)[1:] == ["not /etc"]
    assert [c.call_id for c in delegate.calls] == ["tool-1"]
    with pytest.raises(MissingCell):
        await tools.approve(cell_id, "tool-2")


async def test_exec_and_wait_list_held_calls(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    await run_round_trip(runtime, delegate)


async def test_exec_and_wait_list_held_calls_over_the_wire(delegate: RecordingDelegate) -> None:
    async with await RemoteSession.spawn(delegate) as session:
        await run_round_trip(session, delegate)


async def test_a_wait_with_no_new_output_still_lists_held_calls(
    runtime: SessionRuntime,
) -> None:
    tools = CodeModeTools(runtime, [DELETE])
    result = await tools.exec("await tools.delete_file({})", "call-2")
    assert texts(result)[1:] == ["Awaiting approval: tool-1 delete_file {}"]
    assert result.cell_id is not None
    result = await tools.wait(result.cell_id, yield_time_ms=50)
    assert texts(result)[1:] == [
        "(no new output)",
        "Awaiting approval: tool-1 delete_file {}",
    ]


async def test_an_approver_decides_and_the_observation_goes_on(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    asked: list[tuple[str, str, Any]] = []

    async def approver(request: ApprovalRequest) -> bool | str:
        asked.append((request.call_id, request.tool.name, request.input))
        return True if request.input["path"].startswith("/tmp/") else "only /tmp may be deleted"

    tools = CodeModeTools(runtime, [DELETE], approver=approver)
    result = await tools.exec(SOURCE, "call-3")
    assert texts(result)[0].startswith("Script completed")
    assert texts(result)[1:] == ["checking", "deleted /tmp/é.txt", "only /tmp may be deleted"]
    assert asked == [
        ("tool-1", "delete_file", {"path": "/tmp/é.txt", "force": True}),
        ("tool-2", "delete_file", {"path": "/etc"}),
    ]
    assert [c.call_id for c in delegate.calls] == ["tool-1"]


async def test_an_approver_that_fails_rejects_with_its_message(runtime: SessionRuntime) -> None:
    async def approver(request: ApprovalRequest) -> bool | str:
        raise RuntimeError("policy service down")

    tools = CodeModeTools(runtime, [DELETE], approver=approver)
    result = await tools.exec(
        "try { await tools.delete_file({}) } catch (e) { text(e.message) }", "call-4"
    )
    assert texts(result)[1:] == ["policy service down"]


def test_a_long_input_is_cut_in_the_middle() -> None:
    from codemode.tools.approvals import MAX_INPUT_TOKENS, awaiting_approval_item

    request = ApprovalRequest("c", "tool-1", DELETE, {"content": "x" * 100_000})
    item = awaiting_approval_item([request])
    assert item is not None
    assert item.text.startswith('Awaiting approval: tool-1 delete_file {"content":"xxx')
    assert "tokens truncated…" in item.text
    assert len(item.text) < MAX_INPUT_TOKENS * 4 + 200
    assert awaiting_approval_item([]) is None
