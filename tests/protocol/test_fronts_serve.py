"""Durable sessions over the protocol (docs/protocol.md "Durable sessions", docs/durability.md
"Fronts"): ``codemode serve --store`` with reattach by ``sessionId``, suspension when a
connection ends, ``SessionBusy`` for a held session, and a server killed with SIGKILL whose
session a new server process carries on."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from protocol_support import HANG, RawClient, RawError, ServeProcess

from codemode import CellLimits, SqliteStore
from codemode.protocol.codec import limits_to_wire
from codemode.protocol.server import ProtocolServer
from codemode.protocol.transport import memory_pair

LEASE = "2"  # seconds: a killed server's sessions are busy until its lease runs out

# A pausable program: frontier 1 waits on tool-1, frontier 2 on tool-2 and tool-3 in parallel.
PROGRAM = """
text("start");
const a = await tools.lookup({k: "a"});
text("a=" + a);
const [b, c] = await Promise.all([tools.lookup({k: "b"}), tools.lookup({k: "c"})]);
text("bc=" + b + c);
text("done");
"""
TOOLS = [{"name": "lookup", "kind": "function"}]
ANSWERS = {"a": "A", "b": "B", "c": "C"}
UNINTERRUPTED = ["start", "a=A", "bc=BC", "done"]


DEFAULT_LIMITS = limits_to_wire(CellLimits())
LOOKUP_WIRE = {
    "name": "lookup",
    "description": "",
    "kind": "function",
    "namespace": None,
    "inputSchema": None,
    "outputSchema": None,
}


def cells(opened: dict[str, Any]) -> list[tuple[str, str]]:
    """The ids and kinds of a reattached session's cells (each created with ``TOOLS``)."""
    assert all(c["tools"] == [LOOKUP_WIRE] for c in opened["cells"]), opened
    return [(c["cellId"], c["kind"]) for c in opened["cells"]]


def texts(event: dict[str, Any]) -> list[str]:
    return [item["text"] for item in event["items"] if item["type"] == "text"]


async def reattach(client: RawClient, session_id: str, bound: float = HANG) -> dict[str, Any]:
    """``session/open`` of ``session_id``, retried while it is busy (a killed server's lease has
    not run out yet); every refusal must be SessionBusy's."""
    deadline = time.monotonic() + bound
    while True:
        try:
            result: dict[str, Any] = await client.call("session/open", {"sessionId": session_id})
            return result
        except RawError as exc:
            assert exc.code == -32000, exc.message
            assert exc.data == {"kind": "SessionBusy", "sessionId": session_id}
            assert exc.message == f"code mode session {session_id} is open elsewhere"
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def answer_invokes(client: RawClient, n: int, cell_id: str) -> list[str]:
    """Answer the next ``n`` tool/invoke requests of ``cell_id``; returns their call ids."""
    ids = []
    for _ in range(n):
        message = await client.server_message("tool/invoke")
        params = message["params"]
        assert params["cellId"] == cell_id
        ids.append(params["callId"])
        await client.respond(message["id"], {"output": ANSWERS[params["input"]["k"]]})
    return sorted(ids)


async def wait_to_pending(
    client: RawClient, session_id: str, cell_id: str, observation: int
) -> dict[str, Any]:
    event: dict[str, Any] = await client.call(
        "cell/waitToPending",
        {"sessionId": session_id, "cellId": cell_id, "observation": observation},
    )
    return event


