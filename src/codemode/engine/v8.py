"""The default engine: one V8 isolate per cell, through mini-racer (SPEC 2, 8; ENGINE-NOTES).

Rules this module keeps (each learned the hard way, see ENGINE-NOTES.md):

- every context gets a hard heap limit, so V8's own out-of-memory handling never aborts the process;
- only JSON text crosses the boundary; Python never holds a JavaScript object or promise;
- every host-to-JavaScript step is an ``eval_cancelable`` awaited on the event loop, so a busy
  isolate never blocks the loop, and a runaway step can be abandoned;
- a runaway cell is stopped by cancelling its eval (and, at the end, freeing its context), which
  terminates execution on the isolate's own thread.
"""

from __future__ import annotations

import asyncio
import collections
import importlib.resources
import json
import logging
import queue
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

from codemode.engine.base import (
    CellBoot,
    Engine,
    EngineCell,
    EngineEvent,
    EngineLost,
    NotifyRequested,
    OutputProduced,
    Settlement,
    StepInput,
    StepReport,
    StoreWritten,
    TimerCleared,
    TimerSet,
    ToolCallRequested,
    ToolResultInput,
    YieldRequested,
    limit_error_text,
)
from codemode.engine.jsscan import scan_source
from codemode.engine.source import (
    clean_error_text,
    compile_check,
    compiles_expression,
    prepare_source_async,
    syntax_error_from,
)
from codemode.errors import EngineError
from codemode.identifiers import tool_identifiers
from codemode.model import ImageDetail, ImageItem, TextItem

__all__ = ["V8Engine"]

logger = logging.getLogger("codemode.engine.v8")

PRELUDE = importlib.resources.files("codemode.engine").joinpath("prelude.js").read_text("utf-8")

# V8 flags are process-wide and fixed at the first initialisation. `--expose-gc` lets the prelude
# reclaim dropped ArrayBuffers before it declares the external-memory budget exhausted; the prelude
# hides `gc` from cells. If the embedding application initialised mini-racer first, the prelude
# falls back to sweeping without a forced GC.
V8_FLAGS = ("--single-threaded", "--expose-gc")

# Reading the outbox of a cell stopped for a limit must not itself hang.
_SALVAGE_TIMEOUT = 0.2


def _init_v8() -> None:
    from py_mini_racer import _dll

    try:
        _dll.init_mini_racer(flags=V8_FLAGS, ignore_duplicate_init=False)
    except _dll.LibAlreadyInitializedError:
        logger.debug("mini-racer was initialised before codemode; keeping its V8 flags")


class _LimitExceeded(Exception):
    def __init__(self, field_name: str) -> None:
        super().__init__(field_name)
        self.field_name = field_name


_dumps = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode


# mini-racer context creation and teardown must never run concurrently: creating the process's
# first isolates on several threads at once aborted the whole process inside V8
# ("FATAL partition_address_space.cc: Check failed: !IsConfigurablePoolInitialized()"), seen
# when the pool filled on worker threads. Both take a few milliseconds, so one lock costs little.
_NATIVE_LOCK = threading.Lock()


def _enter_context(manager: Any) -> Any:
    with _NATIVE_LOCK:
        return manager.__enter__()


class _Isolate:
    """One mini-racer context (an isolate on a thread of its own) with the prelude evaluated."""

    def __init__(self, manager: Any, context: Any) -> None:
        self.manager: Any | None = manager
        self.context = context

    def free(self) -> None:
        """Release the isolate and its thread, without blocking: the native teardown runs on
        the reaper thread. Safe from any thread, including a garbage-collector finalizer running
        on a thread that holds the native lock. :func:`wait_freed` waits for it."""
        manager, self.manager = self.manager, None
        if manager is not None:
            _REAPER.free(manager)


def _exit_context(manager: Any) -> None:
    try:
        with _NATIVE_LOCK:
            manager.__exit__(None, None, None)
    except Exception:  # pragma: no cover - native teardown failure
        logger.exception("freeing a V8 context failed")


