"""A caller process for the crash tests: ``python cluster_child.py ADDRESS STORE_PATH LEASE``.

It joins the Ray cluster at ADDRESS, finds the session hosts of the SQLite store at STORE_PATH,
opens a session and creates a cell whose second nested call never returns here; once that call
reached this process's delegate it prints ``{"session_id": ..., "cell_id": ...}`` on stdout and
waits to be killed.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ray_support  # noqa: F401  (Ray's environment, before Ray is imported)

from codemode import CreateCellRequest, SqliteStore, ToolDefinition, tools_delegate
from codemode.cluster import SessionCluster

SOURCE = """
const a = await tools.echo({step: 1});
text("before " + a.step);
const b = await tools.block({step: 2});
text("after " + b.step);
"""


async def main(address: str, path: str, lease: float) -> None:
    reached = asyncio.Event()

    async def echo(x: Any) -> Any:
        return x

    async def block(x: Any) -> Any:
        reached.set()
        await asyncio.Event().wait()

    cluster = await SessionCluster.start(
        store=SqliteStore(path, lease_seconds=lease), hosts=2, address=address
    )
    session = await cluster.session(tools_delegate({"echo": echo, "block": block}))
    cell = await session.create_cell(
        CreateCellRequest(SOURCE, tools=[ToolDefinition("echo"), ToolDefinition("block")])
    )
    await reached.wait()
    print(json.dumps({"session_id": session.session_id, "cell_id": cell.cell_id}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