async def test_kill_9_the_server_then_a_new_one_carries_the_session_on(tmp_path: Path) -> None:
    args = ("--store", str(tmp_path / "sessions.db"), "--lease-seconds", LEASE)
    first = await ServeProcess.start(*args)
    try:
        client = first.client
        await client.initialize()
        opened = await client.call("session/open", {})
        session_id = opened["sessionId"]
        assert opened == {
            "sessionId": session_id,
            "durable": True,
            "limits": DEFAULT_LIMITS,
            "cells": [],
        }
        assert len(session_id) == 16
        created = await client.call(
            "cell/create",
            {
                "sessionId": session_id,
                "kind": "pausable",
                "source": PROGRAM,
                "tools": TOOLS,
                "toolCallId": "call_1",
            },
        )
        cell_id = created["cellId"]
        event = await wait_to_pending(client, session_id, cell_id, 0)
        assert (event["type"], event["generation"]) == ("pending", 1)
        assert event["pendingToolCallIds"] == ["tool-1"]
        seen = texts(event)
        invoke = await client.server_message("tool/invoke")
        assert invoke["params"]["callId"] == "tool-1"
        # The client has its frontier; before it answers, the server dies.
        first.process.kill()
        assert await first.wait_exit() < 0
    finally:
        await first.stop()

    second = await ServeProcess.start(*args)
    try:
        client = second.client
        await client.initialize()
        opened = await reattach(client, session_id)
        assert opened == {
            "sessionId": session_id,
            "durable": True,
            "limits": DEFAULT_LIMITS,
            "cells": [{"cellId": cell_id, "kind": "pausable", "tools": [LOOKUP_WIRE]}],
        }
        # The call issued but never answered is issued again, with the same ids.
        invoke = await client.server_message("tool/invoke")
        assert invoke["params"]["sessionId"] == session_id
        assert invoke["params"]["cellId"] == cell_id
        assert invoke["params"]["callId"] == "tool-1"
        assert invoke["params"]["input"] == {"k": "a"}
        await client.respond(invoke["id"], {"output": "A"})
        # The same frontier: same generation, items and pending ids (a frontier is observed
        # alike on every call).
        event = await wait_to_pending(client, session_id, cell_id, 0)
        assert (event["type"], event["generation"]) == ("pending", 1)
        assert event["pendingToolCallIds"] == ["tool-1"]
        assert texts(event) == seen == ["start"]
        resumed = await client.call(
            "cell/resume", {"sessionId": session_id, "cellId": cell_id, "generation": 1}
        )
        assert resumed == {"outcome": "resumed"}
        event = await wait_to_pending(client, session_id, cell_id, 1)
        assert (event["type"], event["generation"]) == ("pending", 2)
        seen += texts(event)
        assert await answer_invokes(client, 2, cell_id) == ["tool-2", "tool-3"]
        await client.call(
            "cell/resume", {"sessionId": session_id, "cellId": cell_id, "generation": 2}
        )
        event = await wait_to_pending(client, session_id, cell_id, 2)
        assert event["type"] == "completed" and event["errorText"] is None
        seen += texts(event)
        assert seen == UNINTERRUPTED
        await client.call("session/shutdown", {"sessionId": session_id})
        await second.close_stdin()
        assert await second.wait_exit() == 0
    finally:
        await second.stop()


async def test_a_stopped_server_suspends_its_sessions_and_releases_them(tmp_path: Path) -> None:
    # SIGTERM (a deploy) suspends: the session is not ended, and its lease is released at once,
    # so a new server reattaches without waiting for it to run out.
    args = ("--store", str(tmp_path / "sessions.db"), "--lease-seconds", "60", "--engine", "v8")
    first = await ServeProcess.start(*args)
    try:
        client = first.client
        await client.initialize()
        session_id = (await client.call("session/open", {}))["sessionId"]
        source = 'text("one"); text("got " + await tools.lookup({k: "a"}));'
        cell_id = (
            await client.call(
                "cell/create",
                {"sessionId": session_id, "kind": "continuing", "source": source, "tools": TOOLS},
            )
        )["cellId"]
        await client.server_message("tool/invoke")
        first.process.send_signal(signal.SIGTERM)
        assert await first.wait_exit() == 0
    finally:
        await first.stop()
    second = await ServeProcess.start(*args)
    try:
        client = second.client
        await client.initialize()
        opened = await client.call("session/open", {"sessionId": session_id})
        assert cells(opened) == [(cell_id, "continuing")]
        assert await answer_invokes(client, 1, cell_id) == ["tool-1"]
        event = await client.call(
            "cell/wait",
            {"sessionId": session_id, "cellId": cell_id, "yieldAfterMs": 10000, "observation": 0},
        )
        assert (event["type"], texts(event)) == ("completed", ["one", "got A"])
    finally:
        await second.stop()


# ---------------------------------------------------------------------------- one process


@contextlib.asynccontextmanager
async def durable_server(tmp_path: Path) -> AsyncIterator[Any]:
    """A ProtocolServer with a SQLite store in this process; yields ``connect()``, which opens
    one in-memory connection and returns an initialized :class:`RawClient`."""
    store = SqliteStore(tmp_path / "sessions.db", lease_seconds=5.0)
    server = ProtocolServer(store=store)
    tasks: list[asyncio.Task[str]] = []
    clients: list[RawClient] = []

    async def connect() -> RawClient:
        client_side, server_side = memory_pair()
        tasks.append(asyncio.ensure_future(server.serve_connection(server_side)))
        client = RawClient(client_side)
        clients.append(client)
        await client.initialize()
        return client

    try:
        yield connect
    finally:
        for client in clients:
            await client.close()
        await asyncio.wait_for(server.close(), HANG)
        for task in tasks:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, HANG)
        await store.close()


