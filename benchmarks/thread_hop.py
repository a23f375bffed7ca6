"""What the thread hop costs against the V8 work: one sequential nested call at the engine level.

Runs ``for (...) n += (await tools.echo({i})).i`` in one V8 cell, answering each call straight
from the engine's report (no session, actor or delegate), three ways, and reports wall time and
CPU per call, split by thread (the thread driving the cell; the isolate's own thread; the rest):

- ``async``: the engine's own path, :meth:`_V8Cell.step` awaited on an event loop (the step and
  the drain submitted together; the drain's answer wakes the loop through
  ``call_soon_threadsafe``);
- ``sync``: the same bridge calls (inputs written into the inbox, step and drain submitted back
  to back) run on a plain thread that waits for the drain's answer itself (mini-racer's
  uncancelable-task queue): no event loop, no future, no task; the report is checked by the
  same :class:`CellAuthority` (not a safe engine: a runaway step here could not be abandoned).

The isolate's thread's CPU is V8's work for the step and its drain plus mini-racer's callback
into Python for each of the two tasks; the driving thread's is the hop's host side.

    .venv/bin/python benchmarks/thread_hop.py [--calls 2000] [--reps 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import threading
import time
from typing import Any

SEQ = "let n = 0; for (let i = 0; i < {n}; i++) n += (await tools.echo({{i}})).i; text(String(n))"


def _thread_cpu() -> dict[int, float]:
    """CPU seconds of every thread of this process, by native thread id."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def _boot(n: int) -> Any:
    from codemode import CellLimits, ToolDefinition
    from codemode.engine.base import CellBoot

    limits = CellLimits(max_tool_calls=n + 10, max_parallel_tool_calls=n + 10)
    return CellBoot("c1", SEQ.format(n=n), (ToolDefinition("echo"),), {}, limits, False)


def _answer(report: Any) -> list[Any]:
    from codemode.engine.base import ToolCallRequested, ToolResultInput

    return [
        ToolResultInput(ev.call_id, True, value_json=f'{{"i":{ev.input["i"]}}}')
        for ev in report.events
        if isinstance(ev, ToolCallRequested)
    ]


async def _run_async(n: int) -> tuple[float, dict[str, float]]:
    from codemode.engine.v8 import V8Engine

    engine = V8Engine(pool_size=0)
    cell: Any = await engine.open_cell(_boot(n))
    report = await cell.run()
    loop_tid = threading.get_native_id()
    before, t0 = _thread_cpu(), time.perf_counter()
    while report.settlement is None:
        report = await cell.step(_answer(report))
    wall = time.perf_counter() - t0
    after = _thread_cpu()
    assert report.settlement.error_text is None, report
    engine.close()
    return wall, _split(before, after, loop_tid)


def _run_sync(n: int) -> tuple[float, dict[str, float]]:
    from codemode.engine import v8
    from codemode.engine.source import prepare_source

    loop = asyncio.new_event_loop()  # mini-racer wants one to exist; never run
    isolate = v8._create_isolate(loop)
    cell: Any = v8._V8Cell(isolate, _boot(n))
    bridge, context = cell._bridge, cell._context
    scan = v8.scan_source(prepare_source(cell._boot.source).code)

    def command(fn: Any, *args: str) -> Any:
        # The step (its result kept, not converted) and the drain, submitted back to back.
        argv = bridge.argv[len(args)]
        for i, arg in enumerate(args):
            argv[i] = arg
        raw = bridge.bridge.raw_handle.raw
        bridge.native_call(context._ctx, fn.raw_handle.raw, raw, argv.raw_handle.raw, 0)
        bridge.native_call(
            context._ctx, bridge.drain.raw_handle.raw, raw, bridge.argv[0].raw_handle.raw, 0
        )
        results = context._non_cancelable_mr_task_results_queue
        results.get()
        return cell._authority.accept_raw(context._value_handle_to_python(results.get()))

    stored = cell._stored.json_text()
    report = command(bridge.start, cell._boot_config, stored, scan.source)
    tid = threading.get_native_id()
    before, t0 = _thread_cpu(), time.perf_counter()
    while report.settlement is None:
        inputs = _answer(report)
        cell._authority.inputs(inputs)
        assert cell._inbox.put(v8._step_text(inputs))
        report = command(bridge.step)
    wall = time.perf_counter() - t0
    after = _thread_cpu()
    assert report.settlement.error_text is None, report
    cell.close()
    loop.close()
    return wall, _split(before, after, tid)


def _split(before: dict[int, float], after: dict[int, float], driver: int) -> dict[str, float]:
    spent = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
    own = spent.pop(driver, 0.0)
    busiest = max(spent.values(), default=0.0)  # the isolate's thread
    return {"driver": own, "isolate": busiest, "rest": sum(spent.values()) - busiest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    from codemode.engine.v8 import _init_v8

    _init_v8()
    n = args.calls
    rows: dict[str, list[tuple[float, dict[str, float]]]] = {"async": [], "sync": []}
    for _ in range(args.reps):  # alternated, so both see the same load
        rows["async"].append(asyncio.run(_run_async(n)))
        rows["sync"].append(_run_sync(n))
    print(f"load {os.getloadavg()[0]:.1f}; {n} sequential calls per run, {args.reps} runs, medians")
    print(f"{'':6} {'wall us/call':>13} {'driver CPU':>11} {'isolate CPU':>12} {'rest':>6}")
    for name, runs in rows.items():
        wall = statistics.median(w for w, _ in runs) / n * 1e6
        cpu = {k: statistics.median(s[k] for _, s in runs) / n * 1e6 for k in runs[0][1]}
        print(
            f"{name:6} {wall:13.1f} {cpu['driver']:11.1f} {cpu['isolate']:12.1f} {cpu['rest']:6.1f}"
        )


if __name__ == "__main__":
    main()
