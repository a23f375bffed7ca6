"""What a reattach costs over the protocol (docs/durability.md "Fronts").

A pausable cell that has answered N nested calls is paused at a frontier on ``codemode serve
--store``; the client leaves (``RemoteSession.suspend``: the server suspends the session and
exits) and reattaches on a new server process (``RemoteSession.spawn(store=, session_id=)``),
then observes the same frontier. Prints, per N, the median time of

- ``spawn``: a new server process and a new durable session (the baseline),
- ``reattach``: a new server process reopening the session (its cell replayed from the journal)
  up to the first observation of the recovered frontier,

and writes benchmarks/results/fronts_reattach.json. Run: .venv/bin/python
benchmarks/fronts_reattach.py [--calls 0 10 100] [--repeat 5].
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from codemode import CreateCellRequest, Pending, RemoteSession, ToolDefinition, tools_delegate

ECHO = ToolDefinition("echo")
COMMAND = [sys.executable, "-m", "codemode", "serve", "--engine", "v8"]


def program(calls: int) -> str:
    return (
        f"for (let i = 0; i < {calls}; i++) await tools.echo({{i}});\n"
        "text('paused'); await tools.wait({});\ntext('done');"
    )


async def echo(value: Any) -> Any:
    return value


async def never(value: Any) -> Any:
    await asyncio.Event().wait()


async def one(calls: int, store: Path) -> tuple[float, float]:
    command = COMMAND
    delegate = tools_delegate({"echo": echo, "wait": never})
    tools = (ECHO, ToolDefinition("wait"))
    started = time.perf_counter()
    session = await RemoteSession.spawn(delegate, store=store, command=command)
    spawned = time.perf_counter() - started
    cell = await session.create_pausable_cell(CreateCellRequest(program(calls), tools))
    while True:  # resume past the frontiers of the echo calls, up to the one that waits
        event = await session.wait_to_pending(cell)
        assert isinstance(event, Pending)
        if event.frontier.items:
            break
        await session.resume(cell, event.frontier.generation)
    session_id = session.session_id
    await session.suspend()

    started = time.perf_counter()
    session = await RemoteSession.spawn(
        delegate, store=store, session_id=session_id, command=command
    )
    again = await session.wait_to_pending(session.pausable_cell(cell.cell_id))
    reattached = time.perf_counter() - started
    assert isinstance(again, Pending) and again.frontier.generation == event.frontier.generation
    await session.shutdown()
    return spawned, reattached


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, nargs="+", default=[0, 10, 100])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for calls in args.calls:
            spawns, reattaches = [], []
            for i in range(args.repeat):
                spawned, reattached = await one(calls, Path(tmp) / f"s{calls}-{i}.db")
                spawns.append(spawned)
                reattaches.append(reattached)
            row = {
                "calls": calls,
                "spawn_ms": round(statistics.median(spawns) * 1000, 1),
                "reattach_ms": round(statistics.median(reattaches) * 1000, 1),
            }
            rows.append(row)
            print(
                f"{calls:>5} recorded calls: new durable session {row['spawn_ms']:8.1f} ms, "
                f"reattach on a new server {row['reattach_ms']:8.1f} ms"
            )
    out = Path(__file__).parent / "results" / "fronts_reattach.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": platform.platform(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
