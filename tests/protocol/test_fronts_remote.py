"""``RemoteSession`` on durable sessions (docs/durability.md "Fronts"): ``spawn(store=,
session_id=)``, ``connect(session_id=)``, ``suspend()`` and ``SessionBusy`` on reattach."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from protocol_support import WebSocketServer

from codemode import (
    CellLimits,
    Completed,
    Pending,
    RemoteSession,
    SessionBusy,
    SessionLost,
    TextItem,
    UnknownSession,
)
from conftest import BLOCK, RecordingDelegate, request

PROGRAM = """
text("start");
const v = await tools.block({k: 1});
text("got " + JSON.stringify(v));
"""


def texts(items: tuple[object, ...]) -> list[str]:
    return [i.text for i in items if isinstance(i, TextItem)]


async def test_spawn_with_a_store_suspend_and_reattach_in_a_new_server(tmp_path: Path) -> None:
    store = tmp_path / "sessions.db"
    first_delegate = RecordingDelegate()
    limits = CellLimits(max_tool_calls=50)
    session = await RemoteSession.spawn(first_delegate, store=store, limits=limits)
    try:
        assert session.is_durable is True
        assert await session.open() is session
        session_id = session.session_id
        assert len(session_id) == 16
        cell = await session.create_pausable_cell(request(PROGRAM))
        event = await session.wait_to_pending(cell)
        assert isinstance(event, Pending)
        assert event.frontier.generation == 1
        assert event.frontier.pending_tool_call_ids == ("tool-1",)
        assert texts(event.frontier.items) == ["start"]
        await first_delegate.wait_calls(1)
    finally:
        await session.suspend()  # the server exits; the session stays in the store
    assert session.is_alive is False

    delegate = RecordingDelegate()
    session = await RemoteSession.spawn(delegate, store=store, session_id=session_id)
    try:
        assert (session.session_id, session.is_durable) == (session_id, True)
        assert session.limits == limits  # the session's own, kept across the reattach
        assert session.is_live(cell.cell_id)
        cell = session.pausable_cell(cell.cell_id)
        await delegate.wait_calls(1)  # the unanswered call, issued again with the same ids
        call = delegate.calls[0]
        assert (call.cell_id, call.call_id) == (cell.cell_id, "tool-1")
        assert call.tool == BLOCK  # the full definition the cell was created with
        assert call.input == {"k": 1}
        delegate.release("tool-1", {"v": 2})
        event = await session.wait_to_pending(cell)
        assert isinstance(event, Pending) and event.frontier.generation == 1
        assert texts(event.frontier.items) == ["start"]  # the same frontier
        await session.resume(cell, 1)
        final = await session.wait_to_pending(cell)
        assert isinstance(final, Completed) and final.error_text is None
        assert texts(final.items) == ['got {"v":2}']
    finally:
        await session.shutdown()


async def test_a_pausable_host_loop_survives_a_server_killed_with_sigkill(tmp_path: Path) -> None:
    store = tmp_path / "sessions.db"
    command = [sys.executable, "-m", "codemode", "serve", "--lease-seconds", "1"]
    delegate = RecordingDelegate()
    session = await RemoteSession.spawn(delegate, store=store, command=command)
    try:
        session_id = session.session_id
        cell = await session.create_pausable_cell(request(PROGRAM))
        event = await session.wait_to_pending(cell)
        assert isinstance(event, Pending) and event.frontier.generation == 1
        await delegate.wait_calls(1)
        assert session.server_pid is not None
        os.kill(session.server_pid, signal.SIGKILL)  # between two requests of the loop
        with pytest.raises(SessionLost):
            await session.resume(cell, 1)
    finally:
        await session.shutdown()

    # A new server on the same file; the dead one's lease runs out within a second.
    delegate = RecordingDelegate()
    deadline = time.monotonic() + 30
    while True:
        try:
            session = await RemoteSession.spawn(
                delegate, store=store, session_id=session_id, command=command
            )
            break
        except SessionBusy:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    try:
        cell = session.pausable_cell(cell.cell_id)
        await delegate.wait_calls(1)
        assert delegate.calls[0].call_id == "tool-1"
        delegate.release("tool-1", 7)
        await session.resume(cell, 1)
        final = await session.wait_to_pending(cell)
        assert isinstance(final, Completed)
        assert texts(final.items) == ["got 7"]
    finally:
        await session.shutdown()


async def test_connect_with_a_session_id_reattaches_and_a_held_one_is_busy(
    tmp_path: Path,
) -> None:
    server = WebSocketServer("--store", str(tmp_path / "sessions.db"), "--engine", "v8")
    try:
        first_delegate = RecordingDelegate()
        session = await RemoteSession.connect(server.url, first_delegate)
        assert session.is_durable is True
        session_id = session.session_id
        cell = await session.create_cell(request(PROGRAM))
        await first_delegate.wait_calls(1)

        with pytest.raises(SessionBusy) as info:
            await RemoteSession.connect(server.url, RecordingDelegate(), session_id=session_id)
        assert str(info.value) == f"code mode session {session_id} is open elsewhere"
        assert info.value.session_id == session_id

        await session.suspend()  # the connection closes; the server suspends the session
        delegate = RecordingDelegate()
        session = await RemoteSession.connect(server.url, delegate, session_id=session_id)
        try:
            cell = session.cell(cell.cell_id)
            await delegate.wait_calls(1)
            assert (delegate.calls[0].cell_id, delegate.calls[0].call_id) == (
                cell.cell_id,
                "tool-1",
            )
            delegate.release("tool-1", "x")
            event = await session.wait(cell, 30)
            assert isinstance(event, Completed)
            assert texts(event.items) == ["start", 'got "x"']
        finally:
            await session.shutdown()
    finally:
        server.stop()


async def test_a_session_id_needs_a_server_with_a_store() -> None:
    with pytest.raises(UnknownSession) as info:
        await RemoteSession.spawn(RecordingDelegate(), session_id="k3v9q0m2x7d1r8tz")
    assert info.value.session_id == "k3v9q0m2x7d1r8tz"
    session = await RemoteSession.spawn(RecordingDelegate())
    try:
        assert session.is_durable is False
        assert session.session_id.startswith("s")
    finally:
        await session.shutdown()
