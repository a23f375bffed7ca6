"""Benchmark: round-trip overhead of a nested tool call over stdio versus in-process (docs/protocol.md).

One continuing cell on real V8 runs ``for (;;) await tools.echo({i})``: each nested call goes
from the JavaScript to the host's delegate and its answer back before the next call starts. The
delegate records ``time.perf_counter()`` at every call; the time between two consecutive calls is
one full round trip of a nested call. It runs

- ``in-process``: ``SessionRuntime`` in this process, the delegate called directly;
- ``stdio``: ``RemoteSession.spawn`` (a child ``python -m codemode serve``); every call is a
  ``tool/invoke`` request over the child's stdout and an answer over its stdin.

Usage::

    .venv/bin/python benchmarks/protocol_roundtrip.py [--calls 2000] [--warmup 100]

It prints a table (sequential calls per second; median, p90, p99, mean, min, max per call in
milliseconds; the stdio overhead over in-process) and writes the figures to
``benchmarks/results/protocol_roundtrip.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from latency import latency_ms

from codemode import (
    CellLimits,
    CreateCellRequest,
    NestedToolCall,
    RemoteSession,
    SessionRuntime,
    ToolDefinition,
)

RESULTS = Path(__file__).resolve().parent / "results" / "protocol_roundtrip.json"
ECHO = ToolDefinition("echo", "Returns its input.")
SOURCE = "for (let i = 0; ; i++) { await tools.echo({i}); }"


class TimingDelegate:
    """Answers every call at once and records when each arrived."""

    def __init__(self, calls: int) -> None:
        self.stamps: list[float] = []
        self.calls = calls
        self.done = asyncio.Event()

    async def invoke_tool(self, call: NestedToolCall) -> Any:
        self.stamps.append(time.perf_counter())
        if len(self.stamps) >= self.calls:
            self.done.set()
        return call.input

    async def notify(self, call_id: str, cell_id: str, text: str) -> None:
        return None


@dataclass(frozen=True)
class Summary:
    calls: int
    calls_per_second: float
    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float


def summarize(stamps: list[float]) -> Summary:
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return Summary(
        calls=len(gaps),
        calls_per_second=len(gaps) / (stamps[-1] - stamps[0]),
        **latency_ms(gaps),
    )


async def measure(mode: str, calls: int, warmup: int) -> Summary:
    total = calls + warmup + 1
    delegate = TimingDelegate(total)
    limits = CellLimits(max_tool_calls=total + 10)
    session: Any
    if mode == "in-process":
        session = SessionRuntime(delegate, limits=limits)
    else:
        command = [sys.executable, "-m", "codemode", "serve", "--max-tool-calls", str(total + 10)]
        session = await RemoteSession.spawn(delegate, limits=limits, command=command)
    async with session:
        cell = await session.create_cell(CreateCellRequest(SOURCE, (ECHO,)))
        await asyncio.wait_for(delegate.done.wait(), 600)
        await session.terminate(cell)
    return summarize(delegate.stamps[warmup:total])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    summaries = {
        mode: asyncio.run(measure(mode, args.calls, args.warmup))
        for mode in ("in-process", "stdio")
    }

    columns = ("calls/s", "median", "p90", "p99", "mean", "min", "max")
    header = f"{'mode':<12}{'calls':>7}" + "".join(f"{c:>10}" for c in columns)
    print("sequential nested tool calls, one round trip each (real V8; times in milliseconds)")
    print(header)
    print("-" * len(header))
    for name, s in summaries.items():
        print(
            f"{name:<12}{s.calls:>7}{s.calls_per_second:>10.0f}{s.median_ms:>10.3f}"
            f"{s.p90_ms:>10.3f}{s.p99_ms:>10.3f}{s.mean_ms:>10.3f}{s.min_ms:>10.3f}{s.max_ms:>10.3f}"
        )
    local, remote = summaries["in-process"], summaries["stdio"]
    overhead = remote.median_ms - local.median_ms
    print(
        f"\nstdio overhead per nested call: {overhead:.3f} ms median "
        f"({remote.median_ms / local.median_ms:.1f}x in-process)"
    )

    report = {
        "benchmark": "protocol_roundtrip",
        "description": "sequential nested tool calls of one cell: in-process SessionRuntime "
        "versus RemoteSession over a spawned `codemode serve` (stdio)",
        "calls": args.calls,
        "warmup": args.warmup,
        "modes": {name: asdict(s) for name, s in summaries.items()},
        "stdio_overhead_median_ms": overhead,
        "environment": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
        },
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {args.output}")


if __name__ == "__main__":
    main()
