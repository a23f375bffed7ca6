"""V8 bindings side by side: is mini-racer's thread hop the wall for a nested call (issue 19)?

Every variant runs the same cell protocol, a minimal model of codemode's: the cell's
``tools.echo(input)`` appends ``[id, input]`` to an outbox and returns a promise; the host runs a
*step* (resolve the promises of the answered calls from a JSON text, let V8 run the microtasks
that follow, read the outbox as one JSON text: the *drain*), answers every call it finds there
(the echo's result is its input) and runs the next step, until the cell settled. Two cells:

- ``seq``: ``let n = 0; for (let i = 0; i < N; i++) n += (await tools.echo({i})).i`` (us per
  call, cell start included);
- ``par``: 1,000 calls in one ``Promise.all`` (ms for the whole cell, start included).

Variants (each run in a fresh process; wall time and CPU of that process and its children):

- ``stpyv8-call``: STPyV8, V8 on the calling thread; the bridge's functions called directly
  (a runaway cannot be stopped on this path: terminating a function call aborts the process,
  see ``--extras``);
- ``stpyv8-script``: STPyV8 on the calling thread, steps run as precompiled scripts (the path on
  which ``TerminateExecution`` from another thread works);
- ``stpyv8-thread``: ``stpyv8-script`` on a dedicated thread, awaited from an asyncio loop (what
  an in-process engine would have to do: V8 on the loop's thread blocks the loop);
- ``miniracer-sync``: mini-racer, its isolate's thread driven synchronously from the calling
  thread (step and drain submitted back to back, answers from its uncancelable-task queue;
  inputs through an ArrayBuffer inbox, as codemode does);
- ``miniracer-async``: the same awaited on an asyncio loop (the drain's answer wakes the loop
  through ``call_soon_threadsafe``; the step's own result wakes nobody, as in codemode);
- ``miniracer-native-sync`` / ``miniracer-native-async``: the same two with no Python on the
  isolate's thread: the context's result callback is libc's ``eventfd_write`` (the task's
  callback id is an eventfd, the answer its value handle's address), so the calling thread
  reads the drain's eventfd, or the loop is woken by it (``add_reader``), with no callback
  into Python and no GIL taken by the isolate's thread (Linux);
- ``pipe-stpyv8`` / ``pipe-miniracer``: V8 in a helper process over a pipe: the host's asyncio
  loop writes one line per step and awaits one line back; the helper reads its stdin blocking
  and runs ``stpyv8-script`` or ``miniracer-sync`` (no event loop in the helper);
- ``codemode`` / ``codemode-worker``: the same two cells through ``SessionRuntime`` on
  ``V8Engine`` (in process) and ``WorkerEngine`` (a worker process), for the table.

``--extras`` adds, for STPyV8 and mini-racer: a runaway ``while(true){}`` stopped from another
thread (ms from the stop request to the step's return, and whether the isolate is used again),
the same on STPyV8's function-call path and after a stop requested while no step ran, the cost
of a fresh context, the memory of idle contexts (each with the prelude and a cell awaiting a
call), and a cell that allocates without bound.

Setup (STPyV8 is never a project dependency: it lives in its own venv):

    python3 -m venv benchmarks/.venv-altv8 && benchmarks/.venv-altv8/bin/pip install stpyv8
    .venv/bin/python benchmarks/v8_bindings.py [--reps 5] [--calls 2000] [--extras]

``--variants a,b`` runs only those; ``--pin CPU`` runs each variant twice per round, free and
pinned to that one CPU with every thread and helper process it starts. Prints a Markdown table
(medians over the rounds, their range) and writes benchmarks/results/v8_bindings.json. A variant
whose binding is not installed (no ``benchmarks/.venv-altv8``, or no codemode and mini-racer in
the interpreter running this) is skipped with a message. BENCHMARKS.md, "V8 bindings
compared", has the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import queue
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

HERE = Path(__file__).resolve().parent
ALT_PYTHON = HERE / ".venv-altv8" / "bin" / "python"
INBOX_UNITS = 1 << 20

SEQ = "let n = 0; for (let i = 0; i < {n}; i++) n += (await tools.echo({{i}})).i; text(String(n))"
PAR = (
    "const r = await Promise.all(Array.from({{length: {n}}}, (_, i) => tools.echo({{i}})));"
    " text(String(r.reduce((a, x) => a + x.i, 0)))"
)

# The cell protocol (see the module's docstring). `step(text)` takes its inputs as an argument,
# or, called without one, from the inbox (an ArrayBuffer whose memory mini-racer hands to the
# host); STPyV8's script path reads them from `__bridge.input`.
PRELUDE = """(() => {
  const outbox = [], pending = new Map(), out = [];
  let next = 0, done = null;
  const parse = JSON.parse, stringify = JSON.stringify, fromCharCode = String.fromCharCode;
  const inbox = new ArrayBuffer(4 + 2 * INBOX_UNITS);
  const inLength = new Uint32Array(inbox, 0, 1), inUnits = new Uint16Array(inbox, 4);
  function readInbox() {
    const n = inLength[0];
    let s = '';
    for (let i = 0; i < n; i += 4096)
      s += fromCharCode.apply(null, inUnits.subarray(i, Math.min(n, i + 4096)));
    return s;
  }
  globalThis.tools = {
    echo(input) {
      const id = next++;
      outbox.push([id, input]);
      return new Promise((resolve) => pending.set(id, resolve));
    },
  };
  globalThis.text = (s) => { out.push(String(s)); };
  const AsyncFunction = (async () => {}).constructor;
  const bridge = {
    input: '',
    start(source) {
      done = null;
      out.length = 0;
      AsyncFunction(source)().then(
        () => { done = {ok: true}; }, (e) => { done = {error: String(e && e.stack || e)}; });
    },
    step(text) {
      for (const [id, value] of parse(text === undefined ? readInbox() : text)) {
        const resolve = pending.get(id);
        pending.delete(id);
        resolve(value);
      }
    },
    scriptStep() { bridge.step(bridge.input); },
    drain() {
      const s = stringify({calls: outbox, done, out: done ? out : []});
      outbox.length = 0;
      return s;
    },
    inbox() { return inbox; },
  };
  return bridge;
})()""".replace("INBOX_UNITS", str(INBOX_UNITS))


def answer(report_text: str) -> str | None:
    """The host's side of one step: the next step's inputs (every call answered with its
    input), or None once the cell settled (an error in the cell raises)."""
    report = json.loads(report_text)
    done = report["done"]
    if done is not None:
        if "error" in done:
            raise RuntimeError(done["error"])
        return None
    return json.dumps(report["calls"], separators=(",", ":"))


class SyncDriver(Protocol):
    """A binding driven on the calling thread: each method returns the drain's report."""

    def start(self, source: str) -> str: ...

    def step(self, inputs: str) -> str: ...


