"""Re-delivery over the wire (docs/protocol.md, "Re-delivery"): a ``codemode serve --store``
process SIGKILLed right after it recorded a delivery and before it wrote the answer (the fault
drill ``CODEMODE_TEST_KILL_AT_DELIVERY``); the RemoteSession reattached to a new server process
gets every item exactly once: a continuing cell's yield, its completion, a pausable frontier."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import OrderedDict
from pathlib import Path

import pytest
from protocol_support import RawError, serve_process

import codemode.protocol.client as client_module
from codemode import (
    Cell,
    Completed,
    MissingCell,
    Pending,
    RemoteSession,
    SessionBusy,
    SessionLost,
    TextItem,
    Yielded,
)
from conftest import RecordingDelegate, request

COMMAND = [sys.executable, "-m", "codemode", "serve", "--lease-seconds", "1"]
DRILL = "CODEMODE_TEST_KILL_AT_DELIVERY"
CONTINUING = 'text("one"); yield_control(); text("two");'
PAUSABLE = """
text("a");
const x = await tools.block({k: 1});
text("b" + x);
const y = await tools.block({k: 2});
text("c" + y);
"""


def texts(items: tuple[object, ...]) -> list[str]:
    return [i.text for i in items if isinstance(i, TextItem)]


async def reattach(delegate: RecordingDelegate, store: Path, session_id: str) -> RemoteSession:
    """A new server process on the same store; the killed one's lease runs out within 1 s."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return await RemoteSession.spawn(
                delegate, store=store, session_id=session_id, command=COMMAND
            )
        except SessionBusy:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)


async def _lose_the_completion(store: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Cell]:
    """A served session (store ``store``) whose server dies once the completion of its
    continuing cell is delivered (recorded), before the reply reaches the client; the cell
    yields ``one`` first."""
    monkeypatch.setenv(DRILL, "2")  # dies once the completion's delivery is recorded
    session = await RemoteSession.spawn(RecordingDelegate(), store=store, command=COMMAND)
    monkeypatch.delenv(DRILL)
    try:
        cell = await session.create_cell(request(CONTINUING))
        first = await session.wait(cell, 30)
        assert isinstance(first, Yielded) and texts(first.items) == ["one"]
        with pytest.raises(SessionLost):
            await session.wait(cell, 30)
    finally:
        await session.shutdown()
    return session.session_id, cell


async def test_a_yield_whose_answer_was_lost_is_delivered_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "sessions.db"
    monkeypatch.setenv(DRILL, "1")  # dies once the yield's delivery is recorded
    session = await RemoteSession.spawn(RecordingDelegate(), store=store, command=COMMAND)
    monkeypatch.delenv(DRILL)
    try:
        session_id = session.session_id
        cell = await session.create_cell(request(CONTINUING))
        with pytest.raises(SessionLost):
            await session.wait(cell, 30)
    finally:
        await session.shutdown()

    session = await reattach(RecordingDelegate(), store, session_id)
    try:
        cell = session.cell(cell.cell_id)
        first = await session.wait(cell, 30)
        assert isinstance(first, Yielded)
        assert texts(first.items) == ["one"]  # again: its answer never arrived
        final = await session.wait(cell, 30)
        assert isinstance(final, Completed) and final.error_text is None
        assert texts(final.items) == ["two"]
    finally:
        await session.shutdown()


async def test_a_completion_whose_answer_was_lost_is_delivered_again_then_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "sessions.db"
    session_id, cell = await _lose_the_completion(store, monkeypatch)

    session = await reattach(RecordingDelegate(), store, session_id)
    try:
        assert session.is_live(cell.cell_id)  # its closing waits for the acknowledgement
        final = await session.wait(session.cell(cell.cell_id), 30)
        assert isinstance(final, Completed) and final.error_text is None
        assert texts(final.items) == ["two"]
        await asyncio.sleep(0.5)  # the observation/release (the acknowledgement) is sent
    finally:
        await session.suspend()

    session = await reattach(RecordingDelegate(), store, session_id)
    try:
        assert not session.is_live(cell.cell_id)  # acknowledged: its closing was recorded
    finally:
        await session.shutdown()


