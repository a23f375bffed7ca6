"""The same code-mode workloads on several sandbox engines, side by side on this machine.

Set up and run the full comparison with one command (from the repository root)::

    benchmarks/compare-setup.sh --run

It creates ``benchmarks/.venv-compare`` from the pinned ``benchmarks/requirements-compare.txt``
(codemode itself with ``-e .``, quickjs-ng, pydantic-monty, deno) and runs this script there
(``--run --runs 3`` repeats the whole comparison three times). The comparison engines never
become dependencies of the project. Later runs:
``benchmarks/.venv-compare/bin/python benchmarks/engines_compare.py [--runs 3]``, or ``./dev
bench``: run with any other interpreter (the main ``.venv``), this script re-executes itself in
``benchmarks/.venv-compare`` when that exists; otherwise it measures what it can (codemode and raw
mini-racer are in the main venv) and prints which engines are missing.

Engines (columns), each in its own child process so that memory figures and V8 flags do not mix:

- ``codemode``: V8 through codemode's whole session runtime (``SessionRuntime.create_cell`` +
  ``wait``; the pool of isolates created ahead, JSON-only bridge, outbox drains).
- ``mini-racer``: the same V8 (mini-racer 0.14.1) without codemode, through its public API.
- ``quickjs-ng``: QuickJS through the PyPI ``quickjs-ng`` wrapper, on the asyncio thread.
- ``monty``: pydantic-monty, a Python-subset sandbox; its cells are the equivalent Python.
- ``deno-worker``: one long-lived ``deno`` process; each cell is a Web Worker in it.
- ``deno-process``: one ``deno`` process per cell.

Workloads (rows); every cell's output is checked, so a figure always comes from a cell that did
the work. A "cell" is timed from the host's request until the host holds its output and every
disposal step the host must wait for is done (``MiniRacer.close()``, dropping a QuickJS context,
releasing a Monty session); teardown an engine does off the cell's path (codemode frees isolates
on a worker thread, a Deno worker is terminated fire-and-forget, a Deno cell process exits by
itself and is reaped between cells) is not timed.

- fresh cell: create the sandbox, set up the bridge, run a program that outputs "hi", dispose.
  Twice: with the sandbox created ahead of time (codemode's isolate pool, a ``MiniRacer()`` or
  QuickJS context made before the timer, Monty's warm worker pool, a Deno worker or process
  spawned and ready: creation not timed), and with it created on demand (timed).
- 1000 sequential awaited host calls, each a round trip to an async Python function that echoes
  its input: calls/s over the whole cell (sandbox made ahead), as in ``cell_basics.py``.
- 1000 host calls in one ``Promise.all`` (``asyncio.gather`` in Monty): the whole cell, ms.
- one call echoing a 1 MiB string (whole cell): the cost of moving data across the bridge.
- pure compute: 10^6 iterations of ``s = (s + i*i) % 1000003`` (whole cell): the price of an
  interpreter (QuickJS, Monty) against a JIT (V8; codemode and mini-racer run V8 with
  ``--single-threaded``, so no concurrent optimising compiler, unlike Deno).
- stop ``while (true) {}`` from the host: milliseconds from the deadline (50 ms after the start)
  until the host has it stopped, checked by sampling the CPU the engine's process(es) burn over
  the next 0.3 s (a "stop" that leaves a thread spinning is reported as not possible). QuickJS
  has no host-side stop: its figure is how far past a 50 ms CPU-time limit, set before the run,
  the loop was interrupted.
- the host event loop's longest stall while compute cells run (a 1 ms ticker): an engine that
  runs JavaScript on the loop's own thread blocks the host for the whole cell. On a loaded
  machine the noise floor is several ms.
- memory per live idle cell: N cells each waiting on a host call that never answers; the
  resident-set (RSS) delta of this process and all its children, divided by N, and the same for
  the proportional set size (PSS), which splits pages shared between processes (RSS counts the
  shared binary of every extra worker or deno process again; PSS counts it once, but moves a
  little when unrelated processes map the same libraries); and the threads and processes each
  cell holds.

How each engine's host-call bridge works is documented on its adapter class below. Figures are
medians over repeated runs; ``--runs N`` repeats the whole comparison (fresh child processes) and
reports the median of the per-run medians. Prints a table and writes
``benchmarks/results/engines_compare.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
COMPARE_VENV = HERE / ".venv-compare"
RESULTS = HERE / "results" / "engines_compare.json"
REEXEC_GUARD = "CODEMODE_ENGINES_COMPARE_REEXEC"

ENGINES = ("codemode", "mini-racer", "quickjs-ng", "monty", "deno-worker", "deno-process")
MiB = 1024 * 1024
DEADLINE = 0.050  # the runaway cell's host-side deadline, seconds after its start
COMPUTE_N = 1_000_000
PAYLOAD = 1 << 20
# A stopped runaway burns ~0 CPU afterwards; a spinning thread ~1 core (~0.5 on a loaded 2-core
# machine). Above this fraction of a core the stop did not really stop it.
BUSY = 0.2


# ---------------------------------------------------------------------------------------------
# Cells: the same programs in JavaScript and in Monty's Python subset, with their expected output


def js_cells(calls: int) -> dict[str, str]:
    return {
        "fresh": 'text("hi")',
        "seq": (
            f"let n = 0; for (let i = 0; i < {calls}; i++) n += (await tools.echo({{i}})).i;"
            " text(String(n))"
        ),
        "par": (
            f"const r = await Promise.all(Array.from({{length: {calls}}},"
            " (_, i) => tools.echo({i})));"
            " text(String(r.reduce((a, x) => a + x.i, 0)))"
        ),
        "payload": (
            f'const r = await tools.echo({{s: "x".repeat({PAYLOAD})}}); text(String(r.s.length))'
        ),
        "compute": (
            f"let s = 0; for (let i = 0; i < {COMPUTE_N}; i++) s = (s + i * i) % 1000003;"
            " text(String(s))"
        ),
        "idle": "await tools.hang({})",
        "runaway": "while (true) {}",
    }


def py_cells(calls: int) -> dict[str, str]:
    return {
        "fresh": 'print("hi")',
        "seq": f"n = 0\nfor i in range({calls}):\n    n += (await echo({{'i': i}}))['i']\nprint(n)",
        "par": (
            "import asyncio\n"
            f"r = await asyncio.gather(*[echo({{'i': i}}) for i in range({calls})])\n"
            "print(sum([x['i'] for x in r]))"
        ),
        "payload": f"r = await echo({{'s': 'x' * {PAYLOAD}}})\nprint(len(r['s']))",
        "compute": (
            f"s = 0\nfor i in range({COMPUTE_N}):\n    s = (s + i * i) % 1000003\nprint(s)"
        ),
        "idle": "await hang({})",
        "runaway": "while True:\n    pass",
    }


def expected_outputs(calls: int) -> dict[str, list[str]]:
    s = 0
    for i in range(COMPUTE_N):
        s = (s + i * i) % 1000003
    total = str(calls * (calls - 1) // 2)
    return {
        "fresh": ["hi"],
        "seq": [total],
        "par": [total],
        "payload": [str(PAYLOAD)],
        "compute": [str(s)],
    }


class NotPossible(Exception):
    """The engine cannot do this workload; the message says why."""


# The host tools every engine calls: an async Python function that echoes its input, and one
# that never answers (for idle cells).
class Tools:
    def __init__(self) -> None:
        self.hanging = 0
        self.hang_event = asyncio.Event()
        self._never: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def echo(self, value: Any) -> Any:
        return value

    async def hang(self, value: Any) -> Any:
        self.hanging += 1
        self.hang_event.set()
        return await asyncio.shield(self._never)

    def call(self, name: str, value: Any) -> Any:
        return self.echo(value) if name == "echo" else self.hang(value)

    async def until_hanging(self, n: int) -> None:
        deadline = time.monotonic() + 60.0
        while self.hanging < n:
            self.hang_event.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"only {self.hanging} of {n} idle cells reached their call")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.hang_event.wait(), left)


# ---------------------------------------------------------------------------------------------
# Process measurements (Linux /proc)


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def process_tree(root: int | None = None) -> list[int]:
    root = os.getpid() if root is None else root
    kids = _children()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, ()))
    return out


def _rollup(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes of one process."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, pss


def tree_memory() -> dict[str, int]:
    pids = process_tree()
    rss = pss = threads = 0
    for pid in pids:
        r, p = _rollup(pid)
        rss += r
        pss += p
        with contextlib.suppress(OSError):
            threads += len(os.listdir(f"/proc/{pid}/task"))
    return {"rss": rss, "pss": pss, "threads": threads, "processes": len(pids)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def busy_after_stop(pids: list[int], window: float = 0.3) -> float:
    """Fraction of one core the given processes burn over ``window`` seconds after a stop: about
    0 when the runaway really stopped, about 1 when a thread still spins."""
    before = sum(cpu_seconds(p) for p in pids)
    await asyncio.sleep(window)
    return (sum(cpu_seconds(p) for p in pids) - before) / window


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def settle_memory() -> None:
    gc.collect()
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


# ---------------------------------------------------------------------------------------------
# Adapters. Each runs one cell per call of ``run``: create (or take the one made ahead),
# bridge, run, read the output, dispose.


class Adapter:
    name = ""
    runaway_method = ""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def before_cell(self) -> None:
        """Untimed housekeeping before each timed cell."""

    async def prepare_idle(self, n: int) -> None:
        """Untimed set-up before the idle-memory baseline is taken."""

    async def make_ahead(self) -> Any:
        """Create a sandbox ahead of time (not timed); ``None`` when the engine has its own pool
        of sandboxes created ahead."""
        return None

    async def run(self, key: str, ahead: Any = None) -> list[str]:
        raise NotImplementedError

    async def run_cold(self, key: str) -> list[str]:
        return await self.run(key)

    async def runaway(self) -> tuple[float, float]:
        """Start ``while(true){}``, stop it from the host at the deadline: (ms from the deadline
        until stopped, fraction of a core still burnt afterwards)."""
        raise NotPossible("not implemented")

    async def open_idle(self, n: int) -> None:
        raise NotPossible("not implemented")

    async def close_idle(self) -> None: ...

    def versions(self) -> dict[str, str]:
        return {}

    def installed_bytes(self) -> int | None:
        return None


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def _dist_bytes(dist: str) -> int | None:
    """Installed size of a distribution: the files its RECORD lists."""
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    total = 0
    for f in files:
        with contextlib.suppress(OSError):
            total += f.locate().stat().st_size
    return total


# --- codemode ----------------------------------------------------------------------------------


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
        self._idle: list[Any] = []

    def _runtime(self, pool_size: int | None) -> Any:
        from codemode import CellLimits, SessionRuntime, tools_delegate
        from codemode.engine.v8 import V8Engine

        self.tools = Tools()
        limits = CellLimits(
            max_tool_calls=self.calls * 2 + 10,
            max_parallel_tool_calls=self.calls + 10,
            max_live_cells=max(256, self.idle_n + 16),
            max_idempotency_keys=max(10_000, self.idle_n + 16),
        )
        engine = V8Engine() if pool_size is None else V8Engine(pool_size=pool_size)
        delegate = tools_delegate({"echo": self.tools.echo, "hang": self.tools.hang})
        return SessionRuntime(delegate, limits=limits, engine=engine)

    async def start(self) -> None:
        self.rt = self._runtime(None)
        await self.rt.__aenter__()

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

        return {"codemode": codemode.__version__, "mini-racer": _dist_version("mini-racer")}

    def installed_bytes(self) -> int | None:
        return _dist_bytes("mini-racer")


# --- raw mini-racer ----------------------------------------------------------------------------

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
DENO_HOST_JS = r"""
function makeCell(post) {
  const out = [];
  const pending = new Map();
  let next = 0;
  let queue = [];
  const flush = () => { const calls = queue; queue = []; post({ op: "calls", calls }); };
  const call = (name, input) => new Promise((resolve, reject) => {
    const id = ++next;
    pending.set(id, [resolve, reject]);
    if (queue.length === 0) queueMicrotask(flush);
    queue.push([id, name, input]);
  });
  globalThis.tools = { echo: (v) => call("echo", v), hang: (v) => call("hang", v) };
  globalThis.text = (s) => { out.push(String(s)); };
  const AsyncFunction = (async () => {}).constructor;
  return (msg) => {
    if (msg.op === "run") {
      let fn;
      try { fn = new AsyncFunction(msg.src); }
      catch (e) { post({ op: "done", out, error: String(e) }); return; }
      fn().then(() => post({ op: "done", out, error: null }),
                (e) => post({ op: "done", out, error: String((e && e.stack) || e) }));
    } else if (msg.op === "res") {
      for (const [id, ok, v] of msg.r) {
        const p = pending.get(id);
        pending.delete(id);
        if (ok) p[0](v); else p[1](new Error(v));
      }
    }
  };
}

