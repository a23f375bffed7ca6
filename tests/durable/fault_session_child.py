"""A child process of test_store_faults_session.py: ``fault_session_child.py BACKEND LOCATION
MODE SESSION_ID ARGS...`` (BACKEND ``sqlite`` or ``postgres``, LOCATION its path or DSN).

- ``open OWNER GOFILE STOPFILE``: builds a durable ``SessionRuntime`` for SESSION_ID, prints
  ``ready``, waits until GOFILE exists, then opens the session and prints ``won`` (then creates
  the cell keyed OWNER, which waits on a call that never answers, prints its id, waits until
  STOPFILE exists and suspends) or ``busy`` (``SessionBusy``: then exits).
- ``torn LOG``: opens SESSION_ID (lease 2 s), creates the cell ``TORN_SOURCE`` keyed ``torn``,
  prints ``ready`` and lets it run without observing it. Its delegate answers ``big``
  with ~1 KB results (so each engine step writes a batch of a few hundred KB) and appends each
  invocation to LOG. The parent kills it at a random instant.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from codemode import (
    CreateCellRequest,
    NestedToolCall,
    PostgresStore,
    SessionBusy,
    SessionRuntime,
    SqliteStore,
    ToolDefinition,
)

BIG = ToolDefinition("big", "Returns a number and a kilobyte of padding.")
NEVER = ToolDefinition("never", "Never answers.")
ROUNDS = 6
WIDTH = 160
TORN_SOURCE = f"""
let total = 0;
for (let r = 0; r < {ROUNDS}; r++) {{
  const rs = await Promise.all(Array.from({{length: {WIDTH}}}, (_, i) => tools.big({{r, i}})));
  total += rs.reduce((a, x) => a + x.n, 0);
  text(`round ${{r}} ${{total}}`);
}}
"""


def torn_expected() -> list[str]:
    total, out = 0, []
    for r in range(ROUNDS):
        total += sum((r * 1000 + i) % 97 for i in range(WIDTH))
        out.append(f"round {r} {total}")
    return out


def token(cell_id: str, call_id: str) -> str:
    return f"ans/{cell_id}/{call_id}/"


class BigDelegate:
    """Answers ``big`` at once with a token-bearing ~1 KB value; ``never`` never answers. Each
    invocation is appended to ``log`` (a path, one line per call) when given, else to ``calls``."""

    def __init__(self, log: str | None = None) -> None:
        self.fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if log else None
        self.calls: list[tuple[str, str]] = []

    async def invoke_tool(self, call: NestedToolCall) -> Any:
        if self.fd is not None:
            os.write(self.fd, (json.dumps([call.cell_id, call.call_id]) + "\n").encode())
        self.calls.append((call.cell_id, call.call_id))
        if call.tool.name == "never":
            await asyncio.Event().wait()
        n = (call.input["r"] * 1000 + call.input["i"]) % 97
        await asyncio.sleep(0.002 * (n % 5))  # the results of a round arrive in a few groups
        return {"n": n, "pad": "x" * 1000, "token": token(call.cell_id, call.call_id)}

    async def notify(self, call_id: str, cell_id: str, text: str) -> None:
        pass


def make_store(backend: str, location: str, lease_seconds: float) -> SqliteStore | PostgresStore:
    if backend == "sqlite":
        return SqliteStore(location, lease_seconds=lease_seconds)
    return PostgresStore(location, lease_seconds=lease_seconds)


async def until_exists(path: str) -> None:
    await asyncio.to_thread(_poll, path)


def _poll(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(0.002)


async def opener(backend: str, location: str, sid: str, owner: str, go: str, stop: str) -> None:
    rt = SessionRuntime(BigDelegate(), store=make_store(backend, location, 30.0), session_id=sid)
    print("ready", flush=True)
    await until_exists(go)
    try:
        await rt.open()
    except SessionBusy:
        print("busy", flush=True)
        return
    print("won", flush=True)
    cell = await rt.create_cell(
        CreateCellRequest("await tools.never({}); text('never');", (NEVER,), idempotency_key=owner)
    )
    print(cell.cell_id, flush=True)
    await until_exists(stop)
    await rt.suspend()


async def torn(backend: str, location: str, sid: str, log: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        # A lease of 2 s, so the parent can take over soon after the kill; a loaded machine may
        # stall this loop long enough to lose it before the cell is created: then again.
        rt = SessionRuntime(
            BigDelegate(log), store=make_store(backend, location, 2.0), session_id=sid
        )
        try:
            await rt.open()
            cell = await rt.create_cell(
                CreateCellRequest(TORN_SOURCE, (BIG,), idempotency_key="torn")
            )
            break
        except SessionBusy:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
    print("ready", cell.cell_id, flush=True)
    await asyncio.Event().wait()  # never observes the cell; the parent kills this process


def main() -> None:
    backend, location, mode, sid, *args = sys.argv[1:]
    if mode == "open":
        asyncio.run(opener(backend, location, sid, *args))
    elif mode == "torn":
        asyncio.run(torn(backend, location, sid, args[0]))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