async def test_a_frontier_whose_answer_was_lost_is_delivered_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "sessions.db"
    monkeypatch.setenv(DRILL, "2")  # dies once the second frontier's delivery is recorded
    delegate = RecordingDelegate()
    session = await RemoteSession.spawn(delegate, store=store, command=COMMAND)
    monkeypatch.delenv(DRILL)
    try:
        session_id = session.session_id
        cell = await session.create_pausable_cell(request(PAUSABLE))
        event = await session.wait_to_pending(cell)
        assert isinstance(event, Pending) and event.frontier.generation == 1
        assert texts(event.frontier.items) == ["a"]
        await delegate.wait_calls(1)
        delegate.release("tool-1", 1)
        await session.resume(cell, 1)
        with pytest.raises(SessionLost):
            await session.wait_to_pending(cell)
    finally:
        await session.shutdown()

    delegate = RecordingDelegate()
    session = await reattach(delegate, store, session_id)
    try:
        cell = session.pausable_cell(cell.cell_id)
        event = await session.wait_to_pending(cell)
        assert isinstance(event, Pending) and event.frontier.generation == 2
        assert texts(event.frontier.items) == ["b1"]  # again: its answer never arrived
        await delegate.wait_calls(1)
        assert delegate.calls[0].call_id == "tool-2"  # tool-1 is never issued again
        delegate.release("tool-2", 2)
        await session.resume(cell, 2)
        final = await session.wait_to_pending(cell)
        assert isinstance(final, Completed) and final.error_text is None
        assert texts(final.items) == ["c2"]
    finally:
        await session.shutdown()


async def test_a_completion_received_but_not_released_is_not_live_again_on_reattach(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "sessions.db"
    session = await RemoteSession.spawn(RecordingDelegate(), store=store, command=COMMAND)
    try:
        session_id = session.session_id
        cell = await session.create_cell(request(CONTINUING))
        with monkeypatch.context() as patch:
            patch.setattr(RemoteSession, "_release", lambda self, cell_id, generation: None)
            await session.wait(cell, 30)
            final = await session.wait(cell, 30)  # its release is never sent
        assert isinstance(final, Completed) and texts(final.items) == ["two"]
        assert session.server_pid is not None
        os.kill(session.server_pid, signal.SIGKILL)
        await asyncio.sleep(0.2)
    finally:
        await session.shutdown()

    session = await reattach(RecordingDelegate(), store, session_id)
    try:
        # The server lists the cell (its completion was never acknowledged); this process
        # received that completion, so the cell is not live again here (and is released).
        assert not session.is_live(cell.cell_id)
        with pytest.raises(MissingCell):
            session.cell(cell.cell_id)
    finally:
        await session.shutdown()


async def test_a_reattach_from_a_new_process_has_no_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The limit (docs/protocol.md): without this process's numbers (cleared here, as in a new
    process), a completion lost with the server is not given again, and its cell is closed."""
    store = tmp_path / "sessions.db"
    session_id, cell = await _lose_the_completion(store, monkeypatch)

    monkeypatch.setattr(client_module, "_deliveries", OrderedDict())
    session = await reattach(RecordingDelegate(), store, session_id)
    try:
        assert not session.is_live(cell.cell_id)
    finally:
        await session.shutdown()


@pytest.mark.parametrize("announced", [False, True])
async def test_a_held_completion_is_listed_only_to_a_client_that_numbers_deliveries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, announced: bool
) -> None:
    """docs/protocol.md: a closed cell whose completion awaits its release is listed
    (``completed: true``) only to a client that announced ``redelivery``. An older client (one
    that does not number, as the Node example client) sees no such cell, and observing it
    answers ``MissingCell`` as for any closed cell."""
    store = tmp_path / "sessions.db"
    session_id, cell = await _lose_the_completion(store, monkeypatch)

    async with serve_process("--store", str(store), "--lease-seconds", "1") as server:
        client = server.client
        capabilities = {"notify": True, "redelivery": True} if announced else {"notify": True}
        await client.call("initialize", {"protocolVersion": 1, "capabilities": capabilities})
        deadline = time.monotonic() + 60
        while True:
            try:
                opened = await client.call("session/open", {"sessionId": session_id})
                break
            except RawError as exc:  # the killed server's lease runs out within 1 s
                assert (exc.data or {}).get("kind") == "SessionBusy"
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
        if announced:
            assert [(c["cellId"], c.get("completed")) for c in opened["cells"]] == [
                (cell.cell_id, True)
            ]
            return
        assert opened["cells"] == []
        with pytest.raises(RawError) as missing:
            await client.call(
                "cell/wait",
                {
                    "sessionId": session_id,
                    "cellId": cell.cell_id,
                    "yieldAfterMs": 1000,
                    "observation": 0,
                },
            )
        assert (missing.value.data or {}).get("kind") == "MissingCell"
