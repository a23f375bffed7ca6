"""Shared fixtures: a scriptable delegate and a runtime on real V8."""

from __future__ import annotations

import asyncio
import os
import platform
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from codemode import (
    CellLimits,
    CreateCellRequest,
    NestedToolCall,
    SessionRuntime,
    ToolDefinition,
    ToolKind,
)

ECHO = ToolDefinition("echo", "Returns its input.")
BLOCK = ToolDefinition("block", "Waits until the test releases it, then returns its input.")
FAIL = ToolDefinition("fail", "Raises its message.")
UPPER = ToolDefinition("upper", "Upper-cases a string.", kind=ToolKind.FREEFORM)
DEFAULT_TOOLS = (ECHO, BLOCK, FAIL, UPPER)

# Where the V8 engine can take its isolates' answers natively (engine/v8native.py).
NATIVE_HERE = sys.platform.startswith("linux") and platform.machine().lower() in (
    "x86_64",
    "amd64",
    "aarch64",
    "arm64",
)


class RecordingDelegate:
    """A delegate whose tools are scripted by the test.

    ``echo`` returns its input; ``block`` waits until :meth:`release` (one call id, or all) and
    then returns its input; ``fail`` raises ``RuntimeError(input["message"])``; ``upper``
    upper-cases its string. Every invocation, cancellation and notification is recorded.
    """

    def __init__(self) -> None:
        self.calls: list[NestedToolCall] = []
        self.cancelled: list[str] = []
        self.notifications: list[tuple[str, str, str]] = []
        self.released: dict[str, asyncio.Event] = {}
        self.release_all = asyncio.Event()
        self.invoked = asyncio.Event()
        self.notify_gate: asyncio.Event | None = None
        self.notify_started = asyncio.Event()
        self.results: dict[str, Any] = {}

    def _event(self, call_id: str) -> asyncio.Event:
        return self.released.setdefault(call_id, asyncio.Event())

    def release(self, call_id: str | None = None, result: Any = None) -> None:
        if call_id is None:
            self.release_all.set()
            return
        if result is not None:
            self.results[call_id] = result
        self._event(call_id).set()

    def names(self) -> list[str]:
        return [c.tool.name for c in self.calls]

    async def invoke_tool(self, call: NestedToolCall) -> Any:
        self.calls.append(call)
        self.invoked.set()
        try:
            name = call.tool.name
            if name == "fail":
                raise RuntimeError(call.input.get("message", "failed"))
            if name == "upper":
                return str(call.input).upper()
            if name in ("block", "first", "second", "audit") or name.startswith("block"):
                mine = self._event(call.call_id)
                waiters = [
                    asyncio.ensure_future(mine.wait()),
                    asyncio.ensure_future(self.release_all.wait()),
                ]
                try:
                    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waiters:
                        w.cancel()
                return self.results.get(call.call_id, call.input)
            return call.input
        except asyncio.CancelledError:
            self.cancelled.append(call.call_id)
            raise

    async def notify(self, call_id: str, cell_id: str, text: str) -> None:
        self.notify_started.set()
        if self.notify_gate is not None:
            await self.notify_gate.wait()
        self.notifications.append((call_id, cell_id, text))

    async def wait_calls(self, n: int) -> None:
        """Wait (at most 5 s) until the delegate has seen ``n`` calls."""
        async with asyncio.timeout(5.0):
            while len(self.calls) < n:
                self.invoked.clear()
                await self.invoked.wait()


def request(source: str, *tools: ToolDefinition, **kw: Any) -> CreateCellRequest:
    return CreateCellRequest(source, tools or DEFAULT_TOOLS, **kw)


@pytest.fixture
def delegate() -> RecordingDelegate:
    return RecordingDelegate()


@pytest.fixture
async def runtime(delegate: RecordingDelegate) -> AsyncIterator[SessionRuntime]:
    rt = SessionRuntime(delegate)
    try:
        yield rt
    finally:
        await asyncio.wait_for(rt.shutdown(), 10)


@pytest.fixture
async def make_runtime(delegate: RecordingDelegate) -> AsyncIterator[Any]:
    """A factory of runtimes (with limits or another delegate); all are shut down afterwards."""
    created: list[SessionRuntime] = []

    def make(limits: CellLimits | None = None, d: Any = None) -> SessionRuntime:
        rt = SessionRuntime(d or delegate, limits=limits)
        created.append(rt)
        return rt

    try:
        yield make
    finally:
        for rt in created:
            await asyncio.wait_for(rt.shutdown(), 10)


def native_threads() -> int:
    """Threads of this process, native V8 ones included."""
    with open(f"/proc/{os.getpid()}/status") as fh:
        for line in fh:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return -1


def engine_threads() -> int:
    """Native threads that are not Python threads: V8's isolate threads and their helpers."""
    import threading

    return native_threads() - threading.active_count()


def engine_thread_ids() -> set[int]:
    """The ids of the native threads that are not Python threads (see :func:`engine_threads`).
    A test that checks its own cells' threads are gone compares these sets rather than counts:
    other native threads of the process (a Ray client's, gRPC's) come and go on their own."""
    import threading

    python = {t.native_id for t in threading.enumerate()}
    return {int(tid) for tid in os.listdir(f"/proc/{os.getpid()}/task")} - python


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# Every cell machine of the test session (and of the servers it spawns, which inherit the
# environment) is strict: an input that only a driver bug could produce raises DriverBug.
os.environ.setdefault("CODEMODE_STRICT_MACHINE", "1")
