"""``codemode serve --cluster``: ``session/open`` with a ``sessionId`` reopens a cluster session,
after the client's connection dropped (the server suspended the session) and after the server
process was SIGKILLed and started again against the same cluster and store (the session still
runs on its host; the new server takes it over). Output delivered before is not delivered
again; the rest arrives; an unanswered nested call is asked again of the new client
(docs/cluster.md, docs/protocol.md)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from codemode import (
    Completed,
    CreateCellRequest,
    NestedToolCall,
    Pending,
    RemoteSession,
    ResumeOutcome,
    SessionBusy,
    SessionLost,
    SqliteStore,
    TextItem,
    ToolDefinition,
    Yielded,
)

pytest.importorskip("ray")

pytestmark = [pytest.mark.fault, pytest.mark.timeout(300)]

HANG = 120.0
GATE = ToolDefinition("gate", "Answers when the test lets it.")
ECHO = ToolDefinition("echo", "Answers its input.")

CONTINUING = "text('a'); yield_control(); const v = await tools.gate({k: 1}); text('got ' + v.k);"
PAUSABLE = "text('p0'); const r = await tools.echo({n: 5}); text('p' + r.n);"


class Gate:
    """``gate`` waits until :meth:`open`; ``echo`` answers its input. Calls are recorded."""

    def __init__(self) -> None:
        self.calls: list[NestedToolCall] = []
        self.opened = asyncio.Event()
        self.arrived = asyncio.Event()

    async def invoke_tool(self, call: NestedToolCall) -> Any:
        self.calls.append(call)
        if call.tool.name == "gate":
            self.arrived.set()
            await self.opened.wait()
            return {"k": call.input["k"] + 1}
        return call.input

    async def notify(self, call_id: str, cell_id: str, text: str) -> None:
        pass


def texts(items: Any) -> list[str]:
    return [i.text for i in items if isinstance(i, TextItem)]


def serve_args(address: str, store: Path) -> list[str]:
    # A short lease: a suspended session is reopened at once anyway; this bounds the wait
    # should a host be found dead.
    return ["--cluster", address, "--store", str(store), "--hosts", "2", "--lease-seconds", "2"]


class ListeningServer:
    """``codemode serve --cluster ... --listen 127.0.0.1:0`` as a child; its URL from stderr."""

    def __init__(self, args: list[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "codemode", "serve", *args, "--listen", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.url = ""
        self.stderr: list[str] = []
        ready = threading.Event()

        def drain() -> None:
            assert self.process.stderr is not None
            for raw in self.process.stderr:
                line = raw.decode(errors="replace")
                self.stderr.append(line)
                match = re.search(r"listening on (ws://\S+)", line)
                if match:
                    self.url = match.group(1)
                    ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        if not ready.wait(HANG) or not self.url:
            self.stop()
            raise RuntimeError(f"serve --cluster did not start: {''.join(self.stderr)}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def start_cells(session: RemoteSession, delegate: Gate) -> tuple[Any, Any]:
    """A continuing cell whose first event is delivered and whose ``gate`` call is running,
    and a pausable cell at its first frontier (delivered)."""
    cell = await session.create_cell(CreateCellRequest(CONTINUING, (GATE,), idempotency_key="c1"))
    first = await asyncio.wait_for(session.wait(cell, 30.0), HANG)
    assert isinstance(first, Yielded) and texts(first.items) == ["a"]
    await asyncio.wait_for(delegate.arrived.wait(), HANG)
    paused = await session.create_pausable_cell(CreateCellRequest(PAUSABLE, (ECHO,)))
    frontier = await asyncio.wait_for(session.wait_to_pending(paused), HANG)
    assert isinstance(frontier, Pending) and texts(frontier.frontier.items) == ["p0"]
    return cell, paused


async def finish_cells(
    session: RemoteSession, delegate: Gate, cell_id: str, paused_id: str
) -> None:
    """The reopened session's cells go on from where the first client left them."""
    assert session.is_durable is True
    assert session.is_live(cell_id) and session.is_live(paused_id)
    cell, paused = session.cell(cell_id), session.pausable_cell(paused_id)
    # The call left unanswered is asked again of the new client, with the same ids. So may be
    # the paused cell's `echo`, answered by the first client: its answer may not have been
    # recorded when that client's connection (or server) went away (docs/cluster.md).
    await asyncio.wait_for(delegate.arrived.wait(), HANG)
    gate_call, echo_call = (cell_id, "tool-1", {"k": 1}), (paused_id, "tool-1", {"n": 5})
    asked = [(c.cell_id, c.call_id, c.input) for c in delegate.calls]
    assert asked.count(gate_call) == 1 and asked.count(echo_call) <= 1
    assert all(call in (gate_call, echo_call) for call in asked), asked
    delegate.opened.set()
    done = await asyncio.wait_for(session.wait(cell, 30.0), HANG)
    assert isinstance(done, Completed) and done.error_text is None
    assert texts(done.items) == ["got 2"]  # "a" was delivered before: not again
    again = await asyncio.wait_for(session.wait_to_pending(paused), HANG)
    assert isinstance(again, Pending) and again.frontier.generation == 1
    assert await session.resume(paused, 1) is ResumeOutcome.RESUMED
    end = await asyncio.wait_for(session.wait_to_pending(paused), HANG)
    assert isinstance(end, Completed) and texts(end.items) == ["p5"]


