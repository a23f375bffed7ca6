"""Benchmark: from a tool answer plus ``resume`` to the next pending frontier (docs/sessions.md).

One pausable cell on real V8 runs ``for (;;) await tools.step({i})``. A delegate parks every call
on a future (the synchronous host driver of docs/sessions.md). Each round starts at an observed frontier
and measures, with ``time.perf_counter``:

- ``answer_then_resume``: resolve the pending call's future, ``await resume(cell, g)``, then
  ``await wait_to_pending(cell)`` until frontier ``g + 1`` is returned;
- ``resume_then_answer``: the same in the other order (the resumed cell waits for the result);
- ``resume_call_only``: just the ``await resume(cell, g)`` call of the first variant.

Usage::

    .venv/bin/python benchmarks/resume_to_frontier.py [--rounds 1000] [--warmup 50]

It prints a table (median, p90, p99, mean, min, max in milliseconds) and writes the figures to
``benchmarks/results/resume_to_frontier.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from latency import latency_ms

from codemode import (
    CellLimits,
    CreateCellRequest,
    NestedToolCall,
    PausableCell,
    Pending,
    PendingFrontier,
    ResumeOutcome,
    SessionRuntime,
    ToolDefinition,
)

RESULTS = Path(__file__).resolve().parent / "results" / "resume_to_frontier.json"
STEP = ToolDefinition("step", "Returns its input when the host answers.")
SOURCE = "for (let i = 0; ; i++) { const r = await tools.step({i}); text(String(r.i)); }"


class ParkingDelegate:
    """Every call parks a future keyed by its call id until the benchmark answers it."""

    def __init__(self) -> None:
        self.futures: dict[str, asyncio.Future[Any]] = {}
        self.inputs: dict[str, Any] = {}

    def _future(self, call_id: str) -> asyncio.Future[Any]:
        future = self.futures.get(call_id)
        if future is None:
            future = self.futures[call_id] = asyncio.get_running_loop().create_future()
        return future

    async def invoke_tool(self, call: NestedToolCall) -> Any:
        self.inputs[call.call_id] = call.input
        try:
            return await self._future(call.call_id)
        finally:
            self.futures.pop(call.call_id, None)

    def answer(self, call_id: str, value: Any) -> None:
        self._future(call_id).set_result(value)

    async def notify(self, call_id: str, cell_id: str, text: str) -> None:
        return None


@dataclass(frozen=True)
class Summary:
    rounds: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float


def summarize(samples: list[float]) -> Summary:
    return Summary(rounds=len(samples), **latency_ms(samples))


async def next_frontier(rt: SessionRuntime, cell: PausableCell) -> PendingFrontier:
    event = await rt.wait_to_pending(cell)
    if not isinstance(event, Pending):
        raise RuntimeError(f"expected a frontier, got {event!r}")
    return event.frontier


async def measure(rounds: int, warmup: int) -> dict[str, list[float]]:
    delegate = ParkingDelegate()
    limits = CellLimits(max_tool_calls=10 * (rounds + warmup) + 10)
    samples: dict[str, list[float]] = {
        "answer_then_resume": [],
        "resume_then_answer": [],
        "resume_call_only": [],
    }
    async with SessionRuntime(delegate, limits=limits) as rt:
        cell = await rt.create_pausable_cell(CreateCellRequest(SOURCE, (STEP,)))
        frontier = await next_frontier(rt, cell)
        for variant in ("answer_then_resume", "resume_then_answer"):
            for n in range(warmup + rounds):
                (call_id,) = frontier.pending_tool_call_ids
                value = {"i": delegate.inputs.get(call_id, {}).get("i", n)}
                t0 = time.perf_counter()
                if variant == "answer_then_resume":
                    delegate.answer(call_id, value)
                    outcome = await rt.resume(cell, frontier.generation)
                    t_resumed = time.perf_counter()
                else:
                    outcome = await rt.resume(cell, frontier.generation)
                    delegate.answer(call_id, value)
                nxt = await next_frontier(rt, cell)
                t1 = time.perf_counter()
                if (
                    outcome is not ResumeOutcome.RESUMED
                    or nxt.generation != frontier.generation + 1
                ):
                    raise RuntimeError(f"unexpected round: {outcome}, {frontier} -> {nxt}")
                if n >= warmup:
                    samples[variant].append(t1 - t0)
                    if variant == "answer_then_resume":
                        samples["resume_call_only"].append(t_resumed - t0)
                frontier = nxt
        await rt.terminate(cell)
    return samples


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    samples = asyncio.run(measure(args.rounds, args.warmup))
    summaries = {name: summarize(values) for name, values in samples.items()}

    columns = ("median", "p90", "p99", "mean", "min", "max")
    header = f"{'variant':<22}{'rounds':>7}" + "".join(f"{c:>9}" for c in columns)
    print("resume -> next frontier, milliseconds (real V8)")
    print(header)
    print("-" * len(header))
    for name, s in summaries.items():
        print(
            f"{name:<22}{s.rounds:>7}{s.median_ms:>9.3f}{s.p90_ms:>9.3f}{s.p99_ms:>9.3f}"
            f"{s.mean_ms:>9.3f}{s.min_ms:>9.3f}{s.max_ms:>9.3f}"
        )

    report = {
        "benchmark": "resume_to_frontier",
        "description": "time from a tool answer plus resume() to the next pending frontier",
        "rounds": args.rounds,
        "warmup": args.warmup,
        "variants": {name: asdict(s) for name, s in summaries.items()},
        "environment": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
        },
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {args.output}")


if __name__ == "__main__":
    main()
