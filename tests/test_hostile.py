"""Hostile cells: every limit attacked through every route we know (docs/safety.md).

The suite runs once per engine in ``hostile_engines.ENGINE_FACTORIES``. Every attack must end the
cell with a clear ``error_text`` (or be harmless), while the host's event loop keeps ticking
(heartbeat-checked) and the session's next cell still works.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from codemode import (
    CellLimits,
    Completed,
    PausableCell,
    Pending,
    SessionRuntime,
    Terminated,
    TextItem,
    ToolDefinition,
    Yielded,
)
from codemode.cell.stored import StoredSnapshot
from codemode.engine import drain, v8
from codemode.engine.base import (
    CellBoot,
    Engine,
    OutputProduced,
    ToolCallRequested,
    ToolResultInput,
)
from codemode.engine.drain import stopped_events
from codemode.engine.v8 import V8Engine
from conftest import RecordingDelegate, request, rss_bytes
from hostile_engines import ENGINE_FACTORIES
from scenarios import Heartbeat
from scenarios import heartbeat as loop_heartbeat

# The target is 50 ms; on a loaded 2-core CI machine scheduling noise alone reaches
# ~100 ms, so the bound here catches real stalls (the attacks below stalled 1-3 s) without
# flaking. benchmarks/hostile_stalls.py measures the actual gaps.
STALL_BOUND = 0.3
HANG = 30.0
MiB = 1024 * 1024


@asynccontextmanager
async def heartbeat() -> AsyncIterator[Heartbeat]:
    # The pytest process carries the heap of every test before this one (Ray's driver among
    # them): a full collection of it alone can pause the loop for 0.3 s. Freeze what exists, so
    # the heartbeat measures what the cell makes the host do.
    gc.collect()
    gc.freeze()
    try:
        async with loop_heartbeat(STALL_BOUND, interval=0.002) as hb:
            yield hb
    finally:
        gc.unfreeze()


@pytest.fixture(
    params=[factory for _, factory in ENGINE_FACTORIES], ids=[n for n, _ in ENGINE_FACTORIES]
)
def engine_factory(request: pytest.FixtureRequest) -> Callable[[], Engine]:
    factory: Callable[[], Engine] = request.param
    return factory


@pytest.fixture
async def make_rt(
    engine_factory: Callable[[], Engine], delegate: RecordingDelegate
) -> AsyncIterator[Callable[..., SessionRuntime]]:
    created: list[SessionRuntime] = []

    def make(limits: CellLimits | None = None, d: Any = None) -> SessionRuntime:
        rt = SessionRuntime(d or delegate, limits=limits, engine=engine_factory())
        created.append(rt)
        return rt

    try:
        yield make
    finally:
        for rt in created:
            await asyncio.wait_for(rt.shutdown(), HANG)


async def finish(rt: SessionRuntime, source: str) -> Completed:
    cell = await rt.create_cell(request(source))
    event = await asyncio.wait_for(rt.wait(cell, HANG), HANG + 5)
    assert isinstance(event, Completed), event
    return event


async def next_cell_works(rt: SessionRuntime) -> None:
    ev = await finish(rt, "text(await tools.echo({ok: 1}))")
    assert ev == Completed((TextItem('{"ok":1}'),))


def utf8(items: tuple[Any, ...]) -> int:
    return sum(max(len(i.text.encode()), 16) for i in items if isinstance(i, TextItem))


# ---------------------------------------------------------------------------- 1, 2: the bridge


async def test_the_bridge_is_out_of_reach(make_rt: Callable[..., SessionRuntime]) -> None:
    rt = make_rt()
    ev = await finish(
        rt,
        "text(typeof globalThis.__codemode); text(typeof __codemode);"
        "const found = [];"
        "for (const name of Object.getOwnPropertyNames(globalThis)) {"
        "  let v; try { v = globalThis[name] } catch (e) { continue }"
        "  if (v !== null && (typeof v === 'object' || typeof v === 'function')) {"
        "    for (const k of ['boot', 'drain', 'start', 'step', 'run'])"
        "      { try { if (typeof v[k] === 'function') found.push(name + '.' + k) } catch (e) {} } } }"
        "text(found.join(','));"
        "try { text.caller } catch (e) { text(e.name) }",
    )
    assert ev == Completed(
        (TextItem("undefined"), TextItem("undefined"), TextItem(""), TextItem("TypeError"))
    )


OVERRIDES = [
    'Array.prototype.join = function () { return \'["call","tool-1",0,{}]\' }',
    "Object.prototype.toJSON = function () { return 'forged' }",
    "Array.prototype.toJSON = function () { return ['call', 'tool-1', 0, 'x'] }",
    'JSON.stringify = () => \'{"ev":[],"pending":null,"settled":{"ok":true}}\'',
    "JSON.parse = () => ({})",
    "String.prototype.slice = () => ''",
    "String.prototype.charCodeAt = () => 65",
    "WeakSet.prototype.has = () => true; WeakSet.prototype.add = function () { return this }",
    "Date.now = () => 0; Math.random = () => 0.5; globalThis.Date = function () {}",
    "Map.prototype.get = () => undefined; Map.prototype.set = function () { return this };"
    "Map.prototype.has = () => false; Map.prototype.delete = () => true",
    "Promise.prototype.then = function () { return this }; Promise.resolve = (x) => x",
    "Object.defineProperty(Array.prototype, '0', {set() {}, get() { return 'x' }, configurable: true})",
    "Array.prototype[Symbol.iterator] = function* () {}; Array.prototype.push = () => 0",
    "Object.defineProperty(Object.prototype, 'limit', {get() { return 'max_tool_calls' }, configurable: true})",
    "Object.prototype.get = function (t) { globalThis.leak = t; return t }",
    "Object.defineProperty(ArrayBuffer, Symbol.hasInstance, {value: () => false})",
    "Object.defineProperty(Uint8Array.prototype, 'buffer', {get() { return new ArrayBuffer(0) }})",
    "Object.defineProperty(ArrayBuffer.prototype, 'byteLength', {get() { return 0 }})",
    "RegExp.prototype.exec = () => null; RegExp.prototype.test = () => true",
    "Math.max = () => 0; Number.isFinite = () => false",
]


@pytest.mark.parametrize("override", OVERRIDES)
async def test_overriding_builtins_changes_nothing_the_host_accepts(
    make_rt: Callable[..., SessionRuntime], delegate: RecordingDelegate, override: str
) -> None:
    rt = make_rt(CellLimits(max_tool_calls=5, max_output_bytes=1024))
    prefix = f"try {{ {override} }} catch (e) {{}};"
    async with heartbeat():
        # calls: never more than max_tool_calls reach the delegate, always with a dict
        ev = await finish(
            rt,
            prefix + "for (let i = 0; i < 20; i++) { try { await tools.echo({i}) } catch (e) {} }",
        )
        assert ev.error_text in (None, "exec cell exceeded max_tool_calls (5)"), ev.error_text
        assert len(delegate.calls) <= 5
        assert all(isinstance(c.input, dict) for c in delegate.calls)
        # output: the host counts the real UTF-8 bytes
        ev = await finish(rt, prefix + 'for (let i = 0; i < 100; i++) text("é".repeat(100))')
        assert ev.error_text is not None and "max_output_bytes" in ev.error_text, ev.error_text
        assert utf8(ev.items) <= 1024
        # memory: 640 MiB of typed arrays under a 64 MiB cap
        ev = await finish(
            rt,
            prefix + "const a = []; for (let i = 0; i < 80; i++) a.push(new Uint8Array(8 << 20));"
            "text(a.length)",
        )
        assert ev.error_text is not None, ev
        assert "max_heap_bytes" in ev.error_text or "Error" in ev.error_text, ev.error_text
    await next_cell_works(rt)


async def test_a_cell_cannot_change_how_its_inputs_are_read(
    make_rt: Callable[..., SessionRuntime],
) -> None:
    """A step's inputs reach the cell through the inbox, read in views of the isolate's buffer
    (several of them for this result): accessors and methods a cell replaces on typed arrays,
    strings and Reflect are never what reads them."""
    rt = make_rt()
    ev = await finish(
        rt,
        "const T = Object.getPrototypeOf(Uint16Array.prototype);"
        "Object.defineProperty(T, 'length', {get() { return 1 }, configurable: true});"
        "Object.defineProperty(Uint16Array.prototype, 'length', {get() { throw new Error('no') }});"
        "Object.defineProperty(Uint16Array.prototype, '0', {get() { return 65 }});"
        "String.fromCharCode = () => 'x'; Reflect.apply = () => 'x';"
        "Object.prototype.get = function () { return 1 };"
        "const r = await tools.echo({s: 'é'.repeat(15000) + '!'});"
        "text(r.s.length + ':' + r.s.slice(0, 2) + r.s.slice(-1))",
    )
    assert ev == Completed((TextItem("15001:éé!"),))
    await next_cell_works(rt)


# ---------------------------------------------------------------------------- every route


PNG = "data:image/png;base64," + "A" * 200


@pytest.mark.parametrize(
    "source",
    [
        'for (;;) text("é".repeat(100))',
        'for (;;) console.log("x", "é".repeat(100))',
        'for (;;) notify("n".repeat(100))',
        f'for (;;) image("{PNG}")',
        f'for (;;) image({{type: "image", data: "{"A" * 200}", mimeType: "image/png"}})',
        'await tools.echo({}); for (;;) text("")',
        'setTimeout(() => { for (;;) console.error("") }, 1); await tools.block({})',
        'String.prototype.charCodeAt = () => 65; for (;;) text("é".repeat(100))',
    ],
)
async def test_output_limit_on_every_route(
    make_rt: Callable[..., SessionRuntime], delegate: RecordingDelegate, source: str
) -> None:
    rt = make_rt(CellLimits(max_output_bytes=4096))
    async with heartbeat():
        ev = await finish(rt, source)
    assert ev.error_text == "exec cell exceeded max_output_bytes (4096)", ev.error_text
    cost = 0
    for item in ev.items:
        content = item.text if isinstance(item, TextItem) else item.image_url
        cost += max(len(content.encode()), 16)
    assert cost <= 4096
    delegate.release()


@pytest.mark.parametrize(
    "source",
    [
        "for (;;) await tools.echo({})",
        "await Promise.all(Array.from({length: 50}, (_, i) => tools.echo({i})))",
        "for (let i = 0; i < 50; i++) setTimeout(() => tools.echo({i}), 0); await tools.block({})",
        "await tools.echo({}).then(async () => { for (;;) await tools.echo({}) })",
        "for (let i = 0; i < 50; i++) { try { await tools.upper('x') } catch (e) {} }",
    ],
)
async def test_call_limit_on_every_route(
    make_rt: Callable[..., SessionRuntime], delegate: RecordingDelegate, source: str
) -> None:
    rt = make_rt(CellLimits(max_tool_calls=8))
    async with heartbeat():
        ev = await finish(rt, source)
    assert ev.error_text == "exec cell exceeded max_tool_calls (8)", ev.error_text
    assert len(delegate.calls) <= 8
    delegate.release()


@pytest.mark.parametrize(
    "source",
    [
        "while (true) {}",
        "await tools.echo({}); while (true) {}",
        "setTimeout(() => { while (true) {} }, 1); await tools.block({})",
        "await Promise.resolve().then(() => { while (true) {} })",
    ],
)
async def test_cpu_limit_on_every_route(
    make_rt: Callable[..., SessionRuntime], delegate: RecordingDelegate, source: str
) -> None:
    rt = make_rt(CellLimits(max_cpu_seconds=0.5))
    async with heartbeat():
        ev = await finish(rt, 'text("before");' + source)
    assert ev.error_text == "exec cell exceeded max_cpu_seconds (0.5)", ev.error_text
    assert ev.items == (TextItem("before"),)
    delegate.release()
    await next_cell_works(rt)


@pytest.mark.parametrize(
    ("source", "field"),
    [
        ('for (;;) { try { text("x".repeat(1000)) } catch (e) {} }', "max_output_bytes"),
        (
            'await tools.echo({}); for (;;) { try { notify("n".repeat(999)) } catch (e) {} }',
            "max_output_bytes",
        ),
        ("for (;;) { try { tools.echo({}) } catch (e) {} }", "max_tool_calls"),
        (
            "await tools.echo({}); for (;;) { try { new Uint8Array(8 << 20) } catch (e) {} }",
            "max_heap_bytes",
        ),
    ],
)
async def test_a_limit_caught_in_an_endless_loop_still_ends_the_cell_at_once(
    make_rt: Callable[..., SessionRuntime], source: str, field: str
) -> None:
    rt = make_rt(CellLimits(max_tool_calls=10, max_output_bytes=8192))
    started = time.monotonic()
    async with heartbeat():
        ev = await finish(rt, source)
    assert ev.error_text is not None and ev.error_text.startswith(f"exec cell exceeded {field} ")
    assert time.monotonic() - started < 10.0  # not the 30 s CPU budget
    await next_cell_works(rt)


# ---------------------------------------------------------------------------- 3: heap limit


@pytest.mark.parametrize(
    "source",
    [
        "await tools.echo({}); const a = []; while (true) a.push({x: Math.random()})",
        "await new Promise(r => setTimeout(r, 1)); const a = []; for (;;) a.push('x'.repeat(100) + a.length)",
        "Promise.resolve().then(() => { const a = []; for (;;) a.push([1, 2, 3]) }); await tools.block({})",
        "setTimeout(() => { const a = []; for (;;) a.push({}) }, 1); await tools.block({})",
        "await tools.echo({}).then(() => { const a = []; for (;;) a.push([a.length]) })",
    ],
)
async def test_heap_limit_after_the_first_await(
    make_rt: Callable[..., SessionRuntime], delegate: RecordingDelegate, source: str
) -> None:
    rt = make_rt()
    async with heartbeat():
        ev = await finish(rt, source)
    assert ev.error_text == "exec cell exceeded max_heap_bytes (67108864)", ev
    delegate.release()
    await next_cell_works(rt)


async def test_big_tool_results_are_data_not_source(make_rt: Callable[..., SessionRuntime]) -> None:
    rt = make_rt()
    ev = await finish(
        rt,
        'const s = "x".repeat(2 << 20); let n = 0;'
        "for (let i = 0; i < 50; i++) { const r = await tools.echo({s}); n += r.s.length }"
        "text(n)",
    )
    assert ev == Completed((TextItem(str(50 * (2 << 20))),))


# ---------------------------------------------------------------------------- 4: array buffers


@pytest.mark.parametrize(
    "source",
    [
        'const s = "A".repeat(1 << 20); const a = []; for (let i = 0; i < 900; i++) a.push(Uint8Array.fromBase64(s))',
        'const s = "ab".repeat(1 << 20); const a = []; for (let i = 0; i < 700; i++) a.push(Uint8Array.fromHex(s))',
        "const a = []; for (let i = 0; i < 80; i++) { const b = new ArrayBuffer(0, {maxByteLength: 8 << 20}); b.resize(8 << 20); a.push(b) }",
        "const a = []; for (let i = 0; i < 80; i++) a.push(new ArrayBuffer(1).transfer(8 << 20))",
        "const a = []; for (let i = 0; i < 80; i++) a.push(new ArrayBuffer(1).transferToFixedLength(8 << 20))",
        "const a = [new Float64Array(1 << 20)]; for (let i = 0; i < 80; i++) a.push(a[0].map(x => x))",
        "const a = []; for (let i = 0; i < 80; i++) a.push(new Uint8Array(new ArrayBuffer(8 << 20)))",
        "WeakSet.prototype.has = () => true;"
        "const a = []; for (let i = 0; i < 80; i++) a.push(new Uint8Array(8 << 20))",
        "const a = []; for (let i = 0; i < 80; i++) { await tools.echo({}); a.push(new BigInt64Array(1 << 20)) }",
        "const a = []; for (let i = 0; i < 80; i++) a.push(Uint8Array.from({length: 8 << 20}))",
    ],
)
async def test_array_buffer_memory_is_counted_on_every_route(
    make_rt: Callable[..., SessionRuntime], source: str
) -> None:
    rt = make_rt()
    rss_before = rss_bytes()
    async with heartbeat():
        ev = await finish(rt, source + ";text('survived')")
    assert ev.error_text == "exec cell exceeded max_heap_bytes (67108864)", ev
    assert rss_bytes() - rss_before < 400 * MiB
    await next_cell_works(rt)


# ---------------------------------------------------------------------------- 5: stored values


async def test_stored_values_budget_at_store_and_at_commit(
    make_rt: Callable[..., SessionRuntime], delegate: RecordingDelegate
) -> None:
    rt = make_rt(CellLimits(max_stored_bytes=MiB))
    assert await finish(rt, 'store("a", "x".repeat(600000))') == Completed(())
    ev = await finish(rt, 'text("before"); store("b", "y".repeat(600000)); text("after")')
    assert ev == Completed((TextItem("before"),), f"exec cell exceeded max_stored_bytes ({MiB})")
    # overwriting frees what the key held
    assert await finish(rt, 'store("a", "z".repeat(900000)); text(load("a").length)') == Completed(
        (TextItem("900000"),)
    )
    # two cells each within budget alone: the second commit would pass it and fails instead
    first = await rt.create_cell(request('await tools.block({}); store("c", "1".repeat(100000))'))
    second = await rt.create_cell(
        request('await tools.echo({}); await tools.block({}); store("d", "2".repeat(100000))')
    )
    await delegate.wait_calls(3)
    delegate.release("tool-1")  # the first cell's block (the second's tool-1 was echo)
    assert await asyncio.wait_for(rt.wait(first, HANG), HANG) == Completed(())
    delegate.release("tool-2")
    waited = await asyncio.wait_for(rt.wait(second, HANG), HANG)
    assert waited == Completed((), f"exec cell exceeded max_stored_bytes ({MiB})")
    ev = await finish(rt, 'text(load("c").length); text(String(load("d")))')
    assert ev == Completed((TextItem("100000"), TextItem("undefined")))


async def test_stored_value_poison(make_rt: Callable[..., SessionRuntime]) -> None:
    rt = make_rt()
    ev = await finish(
        rt,
        'store("__proto__", {a: 1}); store("o", JSON.parse(\'{"__proto__": {"polluted": 1}}\'));'
        "let deep = []; for (let i = 0; i < 600; i++) deep = [deep];"
        'try { store("deep", deep) } catch (e) { text(e.message) }',
    )
    assert ev == Completed(
        (
            TextItem(
                'Unable to store "deep". Values nested deeper than 128 levels cannot be stored.'
            ),
        )
    )
    ev = await finish(
        rt,
        'text(JSON.stringify(load("__proto__"))); const o = load("o");'
        "text(String(o.polluted)); text(Object.keys(o).join()); text(String(load('deep')))",
    )
    assert ev == Completed(
        (TextItem('{"a":1}'), TextItem("undefined"), TextItem("__proto__"), TextItem("undefined"))
    )


async def test_a_full_store_does_not_poison_later_cells(
    make_rt: Callable[..., SessionRuntime],
) -> None:
    rt = make_rt()
    for key in "abc":  # 15 MB of the 16 MiB budget
        assert await finish(rt, f'store("{key}", "x".repeat(5000000))') == Completed(())
    ev = await finish(rt, 'store("d", "y".repeat(5000000))')
    assert ev.error_text == f"exec cell exceeded max_stored_bytes ({16 * MiB})"
    assert await finish(rt, "text(1)") == Completed((TextItem("1"),))
    ev = await finish(rt, "const a = []; for (let i = 0; i < 3e5; i++) a.push({i}); text(a.length)")
    assert ev == Completed((TextItem("300000"),))
    assert await finish(rt, 'text(load("c").length)') == Completed((TextItem("5000000"),))


async def test_tool_result_proto_key_is_data(
    make_rt: Callable[..., SessionRuntime], delegate: RecordingDelegate
) -> None:
    rt = make_rt()
    cell = await rt.create_cell(
        request(
            "const r = await tools.block({}); text(String(r.polluted));"
            "text(String(Object.getPrototypeOf(r) === Object.prototype)); text(Object.keys(r).join())"
        )
    )
    await delegate.wait_calls(1)
    delegate.release(delegate.calls[0].call_id, {"__proto__": {"polluted": 1}})
    ev = await asyncio.wait_for(rt.wait(cell, HANG), HANG)
    assert ev == Completed((TextItem("undefined"), TextItem("true"), TextItem("__proto__")))


async def test_a_million_small_values_do_not_stall_create_cell(
    make_rt: Callable[..., SessionRuntime],
) -> None:
    # Loading parses the snapshot inside the cell: a million values need more than 64 MiB.
    rt = make_rt(CellLimits(max_heap_bytes=256 * MiB, max_stored_bytes=64 * MiB))
    async with heartbeat():
        # many values through cells (the host checks each write, off the loop)
        ev = await finish(rt, "for (let i = 0; i < 100000; i++) store('s' + i, i)")
        assert ev == Completed(())
    # then a session map of a million values, as many cells would have left it
    values = {f"k{i}": i for i in range(1_000_000)}
    rt._core.stored = StoredSnapshot.from_values(values).merged(
        {k: str(v) for k, v in load_all(rt).items()}, 64 * MiB
    )
    async with heartbeat():
        for _ in range(2):
            cell = await rt.create_cell(request("text(load('k999999')); text(load('s99999'))"))
            waited = await asyncio.wait_for(rt.wait(cell, HANG), HANG)
            assert waited == Completed((TextItem("999999"), TextItem("99999")))


async def test_large_reports_are_checked_off_the_event_loop(
    make_rt: Callable[..., SessionRuntime], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A report too large to check on the loop goes to a thread, whether the cell's first run
    or a later step made it (the in-process engine's run was once checked on the loop: a
    100,000-store cell then stalled the loop for 0.3 s)."""
    from codemode.engine import drain

    threads: list[bool] = []
    check = drain.check_report

    def recording(*args: Any) -> Any:
        threads.append(threading.current_thread() is threading.main_thread())
        return check(*args)

    monkeypatch.setattr(drain, "check_report", recording)
    rt = make_rt()
    big = 'text("x".repeat(100000))'
    ev = await finish(rt, f"{big}; await tools.echo({{}}); {big}")
    assert ev == Completed((TextItem("x" * 100000),) * 2)
    assert threads == [False, False]  # the run's report and the step's, each on a thread
    threads.clear()
    # A short report with many runs of reads goes there too: a clock read in each of 2,100
    # milliseconds is one run each (equal reads in a row are one run).
    spin = "const t = Date.now(); while (Date.now() - t < 2100) {} text('ok')"
    ev = await finish(rt, spin)
    assert ev == Completed((TextItem("ok"),))
    assert threads == [False]


