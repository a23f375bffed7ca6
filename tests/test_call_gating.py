"""The concurrency bound and approvals of nested calls, on real V8 (see ``docs/approvals.md``).

- ``max_parallel_tool_calls`` bounds the calls at the delegate; further calls wait in issue order
  and a pausable frontier lists them.
- A tool with ``needs_approval`` is held until the host approves or rejects each call, for both
  kinds of cell; termination, completion and shutdown drop held and queued calls.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from codemode import (
    ApprovalRequest,
    CellLimits,
    Completed,
    MissingCell,
    NestedToolCall,
    NotAwaitingApproval,
    Pending,
    ResumeOutcome,
    SessionRuntime,
    Terminated,
    TextItem,
    ToolDefinition,
    Yielded,
)
from conftest import BLOCK, ECHO, RecordingDelegate, request

DELETE = ToolDefinition("delete_file", "Deletes a file.", needs_approval=True)
TOOLS = (ECHO, BLOCK, DELETE)


class CountingDelegate:
    """Answers every call after a short pause; records the order calls arrive in and the
    largest number of calls it ever held at once."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.active = 0
        self.peak = 0

    async def invoke_tool(self, call: NestedToolCall) -> Any:
        self.order.append(call.call_id)
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(0.001 * (len(self.order) % 7))
            return call.input
        finally:
            self.active -= 1

    async def notify(self, call_id: str, cell_id: str, text: str) -> None:
        return None


# ---------------------------------------------------------------- the concurrency bound


async def test_promise_all_beyond_the_bound_completes_in_issue_order() -> None:
    delegate = CountingDelegate()
    async with SessionRuntime(delegate) as rt:  # default bound: 100
        cell = await rt.create_cell(
            request(
                "const r = await Promise.all(Array.from({length: 150}, (_, i) => tools.echo({i})));"
                "text(r.map(x => x.i).join(','))",
                ECHO,
            )
        )
        event = await rt.wait(cell, 30)
    assert event == Completed((TextItem(",".join(str(i) for i in range(150))),))
    assert delegate.peak == 100
    assert delegate.order == [f"tool-{n}" for n in range(1, 151)]


async def test_queued_calls_count_against_max_tool_calls_at_issue(make_runtime: Any) -> None:
    rt = make_runtime(CellLimits(max_tool_calls=5, max_parallel_tool_calls=2))
    cell = await rt.create_cell(
        request("await Promise.all(Array.from({length: 6}, () => tools.block({})))")
    )
    event = await rt.wait(cell, 20)
    assert isinstance(event, Completed)
    assert event.error_text == "exec cell exceeded max_tool_calls (5)"


async def test_a_pausable_frontier_lists_queued_calls(
    make_runtime: Any, delegate: RecordingDelegate
) -> None:
    rt = make_runtime(CellLimits(max_parallel_tool_calls=2))
    cell = await rt.create_pausable_cell(
        request(
            "const r = await Promise.all([1, 2, 3, 4].map(i => tools.block({i}))); text(r.length)"
        )
    )
    event = await rt.wait_to_pending(cell)
    assert isinstance(event, Pending)
    assert event.frontier.pending_tool_call_ids == ("tool-1", "tool-2", "tool-3", "tool-4")
    await delegate.wait_calls(2)
    await asyncio.sleep(0.05)
    assert [c.call_id for c in delegate.calls] == ["tool-1", "tool-2"]
    delegate.release("tool-1")
    await delegate.wait_calls(3)  # the slot is reused while the cell is paused
    delegate.release()
    assert await rt.resume(cell, event.frontier.generation) is ResumeOutcome.RESUMED
    final = await rt.wait_to_pending(cell)
    while isinstance(final, Pending):
        await rt.resume(cell, final.frontier.generation)
        final = await rt.wait_to_pending(cell)
    assert final == Completed((TextItem("4"),))
    assert [c.call_id for c in delegate.calls] == ["tool-1", "tool-2", "tool-3", "tool-4"]


