"""Issue 12 point 2: a lone surrogate a cell prints (or passes to a tool) reaches clients as
U+FFFD, valid Unicode, on ``codemode serve`` over stdio and WebSocket and in ``exec``/``wait``
results; a paired surrogate (an emoji) is kept."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from protocol_support import HANG, WebSocketServer, serve_process

from codemode import CodeModeTools, RemoteSession, SessionRuntime, TextItem, tools_delegate
from codemode.protocol.rpc import encode
from codemode.textsafe import valid_json, valid_text
from conftest import ECHO, RecordingDelegate, request

# JavaScript source: a lone high surrogate, a lone low one, and a proper pair (U+1F600).
SOURCE = r'text("a\ud800b"); text("\udc00"); text("\ud83d\ude00"); notify("n\ud800");'
EXPECTED = ["a\ufffdb", "\ufffd", "\U0001f600"]


def test_valid_text_and_json() -> None:
    assert valid_text("plain") == "plain"
    assert valid_text("x\ud800y\udfff") == "x\ufffdy\ufffd"
    assert valid_text("\ud83d\ude00") == "\U0001f600"  # a pair held as two code points
    value = {"k\udc00": ["\ud800", 1, None, {"z": "ok"}]}
    assert valid_json(value) == {"k\ufffd": ["\ufffd", 1, None, {"z": "ok"}]}
    clean = {"a": ["b"]}
    assert valid_json(clean) is clean
    text = encode({"t": "\ud800", "e": "\U0001f600"})
    assert json.loads(text) == {"t": "\ufffd", "e": "\U0001f600"}
    text.encode("ascii")


def _strict_utf8(raw: bytes) -> Any:
    """Parse like a strict client: the text must be valid UTF-8 and hold no lone surrogate."""
    value = json.loads(raw.decode("utf-8"))
    json.dumps(value, ensure_ascii=False).encode("utf-8")  # raises on a lone surrogate
    return value


async def test_serve_stdio_sends_valid_unicode() -> None:
    async with serve_process() as server:
        client = server.client
        await client.call("initialize", {"protocolVersion": 1, "clientInfo": {"name": "t"}})
        session_id = (await client.call("session/open", {}))["sessionId"]
        created = await client.call(
            "cell/create",
            {
                "sessionId": session_id,
                "kind": "continuing",
                "source": SOURCE + r'await tools.echo({v: "i\ud800"});',
                "tools": [{"name": "echo"}],
                "toolCallId": "c1",
            },
        )
        waiting = asyncio.ensure_future(
            client.call(
                "cell/wait",
                {
                    "sessionId": session_id,
                    "cellId": created["cellId"],
                    "yieldAfterMs": 20000,
                    "observation": 0,
                },
            )
        )
        seen: dict[str, Any] = {}
        while len(seen) < 2:
            message = await asyncio.wait_for(client.server_messages.get(), HANG)
            seen[message["method"]] = message["params"]
            await client.respond(
                message["id"], {"output": None} if "input" in message["params"] else {}
            )
        event = await asyncio.wait_for(waiting, HANG)
        assert [i["text"] for i in event["items"]] == EXPECTED
        assert seen["cell/notify"]["text"] == "n\ufffd"
        assert seen["tool/invoke"]["input"] == {"v": "i\ufffd"}
        for message in client.all:  # every line the server sent, re-encoded strictly
            _strict_utf8(json.dumps(message, ensure_ascii=False).encode("utf-8"))


async def test_serve_websocket_sends_valid_unicode() -> None:
    server = WebSocketServer()
    try:
        delegate = RecordingDelegate()
        session = await RemoteSession.connect(server.url, delegate)
        try:
            cell = await session.create_cell(request(SOURCE))
            event = await asyncio.wait_for(session.wait(cell, 20), HANG)
            assert [i.text for i in event.items if isinstance(i, TextItem)] == EXPECTED
            assert [n[2] for n in delegate.notifications] == ["n\ufffd"]
        finally:
            await asyncio.wait_for(session.shutdown(), HANG)
    finally:
        assert server.stop() == 0


async def test_exec_and_wait_results_are_valid_unicode() -> None:
    async with SessionRuntime(tools_delegate({"echo": lambda v: v})) as session:
        tools = CodeModeTools(session, [ECHO])
        result = await tools.call("exec", {"code": SOURCE}, "call-1")
        assert [i.text for i in result.items if isinstance(i, TextItem)][1:] == EXPECTED
        running = await tools.call(
            "exec",
            {
                "code": '// @exec: {"yield_time_ms": 0}\nawait new Promise(r => setTimeout(r, 100));'
                + r'text("w\udbff");'
            },
            "call-2",
        )
        assert running.cell_id is not None
        waited = await tools.call("wait", {"cell_id": running.cell_id, "until": "completed"}, "")
        assert [i.text for i in waited.items if isinstance(i, TextItem)][1:] == ["w\ufffd"]
        result.text.encode("utf-8")
        waited.text.encode("utf-8")