const enc = new TextEncoder();
function send(obj) {
  const bytes = enc.encode(JSON.stringify(obj) + "\n");
  let off = 0;
  while (off < bytes.length) off += Deno.stdout.writeSync(bytes.subarray(off));
}

const mode = Deno.args[0];
let onLine;
if (mode === "process") {
  const handle = makeCell((m) => { send(m); if (m.op === "done") Deno.exit(0); });
  onLine = handle;
} else {
  const workerSrc = `const handle = (${makeCell.toString()})((m) => self.postMessage(m));
self.onmessage = (e) => handle(e.data);
self.postMessage({ op: "ready" });`;
  const url = "data:application/javascript," + encodeURIComponent(workerSrc);
  const workers = new Map();
  const spawn = (id) => {
    const w = new Worker(url, { type: "module" });
    workers.set(id, w);
    w.onmessage = (e) => {
      const m = e.data;
      m.cell = id;
      if (m.op === "done") { w.terminate(); workers.delete(id); }
      send(m);
    };
    w.onerror = (e) => {
      e.preventDefault();
      w.terminate();
      workers.delete(id);
      send({ op: "done", cell: id, out: [], error: "worker error: " + e.message });
    };
    return w;
  };
  onLine = (m) => {
    if (m.op === "spawn") spawn(m.cell);
    else if (m.op === "run") (workers.get(m.cell) || spawn(m.cell)).postMessage(m);
    else if (m.op === "res") { const w = workers.get(m.cell); if (w) w.postMessage(m); }
    else if (m.op === "kill") {
      const w = workers.get(m.cell);
      if (w) { w.terminate(); workers.delete(m.cell); }
      send({ op: "killed", cell: m.cell });
    }
  };
}
send({ op: "ready" });
const dec = new TextDecoder();
let buf = "";
for await (const chunk of Deno.stdin.readable) {
  buf += dec.decode(chunk, { stream: true });
  let i;
  while ((i = buf.indexOf("\n")) >= 0) {
    const line = buf.slice(0, i);
    buf = buf.slice(i + 1);
    if (line) onLine(JSON.parse(line));
  }
}
"""


def find_deno() -> str | None:
    try:
        import deno

        return str(deno.find_deno_bin())
    except (ImportError, FileNotFoundError):
        return shutil.which("deno")


class _DenoCell:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.ready = loop.create_future()
        self.done = loop.create_future()
        self.killed = loop.create_future()
        self.results: list[list[Any]] = []
        self.tasks: set[asyncio.Task[Any]] = set()


class _DenoProc:
    """One deno process and the Python side of the line protocol."""

    def __init__(self, deno: str, script: str, mode: str, tools: Tools) -> None:
        self.deno, self.script, self.mode, self.tools = deno, script, mode, tools
        self.cells: dict[int, _DenoCell] = {}
        self.proc: asyncio.subprocess.Process | None = None
        self.ready: asyncio.Future[None] | None = None

    async def start(self, wait: bool = True) -> None:
        loop = asyncio.get_running_loop()
        self.ready = loop.create_future()
        env = dict(os.environ, DENO_NO_UPDATE_CHECK="1", NO_COLOR="1")
        self.proc = await asyncio.create_subprocess_exec(
            self.deno, "run", "--no-prompt", "--quiet", self.script, self.mode,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env=env, limit=64 * MiB,
        )  # fmt: skip
        self._reader = asyncio.ensure_future(self._read())
        if wait:
            await self.ready

    def cell(self, cell_id: int) -> _DenoCell:
        c = self.cells.get(cell_id)
        if c is None:
            c = self.cells[cell_id] = _DenoCell(asyncio.get_running_loop())
        return c

    def send(self, obj: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj).encode() + b"\n")

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                break
            m = json.loads(line)
            op = m["op"]
            if op == "ready" and "cell" not in m:
                if self.ready is not None and not self.ready.done():
                    self.ready.set_result(None)
                continue
            cell_id = m.get("cell", 0)
            c = self.cell(cell_id)
            if op == "ready":
                if not c.ready.done():
                    c.ready.set_result(None)
            elif op == "calls":
                for call_id, name, value in m["calls"]:
                    task = asyncio.ensure_future(self.tools.call(name, value))
                    c.tasks.add(task)
                    task.add_done_callback(
                        lambda t, i=call_id, cid=cell_id: self._result(cid, i, t)
                    )
            elif op == "done":
                if not c.done.done():
                    c.done.set_result(m)
            elif op == "killed" and not c.killed.done():
                c.killed.set_result(None)
        for c in self.cells.values():
            for f in (c.ready, c.done, c.killed):
                if not f.done():
                    f.set_exception(RuntimeError("deno exited"))
                    f.add_done_callback(lambda f: f.exception())  # nobody may be waiting

    def _result(self, cell_id: int, call_id: int, task: asyncio.Task[Any]) -> None:
        c = self.cells.get(cell_id)
        if c is None or task.cancelled():
            return
        c.tasks.discard(task)
        exc = task.exception()
        item = [call_id, True, task.result()] if exc is None else [call_id, False, str(exc)]
        if not c.results:
            asyncio.get_running_loop().call_soon(self._flush, cell_id)
        c.results.append(item)

    def _flush(self, cell_id: int) -> None:
        c = self.cells.get(cell_id)
        if c is None or not c.results or self.proc is None or self.proc.returncode is not None:
            return
        batch, c.results = c.results, []
        self.send({"op": "res", "cell": cell_id, "r": batch})

    def forget(self, cell_id: int) -> None:
        c = self.cells.pop(cell_id, None)
        if c is not None:
            for task in c.tasks:
                task.cancel()

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        if hasattr(self, "_reader"):
            with contextlib.suppress(BaseException):
                await self._reader

    async def kill_after_exit(self, grace: float = 5.0) -> None:
        assert self.proc is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), grace)
        await self.kill()


def _deno_outputs(done: dict[str, Any]) -> list[str]:
    if done.get("error"):
        raise RuntimeError(done["error"])
    return list(done["out"])


class DenoWorkerAdapter(Adapter):
    """Deno, one sandbox per cell as a Web Worker inside one long-lived ``deno run`` process
    (given no permissions; workers inherit that). Bridge: the worker posts its calls (batched per
    microtask checkpoint) to the main thread, which writes them as a JSON line to stdout; Python
    runs the async function as a task per call and writes the results back as one line on stdin;
    the main thread posts them into the worker. "Created ahead" = the worker was spawned and
    reported ready before the timer starts; "on demand" = spawn and run in one go. Dispose =
    ``worker.terminate()``. Runaway: the main thread is free while a worker spins, so the host
    sends ``kill`` and the main thread calls ``worker.terminate()``; measured until the ack
    arrives, then the deno process's CPU is sampled. With deno 2.9.8 the terminated worker's
    thread went on spinning, so this is reported as not possible (only killing the whole process,
    and every cell in it, stops it); measured in a deno process of its own for that reason."""

    name = "deno-worker"
    runaway_method = "worker.terminate() on a host message at the deadline"

    def __init__(self, calls: int, script: str) -> None:
        self.src = js_cells(calls)
        self.script = script
        self.next_id = 0
        self._idle: list[int] = []

    async def start(self) -> None:
        deno = find_deno()
        assert deno is not None
        self.tools = Tools()
        self.host = _DenoProc(deno, self.script, "worker", self.tools)
        await self.host.start()

    async def close(self) -> None:
        await self.host.kill()

    async def make_ahead(self) -> Any:
        self.next_id += 1
        cell_id = self.next_id
        c = self.host.cell(cell_id)
        self.host.send({"op": "spawn", "cell": cell_id})
        await c.ready
        return cell_id

    async def run(self, key: str, ahead: Any = None) -> list[str]:
        if ahead is None:
            self.next_id += 1
            cell_id = self.next_id
        else:
            cell_id = ahead
        c = self.host.cell(cell_id)
        self.host.send({"op": "run", "cell": cell_id, "src": self.src[key]})
        try:
            return _deno_outputs(await c.done)
        finally:
            self.host.forget(cell_id)

    async def runaway(self) -> tuple[float, float]:
        # In a deno process of its own: if terminate() does not stop the worker, its spinning
        # thread must not distort the other measurements.
        host = _DenoProc(self.host.deno, self.script, "worker", self.tools)
        await host.start()
        try:
            c = host.cell(1)
            host.send({"op": "spawn", "cell": 1})
            await c.ready
            host.send({"op": "run", "cell": 1, "src": self.src["runaway"]})
            await asyncio.sleep(DEADLINE)
            t = time.perf_counter()
            host.send({"op": "kill", "cell": 1})
            await c.killed
            acked = time.perf_counter()
            assert host.proc is not None
            busy = await busy_after_stop([host.proc.pid])
            if busy < BUSY:
                return (acked - t) * 1000, busy
            t_kill = time.perf_counter()
            await host.kill()
            killed = time.perf_counter()
        finally:
            await host.kill()
        raise NotPossible(
            f"worker.terminate() returned ({(acked - t) * 1000:.2f} ms) but the worker's thread"
            f" kept spinning ({busy:.2f} of a core over the next 0.3 s); only killing the whole"
            f" deno process, with all its cells, stopped it ({(killed - t_kill) * 1000:.1f} ms)"
        )

    async def open_idle(self, n: int) -> None:
        for _ in range(n):
            self.next_id += 1
            self.host.cell(self.next_id)
            self.host.send({"op": "run", "cell": self.next_id, "src": self.src["idle"]})
            self._idle.append(self.next_id)
        await self.tools.until_hanging(n)

    async def close_idle(self) -> None:
        for cell_id in self._idle:
            c = self.host.cell(cell_id)
            self.host.send({"op": "kill", "cell": cell_id})
            await c.killed
            self.host.forget(cell_id)
        self._idle.clear()

    def versions(self) -> dict[str, str]:
        return deno_versions()

    def installed_bytes(self) -> int | None:
        return _dist_bytes("deno")


class DenoProcessAdapter(Adapter):
    """Deno, one ``deno run`` process per cell (no permissions). Bridge: the same JSON-line
    protocol as ``deno-worker``, straight between Python and the cell's main thread. "Created
    ahead" = the process was spawned and reported ready before the timer starts; the cell ends
    when the process has exited. Runaway: SIGKILL at the deadline, measured until the process is
    reaped."""

    name = "deno-process"
    runaway_method = "SIGKILL the process at the deadline"

    def __init__(self, calls: int, script: str) -> None:
        self.src = js_cells(calls)
        self.script = script
        self._idle: list[_DenoProc] = []
        self._reaping: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        deno = find_deno()
        assert deno is not None
        self.deno = deno
        self.tools = Tools()

    async def run(self, key: str, ahead: Any = None) -> list[str]:
        proc = ahead
        if proc is None:
            proc = _DenoProc(self.deno, self.script, "process", self.tools)
            await proc.start(wait=False)
        try:
            c = proc.cell(0)
            proc.send({"op": "run", "src": self.src[key]})
            return _deno_outputs(await c.done)
        finally:
            # The cell's process exits by itself after its output (Deno.exit); like codemode's
            # isolate teardown, reaping it is off the cell's path, but finished before the next
            # cell starts so that it never overlaps a timed cell.
            self._reaping.add(asyncio.ensure_future(proc.kill_after_exit()))

    async def before_cell(self) -> None:
        await self._reap()

    async def make_ahead(self) -> Any:
        proc = _DenoProc(self.deno, self.script, "process", self.tools)
        await proc.start()
        return proc

    async def _reap(self) -> None:
        while self._reaping:
            await self._reaping.pop()

    async def close(self) -> None:
        await self._reap()

    async def runaway(self) -> tuple[float, float]:
        proc = await self.make_ahead()
        proc.send({"op": "run", "src": self.src["runaway"]})
        await asyncio.sleep(DEADLINE)
        t = time.perf_counter()
        await proc.kill()
        stopped = time.perf_counter()
        return (stopped - t) * 1000, await busy_after_stop(process_tree())

    async def open_idle(self, n: int) -> None:
        for _ in range(n):
            proc = _DenoProc(self.deno, self.script, "process", self.tools)
            await proc.start()
            proc.send({"op": "run", "src": self.src["idle"]})
            self._idle.append(proc)
        await self.tools.until_hanging(n)

    async def close_idle(self) -> None:
        for proc in self._idle:
            await proc.kill()
        self._idle.clear()

    def versions(self) -> dict[str, str]:
        return deno_versions()

    def installed_bytes(self) -> int | None:
        return _dist_bytes("deno")


def deno_versions() -> dict[str, str]:
    deno = find_deno()
    out = {"deno (PyPI)": _dist_version("deno")}
    if deno:
        text = subprocess.run(
            [deno, "--version"], capture_output=True, text=True, timeout=30,
            env=dict(os.environ, DENO_NO_UPDATE_CHECK="1", NO_COLOR="1"),
        ).stdout  # fmt: skip
        for line in text.splitlines():
            name, _, version = line.partition(" ")
            if name in ("deno", "v8"):
                out[name] = version.split()[0]
    return out


# ---------------------------------------------------------------------------------------------
# The measurement of one engine (runs in a child process)


def missing_reason(engine: str) -> str | None:
    def has(module: str) -> bool:
        return importlib.util.find_spec(module) is not None

    setup = "run benchmarks/compare-setup.sh"
    if engine == "codemode" and not has("codemode"):
        return "codemode is not installed in this interpreter"
    if engine == "mini-racer" and not has("py_mini_racer"):
        return "mini-racer is not installed"
    if engine == "quickjs-ng" and not has("_quickjs"):
        return f"quickjs-ng is not installed ({setup})"
    if engine == "monty" and not has("pydantic_monty"):
        return f"pydantic-monty is not installed ({setup})"
    if engine.startswith("deno") and find_deno() is None:
        return f"deno is not installed ({setup})"
    return None


def _summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "samples": values}


async def _attempt(result: dict[str, Any], key: str, coro: Any) -> None:
    """Run one workload; an error or a NotPossible becomes the row's value, not a crash."""
    try:
        result[key] = await coro
    except NotPossible as exc:
        result[key] = {"na": str(exc)}
    except Exception as exc:
        result[key] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        print(f"  {key}: {result[key]['error']}", file=sys.stderr)


