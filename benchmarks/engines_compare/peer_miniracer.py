"""The ``mini-racer`` column: the same V8 without codemode, through its public API."""

from __future__ import annotations

import asyncio
import contextlib
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

MINIRACER_PRELUDE = """
globalThis.__out = [];
globalThis.text = (s) => { __out.push(String(s)); };
globalThis.__install = (host) => {
  globalThis.tools = {
    echo: async (v) => JSON.parse(await host("echo", JSON.stringify(v))),
    hang: async (v) => JSON.parse(await host("hang", JSON.stringify(v))),
  };
};
"""


class MiniRacerAdapter(Adapter):
    """The same V8 without codemode, through mini-racer's public API. Bridge: an async Python
    function wrapped with ``MiniRacer.wrap_py_function`` (a JS function that returns a promise;
    each JS call notifies Python, which runs the function as an asyncio task and resolves the
    promise with a synchronous call into the isolate). Values cross as JSON text, as in
    codemode. The cell is ``(async () => {...})()``; Python awaits the returned ``JSPromise``.
    "Created ahead" = a ``MiniRacer()`` made before the timer starts. Runaway: cancel the
    ``eval_cancelable`` task at the deadline (mini-racer then terminates the isolate's
    JavaScript). Note ENGINE-NOTES trap 3: this public bridge can freeze the host loop when an
    answer arrives while the isolate spins; codemode avoids it."""

    name = "mini-racer"
    runaway_method = "cancel the eval_cancelable task at the deadline"

    def __init__(self, calls: int) -> None:
        self.src = js_cells(calls)
        self._idle: list[Any] = []
        self._stack = contextlib.AsyncExitStack()

    async def start(self) -> None:
        self.tools = Tools()

    async def _host(self, name: Any, arg: Any) -> str:
        return json.dumps(await self.tools.call(str(name), json.loads(str(arg))))

    @staticmethod
    def _new() -> Any:
        from py_mini_racer import MiniRacer

        mr = MiniRacer()  # its own isolate and thread, bound to the running loop
        mr.set_hard_memory_limit(64 * MiB)  # ENGINE-NOTES trap 1, as codemode does
        mr.eval(MINIRACER_PRELUDE)  # like codemode's pool, the prelude comes with the context
        return mr

    async def make_ahead(self) -> Any:
        return self._new()

    async def run(self, key: str, ahead: Any = None) -> list[str]:
        mr = ahead if ahead is not None else self._new()
        try:
            async with mr.wrap_py_function(self._host) as host:
                mr.eval("__install")(host)
                # eval_cancelable runs the cell's synchronous part on the isolate's thread
                # without blocking the host loop (plain eval would block it).
                promise = await mr.eval_cancelable(f"(async () => {{\n{self.src[key]}\n}})()")
                await promise
                return list(json.loads(mr.eval("JSON.stringify(__out)")))
        finally:
            mr.close()

    async def runaway(self) -> tuple[float, float]:
        mr = self._new()
        try:
            task = asyncio.ensure_future(mr.eval_cancelable(self.src["runaway"]))
            await asyncio.sleep(DEADLINE)
            t = time.perf_counter()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            stopped = time.perf_counter()
            return (stopped - t) * 1000, await busy_after_stop([os.getpid()])
        finally:
            mr.close()

    async def open_idle(self, n: int) -> None:
        for _ in range(n):
            mr = self._new()
            self._stack.callback(mr.close)
            host = await self._stack.enter_async_context(mr.wrap_py_function(self._host))
            mr.eval("__install")(host)
            self._idle.append(mr.eval(f"(async () => {{\n{self.src['idle']}\n}})()"))
        await self.tools.until_hanging(n)

    async def close_idle(self) -> None:
        self._idle.clear()
        await self._stack.aclose()

    def versions(self) -> dict[str, str]:
        from py_mini_racer import MiniRacer

        with MiniRacer() as mr:
            v8 = mr.v8_version
        return {"mini-racer": _dist_version("mini-racer"), "v8": v8}

    def installed_bytes(self) -> int | None:
        return _dist_bytes("mini-racer")


# --- quickjs-ng ---------------------------------------------------------------------------------