class _Reaper:
    """One daemon thread that frees contexts, one at a time, in the order they were handed
    over. Freeing never runs on the caller's thread, so it can neither stall the event loop on
    the native lock nor deadlock a thread that already holds it."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._pending = 0
        self._thread: threading.Thread | None = None

    def free(self, manager: Any) -> None:
        with self._cond:
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="codemode-v8-reaper", daemon=True
                )
                self._thread.start()
        self._queue.put(manager)

    def _run(self) -> None:
        while True:
            manager = self._queue.get()
            _exit_context(manager)
            with self._cond:
                self._pending -= 1
                if self._pending == 0:
                    self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Block until every context handed over so far is freed; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout)

    @property
    def pending(self) -> int:
        return self._pending


_REAPER = _Reaper()


async def wait_freed() -> None:
    """Wait (at most 5 s) until every isolate freed so far has released its resources."""
    if _REAPER.pending:
        await asyncio.to_thread(_REAPER.wait_idle, 5.0)


async def _new_isolate(loop: asyncio.AbstractEventLoop) -> _Isolate:
    """Create an isolate off the event loop and evaluate the prelude in it. Never leaks: a
    cancelled or failed creation frees what it made."""
    from py_mini_racer._mini_racer import _make_context

    manager = _make_context(loop)
    created = loop.run_in_executor(None, _enter_context, manager)
    try:
        context = await asyncio.shield(created)
    except BaseException:  # cancelled, or the coroutine itself was garbage-collected
        created.add_done_callback(lambda f: _free_if_created(f, manager))
        raise
    isolate = _Isolate(manager, context)
    try:
        context.set_hard_memory_limit(_POOL_HEAP_LIMIT)
        await context.eval_cancelable(f"{PRELUDE}\n//# sourceURL=codemode-prelude.js")
        # A throwaway cell compiles the prelude's hot paths now rather than in a real cell's
        # first step (about 0.4 ms); `boot` resets every piece of per-cell state.
        await context.eval_cancelable(_WARM_UP)
        await context.eval_cancelable("__codemode.drain()")
    except BaseException:
        isolate.free()
        raise
    return isolate


def _free_if_created(future: asyncio.Future[Any], manager: Any) -> None:
    if not future.cancelled() and future.exception() is None:
        _REAPER.free(manager)


_WARM_UP = (
    '__codemode.boot({"pausable": false, "limits": {"maxToolCalls": 10, "maxParallel": 10, '
    '"maxOutputBytes": 4096, "maxExternalBytes": 4096}, "stored": {"k": 1}, '
    '"tools": [{"name": "t", "ident": "t", "kind": "function", "description": ""}]});'
    "__codemode.run("
    + json.dumps(
        'text("w"); console.log("w", 1); store("k", load("k")); yield_control();'
        'clearTimeout(setTimeout(() => {}, 1)); tools.t({a: 1}); await tools.t({});'
    )
    + ");"
)

# The prelude needs far less than this; the cell's own limit is set when it takes the isolate.
_POOL_HEAP_LIMIT = 64 * 1024 * 1024


class _IsolatePool:
    """Isolates created ahead of time for one event loop, so a new cell skips isolate creation
    and the prelude (ENGINE-NOTES 9). Bounded, refilled in the background, never shared: an
    isolate is handed to exactly one cell and freed with it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.loop = loop
        self.size = size
        self.users = 0
        self._ready: collections.deque[_Isolate] = collections.deque()
        self._filling: set[asyncio.Task[None]] = set()
        self._refill_handle: asyncio.TimerHandle | None = None

    async def take(self) -> _Isolate:
        isolate = self._ready.popleft() if self._ready else None
        # Refill a little later: creating an isolate right now would compete for the CPU with
        # the cell that is starting on the isolate just taken.
        if self._refill_handle is None:
            self._refill_handle = self.loop.call_later(_REFILL_DELAY, self._deferred_refill)
        if isolate is None:
            logger.debug("isolate pool empty: creating one on demand")
            isolate = await _new_isolate(self.loop)
        return isolate

    def _deferred_refill(self) -> None:
        self._refill_handle = None
        self.refill()

    def refill(self) -> None:
        while self.users > 0 and len(self._ready) + len(self._filling) < self.size:
            task = self.loop.create_task(self._fill_one())
            self._filling.add(task)
            task.add_done_callback(self._filling.discard)

    async def _fill_one(self) -> None:
        try:
            isolate = await _new_isolate(self.loop)
        except asyncio.CancelledError:
            raise
        except Exception:  # pragma: no cover - native failure; the next take creates one
            logger.exception("pre-creating a V8 isolate failed")
            return
        if self.users > 0 and len(self._ready) < self.size:
            self._ready.append(isolate)
        else:
            isolate.free()

    def close(self) -> None:
        if self._refill_handle is not None:
            self._refill_handle.cancel()
            self._refill_handle = None
        for task in list(self._filling):
            task.cancel()
        while self._ready:
            self._ready.popleft().free()


