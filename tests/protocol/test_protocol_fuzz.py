"""Fuzz: random frames thrown at one server connection (issue 6, "a fuzz test").

One in-process :class:`ProtocolServer` gets, on one initialized connection with an open session,
lists of random frames: random JSON values, requests and notifications of random or real methods
with random or plausible params (the real session and cell ids mixed in), responses to random
ids, cancels, garbage bytes and truncated lines. After every example a sentinel request must be
answered (the connection still serves). At the end the fuzzed connection is closed: its sessions
must have no live cell left, and a fresh connection still answers ``initialize`` then
``session/open`` and runs a cell.

Bounded: at most :data:`EXAMPLES` examples and :data:`BUDGET` seconds of fuzzing, but at least
:data:`MIN_EXAMPLES` examples however slow the machine.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protocol_support import InProcessServer, RawClient, json_values, values_for

from codemode import CellLimits
from codemode.protocol.messages import METHOD_LIST

EXAMPLES = 1200
# Seconds of fuzzing, after which the rest of the examples are skipped; but never fewer than
# MIN_EXAMPLES examples: on a loaded machine the same fuzzing takes longer, and the hang guard
# (the timeout mark) allows for that.
BUDGET = 30.0
MIN_EXAMPLES = 40

SOURCES = [
    "text(1)",
    'text("a"); yield_control(); text("b")',
    "await tools.block({})",
    "await Promise.all([tools.block({}), tools.block({})]); text('x')",
    "notify('n'); await tools.block({})",
    "await new Promise(() => {})",
    "throw new Error('boom')",
    "syntax error (",
    "store('k', 1); text(String(load('k')))",
]
METHOD_NAMES = [m.name for m in METHOD_LIST] + ["initialize", "nope", "cell/", "", "$/x"]


class State:
    """Ids the fuzzer may reuse: the real session and the cells it created."""

    session_id = ""
    cell_ids: ClassVar[list[str]] = []


# Placeholders resolved when a frame is sent (hypothesis strategies must not read changing
# state): the real session id, and the n-th recently created cell.
SESSION = "@@session@@"


def cell_ref(n: int) -> str:
    return f"@@cell{n}@@"


def resolve(frame: bytes) -> bytes:
    frame = frame.replace(SESSION.encode(), State.session_id.encode())
    cells = State.cell_ids or ["none"]
    return re.sub(rb"@@cell(\d+)@@", lambda m: cells[int(m.group(1)) % len(cells)].encode(), frame)


def substitute(value: Any, draw: Any) -> Any:
    """Point some ids at the real session and cells, so requests reach the runtime."""
    if isinstance(value, dict):
        value = dict(value)
        if "sessionId" in value and draw(st.booleans()):
            value["sessionId"] = SESSION
        if "cellId" in value and draw(st.booleans()):
            value["cellId"] = cell_ref(draw(st.integers(0, 15)))
        if "source" in value and draw(st.booleans()):
            value["source"] = draw(st.sampled_from(SOURCES))
            value["tools"] = [{"name": "block"}]
    return value


@st.composite
def valid_params(draw: Any) -> tuple[str, dict[str, Any]]:
    """A well-formed request of the session and cell methods, on the real ids."""
    methods = ["cell/create", "cell/wait", "cell/waitToPending", "cell/resume", "cell/terminate"]
    method = draw(
        st.sampled_from(methods * 4 + ["observation/release", "session/open", "session/shutdown"])
    )
    sid = SESSION
    cell = cell_ref(draw(st.integers(0, 15)))
    observation = draw(st.integers(0, 6))
    if method == "cell/create":
        params: dict[str, Any] = {
            "sessionId": sid,
            "kind": draw(st.sampled_from(["continuing", "pausable"])),
            "source": draw(st.sampled_from(SOURCES)),
            "tools": [{"name": "block"}],
        }
        key = draw(st.sampled_from([None, "k1", "k2"]))
        if key is not None:
            params["idempotencyKey"] = key
    elif method == "cell/wait":
        params = {
            "sessionId": sid,
            "cellId": cell,
            "yieldAfterMs": draw(st.sampled_from([0, 5, 50])),
            "observation": observation,
        }
    elif method in ("cell/waitToPending", "observation/release"):
        params = {"sessionId": sid, "cellId": cell, "observation": observation}
    elif method == "cell/resume":
        params = {"sessionId": sid, "cellId": cell, "generation": draw(st.integers(0, 4))}
    elif method == "cell/terminate":
        params = {"sessionId": sid, "cellId": cell}
    elif method == "session/open":
        params = draw(st.sampled_from([{}, {"limits": {"maxToolCalls": 3}}]))
    else:
        params = {"sessionId": sid}
    return method, params


@st.composite
def frames(draw: Any) -> bytes:
    kind = draw(st.integers(0, 11))
    if kind >= 10:  # a well-formed request that reaches the runtime
        method, params = draw(valid_params())
        request_id = draw(st.integers(1, 10_000) | st.text(max_size=4))
        return json.dumps(
            {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        ).encode()
    if kind <= 3:  # a request or notification of a real method, plausible params
        method = draw(st.sampled_from(METHOD_LIST))
        params = substitute(draw(values_for(method.params)), draw)
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method.name, "params": params}
        if draw(st.integers(0, 4)):
            message["id"] = draw(st.integers(1, 50) | st.text(max_size=4))
        return json.dumps(message).encode()
    if kind == 4:  # a random method name with random params
        message = {
            "jsonrpc": draw(st.sampled_from(["2.0", "1.0", 2])),
            "method": draw(st.sampled_from(METHOD_NAMES) | st.text(max_size=10)),
            "params": draw(json_values()),
            "id": draw(json_values(2)),
        }
        return json.dumps(message).encode()
    if kind == 5:  # a response to one of the server's ids or a random one
        reply: dict[str, Any] = {
            "jsonrpc": "2.0",
            "id": draw(st.sampled_from([f"s-{i}" for i in range(1, 40)]) | json_values(2)),
        }
        if draw(st.booleans()):
            reply["result"] = draw(json_values())
        else:
            reply["error"] = draw(json_values())
        return json.dumps(reply).encode()
    if kind == 6:
        return json.dumps(draw(json_values())).encode()
    if kind == 7:  # garbage bytes (may contain newlines: several broken lines)
        return bytes(draw(st.binary(max_size=300)))
    if kind == 8:  # a truncated line
        text = json.dumps(
            {"jsonrpc": "2.0", "id": 1, "method": "cell/create", "params": draw(json_values())}
        )
        return text[: draw(st.integers(0, max(len(text) - 1, 0)))].encode()
    return json.dumps(
        {
            "jsonrpc": "2.0",
            "method": "$/cancelRequest",
            "params": {"id": draw(st.integers(1, 60) | json_values(1))},
        }
    ).encode()


@pytest.mark.timeout(600)
def test_random_frames_do_not_break_the_server() -> None:
    loop = asyncio.new_event_loop()
    server = InProcessServer(CellLimits(max_live_cells=64, max_cpu_seconds=2.0))
    started = time.monotonic()
    counter = {"sentinel": 0, "examples": 0, "seen": 0, "reopened": 0}

    async def setup() -> RawClient:
        client, _ = server.connect()
        await client.initialize()
        State.session_id = await client.open_session()
        for source in SOURCES[:4]:
            created = await client.call(
                "cell/create",
                {
                    "sessionId": State.session_id,
                    "kind": "continuing",
                    "source": source,
                    "tools": [{"name": "block"}],
                },
            )
            State.cell_ids.append(created["cellId"])
        return client

    client = loop.run_until_complete(setup())

    async def answer_some_server_requests() -> None:
        while not client.server_messages.empty():
            message = client.server_messages.get_nowait()
            if message.get("method") == "tool/invoke" and message["id"] != "s-3":
                await client.respond(message["id"], {"output": {"ok": True}})

    async def refresh_ids() -> None:
        """Track the cells the fuzzer created; reopen the session if the fuzzer shut it down."""
        for message in client.all[counter["seen"] :]:
            result = message.get("result")
            if isinstance(result, dict) and isinstance(result.get("cellId"), str):
                State.cell_ids = [*State.cell_ids[-15:], result["cellId"]]
        counter["seen"] = len(client.all)
        probe = await client.request(
            "cell/create",
            {
                "sessionId": State.session_id,
                "kind": "continuing",
                "source": "",
                "idempotencyKey": "probe",
            },
        )
        if "result" not in probe:  # the fuzzer shut the session down (or filled it)
            State.session_id = await client.open_session()
            counter["reopened"] += 1

    async def throw(batch: list[bytes]) -> None:
        for frame in batch:
            await client.send(resolve(frame) + b"\n")
        counter["sentinel"] += 1
        sentinel = f"sentinel-{counter['sentinel']}"
        response = await client.request("fuzz/sentinel", {}, request_id=sentinel, bound=30)
        assert response["error"]["code"] == -32601, response
        await answer_some_server_requests()
        while not client.orphans.empty():
            client.orphans.get_nowait()
        await refresh_ids()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(batch=st.lists(frames(), min_size=1, max_size=12))
    def fuzz(batch: list[bytes]) -> None:
        if time.monotonic() - started > BUDGET and counter["examples"] >= MIN_EXAMPLES:
            return
        counter["examples"] += 1
        loop.run_until_complete(throw(batch))

    async def finish() -> None:
        await client.transport.close()  # the fuzzed connection ends
        await asyncio.wait_for(server.tasks[0], 30)
        stats = server.server.stats()
        assert stats["connections"] == 0
        assert stats["liveCellsOfEndedSessions"] == 0
        fresh, _ = server.connect()
        result = await fresh.initialize()
        assert result["protocolVersion"] == 1
        sid = await fresh.open_session()
        created = await fresh.call(
            "cell/create", {"sessionId": sid, "kind": "continuing", "source": "text('still here')"}
        )
        event = await fresh.call(
            "cell/wait",
            {
                "sessionId": sid,
                "cellId": created["cellId"],
                "yieldAfterMs": 10000,
                "observation": 0,
            },
        )
        assert event["items"] == [{"type": "text", "text": "still here"}]
        await server.close()
        assert server.server.stats()["liveCellsOfEndedSessions"] == 0

    try:
        fuzz()
        loop.run_until_complete(finish())
    finally:
        State.cell_ids = []
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    assert counter["examples"] >= MIN_EXAMPLES
