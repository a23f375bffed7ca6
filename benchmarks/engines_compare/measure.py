"""Which engines can run here, and the measurement of one engine (in its own child process)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import importlib.util
import statistics
import sys
import time
from typing import Any

from engines_compare.common import (
    Adapter,
    MiB,
    NotPossible,
    expected_outputs,
    settle_memory,
    tree_memory,
)
from engines_compare.peer_codemode import CodemodeAdapter, CodemodeWorkerAdapter
from engines_compare.peer_deno import DenoProcessAdapter, DenoWorkerAdapter, find_deno
from engines_compare.peer_miniracer import MiniRacerAdapter
from engines_compare.peer_monty import MontyAdapter
from engines_compare.peer_quickjs import QuickJSAdapter


def missing_reason(engine: str) -> str | None:
    def has(module: str) -> bool:
        return importlib.util.find_spec(module) is not None

    setup = "run benchmarks/compare-setup.sh"
    if engine.startswith("codemode") and not has("codemode"):
        return "codemode is not installed in this interpreter"
    if engine == "mini-racer" and not has("py_mini_racer"):
        return "mini-racer is not installed"
    if engine == "quickjs-ng" and not has("_quickjs"):
        return f"quickjs-ng is not installed ({setup})"
    if engine == "monty" and not has("pydantic_monty"):
        return f"pydantic-monty is not installed ({setup})"
    if engine.startswith("deno") and find_deno() is None:
        return f"deno is not installed ({setup})"
    return None


def _summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "samples": values}


async def _attempt(result: dict[str, Any], key: str, coro: Any) -> None:
    """Run one workload; an error or a NotPossible becomes the row's value, not a crash."""
    try:
        result[key] = await coro
    except NotPossible as exc:
        result[key] = {"na": str(exc)}
    except Exception as exc:
        result[key] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        print(f"  {key}: {result[key]['error']}", file=sys.stderr)