def load_all(rt: SessionRuntime) -> dict[str, Any]:
    return dict(rt._core.stored.items())


# ---------------------------------------------------------------------------- 6: host structures


def _actor(rt: SessionRuntime, cell: Any) -> Any:
    return rt._core.cells[cell.cell_id]


async def test_cleared_timers_leave_no_host_entries(
    make_rt: Callable[..., SessionRuntime], delegate: RecordingDelegate
) -> None:
    rt = make_rt()
    async with heartbeat():
        cell = await rt.create_cell(
            request(
                "for (let i = 0; i < 1000000; i++) clearTimeout(setTimeout(() => {}, 1e9));"
                "const ids = []; for (let i = 0; i < 5000; i++) ids.push(setTimeout(() => {}, 1e9));"
                "await tools.echo({});"
                "for (const id of ids) clearTimeout(id);"
                "for (let i = 0; i < 100000; i++) clearTimeout(setTimeout(() => {}, 1e9));"
                "await tools.block({})"
            )
        )
        await delegate.wait_calls(2)
        actor = _actor(rt, cell)
        assert len(actor._timers) == 0
        assert len(actor._timer_heap) < 200
        delegate.release()
        assert await asyncio.wait_for(rt.wait(cell, HANG), HANG) == Completed(())


async def test_timer_floods_and_yield_floods_do_not_stall_the_loop(
    make_rt: Callable[..., SessionRuntime],
) -> None:
    rt = make_rt()
    async with heartbeat():
        ev = await finish(
            rt,
            "let n = 0; try { for (let i = 0; i < 300000; i++) { setTimeout(() => {}, 1e9); n++ } }"
            "catch (e) { text(e.name + ': ' + e.message) } text(n)",
        )
        assert ev == Completed(
            (TextItem("RangeError: setTimeout: more than 10000 live timers"), TextItem("10000"))
        )
        cell = await rt.create_cell(
            request('text("a"); for (let i = 0; i < 1000000; i++) yield_control(); text("b")')
        )
        first = await asyncio.wait_for(rt.wait(cell, HANG), HANG)
        assert isinstance(first, Yielded | Completed)
        ev = await finish(rt, "for (;;) text('')")
        assert ev.error_text == "exec cell exceeded max_output_bytes (1048576)"
        assert len(ev.items) <= MiB // 16
    await next_cell_works(rt)