async def measure_engine(engine: str, args: argparse.Namespace, script: str) -> dict[str, Any]:
    calls = args.calls
    expect = expected_outputs(calls)
    idle_n = {
        "codemode": args.idle,
        "mini-racer": args.idle,
        "quickjs-ng": args.idle,
        "monty": args.idle_monty,
        "deno-worker": args.idle_deno_worker,
        "deno-process": args.idle_deno_process,
    }[engine]
    cells_n = args.cells_deno_process if engine == "deno-process" else args.cells
    adapter: Adapter
    if engine == "codemode":
        adapter = CodemodeAdapter(calls, idle_n)
    elif engine == "mini-racer":
        adapter = MiniRacerAdapter(calls)
    elif engine == "quickjs-ng":
        adapter = QuickJSAdapter(calls)
    elif engine == "monty":
        adapter = MontyAdapter(calls, idle_n)
    elif engine == "deno-worker":
        adapter = DenoWorkerAdapter(calls, script)
    else:
        adapter = DenoProcessAdapter(calls, script)

    result: dict[str, Any] = {
        "bridge": " ".join((type(adapter).__doc__ or "").split()),
        "runaway_method": adapter.runaway_method,
    }
    with contextlib.suppress(Exception):
        result["versions"] = adapter.versions()
    with contextlib.suppress(Exception):
        size = adapter.installed_bytes()
        result["installed_mib"] = None if size is None else size / MiB

    def check(key: str, out: list[str]) -> None:
        if out != expect[key]:
            raise RuntimeError(f"{key}: expected {expect[key]}, got {str(out)[:200]}")

    async def timed(key: str, n: int, ahead: bool) -> list[float]:
        times = []
        for _ in range(n):
            await adapter.before_cell()
            sandbox = await adapter.make_ahead() if ahead else None
            t = time.perf_counter()
            out = await (adapter.run(key, sandbox) if ahead else adapter.run_cold(key))
            times.append((time.perf_counter() - t) * 1000)
            check(key, out)
        return times

    async def fresh_cold() -> dict[str, Any]:
        if isinstance(adapter, CodemodeAdapter):
            return _summary(await adapter.cold_phase(args.warmup, cells_n))
        await timed("fresh", min(args.warmup, cells_n), ahead=False)
        try:
            return _summary(await timed("fresh", cells_n, ahead=False))
        finally:
            if isinstance(adapter, MontyAdapter):
                await adapter.close_cold()

    # codemode's pool-less phase must run while no other V8Engine lives on this loop.
    if isinstance(adapter, CodemodeAdapter):
        await _attempt(result, "fresh_cold_ms", fresh_cold())
    await adapter.start()
    try:

        async def fresh_ahead() -> dict[str, Any]:
            await timed("fresh", args.warmup, ahead=True)
            return _summary(await timed("fresh", cells_n, ahead=True))

        await _attempt(result, "fresh_ahead_ms", fresh_ahead())
        if not isinstance(adapter, CodemodeAdapter):
            await _attempt(result, "fresh_cold_ms", fresh_cold())

        async def seq() -> dict[str, Any]:
            await timed("seq", 1, ahead=True)
            rates = [calls / (t / 1000) for t in await timed("seq", args.reps, ahead=True)]
            return _summary(rates)

        await _attempt(result, "seq_calls_per_s", seq())

        async def whole(key: str) -> dict[str, Any]:
            await timed(key, 1, ahead=True)
            return _summary(await timed(key, args.reps, ahead=True))

        await _attempt(result, "par_ms", whole("par"))
        await _attempt(result, "payload_ms", whole("payload"))

        async def compute() -> dict[str, Any]:
            # Also: how long the host's event loop is blocked while a cell computes (an engine
            # that runs JavaScript on the loop's own thread blocks it for the whole cell).
            gaps: list[float] = []
            last = time.perf_counter()

            async def ticker() -> None:
                nonlocal last
                while True:
                    await asyncio.sleep(0.001)
                    now = time.perf_counter()
                    gaps.append(now - last)
                    last = now

            tick = asyncio.ensure_future(ticker())
            try:
                await timed("compute", 1, ahead=True)  # warm-up, not counted
                await asyncio.sleep(0.005)
                gaps.clear()
                times = []
                for _ in range(args.reps):
                    await asyncio.sleep(0.005)  # the ticker runs between cells
                    times += await timed("compute", 1, ahead=True)
                gaps.append(time.perf_counter() - last)
                summary = _summary(times)
            finally:
                tick.cancel()
            summary["host_loop_max_stall_ms"] = max(gaps) * 1000
            return summary

        await _attempt(result, "compute_ms", compute())

        async def runaway() -> dict[str, Any]:
            stops, busy = [], []
            for _ in range(args.runaway_reps):
                ms, frac = await adapter.runaway()
                stops.append(ms)
                busy.append(frac)
            summary = _summary(stops)
            summary["cpu_busy_after_stop"] = max(busy)
            summary["method"] = adapter.runaway_method
            if isinstance(adapter, MontyAdapter):
                limits = [await adapter.runaway_time_limit() for _ in range(args.runaway_reps)]
                summary["in_sandbox_time_limit_ms_past_limit"] = _summary(limits)
            if isinstance(adapter, QuickJSAdapter):
                summary["wall_ms_past_limit"] = _summary(adapter.wall_past_limit)
            return summary

        await _attempt(result, "runaway_ms", runaway())

        async def idle() -> dict[str, Any]:
            await adapter.before_cell()
            await adapter.prepare_idle(idle_n)
            await asyncio.sleep(0.3)  # let background work (pool refills, reaping) settle
            settle_memory()
            before = tree_memory()
            await adapter.open_idle(idle_n)
            await asyncio.sleep(0.3)
            settle_memory()
            after = tree_memory()
            await adapter.close_idle()
            return {
                "n": idle_n,
                "pss_mib_per_cell": (after["pss"] - before["pss"]) / MiB / idle_n,
                "rss_mib_per_cell": (after["rss"] - before["rss"]) / MiB / idle_n,
                "threads_per_cell": (after["threads"] - before["threads"]) / idle_n,
                "processes_per_cell": (after["processes"] - before["processes"]) / idle_n,
            }

        await _attempt(result, "idle_memory", idle())
    finally:
        await adapter.close()
    return result


