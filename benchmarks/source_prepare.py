"""What preparing a cell's source costs (docs/cells.md, "Source as models write it").

Measures, for a typical model cell and a 100 KB one, in TypeScript and in plain JavaScript: the
host-side preparation (fence, JSON check, TypeScript stripping with tree-sitter), the longest
stall of the event loop while :func:`prepare_source_async` runs, and V8's compile check of the
source (the prelude's ``compiles``, through the V8 engine's bridge: what the engine asks before
running TypeScript-looking JavaScript as written; ``start`` runs the same check first). Prints a
table and writes benchmarks/results/source_prepare.json.
Run: .venv/bin/python benchmarks/source_prepare.py.
Figures are medians; the machine's noise is large when other work runs.
"""

from __future__ import annotations

import asyncio
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from codemode.engine.base import CellBoot
from codemode.engine.source import prepare_source, prepare_source_async
from codemode.engine.v8 import V8Engine
from codemode.model import CellLimits

TYPICAL_TS = """\
interface Hit { id: string; title: string; score: number }
const res = (await tools.search({ q: "codemode" })) as { hits: Hit[] };
const top: Hit[] = res.hits.filter((h: Hit) => h.score > 0.5).slice(0, 5);
for (const h of top) {
  const detail = await tools.get({ id: h.id! });
  text(`${h.id}: ${(detail as any).title}`);
}
"""
TYPICAL_JS = """\
const res = await tools.search({ q: "codemode" });
const top = res.hits.filter(h => h.score > 0.5).slice(0, 5);
for (const h of top) {
  const detail = await tools.get({ id: h.id });
  text(`${h.id}: ${detail.title}`);
}
"""


def big(source: str, size: int = 100_000) -> str:
    block = "{\n" + source + "}\n"
    return block * (size // len(block) + 1)


def median_ms(fn: Any, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


async def _tick(gaps: list[float], done: asyncio.Event) -> None:
    last = time.perf_counter()
    while not done.is_set():
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now


async def loop_stall_ms(source: str, runs: int = 5) -> float:
    """The longest gap between 1 ms ticks of the loop while the source is prepared."""
    worst = []
    for _ in range(runs):
        gaps: list[float] = []
        done = asyncio.Event()
        task = asyncio.create_task(_tick(gaps, done))
        await asyncio.sleep(0.01)
        await prepare_source_async(source)
        done.set()
        await task
        worst.append(max(gaps))
    return statistics.median(worst) * 1000


async def v8_check_ms(source: str, runs: int) -> float:
    """The median time of the V8 engine's compile check of ``source``, in one cell."""
    engine = V8Engine(pool_size=0)
    cell: Any = await engine.open_cell(CellBoot("bench", "", (), {}, CellLimits(), False))
    try:
        await cell._eval(cell._bridge.compiles, source)
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            await cell._eval(cell._bridge.compiles, source)
            times.append(time.perf_counter() - started)
    finally:
        cell.close()
        await engine.aclose()
    return statistics.median(times) * 1000


async def main() -> None:
    rows: dict[str, dict[str, float]] = {}
    for name, source in [
        ("typical TypeScript", TYPICAL_TS),
        ("typical JavaScript", TYPICAL_JS),
        ("100 KB TypeScript", big(TYPICAL_TS)),
        ("100 KB JavaScript", big(TYPICAL_JS)),
    ]:
        runs = 200 if len(source) < 10_000 else 10
        rows[name] = {
            "chars": len(source),
            "prepare_ms": median_ms(lambda s=source: prepare_source(s), runs),
            "loop_stall_ms": await loop_stall_ms(source),
            "v8_compile_check_ms": await v8_check_ms(source, runs),
        }
    print(
        f"{'source':<20} {'chars':>8} {'prepare ms':>11} {'loop stall ms':>14} {'V8 check ms':>12}"
    )
    for name, row in rows.items():
        print(
            f"{name:<20} {row['chars']:>8.0f} {row['prepare_ms']:>11.3f} "
            f"{row['loop_stall_ms']:>14.1f} {row['v8_compile_check_ms']:>12.3f}"
        )
    out = Path(__file__).parent / "results" / "source_prepare.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": platform.platform(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
