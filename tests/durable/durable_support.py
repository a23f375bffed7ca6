"""Helpers of the durable-session tests: stores (SQLite, and a real PostgreSQL server) and a
delegate that can be told to hang, so a test can stop a runtime with calls in flight."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "store"))

import contextlib

from store_support import Backend, backend_fixture, postgres_server_fixture

from codemode import CellLimits, SessionRuntime
from codemode.engine.base import EngineCell, StepInput, StepReport

__all__ = [
    "Backend",
    "Runtimes",
    "WrappedCell",
    "backend_fixture",
    "postgres_server_fixture",
    "runtimes_fixture",
]


class WrappedCell(EngineCell):
    """A real engine cell that a test's engine wraps: everything is passed to ``inner``; a
    subclass overrides what it changes (a sandbox that dies, a start it records)."""

    def __init__(self, inner: EngineCell) -> None:
        self.inner = inner

    async def run(self) -> StepReport:
        return await self.inner.run()

    async def step(self, inputs: Sequence[StepInput]) -> StepReport:
        return await self.inner.step(inputs)

    def close(self) -> None:
        self.inner.close()

    @property
    def closed(self) -> bool:
        return self.inner.closed


class Runtimes:
    """Makes durable runtimes on one store location (each with a store of its own, as another
    process would) and shuts down or suspends whatever a test leaves open."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.made: list[SessionRuntime] = []

    def make(
        self,
        delegate: Any,
        session_id: str | None = None,
        *,
        limits: CellLimits | None = None,
        lease_seconds: float = 10.0,
        engine: Any = None,
    ) -> SessionRuntime:
        store = self.backend.make(lease_seconds=lease_seconds)
        rt = SessionRuntime(
            delegate, limits=limits, store=store, session_id=session_id, engine=engine
        )
        self.made.append(rt)
        return rt

    async def close(self) -> None:
        for rt in self.made:
            if rt.is_alive:
                with contextlib.suppress(Exception):
                    await rt.suspend()


@pytest.fixture(name="runtimes")
async def runtimes_fixture(backend: Backend) -> AsyncIterator[Runtimes]:
    made = Runtimes(backend)
    try:
        yield made
    finally:
        await made.close()