_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _IsolatePool] = (
    weakref.WeakKeyDictionary()
)

DEFAULT_POOL_SIZE = 4
_REFILL_DELAY = 0.005


class V8Engine(Engine):
    """Runs each cell in a fresh V8 isolate on a thread of its own (mini-racer 0.14.1).

    Engines on one event loop share a pool of ``pool_size`` isolates created ahead of time
    (the largest size asked for wins); the pool is freed when the last engine using it closes.
    ``pool_size=0`` creates every isolate on demand.
    """

    name = "v8"

    def __init__(self, *, pool_size: int = DEFAULT_POOL_SIZE) -> None:
        if pool_size < 0:
            raise ValueError("pool_size must be at least 0")
        _init_v8()
        self._pool_size = pool_size
        self._pool: _IsolatePool | None = None
        self._closed = False

    def _acquire_pool(self) -> _IsolatePool:
        if self._pool is None:
            loop = asyncio.get_running_loop()
            pool = _pools.get(loop)
            if pool is None:
                pool = _pools[loop] = _IsolatePool(loop, self._pool_size)
            pool.size = max(pool.size, self._pool_size)
            pool.users += 1
            self._pool = pool
        return self._pool

    async def open_cell(self, boot: CellBoot) -> EngineCell:
        if self._closed:
            raise EngineError("the V8 engine was closed")
        pool = self._acquire_pool()
        try:
            isolate = await pool.take()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # pragma: no cover - native failure
            raise EngineError(f"could not create a V8 isolate: {exc}") from exc
        try:
            return _V8Cell(isolate, boot)
        except Exception as exc:
            isolate.free()
            raise EngineError(f"could not start the V8 cell environment: {exc}") from exc

    async def aclose(self) -> None:
        self.close()
        await wait_freed()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.users -= 1
            if pool.users <= 0:
                pool.close()
                if _pools.get(pool.loop) is pool:
                    del _pools[pool.loop]