# ---------------------------------------------------------------------------------------------
# The parent: machine facts, one child process per engine and run, the table


ROWS: list[tuple[str, str, str]] = [
    # (result key, label, how to print)
    ("fresh_ahead_ms", "fresh cell, sandbox made ahead (ms)", "ms"),
    ("fresh_cold_ms", "fresh cell, sandbox made on demand (ms)", "ms"),
    ("seq_calls_per_s", "{calls} sequential host calls (calls/s)", "rate"),
    ("par_ms", "{calls} calls in one Promise.all (ms)", "ms"),
    ("payload_ms", "cell echoing 1 MiB once (ms)", "ms"),
    ("compute_ms", "compute: 1e6-step loop (ms)", "ms"),
    ("stall_ms", "  host event loop blocked up to (ms)", "ms"),
    ("runaway_ms", "stop while(true), ms after deadline", "ms"),
    ("idle_rss", "memory per idle live cell (MiB, RSS)", "mib"),
    ("idle_pss", "  same, PSS (MiB)", "mib"),
    ("idle_threads", "  threads / processes per idle cell", "tp"),
    ("installed_mib", "installed size (MiB)", "mib"),
]


def _fmt_number(value: float, kind: str) -> str:
    if kind == "rate":
        return f"{value:,.0f}"
    if kind == "mib":
        return f"{value:.2f}" if value < 10 else f"{value:.1f}"
    if value < 1:
        return f"{value:.3f}"
    if value < 10:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:.0f}"


