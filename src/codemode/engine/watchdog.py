"""A process-wide native-memory watchdog for engines that run cells in the host process.

V8's heap limit does not see native memory: ICU objects (``Intl.*``), parser zones, regular
expression code. A cell can grow the process's resident memory by gigabytes without touching
``max_heap_bytes``. :class:`GuardedEngine` wraps an engine and samples the process's resident set
size (RSS) while any of its cells runs JavaScript; when RSS passes the budget it stops the cell
whose current run grew the process the most, and that cell completes with
``exec cell exceeded rss_budget_bytes ({budget})``, keeping the output it produced before.

This is a guard for trusted workloads: it samples (every ``interval`` seconds), so memory grown
inside one long native call can overshoot before the cell is stopped, and memory the allocator
keeps after a cell ends still counts. Untrusted code belongs in :class:`WorkerEngine`, whose
worker processes also run under an OS limit. See ``docs/engines.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar, cast

from codemode.engine.base import (
    CellBoot,
    Engine,
    EngineCell,
    EngineEvent,
    Settlement,
    StepInput,
    StepReport,
)
from codemode.engine.drain import RawReport

__all__ = ["DEFAULT_INTERVAL", "GuardedEngine", "rss_bytes", "rss_error_text"]

logger = logging.getLogger("codemode.engine.watchdog")

DEFAULT_INTERVAL = 0.01  # seconds between samples while a guarded cell runs

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


_T = TypeVar("_T")


class _RawCell(Protocol):
    """A cell whose reports can be taken unchecked (the V8 engine's: engine/drain.py)."""

    async def run_raw(self) -> RawReport: ...
    async def step_raw(self, text: str, count: int) -> RawReport: ...
    async def stop_raw(self) -> RawReport: ...


_statm: int | None = None  # a descriptor of /proc/self/statm, kept open (one pread a sample)


def _forget_statm() -> None:
    """In a forked child: the inherited descriptor names the parent's file; reopen."""
    global _statm
    fd, _statm = _statm, None
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_statm)