def run_sync(driver: SyncDriver, source: str) -> None:
    inputs = answer(driver.start(source))
    while inputs is not None:
        inputs = answer(driver.step(inputs))


class AsyncDriver(Protocol):
    async def start(self, source: str) -> str: ...

    async def step(self, inputs: str) -> str: ...


async def run_async(driver: AsyncDriver, source: str) -> None:
    inputs = answer(await driver.start(source))
    while inputs is not None:
        inputs = answer(await driver.step(inputs))


# ---------------------------------------------------------------------------------- STPyV8


class Stpyv8:
    """STPyV8 on the calling thread, in a context of its own in the process's default isolate
    (entered on this thread), the context entered for each start and step (so several can live
    on one thread). ``script``: steps run as scripts compiled once (a runaway can be
    terminated); otherwise the bridge's functions are called directly."""

    def __init__(self, script: bool = True) -> None:
        import _STPyV8  # type: ignore[import-not-found]
        import STPyV8  # type: ignore[import-not-found]

        if STPyV8.JSIsolate.current is None:  # a thread other than the one that imported it
            STPyV8.v8_default_isolate.enter()
        # The base class: STPyV8.JSContext also takes a v8::Locker, which only `with` (in
        # LIFO order) gives back; contexts made without `with` crashed after about 30.
        self.context = context = _STPyV8.JSContext(None)
        context.enter()
        try:
            self.bridge = context.eval(f"globalThis.__bridge = {PRELUDE}")
            if script:
                # A JSScript refers to the JSEngine that compiled it: it must outlive them.
                self._engine = engine = STPyV8.JSEngine()
                self._start = engine.compile("__bridge.start(__bridge.input)").run
                self._step = engine.compile("__bridge.scriptStep()").run
                self._drain = engine.compile("__bridge.drain()").run
            else:
                self._start = self._step = None
                self._drain = self.bridge.drain
        finally:
            context.leave()

    def start(self, source: str) -> str:
        return self._run("start", self._start, source)

    def step(self, inputs: str) -> str:
        return self._run("step", self._step, inputs)

    def _run(self, name: str, script: Callable[[], Any] | None, text: str) -> str:
        """One command and the drain behind it, inside the context (the bridge's objects are
        reachable only there): the bridge's ``name`` function called with ``text``, or (with
        compiled scripts) ``text`` set as the input and the script run."""
        self.context.enter()
        try:
            if script is None:
                getattr(self.bridge, name)(text)
            else:
                self.bridge.input = text
                script()
            return str(self._drain())
        finally:
            self.context.leave()