def cell_text(engine_result: dict[str, Any], key: str, kind: str, notes: list[str]) -> str:
    if "missing" in engine_result:
        return "missing"
    if key == "stall_ms":
        compute = engine_result.get("compute_ms")
        if isinstance(compute, dict) and "host_loop_max_stall_ms" in compute:
            return _fmt_number(compute["host_loop_max_stall_ms"], kind)
        key = "compute_ms"
    value = engine_result.get("idle_memory" if key.startswith("idle_") else key)
    if value is None:
        return "-"
    if isinstance(value, dict) and ("na" in value or "error" in value):
        reason = value.get("na") or value.get("error")
        tag = "n/a" if "na" in value else "error"
        if reason not in notes:
            notes.append(reason)
        return f"{tag} [{notes.index(reason) + 1}]"
    if key == "installed_mib":
        return _fmt_number(float(value), "mib")
    if key == "idle_pss":
        return _fmt_number(value["pss_mib_per_cell"], "mib")
    if key == "idle_rss":
        return _fmt_number(value["rss_mib_per_cell"], "mib")
    if key == "idle_threads":
        return f"{value['threads_per_cell']:.1f} / {value['processes_per_cell']:.1f}"
    text = _fmt_number(value["median"], kind)
    if key == "runaway_ms" and "wall_ms_past_limit" in value:
        text += " (CPU)"
    if key == "runaway_ms" and value.get("cpu_busy_after_stop", 0) > BUSY:
        text += " (still busy!)"
    return text