async def test_terminate_drops_queued_calls(make_runtime: Any, delegate: RecordingDelegate) -> None:
    rt = make_runtime(CellLimits(max_parallel_tool_calls=3))
    cell = await rt.create_cell(
        request("await Promise.all(Array.from({length: 10}, () => tools.block({})))")
    )
    await delegate.wait_calls(3)
    assert isinstance(await rt.terminate(cell), Terminated)
    await asyncio.sleep(0.05)
    assert len(delegate.calls) == 3
    assert sorted(delegate.cancelled) == ["tool-1", "tool-2", "tool-3"]


async def test_completion_and_shutdown_drop_queued_calls(
    make_runtime: Any, delegate: RecordingDelegate
) -> None:
    rt = make_runtime(CellLimits(max_parallel_tool_calls=2))
    # The body does not await its calls: it completes with two at the delegate, three queued.
    cell = await rt.create_cell(
        request('for (let i = 0; i < 5; i++) tools.block({i}); text("done")')
    )
    assert await rt.wait(cell, 20) == Completed((TextItem("done"),))
    assert [c.call_id for c in delegate.calls] == ["tool-1", "tool-2"]
    assert sorted(delegate.cancelled) == ["tool-1", "tool-2"]
    cell = await rt.create_cell(
        request("await Promise.all(Array.from({length: 5}, () => tools.block({})))")
    )
    await delegate.wait_calls(4)
    await rt.shutdown()
    await asyncio.sleep(0.05)
    assert len(delegate.calls) == 4  # the queued three never reached the delegate


# ---------------------------------------------------------------- approvals: continuing cells