class OnThread:
    """A synchronous driver on a dedicated thread, awaited from the asyncio loop: the loop
    posts a command to the thread's queue and is woken by ``call_soon_threadsafe``."""

    def __init__(self, make: Callable[[], SyncDriver]) -> None:
        self._loop = asyncio.get_running_loop()
        self._commands: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(make,), daemon=True)
        self._thread.start()
        self._ready.wait()

    def _serve(self, make: Callable[[], SyncDriver]) -> None:
        driver = make()
        self._ready.set()
        while (command := self._commands.get()) is not None:
            future, name, arg = command
            result = getattr(driver, name)(arg)
            self._loop.call_soon_threadsafe(future.set_result, result)

    def _call(self, name: str, arg: str) -> Awaitable[str]:
        future = self._loop.create_future()
        self._commands.put((future, name, arg))
        return future

    async def start(self, source: str) -> str:
        return await self._call("start", source)

    async def step(self, inputs: str) -> str:
        return await self._call("step", inputs)

    def close(self) -> None:
        self._commands.put(None)
        self._thread.join()


# ------------------------------------------------------------------------------ mini-racer


class _PreludeBridge:
    """The prelude's bridge in a mini-racer context (0.14.1 internals, as codemode uses them):
    set-up evals and calls answered on the calling thread (to ``_sync_id``, taken with
    ``_sync_answer``), the bridge's handles and the inbox."""

    ctx: Any
    call: Any
    _sync_id: int

    def _sync_answer(self) -> Any:
        raise NotImplementedError

    def _bind(self) -> None:
        # The Python wrappers own the value handles: they are kept as long as the raw handles.
        self.bridge = bridge = self._sync_eval(PRELUDE)
        self.this = bridge.raw_handle.raw
        self.functions = {k: bridge[k] for k in ("start", "step", "drain", "inbox")}
        self.fns = {k: f.raw_handle.raw for k, f in self.functions.items()}
        self.no_args = self._sync_eval("[]")
        self.argv = self._sync_eval("[0]")
        memory = self._sync_call(self.fns["inbox"])
        self.in_length = memory[:4].cast("I")
        self.in_units = memory[4:]

    def _sync_eval(self, code: str) -> Any:
        handle = self.ctx._python_to_value_handle(code)
        self.ctx._dll.mr_eval(self.ctx._ctx, handle.raw, self._sync_id)
        return self._sync_answer()

    def _sync_call(self, fn: Any, argv: Any = None) -> Any:
        argv = self.no_args if argv is None else argv
        self.call(self.ctx._ctx, fn, self.this, argv.raw_handle.raw, self._sync_id)
        return self._sync_answer()

    def _put(self, inputs: str) -> None:
        data = inputs.encode("utf-16-le")
        self.in_units[: len(data)] = data
        self.in_length[0] = len(data) // 2


class MiniRacerBase(_PreludeBridge):
    """A mini-racer context with the prelude, answers through mini-racer's Python callback."""

    _sync_id = 0  # the uncancelable tasks' queue

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        from py_mini_racer._mini_racer import _make_context

        self._manager = _make_context(loop)
        ctx = self.ctx = self._manager.__enter__()
        self.call = ctx._dll.mr_call_function
        self.results = ctx._non_cancelable_mr_task_results_queue
        self._bind()

    def _sync_answer(self) -> Any:
        return self.ctx._value_handle_to_python(self.results.get())

    def close(self) -> None:
        self._manager.__exit__(None, None, None)