async def test_a_client_reattaches_after_its_connection_dropped(
    ray_cluster: Any, tmp_path: Path
) -> None:
    server = ListeningServer(serve_args(ray_cluster.address, tmp_path / "sessions.db"))
    try:
        first = Gate()
        session = await RemoteSession.connect(server.url, first)
        assert session.is_durable is True
        session_id = session.session_id
        cell, paused = await start_cells(session, first)
        # While its connection lives, the session is that connection's.
        with pytest.raises(SessionBusy):
            await RemoteSession.connect(server.url, Gate(), session_id=session_id)
        # The connection drops (no session/shutdown, no clean close): the server suspends
        # the session on the cluster, its cells stay in the store.
        endpoint = session._endpoint
        assert endpoint is not None
        endpoint._transport._ws.transport.abort()  # type: ignore[attr-defined]
        with pytest.raises(SessionLost):
            await asyncio.wait_for(session.wait(cell, 30.0), HANG)
        await session.shutdown()  # only closes this client: its connection is gone

        second = Gate()
        session = await RemoteSession.connect(server.url, second, session_id=session_id)
        try:
            assert session.session_id == session_id
            await finish_cells(session, second, cell.cell_id, paused.cell_id)
        finally:
            await session.shutdown()
    finally:
        server.stop()


async def test_a_client_reattaches_through_a_server_restarted_after_sigkill(
    ray_cluster: Any, tmp_path: Path
) -> None:
    command = [sys.executable, "-m", "codemode", "serve"]
    command += serve_args(ray_cluster.address, tmp_path / "sessions.db")
    first = Gate()
    session = await RemoteSession.spawn(first, command=command)
    try:
        session_id = session.session_id
        cell, paused = await start_cells(session, first)
        assert session.server_pid is not None
        os.kill(session.server_pid, signal.SIGKILL)
        with pytest.raises(SessionLost):
            await asyncio.wait_for(session.wait(cell, 30.0), HANG)
    finally:
        await session.shutdown()

    second = Gate()
    session = await RemoteSession.spawn(second, command=command, session_id=session_id)
    try:
        assert session.session_id == session_id
        await finish_cells(session, second, cell.cell_id, paused.cell_id)
    finally:
        await session.shutdown()


# ---------------------------------------------------------------------------- re-delivery
# The hop between the client and `serve --cluster` (docs/protocol.md, "Re-delivery"): the serve
# process is SIGKILLed by its fault drill right after it received an event whose delivery the
# host recorded, before it answered the client; the same client, reattached through a new
# serve process, gets that event again, and every item exactly once.

DRILL = "CODEMODE_TEST_KILL_AT_DELIVERY"
TWICE = "text('one'); yield_control(); text('two');"
STEPS = "text('a'); const x = await tools.echo({n: 1}); text('b' + x.n);" + (
    "const y = await tools.echo({n: 2}); text('c' + y.n);"
)


def serve_command(address: str, store: Path) -> list[str]:
    return [sys.executable, "-m", "codemode", "serve", *serve_args(address, store)]


async def killed_at_delivery(
    monkeypatch: pytest.MonkeyPatch, command: list[str], delegate: Gate, deliveries: int
) -> RemoteSession:
    """A client of a serve process that kills itself at its ``deliveries``-th numbered
    delivery."""
    monkeypatch.setenv(DRILL, str(deliveries))
    try:
        return await RemoteSession.spawn(delegate, command=command)
    finally:
        monkeypatch.delenv(DRILL)