async def measure_engine(engine: str, args: argparse.Namespace, script: str) -> dict[str, Any]:
    calls = args.calls
    expect = expected_outputs(calls)
    idle_n = {
        "codemode": args.idle,
        "codemode-worker": args.idle,
        "mini-racer": args.idle,
        "quickjs-ng": args.idle,
        "monty": args.idle_monty,
        "deno-worker": args.idle_deno_worker,
        "deno-process": args.idle_deno_process,
    }[engine]
    cells_n = args.cells_deno_process if engine == "deno-process" else args.cells
    adapter: Adapter
    if engine == "codemode":
        adapter = CodemodeAdapter(calls, idle_n)
    elif engine == "codemode-worker":
        adapter = CodemodeWorkerAdapter(calls, idle_n)
    elif engine == "mini-racer":
        adapter = MiniRacerAdapter(calls)
    elif engine == "quickjs-ng":
        adapter = QuickJSAdapter(calls)
    elif engine == "monty":
        adapter = MontyAdapter(calls, idle_n)
    elif engine == "deno-worker":
        adapter = DenoWorkerAdapter(calls, script)
    else:
        adapter = DenoProcessAdapter(calls, script)

    result: dict[str, Any] = {
        "bridge": " ".join((type(adapter).__doc__ or "").split()),
        "runaway_method": adapter.runaway_method,
    }
    with contextlib.suppress(Exception):
        result["versions"] = adapter.versions()
    with contextlib.suppress(Exception):
        size = adapter.installed_bytes()
        result["installed_mib"] = None if size is None else size / MiB

    def check(key: str, out: list[str]) -> None:
        if out != expect[key]:
            raise RuntimeError(f"{key}: expected {expect[key]}, got {str(out)[:200]}")

    async def timed(key: str, n: int, ahead: bool) -> list[float]:
        times = []
        for _ in range(n):
            await adapter.before_cell()
            sandbox = await adapter.make_ahead() if ahead else None
            t = time.perf_counter()
            out = await (adapter.run(key, sandbox) if ahead else adapter.run_cold(key))
            times.append((time.perf_counter() - t) * 1000)
            check(key, out)
        return times

    async def fresh_cold() -> dict[str, Any]:
        if isinstance(adapter, CodemodeAdapter):
            return _summary(await adapter.cold_phase(args.warmup, cells_n))
        await timed("fresh", min(args.warmup, cells_n), ahead=False)
        try:
            return _summary(await timed("fresh", cells_n, ahead=False))
        finally:
            if isinstance(adapter, MontyAdapter):
                await adapter.close_cold()

    # codemode's pool-less phase must run while no other V8Engine lives on this loop.
    if isinstance(adapter, CodemodeAdapter):
        await _attempt(result, "fresh_cold_ms", fresh_cold())
    await adapter.start()
    try:

        async def fresh_ahead() -> dict[str, Any]:
            await timed("fresh", args.warmup, ahead=True)
            return _summary(await timed("fresh", cells_n, ahead=True))

        await _attempt(result, "fresh_ahead_ms", fresh_ahead())
        if not isinstance(adapter, CodemodeAdapter):
            await _attempt(result, "fresh_cold_ms", fresh_cold())

        async def seq() -> dict[str, Any]:
            await timed("seq", 1, ahead=True)
            rates = [calls / (t / 1000) for t in await timed("seq", args.reps, ahead=True)]
            return _summary(rates)

        await _attempt(result, "seq_calls_per_s", seq())

        async def whole(key: str) -> dict[str, Any]:
            await timed(key, 1, ahead=True)
            return _summary(await timed(key, args.reps, ahead=True))

        await _attempt(result, "par_ms", whole("par"))
        await _attempt(result, "payload_ms", whole("payload"))

        async def compute() -> dict[str, Any]:
            # Also: how long the host's event loop is blocked while a cell computes (an engine
            # that runs JavaScript on the loop's own thread blocks it for the whole cell).
            gaps: list[float] = []
            last = time.perf_counter()

            async def ticker() -> None:
                nonlocal last
                while True:
                    await asyncio.sleep(0.001)
                    now = time.perf_counter()
                    gaps.append(now - last)
                    last = now

            tick = asyncio.ensure_future(ticker())
            try:
                await timed("compute", 1, ahead=True)  # warm-up, not counted
                await asyncio.sleep(0.005)
                gaps.clear()
                times = []
                for _ in range(args.reps):
                    await asyncio.sleep(0.005)  # the ticker runs between cells
                    times += await timed("compute", 1, ahead=True)
                gaps.append(time.perf_counter() - last)
                summary = _summary(times)
            finally:
                tick.cancel()
            summary["host_loop_max_stall_ms"] = max(gaps) * 1000
            return summary

        await _attempt(result, "compute_ms", compute())

        async def runaway() -> dict[str, Any]:
            stops, busy = [], []
            for _ in range(args.runaway_reps):
                ms, frac = await adapter.runaway()
                stops.append(ms)
                busy.append(frac)
            summary = _summary(stops)
            summary["cpu_busy_after_stop"] = max(busy)
            summary["method"] = adapter.runaway_method
            if isinstance(adapter, MontyAdapter):
                limits = [await adapter.runaway_time_limit() for _ in range(args.runaway_reps)]
                summary["in_sandbox_time_limit_ms_past_limit"] = _summary(limits)
            if isinstance(adapter, QuickJSAdapter):
                summary["wall_ms_past_limit"] = _summary(adapter.wall_past_limit)
            return summary

        await _attempt(result, "runaway_ms", runaway())

        async def idle() -> dict[str, Any]:
            await adapter.before_cell()
            await adapter.prepare_idle(idle_n)
            await asyncio.sleep(0.3)  # let background work (pool refills, reaping) settle
            settle_memory()
            before = tree_memory()
            await adapter.open_idle(idle_n)
            await asyncio.sleep(0.3)
            settle_memory()
            after = tree_memory()
            await adapter.close_idle()
            return {
                "n": idle_n,
                "pss_mib_per_cell": (after["pss"] - before["pss"]) / MiB / idle_n,
                "rss_mib_per_cell": (after["rss"] - before["rss"]) / MiB / idle_n,
                "threads_per_cell": (after["threads"] - before["threads"]) / idle_n,
                "processes_per_cell": (after["processes"] - before["processes"]) / idle_n,
            }

        await _attempt(result, "idle_memory", idle())
    finally:
        await adapter.close()
    return result


# ---------------------------------------------------------------------------------------------
# The parent: machine facts, one child process per engine and run, the table


ROWS: list[tuple[str, str, str]] = [
    # (result key, label, how to print)
    ("fresh_ahead_ms", "fresh cell, sandbox made ahead (ms)", "ms"),
    ("fresh_cold_ms", "fresh cell, sandbox made on demand (ms)", "ms"),
    ("seq_calls_per_s", "{calls} sequential host calls (calls/s)", "rate"),
    ("par_ms", "{calls} calls in one Promise.all (ms)", "ms"),
    ("payload_ms", "cell echoing 1 MiB once (ms)", "ms"),
    ("compute_ms", "compute: 1e6-step loop (ms)", "ms"),
    ("stall_ms", "  host event loop blocked up to (ms)", "ms"),
    ("runaway_ms", "stop while(true), ms after deadline", "ms"),
    ("idle_rss", "memory per idle live cell (MiB, RSS)", "mib"),
    ("idle_pss", "  same, PSS (MiB)", "mib"),
    ("idle_threads", "  threads / processes per idle cell", "tp"),
    ("installed_mib", "installed size (MiB)", "mib"),
]