class MiniRacerSync(MiniRacerBase):
    """Driven from the calling thread (not the loop's, which never runs): step and drain
    submitted back to back, both answers taken from the uncancelable-task queue."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()  # mini-racer wants one; it never runs
        super().__init__(self._loop)

    def start(self, source: str) -> str:
        self.argv[0] = source
        self._sync_call(self.fns["start"], self.argv)
        return str(self._sync_call(self.fns["drain"]))

    def step(self, inputs: str) -> str:
        self._put(inputs)
        ctx, this, none = self.ctx._ctx, self.this, self.no_args.raw_handle.raw
        self.call(ctx, self.fns["step"], this, none, 0)
        self.call(ctx, self.fns["drain"], this, none, 0)
        self.results.get()  # the step's result (undefined), freed with its wrapper
        return str(self.ctx._value_handle_to_python(self.results.get()))

    def close(self) -> None:
        super().close()
        self._loop.close()


class MiniRacerAsync(MiniRacerBase):
    """Awaited on the running loop: the step's answer goes to the uncancelable queue (it wakes
    nobody), the drain's through a registered callback, which wakes the loop."""

    def __init__(self) -> None:
        super().__init__(asyncio.get_running_loop())

    async def start(self, source: str) -> str:
        self.argv[0] = source
        return await self._submit("start", self.argv)

    async def step(self, inputs: str) -> str:
        self._put(inputs)
        return await self._submit("step", self.no_args)

    async def _submit(self, name: str, argv: Any) -> str:
        ctx = self.ctx
        future: asyncio.Future[Any] = ctx.event_loop.create_future()
        with ctx._register_cancelable_mr_task_callback(future.set_result) as callback_id:
            self.call(ctx._ctx, self.fns[name], self.this, argv.raw_handle.raw, 0)
            self.call(
                ctx._ctx, self.fns["drain"], self.this, self.no_args.raw_handle.raw, callback_id
            )
            handle = await future
        self.results.get_nowait()  # the first call's result, answered before the drain's
        return str(ctx._value_handle_to_python(handle))


class MiniRacerNative(_PreludeBridge):
    """mini-racer's isolate thread with *no Python on it*: the context is made with libc's
    ``eventfd_write`` as its result callback (mini-racer 0.14.1's callback is
    ``void (uint64_t callback_id, value*)``; ``int eventfd_write(int fd, uint64_t value)`` takes
    its two arguments in the same registers on x86-64 and arm64, and its result is ignored).
    A task's callback id is an eventfd's number, so the isolate's thread answers by writing the
    result's address to that eventfd: no callback into Python, no GIL taken on that thread.
    Each eventfd has at most one answer outstanding (an eventfd adds what is written).

    ``wait="read"``: the calling thread reads the drain's eventfd, blocking (no event loop).
    ``wait="loop"``: the loop watches the drain's eventfd (``add_reader``) and is woken by it,
    with no self-pipe and no ``call_soon_threadsafe``."""

    def __init__(self, wait: str) -> None:
        from itertools import count

        from py_mini_racer import _dll
        from py_mini_racer._context import Context, ContextType
        from py_mini_racer._objects import ObjectFactoryImpl

        self._wait = wait
        self._loop = asyncio.get_running_loop() if wait == "loop" else asyncio.new_event_loop()
        dll = _dll.init_mini_racer(ignore_duplicate_init=True)
        libc = ctypes.CDLL(None, use_errno=True)
        self._callback = _dll.MR_CALLBACK(ctypes.cast(libc.eventfd_write, ctypes.c_void_p).value)
        raw_ctx = ContextType(dll.mr_init_context(self._callback))
        self.ctx = Context(dll, raw_ctx, self._loop, ObjectFactoryImpl(), count(1))
        self.call = dll.mr_call_function
        self._handle = _dll.RawValueHandle
        # One eventfd per kind of answer: set-up, the step's own result, the drain.
        self.sync_fd, self.step_fd, self.drain_fd = (os.eventfd(0) for _ in range(3))
        self._sync_id = self.sync_fd
        self._bind()

    def _answer(self, fd: int) -> Any:
        """The answer written to ``fd`` (blocking until it comes), converted and freed."""
        address = int.from_bytes(os.read(fd, 8), sys.byteorder)
        raw = ctypes.cast(address, self._handle)
        return self.ctx._value_handle_to_python(self.ctx._wrap_raw_handle(raw))

    def _sync_answer(self) -> Any:
        return self._answer(self.sync_fd)

    def _submit(self, name: str, argv: Any) -> None:
        ctx, this = self.ctx._ctx, self.this
        self.call(ctx, self.fns[name], this, argv.raw_handle.raw, self.step_fd)
        self.call(ctx, self.fns["drain"], this, self.no_args.raw_handle.raw, self.drain_fd)

    def _sync(self, name: str, argv: Any) -> str:
        self._submit(name, argv)
        report = str(self._answer(self.drain_fd))
        self._answer(self.step_fd)  # answered before the drain: never blocks
        return report

    async def _async(self, name: str, argv: Any) -> str:
        self._submit(name, argv)
        loop = self._loop
        future: asyncio.Future[None] = loop.create_future()
        loop.add_reader(self.drain_fd, future.set_result, None)
        try:
            await future
        finally:
            loop.remove_reader(self.drain_fd)
        report = str(self._answer(self.drain_fd))
        self._answer(self.step_fd)
        return report

    def start(self, source: str) -> Any:
        self.argv[0] = source
        return (
            self._sync("start", self.argv)
            if self._wait == "read"
            else self._async("start", self.argv)
        )

    def step(self, inputs: str) -> Any:
        self._put(inputs)
        return (
            self._sync("step", self.no_args)
            if self._wait == "read"
            else self._async("step", self.no_args)
        )

    def close(self) -> None:
        self.ctx._dll.mr_free_context(self.ctx._ctx)
        for fd in (self.sync_fd, self.step_fd, self.drain_fd):
            os.close(fd)
        if self._wait == "read":
            self._loop.close()


