"""The ``quickjs-ng`` column: QuickJS through the PyPI ``quickjs-ng`` wrapper."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from engines_compare.common import (
    DEADLINE,
    Adapter,
    MiB,
    Tools,
    _dist_bytes,
    _dist_version,
    busy_after_stop,
    js_cells,
)

QUICKJS_PRELUDE = """
globalThis.__out = [];
globalThis.text = (s) => { __out.push(String(s)); };
(() => {
  const pending = new Map();
  let next = 0;
  const call = (name, v) => new Promise((resolve, reject) => {
    const id = ++next;
    pending.set(id, [resolve, reject]);
    __host(id, name, JSON.stringify(v));
  });
  globalThis.tools = { echo: (v) => call("echo", v), hang: (v) => call("hang", v) };
  globalThis.__resolve = (batch) => {
    for (const [id, ok, v] of JSON.parse(batch)) {
      const p = pending.get(id);
      pending.delete(id);
      if (ok) p[0](JSON.parse(v)); else p[1](new Error(v));
    }
  };
  globalThis.__run = (f) => f().then(() => __settle(true, ""),
                                     (e) => __settle(false, String(e && e.stack || e)));
})();
"""


class _QuickCell:
    def __init__(self) -> None:
        self.calls: list[tuple[int, str, str]] = []
        self.results: list[tuple[int, bool, str]] = []
        self.settled: tuple[bool, str] | None = None
        self.wake = asyncio.Event()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.ctx: Any = None


class QuickJSAdapter(Adapter):
    """QuickJS (quickjs-ng) through its thin wrapper. The wrapper has no async bridge, so the host
    drives one: ``add_callable("__host", f)`` gives JS a synchronous Python function that only
    records ``(id, name, json)``; JS keeps the promise resolvers. The host loop (on the asyncio
    thread: a ``Context`` must stay on one thread) runs ``execute_pending_job()`` until the job
    queue is empty, starts an asyncio task per recorded call, waits for results, and feeds every
    result ready so far back with one call of a JS ``__resolve(batch_json)``. One ``Context`` (its
    own JSRuntime) per cell, with a 64 MiB memory limit. Runaway: QuickJS runs on the host's own
    thread and exposes no host-side interrupt, only ``set_time_limit`` (CPU time, set before the
    run), so that is what is measured: how far past a 50 ms limit the loop is stopped. While it
    spins, the host's event loop is blocked."""

    name = "quickjs-ng"
    runaway_method = (
        "set_time_limit(0.05) before the run, a CPU-time limit (no host-side stop; the host"
        " loop is blocked meanwhile); figure = CPU ms past the limit"
    )

    def __init__(self, calls: int) -> None:
        self.src = js_cells(calls)
        self._idle: list[_QuickCell] = []
        self.wall_past_limit: list[float] = []

    async def start(self) -> None:
        self.tools = Tools()

    def _new(self) -> _QuickCell:
        import _quickjs

        cell = _QuickCell()
        ctx = _quickjs.Context()
        ctx.set_memory_limit(64 * MiB)

        def host(call_id: int, name: str, arg: str) -> None:
            cell.calls.append((call_id, name, arg))

        def settle(ok: bool, error: str) -> None:
            cell.settled = (bool(ok), str(error))

        ctx.add_callable("__host", host)
        ctx.add_callable("__settle", settle)
        ctx.eval(QUICKJS_PRELUDE)
        cell.ctx = ctx
        return cell

    async def make_ahead(self) -> Any:
        return self._new()

    def _start_calls(self, cell: _QuickCell) -> None:
        calls, cell.calls = cell.calls, []
        for call_id, name, arg in calls:
            task = asyncio.ensure_future(self.tools.call(name, json.loads(arg)))
            cell.tasks.add(task)
            task.add_done_callback(lambda t, i=call_id: self._done(cell, i, t))

    @staticmethod
    def _done(cell: _QuickCell, call_id: int, task: asyncio.Task[Any]) -> None:
        cell.tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            cell.results.append((call_id, True, json.dumps(task.result())))
        else:
            cell.results.append((call_id, False, str(exc)))
        cell.wake.set()

    def _pump(self, cell: _QuickCell) -> None:
        while cell.ctx.execute_pending_job():
            pass
        self._start_calls(cell)

    async def run(self, key: str, ahead: Any = None) -> list[str]:
        cell = ahead if ahead is not None else self._new()
        ctx = cell.ctx
        try:
            ctx.eval(f"__run(async () => {{\n{self.src[key]}\n}})")
            self._pump(cell)
            resolve = ctx.get("__resolve")
            while cell.settled is None:
                if not cell.results:
                    if not cell.tasks:
                        raise RuntimeError("cell waits on nothing")
                    cell.wake.clear()
                    await cell.wake.wait()
                batch, cell.results = cell.results, []
                resolve(json.dumps(batch))
                self._pump(cell)
            ok, error = cell.settled
            if not ok:
                raise RuntimeError(error)
            return list(json.loads(ctx.eval("JSON.stringify(__out)")))
        finally:
            for task in cell.tasks:
                task.cancel()
            cell.ctx = None
            del ctx

    async def runaway(self) -> tuple[float, float]:
        import _quickjs

        cell = self._new()
        cell.ctx.set_time_limit(DEADLINE)
        t, cpu = time.perf_counter(), time.process_time()
        try:
            cell.ctx.eval(self.src["runaway"])
        except _quickjs.JSException as exc:
            if "interrupted" not in str(exc):
                raise
        stopped, cpu_stopped = time.perf_counter(), time.process_time()
        cell.ctx = None
        self.wall_past_limit.append((stopped - t - DEADLINE) * 1000)
        # The limit is CPU time (clock()): on a loaded machine the 50 ms of CPU take longer
        # than 50 ms of wall time, so the CPU overshoot is the figure of the limit's precision.
        return (cpu_stopped - cpu - DEADLINE) * 1000, await busy_after_stop([os.getpid()])

    async def open_idle(self, n: int) -> None:
        for _ in range(n):
            cell = self._new()
            cell.ctx.eval(f"__run(async () => {{\n{self.src['idle']}\n}})")
            self._pump(cell)
            self._idle.append(cell)
        await self.tools.until_hanging(n)

    async def close_idle(self) -> None:
        for cell in self._idle:
            for task in cell.tasks:
                task.cancel()
            cell.ctx = None
        self._idle.clear()

    def versions(self) -> dict[str, str]:
        return {"quickjs-ng": _dist_version("quickjs-ng")}

    def installed_bytes(self) -> int | None:
        return _dist_bytes("quickjs-ng")


# --- pydantic-monty -----------------------------------------------------------------------------
