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
import contextlib
import importlib.resources
import json
import logging
import time
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
_SALVAGE_TIMEOUT = 0.5


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


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=True, allow_nan=False, separators=(",", ":"))


class V8Engine(Engine):
    """Runs each cell in a fresh V8 isolate on a thread of its own (mini-racer 0.14.1)."""

    name = "v8"

    def __init__(self) -> None:
        _init_v8()

    async def open_cell(self, boot: CellBoot) -> EngineCell:
        from py_mini_racer._mini_racer import _make_context

        loop = asyncio.get_running_loop()
        manager = _make_context(loop)
        try:
            # Creating an isolate takes milliseconds of native work: keep it off the event loop.
            context = await asyncio.to_thread(manager.__enter__)
        except Exception as exc:  # pragma: no cover - native failure
            raise EngineError(f"could not create a V8 isolate: {exc}") from exc
        cell = _V8Cell(manager, context, boot)
        try:
            await cell.boot()
        except asyncio.CancelledError:
            cell.close()
            raise
        except EngineLost as exc:
            cell.close()
            raise EngineError(f"could not start the V8 cell environment: {exc}") from exc
        except Exception as exc:
            cell.close()
            raise EngineError(f"could not start the V8 cell environment: {exc}") from exc
        return cell


class _V8Cell(EngineCell):
    def __init__(self, manager: Any, context: Any, boot: CellBoot) -> None:
        self._manager = manager
        self._context = context
        self._boot = boot
        self._limits = boot.limits
        self._closed = False
        self._inflight: asyncio.Task[Any] | None = None
        self._cpu_used = 0.0
        context.set_hard_memory_limit(boot.limits.max_heap_bytes)

    @property
    def closed(self) -> bool:
        return self._closed

    async def boot(self) -> None:
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
        boot = f"__codemode.boot({_dumps(config)});"
        await self._eval(f"{PRELUDE}\n;{boot}\n//# sourceURL=codemode-prelude.js")

    async def run(self) -> StepReport:
        scan = scan_source(self._boot.source)
        if scan.static_import is not None:
            self.close()
            text = f"SyntaxError: Unsupported import in exec: {scan.static_import}"
            return StepReport((), (), Settlement(text))
        return await self._command(f"__codemode.run({_dumps(scan.source)})")

    async def step(self, inputs: Sequence[StepInput]) -> StepReport:
        parts = []
        for item in inputs:
            if isinstance(item, ToolResultInput):
                if item.ok:
                    parts.append(f'["r",{_dumps(item.call_id)},true,{item.value_json}]')
                else:
                    parts.append(f'["r",{_dumps(item.call_id)},false,{_dumps(item.message)}]')
            else:
                parts.append(f'["t",{int(item.timer_id)}]')
        return await self._command(f"__codemode.step([{','.join(parts)}])")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._inflight is not None:
            self._inflight.cancel()
        manager, self._manager = self._manager, None
        if manager is not None:
            try:
                manager.__exit__(None, None, None)
            except Exception:  # pragma: no cover - native teardown failure
                logger.exception("freeing a V8 context failed for cell %s", self._boot.cell_id)

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
        """After a limit stopped the cell, read the output it recorded before, if V8 still can."""
        if self._closed:
            return StepReport((), (), settlement)
        try:
            raw = await asyncio.wait_for(
                self._context.eval_cancelable("__codemode.drain()"), _SALVAGE_TIMEOUT
            )
            report = self._parse(raw, 0.0)
        except Exception:
            return StepReport((), (), settlement)
        events = report.events
        reported = report.settlement
        if reported is not None and (reported.error_text or "").startswith("exec cell exceeded"):
            settlement = reported
        return StepReport(events, (), settlement)

    async def _eval(self, code: str) -> Any:
        if self._closed:
            raise EngineLost("the cell's engine was closed")
        remaining = self._limits.max_cpu_seconds - self._cpu_used
        task: asyncio.Task[Any] = asyncio.ensure_future(self._context.eval_cancelable(code))
        self._inflight = task
        started = time.perf_counter()
        try:
            done, _ = await asyncio.wait({task}, timeout=max(remaining, 0.0))
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            self._inflight = None
            self._cpu_used += time.perf_counter() - started
        if not done:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise _LimitExceeded("max_cpu_seconds")
        try:
            return task.result()
        except asyncio.CancelledError:
            raise EngineLost("the cell's engine was closed") from None
        except Exception as exc:
            from py_mini_racer import JSOOMException

            if isinstance(exc, JSOOMException):
                raise _LimitExceeded("max_heap_bytes") from exc
            raise EngineLost(f"{type(exc).__name__}: {exc}") from exc

    def _parse(self, raw: Any, cpu_seconds: float) -> StepReport:
        """Validate a drain; anything malformed means the bridge was broken from inside."""
        try:
            data = json.loads(raw)
            events = tuple(_event(ev) for ev in data["ev"])
            pending = data["pending"]
            if not isinstance(pending, list) or not all(isinstance(p, str) for p in pending):
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
                    settlement = Settlement(str(settled.get("error", "uncaught exception")))
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
        return ToolCallRequested(str(ev[1]), int(ev[2]), json.loads(ev[3]))
    if tag == "notify":
        return NotifyRequested(str(ev[1]))
    if tag == "yield":
        return YieldRequested()
    if tag == "timer":
        return TimerSet(int(ev[1]), float(ev[2]) / 1000.0)
    if tag == "clear":
        return TimerCleared(int(ev[1]))
    if tag == "store":
        return StoreWritten(str(ev[1]), json.loads(ev[2]))
    raise ValueError(f"unknown event {tag!r}")
