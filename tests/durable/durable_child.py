"""A child process of the durable tests: runs a durable session on a SQLite file and kills
itself (SIGKILL) inside the delegate's call ``tool-{N}``, leaving its cell to be recovered."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

from codemode import CreateCellRequest, NestedToolCall, SessionRuntime, SqliteStore, ToolDefinition

SOURCE = """
for (let i = 0; i < 6; i++) {
  const r = await tools.step({ i });
  text(`got ${r.i}`);
}
text("done");
"""


class Delegate:
    def __init__(self, die_at: str) -> None:
        self.die_at = die_at

    async def invoke_tool(self, call: NestedToolCall) -> Any:
        if call.call_id == self.die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return call.input

    async def notify(self, call_id: str, cell_id: str, text: str) -> None:
        pass


async def main(path: str, die_at: str) -> None:
    rt = SessionRuntime(Delegate(die_at), store=SqliteStore(path, lease_seconds=3.0))
    await rt.open()
    cell = await rt.create_cell(CreateCellRequest(SOURCE, (ToolDefinition("step"),)))
    print(rt.session_id, cell.cell_id, flush=True)
    await rt.wait(cell, 30)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
