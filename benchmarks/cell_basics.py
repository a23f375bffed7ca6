"""Core figures of a session on V8: cell start-to-completion and nested-call throughput.

Prints a table and writes benchmarks/results/cell_basics.json. Run: .venv/bin/python
benchmarks/cell_basics.py [--cells N] [--calls N]. Figures are medians over repeated runs;
the machine's noise is about 20 %.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from codemode import (
    CellLimits,
    Completed,
    CreateCellRequest,
    SessionRuntime,
    ToolDefinition,
    tools_delegate,
)

ECHO = ToolDefinition("echo")


async def echo(value: Any) -> Any:
    return value


async def run_cell(rt: SessionRuntime, source: str) -> Completed:
    cell = await rt.create_cell(CreateCellRequest(source, (ECHO,)))
    event = await rt.wait(cell, 60)
    assert isinstance(event, Completed) and event.error_text is None, event
    return event


async def main(cells: int, calls: int) -> dict[str, Any]:
    limits = CellLimits(max_tool_calls=calls * 2, max_parallel_tool_calls=calls)
    async with SessionRuntime(tools_delegate({"echo": echo}), limits=limits) as rt:
        for _ in range(20):
            await run_cell(rt, 'text("hi")')
        create_ms = []
        for _ in range(cells):
            t = time.perf_counter()
            await run_cell(rt, 'text("hi")')
            create_ms.append((time.perf_counter() - t) * 1000)

        seq_rates = []
        for _ in range(5):
            t = time.perf_counter()
            await run_cell(rt, f"for (let i = 0; i < {calls}; i++) await tools.echo({{i}})")
            seq_rates.append(calls / (time.perf_counter() - t))

        par_ms = []
        for _ in range(5):
            t = time.perf_counter()
            await run_cell(
                rt,
                f"await Promise.all(Array.from({{length: {calls}}}, (_, i) => tools.echo({{i}})))",
            )
            par_ms.append((time.perf_counter() - t) * 1000)

    return {
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
        "create_and_complete_text_hi_ms": {
            "median": statistics.median(create_ms),
            "p90": statistics.quantiles(create_ms, n=10)[-1],
            "n": cells,
        },
        "sequential_nested_calls_per_second": {
            "median": statistics.median(seq_rates),
            "calls": calls,
        },
        "parallel_calls_in_one_promise_all_ms": {
            "median": statistics.median(par_ms),
            "calls": calls,
        },
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cells", type=int, default=300)
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()
    result = asyncio.run(main(args.cells, args.calls))
    c = result["create_and_complete_text_hi_ms"]
    label = 'create + complete text("hi")'
    print(f"{label:40} median {c['median']:.2f} ms   p90 {c['p90']:.2f} ms")
    s = result["sequential_nested_calls_per_second"]
    print(f"{'sequential nested calls':40} {s['median']:.0f} calls/s")
    p = result["parallel_calls_in_one_promise_all_ms"]
    label = f"{p['calls']} calls in one Promise.all"
    print(f"{label:40} median {p['median']:.1f} ms")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "cell_basics.json").write_text(json.dumps(result, indent=2))
