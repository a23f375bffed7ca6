"""What durable sessions cost: recording overhead, replay time, reopen time.

Measures, side by side in one run (docs/durability.md):

- **Recording overhead**: one cell of N sequential awaited nested calls (an instant tool), and one
  cell of 1000 calls in one ``Promise.all``, in a ``SessionRuntime`` without a store, with a
  ``SqliteStore`` (a file in a temporary directory) and with a ``PostgresStore`` (a throwaway
  PostgreSQL server on 127.0.0.1 started from the machine's binaries, as the tests do; skipped
  with a message when they are missing; also with ``synchronous_commit=off``, which shows what
  the server's WAL flush at each commit costs). The modes run interleaved, cell after cell, so
  that the machine's noise hits them alike; figures are medians. Target: under 30 % with
  SqliteStore.
- **Replay time**: a cell that made 10, 100 or 1,000 recorded sequential calls and waits on one
  more is suspended; a new runtime opens the session, and the time from ``open()`` to the
  delegate receiving the unanswered call again (which the replay issues once it has fed every
  recorded result back) is the time to recover that cell. Target: 1,000 calls in under 200 ms.
- **Reopen time**: 100 pausable cells, each paused at a frontier after two answered calls, are
  suspended; a new runtime's ``open()`` (wall clock, and the CPU time of this process, all its
  threads), and ``open()`` plus ``wait_to_pending`` of all 100 back at their frontiers.

Prints a table and writes benchmarks/results/durable.json. Run:
``.venv/bin/python benchmarks/durable.py [--runs N] [--calls N] [--no-postgres]`` (or
``./dev bench durable``). The machine is shared: expect 20-40 % noise between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from codemode import (
    CellLimits,
    Completed,
    CreateCellRequest,
    NestedToolCall,
    Pending,
    PostgresStore,
    SessionRuntime,
    SqliteStore,
    ToolDefinition,
)
from codemode.store import SessionStore

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "store"))

ECHO = ToolDefinition("echo", "Returns its input.")
BLOCK = ToolDefinition("block", "Never answers (until the benchmark is over).")
TOOLS = (ECHO, BLOCK)
LIMITS = CellLimits(max_tool_calls=5000, max_parallel_tool_calls=1000)
ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"

StoreFactory = Callable[[], SessionStore]


def new_sid() -> str:
    return "".join(ALPHABET[b % 32] for b in uuid.uuid4().bytes)[:16]


class BenchDelegate:
    """``echo`` answers at once; ``block`` parks until the runtime cancels it, and sets
    ``blocked`` when it arrives (the replay benchmark's stopwatch)."""

    def __init__(self) -> None:
        self.blocked = asyncio.Event()
        self.blocked_at = 0.0

    async def invoke_tool(self, call: NestedToolCall) -> Any:
        if call.tool.name == "block":
            self.blocked_at = time.perf_counter()
            self.blocked.set()
            await asyncio.Event().wait()
        return call.input

    async def notify(self, call_id: str, cell_id: str, text: str) -> None:
        pass


@contextlib.asynccontextmanager
async def runtime(
    make_store: StoreFactory | None, sid: str | None = None, delegate: Any = None
) -> AsyncIterator[SessionRuntime]:
    delegate = delegate or BenchDelegate()
    if make_store is None:
        rt = SessionRuntime(delegate, limits=LIMITS)
    else:
        rt = SessionRuntime(delegate, limits=LIMITS, store=make_store(), session_id=sid)
        await rt.open()
    try:
        yield rt
    finally:
        await rt.shutdown()


def sequential(n: int) -> str:
    return f"let v = 0; for (let i = 0; i < {n}; i++) v = (await tools.echo({{i, v}})).i; text(v);"


def parallel(n: int) -> str:
    return (
        f"const r = await Promise.all(Array.from({{length: {n}}}, (_, i) => tools.echo({{i}})));"
        "text(r.length);"
    )


async def timed_cell(rt: SessionRuntime, source: str) -> tuple[float, float]:
    """Wall-clock and CPU seconds (this process, all its threads) of one cell, create to end."""
    start, cpu = time.perf_counter(), time.process_time()
    cell = await rt.create_cell(CreateCellRequest(source, TOOLS))
    event = await rt.wait(cell, 120)
    elapsed, used = time.perf_counter() - start, time.process_time() - cpu
    assert isinstance(event, Completed) and event.error_text is None, event
    return elapsed, used


async def overhead(
    modes: dict[str, StoreFactory | None], runs: int, calls: int
) -> dict[str, dict[str, float]]:
    """Median ms per cell of each workload in each mode, the modes interleaved: wall clock, and
    the CPU time of this process (steadier than wall clock on a loaded machine; it leaves out
    the PostgreSQL server's own work)."""
    workloads = {
        f"{calls} sequential calls": sequential(calls),
        "1000 calls in one Promise.all": parallel(1000),
    }
    rows = [f"{w}, {k}" for w in workloads for k in ("ms per cell", "CPU ms per cell")]
    times: dict[str, dict[str, list[float]]] = {r: {m: [] for m in modes} for r in rows}
    async with contextlib.AsyncExitStack() as stack:
        rts = {
            mode: await stack.enter_async_context(runtime(make, new_sid() if make else None))
            for mode, make in modes.items()
        }
        for name, source in workloads.items():
            for rt in rts.values():  # warm-up
                for _ in range(3):
                    await timed_cell(rt, source)
            for _ in range(runs):
                for mode, rt in rts.items():
                    wall, cpu = await timed_cell(rt, source)
                    times[f"{name}, ms per cell"][mode].append(wall * 1000)
                    times[f"{name}, CPU ms per cell"][mode].append(cpu * 1000)
    return {r: {m: statistics.median(v) for m, v in by.items()} for r, by in times.items()}


async def replay(make_store: StoreFactory, calls: int, runs: int) -> dict[str, float]:
    """Median ms from ``open()`` to the unanswered call being issued again (the cell recovered),
    and of ``open()`` alone, for a cell with ``calls`` recorded sequential calls."""
    sid = new_sid()
    source = (
        f"let v = 0; for (let i = 0; i < {calls}; i++) v = (await tools.echo({{i, v}})).i;"
        "await tools.block({}); text(v);"
    )
    delegate = BenchDelegate()
    rt = SessionRuntime(delegate, limits=LIMITS, store=make_store(), session_id=sid)
    await rt.open()
    await rt.create_cell(CreateCellRequest(source, TOOLS, idempotency_key="replayed"))
    await asyncio.wait_for(delegate.blocked.wait(), 120)
    await rt.suspend()
    opens, recovers, cpus = [], [], []
    for _ in range(runs):
        delegate = BenchDelegate()
        rt = SessionRuntime(delegate, limits=LIMITS, store=make_store(), session_id=sid)
        start, cpu = time.perf_counter(), time.process_time()
        await rt.open()
        opened = time.perf_counter()
        await asyncio.wait_for(delegate.blocked.wait(), 120)
        cpus.append((time.process_time() - cpu) * 1000)
        opens.append((opened - start) * 1000)
        recovers.append((delegate.blocked_at - start) * 1000)
        await rt.suspend()
    rt = SessionRuntime(BenchDelegate(), limits=LIMITS, store=make_store(), session_id=sid)
    await rt.open()
    await rt.shutdown()
    return {
        "open": statistics.median(opens),
        "recovered": statistics.median(recovers),
        "fastest": min(recovers),
        "cpu": statistics.median(cpus),
    }


async def reopen(make_store: StoreFactory, cells: int, runs: int) -> dict[str, float]:
    """Median ms of ``open()``, and of ``open()`` plus ``wait_to_pending`` of every cell back at
    its frontier, for a session of ``cells`` paused pausable cells."""
    sid = new_sid()
    source = (
        "const a = await tools.echo({i: 1}); const b = await tools.echo({i: 2});"
        "text(a.i + b.i); await tools.block({});"
    )
    rt = SessionRuntime(BenchDelegate(), limits=LIMITS, store=make_store(), session_id=sid)
    await rt.open()
    handles = [
        await rt.create_pausable_cell(CreateCellRequest(source, TOOLS, idempotency_key=f"p{i}"))
        for i in range(cells)
    ]
    for handle in handles:  # drive each to the frontier where it waits on `block`
        while True:
            event = await rt.wait_to_pending(handle)
            assert isinstance(event, Pending), event
            if event.frontier.pending_tool_call_ids == ("tool-3",):
                break
            await rt.resume(handle, event.frontier.generation)
    ids = [h.cell_id for h in handles]
    await rt.suspend()
    opens, cpus, alls = [], [], []
    for _ in range(runs):
        await asyncio.sleep(0.5)  # the isolates of the runtime suspended before are freed
        rt = SessionRuntime(BenchDelegate(), limits=LIMITS, store=make_store(), session_id=sid)
        start, cpu = time.perf_counter(), time.process_time()
        await rt.open()
        opened, used = time.perf_counter(), time.process_time() - cpu
        events = await asyncio.gather(*(rt.wait_to_pending(rt.pausable_cell(i)) for i in ids))
        done = time.perf_counter()
        assert all(isinstance(e, Pending) for e in events), events[:3]
        opens.append((opened - start) * 1000)
        cpus.append(used * 1000)
        alls.append((done - start) * 1000)
        await rt.suspend()
    rt = SessionRuntime(BenchDelegate(), limits=LIMITS, store=make_store(), session_id=sid)
    await rt.open()
    await rt.shutdown()
    return {
        "open": statistics.median(opens),
        "open, CPU of this process": statistics.median(cpus),
        "all at their frontier": statistics.median(alls),
    }


async def print_overhead(
    modes: dict[str, StoreFactory | None], args: argparse.Namespace, results: dict[str, Any]
) -> None:
    figures = await overhead(modes, args.runs, args.calls)
    print(f"Recording overhead (median of {args.runs} cells per mode, modes interleaved)")
    header = "".join(f"{m:>24}" for m in modes)
    print(f"{'workload':<46}{header}")
    for workload, by_mode in figures.items():
        base = by_mode["no store"]
        cells = "".join(
            f"{by_mode[m]:>15.1f} ({by_mode[m] / base - 1:+6.0%})"
            if m != "no store"
            else f"{by_mode[m]:>24.1f}"
            for m in modes
        )
        print(f"{workload:<46}{cells}")
    results["overhead_ms"] = figures


async def print_replay(stores: dict[str, StoreFactory], results: dict[str, Any]) -> None:
    print(
        "\nReplay: open() to the cell recovered (the unanswered call issued again), ms: median"
        " of 5 (fastest; CPU of this process)"
    )
    print(f"{'recorded sequential calls':<46}" + "".join(f"{s:>24}" for s in stores))
    results["replay_ms"] = {}
    for calls in (10, 100, 1000):
        row = {name: await replay(make, calls, 5) for name, make in stores.items()}
        results["replay_ms"][calls] = row
        cells = "".join(
            f"{r['recovered']:>8.1f} ({r['fastest']:>5.1f}; {r['cpu']:>5.1f})" for r in row.values()
        )
        print(f"{calls:<46}{cells}")


async def print_reopen(stores: dict[str, StoreFactory], results: dict[str, Any]) -> None:
    print("\nReopen a session of 100 paused pausable cells, ms (median of 5)")
    row = {name: await reopen(make, 100, 5) for name, make in stores.items()}
    results["reopen_ms"] = row
    print(f"{'':<46}" + "".join(f"{s:>24}" for s in stores))
    for what in row[next(iter(row))]:
        print(f"{what:<46}" + "".join(f"{r[what]:>24.1f}" for r in row.values()))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="measured cells per mode")
    parser.add_argument("--calls", type=int, default=300, help="sequential calls per cell")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument(
        "--parts", default="overhead,replay,reopen", help="which figures (comma-separated)"
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        db = tmp / "sessions.db"
        stores: dict[str, StoreFactory] = {
            "SqliteStore": lambda: SqliteStore(db, lease_seconds=30.0)
        }
        if not args.no_postgres:
            from pgserver import PostgresServer, find_bindir

            if find_bindir() is None:
                print("PostgreSQL binaries missing (apt-get install postgresql): skipping it")
            else:
                server = PostgresServer(fsync=True).start()
                stack.callback(server.stop)
                dsn = server.dsn()
                stores["PostgresStore"] = lambda: PostgresStore(dsn, lease_seconds=30.0)
                # The same without waiting for the WAL flush at each commit: where the time goes.
                lazy = server.dsn(synchronous_commit="off")
                stores["Postgres, async commit"] = lambda: PostgresStore(lazy, lease_seconds=30.0)
        modes: dict[str, StoreFactory | None] = {"no store": None, **stores}
        results: dict[str, Any] = {}

        if "overhead" in parts:
            await print_overhead(modes, args, results)
        if "replay" in parts:
            await print_replay(stores, results)
        if "reopen" in parts:
            await print_reopen(stores, results)

    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "durable.json").write_text(
        json.dumps({"machine": platform.platform(), **vars(args), "results": results}, indent=2)
    )


if __name__ == "__main__":
    asyncio.run(main())
