"""The ``deno-worker`` and ``deno-process`` columns: cells as Web Workers of one ``deno``
process, or one ``deno`` process per cell."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import time
from typing import Any

from engines_compare.common import (
    BUSY,
    DEADLINE,
    Adapter,
    MiB,
    NotPossible,
    Tools,
    _dist_bytes,
    _dist_version,
    busy_after_stop,
    js_cells,
    process_tree,
)

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
