"""``RemoteSession`` beyond the contract suite: server death (scenario 85), closing the server's
stdin (scenario 84), spawning and connecting, tokens, limits, and the client's own protocol
duties (observation numbering, release, cancellation) checked against a scripted server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from protocol_support import HANG, RawClient, WebSocketServer, eventually

import codemode.protocol.client as client_module
from codemode import (
    CellLimits,
    Completed,
    CreateCellRequest,
    MissingCell,
    ProtocolError,
    RemoteSession,
    SessionLost,
    ShuttingDown,
    Terminated,
    TextItem,
    UnknownSession,
    Yielded,
)
from codemode.protocol.transport import memory_pair
from conftest import RecordingDelegate, request

SERVE = [sys.executable, "-m", "codemode", "serve"]


# ---------------------------------------------------------------------------- 85: server death


async def test_85_killing_the_server(delegate: RecordingDelegate) -> None:
    session = await RemoteSession.spawn(delegate)
    try:
        cell = await session.create_cell(request("await tools.block({})"))
        paused = await session.create_pausable_cell(request("await tools.block({})"))
        await delegate.wait_calls(2)
        waiter = asyncio.ensure_future(session.wait(cell, 60))
        await asyncio.sleep(0.05)
        assert session.server_pid is not None
        os.kill(session.server_pid, signal.SIGKILL)
        with pytest.raises(SessionLost) as info:
            await asyncio.wait_for(waiter, HANG)
        assert str(info.value) == "code mode session lost: the server process was killed by SIGKILL"
        assert info.value.reason == "the server process was killed by SIGKILL"
        assert session.is_alive is False
        for call in (
            session.create_cell(request("text(1)")),
            session.wait(cell, 1),
            session.wait_to_pending(paused),
            session.resume(paused, 1),
            session.terminate(cell),
        ):
            with pytest.raises(SessionLost):
                await call
        with pytest.raises(SessionLost):
            session.cell(cell.cell_id)
        # The delegate's calls were cancelled and the child reaped.
        await eventually(lambda: sorted(delegate.cancelled) == ["tool-1", "tool-1"])
        assert session._process is not None and session._process.returncode is not None
        await asyncio.wait_for(session.shutdown(), HANG)  # still fine to call
    finally:
        await session.shutdown()

    fresh = await RemoteSession.spawn(RecordingDelegate())
    async with fresh:
        cell = await fresh.create_cell(request('text("again")'))
        assert await fresh.wait(cell, 10) == Completed((TextItem("again"),))


async def test_sigterm_stops_the_server_gracefully(delegate: RecordingDelegate) -> None:
    session = await RemoteSession.spawn(delegate)
    cell = await session.create_cell(request('text("a"); await tools.block({})'))
    await delegate.wait_calls(1)
    waiter = asyncio.ensure_future(session.wait(cell, 60))
    await asyncio.sleep(0.05)
    assert session.server_pid is not None
    os.kill(session.server_pid, signal.SIGTERM)
    # The server shuts its session down: the observer gets its Terminated, the call is cancelled.
    assert await asyncio.wait_for(waiter, HANG) == Terminated((TextItem("a"),))
    await eventually(lambda: delegate.cancelled == ["tool-1"], HANG)
    await eventually(lambda: not session.is_alive, HANG)
    with pytest.raises(SessionLost) as info:
        await session.create_cell(request("text(1)"))
    assert "exited with status 0" in str(info.value)
    await session.shutdown()


async def test_84_closing_the_servers_stdin(delegate: RecordingDelegate) -> None:
    session = await RemoteSession.spawn(delegate)
    cell = await session.create_cell(request("await tools.block({})"))
    await delegate.wait_calls(1)
    assert session._process is not None and session._process.stdin is not None
    session._process.stdin.close()
    await eventually(lambda: delegate.cancelled == ["tool-1"], HANG)
    await eventually(lambda: not session.is_alive, HANG)
    assert await asyncio.wait_for(session._process.wait(), HANG) == 0
    with pytest.raises(SessionLost) as info:
        await session.wait(cell, 1)
    assert "exited with status 0" in str(info.value)
    await session.shutdown()


async def test_shutdown_waits_for_the_child_and_kills_a_stuck_one(
    delegate: RecordingDelegate, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = await RemoteSession.spawn(delegate)
    await session.create_cell(request("await tools.block({})"))
    await delegate.wait_calls(1)
    await asyncio.wait_for(session.shutdown(), HANG)
    assert session._process is not None and session._process.returncode == 0
    assert delegate.cancelled == ["tool-1"]

    # A "server" that never exits on its own is killed after the grace.
    monkeypatch.setattr(client_module, "CHILD_EXIT_GRACE", 0.5)
    stubborn = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-m', 'codemode', 'serve'], "
        "stdin=sys.stdin, stdout=sys.stdout)\n"
        "sys.stdin.close()\n"
        "child.wait()\n"
        "time.sleep(600)\n"
    )
    session = await RemoteSession.spawn(
        RecordingDelegate(), command=[sys.executable, "-c", stubborn]
    )
    await asyncio.wait_for(session.shutdown(), HANG)
    assert session._process is not None and session._process.returncode == -signal.SIGKILL


async def test_spawn_failures() -> None:
    with pytest.raises(SessionLost) as info:
        await RemoteSession.spawn(
            RecordingDelegate(), command=[sys.executable, "-c", "import sys; sys.exit(3)"]
        )
    assert "exited with status 3" in str(info.value)
    with pytest.raises(FileNotFoundError):
        await RemoteSession.spawn(RecordingDelegate(), command=["/nonexistent/codemode-serve"])
    with pytest.raises(ProtocolError) as refused:
        await RemoteSession.spawn(RecordingDelegate(), limits=CellLimits(max_tool_calls=5000))
    assert refused.value.code == -32602 and "maxToolCalls" in str(refused.value)


async def test_limits_default_to_the_servers(delegate: RecordingDelegate) -> None:
    async with await RemoteSession.spawn(
        delegate, command=[*SERVE, "--max-tool-calls", "10", "--max-cpu-seconds", "0.5"]
    ) as session:
        assert session.limits.max_tool_calls == 10 and session.limits.max_cpu_seconds == 0.5
        assert session.server_info["name"] == "codemode"
        assert session.session_id.startswith("s")
        cell = await session.create_cell(request("while (true) {}"))
        event = await asyncio.wait_for(session.wait(cell, 30), HANG)
        assert event == Completed((), "exec cell exceeded max_cpu_seconds (0.5)")


async def test_stderr_of_the_child_is_logged(
    delegate: RecordingDelegate, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="codemode.protocol.client"):
        async with await RemoteSession.spawn(
            delegate,
            command=[
                sys.executable,
                "-c",
                "import sys; print('hello from stderr', file=sys.stderr); "
                "from codemode.cli import main; sys.exit(main(['serve']))",
            ],
        ):
            await eventually(lambda: "hello from stderr" in caplog.text)


# ---------------------------------------------------------------------------- WebSocket


async def test_websocket_token_and_path() -> None:
    server = WebSocketServer(
        "--token-env", "CODEMODE_TEST_TOKEN", env={"CODEMODE_TEST_TOKEN": "s3cret"}
    )
    try:
        for token in (None, "wrong"):
            with pytest.raises(ProtocolError) as info:
                await RemoteSession.connect(server.url, RecordingDelegate(), token=token)
            assert "HTTP 401" in str(info.value)
        with pytest.raises(ProtocolError) as info:
            await RemoteSession.connect(server.url + "other", RecordingDelegate(), token="s3cret")
        assert "HTTP 404" in str(info.value)
        delegate = RecordingDelegate()
        async with await RemoteSession.connect(server.url, delegate, token="s3cret") as session:
            cell = await session.create_cell(
                request("text(JSON.stringify(await tools.echo({w: 1})))")
            )
            assert await session.wait(cell, 10) == Completed((TextItem('{"w":1}'),))
    finally:
        assert server.stop() == 0


async def test_websocket_server_stop_ends_its_sessions() -> None:
    server = WebSocketServer()
    delegate = RecordingDelegate()
    session = await RemoteSession.connect(server.url, delegate)
    try:
        cell = await session.create_cell(request("await tools.block({})"))
        await delegate.wait_calls(1)
        assert await asyncio.to_thread(server.stop) == 0
        await eventually(lambda: not session.is_alive, HANG)
        assert delegate.cancelled == ["tool-1"]
        with pytest.raises(SessionLost):
            await session.wait(cell, 1)
    finally:
        await session.shutdown()


async def test_connect_to_nothing() -> None:
    with pytest.raises(OSError):
        await RemoteSession.connect("ws://127.0.0.1:9/", RecordingDelegate())


# ---------------------------------------------------------------------------- a scripted server


class Scripted:
    """A RemoteSession whose server is the test, speaking raw JSON-RPC over an in-memory pipe."""

    def __init__(self, session: RemoteSession, server: RawClient) -> None:
        self.session = session
        self.server = server

    async def expect(self, method: str) -> dict[str, Any]:
        return await self.server.server_message(method)

    async def answer(self, method: str, result: Any) -> dict[str, Any]:
        message = await self.expect(method)
        await self.server.respond(message["id"], result)
        return message


@pytest.fixture
async def scripted(delegate: RecordingDelegate) -> AsyncIterator[Scripted]:
    client_side, server_side = memory_pair("scripted")
    server = RawClient(server_side)
    session = client_module.RemoteSession(
        delegate, None, "scripted", _token=client_module._CONSTRUCT
    )
    start = asyncio.ensure_future(session._start(client_side))
    init = await server.server_message("initialize")
    assert init["params"]["protocolVersion"] == 1
    await server.respond(
        init["id"],
        {
            "protocolVersion": 1,
            "serverInfo": {"name": "scripted", "version": "0"},
            "capabilities": {
                "cellKinds": ["continuing", "pausable"],
                "engines": ["v8"],
                "observationReplay": True,
                "limits": {"maxToolCalls": 5},
            },
        },
    )
    opened = await server.server_message("session/open")
    await server.respond(opened["id"], {"sessionId": "S"})
    await asyncio.wait_for(start, HANG)
    assert session.limits.max_tool_calls == 5
    try:
        yield Scripted(session, server)
    finally:
        already = session._shutdown_began
        shutdown = asyncio.ensure_future(session.shutdown())
        if not already:
            try:
                message = await server.server_message("session/shutdown", 2)
                await server.respond(message["id"], {})
            except TimeoutError:
                pass  # the test shut the session down itself
        await server.close()  # end of input for the client: nothing more is answered
        await asyncio.wait_for(shutdown, HANG)


async def create_cell(s: Scripted, cell_id: str = "C") -> Any:
    task = asyncio.ensure_future(s.session.create_cell(request("text(1)")))
    message = await s.answer("cell/create", {"cellId": cell_id})
    assert message["params"]["kind"] == "continuing"
    return await task


async def test_a_cancelled_wait_keeps_an_event_that_arrives_anyway(scripted: Scripted) -> None:
    s = scripted
    cell = await create_cell(s)
    waiter = asyncio.ensure_future(s.session.wait(cell, 60))
    first = await s.expect("cell/wait")
    assert first["params"] == {
        "sessionId": "S",
        "cellId": "C",
        "yieldAfterMs": 60000,
        "observation": 0,
    }
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    cancel = await s.expect("$/cancelRequest")
    assert cancel["params"] == {"id": first["id"]}
    # The server had finished first: its event arrives after the cancel.
    await s.server.respond(
        first["id"], {"type": "yielded", "items": [{"type": "text", "text": "a"}]}
    )
    await asyncio.sleep(0.05)
    # The next observation returns it without a new request.
    assert await s.session.wait(cell, 1) == Yielded((TextItem("a"),))
    assert s.server.server_messages.empty()
    # Then observation 1, and a terminal event is released.
    nxt = asyncio.ensure_future(s.session.wait(cell, 0.5))
    second = await s.expect("cell/wait")
    assert second["params"]["observation"] == 1 and second["params"]["yieldAfterMs"] == 500
    await s.server.respond(
        second["id"],
        {"type": "completed", "items": [{"type": "text", "text": "b"}], "errorText": None},
    )
    assert await nxt == Completed((TextItem("b"),))
    release = await s.answer("observation/release", {})
    assert release["params"] == {"sessionId": "S", "cellId": "C", "observation": 1}
    with pytest.raises(MissingCell):
        s.session.cell("C")


async def test_a_cancelled_wait_answered_minus_32800_starts_a_new_observation(
    scripted: Scripted,
) -> None:
    s = scripted
    cell = await create_cell(s)
    waiter = asyncio.ensure_future(s.session.wait(cell, 60))
    first = await s.expect("cell/wait")
    waiter.cancel()
    await s.expect("$/cancelRequest")
    again = asyncio.ensure_future(s.session.wait(cell, 60))  # waits for the cancelled one
    await asyncio.sleep(0.05)
    assert s.server.server_messages.empty() and not again.done()
    await s.server.send(
        {
            "jsonrpc": "2.0",
            "id": first["id"],
            "error": {"code": -32800, "message": "request cancelled"},
        }
    )
    second = await s.expect("cell/wait")
    assert second["params"]["observation"] == 1
    await s.server.respond(second["id"], {"type": "terminated", "items": []})
    assert await again == Terminated(())
    await s.expect("observation/release")


async def test_server_errors_are_rebuilt_or_protocol_errors(scripted: Scripted) -> None:
    s = scripted
    cases: list[tuple[dict[str, Any], type[Exception]]] = [
        (
            {
                "code": -32000,
                "message": "exec cell C0 not found",
                "data": {"kind": "MissingCell", "cellId": "C0"},
            },
            MissingCell,
        ),
        ({"code": -32000, "message": "odd", "data": {"kind": "NoSuchError"}}, ProtocolError),
        ({"code": -32000, "message": "no data"}, ProtocolError),
        ({"code": -32603, "message": "internal error: boom"}, ProtocolError),
    ]
    for index, (error, expected) in enumerate(cases):
        cell = await create_cell(s, f"C{index}")
        task = asyncio.ensure_future(s.session.terminate(cell))
        message = await s.expect("cell/terminate")
        await s.server.send({"jsonrpc": "2.0", "id": message["id"], "error": error})
        with pytest.raises(expected) as raised:
            await task
        assert str(raised.value) == error["message"]
        if expected is ProtocolError:
            assert isinstance(raised.value, ProtocolError)
            assert raised.value.code == error["code"]
        else:
            assert isinstance(raised.value, MissingCell) and raised.value.cell_id == "C0"
            with pytest.raises(MissingCell):
                s.session.cell("C0")  # the client forgot the cell


async def test_malformed_results_raise_protocol_error(scripted: Scripted) -> None:
    s = scripted
    cell = await create_cell(s)
    task = asyncio.ensure_future(s.session.wait(cell, 1))
    message = await s.expect("cell/wait")
    await s.server.respond(message["id"], {"type": "yielded", "items": [{"type": "video"}]})
    with pytest.raises(ProtocolError) as info:
        await task
    assert "malformed cell/wait result" in str(info.value)
    task2 = asyncio.ensure_future(s.session.create_cell(request("text(1)")))
    message = await s.expect("cell/create")
    await s.server.respond(message["id"], {"cell": "x"})
    with pytest.raises(ProtocolError):
        await task2


async def test_requests_from_the_server(scripted: Scripted, delegate: RecordingDelegate) -> None:
    s = scripted
    await create_cell(s)
    server = s.server
    params = {
        "sessionId": "S",
        "cellId": "C",
        "callId": "tool-1",
        "tool": {"name": "echo", "namespace": None, "kind": "function"},
        "input": {"x": [1]},
    }
    assert (await server.request("tool/invoke", params))["result"] == {"output": {"x": [1]}}
    assert delegate.calls[0].tool.description == "Returns its input."  # the create's definition
    failing = {
        **params,
        "tool": {"name": "fail", "namespace": None, "kind": "function"},
        "input": {"message": "nope"},
    }
    assert (await server.request("tool/invoke", failing))["error"] == {
        "code": -32001,
        "message": "nope",
    }
    other_session = await server.request("tool/invoke", {**params, "sessionId": "T"})
    assert other_session["error"]["data"] == {"kind": "UnknownSession", "sessionId": "T"}
    assert UnknownSession("T").fields() == {"session_id": "T"}
    assert (await server.request("cell/explode", {}))["error"]["code"] == -32601
    assert (await server.request("tool/invoke", {"sessionId": "S"}))["error"]["code"] == -32602
    note = {"sessionId": "S", "cellId": "C", "callId": "call", "text": "hi"}
    assert (await server.request("cell/notify", note))["result"] == {}
    assert delegate.notifications == [("call", "C", "hi")]
    # Garbage from the server is answered, and the session goes on.
    await server.send(b"garbage\n")
    assert (await server.orphan())["error"]["code"] == -32700
    # A cancelled call: the delegate sees the cancellation, the answer is -32800.
    block = {
        **params,
        "callId": "tool-9",
        "tool": {"name": "block", "namespace": None, "kind": "function"},
    }
    request_id = server.new_id()
    answer = server.expect(request_id)
    await server.send(
        {"jsonrpc": "2.0", "id": request_id, "method": "tool/invoke", "params": block}
    )
    await eventually(lambda: any(c.call_id == "tool-9" for c in delegate.calls))
    await server.send({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": request_id}})
    assert (await asyncio.wait_for(answer, HANG))["error"]["code"] == -32800
    assert delegate.cancelled == ["tool-9"]


async def test_an_unkeyed_create_answered_after_its_cancel_is_terminated(
    scripted: Scripted,
) -> None:
    s = scripted
    creator = asyncio.ensure_future(s.session.create_cell(request("text(1)")))
    message = await s.expect("cell/create")
    creator.cancel()
    with pytest.raises(asyncio.CancelledError):
        await creator
    assert (await s.expect("$/cancelRequest"))["params"] == {"id": message["id"]}
    await s.server.respond(message["id"], {"cellId": "LATE"})
    terminate = await s.answer("cell/terminate", {"type": "terminated", "items": []})
    assert terminate["params"] == {"sessionId": "S", "cellId": "LATE"}

    keyed = asyncio.ensure_future(s.session.create_cell(request("text(1)", idempotency_key="k")))
    message = await s.expect("cell/create")
    assert message["params"]["idempotencyKey"] == "k"
    keyed.cancel()
    await s.expect("$/cancelRequest")
    await s.server.respond(message["id"], {"cellId": "KEPT"})
    await eventually(lambda: "KEPT" in s.session._cells)
    assert s.session.cell("KEPT").cell_id == "KEPT"


async def test_after_shutdown_creates_raise_shutting_down(scripted: Scripted) -> None:
    s = scripted
    cell = await create_cell(s)
    shutdown = asyncio.ensure_future(s.session.shutdown())
    await s.answer("session/shutdown", {})
    await asyncio.wait_for(shutdown, HANG)
    assert not s.session.is_alive
    with pytest.raises(ShuttingDown):
        await s.session.create_cell(request("text(1)"))
    with pytest.raises(MissingCell):
        await s.session.wait(cell, 0)
    assert "shut down" in repr(s.session)


def test_remote_session_is_made_by_spawn_or_connect() -> None:
    with pytest.raises(TypeError):
        RemoteSession(RecordingDelegate(), None, "x", _token=object())
    assert isinstance(CreateCellRequest("x"), CreateCellRequest)


# ---------------------------------------------------------------------------- fronts and framing


def test_listen_addresses() -> None:
    from codemode.protocol.server import parse_listen

    assert parse_listen(":8080") == ("127.0.0.1", 8080)
    assert parse_listen("0.0.0.0:0") == ("0.0.0.0", 0)
    assert parse_listen("[::1]:9") == ("::1", 9)
    assert parse_listen("localhost:1") == ("localhost", 1)
    for bad in ("8080", "host:", "host:x", ":70000"):
        with pytest.raises(ValueError):
            parse_listen(bad)


async def test_code_mode_tools_over_a_remote_session(delegate: RecordingDelegate) -> None:
    from codemode import CodeModeTools, ToolDefinition

    async with await RemoteSession.spawn(delegate, limits=CellLimits(max_tool_calls=7)) as session:
        tools = CodeModeTools(
            session, [ToolDefinition("echo", "Returns its input."), ToolDefinition("block")]
        )
        result = await tools.exec("text(JSON.stringify(await tools.echo({x: 1})))", "call-1")
        assert not result.is_error and result.text.startswith("Script completed")
        assert '{"x":1}' in result.text
        again = await tools.exec("text(JSON.stringify(await tools.echo({x: 1})))", "call-1")
        assert again == result  # a retried exec starts no second cell
        assert len(delegate.calls) == 1
        running = await tools.exec(
            '// @exec: {"yield_time_ms": 10}\nawait tools.block({})', "call-2"
        )
        assert "Script running with cell ID" in running.text and running.cell_id is not None
        waited = await tools.call("wait", {"cell_id": running.cell_id, "terminate": True}, "call-3")
        assert "Script terminated" in waited.text


async def test_websocket_framing() -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    from codemode.protocol.messages import MAX_FRAME_BYTES

    server = WebSocketServer()
    try:
        ws = await connect(server.url, max_size=None, compression=None)
        try:
            await ws.send("this is not json")
            answer = await asyncio.wait_for(ws.recv(), HANG)
            assert '"code":-32700' in str(answer)
            await ws.send(
                b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":1}}'
            )
            assert '"protocolVersion":1' in str(await asyncio.wait_for(ws.recv(), HANG))
            with pytest.raises(ConnectionClosed) as closed:
                await ws.send("x" * (MAX_FRAME_BYTES + 1))
                await asyncio.wait_for(ws.recv(), HANG)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        finally:
            with contextlib.suppress(Exception):  # the aborted socket may fail to close again
                await ws.close()
        # The server goes on serving.
        async with await RemoteSession.connect(server.url, RecordingDelegate()) as session:
            cell = await session.create_cell(request('text("ok")'))
            assert await session.wait(cell, 10) == Completed((TextItem("ok"),))
    finally:
        assert await asyncio.to_thread(server.stop) == 0


async def test_a_server_that_never_answers_the_handshake(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "HANDSHAKE_TIMEOUT", 0.5)
    silent = "import sys; sys.stdin.buffer.read()"
    with pytest.raises(ProtocolError) as info:
        await RemoteSession.spawn(RecordingDelegate(), command=[sys.executable, "-c", silent])
    assert "did not complete the handshake" in str(info.value)