# ------------------------------------------------------------------- a helper over a pipe


def serve(binding: str) -> None:
    """The helper process: one command line in (``S<source>`` to start, ``T<inputs>`` for a
    step), the drain's report out, read and written blocking, no event loop."""
    driver: SyncDriver = Stpyv8() if binding == "stpyv8" else MiniRacerSync()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    stdout.write(b"ready\n")
    stdout.flush()
    for line in stdin:
        text = line[1:-1].decode()
        report = driver.start(json.loads(text)) if line[:1] == b"S" else driver.step(text)
        stdout.write(report.encode() + b"\n")
        stdout.flush()


class _Lines(asyncio.Protocol):
    def __init__(self) -> None:
        self.waiting: asyncio.Future[bytes] | None = None
        self._buffer = b""

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._buffer.endswith(b"\n") and self.waiting is not None:
            line, self._buffer = self._buffer, b""
            self.waiting.set_result(line[:-1])
            self.waiting = None


def _spawn_helper(binding: str) -> subprocess.Popen[bytes]:
    """Start the helper process and wait (blocking, before any measurement) until it is ready."""
    python = str(ALT_PYTHON) if binding == "stpyv8" else sys.executable
    proc = subprocess.Popen(
        [python, __file__, "--serve", binding], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return proc


class OverPipe:
    """The host's side: one write per command, the loop woken by the answer's line."""

    @classmethod
    async def open(cls, binding: str) -> OverPipe:
        self = cls()
        self.proc = _spawn_helper(binding)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        _, self.lines = await loop.connect_read_pipe(_Lines, self.proc.stdout)
        self.fd = self.proc.stdin.fileno()
        return self

    async def _command(self, line: bytes) -> str:
        future = asyncio.get_running_loop().create_future()
        self.lines.waiting = future
        view = memoryview(line)
        while view:
            view = view[os.write(self.fd, view) :]
        return (await future).decode()

    async def start(self, source: str) -> str:
        return await self._command(b"S" + json.dumps(source).encode() + b"\n")

    async def step(self, inputs: str) -> str:
        return await self._command(b"T" + inputs.encode() + b"\n")

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


# ------------------------------------------------------------------------------- measuring


def tree_cpu() -> float:
    """CPU seconds of this process (every thread) and of its child processes (the helper, the
    worker): those that ended (and were waited for) from ``getrusage``; for a live one, the
    larger of its clock ticks (every thread, ended ones included, but in 10 ms steps) and the
    sum of its live threads' scheduler time (exact)."""
    ended = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = time.process_time() + ended.ru_utime + ended.ru_stime
    tick = os.sysconf("SC_CLK_TCK")
    me = str(os.getpid())
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if fields[1] != me:
                continue
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        live = 0.0
        for tid in tids:
            try:  # a thread may end meanwhile: the ticks still hold its time
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    live += int(f.read().split()[0]) / 1e9
            except OSError:
                continue
        total += max((int(fields[11]) + int(fields[12])) / tick, live)
    return total


class Timer:
    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), tree_cpu()

    def done(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, tree_cpu() - self.cpu


async def measure_cells(run: Callable[[str], Awaitable[None]], calls: int, par: int) -> Any:
    """After a warm-up: one cell of ``calls`` sequential calls; five of ``par`` calls in one
    ``Promise.all`` (the median cell's wall time, the fastest, the mean CPU)."""
    await run(SEQ.format(n=200))
    await run(PAR.format(n=par))
    t = Timer()
    await run(SEQ.format(n=calls))
    seq_wall, seq_cpu = t.done()
    pars = []
    total = Timer()
    for _ in range(5):
        t = Timer()
        await run(PAR.format(n=par))
        pars.append(t.done())
    par_cpu = total.done()[1] / 5
    pars.sort()
    return {
        "seq_us": seq_wall / calls * 1e6,
        "seq_cpu_us": seq_cpu / calls * 1e6,
        "par_ms": pars[2][0] * 1e3,
        "par_min_ms": pars[0][0] * 1e3,
        "par_cpu_ms": par_cpu * 1e3,
    }


def _sync(driver: SyncDriver) -> Callable[[str], Awaitable[None]]:
    async def run(source: str) -> None:
        run_sync(driver, source)  # the loop is not involved while the cell runs

    return run


def _async(driver: AsyncDriver) -> Callable[[str], Awaitable[None]]:
    return lambda source: run_async(driver, source)


async def open_variant(
    name: str, calls: int, par: int, stack: contextlib.AsyncExitStack
) -> Callable[[str], Awaitable[None]]:
    """The cell runner of variant ``name``; what it opened is closed by ``stack``."""
    if name == "stpyv8-call":
        return _sync(Stpyv8(script=False))
    if name == "stpyv8-script":
        return _sync(Stpyv8())
    if name == "stpyv8-thread":
        on_thread = OnThread(Stpyv8)
        stack.callback(on_thread.close)
        return _async(on_thread)
    if name == "miniracer-sync":
        sync_driver = MiniRacerSync()
        stack.callback(sync_driver.close)
        return _sync(sync_driver)
    if name == "miniracer-async":
        async_driver = MiniRacerAsync()
        stack.callback(async_driver.close)
        return _async(async_driver)
    if name in ("miniracer-native-sync", "miniracer-native-async"):
        native = MiniRacerNative("read" if name.endswith("sync") else "loop")
        stack.callback(native.close)
        return _sync(native) if name.endswith("sync") else _async(native)
    if name.startswith("pipe-"):
        pipe = await OverPipe.open(name.removeprefix("pipe-"))
        stack.callback(pipe.close)
        return _async(pipe)
    # codemode itself, through SessionRuntime (worker_engine.py's cell runner)
    sys.path.insert(0, str(HERE))
    from worker_engine import echo, run_cell  # type: ignore[import-not-found]

    from codemode import CellLimits, SessionRuntime, tools_delegate
    from codemode.engine import V8Engine, WorkerEngine

    limits = CellLimits(max_tool_calls=calls + par + 10, max_parallel_tool_calls=par + 10)
    engine = WorkerEngine() if name == "codemode-worker" else V8Engine()
    runtime = await stack.enter_async_context(
        SessionRuntime(tools_delegate({"echo": echo}), limits=limits, engine=engine)
    )
    return lambda source: run_cell(runtime, source)


async def child(name: str, calls: int, par: int) -> Any:
    async with contextlib.AsyncExitStack() as stack:
        run = await open_variant(name, calls, par, stack)
        return await measure_cells(run, calls, par)


# ----------------------------------------------------------------------------------- extras


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _idle_memory(make: Callable[[], SyncDriver], count: int = 100) -> float:
    """MiB of RSS per idle context: the prelude, and a cell awaiting a call."""
    held = [make() for _ in range(5)]
    for driver in held:
        driver.start(SEQ.format(n=10))
    time.sleep(0.2)
    before = _rss()
    for _ in range(count):
        driver = make()
        driver.start(SEQ.format(n=10))
        held.append(driver)
    time.sleep(0.2)
    return (_rss() - before) / count / 2**20


def _fresh(make: Callable[[], Any], close: Callable[[Any], None], count: int = 20) -> Any:
    """Median wall and CPU (ms) of a fresh context with the prelude running ``text("hi")``."""
    walls, cpus = [], []
    for _ in range(count + 2):
        t = Timer()
        driver = make()
        run_sync(driver, 'text("hi")')
        wall, cpu = t.done()
        close(driver)
        walls.append(wall * 1e3)
        cpus.append(cpu * 1e3)
    return {"wall_ms": statistics.median(walls[2:]), "cpu_ms": statistics.median(cpus[2:])}


def _in_grandchild(kind: str) -> dict[str, Any]:
    """Run ``--child kind`` in a process of its own (it may abort); its exit and last output."""
    t = time.perf_counter()
    proc = subprocess.run(
        [str(ALT_PYTHON), __file__, "--child", kind],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [  # without the native stack trace of a fatal error
        line
        for line in (proc.stdout + proc.stderr).strip().splitlines()
        if line.strip() and not line.startswith("    /")
    ]
    if proc.returncode == 0 and lines and lines[-1].startswith(("{", "[", "0", "1", "2", "3")):
        return json.loads(lines[-1])
    return {
        "returncode": proc.returncode,
        "seconds": round(time.perf_counter() - t, 2),
        "output": lines[-4:],
    }


def _stop_later(stop: Callable[[], None], delay: float) -> tuple[threading.Thread, list[float]]:
    stamp: list[float] = []

    def fire() -> None:
        time.sleep(delay)
        stamp.append(time.perf_counter())
        stop()

    thread = threading.Thread(target=fire)
    thread.start()
    return thread, stamp


def _terminate_stpyv8() -> None:
    """STPyV8's only stop, ``JSEngine.terminateAllThreads``, is ``TerminateExecution`` of the
    calling thread's *current* isolate: so the stopping thread enters the isolate first."""
    import STPyV8

    STPyV8.v8_default_isolate.enter()
    STPyV8.JSEngine.terminateAllThreads()
    STPyV8.v8_default_isolate.leave()


def _stpyv8_runaway(source: str, steps: int) -> Any:
    """A runaway cell (in its start, or in the continuation of its first call) stopped from
    another thread 50 ms in; then a new context's cell, and the same context evaluating."""
    driver = Stpyv8()
    thread, stamp = _stop_later(_terminate_stpyv8, 0.05)
    report = driver.start(source)
    for _ in range(steps):
        report = driver.step(answer(report) or "[]")
    returned = time.perf_counter()
    thread.join()
    run_sync(Stpyv8(), SEQ.format(n=10))  # a new context of the same isolate
    driver.context.enter()
    same = driver.context.eval("1 + 1")
    driver.context.leave()
    return {
        "ms_after_stop": round((returned - stamp[0]) * 1e3, 3),
        "report_after_stop": report,
        "new_context_runs_a_cell": True,
        "same_context_evaluates": same == 2,
    }


def _stpyv8_idle_stop() -> None:
    """A stop requested while no JavaScript runs (the race of a watchdog with a step's end)."""
    driver = Stpyv8()
    run_sync(driver, SEQ.format(n=10))
    _terminate_stpyv8()
    print("stop requested while idle", flush=True)
    report = driver.start('text("second")')
    print("next cell ran:", "second" in report, "; its first report:", report, flush=True)


def _stpyv8_call_runaway() -> None:
    """A runaway stopped on the function-call path (``JSFunction.__call__``)."""
    driver = Stpyv8(script=False)
    _stop_later(_terminate_stpyv8, 0.05)
    driver.start("while (true) {}")
    print("returned", flush=True)


def _stpyv8_allocate() -> None:
    """A cell allocating without bound (STPyV8 sets no heap limit of its own)."""
    driver = Stpyv8()
    driver.start("const a = []; while (true) a.push(new Array(1e5).fill(1.5));")
    print("returned", flush=True)


def _stpyv8_fresh() -> Any:
    # Kept, not dropped: in this STPyV8 (13.1.201.22) dropped contexts that had run a cell
    # crashed the process after 30-40 of them.
    kept: list[Stpyv8] = []
    return _fresh(Stpyv8, kept.append)


GRANDCHILDREN: dict[str, Callable[[], Any]] = {
    "stpyv8-runaway-start": lambda: _stpyv8_runaway("while (true) {}", 0),
    "stpyv8-runaway-continuation": lambda: _stpyv8_runaway(
        "await tools.echo({}); while (true) {}", 1
    ),
    "stpyv8-idle-stop": _stpyv8_idle_stop,
    "stpyv8-call-runaway": _stpyv8_call_runaway,
    "stpyv8-allocate": _stpyv8_allocate,
    "stpyv8-fresh-context": _stpyv8_fresh,
    "stpyv8-idle-context-mib": lambda: _idle_memory(Stpyv8),
}


def stpyv8_extras() -> Any:
    """Each probe in a process of its own: several end the process."""
    return {kind: _in_grandchild(kind) for kind in GRANDCHILDREN}


def miniracer_extras() -> Any:
    async def runaway() -> Any:
        from py_mini_racer import MiniRacer

        racer = MiniRacer()
        t = time.perf_counter()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(racer.eval_cancelable("while (true) {}"), 0.05)
        after = (time.perf_counter() - t - 0.05) * 1e3
        same = await racer.eval_cancelable("1 + 1")
        racer.close()
        return {"ms_after_deadline": round(after, 3), "same_context_evaluates": same == 2}

    out: dict[str, Any] = {"runaway": asyncio.run(runaway())}
    out["fresh_context"] = _fresh(MiniRacerSync, MiniRacerSync.close)
    out["idle_context_mib"] = _idle_memory(MiniRacerSync)
    return out


# ------------------------------------------------------------------------------------ main

VARIANTS = (
    "stpyv8-call",
    "stpyv8-script",
    "stpyv8-thread",
    "miniracer-sync",
    "miniracer-async",
    "miniracer-native-sync",
    "miniracer-native-async",
    "pipe-stpyv8",
    "pipe-miniracer",
    "codemode",
    "codemode-worker",
)


def _available() -> tuple[list[str], list[str]]:
    """The variants that can run here, and a message per binding that cannot."""
    import importlib.util

    skipped, ok = [], []
    have_alt = (
        ALT_PYTHON.exists()
        and subprocess.run([str(ALT_PYTHON), "-c", "import STPyV8"], capture_output=True).returncode
        == 0
    )
    if not have_alt:
        skipped.append(
            f"STPyV8 variants skipped: no {ALT_PYTHON} with STPyV8 (setup: see the docstring)"
        )
    have_mr = importlib.util.find_spec("py_mini_racer") is not None
    have_cm = importlib.util.find_spec("codemode") is not None
    if not have_mr:
        skipped.append(f"mini-racer variants skipped: {sys.executable} has no py_mini_racer")
    if not have_cm:
        skipped.append(f"codemode variants skipped: {sys.executable} has no codemode")
    for name in VARIANTS:
        if "stpyv8" in name and not have_alt:
            continue
        if "miniracer" in name and not have_mr:
            continue
        if name.startswith("codemode") and not have_cm:
            continue
        ok.append(name)
    return ok, skipped


def _python(name: str) -> str:
    return (
        str(ALT_PYTHON) if name.startswith("stpyv8") or name == "pipe-stpyv8" else (sys.executable)
    )


def _run_child(python: str, args: list[str], timeout: float = 600) -> Any:
    proc = subprocess.run(
        [python, __file__, *args], capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{args}: exit {proc.returncode}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cell(values: list[float], digits: int = 0) -> str:
    med = statistics.median(values)
    return f"{med:,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def _label(name: str, pin: int | None) -> str:
    return name if pin is None else f"{name}, CPU {pin} only"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--par", type=int, default=1000)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--extras", action="store_true")
    parser.add_argument(
        "--pin", type=int, help="also run every variant pinned to this CPU (its helper too)"
    )
    parser.add_argument("--child")
    parser.add_argument("--serve")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    if args.child:
        if args.pin is not None:  # threads and child processes made from here on inherit it
            os.sched_setaffinity(0, {args.pin})
        if args.child in GRANDCHILDREN:
            found = GRANDCHILDREN[args.child]()
            if found is not None:
                print(json.dumps(found))
            return
        if args.child == "extras-stpyv8":
            result = stpyv8_extras()
        elif args.child == "extras-miniracer":
            result = miniracer_extras()
        else:
            result = asyncio.run(child(args.child, args.calls, args.par))
        print(json.dumps(result))
        return

    available, skipped = _available()
    for message in skipped:
        print(message)
    names = [n for n in args.variants.split(",") if n in available]
    runs = [(n, None) for n in names]
    if args.pin is not None:  # each variant free, then pinned, in every round
        runs = [(n, pin) for n in names for pin in (None, args.pin)]
    loads = [os.getloadavg()]
    rows: dict[str, list[dict[str, float]]] = {_label(*r): [] for r in runs}
    for rep in range(args.reps):  # interleaved: every variant once per round, order rotated
        for name, pin in runs[rep % len(runs) :] + runs[: rep % len(runs)]:
            child_args = ["--child", name, "--calls", str(args.calls), "--par", str(args.par)]
            if pin is not None:
                child_args += ["--pin", str(pin)]
            rows[_label(name, pin)].append(_run_child(_python(name), child_args))
        loads.append(os.getloadavg())
        print(f"round {rep + 1}/{args.reps} done, load {loads[-1][0]:.1f}", file=sys.stderr)
    print(f"load average (1 min) per round: {', '.join(f'{x[0]:.1f}' for x in loads)}")
    print(f"{args.reps} rounds, each variant in a fresh process; median (min-max) over rounds")
    print(
        f"| variant | sequential us/call | calls/s | CPU us/call | Promise.all of {args.par} "
        "(ms) | fastest (ms) | CPU (ms) |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, found in rows.items():
        seq = [r["seq_us"] for r in found]
        print(
            f"| {label} | {_cell(seq, 1)} | {1e6 / statistics.median(seq):,.0f} | "
            f"{_cell([r['seq_cpu_us'] for r in found], 1)} | "
            f"{_cell([r['par_ms'] for r in found], 2)} | "
            f"{min(r['par_min_ms'] for r in found):.2f} | "
            f"{_cell([r['par_cpu_ms'] for r in found], 2)} |"
        )
    results: dict[str, Any] = {"loads": loads, "rows": rows}
    if args.extras:
        if any("stpyv8" in n for n in available):
            results["stpyv8"] = _run_child(str(ALT_PYTHON), ["--child", "extras-stpyv8"])
        if any("miniracer" in n for n in available):
            results["miniracer"] = _run_child(sys.executable, ["--child", "extras-miniracer"])
        for key in ("stpyv8", "miniracer"):
            if key in results:
                print(f"{key}: {json.dumps(results[key], indent=1)}")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "v8_bindings.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
