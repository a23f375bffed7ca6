"""The figures users judge codemode by (issue 8), measured on this machine.

Prints a table and writes benchmarks/results/fast_path.json. Run:

    .venv/bin/python benchmarks/fast_path.py            # everything (about a minute)
    .venv/bin/python benchmarks/fast_path.py --quick    # smaller counts

Method: every figure is a median over repeated runs in one process, after a warm-up. "Cold" cells
create their isolate on demand (``V8Engine(pool_size=0)``); "warm" cells take one from the
pre-created pool, with a pause between cells so the pool refills (a latency figure, not a
throughput one). Memory is the process's resident set (``/proc/self/statm``). Runaway stops are
timed from the CPU deadline the runtime set to the moment ``wait`` returns the ``Completed``.
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
    SessionRuntime,
    ToolDefinition,
    Yielded,
    tools_delegate,
)
from codemode.engine.v8 import V8Engine

TOOLS = (ToolDefinition("echo"), ToolDefinition("search"), ToolDefinition("fetch"))
MiB = 1024 * 1024


async def _echo(value: Any) -> Any:
    return value


async def _search(value: Any) -> Any:
    q = value.get("q", "") if isinstance(value, dict) else ""
    return {"hits": [{"id": i, "title": f"{q} result {i}", "score": 1 / (i + 1)} for i in range(5)]}


async def _fetch(value: Any) -> Any:
    return {"id": value.get("id"), "body": "lorem ipsum " * 40}


def delegate() -> Any:
    return tools_delegate({"echo": _echo, "search": _search, "fetch": _fetch})


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def complete(rt: SessionRuntime, source: str) -> Completed:
    cell = await rt.create_cell(CreateCellRequest(source, TOOLS))
    event = await rt.wait(cell, 120)
    assert isinstance(event, Completed), event
    return event


async def start_latency(pool_size: int, n: int) -> float:
    """Median ms to create a cell and complete text("hi")."""
    engine = V8Engine(pool_size=pool_size)
    async with SessionRuntime(delegate(), engine=engine) as rt:
        for _ in range(10):
            await complete(rt, 'text("hi")')
        samples = []
        for _ in range(n):
            await asyncio.sleep(0.01)  # let the pool refill: this is a latency figure
            t = time.perf_counter()
            await complete(rt, 'text("hi")')
            samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples)


async def call_figures(calls: int) -> tuple[float, float]:
    """Sequential nested calls per second, and ms for `calls` calls in one Promise.all."""
    limits = CellLimits(max_tool_calls=calls * 4, max_parallel_tool_calls=calls)
    async with SessionRuntime(delegate(), limits=limits) as rt:
        seq, par = [], []
        for _ in range(5):
            t = time.perf_counter()
            await complete(rt, f"for (let i = 0; i < {calls}; i++) await tools.echo({{i}})")
            seq.append(calls / (time.perf_counter() - t))
            t = time.perf_counter()
            await complete(
                rt,
                f"await Promise.all(Array.from({{length: {calls}}}, (_, i) => tools.echo({{i}})))",
            )
            par.append((time.perf_counter() - t) * 1000)
    return statistics.median(seq), statistics.median(par)


async def observation_overhead(n: int) -> float:
    """Median microseconds of a `wait(cell, 0)` on a blocked cell (nothing to deliver)."""
    async with SessionRuntime(delegate()) as rt:
        cell = await rt.create_cell(CreateCellRequest("await new Promise(() => {})"))
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            event = await rt.wait(cell, 0)
            samples.append((time.perf_counter() - t) * 1e6)
            assert isinstance(event, Yielded)
        await rt.terminate(cell)
    return statistics.median(samples)


async def idle_cells(max_cells: int, budget_bytes: int) -> tuple[float, int, float]:
    """MiB per idle live cell, how many fit in `budget_bytes`, and seconds it took."""
    limits = CellLimits(max_live_cells=max_cells, max_idempotency_keys=max_cells)
    async with SessionRuntime(delegate(), limits=limits, engine=V8Engine(pool_size=0)) as rt:
        await complete(rt, 'text("warm")')
        base = rss()
        started = time.perf_counter()
        count = 0
        per_cell = 0.0
        while count < max_cells:
            await rt.create_cell(CreateCellRequest("await new Promise(() => {})"))
            count += 1
            if count == 200:
                await asyncio.sleep(0.2)
                per_cell = (rss() - base) / 200 / MiB
            if count % 100 == 0 and rss() - base > budget_bytes:
                break
        elapsed = time.perf_counter() - started
    return per_cell, count, elapsed


async def runaway_stop(n: int) -> tuple[float, float]:
    """Median ms from the CPU deadline to the Completed, and from terminate() to its return."""
    cpu = 0.2
    limits = CellLimits(max_cpu_seconds=cpu)
    async with SessionRuntime(delegate(), limits=limits) as rt:
        start_ms = []
        for _ in range(5):
            t = time.perf_counter()
            await complete(rt, "text(1)")
            start_ms.append((time.perf_counter() - t) * 1000)
        startup = statistics.median(start_ms)
        late, term = [], []
        for _ in range(n):
            t = time.perf_counter()
            await complete(rt, "while (true) {}")
            late.append((time.perf_counter() - t) * 1000 - cpu * 1000 - startup)
            cell = await rt.create_cell(CreateCellRequest("while (true) {}"))
            await asyncio.sleep(0.05)
            t = time.perf_counter()
            await rt.terminate(cell)
            term.append((time.perf_counter() - t) * 1000)
    return max(statistics.median(late), 0.0), statistics.median(term)


REALISTIC = """
const [a, b, c] = await Promise.all([
  tools.search({q: "alpha"}), tools.search({q: "beta"}), tools.search({q: "gamma"}),
]);
const best = [...a.hits, ...b.hits, ...c.hits].sort((x, y) => y.score - x.score).slice(0, 3);
const page = await tools.fetch({id: best[0].id});
store("last", best.map(h => h.title));
text(`${best.length} hits; top: ${best[0].title}; body ${page.body.length} chars`);
"""


async def realistic_throughput(n: int, concurrency: int) -> tuple[float, float]:
    """Cells per wall second and per CPU second (all threads) for a small realistic cell."""
    async with SessionRuntime(delegate()) as rt:
        for _ in range(10):
            await complete(rt, REALISTIC)
        sem = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with sem:
                await complete(rt, REALISTIC)

        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    return n / wall, n / cpu


async def main(quick: bool) -> dict[str, Any]:
    k = 4 if quick else 1
    cold = await start_latency(0, 200 // k)
    warm = await start_latency(4, 200 // k)
    seq, par = await call_figures(1000)
    wait_us = await observation_overhead(2000 // k)
    per_cell, cells, cells_secs = await idle_cells(1000 if quick else 1500, 2 * 1024 * MiB)
    late, term = await runaway_stop(10 // k + 2)
    wall_rate, cpu_rate = await realistic_throughput(400 // k, 8)
    return {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
        },
        "create_and_complete_text_hi_ms": {"cold": cold, "warm_pool": warm},
        "sequential_nested_calls_per_second": seq,
        "parallel_1000_calls_ms": par,
        "wait_overhead_us": wait_us,
        "memory_per_idle_live_cell_mib": per_cell,
        "idle_live_cells_created": cells,
        "idle_live_cells_seconds": cells_secs,
        "runaway_stop_after_deadline_ms": late,
        "terminate_spinning_cell_ms": term,
        "realistic_cells_per_second": wall_rate,
        "realistic_cells_per_cpu_second": cpu_rate,
    }


def print_table(r: dict[str, Any]) -> None:
    rows = [
        (
            'create + complete text("hi"), cold',
            f"{r['create_and_complete_text_hi_ms']['cold']:.2f} ms",
        ),
        (
            'create + complete text("hi"), warm pool',
            f"{r['create_and_complete_text_hi_ms']['warm_pool']:.2f} ms",
        ),
        ("sequential nested calls", f"{r['sequential_nested_calls_per_second']:.0f} /s"),
        ("1000 calls in one Promise.all", f"{r['parallel_1000_calls_ms']:.1f} ms"),
        ("wait(cell, 0) overhead", f"{r['wait_overhead_us']:.0f} us"),
        ("memory per idle live cell", f"{r['memory_per_idle_live_cell_mib']:.2f} MiB"),
        (
            "idle live cells held (2 GiB budget)",
            f"{r['idle_live_cells_created']} in {r['idle_live_cells_seconds']:.1f} s",
        ),
        ("runaway stopped after its deadline", f"{r['runaway_stop_after_deadline_ms']:.1f} ms"),
        ("terminate() of a spinning cell", f"{r['terminate_spinning_cell_ms']:.1f} ms"),
        ("realistic cell, 8 concurrent", f"{r['realistic_cells_per_second']:.0f} cells/s"),
        ("realistic cell per CPU-second", f"{r['realistic_cells_per_cpu_second']:.0f} cells"),
    ]
    width = max(len(name) for name, _ in rows)
    m = r["machine"]
    load = m["load_average"][0]
    print(f"codemode fast path - Python {m['python']}, {m['cpus']} CPUs, load {load:.2f}")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller counts")
    args = parser.parse_args()
    result = asyncio.run(main(args.quick))
    print_table(result)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "fast_path.json").write_text(json.dumps(result, indent=2))