class _V8Cell(EngineCell):
    def __init__(self, isolate: _Isolate, boot: CellBoot) -> None:
        self._isolate = isolate
        self._context = isolate.context
        self._boot = boot
        self._limits = boot.limits
        self._closed = False
        self._inflight: asyncio.Task[Any] | None = None
        self._out_of_cpu = False
        self._cpu_used = 0.0
        self._context.set_hard_memory_limit(boot.limits.max_heap_bytes)
        self._boot_code = self._render_boot()  # serialised at admission: the snapshot is fixed

    @property
    def closed(self) -> bool:
        return self._closed

    def _render_boot(self) -> str:
        """The call that installs this cell's tools, stored values and limits. It runs in the
        same eval as the body's start: one crossing fewer per cell."""
        b = self._boot
        idents = tool_identifiers(t.name for t in b.tools)
        config = {
            "pausable": b.pausable,
            "limits": {
                "maxToolCalls": b.limits.max_tool_calls,
                "maxParallel": b.limits.max_parallel_tool_calls,
                "maxOutputBytes": b.limits.max_output_bytes,
                "maxExternalBytes": b.limits.max_heap_bytes,
            },
            "tools": [
                {"name": t.name, "ident": ident, "kind": str(t.kind), "description": t.description}
                for t, ident in zip(b.tools, idents, strict=True)
            ],
            "stored": dict(b.stored),
        }
        # The catalog's entries stay JSON text in the cell, parsed on first use (SPEC 9.6).
        if b.tool_reference is not None:
            config["reference"] = b.tool_reference
        return f"__codemode.boot({_dumps(config)});"

    async def run(self) -> StepReport:
        prepared = await prepare_source_async(self._boot.source)
        if prepared.as_written is not None and await self._eval(
            compiles_expression(prepared.as_written)
        ):
            prepared = prepared.as_javascript()  # valid JavaScript runs as written
        if prepared.error_text is not None:
            self.close()
            return StepReport((), (), Settlement(prepared.error_text))
        scan = scan_source(prepared.code)
        if scan.static_import is not None:
            self.close()
            text = f"SyntaxError: Unsupported import in exec: {scan.static_import}"
            return StepReport((), (), Settlement(text))
        check = compile_check(scan.source)
        try:
            return await self._command(
                f"{check}{self._boot_code}__codemode.run({_dumps(scan.source)})"
            )
        except EngineLost as lost:
            located = syntax_error_from(str(lost.__cause__ or ""), scan.source)
            if located is None:
                raise
            self.close()
            return StepReport((), (), Settlement(located))

    async def step(self, inputs: Sequence[StepInput]) -> StepReport:
        parts = []
        for item in inputs:
            if isinstance(item, ToolResultInput):
                # Call ids are the runtime's own "tool-N": no escaping needed.
                if item.ok:
                    parts.append(f'["r","{item.call_id}",true,{item.value_json}]')
                else:
                    parts.append(f'["r","{item.call_id}",false,{_dumps(item.message)}]')
            else:
                parts.append(f'["t",{int(item.timer_id)}]')
        return await self._command(f"__codemode.step([{','.join(parts)}])")

    async def stop(self) -> tuple[EngineEvent, ...]:
        if self._closed:
            return ()
        inflight = self._inflight
        if inflight is not None and not inflight.done():
            # Abandoning an eval terminates its JavaScript and leaves the context usable.
            inflight.cancel()
            await asyncio.wait({inflight}, timeout=_SALVAGE_TIMEOUT)
        try:
            report = await self._drain_stopped()
        finally:
            self.close()
        return report.events if report is not None else ()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._inflight is not None:
            self._inflight.cancel()
        self._isolate.free()

    # ------------------------------------------------------------------ internals

    async def _command(self, code: str) -> StepReport:
        """Run one step and the drain that follows it (microtasks run between the two)."""
        cpu_before = self._cpu_used
        try:
            await self._eval(code)
            raw = await self._eval("__codemode.drain()")
        except _LimitExceeded as exc:
            report = await self._salvage(Settlement(limit_error_text(self._limits, exc.field_name)))
            self.close()
            return report
        report = self._parse(raw, self._cpu_used - cpu_before)
        if report.settlement is not None:
            self.close()  # after completion no JavaScript of the cell runs (SPEC 2.1)
        return report

    async def _salvage(self, settlement: Settlement) -> StepReport:
        """After a limit stopped the cell, read the output it recorded before, if V8 still can.
        A limit the prelude itself reported in that drain is the more precise settlement."""
        report = await self._drain_stopped()
        if report is None:
            return StepReport((), (), settlement)
        reported = report.settlement
        if reported is not None and (reported.error_text or "").startswith("exec cell exceeded"):
            settlement = reported
        return StepReport(report.events, (), settlement)

    async def _drain_stopped(self) -> StepReport | None:
        """One bounded drain of a cell whose JavaScript was stopped (an abandoned eval leaves the
        context usable); None if V8 could not answer."""
        if self._closed:
            return None
        try:
            raw = await asyncio.wait_for(
                self._context.eval_cancelable("__codemode.drain()"), _SALVAGE_TIMEOUT
            )
            return self._parse(raw, 0.0)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.debug("nothing salvaged from cell %s", self._boot.cell_id, exc_info=True)
            return None

    async def _eval(self, code: str) -> Any:
        """Run ``code`` in the isolate within the cell's remaining CPU budget.

        Cancelling the caller abandons the eval, which terminates the running JavaScript.
        """
        if self._closed:
            raise EngineLost("the cell's engine was closed")
        remaining = max(self._limits.max_cpu_seconds - self._cpu_used, 0.0)
        loop = asyncio.get_running_loop()
        task: asyncio.Task[Any] = loop.create_task(self._context.eval_cancelable(code))
        self._inflight = task
        self._out_of_cpu = False
        deadline = loop.call_later(remaining, self._cpu_deadline, task)
        started = time.perf_counter()
        try:
            return await task  # a cancelled caller cancels the eval too
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # our caller was cancelled
            if self._out_of_cpu:
                raise _LimitExceeded("max_cpu_seconds") from None
            raise EngineLost("the cell's engine was closed") from None
        except Exception as exc:
            from py_mini_racer import JSOOMException

            if isinstance(exc, JSOOMException):
                raise _LimitExceeded("max_heap_bytes") from exc
            raise EngineLost(f"{type(exc).__name__}: {exc}") from exc
        finally:
            deadline.cancel()
            if task.done():
                self._inflight = None  # else `stop` waits for the abandoned step to end
            self._cpu_used += time.perf_counter() - started

    def _cpu_deadline(self, task: asyncio.Task[Any]) -> None:
        self._out_of_cpu = True
        task.cancel()

    def _parse(self, raw: Any, cpu_seconds: float) -> StepReport:
        """Validate a drain; anything malformed means the bridge was broken from inside."""
        try:
            data = json.loads(raw)
            events = tuple(_event(ev) for ev in data["ev"])
            pending = data["pending"]
            if pending is None:
                pending = []
            elif not isinstance(pending, list) or not all(isinstance(p, str) for p in pending):
                raise ValueError("bad pending list")
            settled = data["settled"]
            settlement: Settlement | None = None
            if settled is not None:
                if settled.get("ok") is True:
                    settlement = Settlement(None)
                elif isinstance(settled.get("limit"), str):
                    field_name = settled["limit"]
                    if not hasattr(self._limits, field_name):
                        raise ValueError(f"unknown limit {field_name!r}")
                    settlement = Settlement(limit_error_text(self._limits, field_name))
                else:
                    error = str(settled.get("error", "uncaught exception"))
                    settlement = Settlement(clean_error_text(error))
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            raise EngineLost(f"malformed report from the cell environment: {exc}") from exc
        pending_sorted = tuple(sorted(pending, key=_call_number))
        return StepReport(events, pending_sorted, settlement, cpu_seconds)


def _call_number(call_id: str) -> tuple[int, str]:
    _, _, n = call_id.partition("-")
    return (int(n), call_id) if n.isdigit() else (0, call_id)


def _event(ev: Any) -> EngineEvent:
    tag = ev[0]
    if tag == "text":
        return OutputProduced(TextItem(str(ev[1])))
    if tag == "image":
        return OutputProduced(ImageItem(str(ev[1]), ImageDetail(ev[2])))
    if tag == "call":
        call_id = ev[1]
        # Ids are embedded unescaped in later steps: accept only the prelude's own "tool-N".
        if not (isinstance(call_id, str) and call_id[:5] == "tool-" and call_id[5:].isdigit()):
            raise ValueError(f"bad call id {call_id!r}")
        return ToolCallRequested(call_id, int(ev[2]), ev[3])
    if tag == "notify":
        return NotifyRequested(str(ev[1]))
    if tag == "yield":
        return YieldRequested()
    if tag == "timer":
        return TimerSet(int(ev[1]), float(ev[2]) / 1000.0)
    if tag == "clear":
        return TimerCleared(int(ev[1]))
    if tag == "store":
        return StoreWritten(str(ev[1]), ev[2])
    raise ValueError(f"unknown event {tag!r}")