def machine_facts() -> dict[str, Any]:
    facts: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "interpreter": sys.executable,
    }
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                facts["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        facts["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    return facts


def merge_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median over runs of each per-run median (and of each idle-memory figure). A workload
    that failed in some runs is merged over the runs where it worked, and says how many."""
    merged: dict[str, Any] = {}
    for engine in ENGINES:
        per_run = [r[engine] for r in runs if engine in r]
        if not per_run:
            continue
        if all("missing" in r for r in per_run):
            merged[engine] = per_run[0]
            continue
        per_run = [r for r in per_run if "missing" not in r]
        out: dict[str, Any] = {}
        keys = dict.fromkeys(k for r in per_run for k in r)
        for key in keys:
            values = [r.get(key) for r in per_run]
            timed = [v for v in values if isinstance(v, dict) and "median" in v]
            idle = [v for v in values if isinstance(v, dict) and "n" in v]
            if timed:
                m = dict(timed[0])
                m.pop("samples", None)
                m["median"] = statistics.median(v["median"] for v in timed)
                m["run_medians"] = [v["median"] for v in timed]
                for extra in ("host_loop_max_stall_ms",):
                    if extra in m:
                        m[extra] = statistics.median(v[extra] for v in timed)
                if "cpu_busy_after_stop" in m:
                    m["cpu_busy_after_stop"] = max(v["cpu_busy_after_stop"] for v in timed)
                for extra in ("in_sandbox_time_limit_ms_past_limit", "wall_ms_past_limit"):
                    if extra in m:
                        inner = [v[extra]["median"] for v in timed]
                        m[extra] = {"median": statistics.median(inner), "run_medians": inner}
                if len(timed) < len(values):
                    m["failed_runs"] = len(values) - len(timed)
                out[key] = m
            elif idle:
                m = {k: statistics.median(v[k] for v in idle) for k in idle[0] if k != "n"}
                m["n"] = idle[0]["n"]
                m["run_values"] = {k: [v[k] for v in idle] for k in idle[0] if k != "n"}
                out[key] = m
            else:
                out[key] = next(v for v in values if v is not None)
        merged[engine] = out
    return merged


def print_table(merged: dict[str, Any], calls: int, facts: dict[str, Any]) -> None:
    engines = [e for e in ENGINES if e in merged]
    notes: list[str] = []
    label_w = max(len(label.format(calls=calls)) for _, label, _ in ROWS) + 2
    col_w = 2 + max(
        [len(e) for e in engines]
        + [len(cell_text(merged[e], key, kind, [])) for e in engines for key, _, kind in ROWS]
    )
    header = " " * label_w + "".join(f"{e:>{col_w}}" for e in engines)
    print(header)
    print("-" * len(header))
    for key, label, kind in ROWS:
        cells = [cell_text(merged[e], key, kind, notes) for e in engines]
        print(f"{label.format(calls=calls):<{label_w}}" + "".join(f"{c:>{col_w}}" for c in cells))
    for i, note in enumerate(notes, 1):
        print(f"[{i}] {note}")
    print()
    for engine in engines:
        r = merged[engine]
        if "missing" in r:
            print(f"{engine}: missing: {r['missing']}")
            continue
        versions = ", ".join(f"{k} {v}" for k, v in r.get("versions", {}).items())
        stop = r.get("runaway_ms", {})
        print(f"{engine}: {versions}; stop = {r.get('runaway_method', '?')}")
        inner = stop.get("in_sandbox_time_limit_ms_past_limit") if isinstance(stop, dict) else None
        if inner:
            print(
                f"  (Monty's own max_feed_duration_secs: {inner['median']:.2f} ms past the limit)"
            )
        wall = stop.get("wall_ms_past_limit") if isinstance(stop, dict) else None
        if wall:
            print(
                f"  (wall-clock time past the 50 ms limit: median {wall['median']:.1f} ms;"
                " more than the CPU figure when the machine is loaded)"
            )
    print(
        f"\nmachine: {facts['cpus']} CPUs ({facts.get('cpu_model', '?')}), Python"
        f" {facts['python']}, {facts['platform']}; load average at start"
        f" {facts.get('loadavg_start')}, at end {facts.get('loadavg_end')}; runs: {facts['runs']}"
    )


def child_main(args: argparse.Namespace) -> None:
    engine = args.child
    with tempfile.TemporaryDirectory(prefix="engines-compare-") as tmp:
        script = os.path.join(tmp, "host.js")
        Path(script).write_text(DENO_HOST_JS)
        result = asyncio.run(measure_engine(engine, args, script))
    Path(args.child_out).write_text(json.dumps(result))


def maybe_reexec() -> None:
    """Under any interpreter but the compare venv's, re-run this script there when it exists."""
    venv_python = COMPARE_VENV / "bin" / "python"
    if os.environ.get(REEXEC_GUARD) or not venv_python.exists():
        return
    if Path(sys.prefix).resolve() == COMPARE_VENV.resolve():
        return
    print(f"(re-running in {COMPARE_VENV.relative_to(ROOT)})", file=sys.stderr, flush=True)
    env = dict(os.environ, **{REEXEC_GUARD: "1"})
    os.execve(
        str(venv_python), [str(venv_python), str(Path(__file__).resolve()), *sys.argv[1:]], env
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset")
    parser.add_argument("--runs", type=int, default=1, help="whole comparisons to repeat")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--cells", type=int, default=200, help="fresh cells per variant")
    parser.add_argument("--cells-deno-process", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--reps", type=int, default=5, help="repetitions of each call workload")
    parser.add_argument("--runaway-reps", type=int, default=5)
    parser.add_argument("--idle", type=int, default=100, help="idle cells (in-process engines)")
    parser.add_argument("--idle-monty", type=int, default=10)
    parser.add_argument("--idle-deno-worker", type=int, default=20)
    parser.add_argument("--idle-deno-process", type=int, default=5)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    # `./dev bench ARGS` passes the same ARGS to every benchmark script: ignore the others'.
    args, unknown = parser.parse_known_args()
    if args.child:
        child_main(args)
        return
    maybe_reexec()
    if unknown:
        print(f"(ignoring arguments meant for other benchmarks: {unknown})", file=sys.stderr)

    wanted = [e.strip() for e in args.engines.split(",") if e.strip()]
    for e in wanted:
        if e not in ENGINES:
            parser.error(f"unknown engine {e!r}; choose from {', '.join(ENGINES)}")
    facts = machine_facts()
    facts["runs"] = args.runs
    missing = {e: reason for e in wanted if (reason := missing_reason(e))}
    for engine, reason in missing.items():
        print(f"{engine}: skipped: {reason}", file=sys.stderr)

    runs: list[dict[str, Any]] = []
    for run in range(args.runs):
        results: dict[str, Any] = {e: {"missing": r} for e, r in missing.items()}
        for engine in wanted:
            if engine in missing:
                continue
            print(f"run {run + 1}/{args.runs}: {engine} ...", file=sys.stderr, flush=True)
            results[engine] = run_child(engine, args)
        runs.append(results)
    with contextlib.suppress(OSError):
        facts["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]

    merged = merge_runs(runs)
    print_table(merged, args.calls, facts)
    RESULTS.parent.mkdir(exist_ok=True)
    config = {
        k: v for k, v in vars(args).items() if k not in ("child", "child_out") and v is not None
    }
    RESULTS.write_text(
        json.dumps({"machine": facts, "config": config, "engines": merged, "runs": runs}, indent=2)
    )
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")


def run_child(engine: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", engine, "--child-out", out]
    for name in (
        "calls", "cells", "cells_deno_process", "warmup", "reps", "runaway_reps",
        "idle", "idle_monty", "idle_deno_worker", "idle_deno_process",
    ):  # fmt: skip
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    # Its own process group, so that a hung child and the deno/monty processes it started can be
    # ended together.
    proc = subprocess.Popen(cmd, stdout=sys.stderr, start_new_session=True)
    try:
        code = proc.wait(timeout=900)
        if code != 0:
            return {"missing": f"the measuring process failed (exit {code})"}
        return dict(json.loads(Path(out).read_text()))
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return {"missing": "the measuring process timed out after 900 s"}
    finally:
        with contextlib.suppress(OSError):
            os.unlink(out)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    main()
