"""Bad input the server must survive (issue 6), each its own test.

Most run an in-process :class:`ProtocolServer` over an in-memory line connection (the stdio
framing code path), so the test can check the server's state afterwards: it answers with a
JSON-RPC error where one is due, keeps serving every other session, and leaks no cell.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from protocol_support import HANG, InProcessServer, RawClient, RawError, WebSocketServer

from codemode import (
    Completed,
    CreateCellRequest,
    RemoteSession,
    TextItem,
    ToolDefinition,
    Yielded,
    tools_delegate,
)
from codemode.protocol.messages import MAX_FRAME_BYTES

BLOCK_TOOL = {"name": "block", "kind": "function"}


@pytest.fixture
async def server() -> AsyncIterator[InProcessServer]:
    s = InProcessServer()
    try:
        yield s
    finally:
        await s.close()
        assert s.server.stats()["liveCellsOfEndedSessions"] == 0


async def ready(server: InProcessServer) -> tuple[RawClient, str]:
    client, _ = server.connect()
    await client.initialize()
    return client, await client.open_session()


async def create(client: RawClient, sid: str, source: str, kind: str = "continuing") -> str:
    result = await client.call(
        "cell/create", {"sessionId": sid, "kind": kind, "source": source, "tools": [BLOCK_TOOL]}
    )
    return str(result["cellId"])


async def wait(client: RawClient, sid: str, cell: str, observation: int) -> Any:
    return await client.call(
        "cell/wait",
        {"sessionId": sid, "cellId": cell, "yieldAfterMs": 10_000, "observation": observation},
    )


async def still_serving(server: InProcessServer, client: RawClient | None = None) -> None:
    """The connection (if given) and a fresh one both run a cell to completion."""
    if client is not None:
        sid = await client.open_session()
        cell = await create(client, sid, 'text("alive")')
        assert (await wait(client, sid, cell, 0))["items"] == [{"type": "text", "text": "alive"}]
    fresh, sid = await ready(server)
    cell = await create(fresh, sid, 'text("fresh")')
    assert (await wait(fresh, sid, cell, 0))["items"] == [{"type": "text", "text": "fresh"}]
    await fresh.close()


async def test_malformed_json_is_a_parse_error_and_the_connection_continues(
    server: InProcessServer,
) -> None:
    client, _ = await ready(server)
    for line in (
        b'{"jsonrpc": "2.0", "id": 1, "method"',
        b"not json",
        b"\xff\xfe\x00",
        b"{'a': 1}",
        b"[1, NaN]",
    ):
        await client.send(line + b"\n")
        error = await client.orphan()
        assert error["id"] is None and error["error"]["code"] == -32700, line
    await client.send(b"   \n")  # a blank line is skipped, not answered
    await still_serving(server, client)
    assert client.orphans.empty()


async def test_a_frame_of_several_megabytes(server: InProcessServer) -> None:
    client, sid = await ready(server)
    # A valid 6 MB request: a cell whose source carries a long comment.
    source = "/*" + "x" * 6_000_000 + '*/ text("big")'
    cell = await create(client, sid, source)
    assert (await wait(client, sid, cell, 0))["items"] == [{"type": "text", "text": "big"}]
    # 6 MB of garbage: a parse error, and the connection goes on.
    await client.send(b"y" * 6_000_000 + b"\n")
    assert (await client.orphan())["error"]["code"] == -32700
    # A big result travels too.
    cell = await create(client, sid, 'text("z".repeat(900000))')
    event = await wait(client, sid, cell, 0)
    assert len(event["items"][0]["text"]) == 900_000
    await still_serving(server, client)


async def test_a_line_over_64_mib_closes_the_connection_and_its_sessions(
    server: InProcessServer,
) -> None:
    client, task = server.connect()
    await client.initialize()
    sid = await client.open_session()
    await create(client, sid, "await tools.block({})")
    await client.server_message("tool/invoke")
    chunk = b"a" * (1 << 20)
    for _ in range(MAX_FRAME_BYTES // len(chunk) + 1):
        await client.send(chunk)
    reason = await asyncio.wait_for(task, HANG)
    assert "exceeds" in reason
    await asyncio.wait_for(client.eof.wait(), HANG)
    assert server.server.stats()["liveCellsOfEndedSessions"] == 0
    await still_serving(server)


async def test_a_batch_is_an_invalid_request(server: InProcessServer) -> None:
    client, _ = await ready(server)
    await client.send([{"jsonrpc": "2.0", "id": 5, "method": "session/open"}])
    error = await client.orphan()
    assert error["id"] is None and error["error"]["code"] == -32600
    for message in (
        5,
        None,
        "text",
        {"jsonrpc": "1.0", "id": 9, "method": "session/open"},
        {"id": 10},
    ):
        await client.send(json.dumps(message))
        error = await client.orphan()
        assert error["error"]["code"] == -32600, message
    for bad_id in (1.5, True, {"a": 1}, None):
        await client.send({"jsonrpc": "2.0", "id": bad_id, "method": "session/open"})
        error = await client.orphan()
        assert error["id"] is None and error["error"]["code"] == -32600, bad_id
    response = await client.request("session/open", [1, 2])  # by-position params
    assert response["error"]["code"] == -32602
    await client.send({"jsonrpc": "2.0", "id": 11, "method": "session/open", "params": 7})
    assert (await client.orphan())["error"]["code"] == -32600
    await still_serving(server, client)


async def test_unknown_methods(server: InProcessServer) -> None:
    client, _ = await ready(server)
    for method in ("cell/explode", "tool/invoke", "$/whatever", ""):
        response = await client.request(method, {})
        assert response["error"]["code"] == -32601, method
    # $/cancelRequest sent as a request (with an id) is answered with an empty result.
    assert (await client.request("$/cancelRequest", {"id": 424242}))["result"] == {}
    await client.send({"jsonrpc": "2.0", "method": "unknown/notification", "params": {}})
    await client.send({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": 12345}})
    await client.send({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": ["nonsense"]})
    await still_serving(server, client)
    assert client.orphans.empty()
    # A notification that is not even well-formed is answered -32600 with id null.
    await client.send({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": "nonsense"})
    error = await client.orphan()
    assert error["id"] is None and error["error"]["code"] == -32600


@pytest.mark.parametrize(
    ("method", "params", "fragment"),
    [
        ("session/open", {"limits": {"maxToolCalls": "many"}}, "limits.maxToolCalls"),
        ("session/open", {"limits": {"maxToolCalls": 0}}, "at least 1"),
        ("session/open", {"limits": {"maxHeapBytes": 2**40}}, "ceiling"),
        ("session/open", {"limits": {"maxWidgets": 1}}, "maxWidgets"),
        ("session/open", {"limits": {"maxLiveCells": 300, "maxIdempotencyKeys": 10}}, "ceiling"),
        ("session/open", {"engine": "python"}, "engine"),
        ("session/shutdown", {"sessionId": 5}, "sessionId"),
        ("cell/create", {"sessionId": "SID", "kind": "continuing", "source": 5}, "source"),
        ("cell/create", {"sessionId": "SID", "kind": "sideways", "source": ""}, "kind"),
        (
            "cell/create",
            {"sessionId": "SID", "kind": "continuing", "source": "", "tools": [{}]},
            "tools[0].name",
        ),
        (
            "cell/create",
            {
                "sessionId": "SID",
                "kind": "continuing",
                "source": "",
                "tools": [{"name": "x", "kind": "other"}],
            },
            "kind",
        ),
        ("cell/create", {"sessionId": "SID", "kind": "continuing"}, "source is required"),
        (
            "cell/wait",
            {"sessionId": "SID", "cellId": "c", "yieldAfterMs": "soon", "observation": 0},
            "yieldAfterMs",
        ),
        (
            "cell/wait",
            {"sessionId": "SID", "cellId": "c", "yieldAfterMs": 5, "observation": -1},
            "observation",
        ),
        (
            "cell/wait",
            {"sessionId": "SID", "cellId": "c", "yieldAfterMs": 5, "observation": 1.5},
            "observation",
        ),
        ("cell/waitToPending", {"sessionId": "SID", "cellId": ["c"], "observation": 0}, "cellId"),
        ("cell/resume", {"sessionId": "SID", "cellId": "c", "generation": "1"}, "generation"),
        ("cell/resume", {"sessionId": "SID", "cellId": "c", "generation": True}, "generation"),
        ("cell/terminate", {"sessionId": "SID"}, "cellId"),
        (
            "observation/release",
            {"sessionId": "SID", "cellId": "c", "observation": None},
            "observation",
        ),
    ],
)
async def test_wrong_parameter_types(
    server: InProcessServer, method: str, params: dict[str, Any], fragment: str
) -> None:
    client, sid = await ready(server)
    params = json.loads(json.dumps(params).replace('"SID"', json.dumps(sid)))
    response = await client.request(method, params)
    assert response["error"]["code"] == -32602, response
    assert fragment in response["error"]["message"]
    await still_serving(server, client)


async def test_an_unknown_session_is_a_codemode_error(server: InProcessServer) -> None:
    client, _ = await ready(server)
    with pytest.raises(RawError) as info:
        await client.call("cell/create", {"sessionId": "nope", "kind": "continuing", "source": ""})
    assert info.value.code == -32000
    assert info.value.data == {"kind": "UnknownSession", "sessionId": "nope"}
    assert info.value.message == "code mode session nope not found"


async def test_a_response_to_an_unknown_request_id_is_ignored_and_logged(
    server: InProcessServer, caplog: pytest.LogCaptureFixture
) -> None:
    client, _ = await ready(server)
    with caplog.at_level(logging.WARNING, logger="codemode.protocol.rpc"):
        await client.respond("s-999", {"output": 1})
        await client.send({"jsonrpc": "2.0", "id": 77, "error": {"code": 1, "message": "x"}})
        await client.send({"jsonrpc": "2.0", "id": [1], "result": 1})
        await still_serving(server, client)
    assert client.orphans.empty()
    assert "unknown request id 's-999'" in caplog.text
    assert "unknown request id 77" in caplog.text


async def test_a_duplicate_pending_request_id(server: InProcessServer) -> None:
    client, sid = await ready(server)
    cell = await create(client, sid, "await tools.block({})")
    invoke = await client.server_message("tool/invoke")
    first = client.expect(7)
    params = {"sessionId": sid, "cellId": cell, "yieldAfterMs": 10_000, "observation": 0}
    await client.send({"jsonrpc": "2.0", "id": 7, "method": "cell/wait", "params": params})
    await asyncio.sleep(0.05)
    duplicate = client.expect(7)
    first_future, client.pending[7] = first, duplicate
    await client.send({"jsonrpc": "2.0", "id": 7, "method": "session/open", "params": {}})
    answer = await asyncio.wait_for(duplicate, HANG)
    assert answer["error"]["code"] == -32600 and "duplicate" in answer["error"]["message"]
    client.pending[7] = first_future
    await client.respond(invoke["id"], {"output": None})
    event = await asyncio.wait_for(first_future, HANG)
    assert event["result"]["type"] == "completed"
    await still_serving(server, client)


async def test_a_tool_result_for_a_closed_cell(server: InProcessServer) -> None:
    client, sid = await ready(server)
    cell = await create(client, sid, "text(JSON.stringify(await tools.block({})))")
    invoke = await client.server_message("tool/invoke")
    assert await client.call("cell/terminate", {"sessionId": sid, "cellId": cell}) == {
        "type": "terminated",
        "items": [],
    }
    cancel = await client.server_message("$/cancelRequest")
    assert cancel["params"]["id"] == invoke["id"]
    await client.respond(invoke["id"], {"output": {"late": True}})
    await client.send(
        {"jsonrpc": "2.0", "id": invoke["id"], "error": {"code": -32001, "message": "late"}}
    )
    with pytest.raises(RawError) as info:
        await wait(client, sid, cell, 0)
    assert info.value.data == {"kind": "MissingCell", "cellId": cell}
    await still_serving(server, client)
    assert server.server.stats()["liveCells"] == 0


async def test_tool_invoke_answered_with_an_error_or_a_malformed_result(
    server: InProcessServer,
) -> None:
    client, sid = await ready(server)
    cell = await create(
        client,
        sid,
        "for (const n of [1, 2, 3]) { try { text(JSON.stringify(await tools.block({n}))) }"
        " catch (e) { text('rejected: ' + e.message) } }",
    )
    first = await client.server_message("tool/invoke")
    await client.send(
        {"jsonrpc": "2.0", "id": first["id"], "error": {"code": -32001, "message": "no way"}}
    )
    second = await client.server_message("tool/invoke")
    await client.respond(second["id"], {"notOutput": 1})
    third = await client.server_message("tool/invoke")
    await client.respond(third["id"], {"output": [3]})
    event = await wait(client, sid, cell, 0)
    assert [i["text"] for i in event["items"]] == [
        "rejected: no way",
        "rejected: the client answered tool/invoke for `block` without an output",
        "[3]",
    ]


async def test_a_client_that_disconnects_in_the_middle_of_a_tool_call(
    server: InProcessServer,
) -> None:
    client, task = server.connect()
    await client.initialize()
    sids = [await client.open_session() for _ in range(2)]
    for sid in sids:
        await create(client, sid, "await tools.block({})")
        await create(client, sid, "while (true) {}", kind="pausable")
    await client.server_message("tool/invoke")
    await client.server_message("tool/invoke")
    assert server.server.stats()["liveCells"] == 4
    await client.transport.close()  # gone, without a word
    await asyncio.wait_for(task, HANG)
    stats = server.server.stats()
    assert stats["connections"] == 0 and stats["liveCellsOfEndedSessions"] == 0
    await still_serving(server)


async def test_a_client_that_never_answers_a_tool_call(server: InProcessServer) -> None:
    client, sid = await ready(server)
    cell = await create(client, sid, 'text("a"); await tools.block({})')
    invoke = await client.server_message("tool/invoke")
    event = await client.call(
        "cell/wait", {"sessionId": sid, "cellId": cell, "yieldAfterMs": 50, "observation": 0}
    )
    assert event == {"type": "yielded", "items": [{"type": "text", "text": "a"}]}
    assert await client.call("cell/terminate", {"sessionId": sid, "cellId": cell}) == {
        "type": "terminated",
        "items": [],
    }
    assert (await client.server_message("$/cancelRequest"))["params"]["id"] == invoke["id"]
    # And shutting the session down with another unanswered call works too.
    await create(client, sid, "await tools.block({})")
    await client.server_message("tool/invoke")
    assert await client.call("session/shutdown", {"sessionId": sid}) == {}
    assert await client.call("session/shutdown", {"sessionId": sid}) == {}  # idempotent
    await client.server_message("$/cancelRequest")
    with pytest.raises(RawError) as info:
        await create(client, sid, "text(1)")
    assert info.value.data == {"kind": "ShuttingDown"}
    assert server.server.stats()["liveCells"] == 0


async def test_notifications_are_dropped_when_the_client_does_not_want_them(
    server: InProcessServer,
) -> None:
    client, _ = server.connect()
    await client.initialize(notify=False)
    sid = await client.open_session()
    cell = await create(client, sid, 'notify("hello"); text("done")')
    assert (await wait(client, sid, cell, 0))["items"] == [{"type": "text", "text": "done"}]
    assert all(m.get("method") != "cell/notify" for m in client.all)


async def test_100_concurrent_clients_over_websocket() -> None:
    server = WebSocketServer()
    try:

        async def one(i: int) -> Completed:
            delegate = tools_delegate({"echo": lambda value: value})
            session = await RemoteSession.connect(server.url, delegate)
            try:
                cell = await session.create_cell(
                    CreateCellRequest(
                        f"text(await tools.echo({{i: {i}}}))", [ToolDefinition("echo")]
                    )
                )
                event = await session.wait(cell, 30)
                while isinstance(event, Yielded):  # a loaded machine: observe again
                    assert event.items == ()
                    event = await session.wait(cell, 30)
                assert isinstance(event, Completed)
                return event
            finally:
                await session.shutdown()

        # A hang guard: 100 sandboxes made at once take a few seconds on an idle machine,
        # much longer on a loaded one.
        events = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(100))), 600)
        assert [e.items for e in events] == [(TextItem(f'{{"i":{i}}}'),) for i in range(100)]
        # The server still serves.
        assert (await asyncio.wait_for(one(100), HANG)).items == (TextItem('{"i":100}'),)
    finally:
        assert server.stop() == 0