async def test_reattach_from_a_second_connection_once_the_first_is_gone(tmp_path: Path) -> None:
    async with durable_server(tmp_path) as connect:
        first = await connect()
        session_id = (await first.call("session/open", {}))["sessionId"]
        cell_id = (
            await first.call(
                "cell/create",
                {
                    "sessionId": session_id,
                    "kind": "continuing",
                    "source": 'text("one"); text("got " + await tools.lookup({k: "a"}));',
                    "tools": TOOLS,
                },
            )
        )["cellId"]
        invoke = await first.server_message("tool/invoke")
        assert invoke["params"]["callId"] == "tool-1"

        second = await connect()
        # Held by a live connection: busy, from another connection and from its own.
        for client in (second, first):
            with pytest.raises(RawError) as info:
                await client.call("session/open", {"sessionId": session_id})
            assert info.value.code == -32000
            assert info.value.message == f"code mode session {session_id} is open elsewhere"
            assert info.value.data == {"kind": "SessionBusy", "sessionId": session_id}

        await first.close()  # the connection ends without an answer: suspended, not shut down
        opened = await second.call("session/open", {"sessionId": session_id})
        assert cells(opened) == [(cell_id, "continuing")]
        invoke = await second.server_message("tool/invoke")
        assert (invoke["params"]["cellId"], invoke["params"]["callId"]) == (cell_id, "tool-1")
        await second.respond(invoke["id"], {"output": "A"})
        event = await second.call(
            "cell/wait",
            {"sessionId": session_id, "cellId": cell_id, "yieldAfterMs": 10000, "observation": 0},
        )
        # Nothing was delivered on the first connection: all of it comes now, once.
        assert event == {
            "type": "completed",
            "items": [{"type": "text", "text": "one"}, {"type": "text", "text": "got A"}],
            "errorText": None,
        }

        # session/shutdown ends the session: a later open finds no cells.
        await second.call("session/shutdown", {"sessionId": session_id})
        third = await connect()
        opened = await third.call("session/open", {"sessionId": session_id})
        assert opened == {
            "sessionId": session_id,
            "durable": True,
            "limits": DEFAULT_LIMITS,
            "cells": [],
        }


async def test_a_reattach_while_the_old_connection_ends_waits_for_its_suspension(
    tmp_path: Path,
) -> None:
    async with durable_server(tmp_path) as connect:
        first = await connect()
        session_id = (await first.call("session/open", {}))["sessionId"]
        cell_id = (
            await first.call(
                "cell/create",
                {
                    "sessionId": session_id,
                    "kind": "pausable",
                    "source": PROGRAM,
                    "tools": TOOLS,
                },
            )
        )["cellId"]
        await first.server_message("tool/invoke")
        second = await connect()
        await first.transport.close()  # the server has not seen the end yet
        opened = await second.call("session/open", {"sessionId": session_id})
        assert cells(opened) == [(cell_id, "pausable")]
        assert await answer_invokes(second, 1, cell_id) == ["tool-1"]
        event = await wait_to_pending(second, session_id, cell_id, 0)
        assert (event["generation"], texts(event)) == (1, ["start"])


async def test_a_reattached_session_keeps_the_limits_it_was_created_with(tmp_path: Path) -> None:
    async with durable_server(tmp_path) as connect:
        first = await connect()
        opened = await first.call("session/open", {"limits": {"maxToolCalls": 5}})
        assert opened["limits"]["maxToolCalls"] == 5
        await first.close()
        second = await connect()
        again = await second.call(
            "session/open", {"sessionId": opened["sessionId"], "limits": {"maxToolCalls": 9}}
        )
        assert again["limits"] == opened["limits"]


async def test_a_session_given_by_id_that_the_store_lacks_is_created(tmp_path: Path) -> None:
    async with durable_server(tmp_path) as connect:
        client = await connect()
        first = await client.call("session/open", {})
        opened = await client.call("session/open", {"sessionId": "k3v9q0m2x7d1r8tz"})
        assert opened == {
            "sessionId": "k3v9q0m2x7d1r8tz",
            "durable": True,
            "limits": DEFAULT_LIMITS,
            "cells": [],
        }
        assert first["sessionId"] != opened["sessionId"]


async def test_session_id_without_a_store_is_an_unknown_session() -> None:
    server = ProtocolServer()
    client_side, server_side = memory_pair()
    task = asyncio.ensure_future(server.serve_connection(server_side))
    client = RawClient(client_side)
    try:
        await client.initialize()
        with pytest.raises(RawError) as info:
            await client.call("session/open", {"sessionId": "k3v9q0m2x7d1r8tz"})
        assert info.value.code == -32000
        assert info.value.message == "code mode session k3v9q0m2x7d1r8tz not found"
        assert info.value.data == {"kind": "UnknownSession", "sessionId": "k3v9q0m2x7d1r8tz"}
        opened = await client.call("session/open", {})
        assert set(opened) == {"sessionId"}  # the wire of a server without a store is unchanged
        for bad in (7, "", "a b", "x" * 129):
            with pytest.raises(RawError) as info:
                await client.call("session/open", {"sessionId": bad})
            assert info.value.code == -32602, bad
    finally:
        await client.close()
        await asyncio.wait_for(server.close(), HANG)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, HANG)
