"""The ``codemode`` column: V8 through codemode's whole session runtime."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from engines_compare.common import (
    DEADLINE,
    Adapter,
    Tools,
    _dist_bytes,
    _dist_version,
    busy_after_stop,
    js_cells,
)


class CodemodeAdapter(Adapter):
    """V8 through codemode's full runtime: ``SessionRuntime.create_cell`` then ``wait`` until
    ``Completed``. The bridge is codemode's own: the cell's ``tools.echo(...)`` goes to an outbox
    in the isolate; after each host-to-V8 step the runtime drains it (JSON text only), runs the
    delegate's async function as a task, and feeds the results back in one batched
    ``eval_cancelable`` step. Isolates come from codemode's pool created ahead (4 by default);
    the "on demand" row uses ``V8Engine(pool_size=0)``. Runaway: ``terminate(cell)`` at the
    deadline cancels the running eval, which terminates the isolate's JavaScript."""

    name = "codemode"
    runaway_method = "SessionRuntime.terminate(cell) at the deadline"

    def __init__(self, calls: int, idle_n: int) -> None:
        self.src = js_cells(calls)
        self.calls = calls
        self.idle_n = idle_n
        self.rt: Any = None
        self.engine: Any = None
        self._idle: list[Any] = []

    def _runtime(self, pool_size: int | None) -> Any:
        from codemode import CellLimits, SessionRuntime, tools_delegate

        self.tools = Tools()
        limits = CellLimits(
            max_tool_calls=self.calls * 2 + 10,
            max_parallel_tool_calls=self.calls + 10,
            max_live_cells=max(256, self.idle_n + 16),
            max_idempotency_keys=max(10_000, self.idle_n + 16),
        )
        engine = self._engine(pool_size)
        if pool_size is None:
            self.engine = engine
        delegate = tools_delegate({"echo": self.tools.echo, "hang": self.tools.hang})
        return SessionRuntime(delegate, limits=limits, engine=engine)

    def _engine(self, pool_size: int | None) -> Any:
        from codemode.engine.v8 import V8Engine

        return V8Engine() if pool_size is None else V8Engine(pool_size=pool_size)

    async def start(self) -> None:
        self.rt = self._runtime(None)
        await self.rt.__aenter__()

    async def before_cell(self) -> None:
        """Untimed, like the other engines' sandboxes made ahead: let the isolate pool finish
        replacing the isolate the last cell took (codemode refills it in the background; a
        cell started right behind another would otherwise share the machine with that refill).
        Reads the pool's private state, the same on older checkouts (``--baseline``)."""
        pool = getattr(self.engine, "_pool", None)
        give_up = time.perf_counter() + 1.0
        while pool is not None and time.perf_counter() < give_up:
            if getattr(pool, "_refill_handle", None) is None and not getattr(pool, "_filling", ()):
                return
            await asyncio.sleep(0.002)

    async def close(self) -> None:
        if self.rt is not None:
            await self.rt.__aexit__(None, None, None)
            self.rt = None

    @staticmethod
    async def _run_in(rt: Any, source: str) -> list[str]:
        from codemode import Completed, CreateCellRequest, ToolDefinition

        cell = await rt.create_cell(
            CreateCellRequest(source, (ToolDefinition("echo"), ToolDefinition("hang")))
        )
        event = await rt.wait(cell, 120)
        if not isinstance(event, Completed) or event.error_text is not None:
            raise RuntimeError(f"cell did not complete: {event}")
        return [getattr(item, "text", "") for item in event.items]

    async def run(self, key: str, ahead: Any = None) -> list[str]:
        return await self._run_in(self.rt, self.src[key])

    async def run_cold(self, key: str) -> list[str]:
        raise AssertionError("measured by cold_phase")

    async def cold_phase(self, warmup: int, n: int) -> list[float]:
        """Cells on a runtime whose engine has no pool. Run while no other V8Engine is alive on
        this loop (engines on one loop share one pool, the largest size wins)."""
        rt = self._runtime(0)
        async with rt:
            for _ in range(warmup):
                await self._run_in(rt, self.src["fresh"])
            times = []
            for _ in range(n):
                t = time.perf_counter()
                out = await self._run_in(rt, self.src["fresh"])
                times.append((time.perf_counter() - t) * 1000)
                assert out == ["hi"], out
        return times

    async def runaway(self) -> tuple[float, float]:
        from codemode import CreateCellRequest, Terminated

        cell = await self.rt.create_cell(CreateCellRequest(self.src["runaway"], ()))
        await asyncio.sleep(DEADLINE)
        t = time.perf_counter()
        event = await self.rt.terminate(cell)
        stopped = time.perf_counter()
        if not isinstance(event, Terminated):
            raise RuntimeError(f"unexpected {event}")
        return (stopped - t) * 1000, await busy_after_stop([os.getpid()])

    async def open_idle(self, n: int) -> None:
        from codemode import CreateCellRequest, ToolDefinition

        for _ in range(n):
            cell = await self.rt.create_cell(
                CreateCellRequest(self.src["idle"], (ToolDefinition("hang"),))
            )
            self._idle.append(cell)
        await self.tools.until_hanging(n)

    async def close_idle(self) -> None:
        for cell in self._idle:
            await self.rt.terminate(cell)
        self._idle.clear()

    def versions(self) -> dict[str, str]:
        import codemode

        return {
            "codemode": f"{codemode.__version__} ({os.path.dirname(codemode.__file__)})",
            "mini-racer": _dist_version("mini-racer"),
        }

    def installed_bytes(self) -> int | None:
        return _dist_bytes("mini-racer")


class CodemodeWorkerAdapter(CodemodeAdapter):
    """The same session runtime on ``WorkerEngine``: V8 in one child process behind a pipe
    (docs/engines.md). Every cell of the runtime goes to that one worker; its isolates come from
    the worker's own pool (2 by default, ``pool_size=0`` for the "on demand" row). Runaway:
    ``terminate(cell)`` at the deadline; the worker abandons the running eval. The memory rows
    count the worker process (the child's RSS grows with each idle cell)."""

    name = "codemode-worker"

    def _engine(self, pool_size: int | None) -> Any:
        from codemode.engine.worker import WorkerEngine

        return WorkerEngine() if pool_size is None else WorkerEngine(pool_size=pool_size)

    async def runaway(self) -> tuple[float, float]:
        from engines_compare.common import process_tree

        ms, _ = await super().runaway()
        return ms, await busy_after_stop(process_tree())


# --- raw mini-racer ----------------------------------------------------------------------------
