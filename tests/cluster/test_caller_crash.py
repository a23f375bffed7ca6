"""A caller process that dies leaves its sessions on their hosts; a new process reopens them and
becomes their caller: the unanswered nested call is asked again, of the new delegate, and the
cell's whole output reaches the new observer (docs/cluster.md)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from codemode import Completed, NestedToolCall, SqliteStore

from .conftest import LEASE

HANG = 120.0
CHILD = Path(__file__).resolve().parent / "cluster_child.py"


class Recorder:
    def __init__(self) -> None:
        self.calls: list[NestedToolCall] = []

    async def invoke_tool(self, call: NestedToolCall) -> Any:
        self.calls.append(call)
        return call.input

    async def notify(self, call_id: str, cell_id: str, text: str) -> None:
        pass


async def test_caller_killed_then_session_reopened_from_a_new_process(
    make_cluster: Any, ray_cluster: Any, tmp_path: Path
) -> None:
    path = tmp_path / "crash.db"
    cluster = await make_cluster(store=SqliteStore(path, lease_seconds=LEASE))
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        ray_cluster.address,
        str(path),
        str(LEASE),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), HANG)
        opened = json.loads(line)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        await child.wait()
    recorder = Recorder()
    session = await cluster.session(recorder, session_id=opened["session_id"])
    try:
        cell = session.cell(opened["cell_id"])
        event = await asyncio.wait_for(session.wait(cell, HANG), HANG)
        assert event == Completed(event.items)
        assert [i.text for i in event.items] == ["before 1", "after 2"]  # type: ignore[union-attr]
        # Only the call left unanswered by the dead caller was asked again, with its ids.
        assert [(c.tool.name, c.call_id, c.input) for c in recorder.calls] == [
            ("block", "tool-2", {"step": 2})
        ]
        assert recorder.calls[0].cell_id == opened["cell_id"]
    finally:
        await session.shutdown()
