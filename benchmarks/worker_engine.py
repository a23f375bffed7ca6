"""In-process V8Engine against WorkerEngine, side by side in one run.

Per engine: cell start to completion (a trivial cell, in a warm session), sequential awaited
nested calls per second (an instant tool, and a tool that takes 1 ms), and 1000 nested calls
in one ``Promise.all``; then one engine step
(apply a tool result, run, report) driven directly, median and p90, for V8Engine, GuardedEngine
and WorkerEngine. Prints a table and writes
benchmarks/results/worker_engine.json. Run: .venv/bin/python benchmarks/worker_engine.py
[--cells N] [--calls N] [--rounds N]. Figures are medians; the machine's noise is about 20 %.

``--breakdown``: what one nested call costs on each side (wall, host CPU, the worker's CPU by
thread; with ``strace`` installed, system calls, event-loop iterations and wake-ups, futex calls
and pipe writes per call on each side, from a traced run). ``--baseline SRC``: the session
workloads of this checkout and of another checkout's ``src/`` run alternately, ``--alternations``
times each, printed side by side (the machine is shared and noisy: only alternated runs compare).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
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


# ---------------------------------------------------------------------- per-call breakdown


def _ticks(pid: int, tid: int | None = None) -> tuple[int, int]:
    """User and system clock ticks of process ``pid`` (threads that ended included) or of its
    thread ``tid`` (Linux ``/proc``)."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path, "rb") as fh:
        fields = fh.read().rsplit(b")", 1)[1].split()
    return int(fields[11]), int(fields[12])


async def breakdown_run(
    kind: str, calls: int, parallel: bool = False, markers: bool = False
) -> dict[str, Any]:
    """One cell of ``calls`` sequential awaited calls (or one ``Promise.all``) after a warm-up;
    per call: wall time, host CPU and, for the worker, the CPU of its main thread and of its
    other threads (the isolate's, mostly). ``markers``: write ``GO`` and ``END`` to stderr
    around the cell (for a system-call trace)."""
    limits = CellLimits(max_tool_calls=calls * 2 + 10, max_parallel_tool_calls=calls + 10)
    engine: Engine = WorkerEngine() if kind == "worker" else V8Engine()
    delegate = tools_delegate({"echo": echo, "slow": slow})
    async with SessionRuntime(delegate, limits=limits, engine=engine) as rt:
        for _ in range(5):
            await run_cell(rt, "await tools.echo({i: 1}); text('hi')")
        pid = engine.worker_pids()[0] if isinstance(engine, WorkerEngine) else None
        if parallel:
            source = (
                f"await Promise.all(Array.from({{length: {calls}}}, (_, i) => tools.echo({{i}})))"
            )
        else:
            source = f"for (let i = 0; i < {calls}; i++) await tools.echo({{i}})"
        ticks = (_ticks(pid), _ticks(pid, pid)) if pid else None
        if markers:
            os.write(2, b"GO\n")
        wall, cpu = time.perf_counter(), os.times()
        await run_cell(rt, source)
        wall, end = time.perf_counter() - wall, os.times()
        if markers:
            os.write(2, b"END\n")
        after = (_ticks(pid), _ticks(pid, pid)) if pid else None
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK") / calls
    result: dict[str, Any] = {
        "wall_us_per_call": round(wall * 1e6 / calls, 1),
        "host_cpu_user_sys_us_per_call": [
            round((end.user - cpu.user) * 1e6 / calls),
            round((end.system - cpu.system) * 1e6 / calls),
        ],
    }
    if ticks is not None and after is not None:
        (user0, sys0), (muser0, msys0) = ticks
        (user1, sys1), (muser1, msys1) = after
        main = ((muser1 - muser0) * tick_us, (msys1 - msys0) * tick_us)
        rest = ((user1 - user0) * tick_us - main[0], (sys1 - sys0) * tick_us - main[1])
        result["worker_main_thread_user_sys_us"] = [round(main[0]), round(main[1])]
        result["worker_other_threads_user_sys_us"] = [round(rest[0]), round(rest[1])]
    return result


