"""The ``monty`` column: pydantic-monty, a Python-subset sandbox."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from engines_compare.common import (
    DEADLINE,
    Adapter,
    Tools,
    _dist_bytes,
    _dist_version,
    busy_after_stop,
    pid_alive,
    process_tree,
    py_cells,
)


class MontyAdapter(Adapter):
    """pydantic-monty 1.4: Python-subset cells, executed in ``monty`` worker subprocesses of an
    ``AsyncMonty`` pool (a crash never takes the host down). Bridge: Monty's own. The host
    functions go in ``external_lookup``; a call in the sandbox suspends the worker, the pool
    awaits the async Python function (concurrently for ``asyncio.gather``) and sends the result
    back over the worker's pipe. A cell = ``pool.checkout()`` (a fresh REPL state in a warm
    worker; the pool keeps 2 workers started ahead) + ``feed_run`` + release. "On demand" =
    a pool with ``max_checkouts_per_worker=1``, so every cell spawns a new worker process.
    Runaway: cancel the ``feed_run`` future at the deadline; the pool discards (kills) the
    worker; measured until the worker process is gone. Monty's in-sandbox limit
    (``max_feed_duration_secs``) is in the JSON as well."""

    name = "monty"
    runaway_method = "cancel the feed_run future at the deadline (the worker is killed)"

    def __init__(self, calls: int, idle_n: int) -> None:
        self.src = py_cells(calls)
        self.limits = {"max_suspensions": max(1000, calls * 2 + 10)}
        self.idle_n = idle_n
        self.pool: Any = None
        self._idle: list[tuple[Any, Any]] = []

    async def start(self) -> None:
        import pydantic_monty as pm

        self.tools = Tools()
        self.lookup = {"echo": self.tools.echo, "hang": self.tools.hang}
        self.pool = pm.AsyncMonty(min_processes=2)
        await self.pool.__aenter__()

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.__aexit__(None, None, None)

    async def _run_in(self, pool: Any, key: str) -> list[str]:
        import pydantic_monty as pm

        out = pm.CollectString()
        async with pool.checkout(limits=self.limits) as session:
            await session.feed_run(self.src[key], external_lookup=self.lookup, print_callback=out)
        return out.output.splitlines()

    async def run(self, key: str, ahead: Any = None) -> list[str]:
        return await self._run_in(self.pool, key)

    async def run_cold(self, key: str) -> list[str]:
        import pydantic_monty as pm

        if not hasattr(self, "cold_pool"):
            self.cold_pool = pm.AsyncMonty(min_processes=1, max_checkouts_per_worker=1)
            await self.cold_pool.__aenter__()
        return await self._run_in(self.cold_pool, key)

    async def close_cold(self) -> None:
        if hasattr(self, "cold_pool"):
            await self.cold_pool.__aexit__(None, None, None)
            del self.cold_pool

    async def runaway(self) -> tuple[float, float]:
        session = self.pool.checkout()
        await session.__aenter__()
        pid = session.worker_pid
        try:
            feed = asyncio.ensure_future(session.feed_run(self.src["runaway"]))
            await asyncio.sleep(DEADLINE)
            t = time.perf_counter()
            feed.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feed
            while pid is not None and pid_alive(pid):  # noqa: ASYNC110 - polling /proc
                await asyncio.sleep(0.0005)
            stopped = time.perf_counter()
        finally:
            with contextlib.suppress(Exception):
                await session.__aexit__(None, None, None)
        return (stopped - t) * 1000, await busy_after_stop(process_tree())

    async def runaway_time_limit(self) -> float:
        """The in-sandbox alternative: Monty's own feed time limit (ms past the limit)."""
        import pydantic_monty as pm

        async with self.pool.checkout(limits={"max_feed_duration_secs": DEADLINE}) as session:
            t = time.perf_counter()
            try:
                await session.feed_run(self.src["runaway"])
            except pm.MontyRuntimeError as exc:
                if "TimeoutError" not in str(exc):
                    raise
            return (time.perf_counter() - t - DEADLINE) * 1000

    async def prepare_idle(self, n: int) -> None:
        # A pool of its own with no worker started ahead, so that the memory delta counts
        # exactly one worker process per idle cell (plus the pool's own small overhead / n).
        import pydantic_monty as pm

        self.idle_pool = pm.AsyncMonty(min_processes=0, max_processes=n + 1)
        await self.idle_pool.__aenter__()

    async def open_idle(self, n: int) -> None:
        for _ in range(n):
            session = self.idle_pool.checkout(limits=self.limits)
            await session.__aenter__()
            feed = asyncio.ensure_future(
                session.feed_run(self.src["idle"], external_lookup=self.lookup)
            )
            self._idle.append((session, feed))
        await self.tools.until_hanging(n)

    async def close_idle(self) -> None:
        for _, feed in self._idle:
            feed.cancel()
        for session, feed in self._idle:
            with contextlib.suppress(BaseException):
                await feed
            with contextlib.suppress(Exception):
                await session.__aexit__(None, None, None)
        self._idle.clear()
        await self.idle_pool.__aexit__(None, None, None)

    def versions(self) -> dict[str, str]:
        return {
            "pydantic-monty": _dist_version("pydantic-monty"),
            "pydantic-monty-runtime": _dist_version("pydantic-monty-runtime"),
        }

    def installed_bytes(self) -> int | None:
        sizes = [_dist_bytes(d) for d in ("pydantic-monty", "pydantic-monty-runtime")]
        return sum(s for s in sizes if s) or None


# --- deno ----------------------------------------------------------------------------------------

# One JS file, two modes. "worker": this deno process hosts many cells, each in a Web Worker
# (created from a data: URL; a worker inherits the parent's permissions, and the parent is given
# none: no --allow-* flag, --no-prompt). "process": this process is the cell. The bridge is a
# line protocol of JSON objects on stdin/stdout; a cell's calls made in one microtask checkpoint
# go out as one message (so the 1000 calls of a Promise.all are one line), and the Python side
# writes back every result that is ready in one loop iteration as one line.
