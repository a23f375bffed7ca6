"""JavaScript (V8) and Python (Monty) cells side by side, in one run, on the same workloads.

Workloads: create a cell and complete ``text("hi")``; sequential awaited nested calls; 1000
calls in one ``Promise.all`` / ``asyncio.gather``; ``terminate()`` of a spinning cell; memory per
idle live cell (RSS of this process plus, for Python, its Monty worker processes).

Run: .venv/bin/python benchmarks/python_cells.py [--cells N] [--calls N] [--idle N]. Prints a
table and writes benchmarks/results/python_cells.json. Medians; the machine's noise is ~20 %.
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
    Engine,
    PythonEngine,
    SessionRuntime,
    ToolDefinition,
    tools_delegate,
)

ECHO = ToolDefinition("echo")
BLOCK = ToolDefinition("block")

SOURCES = {
    "v8": {
        "hi": 'text("hi")',
        "seq": "for (let i = 0; i < {n}; i++) await tools.echo({{i}})",
        "par": "await Promise.all(Array.from({{length: {n}}}, (_, i) => tools.echo({{i}})))",
        "idle": "await tools.block({})",
        "spin": "while (true) {}",
    },
    "python": {
        "hi": 'text("hi")',
        "seq": "for i in range({n}):\n    await tools.echo(i=i)",
        "par": "await asyncio.gather(*[tools.echo(i=i) for i in range({n})])",
        "idle": "await tools.block()",
        "spin": "while True:\n    pass",
    },
}


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as fh:
                    fields = fh.read().rsplit(b")", 1)[1].split()
                if int(fields[1]) == pid and fields[0] != b"Z":
                    out.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return out


def total_rss_mib() -> float:
    me = os.getpid()
    return (_rss_kib(me) + sum(_rss_kib(c) for c in _children(me))) / 1024


async def run_cell(rt: SessionRuntime, source: str) -> Completed:
    cell = await rt.create_cell(CreateCellRequest(source, (ECHO, BLOCK)))
    event = await rt.wait(cell, 120)
    assert isinstance(event, Completed) and event.error_text is None, event
    return event


async def measure(name: str, cells: int, calls: int, idle: int) -> dict[str, Any]:
    src = SOURCES[name]
    release = asyncio.Event()

    async def block(value: Any) -> Any:
        await release.wait()
        return value

    async def echo(value: Any) -> Any:
        return value

    engine: Engine | None = PythonEngine() if name == "python" else None
    limits = CellLimits(max_tool_calls=calls * 2, max_parallel_tool_calls=calls)
    delegate = tools_delegate({"echo": echo, "block": block})
    async with SessionRuntime(delegate, limits=limits, engine=engine) as rt:
        for _ in range(20):
            await run_cell(rt, src["hi"])
        hi_ms = []
        for _ in range(cells):
            t = time.perf_counter()
            await run_cell(rt, src["hi"])
            hi_ms.append((time.perf_counter() - t) * 1000)
        seq = []
        for _ in range(5):
            t = time.perf_counter()
            await run_cell(rt, src["seq"].format(n=calls))
            seq.append(calls / (time.perf_counter() - t))
        par = []
        for _ in range(5):
            t = time.perf_counter()
            await run_cell(rt, src["par"].format(n=calls))
            par.append((time.perf_counter() - t) * 1000)
        stop_ms = []
        for _ in range(5):
            cell = await rt.create_cell(CreateCellRequest(src["spin"], ()))
            await asyncio.sleep(0.05)
            t = time.perf_counter()
            await rt.terminate(cell)
            stop_ms.append((time.perf_counter() - t) * 1000)
        await asyncio.sleep(0.3)
        before = total_rss_mib()
        idle_cells = [
            await rt.create_cell(CreateCellRequest(src["idle"], (BLOCK,))) for _ in range(idle)
        ]
        await asyncio.sleep(0.5)
        after = total_rss_mib()
        release.set()
        for cell in idle_cells:
            await rt.wait(cell, 30)
    return {
        "fresh_cell_text_hi_ms": statistics.median(hi_ms),
        "sequential_calls_per_second": statistics.median(seq),
        "gather_1000_calls_ms": statistics.median(par),
        "terminate_spinning_cell_ms": statistics.median(stop_ms),
        "memory_per_idle_live_cell_mib": (after - before) / idle,
    }


async def main(cells: int, calls: int, idle: int) -> dict[str, Any]:
    results = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "v8": await measure("v8", cells, calls, idle),
        "python": await measure("python", cells, calls, idle),
    }
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cells", type=int, default=200)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--idle", type=int, default=50)
    args = parser.parse_args()
    result = asyncio.run(main(args.cells, args.calls, args.idle))
    rows = [
        ("fresh cell, create + complete text('hi') (ms)", "fresh_cell_text_hi_ms", "{:.2f}"),
        ("sequential awaited nested calls (calls/s)", "sequential_calls_per_second", "{:,.0f}"),
        (f"{args.calls} calls in one Promise.all / gather (ms)", "gather_1000_calls_ms", "{:.1f}"),
        ("terminate() of a spinning cell (ms)", "terminate_spinning_cell_ms", "{:.2f}"),
        ("memory per idle live cell, RSS (MiB)", "memory_per_idle_live_cell_mib", "{:.2f}"),
    ]
    print(f"| {'workload':52} | {'V8 (JavaScript)':>16} | {'Monty (Python)':>16} |")
    print(f"|{'-' * 54}|{'-' * 18}|{'-' * 18}|")
    for label, key, fmt in rows:
        v8 = fmt.format(result["v8"][key])
        py = fmt.format(result["python"][key])
        print(f"| {label:52} | {v8:>16} | {py:>16} |")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "python_cells.json").write_text(json.dumps(result, indent=2))
