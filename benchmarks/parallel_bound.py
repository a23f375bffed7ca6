"""The parallel-call bound: one ``Promise.all`` over N calls with ``max_parallel_tool_calls`` B.

For each (N, B) it prints the median wall time from the first observation to ``Completed`` and
the most calls the delegate ever held at once (never more than B: calls beyond the bound wait
their turn in issue order), and writes benchmarks/results/parallel_bound.json. Run:
.venv/bin/python benchmarks/parallel_bound.py [--runs N]. The machine's noise is about 20 %.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from codemode import (
    CellLimits,
    Completed,
    CreateCellRequest,
    NestedToolCall,
    SessionRuntime,
    ToolDefinition,
)

ECHO = ToolDefinition("echo")
CASES = ((150, 100), (150, 1000), (1000, 100), (1000, 1000), (1000, 10))


class PeakDelegate:
    """Answers each call after one loop turn; records the most calls it held at once."""

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0

    async def invoke_tool(self, call: NestedToolCall) -> Any:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(0)
            return call.input
        finally:
            self.active -= 1

    async def notify(self, call_id: str, cell_id: str, text: str) -> None:
        return None


async def case(calls: int, bound: int, runs: int) -> dict[str, Any]:
    delegate = PeakDelegate()
    limits = CellLimits(max_tool_calls=calls, max_parallel_tool_calls=bound)
    source = (
        f"const r = await Promise.all(Array.from({{length: {calls}}}, (_, i) => "
        "tools.echo({i}))); text(r.length)"
    )
    times = []
    async with SessionRuntime(delegate, limits=limits) as rt:
        for _ in range(runs):
            cell = await rt.create_cell(CreateCellRequest(source, (ECHO,)))
            started = time.perf_counter()
            event = await rt.wait(cell, 60)
            times.append((time.perf_counter() - started) * 1000)
            assert isinstance(event, Completed) and event.error_text is None, event
    return {
        "calls": calls,
        "bound": bound,
        "median_ms": statistics.median(times),
        "peak": delegate.peak,
    }


async def main(runs: int) -> dict[str, Any]:
    results = [await case(calls, bound, runs) for calls, bound in CASES]
    return {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "cases": results,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    result = asyncio.run(main(args.runs))
    for row in result["cases"]:
        label = f"{row['calls']} calls, bound {row['bound']}"
        print(f"{label:28} median {row['median_ms']:7.1f} ms   peak at the delegate {row['peak']}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "parallel_bound.json").write_text(json.dumps(result, indent=2))
