"""Regression tests of two bugs in other layers found by the protocol work (fixed in c5f5557).

Both were met as a hang of ``codemode serve``: a ``cell/create`` with an ``idempotencyKey`` whose
request was cancelled (``$/cancelRequest``), then its retry, never answered. A thread dump of the
server showed every V8 context creation blocked on ``_NATIVE_LOCK`` and one worker thread, inside
``_enter_context`` (holding the lock), running the garbage collector, which finalized a pending
``_new_isolate`` coroutine whose ``except BaseException: isolate.free()`` then waited for the
same lock. The coroutine was garbage because the runtime's admission task of the cancelled keyed
create was referenced by nobody (asyncio keeps tasks weakly).
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import weakref
from typing import Any

from codemode import CreateCellRequest, SessionRuntime
from codemode.engine.base import CellBoot, Engine, EngineCell
from codemode.engine.v8 import V8Engine
from conftest import RecordingDelegate


class GatedEngine(Engine):
    """Opens cells with the V8 engine after a gate future that, like mini-racer's eval future,
    is referenced only by the coroutine awaiting it (mini-racer keeps it in a callback table of
    the context, itself reachable only from that coroutine)."""

    def __init__(self) -> None:
        self.inner = V8Engine()
        self.entered = asyncio.Event()
        self.gate: weakref.ref[asyncio.Future[None]] | None = None

    async def open_cell(self, boot: CellBoot) -> EngineCell:
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.gate = weakref.ref(gate)
        self.entered.set()
        await gate
        return await self.inner.open_cell(boot)

    def close(self) -> None:
        self.inner.close()


async def test_a_cancelled_keyed_create_keeps_its_admission_alive() -> None:
    engine = GatedEngine()
    runtime = SessionRuntime(RecordingDelegate(), engine=engine)
    request = CreateCellRequest('text("x")', idempotency_key="key")
    try:
        creator = asyncio.ensure_future(runtime.create_cell(request))
        await asyncio.wait_for(engine.entered.wait(), 5)
        creator.cancel()  # docs/sessions.md: the admission still finishes and is recorded
        await asyncio.wait({creator})
        assert creator.cancelled()
        del creator  # the caller is gone (its cancelled task, and its frames, with it)
        gc.collect()  # the admission task must be referenced by the runtime, not only awaited
        gate = engine.gate() if engine.gate is not None else None
        assert gate is not None, "the admission was garbage-collected"
        gate.set_result(None)
        cell = await asyncio.wait_for(runtime.create_cell(request), 5)  # the retry finds it
        assert cell.cell_id
    finally:
        alive = engine.gate() if engine.gate is not None else None
        if alive is not None and not alive.done():
            alive.set_result(None)
        await asyncio.wait_for(runtime.shutdown(), 10)


FREE_UNDER_THE_LOCK = """
import asyncio, os, threading
from codemode.engine import v8

async def main():
    v8._init_v8()
    isolate = await v8._new_isolate(asyncio.get_running_loop())

    def worker():
        # What the garbage collector does when it finalizes a pending _new_isolate coroutine on
        # a thread that is inside _enter_context (which holds _NATIVE_LOCK while mini-racer
        # allocates): the coroutine's `except BaseException: isolate.free()` runs there.
        with v8._NATIVE_LOCK:
            isolate.free()

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    thread.join(3)
    os._exit(1 if thread.is_alive() else 0)

asyncio.run(main())
"""


def test_freeing_an_isolate_under_the_native_lock_does_not_deadlock() -> None:
    result: Any = subprocess.run(
        [sys.executable, "-c", FREE_UNDER_THE_LOCK], capture_output=True, timeout=60
    )
    assert result.returncode == 0, "the thread deadlocked on _NATIVE_LOCK"