# ---------------------------------------------------------------------------- 7: teardown


async def test_terminating_a_cell_in_a_long_native_call_blocks_no_other_session(
    make_rt: Callable[..., SessionRuntime],
) -> None:
    busy = make_rt(CellLimits(max_heap_bytes=768 * MiB, max_cpu_seconds=60.0))
    other = make_rt()
    cell = await busy.create_cell(
        request(
            'const s = "\\u1E9B\\u0323\\u0041\\u030A".repeat(4e6); text("built");'
            'await new Promise(r => setTimeout(r, 1)); for (;;) s.normalize("NFKD")'
        )
    )
    first = await asyncio.wait_for(busy.wait(cell, 2.0), HANG)
    assert first == Yielded((TextItem("built"),)), first
    await asyncio.sleep(0.3)  # inside a normalize now
    async with heartbeat():
        await asyncio.wait_for(busy.terminate(cell), HANG)
        started = time.monotonic()
        for _ in range(8):  # past the isolate pool: new isolates are created meanwhile
            ev = await finish(other, "text(1)")
            assert ev == Completed((TextItem("1"),))
        elapsed = time.monotonic() - started
    assert elapsed < 3.0, f"creating cells in another session took {elapsed:.2f} s"


# ---------------------------------------------------------------------------- 8: salvage