async def test_serve_cluster_gives_a_yield_lost_with_the_server_again(
    ray_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    command = serve_command(ray_cluster.address, tmp_path / "sessions.db")
    session = await killed_at_delivery(monkeypatch, command, Gate(), 1)
    try:
        session_id = session.session_id
        cell = await session.create_cell(CreateCellRequest(TWICE))
        with pytest.raises(SessionLost):
            await asyncio.wait_for(session.wait(cell, 30.0), HANG)
    finally:
        await session.shutdown()

    session = await RemoteSession.spawn(Gate(), command=command, session_id=session_id)
    try:
        first = await asyncio.wait_for(session.wait(session.cell(cell.cell_id), 30.0), HANG)
        assert isinstance(first, Yielded) and texts(first.items) == ["one"]  # again
        final = await asyncio.wait_for(session.wait(session.cell(cell.cell_id), 30.0), HANG)
        assert isinstance(final, Completed) and final.error_text is None
        assert texts(final.items) == ["two"]
    finally:
        await session.shutdown()


async def test_serve_cluster_gives_a_completion_lost_with_the_server_again(
    ray_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sessions.db"
    command = serve_command(ray_cluster.address, path)
    session = await killed_at_delivery(monkeypatch, command, Gate(), 2)
    try:
        session_id = session.session_id
        cell = await session.create_cell(CreateCellRequest(TWICE))
        first = await asyncio.wait_for(session.wait(cell, 30.0), HANG)
        assert isinstance(first, Yielded) and texts(first.items) == ["one"]
        with pytest.raises(SessionLost):
            await asyncio.wait_for(session.wait(cell, 30.0), HANG)
    finally:
        await session.shutdown()

    store = SqliteStore(path)
    try:
        session = await RemoteSession.spawn(Gate(), command=command, session_id=session_id)
        try:
            assert session.is_live(cell.cell_id)  # closed, its completion not acknowledged
            record = await store.get_cell(session_id, cell.cell_id)
            assert record is not None and record.state == "open"  # its closing is held
            final = await asyncio.wait_for(session.wait(session.cell(cell.cell_id), 30.0), HANG)
            assert isinstance(final, Completed) and final.error_text is None
            assert texts(final.items) == ["two"]  # again, once
            # The client's observation/release reaches the host: the closing is recorded.
            deadline = asyncio.get_running_loop().time() + HANG
            while True:
                record = await store.get_cell(session_id, cell.cell_id)
                assert record is not None
                if record.state == "closed":
                    break
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError("the acknowledged completion's closing was not recorded")
                await asyncio.sleep(0.1)
        finally:
            await session.shutdown()
    finally:
        await store.close()


async def test_serve_cluster_gives_a_frontier_lost_with_the_server_again(
    ray_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    command = serve_command(ray_cluster.address, tmp_path / "sessions.db")
    first = Gate()
    session = await killed_at_delivery(monkeypatch, command, first, 2)
    try:
        session_id = session.session_id
        cell = await session.create_pausable_cell(CreateCellRequest(STEPS, (ECHO,)))
        event = await asyncio.wait_for(session.wait_to_pending(cell), HANG)
        assert isinstance(event, Pending) and event.frontier.generation == 1
        assert texts(event.frontier.items) == ["a"]
        assert await session.resume(cell, 1) is ResumeOutcome.RESUMED
        with pytest.raises(SessionLost):
            await asyncio.wait_for(session.wait_to_pending(cell), HANG)
    finally:
        await session.shutdown()

    second = Gate()
    session = await RemoteSession.spawn(second, command=command, session_id=session_id)
    try:
        paused = session.pausable_cell(cell.cell_id)
        event = await asyncio.wait_for(session.wait_to_pending(paused), HANG)
        assert isinstance(event, Pending) and event.frontier.generation == 2
        assert texts(event.frontier.items) == ["b1"]  # again: its answer never arrived
        assert await session.resume(paused, 2) is ResumeOutcome.RESUMED
        final = await asyncio.wait_for(session.wait_to_pending(paused), HANG)
        assert isinstance(final, Completed) and final.error_text is None
        assert texts(final.items) == ["c2"]
        # tool-1 was answered before: never asked again (tool-2 may be asked of both clients:
        # the first one's call died with its serve process, docs/cluster.md).
        assert [c.call_id for c in first.calls][:1] == ["tool-1"]
        assert [c.call_id for c in second.calls] in ([], ["tool-2"])
    finally:
        await session.shutdown()
