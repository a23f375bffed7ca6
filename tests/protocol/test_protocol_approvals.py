"""Approvals and the concurrency bound over the wire: the same scenarios against the in-process
runtime and a ``RemoteSession`` on a spawned ``codemode serve`` and over WebSocket (``cell/approve``,
``cell/reject``, ``cell/awaitingApproval``, ``awaitingApproval`` on events)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from protocol_support import HANG, Harness, InProcessServer, RawClient, WebSocketServer

from codemode import (
    ApprovalRequest,
    CellLimits,
    Completed,
    MissingCell,
    NotAwaitingApproval,
    Pending,
    RemoteSession,
    ResumeOutcome,
    TextItem,
    ToolDefinition,
    Yielded,
)
from conftest import BLOCK, ECHO, RecordingDelegate, request

DELETE = ToolDefinition("delete_file", "Deletes a file.", namespace="fs", needs_approval=True)
TOOLS = (ECHO, BLOCK, DELETE)
EVERY_MODE = pytest.mark.parametrize("harness", ["local", "spawn", "ws"], indirect=True)


@pytest.fixture(scope="module")
def ws_server() -> Iterator[WebSocketServer]:
    server = WebSocketServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    url = request.getfixturevalue("ws_server").url if request.param == "ws" else None
    h = Harness(request.param, url)
    try:
        yield h
    finally:
        await h.close()


async def until_held(rt: Any, cell: Any, items: list[Any]) -> None:
    async with asyncio.timeout(HANG):
        while not rt.awaiting_approval(cell):
            event = await rt.wait(cell, 5)
            assert isinstance(event, Yielded), event
            items.extend(event.items)


@EVERY_MODE
async def test_continuing_approve_and_reject(harness: Harness, delegate: RecordingDelegate) -> None:
    rt = await harness.session(delegate)
    cell = await rt.create_cell(
        request(
            'text("start");'
            'const a = await tools.delete_file({path: "a"}); text(a.path);'
            'try { await tools.delete_file({path: "b"}) } catch (e) { text(e.message) }',
            *TOOLS,
        )
    )
    items: list[Any] = []
    await until_held(rt, cell, items)
    assert items == [TextItem("start")]
    assert rt.awaiting_approval(cell) == (
        ApprovalRequest(cell.cell_id, "tool-1", DELETE, {"path": "a"}),
    )
    with pytest.raises(NotAwaitingApproval) as info:
        await rt.approve(cell, "tool-2")
    assert str(info.value) == f"exec cell {cell.cell_id} has no call tool-2 awaiting approval"
    assert info.value.call_id == "tool-2"
    await rt.approve(cell, "tool-1")
    assert rt.awaiting_approval(cell) == ()
    items.clear()
    await until_held(rt, cell, items)
    assert [a.call_id for a in rt.awaiting_approval(cell)] == ["tool-2"]
    await rt.reject(cell, "tool-2", "b stays")
    event = await rt.wait(cell, HANG)
    while isinstance(event, Yielded):
        items.extend(event.items)
        event = await rt.wait(cell, HANG)
    assert isinstance(event, Completed) and event.error_text is None
    assert [*items, *event.items] == [TextItem("a"), TextItem("b stays")]
    assert [c.call_id for c in delegate.calls] == ["tool-1"]
    assert delegate.calls[0].tool == DELETE
    with pytest.raises(MissingCell):
        rt.awaiting_approval(cell)


@EVERY_MODE
async def test_pausable_frontier_lists_held_calls(
    harness: Harness, delegate: RecordingDelegate
) -> None:
    rt = await harness.session(delegate)
    cell = await rt.create_pausable_cell(
        request(
            "const r = await Promise.all([tools.echo({k: 1}), tools.delete_file({path: 'x'})"
            ".catch(e => e.message)]); text(JSON.stringify(r))",
            *TOOLS,
        )
    )
    event = await rt.wait_to_pending(cell)
    assert isinstance(event, Pending)
    assert event.frontier.pending_tool_call_ids == ("tool-1", "tool-2")
    held = (ApprovalRequest(cell.cell_id, "tool-2", DELETE, {"path": "x"}),)
    assert event.frontier.awaiting_approval == held
    assert rt.awaiting_approval(cell) == held
    await rt.reject(cell, "tool-2")
    assert await rt.wait_to_pending(cell) == event  # deciding does not advance the cell
    assert rt.awaiting_approval(cell) == ()  # the repeated frontier does not bring it back
    assert await rt.resume(cell, event.frontier.generation) is ResumeOutcome.RESUMED
    final = await rt.wait_to_pending(cell)
    while isinstance(final, Pending):
        await rt.resume(cell, final.frontier.generation)
        final = await rt.wait_to_pending(cell)
    assert final == Completed((TextItem('[{"k":1},"the host rejected this call"]'),))


@EVERY_MODE
async def test_parallel_calls_beyond_the_bound_queue(
    harness: Harness, delegate: RecordingDelegate
) -> None:
    rt = await harness.session(delegate, CellLimits(max_parallel_tool_calls=3))
    cell = await rt.create_cell(
        request(
            "const r = await Promise.all(Array.from({length: 8}, (_, i) => tools.echo({i})));"
            "text(r.length)"
        )
    )
    event = await rt.wait(cell, HANG)
    assert event == Completed((TextItem("8"),))
    assert [c.call_id for c in delegate.calls] == [f"tool-{n}" for n in range(1, 9)]


async def test_fetch_awaiting_approval_asks_the_server(delegate: RecordingDelegate) -> None:
    async with await RemoteSession.spawn(delegate) as rt:
        cell = await rt.create_cell(request("await tools.delete_file({path: 'z'})", *TOOLS))
        assert rt.awaiting_approval(cell) == ()  # nothing observed yet
        for _ in range(int(HANG / 0.01)):  # until the server has taken the call
            if await rt.fetch_awaiting_approval(cell):
                break
            await asyncio.sleep(0.01)
        assert rt.awaiting_approval(cell) == (
            ApprovalRequest(cell.cell_id, "tool-1", DELETE, {"path": "z"}),
        )
        await rt.terminate(cell)
        with pytest.raises(MissingCell):
            await rt.fetch_awaiting_approval(cell.cell_id)


async def test_wire_shapes() -> None:
    server = InProcessServer()
    client, _ = server.connect()
    try:
        await client.initialize()
        sid = await client.open_session()
        tool = {"name": "delete_file", "kind": "function", "needsApproval": True}
        created = await client.call(
            "cell/create",
            {
                "sessionId": sid,
                "kind": "continuing",
                "source": 'text("a"); await tools.delete_file({p: 1}); text("b")',
                "tools": [tool],
            },
        )
        cell_id = created["cellId"]
        held = {
            "cellId": cell_id,
            "callId": "tool-1",
            "tool": {"name": "delete_file", "namespace": None, "kind": "function"},
            "input": {"p": 1},
        }
        event = await client.call(
            "cell/wait",
            {"sessionId": sid, "cellId": cell_id, "yieldAfterMs": 60_000, "observation": 0},
        )
        assert event == {
            "type": "yielded",
            "items": [{"type": "text", "text": "a"}],
            "awaitingApproval": [held],
        }
        params = {"sessionId": sid, "cellId": cell_id}
        assert await client.call("cell/awaitingApproval", params) == {"calls": [held]}
        assert await client.call("cell/reject", {**params, "callId": "tool-1"}) == {}
        wrong = await client.request("cell/approve", {**params, "callId": "tool-1"})
        assert wrong["error"]["data"] == {
            "kind": "NotAwaitingApproval",
            "cellId": cell_id,
            "callId": "tool-1",
        }
        event = await client.call(
            "cell/wait",
            {"sessionId": sid, "cellId": cell_id, "yieldAfterMs": 60_000, "observation": 1},
        )
        assert event["type"] == "completed"
        assert event["errorText"].startswith("Error: the host rejected this call")
    finally:
        await _close(client, server)


async def _close(client: RawClient, server: InProcessServer) -> None:
    await client.close()
    await server.close()
