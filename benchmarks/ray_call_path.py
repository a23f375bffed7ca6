"""The cost of a nested call on a cluster session (docs/cluster.md): the delegate return path.

Starts a two-node Ray cluster on this machine (loopback, one CPU slot per node), a
SessionCluster of two hosts on a SQLite store, and times cells of N sequential nested calls and
of N calls in one ``Promise.all``, on an in-process ``SessionRuntime`` and on a
``ClusterSession`` (cells on a host actor, tool calls back in this process). Prints a table and
writes benchmarks/results/ray_call_path.json. Run: .venv/bin/python benchmarks/ray_call_path.py
[--calls N] [--runs N]. Figures are medians; the machine's noise is about 20 %.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "cluster"))

import ray_support  # Ray's environment for a loopback cluster, before Ray is imported

from codemode import (
    Completed,
    CreateCellRequest,
    Session,
    SessionRuntime,
    SqliteStore,
    ToolDefinition,
    tools_delegate,
)
from codemode.cluster import SessionCluster

ECHO = ToolDefinition("echo")


async def echo(value: Any) -> Any:
    return value


async def timed(session: Session, source: str) -> float:
    start = time.perf_counter()
    cell = await session.create_cell(CreateCellRequest(source, (ECHO,)))
    event = await session.wait(cell, 300)
    elapsed = time.perf_counter() - start
    assert isinstance(event, Completed) and event.error_text is None, event
    return elapsed


async def measure(session: Session, calls: int, runs: int) -> dict[str, float]:
    sequential = f"for (let i = 0; i < {calls}; i++) await tools.echo({{i}}); text('ok')"
    parallel = (
        f"await Promise.all(Array.from({{length: {calls}}}, (_, i) => tools.echo({{i}})));"
        " text('ok')"
    )
    await timed(session, sequential)  # warm-up
    seq = statistics.median([await timed(session, sequential) for _ in range(runs)])
    par = statistics.median([await timed(session, parallel) for _ in range(runs)])
    return {
        "sequential_ms_per_call": seq / calls * 1000,
        "sequential_calls_per_s": calls / seq,
        "parallel_calls_per_s": calls / par,
    }


async def main(calls: int, runs: int) -> dict[str, Any]:
    shared = ray_support.acquire()
    try:
        async with SessionRuntime(tools_delegate({"echo": echo})) as local:
            in_process = await measure(local, calls, runs)
        path = os.path.join(tempfile.mkdtemp(), "bench.db")
        cluster = await SessionCluster.start(
            store=SqliteStore(path), hosts=2, address=shared.address
        )
        try:
            async with await cluster.session(tools_delegate({"echo": echo})) as session:
                on_cluster = await measure(session, calls, runs)
        finally:
            await cluster.close()
    finally:
        ray_support.release()
    overhead = on_cluster["sequential_ms_per_call"] - in_process["sequential_ms_per_call"]
    print(f"{'':28}{'in-process':>14}{'cluster':>14}")
    for key in in_process:
        print(f"{key:28}{in_process[key]:14.2f}{on_cluster[key]:14.2f}")
    print(f"per-call overhead of the return path: {overhead:.2f} ms")
    return {
        "calls": calls,
        "runs": runs,
        "in_process": in_process,
        "cluster": on_cluster,
        "overhead_ms_per_call": overhead,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    figures = asyncio.run(main(args.calls, args.runs))
    out = Path(__file__).resolve().parent / "results" / "ray_call_path.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
