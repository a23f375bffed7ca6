"""Does `terminate` keep a cell's whole output when the stop path's last report is slow?

Each cell writes LINES text items right after a tool call answers, then spins for 145-225 ms;
`terminate` comes 30 ms after the cell was created, early in the spin. The stop path's report
of the cell (a drain queued behind the spinning step) runs when the spin ends and is cancelled
when its 0.2 s budget runs out, so with enough lines the cancel lands, in some cells, while the
drain finishes. mini-racer answers a task cancelled as it finishes "terminated" and drops its
result; the output must then come from the cell's journal (docs/safety.md, "Termination and
teardown"). Prints, per size, the cells whose output came back incomplete (any line missing)
and the median time `terminate` took.

Run: .venv/bin/python benchmarks/stop_salvage.py [--lines 30000 60000] [--cells 20]
     [--engine worker]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time

from codemode import (
    CellLimits,
    CreateCellRequest,
    SessionRuntime,
    Terminated,
    TextItem,
    ToolDefinition,
    tools_delegate,
)
from codemode.engine.v8 import V8Engine
from codemode.engine.worker import WorkerEngine


async def echo(value: object) -> object:
    return value


def source(lines: int, spin_ms: float) -> str:
    return (
        f"await tools.echo({{}}); for (let i = 0; i < {lines}; i++) text('line ' + i);"
        f" const t = Date.now(); while (Date.now() - t < {spin_ms:.0f}) {{}}"
    )


async def one(rt: SessionRuntime, lines: int) -> tuple[int, float]:
    """The number of text items the terminated cell gave back, and how long terminate took."""
    spin_ms = 185 + random.uniform(-40, 40)  # where the cancel lands varies from cell to cell
    cell = await rt.create_cell(
        CreateCellRequest(source(lines, spin_ms), (ToolDefinition("echo"),))
    )
    await asyncio.sleep(0.03)  # the call answered; the step is spinning
    started = time.perf_counter()
    event = await rt.terminate(cell)
    took = time.perf_counter() - started
    assert isinstance(event, Terminated), event
    return sum(isinstance(item, TextItem) for item in event.items), took


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, nargs="+", default=[30000, 60000])
    parser.add_argument("--cells", type=int, default=20)
    parser.add_argument(
        "--engine",
        choices=("in-process", "worker"),
        default="in-process",
        help="V8Engine (the default) or WorkerEngine (the same V8 engine in a worker process)",
    )
    args = parser.parse_args()
    limits = CellLimits(max_output_bytes=256 << 20)
    print(f"{'lines per cell':>15} {'cells':>6} {'incomplete':>11} {'terminate (median ms)':>22}")
    for lines in args.lines:
        engine = V8Engine() if args.engine == "in-process" else WorkerEngine()
        delegate = tools_delegate({"echo": echo})
        async with SessionRuntime(delegate, limits=limits, engine=engine) as rt:
            incomplete = 0
            took: list[float] = []
            for _ in range(args.cells):
                got, seconds = await one(rt, lines)
                incomplete += got != lines
                took.append(seconds * 1000)
        print(f"{lines:>15} {args.cells:>6} {incomplete:>11} {statistics.median(took):>22.0f}")


if __name__ == "__main__":
    asyncio.run(main())
