"""A process that dies is an implicit suspend: another process recovers its cells."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from codemode import Completed, SessionBusy, SessionRuntime, SqliteStore, TextItem
from conftest import RecordingDelegate

CHILD = Path(__file__).parent / "durable_child.py"


async def test_a_killed_process_leaves_its_cell_to_the_next_open(tmp_path: Path) -> None:
    db = tmp_path / "sessions.db"
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(CHILD), str(db), "tool-4"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert done.returncode == -9, done.stderr
    session_id, cell_id = done.stdout.split()
    delegate = RecordingDelegate()
    store = SqliteStore(db, lease_seconds=3.0)
    try:
        async with asyncio.timeout(60):
            while True:  # the dead process's lease runs out
                rt = SessionRuntime(delegate, store=store, session_id=session_id)
                try:
                    await rt.open()
                    break
                except SessionBusy:
                    await asyncio.sleep(0.2)
            event = await rt.wait(rt.cell(cell_id), 10)
        texts = [item.text for item in event.items if isinstance(item, TextItem)]
        assert isinstance(event, Completed) and event.error_text is None
        assert texts == ["got 0", "got 1", "got 2", "got 3", "got 4", "got 5", "done"]
        assert [c.call_id for c in delegate.calls] == ["tool-4", "tool-5", "tool-6"]
        await rt.shutdown()
    finally:
        await store.close()