def _syscalls(trace: str, calls: int) -> dict[str, dict[str, float]]:
    """Per call and per side (host process, worker process), from an ``strace -f`` log: system
    calls by name, event-loop iterations (``epoll_wait``), wake-ups (``epoll_wait`` calls that
    slept and returned events), futex calls (thread hand-overs), pipe messages (``write``)."""
    parent: dict[int, int] = {}
    pending: dict[int, str] = {}
    root: int | None = None
    worker: int | None = None
    counting = False
    sides: dict[str, dict[str, float]] = {"host": {}, "worker": {}}
    for line in trace.splitlines():
        m = re.match(r"(\d+)\s+(.*)$", line)
        if not m:
            continue
        pid, text = int(m[1]), m[2]
        if root is None:
            root = pid
        if text.endswith("<unfinished ...>"):
            pending[pid] = text[: -len("<unfinished ...>")]
            continue
        resumed = re.match(r"<\.\.\. \w+ resumed>(.*)$", text)
        if resumed:
            text = pending.pop(pid, "") + resumed[1]
        call = re.match(r"(\w+)\((.*)\)\s+=\s+(-?\d+|\?)", text)
        if not call:
            continue
        name, args, ret = call[1], call[2], call[3]
        if name in ("clone", "clone3", "vfork", "fork") and ret.isdigit():
            parent[int(ret)] = pid
            if worker is None and pid == root and name != "clone3":
                worker = int(ret)  # the first process the host starts (not a thread)
        if name == "write" and args.startswith('2, "GO\\n"'):
            counting = True
            continue
        if name == "write" and args.startswith('2, "END\\n"'):
            counting = False
            continue
        if not counting:
            continue
        p = pid
        while p in parent and p != worker:
            p = parent[p]
        side = sides["worker" if p == worker else "host"]
        side[name] = side.get(name, 0) + 1
        if name == "epoll_wait":
            timeout = args.rsplit(",", 1)[-1].strip()
            if timeout != "0" and ret not in ("0", "?"):
                side["wake-ups"] = side.get("wake-ups", 0) + 1
    out = {}
    for name, side in sides.items():
        total = sum(v for k, v in side.items() if k != "wake-ups")
        figures = {
            k: round(v / calls, 2)
            for k, v in sorted(side.items(), key=lambda kv: -kv[1])
            if v / calls >= 0.05  # what happens per call, not once
        }
        out[name] = {"all system calls": round(total / calls, 2), **figures}
    return out


def breakdown(calls: int) -> dict[str, Any]:
    """The per-call breakdown of a sequential nested call, in process and in a worker; with
    ``strace`` on the path, the system calls of each side too (traced runs, separately)."""
    results: dict[str, Any] = {}
    for kind in ("v8", "worker"):
        results[kind] = asyncio.run(breakdown_run(kind, calls))
        results[kind + " Promise.all"] = asyncio.run(breakdown_run(kind, calls, parallel=True))
    if shutil.which("strace"):
        for kind in ("v8", "worker"):
            with tempfile.TemporaryDirectory() as tmp:
                log = Path(tmp) / "trace"
                subprocess.run(
                    [
                        "strace",
                        "-f",
                        "-qq",
                        "-o",
                        str(log),
                        sys.executable,
                        __file__,
                        "--breakdown-inner",
                        kind,
                        "--calls",
                        str(calls),
                    ],
                    check=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                results[kind + " system calls"] = _syscalls(log.read_text(), calls)
    return results


def compare(baseline: str, alternations: int, args: argparse.Namespace) -> dict[str, Any]:
    """The session workloads of this checkout and of ``baseline`` (a ``src/`` directory), in
    subprocesses run alternately; per side and figure, every run's value."""
    sides = {"this": str(Path(__file__).resolve().parents[1] / "src"), "baseline": baseline}
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for _ in range(alternations):
        for side, src in sides.items():
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "out.json"
                subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--cells",
                        str(args.cells),
                        "--calls",
                        str(args.calls),
                        "--rounds",
                        str(args.rounds),
                        "--steps",
                        "0",
                        "--json",
                        str(out),
                    ],
                    check=True,
                    env=dict(os.environ, PYTHONPATH=src),
                    stdout=subprocess.DEVNULL,
                )
                runs[side].append(json.loads(out.read_text())["results"])
    return runs


def print_compare(runs: dict[str, list[dict[str, Any]]]) -> None:
    first = runs["this"][0]
    print(f"{'median of the runs (min-max)':44}{'this':>22}{'baseline':>22}")
    for engine in first:
        for key in first[engine]:
            cells = []
            for side in ("this", "baseline"):
                values = [r[engine][key] for r in runs[side]]
                cells.append(f"{statistics.median(values):g} ({min(values):g}-{max(values):g})")
            print(f"{engine + ' ' + key:44}{cells[0]:>22}{cells[1]:>22}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, default=200)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--json", help="write the results here instead (no table)")
    parser.add_argument("--breakdown", action="store_true", help="per-call breakdown only")
    parser.add_argument("--breakdown-inner", help=argparse.SUPPRESS)
    parser.add_argument("--baseline", metavar="SRC", help="compare with another checkout's src/")
    parser.add_argument("--alternations", type=int, default=3)
    args = parser.parse_args()
    if args.breakdown_inner:
        asyncio.run(breakdown_run(args.breakdown_inner, args.calls, markers=True))
        sys.exit(0)
    if args.breakdown:
        print(json.dumps(breakdown(args.calls), indent=2))
        sys.exit(0)
    if args.baseline:
        runs = compare(str(Path(args.baseline).resolve()), args.alternations, args)
        print_compare(runs)
        out = Path(__file__).parent / "results" / "worker_engine_compare.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(runs, indent=2) + "\n")
        sys.exit(0)
    results = asyncio.run(main(args.cells, args.calls, args.rounds))
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results}))
        sys.exit(0)
    steps = asyncio.run(steps_main(args.steps)) if args.steps else {}
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