def rss_bytes() -> int:
    """The resident memory of this process in bytes (Linux ``/proc``); 0 where unknown."""
    global _statm
    try:
        if _statm is None:
            _statm = os.open("/proc/self/statm", os.O_RDONLY)
        return int(os.pread(_statm, 128, 0).split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def rss_error_text(budget: int) -> str:
    """The ``error_text`` of a cell stopped by the watchdog."""
    return f"exec cell exceeded rss_budget_bytes ({budget!r})"


class _Run:
    """One command of a guarded cell, in flight."""

    __slots__ = ("budget", "cell", "rss_at_start")

    def __init__(self, cell: _GuardedCell, budget: int, rss_at_start: int) -> None:
        self.cell = cell
        self.budget = budget
        self.rss_at_start = rss_at_start


class _Monitor:
    """Samples RSS on one event loop while guarded commands are in flight."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        self.loop = loop
        self.interval = interval
        self.runs: set[_Run] = set()
        self._handle: asyncio.TimerHandle | None = None

    def add(self, run: _Run) -> None:
        self.runs.add(run)
        if self._handle is None:
            self._handle = self.loop.call_later(self.interval, self._sample)

    def discard(self, run: _Run) -> None:
        self.runs.discard(run)

    def _sample(self) -> None:
        self._handle = None
        if not self.runs:
            return
        rss = rss_bytes()
        over = [r for r in self.runs if rss > r.budget and rss > r.rss_at_start]
        if over:
            # The cell whose current run grew the process the most is the one to stop.
            worst = max(over, key=lambda r: rss - r.rss_at_start)
            self.runs.discard(worst)
            logger.warning(
                "cell %s stopped: process RSS %d bytes passed the budget of %d bytes",
                worst.cell.cell_id,
                rss,
                worst.budget,
            )
            worst.cell.overrun(worst.budget)
        if self.runs:
            self._handle = self.loop.call_later(self.interval, self._sample)


_monitors: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Monitor] = (
    weakref.WeakKeyDictionary()
)


def _monitor(interval: float) -> _Monitor:
    loop = asyncio.get_running_loop()
    monitor = _monitors.get(loop)
    if monitor is None:
        monitor = _monitors[loop] = _Monitor(loop, interval)
    monitor.interval = min(monitor.interval, interval)
    return monitor


class GuardedEngine(Engine):
    """Wraps ``inner`` (default: a new in-process :class:`V8Engine`) with an RSS budget.

    ``rss_budget_bytes`` bounds the resident memory of the whole process: while one of this
    engine's cells runs JavaScript and the process's RSS is above the budget, the running cell
    whose current command grew RSS the most is stopped and completes with
    ``exec cell exceeded rss_budget_bytes ({budget})`` (output produced before is kept). Set the
    budget well above the process's normal footprint. Engines on one event loop share one
    sampler. Linux only (``/proc``); elsewhere the guard never fires.
    """

    def __init__(
        self,
        inner: Engine | None = None,
        *,
        rss_budget_bytes: int,
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        if isinstance(rss_budget_bytes, bool) or rss_budget_bytes <= 0:
            raise ValueError("rss_budget_bytes must be a positive integer")
        if not interval > 0:
            raise ValueError("interval must be positive")
        if inner is None:
            from codemode.engine.v8 import V8Engine

            inner = V8Engine()
        self.inner = inner
        self.name = inner.name
        self.language = inner.language
        self.rss_budget_bytes = int(rss_budget_bytes)
        self.interval = float(interval)

    async def open_cell(self, boot: CellBoot) -> EngineCell:
        cell = await self.inner.open_cell(boot)
        return _GuardedCell(cell, boot.cell_id, self.rss_budget_bytes, _monitor(self.interval))

    def close(self) -> None:
        self.inner.close()

    async def aclose(self) -> None:
        await self.inner.aclose()


class _GuardedCell(EngineCell):
    def __init__(self, inner: EngineCell, cell_id: str, budget: int, monitor: _Monitor) -> None:
        self.inner = inner
        self.cell_id = cell_id
        self._budget = budget
        self._monitor = monitor
        self._task: asyncio.Task[Any] | None = None
        self._overrun: int | None = None

    @property
    def closed(self) -> bool:
        return self.inner.closed

    async def run(self) -> StepReport:
        return await self._guarded(self.inner.run, self._overrun_report)

    async def step(self, inputs: Sequence[StepInput]) -> StepReport:
        return await self._guarded(lambda: self.inner.step(inputs), self._overrun_report)

    async def stop(self) -> tuple[EngineEvent, ...]:
        return await self.inner.stop()

    # The same, the reports unchecked (a worker process's cells: their host checks them).
    async def run_raw(self) -> RawReport:
        return await self._guarded(self._raw().run_raw, self._overrun_raw)

    async def step_raw(self, text: str, count: int) -> RawReport:
        return await self._guarded(lambda: self._raw().step_raw(text, count), self._overrun_raw)

    async def stop_raw(self) -> RawReport:
        return await self._raw().stop_raw()

    def _raw(self) -> _RawCell:
        return cast(_RawCell, self.inner)

    async def _overrun_report(self, budget: int, stop: bool) -> StepReport:
        """The cell ends with the budget's error, keeping the output it produced before."""
        events = await self.inner.stop() if stop else ()
        return StepReport(events, (), Settlement(rss_error_text(budget)))

    async def _overrun_raw(self, budget: int, stop: bool) -> RawReport:
        stopped = await self._raw().stop_raw() if stop else RawReport()
        return dataclasses.replace(stopped, ending=rss_error_text(budget))

    def close(self) -> None:
        self.inner.close()

    def watch_loss(self, callback: Callable[[str], None]) -> None:
        self.inner.watch_loss(callback)

    def overrun(self, budget: int) -> None:
        """Called by the monitor: stop the command in flight; it reports the budget error."""
        task = self._task
        if task is not None and self._overrun is None and task.cancel():
            self._overrun = budget  # abandoning the engine's step stops its JavaScript

    async def _guarded(
        self,
        command: Callable[[], Awaitable[_T]],
        overrun: Callable[[int, bool], Awaitable[_T]],
    ) -> _T:
        if self._overrun is not None:
            return await overrun(self._overrun, False)
        # The watchdog cancels the task running this command (no task of our own per command:
        # this is every nested call's path) and takes its cancellation back below.
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        run = _Run(self, self._budget, rss_bytes())
        self._monitor.add(run)
        try:
            return await command()
        except asyncio.CancelledError:
            if self._overrun is None or task.uncancel() > 0:
                raise  # our caller was cancelled (too): the engine abandoned the command
        finally:
            self._monitor.discard(run)
            self._task = None
        # The watchdog stopped the command: keep what the cell had produced, then end it.
        return await overrun(self._overrun, True)
