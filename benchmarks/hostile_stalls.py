"""The longest event-loop stall each hostile attack causes (docs/safety.md; target: 50 ms).

Runs each attack of the hostile-cell suite's kind in a fresh session, with a 1 ms heartbeat on
the loop, and prints the longest gap between two ticks and how the cell ended.
Run: .venv/bin/python benchmarks/hostile_stalls.py
"""

from __future__ import annotations

import asyncio
import time

from codemode import CellLimits, CreateCellRequest, SessionRuntime, ToolDefinition, tools_delegate

ATTACKS = {
    "heap after await": "await tools.echo({}); const a = []; for (;;) a.push({x: Math.random()})",
    "typed arrays 640 MiB": "const a = [];"
    "for (let i = 0; i < 80; i++) a.push(new Uint8Array(8 << 20))",
    "fromBase64 flood": 'const s = "A".repeat(1 << 20); const a = [];'
    "for (let i = 0; i < 900; i++) a.push(Uint8Array.fromBase64(s))",
    "set+clear 1M timers": "for (let i = 0; i < 1e6; i++) clearTimeout(setTimeout(() => {}, 1e9))",
    "300k timers": "try { for (let i = 0; i < 3e5; i++) setTimeout(() => {}, 1e9) } catch (e) {}",
    "1M yield_control": "for (let i = 0; i < 1e6; i++) yield_control()",
    "empty text flood": "for (;;) text('')",
    "2 MB echo x50": 'const s = "x".repeat(2 << 20);'
    "for (let i = 0; i < 50; i++) await tools.echo({s})",
    "100k stores": "for (let i = 0; i < 1e5; i++) store('k' + i, i)",
}


async def measure(source: str) -> tuple[float, str]:
    rt = SessionRuntime(
        tools_delegate({"echo": lambda x: x}), limits=CellLimits(max_stored_bytes=64 << 20)
    )
    gap = 0.0
    stop = False

    async def beat() -> None:
        nonlocal gap
        last = time.monotonic()
        while not stop:
            await asyncio.sleep(0.001)
            now = time.monotonic()
            gap = max(gap, now - last)
            last = now

    task = asyncio.ensure_future(beat())
    try:
        cell = await rt.create_cell(CreateCellRequest(source, tools=(ToolDefinition("echo"),)))
        event = await rt.wait(cell, 60)
        ended = getattr(event, "error_text", None) or type(event).__name__
    finally:
        stop = True
        await task
        await rt.shutdown()
    return gap, ended


async def main() -> None:
    print(f"{'attack':24} {'max stall':>10}  outcome")
    for name, source in ATTACKS.items():
        gap, ended = await measure(source)
        print(f"{name:24} {gap * 1000:8.1f} ms  {ended[:70]}")


if __name__ == "__main__":
    asyncio.run(main())
