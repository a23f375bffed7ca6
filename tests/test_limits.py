"""Limits and hostile cells on real V8 (docs/safety.md; scenarios 66-71).

Each hostile cell must end with a clear ``error_text`` while the event loop keeps ticking and the
session's next cell still works.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import pytest

from codemode import (
    CellLimits,
    Completed,
    EngineError,
    SessionRuntime,
    TextItem,
)
from codemode.engine.v8 import V8Engine, wait_freed
from conftest import RecordingDelegate, engine_threads, request, rss_bytes
from scenarios import HANG_GAP, heartbeat


async def finish(rt: SessionRuntime, source: str, budget: float = 20) -> Completed:
    cell = await rt.create_cell(request(source))
    event = await asyncio.wait_for(rt.wait(cell, budget), budget + 5)
    assert isinstance(event, Completed), event
    return event


async def next_cell_works(rt: SessionRuntime) -> None:
    assert await finish(rt, "text(await tools.echo({ok: 1}))") == Completed((TextItem('{"ok":1}'),))


async def test_66_tool_call_limit(runtime: SessionRuntime) -> None:
    ev = await finish(
        runtime, 'text("before"); for (let i = 0; i < 1001; i++) await tools.echo({i})'
    )
    assert ev.error_text == "exec cell exceeded max_tool_calls (1000)"
    assert ev.items == (TextItem("before"),)
    await next_cell_works(runtime)


async def test_tool_call_limit_is_uncatchable(runtime: SessionRuntime) -> None:
    ev = await finish(
        runtime,
        "for (let i = 0; i < 1000; i++) await tools.echo({});"
        'try { await tools.echo({}) } catch (e) { text("caught") } text("after")',
    )
    assert ev.error_text == "exec cell exceeded max_tool_calls (1000)"
    assert ev.items == ()


async def test_67_parallel_calls_and_output_limits(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    # max_parallel_tool_calls is a bound, not a failure (docs/safety.md): the 101st call waits.
    cell = await runtime.create_cell(
        request("await Promise.all(Array.from({length: 101}, () => tools.block({}))); text('ok')")
    )
    await delegate.wait_calls(100)
    await asyncio.sleep(0.05)
    assert len(delegate.calls) == 100
    delegate.release("tool-1")
    await delegate.wait_calls(101)
    assert delegate.calls[-1].call_id == "tool-101"
    delegate.release()
    assert await runtime.wait(cell, 20) == Completed((TextItem("ok"),))
    ev = await finish(runtime, 'text("a"); for (;;) text("x".repeat(64 * 1024))')
    assert ev.error_text == "exec cell exceeded max_output_bytes (1048576)"
    assert sum(len(i.text) for i in ev.items if isinstance(i, TextItem)) <= 1024 * 1024
    assert ev.items[0] == TextItem("a")
    ev = await finish(runtime, 'for (;;) notify("n".repeat(100000))')
    assert ev.error_text == "exec cell exceeded max_output_bytes (1048576)"
    await next_cell_works(runtime)


async def test_68_cpu_limit(make_runtime: Any, delegate: RecordingDelegate) -> None:
    rt = make_runtime(CellLimits(max_cpu_seconds=0.5))
    async with heartbeat():
        started = time.monotonic()
        ev = await finish(rt, 'text("spin"); while (true) {}')
        elapsed = time.monotonic() - started
    assert ev.error_text == "exec cell exceeded max_cpu_seconds (0.5)"
    assert ev.items == (TextItem("spin"),)
    assert 0.4 < elapsed < 3.0
    cell = await rt.create_cell(request('await tools.block({}); text("waited")'))
    await delegate.wait_calls(1)
    await asyncio.sleep(1.0)  # waiting for a tool does not count
    delegate.release()
    assert await rt.wait(cell, 5) == Completed((TextItem("waited"),))


@pytest.mark.parametrize(
    "source",
    [
        "const a = []; while (true) a.push({x: Math.random(), y: [1, 2, 3]})",
        "let s = 'x'; while (true) s = s + s",
        "const a = []; while (true) a.push(new Uint8Array(1 << 20))",
        "const a = []; while (true) a.push(new ArrayBuffer(1 << 20))",
        "const a = []; while (true) a.push(new Float64Array(1 << 17).map(() => 1))",
        "const a = [new Uint8Array(1 << 20)]; while (true) a.push(a[a.length - 1].slice())",
        "new ArrayBuffer(1, {maxByteLength: 2 ** 31})",
        "const a = []; for (;;) { await tools.echo({}); a.push(new Uint8Array(8 << 20)) }",
    ],
)
async def test_69_heap_and_typed_array_bombs(runtime: SessionRuntime, source: str) -> None:
    rss_before = rss_bytes()
    async with heartbeat():
        ev = await finish(runtime, source)
    assert ev.error_text is not None
    assert "max_heap_bytes" in ev.error_text or "RangeError" in ev.error_text, ev.error_text
    # The host did not absorb the bomb: resident memory grew by far less than a runaway would.
    assert rss_bytes() - rss_before < 512 * 1024 * 1024
    await next_cell_works(runtime)


async def test_typed_arrays_that_are_dropped_are_reclaimed(runtime: SessionRuntime) -> None:
    # 40 rounds of 8 MiB each, dropped between awaits: 320 MiB in total, far above the cap.
    ev = await finish(
        runtime,
        "let sum = 0; for (let i = 0; i < 40; i++) {"
        "  const b = new Uint8Array(8 << 20); b[0] = 1; sum += b[0]; await tools.echo({}) }"
        "text(sum)",
    )
    assert ev == Completed((TextItem("40"),))


async def test_huge_single_allocation(runtime: SessionRuntime) -> None:
    ev = await finish(runtime, "try { new ArrayBuffer(2 ** 40) } catch (e) { text(e.name) }")
    assert ev.error_text is not None and "max_heap_bytes" in ev.error_text


async def test_70_deep_recursion(runtime: SessionRuntime) -> None:
    ev = await finish(runtime, "function f(n) { return f(n + 1) + 1 } f(0)")
    assert ev.error_text is not None and "RangeError" in ev.error_text
    assert "Maximum call stack size exceeded" in ev.error_text
    ev = await finish(
        runtime, "function f(n) { return f(n + 1) + 1 } try { f(0) } catch (e) { text(e.name) }"
    )
    assert ev == Completed((TextItem("RangeError"),))
    await next_cell_works(runtime)


async def test_71_cell_ids_and_live_cell_limit(make_runtime: Any) -> None:
    a = make_runtime(CellLimits(max_live_cells=2))
    b = make_runtime()
    ids = set()
    for rt in (a, b):
        for _ in range(2):
            cell = await rt.create_cell(request("await new Promise(() => {})"))
            assert re.fullmatch(r"[0-9abcdefghjkmnpqrstvwxyz]{16}", cell.cell_id)
            ids.add(cell.cell_id)
    assert len(ids) == 4
    with pytest.raises(EngineError) as info:
        await a.create_cell(request("text(1)"))
    assert str(info.value) == "code mode session has too many live cells (2)"
    await a.terminate(next(iter(a._core.cells)))
    await a.create_cell(request("text(1)"))  # a slot was freed


def test_limits_validation() -> None:
    for bad in (
        {"max_tool_calls": 0},
        {"max_cpu_seconds": -1.0},
        {"max_heap_bytes": 1.5},
        {"max_output_bytes": True},
        {"max_cpu_seconds": float("nan")},
        {"max_live_cells": 20, "max_idempotency_keys": 10},
    ):
        with pytest.raises(ValueError):
            CellLimits(**bad)  # type: ignore[arg-type]
    assert CellLimits().max_heap_bytes == 64 * 1024 * 1024


async def test_thousands_of_tool_calls(make_runtime: Any) -> None:
    rt = make_runtime(CellLimits(max_tool_calls=5000, max_parallel_tool_calls=2000))
    ev = await finish(
        rt,
        "let n = 0; for (let i = 0; i < 2000; i++) n += (await tools.echo({i})).i;"
        "const r = await Promise.all(Array.from({length: 2000}, (_, i) => tools.echo({i})));"
        "text(n); text(r.length)",
        budget=60,
    )
    assert ev == Completed((TextItem(str(sum(range(2000)))), TextItem("2000")))


async def test_megabytes_of_tool_result(runtime: SessionRuntime, make_runtime: Any) -> None:
    big = "x" * (200 * 1024 * 1024)  # built before the heartbeat: the test's own work

    class Big(RecordingDelegate):
        async def invoke_tool(self, call: Any) -> Any:
            return big

    rt = make_runtime(d=Big())
    async with heartbeat():
        cell = await rt.create_cell(request("const s = await tools.echo({}); text(s.length)"))
        ev = await asyncio.wait_for(rt.wait(cell, 30), 40)
    assert isinstance(ev, Completed)
    assert ev.error_text is not None
    assert (
        "tool `echo` returned more JSON than the cell's max_heap_bytes (67108864)" in ev.error_text
    )


async def test_large_tool_results_do_not_stall_the_loop(make_runtime: Any) -> None:
    wide = [{"id": i, "name": f"item {i}", "tags": ["a", "b"]} for i in range(200_000)]

    class Wide(RecordingDelegate):
        async def invoke_tool(self, call: Any) -> Any:
            return wide

    rt = make_runtime(d=Wide())
    # A result this large keeps a worker thread busy with the GIL; on a loaded machine the OS may
    # not run that thread for a while, and the loop waits for the GIL meanwhile. So up to three
    # runs: a host that blocked the loop would stall every run, scheduling noise does not.
    stalls = []
    for _ in range(3):
        async with heartbeat(HANG_GAP) as hb:  # fails only on a hang
            cell = await rt.create_cell(request("const r = await tools.echo({}); text(r.length)"))
            ev = await asyncio.wait_for(rt.wait(cell, 30), 40)
        assert ev == Completed((TextItem("200000"),))
        stalls.append(hb.max_stall)
        if hb.max_stall < 0.5:
            break
    assert min(stalls) < 0.5, f"event loop stalled for {[round(s, 3) for s in stalls]} s"


async def test_500_cells_leave_threads_and_memory_where_they_started(
    delegate: RecordingDelegate,
) -> None:
    # No isolate pool here: its pre-created isolates would count as threads.
    async with SessionRuntime(delegate, engine=V8Engine(pool_size=0)) as runtime:

        async def one() -> None:
            cell = await runtime.create_cell(request("text(await tools.echo({a: 1}))"))
            assert isinstance(await runtime.wait(cell, 10), Completed)

        for _ in range(50):  # warm up allocators and the executor
            await one()
        await wait_freed()
        threads, rss = engine_threads(), rss_bytes()
        for _ in range(500):
            await one()
        await wait_freed()
        assert engine_threads() <= threads + 1
        assert rss_bytes() - rss < 150 * 1024 * 1024
        assert len(runtime._core.cells) == 0
