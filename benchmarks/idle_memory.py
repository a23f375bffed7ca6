"""Memory per idle live cell, measured directly, and what V8 itself adds per isolate.

A live cell that waits on a tool holds its own isolate (its V8 heap, the prelude's closures, the
host's records of it). This script opens ``--cells`` such cells in one ``SessionRuntime`` (each
``await tools.hang({})``, a tool that never answers) after a warm-up, lets the isolate pool
refill and the garbage collector settle, and prints the process RSS growth divided by the number
of cells. Each measurement runs in a fresh child process, so one checkout's pages never count
for another's.

``--baseline SRC`` measures another checkout's ``src/`` too, alternately with this one,
``--alternations`` times each: the only comparison that holds on a shared machine.
``engines_compare``'s idle row measures the same thing right after its runaway phase, while
the pool may still refill; this script waits for the refill, so its figures are steadier.

``--v8-probes``: the V8 heap that touching a lazily made builtin adds to a fresh isolate (raw
mini-racer, no codemode): V8 makes ``Temporal`` (its namespace, every constructor and prototype)
on the first read of ``globalThis.Temporal``, even ``typeof Temporal``.

Run: ``.venv/bin/python benchmarks/idle_memory.py [--cells 200] [--baseline SRC]
[--alternations 2] [--v8-probes]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import subprocess
import sys
from pathlib import Path

MiB = 1 << 20
HERE = Path(__file__).resolve().parent
THIS_SRC = HERE.parent / "src"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _settle(engine: object) -> None:
    """Wait until the isolate pool refilled (private state, the same on older checkouts), then
    collect garbage twice."""
    pool = getattr(engine, "_pool", None)
    for _ in range(500):
        if pool is None or (
            getattr(pool, "_refill_handle", None) is None and not getattr(pool, "_filling", ())
        ):
            break
        await asyncio.sleep(0.002)
    await asyncio.sleep(0.3)
    gc.collect()
    gc.collect()


async def _child(n: int) -> float:
    """RSS growth per idle live cell (bytes), in this process."""
    from codemode import (
        CellLimits,
        Completed,
        CreateCellRequest,
        SessionRuntime,
        ToolDefinition,
        tools_delegate,
    )
    from codemode.engine.v8 import V8Engine

    hanging = 0
    all_hanging = asyncio.Event()

    async def hang(_: object) -> None:
        nonlocal hanging
        hanging += 1
        if hanging >= n:
            all_hanging.set()
        await asyncio.Event().wait()

    engine = V8Engine()
    limits = CellLimits(max_live_cells=n + 16, max_idempotency_keys=max(10_000, n + 16))
    tools = (ToolDefinition("hang"),)
    async with SessionRuntime(tools_delegate({"hang": hang}), limits=limits, engine=engine) as rt:
        for _ in range(5):  # warm: the isolate pool, the code paths, the allocator
            cell = await rt.create_cell(CreateCellRequest('text("hi")', ()))
            event = await rt.wait(cell, 60)
            assert isinstance(event, Completed) and event.error_text is None, event
        warm = [
            await rt.create_cell(CreateCellRequest("await tools.hang({})", tools)) for _ in range(5)
        ]
        for cell in warm:
            await rt.terminate(cell)
        hanging = 0
        await _settle(engine)
        before = _rss_bytes()
        cells = [
            await rt.create_cell(CreateCellRequest("await tools.hang({})", tools)) for _ in range(n)
        ]
        await asyncio.wait_for(all_hanging.wait(), 120)
        await _settle(engine)
        after = _rss_bytes()
        for cell in cells:
            await rt.terminate(cell)
    return (after - before) / n


def _measure(src: Path, n: int) -> float:
    env = dict(os.environ, PYTHONPATH=str(src))
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(n)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"the measurement on {src} failed:\n{out.stderr[-3000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def _v8_probes() -> None:
    from py_mini_racer import MiniRacer

    probes = {
        "nothing": "1",
        "typeof Temporal": "typeof Temporal",
        "Temporal.Now": "typeof Temporal.Now",
        "Intl.DateTimeFormat": "typeof Intl.DateTimeFormat.prototype.formatToParts",
    }
    print("V8 heap a read adds in a fresh isolate (KiB, over an eval of `1` in its place):")
    base = 0.0
    for name, source in probes.items():
        used = []
        for _ in range(3):
            mr = MiniRacer()
            try:
                mr.eval("1")
                start = mr.heap_stats()["used_heap_size"]
                mr.eval(source)
                used.append((mr.heap_stats()["used_heap_size"] - start) / 1024)
            finally:
                mr.close()
        if name == "nothing":
            base = statistics.median(used)
            continue
        print(f"  {name:22} {statistics.median(used) - base:7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=200, help="idle cells per measurement")
    parser.add_argument("--baseline", type=Path, help="another checkout's src/ to alternate with")
    parser.add_argument("--alternations", type=int, default=2)
    parser.add_argument("--v8-probes", action="store_true")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(asyncio.run(_child(args.child)))
        return
    if args.cells < 1 or args.alternations < 1:
        parser.error("--cells and --alternations must be at least 1")
    if args.baseline is not None and not (args.baseline / "codemode").is_dir():
        parser.error(f"--baseline {args.baseline}: no codemode package there")
    if args.v8_probes:
        _v8_probes()
    sides = {"this checkout": THIS_SRC}
    if args.baseline is not None:
        sides["baseline"] = args.baseline.resolve()
    figures: dict[str, list[float]] = {name: [] for name in sides}
    for i in range(args.alternations):
        for name, src in sides.items():
            per_cell = _measure(src, args.cells) / MiB
            figures[name].append(per_cell)
            print(f"  {i + 1}/{args.alternations} {name}: {per_cell:.3f} MiB", flush=True)
    print(f"RSS per idle live cell ({args.cells} cells, median of {args.alternations}):")
    for name, values in figures.items():
        print(f"  {name:14} {statistics.median(values):.3f} MiB  ({sides[name]})")


if __name__ == "__main__":
    main()