async def test_output_after_an_await_is_salvaged_on_terminate(
    make_rt: Callable[..., SessionRuntime],
) -> None:
    rt = make_rt()
    async with heartbeat():
        cell = await rt.create_cell(
            request(
                'text("a"); await new Promise(r => setTimeout(r, 5)); text("spinning"); while (true) {}'
            )
        )
        await asyncio.sleep(0.5)
        ev = await asyncio.wait_for(rt.terminate(cell), HANG)
    assert ev == Terminated((TextItem("a"), TextItem("spinning")))
    await next_cell_works(rt)


async def test_a_drain_stopped_part_way_empties_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stopped cell's drain can itself be stopped (its salvage budget runs out, or the
    termination reaches it): it must leave the output journal as it was, so the host still
    reads the cell's output there. Here the drain spends its time listing 50,000 pending ids
    and the salvage budget is 2 ms; before the fix the drain reset the journal first and
    ``start`` was lost in most runs."""
    monkeypatch.setattr(v8, "_SALVAGE_TIMEOUT", 0.002)
    n = 50_000
    source = (
        f"text('start'); for (let i = 0; i < {n}; i++) tools.echo({{}}).catch(() => {{}});"
        " while (true) {}"
    )
    limits = CellLimits(max_tool_calls=n + 1, max_parallel_tool_calls=n + 1, max_cpu_seconds=0.3)
    engine = V8Engine(pool_size=0)
    try:
        for i in range(3):
            boot = CellBoot(f"c{i}", source, (ToolDefinition("echo"),), {}, limits, True)
            cell = await engine.open_cell(boot)
            report = await asyncio.wait_for(cell.run(), HANG)
            texts = [e.item for e in report.events if isinstance(e, OutputProduced)]
            assert texts == [TextItem("start")], (i, texts)
            assert report.settlement is not None
            assert "max_cpu_seconds" in (report.settlement.error_text or "")
    finally:
        await engine.aclose()


async def test_a_salvage_call_past_its_time_is_still_awaited_for_its_answer() -> None:
    """A bridge call that outlives its time is terminated, and its answer still awaited for a
    short grace: a drain that finished just before its termination has emptied the outbox, so
    its report is the only record of it and must be taken, not dropped (``wait_for`` would
    have cancelled the future and dropped it)."""
    engine = V8Engine(pool_size=0)
    try:
        boot = CellBoot("c", "text('a')", (ToolDefinition("echo"),), {}, CellLimits(), False)
        cell: Any = await engine.open_cell(boot)
        bridge = cell._bridge
        loop = asyncio.get_running_loop()
        late: asyncio.Future[Any] = loop.create_future()
        loop.call_later(0.02, late.set_result, "report")  # after its time, within the grace
        assert await bridge.settle_within(late, None, 0.001) == "report"
        never: asyncio.Future[Any] = loop.create_future()
        with pytest.raises(TimeoutError):
            await bridge.settle_within(never, None, 0.001)
        assert not never.cancelled()  # its callback may still settle it
        # A real drain, given no time at all: terminated, or finished first; either way an
        # answer, never a timeout, and the cell's report is whole when it finished.
        try:
            raw = await bridge.call_within(bridge.drain, 0.0)
        except TimeoutError:
            pytest.fail("a terminated drain's answer was not awaited")
        except Exception:  # terminated before it finished
            raw = None
        assert raw is None or raw.startswith('{"ev":[')
        await cell.stop()
    finally:
        await engine.aclose()


async def test_a_drain_behind_a_cancelled_step_keeps_its_report() -> None:
    """The same, cancelled while the step still runs: the drain behind it runs once the
    step's JavaScript is terminated, and its report is what the stop gives. Before the fix the
    cancelled future counted as "no report" and the drain's own task was cancelled too, which
    stops nothing once it started: a drain that started before that (here the isolate's thread
    is given 0.1 s after the step's termination) emptied the outbox for nothing, and a fresh
    drain found ``text('a')`` gone."""
    engine = V8Engine(pool_size=0)
    try:
        for i in range(3):
            boot = CellBoot(
                f"c{i}",
                "text('a'); while (true) {}",
                (ToolDefinition("echo"),),
                {},
                CellLimits(),
                False,
            )
            cell: Any = await engine.open_cell(boot)
            bridge = cell._bridge
            cancel = bridge.native_cancel
            cancels: list[int] = []

            def slow_cancel(
                ctx: Any, task_id: int, cancel: Any = cancel, seen: Any = cancels
            ) -> None:
                cancel(ctx, task_id)
                seen.append(task_id)
                if len(seen) == 1:
                    time.sleep(0.1)  # the step ends and the drain behind it runs meanwhile

            bridge.native_cancel = slow_cancel
            task = asyncio.create_task(cell.run_raw())
            await asyncio.sleep(0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            bridge.native_cancel = cancel
            assert cancels, "the step was not terminated"
            events = stopped_events(cell._authority, await cell.stop_raw())
            texts = [e.item for e in events if isinstance(e, OutputProduced)]
            assert texts == [TextItem("a")], (i, texts)
    finally:
        await engine.aclose()


@pytest.mark.parametrize(
    "factory", [f for _, f in ENGINE_FACTORIES], ids=[n for n, _ in ENGINE_FACTORIES]
)
async def test_a_step_answering_as_it_is_cancelled_keeps_its_output(
    factory: Callable[[], Engine],
) -> None:
    """``terminate`` cancels the command in flight. When its answer is already on its way
    (the step ended, its drain emptied the cell) but not yet taken, the cancellation must not
    drop it: the cell's stop gives that output. Here the loop is kept busy while the step
    ends, so the cancellation finds the answer waiting. Before the fixes ``a`` was lost on
    both engines: in process the cancelled future dropped the drain's report, and the
    worker's host dropped the worker's answer."""
    engine = factory()
    try:
        source = "text('a'); const t = Date.now(); while (Date.now() - t < 150) {}"
        for i in range(3):
            boot = CellBoot(f"c{i}", source, (ToolDefinition("echo"),), {}, CellLimits(), False)
            cell = await engine.open_cell(boot)
            task = asyncio.create_task(cell.run())
            await asyncio.sleep(0.03)  # the step runs
            time.sleep(0.5)  # noqa: ASYNC251 - the loop is busy while the step answers
            assert not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            texts = [e.item for e in await cell.stop() if isinstance(e, OutputProduced)]
            assert texts == [TextItem("a")], (i, texts)
    finally:
        await engine.aclose()


@pytest.mark.parametrize(
    "factory", [f for _, f in ENGINE_FACTORIES], ids=[n for n, _ in ENGINE_FACTORIES]
)
async def test_a_report_being_checked_when_its_step_is_cancelled_keeps_its_output(
    factory: Callable[[], Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large report is checked on a worker thread; a ``terminate`` that cancels the command
    meanwhile must not lose it (the drain behind the step already emptied the cell): the
    cell's stop gives its output, in order, before anything it salvages. Before the fix the
    cancelled check's report was dropped and all 2,000 lines were lost."""
    checking = threading.Event()
    check = drain.check_report

    def slow_check(*args: Any) -> Any:
        checking.set()
        time.sleep(0.2)
        return check(*args)

    monkeypatch.setattr(drain, "check_report", slow_check)
    engine = factory()
    try:
        n = 2000
        source = f"for (let i = 0; i < {n}; i++) text('line ' + i + ' ' + 'x'.repeat(60));"
        boot = CellBoot("c", source, (ToolDefinition("echo"),), {}, CellLimits(), False)
        cell = await engine.open_cell(boot)
        task = asyncio.create_task(cell.run())
        while not checking.is_set():
            assert not task.done(), "the report was not checked on a thread"
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        texts = [e.item.text for e in await cell.stop() if isinstance(e, OutputProduced)]
        assert texts == [f"line {i} " + "x" * 60 for i in range(n)]
    finally:
        await engine.aclose()


async def test_a_limit_salvage_outlives_a_cancelled_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    """A limit stops the cell and the engine salvages its output (a drain that empties the
    cell); a ``terminate`` that cancels the command during that salvage must not lose it: the
    salvage goes on and the cell's stop gives its report. Before the fix the salvage was
    cancelled with its caller and the cell closed, and ``a`` was lost."""
    salvaging = asyncio.Event()
    drain_stopped = v8._V8Cell._drain_stopped

    async def slow_drain_stopped(self: Any) -> Any:
        salvaging.set()
        await asyncio.sleep(0.2)
        return await drain_stopped(self)

    monkeypatch.setattr(v8._V8Cell, "_drain_stopped", slow_drain_stopped)
    engine = V8Engine(pool_size=0)
    try:
        limits = CellLimits(max_cpu_seconds=0.1)
        boot = CellBoot(
            "c", "text('a'); while (true) {}", (ToolDefinition("echo"),), {}, limits, False
        )
        cell = await engine.open_cell(boot)
        task = asyncio.create_task(cell.run())
        await asyncio.wait_for(salvaging.wait(), HANG)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        texts = [e.item for e in await cell.stop() if isinstance(e, OutputProduced)]
        assert texts == [TextItem("a")]
    finally:
        await engine.aclose()


@pytest.mark.parametrize("how", ["idle", "terminate"])
async def test_a_drain_report_lost_after_its_commit_leaves_the_output_in_the_journal(
    monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """mini-racer may report a drain terminated after it committed (the cancel came while its
    answer was being made) and drop its report; the output that drain emptied must still be
    salvaged, once. Here a drain of the stop path that ran to its end has its report dropped,
    as mini-racer drops it. ``terminate``: the drain queued behind a step cancelled from
    outside runs once the step ends and empties ``b``; before the fix its commit emptied the
    journal too, and ``b`` was lost. ``idle``: ``a``, delivered with the first report, must not
    come again (the host empties the journal once it has a report)."""
    dropped: list[str] = []
    settle_within = v8._Bridge.settle_within

    async def lossy_settle_within(
        self: Any, future: asyncio.Future[Any], task_id: int | None, seconds: float
    ) -> Any:
        # (Not bounded by the budget: the step's loop is finite, and a loaded machine must not
        # turn the dropped report into a termination.)
        await asyncio.wait((future,), timeout=HANG)
        if not future.done() or future.exception() is not None:
            return await settle_within(self, future, task_id, 0.0)  # as it is
        dropped.append(str(future.result()))
        raise TimeoutError("the isolate did not answer")

    engine = V8Engine(pool_size=0)
    try:
        source = (
            "text('a'); await tools.echo({}); text('b');"
            " const t = Date.now(); while (Date.now() - t < 100) {}"
        )
        boot = CellBoot("c", source, (ToolDefinition("echo"),), {}, CellLimits(), False)
        cell: Any = await engine.open_cell(boot)
        first = await cell.run()
        assert [e.item for e in first.events if isinstance(e, OutputProduced)] == [TextItem("a")]
        (call_id,) = [e.call_id for e in first.events if isinstance(e, ToolCallRequested)]
        monkeypatch.setattr(v8._Bridge, "settle_within", lossy_settle_within)
        if how == "terminate":
            task = asyncio.create_task(cell.step([ToolResultInput(call_id, True, "{}")]))
            for _ in range(int(HANG / 0.005)):  # until the step wrote `b` and loops
                if cell._read_journal():
                    break
                await asyncio.sleep(0.005)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        events = await asyncio.wait_for(cell.stop(), HANG)
        texts = [e.item for e in events if isinstance(e, OutputProduced)]
        assert dropped, "no drain report was dropped: the test did not test the loss"
        if how == "terminate":
            assert "b" in dropped[0]  # the dropped report held it
        assert texts == ([] if how == "idle" else [TextItem("b")]), texts
    finally:
        await engine.aclose()


async def test_pausable_output_after_an_await_is_salvaged_on_terminate(
    make_rt: Callable[..., SessionRuntime],
) -> None:
    rt = make_rt()
    async with heartbeat():
        cell = await rt.create_pausable_cell(
            request('text("a"); await tools.echo({}); text("spinning"); while (true) {}')
        )
        assert isinstance(cell, PausableCell)
        event = await asyncio.wait_for(rt.wait_to_pending(cell), HANG)
        assert isinstance(event, Pending), event
        seen = [i.text for i in event.frontier.items if isinstance(i, TextItem)]
        await rt.resume(cell, event.frontier.generation)
        await asyncio.sleep(0.5)
        ev = await asyncio.wait_for(rt.terminate(cell), HANG)
    assert isinstance(ev, Terminated)
    seen += [i.text for i in ev.items if isinstance(i, TextItem)]
    assert seen == ["a", "spinning"]
