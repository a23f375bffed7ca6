"""Where one nested call's time goes: a sequential cell of awaited calls, broken down.

Runs ``let n = 0; for (...) n += (await tools.echo({i})).i`` through ``SessionRuntime`` on the
in-process V8 engine and reports, per nested call:

- wall time and the host process's CPU time (every thread: the event loop's and V8's);
- how often the host waits on the isolate's thread: calls submitted to mini-racer (each a task
  on the isolate's thread), blocking native calls (a string argument copied in), and the event
  loop's wake-ups from that thread (``call_soon_threadsafe``);
- event-loop iterations and asyncio tasks created;
- a cProfile attribution of the loop thread's time by module (asyncio, the actor, the machine,
  the authority, the delegate boundary, the engine, mini-racer's Python side, JSON, and the wait
  for the isolate in ``epoll``), scaled to the unprofiled time per call.

Run it against another checkout's ``src`` with ``PYTHONPATH=/path/to/src`` to compare (the
figures in BENCHMARKS.md "Call path" come from one run of both, alternated).

    .venv/bin/python benchmarks/call_path.py [--calls 1000] [--reps 5]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import statistics
import threading
import time
from typing import Any

SEQ = "let n = 0; for (let i = 0; i < {n}; i++) n += (await tools.echo({{i}})).i; text(String(n))"
PAR = (
    "const r = await Promise.all(Array.from({{length: {n}}}, (_, i) => tools.echo({{i}})));"
    " text(String(r.reduce((a, x) => a + x.i, 0)))"
)

GROUPS = (
    ("epoll wait (the isolate's thread working, or idle)", ("select.epoll",)),
    ("mini-racer native calls (submit, copy in)", ("counted_submit", "counted_set")),
    ("mini-racer Python side", ("py_mini_racer",)),
    ("engine (codemode/engine/v8.py)", ("codemode/engine/",)),
    ("authority (report checks)", ("codemode/cell/authority.py",)),
    ("machine", ("codemode/cell/machine.py",)),
    ("actor", ("codemode/cell/actor.py",)),
    ("delegate boundary + delegate", ("codemode/cell/delegate.py", "codemode/session.py")),
    ("JSON", ("json/",)),
    (
        "asyncio (loop, tasks, futures, handles)",
        ("asyncio", "selectors.py", "socket", "counted_", "task_factory", "contextvars"),
    ),
)


def _thread_cpu() -> dict[int, int]:
    """CPU time (ns) of every thread of this process so far, by native thread id (Linux)."""
    out: dict[int, int] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                out[int(tid)] = int(f.read().split()[0])
        except OSError:  # the thread ended meanwhile
            pass
    return out


def _group(key: tuple[str, int, str]) -> str:
    text = f"{key[0]}:{key[2]}"
    for name, needles in GROUPS:
        if any(n in text for n in needles):
            return name
    return "other"


async def _echo(value: Any) -> Any:
    return value


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    parser.add_argument(
        "--workload",
        choices=("seq", "par"),
        default="seq",
        help="seq: sequential awaited calls; par: all calls in one Promise.all",
    )
    parser.add_argument(
        "--top", type=int, default=0, help="also print the N functions with most own time"
    )
    parser.add_argument(
        "--phases",
        action="store_true",
        help="also time whole cells by phase (ms per cell), each started once the isolate pool"
        " has refilled, as engines_compare does",
    )
    parser.add_argument(
        "--step-wait",
        type=float,
        default=0.0,
        help="V8Engine's step_wait (seconds; 0, the in-process default: a step never blocks)",
    )
    args, _ = parser.parse_known_args()

    import codemode
    from codemode import (
        CellLimits,
        Completed,
        CreateCellRequest,
        SessionRuntime,
        ToolDefinition,
        tools_delegate,
    )
    from codemode.engine.v8 import V8Engine

    loop = asyncio.get_running_loop()
    counts = {"submitted": 0, "blocking": 0, "wakeups": 0, "iterations": 0, "tasks": 0}

    # (No keyword when it is the default: older checkouts, measured through PYTHONPATH, lack it.)
    engine = V8Engine(step_wait=args.step_wait) if args.step_wait else V8Engine()
    from py_mini_racer import _dll

    dll = _dll.init_mini_racer(ignore_duplicate_init=True)
    submit, set_item = dll.mr_call_function, dll.mr_set_object_item

    def counted_submit(*a: Any) -> Any:
        counts["submitted"] += 1
        return submit(*a)

    def counted_set(*a: Any) -> Any:
        counts["blocking"] += 1
        return set_item(*a)

    dll.mr_call_function, dll.mr_set_object_item = counted_submit, counted_set
    threadsafe = loop.call_soon_threadsafe

    def counted_threadsafe(*a: Any, **k: Any) -> Any:
        counts["wakeups"] += 1
        return threadsafe(*a, **k)

    loop.call_soon_threadsafe = counted_threadsafe  # type: ignore[method-assign]
    run_once = loop._run_once  # type: ignore[attr-defined]

    def counted_run_once() -> None:
        counts["iterations"] += 1
        run_once()

    loop._run_once = counted_run_once  # type: ignore[attr-defined]

    def task_factory(lp: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
        counts["tasks"] += 1
        return asyncio.Task(coro, loop=lp, **kw)

    loop.set_task_factory(task_factory)  # type: ignore[arg-type]

    n = args.calls
    limits = CellLimits(max_tool_calls=n + 10, max_parallel_tool_calls=n + 10)
    rt = SessionRuntime(tools_delegate({"echo": _echo}), limits=limits, engine=engine)
    src = (SEQ if args.workload == "seq" else PAR).format(n=n)

    async def cell() -> None:
        c = await rt.create_cell(CreateCellRequest(src, (ToolDefinition("echo"),)))
        ev = await rt.wait(c, 300)
        assert isinstance(ev, Completed) and ev.error_text is None, ev
        assert ev.items[0].text == str(n * (n - 1) // 2)  # type: ignore[union-attr]

    async with rt:
        await cell()
        await cell()
        walls, cpus = [], []
        split: dict[str, list[float]] = {"loop": [], "isolate": [], "rest": []}
        loop_thread = threading.get_native_id()
        per_call: dict[str, list[float]] = {k: [] for k in counts}
        for _ in range(args.reps):
            before = dict(counts)
            threads0 = _thread_cpu()
            c0, t0 = time.process_time(), time.perf_counter()
            await cell()
            walls.append((time.perf_counter() - t0) / n * 1e6)
            cpus.append((time.process_time() - c0) / n * 1e6)
            threads1 = _thread_cpu()
            used = {t: ns - threads0.get(t, 0) for t, ns in threads1.items()}
            loop_ns = used.pop(loop_thread, 0)
            others = (time.process_time() - c0) * 1e9 - loop_ns  # threads that ended included
            # The busiest other thread is the cell's isolate's, unless it ended (the cell
            # closed and the reaper freed its isolate) before we looked; the rest is mostly
            # the pool's refill (the new isolate's own thread, the thread creating it).
            isolate = max(used.values(), default=0)
            if isolate < others / 2:
                isolate = max(others - sum(used.values()), 0)
            split["loop"].append(loop_ns / n / 1e3)
            split["isolate"].append(isolate / n / 1e3)
            split["rest"].append(max(others - isolate, 0) / n / 1e3)
            for k in counts:
                per_call[k].append((counts[k] - before[k]) / n)
        profile = cProfile.Profile()
        t0 = time.perf_counter()
        profile.enable()
        await cell()
        profile.disable()
        profiled_wall = (time.perf_counter() - t0) / n * 1e6
        phases = await _phases(cell, engine, args.reps) if args.phases else None

    stats = pstats.Stats(profile)
    groups: dict[str, float] = {}
    total = 0.0
    for key, value in stats.stats.items():  # type: ignore[attr-defined]
        tottime = value[2]
        total += tottime
        groups[_group(key)] = groups.get(_group(key), 0.0) + tottime
    if args.top:
        ranked = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])  # type: ignore[attr-defined]
        for k, v in ranked[: args.top]:
            print(f"{v[2] / n * 1e6:8.2f} us/call own  {v[0]:>8} calls  {k[0]}:{k[1]} {k[2]}")
    if os.environ.get("CALL_PATH_OTHER"):
        others = [(v[2], k) for k, v in stats.stats.items() if _group(k) == "other"]  # type: ignore[attr-defined]
        for t, k in sorted(others, reverse=True)[:15]:
            print(f"{t * 1e3:8.2f} ms  {k}")
    wall = statistics.median(walls)
    result = {
        "codemode": os.path.dirname(codemode.__file__),
        "load": round(os.getloadavg()[0], 2),
        "wall_us_per_call": round(wall, 1),
        "host_cpu_us_per_call": round(statistics.median(cpus), 1),
        "per_call": {k: round(statistics.median(v), 2) for k, v in per_call.items()},
        # CPU per call by thread (medians): the event loop's, the cell's isolate's (V8 and
        # mini-racer's callbacks into Python), the rest (the pool's refill, the reaper).
        "thread_cpu_us": {k: round(statistics.median(v), 1) for k, v in split.items()},
        # Each group's share of the profiled run, applied to the unprofiled wall time per call.
        "breakdown_us": {
            k: round(v / total * wall, 1) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])
        },
        "profiled_wall_us_per_call": round(profiled_wall, 1),
    }
    # The same shares without the wait in epoll, applied to the loop thread's CPU per call.
    busy = total - groups.get(GROUPS[0][0], 0.0)
    loop_cpu = result["thread_cpu_us"]["loop"]  # type: ignore[index]
    result["loop_cpu_breakdown_us"] = {
        k: round(v / busy * loop_cpu, 1)
        for k, v in sorted(groups.items(), key=lambda kv: -kv[1])
        if k != GROUPS[0][0]
    }
    if phases is not None:
        result["phases_ms_per_cell"] = phases
    if args.json:
        print(json.dumps(result))
        return
    print(f"codemode from {result['codemode']} (load {result['load']})")
    print(
        f"per nested call ({args.workload}): {wall:.0f} us wall,"
        f" {result['host_cpu_us_per_call']} us CPU"
    )
    for k, v in result["per_call"].items():  # type: ignore[union-attr]
        print(f"  {k:<12} {v:6.2f} per call")
    print(
        "CPU per call by thread (us): "
        + ", ".join(
            f"{k} {v}"
            for k, v in result["thread_cpu_us"].items()  # type: ignore[union-attr]
        )
    )
    print("loop thread's time per call, by module (cProfile shares x unprofiled wall):")
    for k, v in result["breakdown_us"].items():  # type: ignore[union-attr]
        print(f"  {v:7.1f} us  {k}")
    print("loop thread's CPU per call, by module (cProfile shares without epoll x its CPU):")
    for k, v in result["loop_cpu_breakdown_us"].items():  # type: ignore[union-attr]
        print(f"  {v:7.1f} us  {k}")
    if phases is not None:
        print("whole cells by phase (ms per cell, medians):")
        for k, v in phases.items():
            print(f"  {v:7.2f} ms  {k}")


async def _phases(cell: Any, engine: Any, reps: int) -> dict[str, float]:
    """Whole cells timed by phase (medians, ms per cell). Each cell starts once the engine's
    isolate pool has replaced the isolate the last one took (untimed), as in engines_compare.
    The phases wrap private functions of the checkout under test (the same names on older
    checkouts), so they add a few microseconds per cell of their own."""
    import gc

    from codemode.cell import actor, authority
    from codemode.engine import v8

    acc: dict[str, float] = {}

    def timed(owner: Any, name: str, key: str) -> None:
        original = getattr(owner, name)

        def wrapper(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                acc[key] = acc.get(key, 0.0) + time.perf_counter() - t

        setattr(owner, name, wrapper)

    original_eval = v8._V8Cell._eval

    async def timed_eval(self: Any, fn: Any, *a: Any, **k: Any) -> Any:
        key = "V8: the run and its drain" if fn is self._bridge.start else "V8: steps and drains"
        t = time.perf_counter()
        try:
            return await original_eval(self, fn, *a, **k)
        finally:
            acc[key] = acc.get(key, 0.0) + time.perf_counter() - t

    gc_started = [0.0]

    def gc_timer(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            key = "garbage collector (within the phases above)"
            acc[key] = acc.get(key, 0.0) + time.perf_counter() - gc_started[0]

    v8._V8Cell._eval = timed_eval  # type: ignore[method-assign]
    timed(authority.CellAuthority, "accept_raw", "report checks (JSON, authority)")
    timed(actor.CellActor, "_handle_events", "actor: the report's events (machine, records)")
    timed(actor.CellActor, "_start_calls", "actor: starting the calls (tasks, delegate, results)")
    gc.callbacks.append(gc_timer)
    per_cell: list[dict[str, float]] = []
    walls, loop_cpu = [], []
    try:
        for _ in range(reps):
            pool = getattr(engine, "_pool", None)
            give_up = time.perf_counter() + 1.0
            while pool is not None and time.perf_counter() < give_up:
                if getattr(pool, "_refill_handle", None) is None and not getattr(
                    pool, "_filling", ()
                ):
                    break
                await asyncio.sleep(0.002)
            await asyncio.sleep(0.02)
            acc.clear()
            t0, c0 = time.perf_counter(), time.thread_time()
            await cell()
            walls.append(time.perf_counter() - t0)
            loop_cpu.append(time.thread_time() - c0)
            per_cell.append(dict(acc))
    finally:
        gc.callbacks.remove(gc_timer)
    out = {"wall": statistics.median(walls), "event-loop thread CPU": statistics.median(loop_cpu)}
    for key in sorted({k for p in per_cell for k in p}):
        out[key] = statistics.median(p.get(key, 0.0) for p in per_cell)
    # What no phase covers: the cell's creation, the pump's loop, the completion, the waits.
    rests = [
        w - sum(v for k, v in p.items() if not k.startswith("garbage"))
        for w, p in zip(walls, per_cell, strict=True)
    ]
    out["the rest (creation, pump, completion, wake-ups)"] = statistics.median(rests)
    return {k: round(v * 1e3, 2) for k, v in out.items()}


if __name__ == "__main__":
    asyncio.run(main())
