"""Scenarios 79, 81-84 of docs/sessions.md at the raw protocol level: ``codemode serve`` runs as a
child process and the test writes JSON-RPC lines to its stdin and reads its stdout."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from protocol_support import HANG, SERVE, RawClient, RawError, ServeProcess, serve_process

BLOCK_TOOL = {"name": "block", "kind": "function"}


async def create(
    client: RawClient, session_id: str, source: str, kind: str = "continuing", **more: Any
) -> str:
    result = await client.call(
        "cell/create",
        {
            "sessionId": session_id,
            "kind": kind,
            "source": source,
            "tools": [BLOCK_TOOL],
            "toolCallId": "call-1",
            **more,
        },
    )
    return str(result["cellId"])


def wait_params(
    session_id: str, cell_id: str, observation: int, ms: float = 10_000
) -> dict[str, Any]:
    return {
        "sessionId": session_id,
        "cellId": cell_id,
        "yieldAfterMs": ms,
        "observation": observation,
    }


async def error_of(client: RawClient, method: str, params: Any) -> RawError:
    with pytest.raises(RawError) as info:
        await client.call(method, params)
    return info.value


async def ready(*args: str) -> tuple[ServeProcess, str]:
    server = await ServeProcess.start(*args)
    await server.client.initialize()
    return server, await server.client.open_session()


# ---------------------------------------------------------------------------- 79


async def test_79_handshake() -> None:
    async with serve_process("--max-tool-calls", "7", "--max-live-cells", "9") as server:
        client = server.client
        for method in ("session/open", "cell/create", "no/such/method"):
            err = await error_of(client, method, {})
            assert err.code == -32002, err.message
        err = await error_of(client, "initialize", {"protocolVersion": 2})
        assert err.code == -32602 and err.data == {"supportedVersions": [1]}
        err = await error_of(client, "initialize", {"protocolVersion": "1"})
        assert err.code == -32602 and err.data == {"supportedVersions": [1]}
        result = await client.initialize()
        assert result["protocolVersion"] == 1
        assert result["serverInfo"]["name"] == "codemode"
        caps = result["capabilities"]
        assert caps["cellKinds"] == ["continuing", "pausable"]
        assert caps["engines"] == ["v8"]
        assert caps["observationReplay"] is True
        assert caps["limits"] == {
            "maxHeapBytes": 64 * 1024 * 1024,
            "maxToolCalls": 7,
            "maxParallelToolCalls": 100,
            "maxOutputBytes": 1024 * 1024,
            "maxCpuSeconds": 30.0,
            "maxLiveCells": 9,
            "maxIdempotencyKeys": 10_000,
            "maxStoredBytes": 16 * 1024 * 1024,
        }
        err = await error_of(client, "initialize", {"protocolVersion": 1})
        assert err.code == -32600
        # The limits of a session: at most the ceilings.
        err = await error_of(client, "session/open", {"limits": {"maxToolCalls": 8}})
        assert err.code == -32602 and "maxToolCalls" in err.message
        session_id = await client.open_session(limits={"maxToolCalls": 2})
        cell_id = await create(
            client, session_id, "for (let i = 0; i < 3; i++) await tools.block({})"
        )
        for _ in range(2):
            invoke = await client.server_message("tool/invoke")
            await client.respond(invoke["id"], {"output": None})
        event = await client.call("cell/wait", wait_params(session_id, cell_id, 0))
        assert event == {
            "type": "completed",
            "items": [],
            "errorText": "exec cell exceeded max_tool_calls (2)",
        }


async def test_the_example_of_section_10_2() -> None:
    async with serve_process() as server:
        client = server.client
        await client.initialize()
        session_id = await client.open_session()
        cell_id = await create(
            client,
            session_id,
            "text(await tools.echo({a: 1}))",
            tools=[{"name": "echo", "kind": "function"}],
            idempotencyKey="call_1",
        )
        invoke = await client.server_message("tool/invoke")
        assert invoke["id"] == "s-1"
        assert invoke["params"] == {
            "sessionId": session_id,
            "cellId": cell_id,
            "callId": "tool-1",
            "tool": {"name": "echo", "namespace": None, "kind": "function"},
            "input": {"a": 1},
        }
        await client.respond("s-1", {"output": invoke["params"]["input"]})
        event = await client.call("cell/wait", wait_params(session_id, cell_id, 0))
        assert event == {
            "type": "completed",
            "items": [{"type": "text", "text": '{"a":1}'}],
            "errorText": None,
        }
        # The retry of the create names the same cell (idempotencyKey, docs/protocol.md).
        again = await create(
            client,
            session_id,
            "text(await tools.echo({a: 1}))",
            tools=[{"name": "echo", "kind": "function"}],
            idempotencyKey="call_1",
        )
        assert again == cell_id


# ---------------------------------------------------------------------------- 81


async def test_81_observation_replay_and_its_errors() -> None:
    server, sid = await ready()
    client = server.client
    try:
        cell = await create(client, sid, 'text("a"); await tools.block({}); text("b")')
        invoke = await client.server_message("tool/invoke")

        err = await error_of(client, "cell/wait", wait_params(sid, cell, 1))
        assert err.code == -32000
        assert err.message == f"first observation for cell {cell} must use generation 0"
        assert err.data == {"kind": "ObservationConflict", "cellId": cell, "generation": 1}

        first = await client.call("cell/wait", wait_params(sid, cell, 0, 50))
        assert first == {"type": "yielded", "items": [{"type": "text", "text": "a"}]}
        # The response was "lost": the same request again replays it, output included.
        assert await client.call("cell/wait", wait_params(sid, cell, 0, 50)) == first

        err = await error_of(client, "cell/wait", wait_params(sid, cell, 0, 60))
        assert err.message == (
            f"observation generation 0 for cell {cell} was reused for a different request"
        )
        assert err.data == {"kind": "ObservationConflict", "cellId": cell, "generation": 0}
        err = await error_of(
            client, "cell/waitToPending", {"sessionId": sid, "cellId": cell, "observation": 0}
        )
        assert "was reused for a different request" in err.message
        err = await error_of(client, "cell/wait", wait_params(sid, cell, 2))
        assert err.message == f"expected observation generation 1 for cell {cell}, got 2"

        # Two requests of one pending generation share its outcome.
        a = asyncio.ensure_future(client.call("cell/wait", wait_params(sid, cell, 1)))
        b = asyncio.ensure_future(client.call("cell/wait", wait_params(sid, cell, 1)))
        await asyncio.sleep(0.1)
        assert not a.done() and not b.done()
        # A new generation while one is pending: BusyObserver, and nothing is recorded.
        err = await error_of(client, "cell/wait", wait_params(sid, cell, 2))
        assert err.data == {"kind": "BusyObserver", "cellId": cell}
        await client.respond(invoke["id"], {"output": None})
        done = {"type": "completed", "items": [{"type": "text", "text": "b"}], "errorText": None}
        assert await asyncio.wait_for(a, HANG) == done
        assert await asyncio.wait_for(b, HANG) == done
        assert await client.call("cell/wait", wait_params(sid, cell, 1)) == done  # after closing

        # An error outcome replays too; the next generation is the runtime's MissingCell.
        err = await error_of(client, "cell/wait", wait_params(sid, cell, 2))
        assert err.data == {"kind": "MissingCell", "cellId": cell}
        again = await error_of(client, "cell/wait", wait_params(sid, cell, 2))
        assert (again.message, again.data) == (err.message, err.data)
    finally:
        await server.stop()


async def test_81_pausable_observation_replay() -> None:
    server, sid = await ready()
    client = server.client
    try:
        cell = await create(client, sid, 'text("p"); await tools.block({})', kind="pausable")
        params = {"sessionId": sid, "cellId": cell, "observation": 0}
        pending = await client.call("cell/waitToPending", params)
        assert pending == {
            "type": "pending",
            "generation": 1,
            "items": [{"type": "text", "text": "p"}],
            "pendingToolCallIds": ["tool-1"],
        }
        assert await client.call("cell/waitToPending", params) == pending
        err = await error_of(client, "cell/wait", wait_params(sid, cell, 1))
        assert err.data == {
            "kind": "WrongCellKind",
            "cellId": cell,
            "expected": "continuing",
            "actual": "pausable",
        }
    finally:
        await server.stop()


# ---------------------------------------------------------------------------- 82


async def test_82_release() -> None:
    server, sid = await ready()
    client = server.client
    try:
        cell = await create(client, sid, 'text("a"); yield_control(); text("b")')

        def release(observation: int) -> Any:
            return client.call(
                "observation/release",
                {"sessionId": sid, "cellId": cell, "observation": observation},
            )

        assert await release(0) == {}  # no record: success
        assert await client.call("cell/wait", wait_params(sid, cell, 0)) == {
            "type": "yielded",
            "items": [{"type": "text", "text": "a"}],
        }
        with pytest.raises(RawError) as info:
            await release(0)
        assert info.value.message == f"observation generation 0 for cell {cell} is not terminal"
        assert info.value.data == {"kind": "ObservationConflict", "cellId": cell, "generation": 0}
        with pytest.raises(RawError) as info:
            await release(3)
        assert info.value.message == (
            f"cannot release future observation generation 3 for cell {cell}; "
            "latest generation is 0"
        )
        done = await client.call("cell/wait", wait_params(sid, cell, 1))
        assert done["type"] == "completed"
        assert await release(1) == {}
        assert await release(1) == {}  # twice
        assert await release(0) == {}  # an older generation
        with pytest.raises(RawError) as info:
            await client.call("cell/wait", wait_params(sid, cell, 1))
        assert info.value.message == f"observation generation 1 for cell {cell} was released"

        blocked = await create(client, sid, "await tools.block({})")
        pending = asyncio.ensure_future(client.call("cell/wait", wait_params(sid, blocked, 0)))
        await asyncio.sleep(0.1)
        with pytest.raises(RawError) as info:
            await client.call(
                "observation/release", {"sessionId": sid, "cellId": blocked, "observation": 0}
            )
        assert info.value.message == f"observation generation 0 for cell {blocked} is still pending"
        await client.call("cell/terminate", {"sessionId": sid, "cellId": blocked})
        assert await asyncio.wait_for(pending, HANG) == {"type": "terminated", "items": []}
    finally:
        await server.stop()


# ---------------------------------------------------------------------------- 83


async def test_83_cancel_a_pending_wait() -> None:
    server, sid = await ready()
    client = server.client
    try:
        cell = await create(client, sid, 'text("a"); await tools.block({}); text("b")')
        invoke = await client.server_message("tool/invoke")
        request_id = client.new_id()
        response = client.expect(request_id)
        await client.send(
            {
                "jsonrpc": "2.0",
                "id": request_id,
                "method": "cell/wait",
                "params": wait_params(sid, cell, 0),
            }
        )
        await asyncio.sleep(0.1)
        await client.send(
            {"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": request_id}}
        )
        answer = await asyncio.wait_for(response, HANG)
        assert answer["error"]["code"] == -32800
        # The cancelled generation's outcome is -32800; a replay says so again.
        err = await error_of(client, "cell/wait", wait_params(sid, cell, 0))
        assert err.code == -32800
        # A cancel of a finished request is ignored.
        await client.send(
            {"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": request_id}}
        )
        await client.respond(invoke["id"], {"output": None})
        event = await client.call("cell/wait", wait_params(sid, cell, 1))
        assert event == {
            "type": "completed",
            "items": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            "errorText": None,
        }
    finally:
        await server.stop()


async def test_83_cancel_a_pending_create_and_a_tool_call() -> None:
    server, sid = await ready()
    client = server.client
    try:
        # A cancelled keyed create still finishes its admission; its retry finds the cell.
        request_id = client.new_id()
        response = client.expect(request_id)
        params = {
            "sessionId": sid,
            "kind": "continuing",
            "source": "await tools.block({})",
            "tools": [BLOCK_TOOL],
            "idempotencyKey": "k",
        }
        await client.send(
            {"jsonrpc": "2.0", "id": request_id, "method": "cell/create", "params": params}
        )
        await client.send(
            {"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": request_id}}
        )
        answer = await asyncio.wait_for(response, HANG)
        retry = await client.call("cell/create", params)
        if "result" in answer:
            assert answer["result"] == retry
        else:
            assert answer["error"]["code"] == -32800
        invoke = await client.server_message("tool/invoke")
        assert invoke["params"]["cellId"] == retry["cellId"]
        # The server cancels its own tool/invoke when the runtime cancels the call.
        terminated = await client.call(
            "cell/terminate", {"sessionId": sid, "cellId": retry["cellId"]}
        )
        assert terminated == {"type": "terminated", "items": []}
        cancel = await client.server_message("$/cancelRequest")
        assert cancel["params"] == {"id": invoke["id"]}
        assert "id" not in cancel
    finally:
        await server.stop()


# ---------------------------------------------------------------------------- 84


async def test_84_closing_stdin_terminates_cells_and_exits_0() -> None:
    server = await ServeProcess.start(env={"CODEMODE_LOG_LEVEL": "DEBUG"})
    client = server.client
    try:
        await client.initialize()
        sid = await client.open_session()
        other = await client.open_session()
        await create(client, sid, "await tools.block({})")
        await create(client, other, "notify('n'); await new Promise(() => {})")
        invoke = await client.server_message("tool/invoke")
        notify = await client.server_message("cell/notify")
        await server.close_stdin()
        # The outstanding server requests are cancelled (the delegate would see cancellation).
        cancelled = set()
        async with asyncio.timeout(HANG):
            while len(cancelled) < 2:
                message = await client.server_message("$/cancelRequest")
                cancelled.add(message["params"]["id"])
        assert cancelled == {invoke["id"], notify["id"]}
        assert await server.wait_exit() == 0
        await asyncio.wait_for(client.eof.wait(), HANG)
        # stdout carried protocol lines only (every line parsed), logs went to stderr.
        assert any("DEBUG" in line for line in server.stderr)
    finally:
        await server.stop()


async def test_serve_exits_0_on_immediate_eof_and_on_sigterm() -> None:
    server = await ServeProcess.start()
    await server.close_stdin()
    assert await server.wait_exit() == 0
    await server.stop()

    server, sid = await ready()
    await create(server.client, sid, "while (true) {}")
    server.process.terminate()
    assert await server.wait_exit() == 0
    await server.stop()


async def test_serve_usage_errors() -> None:
    for args in (["--token-env", "X"], ["--listen", "nonsense"], ["--listen", ":99999"]):
        process = await asyncio.create_subprocess_exec(
            *SERVE,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), HANG)
        assert process.returncode == 2, (args, err)
        assert out == b"" and b"codemode serve:" in err


async def test_serve_with_files_for_stdin_and_stdout(tmp_path: Any) -> None:
    requests = tmp_path / "in.jsonl"
    requests.write_text(
        '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":1}}\n'
        '{"jsonrpc":"2.0","id":2,"method":"session/open"}\n'
        "not json\n"
        '{"jsonrpc":"2.0","id":3,"method":"no/such"}'  # a last line without a newline
    )
    responses = tmp_path / "out.jsonl"
    with requests.open("rb") as stdin, responses.open("wb") as stdout:
        process = await asyncio.create_subprocess_exec(
            *SERVE, stdin=stdin, stdout=stdout, stderr=asyncio.subprocess.PIPE
        )
        _, err = await asyncio.wait_for(process.communicate(), HANG)
    assert process.returncode == 0, err
    by_id = {m["id"]: m for m in map(json.loads, responses.read_text().splitlines())}
    assert by_id[1]["result"]["protocolVersion"] == 1
    assert by_id[2]["result"]["sessionId"].startswith("s")
    assert by_id[None]["error"]["code"] == -32700
    assert by_id[3]["error"]["code"] == -32601
