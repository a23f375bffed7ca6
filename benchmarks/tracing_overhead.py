"""What tracing costs: cells with nested calls, with OpenTelemetry absent, imported without an SDK
(no-op spans) and with the SDK recording every span.

Each mode runs in a fresh interpreter, so "absent" really has no ``opentelemetry`` module loaded
(codemode then only looks ``opentelemetry.trace`` up in ``sys.modules`` once per cell). Prints a
table and writes benchmarks/results/tracing_overhead.json. Run: .venv/bin/python
benchmarks/tracing_overhead.py [--cells N] [--calls N]. Figures are medians; the machine's noise
is about 20 %.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

MODES = ("absent", "api-no-sdk", "sdk-recording")

CHILD = r"""
import asyncio, json, statistics, sys, time, timeit
mode, cells, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if mode == "api-no-sdk":
    import opentelemetry.trace  # noqa: F401  (imported, no provider: no-op spans)
elif mode == "sdk-recording":
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
from codemode import CellLimits, Completed, CreateCellRequest, SessionRuntime, ToolDefinition, tools_delegate
from codemode import tracing

ECHO = ToolDefinition("echo")
SOURCE = f"await Promise.all(Array.from({{length: {calls}}}, (_, i) => tools.echo({{i}}))); text('ok');"

async def echo(value):
    return value

async def main():
    limits = CellLimits(max_tool_calls=calls * 2, max_parallel_tool_calls=calls)
    async with SessionRuntime(tools_delegate({"echo": echo}), limits=limits) as rt:
        async def one():
            cell = await rt.create_cell(CreateCellRequest(SOURCE, (ECHO,)))
            event = await rt.wait(cell, 60)
            assert isinstance(event, Completed) and event.error_text is None, event
        for _ in range(20):
            await one()
        times = []
        for _ in range(cells):
            t = time.perf_counter()
            await one()
            times.append((time.perf_counter() - t) * 1000)
    hook = timeit.timeit(lambda: tracing.cell_started("c", "continuing", ""), number=20000) / 20000
    loaded = "opentelemetry" in sys.modules
    print(json.dumps({"median_ms": statistics.median(times), "hook_ns": hook * 1e9, "otel_loaded": loaded}))

asyncio.run(main())
"""


def run(mode: str, cells: int, calls: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(cells), str(calls)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cells", type=int, default=300)
    parser.add_argument("--calls", type=int, default=10)
    args = parser.parse_args()
    results = {mode: run(mode, args.cells, args.calls) for mode in MODES}
    print(f"cells of {args.calls} parallel nested calls, median over {args.cells} cells")
    print(f"{'mode':<16}{'cell ms':>10}{'hook ns':>12}  opentelemetry loaded")
    for mode, r in results.items():
        print(f"{mode:<16}{r['median_ms']:>10.3f}{r['hook_ns']:>12.0f}  {r['otel_loaded']}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    doc = {"python": platform.python_version(), **vars(args), "results": results}
    (out / "tracing_overhead.json").write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
