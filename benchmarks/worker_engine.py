"""In-process V8Engine against WorkerEngine, side by side in one run.

Per engine: cell start to completion (a trivial cell, in a warm session), sequential awaited
nested calls per second (an instant tool, and a tool that takes 1 ms), and 1000 nested calls
in one ``Promise.all``; then one engine step
(apply a tool result, run, report) driven directly, median and p90, for V8Engine, GuardedEngine
and WorkerEngine. Prints a table and writes
benchmarks/results/worker_engine.json. Run: .venv/bin/python benchmarks/worker_engine.py
[--cells N] [--calls N] [--rounds N]. Figures are medians; the machine's noise is about 20 %.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
from collections.abc import Callable
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
from codemode.engine import Engine, GuardedEngine, V8Engine, WorkerEngine
from codemode.engine.base import CellBoot, ToolCallRequested, ToolResultInput

ECHO = ToolDefinition("echo")
SLOW = ToolDefinition("slow", "Returns its input after 1 ms.")


async def echo(value: Any) -> Any:
    return value


async def slow(value: Any) -> Any:
    await asyncio.sleep(0.001)
    return value


async def run_cell(rt: SessionRuntime, source: str) -> None:
    cell = await rt.create_cell(CreateCellRequest(source, (ECHO, SLOW)))
    event = await rt.wait(cell, 120)
    assert isinstance(event, Completed) and event.error_text is None, event


async def measure(
    make: Callable[[], Engine], cells: int, calls: int, rounds: int
) -> dict[str, Any]:
    limits = CellLimits(max_tool_calls=calls * 2, max_parallel_tool_calls=calls)
    t = time.perf_counter()
    delegate = tools_delegate({"echo": echo, "slow": slow})
    async with SessionRuntime(delegate, limits=limits, engine=make()) as rt:
        await run_cell(rt, 'text("hi")')
        first_ms = (time.perf_counter() - t) * 1000  # includes starting a worker process
        for _ in range(20):
            await run_cell(rt, 'text("hi")')
        start_ms = []
        for _ in range(cells):
            t = time.perf_counter()
            await run_cell(rt, 'text("hi")')
            start_ms.append((time.perf_counter() - t) * 1000)
        seq = []
        for _ in range(rounds):
            t = time.perf_counter()
            await run_cell(rt, f"for (let i = 0; i < {calls}; i++) await tools.echo({{i}})")
            seq.append(calls / (time.perf_counter() - t))
        slow_us = []
        for _ in range(rounds):
            t = time.perf_counter()
            await run_cell(rt, "for (let i = 0; i < 200; i++) await tools.slow({i})")
            slow_us.append((time.perf_counter() - t) / 200 * 1e6)
        par = []
        for _ in range(rounds):
            t = time.perf_counter()
            await run_cell(
                rt,
                f"await Promise.all(Array.from({{length: {calls}}}, (_, i) => tools.echo({{i}})))",
            )
            par.append((time.perf_counter() - t) * 1000)
    return {
        "first_cell_ms": round(first_ms, 1),
        "cell_start_ms_median": round(statistics.median(start_ms), 2),
        "sequential_calls_per_s": round(statistics.median(seq)),
        "sequential_us_per_call": round(1e6 / statistics.median(seq)),
        "parallel_1000_ms": round(statistics.median(par), 1),
        "sequential_1ms_tool_us_per_call": round(statistics.median(slow_us)),
    }


async def engine_steps(engine: Engine, steps: int, idle: float = 0.0) -> dict[str, float]:
    """Median and p90 of one step; ``idle`` seconds of sleep before each (a tool at work)."""
    boot = CellBoot(
        "bench",
        f"for (let i = 0; i < {steps + 10}; i++) await tools.echo({{i}})",
        (ECHO,),
        {},
        CellLimits(max_tool_calls=steps + 10),
        False,
    )
    cell = await engine.open_cell(boot)
    report = await cell.run()
    times = []
    for _ in range(steps):
        call = report.events[-1]
        assert isinstance(call, ToolCallRequested)
        if idle:
            time.sleep(idle)  # noqa: ASYNC251 - the point: let V8's thread fall asleep
        t = time.perf_counter()
        report = await cell.step([ToolResultInput(call.call_id, True, '{"i":1}')])
        times.append((time.perf_counter() - t) * 1e6)
    cell.close()
    await engine.aclose()
    times.sort()
    return {
        "median_us": round(times[len(times) // 2]),
        "p90_us": round(times[len(times) * 9 // 10]),
    }


async def main(cells: int, calls: int, rounds: int) -> dict[str, Any]:
    results = {}
    for name, make in (("v8 (in-process)", V8Engine), ("worker", WorkerEngine)):
        results[name] = await measure(make, cells, calls, rounds)
    return results


async def steps_main(steps: int) -> dict[str, Any]:
    return {
        "v8": await engine_steps(V8Engine(), steps),
        "guarded v8": await engine_steps(
            GuardedEngine(V8Engine(), rss_budget_bytes=1 << 40), steps
        ),
        "v8 after 0.5 ms idle": await engine_steps(V8Engine(), steps, idle=0.0005),
        "worker": await engine_steps(WorkerEngine(), steps),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, default=200)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args()
    results = asyncio.run(main(args.cells, args.calls, args.rounds))
    steps = asyncio.run(steps_main(args.steps))
    keys = list(next(iter(results.values())))
    names = list(results)
    print(f"{'':28}" + "".join(f"{n:>18}" for n in names) + f"{'worker / v8':>14}")
    for key in keys:
        a, b = results[names[0]][key], results[names[1]][key]
        ratio = b / a if a else float("nan")
        print(f"{key:28}" + "".join(f"{results[n][key]:>18}" for n in names) + f"{ratio:>14.2f}")
    print()
    print(f"{'one engine step':28}{'median us':>18}{'p90 us':>18}")
    for name, figures in steps.items():
        print(f"{name:28}{figures['median_us']:>18}{figures['p90_us']:>18}")
    out = Path(__file__).parent / "results" / "worker_engine.json"
    out.parent.mkdir(exist_ok=True)
    data = {"python": platform.python_version(), "results": results, "engine_steps": steps}
    out.write_text(json.dumps(data, indent=2) + "\n")