async def test_continuing_cell_approve(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cell = await runtime.create_cell(
        request(
            'text("start"); const r = await tools.delete_file({path: "/tmp/x"}); text(r.path)',
            *TOOLS,
        )
    )
    # The hold ends the observation at once, well inside its budget.
    event = await asyncio.wait_for(runtime.wait(cell, 60), 10)
    assert event == Yielded((TextItem("start"),))
    held = runtime.awaiting_approval(cell)
    assert held == (ApprovalRequest(cell.cell_id, "tool-1", DELETE, {"path": "/tmp/x"}),)
    assert runtime.awaiting_approval(cell.cell_id) == held
    assert delegate.calls == []
    await runtime.approve(cell, "tool-1")
    assert runtime.awaiting_approval(cell) == ()
    assert await runtime.wait(cell, 20) == Completed((TextItem("/tmp/x"),))
    assert [c.call_id for c in delegate.calls] == ["tool-1"]
    with pytest.raises(MissingCell):
        await runtime.approve(cell, "tool-1")


async def test_continuing_cell_reject(runtime: SessionRuntime, delegate: RecordingDelegate) -> None:
    cell = await runtime.create_cell(
        request(
            "try { await tools.delete_file({path: '/'}) } catch (e) {"
            " text(e instanceof Error); text(e.message) }",
            *TOOLS,
        )
    )
    await delegate_idle(runtime, cell)
    with pytest.raises(NotAwaitingApproval):
        await runtime.approve(cell, "tool-7")
    await runtime.reject(cell, "tool-1", reason="deleting / is not allowed")
    with pytest.raises(NotAwaitingApproval):
        await runtime.reject(cell, "tool-1")
    event = await runtime.wait(cell, 20)
    assert isinstance(event, Completed)
    assert event.items[-2:] == (TextItem("true"), TextItem("deleting / is not allowed"))
    assert delegate.calls == []


async def delegate_idle(runtime: SessionRuntime, cell: Any) -> None:
    """Observe until the cell holds a call."""
    async with asyncio.timeout(10):
        while not runtime.awaiting_approval(cell):
            await runtime.wait(cell, 0.05)


async def test_default_reason(runtime: SessionRuntime) -> None:
    cell = await runtime.create_cell(
        request("try { await tools.delete_file({}) } catch (e) { text(e.message) }", *TOOLS)
    )
    await delegate_idle(runtime, cell)
    await runtime.reject(cell, "tool-1")
    assert await runtime.wait(cell, 20) == Completed((TextItem("the host rejected this call"),))


async def test_terminate_completion_and_shutdown_drop_held_calls(
    make_runtime: Any, delegate: RecordingDelegate
) -> None:
    rt = make_runtime()
    # termination
    cell = await rt.create_cell(request("await tools.delete_file({n: 1})", *TOOLS))
    await delegate_idle(rt, cell)
    assert await rt.terminate(cell) == Terminated(())
    with pytest.raises(MissingCell):
        rt.awaiting_approval(cell)
    # completion: the body does not await the held call
    cell = await rt.create_cell(request('tools.delete_file({n: 2}); text("done")', *TOOLS))
    items: list[Any] = []
    event = await rt.wait(cell, 20)
    while isinstance(event, Yielded):  # the hold may end an observation before the completion
        items.extend(event.items)
        event = await rt.wait(cell, 20)
    assert event == Completed(event.items) and [*items, *event.items] == [TextItem("done")]
    # shutdown
    cell = await rt.create_cell(request("await tools.delete_file({n: 3})", *TOOLS))
    await delegate_idle(rt, cell)
    await rt.shutdown()
    assert delegate.calls == []


async def test_held_calls_do_not_take_parallel_slots(make_runtime: Any) -> None:
    delegate = CountingDelegate()
    rt = make_runtime(CellLimits(max_parallel_tool_calls=1), delegate)
    cell = await rt.create_cell(
        request(
            "const p = tools.delete_file({n: 0});"
            "const r = await Promise.all([1, 2, 3].map(i => tools.echo({i})));"
            "text(r.length); text((await p).n)",
            *TOOLS,
        )
    )
    items: list[Any] = []
    async with asyncio.timeout(10):
        while len(delegate.order) < 3:
            items.extend((await rt.wait(cell, 0.05)).items)
    await rt.approve(cell, "tool-1")
    event = await rt.wait(cell, 20)
    while isinstance(event, Yielded):
        items.extend(event.items)
        event = await rt.wait(cell, 20)
    assert isinstance(event, Completed) and event.error_text is None
    assert [*items, *event.items] == [TextItem("3"), TextItem("0")]
    assert delegate.order == ["tool-2", "tool-3", "tool-4", "tool-1"]
    assert delegate.peak == 1


# ---------------------------------------------------------------- approvals: pausable cells


async def test_pausable_cell_approve_and_reject(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cell = await runtime.create_pausable_cell(
        request(
            "const a = tools.delete_file({path: 'a'});"
            "const b = tools.delete_file({path: 'b'}).catch(e => 'rejected: ' + e.message);"
            "const c = tools.echo({path: 'c'});"
            "const r = await Promise.all([a, b, c]);"
            "text(JSON.stringify(r))",
            *TOOLS,
        )
    )
    event = await runtime.wait_to_pending(cell)
    assert isinstance(event, Pending)
    frontier = event.frontier
    assert frontier.pending_tool_call_ids == ("tool-1", "tool-2", "tool-3")
    assert frontier.awaiting_approval == (
        ApprovalRequest(cell.cell_id, "tool-1", DELETE, {"path": "a"}),
        ApprovalRequest(cell.cell_id, "tool-2", DELETE, {"path": "b"}),
    )
    assert runtime.awaiting_approval(cell) == frontier.awaiting_approval
    await runtime.approve(cell, "tool-1")
    await runtime.reject(cell, "tool-2", "no")
    await delegate.wait_calls(2)
    # Deciding does not advance the cell: the same frontier is current.
    assert await runtime.wait_to_pending(cell) == event
    assert await runtime.resume(cell, frontier.generation) is ResumeOutcome.RESUMED
    final = await runtime.wait_to_pending(cell)
    while isinstance(final, Pending):
        await runtime.resume(cell, final.frontier.generation)
        final = await runtime.wait_to_pending(cell)
    assert final == Completed((TextItem('[{"path":"a"},"rejected: no",{"path":"c"}]'),))
    assert sorted(c.call_id for c in delegate.calls) == ["tool-1", "tool-3"]


async def test_pausable_termination_drops_held_calls(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cell = await runtime.create_pausable_cell(request("await tools.delete_file({})", *TOOLS))
    event = await runtime.wait_to_pending(cell)
    assert isinstance(event, Pending) and len(event.frontier.awaiting_approval) == 1
    assert isinstance(await runtime.terminate(cell), Terminated)
    assert delegate.calls == []
