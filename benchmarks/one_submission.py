"""Does one native submission per step pay? Two submissions against one, on raw mini-racer.

A sequential nested call costs the in-process engine one *step* (the tool's result goes in, the
cell's continuation runs in V8's microtask checkpoint) and one *drain* (the cell's report comes
out, once the microtasks ran). mini-racer reports a task's result *before* the checkpoint that
follows it, so the engine submits the drain as a second task right behind the step
(docs/call-path.md). This benchmark drives a minimal cell (one pending promise, an outbox
string; the same JavaScript for every variant) from an asyncio loop, the way the engine does,
three ways:

- ``A`` (the engine's way): the step submitted *quiet* (its completion, which mini-racer delivers
  to Python on the isolate's thread, is only kept), the drain submitted right behind it; the
  drain's result wakes the loop.
- ``B`` (one submission): the step alone. Its JavaScript registers ``Atomics.waitAsync`` on a
  shared word and notifies it: V8 resolves the waiter in a task of its own, which mini-racer's
  message pump runs after the step's microtask checkpoint, so the drain chained on it sees the
  cell quiescent. The drain writes its report into an ``ArrayBuffer`` the host holds a view of
  and calls a JavaScript function made by ``mr_make_js_callback``, whose call reaches Python on
  the isolate's thread and wakes the loop, which reads the report from memory. (The callback's
  argument array is freed in batches of 64: each free posts a task to the isolate.)
- ``C``: as ``B``, but the report travels as the callback's argument: reading it out of the
  argument array is a blocking native call from the loop.
- ``F`` (the floor): as ``A``, with a step that does nothing and a drain that returns a constant
  report: what mini-racer's two tasks per step cost with (almost) no JavaScript in them.

It prints, per step: wall time, the process's CPU and the loop thread's CPU, as the median and
the minimum over rounds that alternate the variants, and the wall time spent inside the native
submit calls.

    .venv/bin/python benchmarks/one_submission.py [--steps 2000] [--rounds 20] [--variants ABCF]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

JS = r"""
(() => {
  const word = new Int32Array(new SharedArrayBuffer(8));
  const buf = new ArrayBuffer(1 << 20);
  const len = new Uint32Array(buf, 0, 1);
  const units = new Uint16Array(buf, 4);
  const waitAsync = Atomics.waitAsync, notify = Atomics.notify;
  let pending = null, outbox = "", signal = null, n = 0;
  function call(i) {
    outbox += (outbox ? "," : "") + '["call","tool-' + i + '",{"i":' + i + '}]';
    return new Promise((r) => { pending = r; });
  }
  async function cell() { for (let i = 0; ; i++) n += (await call(i)).i; }
  function drain() {
    const o = outbox;
    outbox = "";
    return '{"ev":[' + o + '],"pending":null,"settled":null}';
  }
  function drainToMemory() {
    const r = drain();
    for (let i = 0; i < r.length; i++) units[i] = r.charCodeAt(i);
    len[0] = r.length;
    signal();
  }
  function drainAsArgument() { signal(drain()); }
  function apply(text) {
    const v = JSON.parse(text);
    const p = pending;
    pending = null;
    p(v[0][3]);
  }
  function afterCheckpoint(then) {
    waitAsync(word, 0, 0).value.then(then);
    notify(word, 0, 1);
  }
  return {
    start() { cell(); },
    setSignal(f) { signal = f; },
    step(text) { apply(text); },
    stepB(text) { apply(text); afterCheckpoint(drainToMemory); },
    stepC(text) { apply(text); afterCheckpoint(drainAsArgument); },
    stepF(text) {},
    drainF() { return '{"ev":[["call","tool-0",{}]],"pending":null,"settled":null}'; },
    drain,
    buf() { return buf; },
  };
})()
"""

STEP_TEXT = '[["r","tool-0",true,{"i":1}]]'
SIGNAL_ID = 10**9  # the JavaScript callback's id (far from mini-racer's task callback ids)


def _resolver(ctx: Any, future: asyncio.Future[str]) -> Any:
    def done(handle: Any) -> None:
        future.set_result(ctx._value_handle_to_python(handle))

    return done


async def run(variant: str, steps: int) -> tuple[float, float, float, float]:
    """One cell of ``steps`` steps; per step: wall, process CPU, loop-thread CPU, submit wall
    (microseconds)."""
    from py_mini_racer._mini_racer import _make_context

    loop = asyncio.get_running_loop()
    with _make_context(loop) as ctx:
        b: Any = ctx.eval(JS)
        step_fn = b["step" if variant == "A" else f"step{variant}"]
        drain_fn = b["drainF" if variant == "F" else "drain"]
        view: memoryview = b["buf"]()
        length, units = view[0:4].cast("I"), view[4:]
        argv1: Any = ctx.eval("[0]")
        argv0: Any = ctx.eval("[]")
        argv1[0] = STEP_TEXT
        callbacks = ctx._active_cancelable_mr_task_callbacks
        submit, wrap, raw_ctx = ctx._dll.mr_call_function, ctx._wrap_raw_handle, ctx._ctx
        raw_this = b.raw_handle.raw
        ids = ctx._next_async_callback_id
        wake = ctx.handle_callback_from_v8
        quiet: set[int] = set()
        kept: list[Any] = []  # the quiet step's raw result
        garbage: list[Any] = []  # the callback's argument arrays, freed in batches
        waiting: list[asyncio.Future[str]] = []

        def on_signal(raw: Any) -> None:  # on the loop
            future = waiting.pop()
            if variant == "C":
                arguments: Any = ctx._value_handle_to_python(wrap(raw))
                future.set_result(arguments[0])
                return
            garbage.append(raw)
            future.set_result(bytes(units[: 2 * length[0]]).decode("utf-16-le"))

        def handle_callback_from_v8(callback_id: int, raw: Any) -> None:  # the isolate's thread
            if callback_id in quiet:
                quiet.discard(callback_id)
                kept.append(raw)
            elif callback_id == SIGNAL_ID:
                loop.call_soon_threadsafe(on_signal, raw)
            else:
                wake(callback_id, raw)

        object.__setattr__(ctx, "handle_callback_from_v8", handle_callback_from_v8)
        signal = wrap(ctx._dll.mr_make_js_callback(raw_ctx, SIGNAL_ID))
        b["setSignal"](ctx._value_handle_to_python(signal))
        b["start"]()
        submitting = 0.0
        t0, c0, l0 = time.perf_counter(), time.process_time(), time.thread_time()
        for _ in range(steps):
            q = next(ids)
            quiet.add(q)
            future: asyncio.Future[str] = loop.create_future()
            if variant in "AF":
                d = next(ids)
                callbacks[d] = _resolver(ctx, future)
                s0 = time.perf_counter()
                submit(raw_ctx, step_fn.raw_handle.raw, raw_this, argv1.raw_handle.raw, q)
                submit(raw_ctx, drain_fn.raw_handle.raw, raw_this, argv0.raw_handle.raw, d)
                submitting += time.perf_counter() - s0
                report = await future
                del callbacks[d]
            else:
                waiting.append(future)
                s0 = time.perf_counter()
                submit(raw_ctx, step_fn.raw_handle.raw, raw_this, argv1.raw_handle.raw, q)
                submitting += time.perf_counter() - s0
                report = await future
                if len(garbage) >= 64:
                    for raw in garbage:
                        wrap(raw)
                    garbage.clear()
            wrap(kept.pop())
            assert report.startswith('{"ev":[["call"'), report
        per = 1e6 / steps
        result = (
            (time.perf_counter() - t0) * per,
            (time.process_time() - c0) * per,
            (time.thread_time() - l0) * per,
            submitting * per,
        )
        for raw in garbage:
            wrap(raw)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--variants", default="ABCF")
    args = parser.parse_args()
    from py_mini_racer import _dll

    _dll.init_mini_racer(flags=("--single-threaded", "--expose-gc"), ignore_duplicate_init=True)
    rows: dict[str, list[tuple[float, float, float, float]]] = {v: [] for v in args.variants}
    import os

    load = os.getloadavg()[0]
    for _ in range(args.rounds):
        for variant in args.variants:
            rows[variant].append(asyncio.run(run(variant, args.steps)))
    print(f"us per step, median (min) of {args.rounds} rounds; load {load:.2f}")
    names = ("wall", "process CPU", "loop-thread CPU", "in submit calls")
    for variant, got in rows.items():
        cells = []
        for i, name in enumerate(names):
            values = [r[i] for r in got]
            cells.append(f"{name} {statistics.median(values):.1f} ({min(values):.1f})")
        print(f"{variant}: " + "; ".join(cells))


if __name__ == "__main__":
    main()
