"""The worker process of :class:`codemode.engine.worker.WorkerEngine`: V8 cells behind a pipe.

Started by the host as ``python -m codemode.engine.worker_main CONFIG_JSON``. Before V8 starts it
arranges to die with its parent (``PR_SET_PDEATHSIG`` and a check of the parent's pid; the
end of its command pipe ends it too) and puts itself under ``RLIMIT_DATA``. It then runs the
in-process engine (:class:`V8Engine`, inside the RSS watchdog of :mod:`codemode.engine.watchdog`)
and answers the host's commands.

The wire is newline-delimited JSON, one object per line, in both directions (see
``docs/engines.md``). Host to worker: ``{"i": n, "op": "open"|"run"|"step"|"stop", "c": cell,
...}`` (each answered once, by ``{"i": n, ...}``), ``{"op": "cancel", "i": n}`` (abandon command
``n``; its answer is dropped), ``{"op": "close", "c": cell}``. A step's line is its command,
``{"op": "step", "c": cell, "i": n, "n": count}``, then a tab and the step text of its ``count``
inputs, which the worker hands to the isolate as it is. The worker's first line is
``{"ready": pid}``.

The worker checks nothing the cell reports: it sends each command's drain report as the cell
gave it (:class:`~codemode.engine.drain.RawReport`: the drain's text, the read buffer's bytes,
the journal's records after a stop, how the engine ended the cell), and the host checks it
against its own record of the cell (:func:`~codemode.engine.drain.check_report`). Nothing here
is trusted by the host: a worker whose V8 was subverted gets no further than a hostile cell.
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import dataclasses
import json
import os
import signal
import sys
import time
from collections.abc import Mapping
from typing import Any

# Light modules only (the host imports this one for boot_to_json): V8 is imported lazily.
from codemode.cell.eager import start_eager
from codemode.engine.base import (
    CellBoot,
    EngineLost,
    EnvRead,
)
from codemode.engine.spin import ReadablePoll, loop_busy, still_quick
from codemode.errors import EngineError
from codemode.model import CellLimits, ToolDefinition, ToolKind

__all__ = ["main"]

# One message may carry a tool result or a cell's stored values: up to the cell's heap limit.
MAX_LINE = 1 << 30

# How long the worker's loop may block for a step's result (V8Engine's step_wait): most steps
# take well under a millisecond; a longer one goes on asynchronously, and meanwhile a command
# that arrives (another cell's, a cancel) waits at most this long.
STEP_WAIT = 0.002

_dumps = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode


def _die_with_parent(parent: int) -> None:
    """Get SIGKILL when the parent dies (Linux), and exit now if it already did."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no prctl: the pipe EOF still ends us
            pass
    if os.getppid() != parent:
        os._exit(70)


def _limit_memory(data_bytes: int | None) -> None:
    if data_bytes is not None:
        import resource  # POSIX only; the host never imports this function

        resource.setrlimit(resource.RLIMIT_DATA, (data_bytes, data_bytes))


def _protocol_fds() -> tuple[int, int]:
    """Move the command pipes off fds 0/1, so nothing else (a stray print, a native library)
    can read commands or write into the answer stream: stdout goes to stderr."""
    cmd_in = os.dup(0)
    answers = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    return cmd_in, answers


# How the host starts a step's line (engine/worker.py: `_WorkerCell._head`).
_STEP_HEAD = b'{"op":"step",'

# A report longer than this keeps the host busy a while: no polling for its next command
# (about spin.QUICK_ITEMS small events, the in-process engine's bound for polling).
_QUICK_REPORT_CHARS = 1024


def raw_wire(report: Any) -> dict[str, Any]:
    """The wire form of a :class:`~codemode.engine.drain.RawReport`: ``raw`` (the drain's text;
    ``0`` for a drain that returned anything else, which the host refuses; ``null`` when none
    was read), ``cpu``, and when present ``rd`` (the reads' bytes, base64), ``j`` (journal
    records), ``lim`` (the limit that stopped the command), ``end`` (the engine's ending)."""
    raw = report.raw
    out: dict[str, Any] = {
        "raw": raw if raw is None or isinstance(raw, str) else 0,
        "cpu": report.cpu_seconds,
    }
    if report.reads:
        out["rd"] = base64.b64encode(report.reads).decode("ascii")
    if report.journal:
        out["j"] = [list(record) for record in report.journal]
    if report.limit is not None:
        out["lim"] = report.limit
    if report.ending is not None:
        out["end"] = report.ending
    return out


class _Commands(asyncio.Protocol):
    """The command pipe: each complete line is decoded and dispatched as it arrives (no reader
    task between the pipe and the command). A line that is not a command ends the worker."""

    def __init__(self, server: _Server, loop: asyncio.AbstractEventLoop) -> None:
        self._server = server
        self._parts: list[bytes] = []
        self._size = 0
        self.ended: asyncio.Future[None] = loop.create_future()

    def data_received(self, data: bytes) -> None:
        server = self._server
        if server.answered:  # how long the host took for its next command
            server.note_gap()
        start = 0
        n = len(data)
        while start < n and not self.ended.done():
            end = data.find(b"\n", start)
            if end < 0:
                self._parts.append(data[start:] if start else data)
                self._size += n - start
                if self._size > MAX_LINE:
                    self._end()
                return
            if self._parts:
                self._parts.append(data[start:end])
                line = b"".join(self._parts)
                self._parts.clear()
                self._size = 0
            else:
                line = data[start:end]
            start = end + 1
            try:
                if line.startswith(_STEP_HEAD):
                    # A step's line: its command, a tab, then its inputs' step text as is.
                    head, _, text = line.partition(b"\t")
                    msg = json.loads(head)
                    msg["text"] = text.decode()
                else:
                    msg = json.loads(line)
                self._server.dispatch(msg)
            except Exception:  # the host never sends this: end, as at the end of the pipe
                self._end()
        if not self._parts and not self.ended.done():
            server.await_next()

    def _end(self) -> None:
        if not self.ended.done():
            self.ended.set_result(None)

    def eof_received(self) -> bool | None:
        self._end()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()


class _Server:
    def __init__(self, config: dict[str, Any]) -> None:
        from codemode.engine.base import Engine
        from codemode.engine.v8 import DEFAULT_ANSWER_SPIN, V8Engine
        from codemode.engine.watchdog import GuardedEngine

        # This loop serves only its cells: a quick step may block it for its result (no
        # wake-up of the loop per step; a longer step goes on asynchronously after STEP_WAIT).
        # Its steps' answers are polled for as long as in process, at most (answer_spin).
        spin = min(float(config.get("answer_spin", 0.0)), DEFAULT_ANSWER_SPIN)
        engine: Engine = V8Engine(
            pool_size=int(config.get("pool_size", 2)), step_wait=STEP_WAIT, answer_spin=spin
        )
        budget = config.get("rss_budget")
        if budget is not None:
            engine = GuardedEngine(engine, rss_budget_bytes=int(budget))
        self.engine = engine
        self.cells: dict[int, Any] = {}
        self.tasks: dict[int, asyncio.Future[None]] = {}
        self.out: asyncio.WriteTransport | None = None
        # Polling the command pipe for the host's next command once every command was
        # answered (engine/spin.py; WorkerEngine's answer_spin); off while the host takes
        # longer than the budget.
        self.spin = float(config.get("answer_spin", 0.0))
        self.command_poll: ReadablePoll | None = None
        self.spin_now = True
        self.answered = 0.0  # when the last answer was sent, if every command was answered

    def send(self, message: dict[str, Any]) -> None:
        try:
            line = _dumps(message)
        except (TypeError, ValueError) as exc:  # not JSON (NaN from the cell, ...)
            i = message.get("i")
            line = _dumps({"i": i, "lost": f"the cell reported a value that is not JSON: {exc}"})
        assert self.out is not None
        self.out.write(line.encode("ascii") + b"\n")
        self.answered = time.perf_counter()

    def note_gap(self) -> None:
        """A command came: poll for the next one only while the host answers quickly."""
        self.spin_now = still_quick(time.perf_counter() - self.answered, self.spin)
        self.answered = 0.0

    def await_next(self) -> None:
        """After the commands that arrived were dispatched: if every one was answered and the
        loop has nothing else ready, poll the command pipe (without sleeping) for the host's
        next command, up to the budget; the loop reads it at once afterwards."""
        poll = self.command_poll
        if poll is None or not self.spin_now or self.tasks or not self.answered:
            return
        if not loop_busy(asyncio.get_running_loop()):
            poll.spin(self.spin)

    async def serve(self, cmd_fd: int, out_fd: int) -> None:
        loop = asyncio.get_running_loop()
        commands = _Commands(self, loop)
        if self.spin:
            self.command_poll = ReadablePoll(cmd_fd)
        await loop.connect_read_pipe(lambda: commands, os.fdopen(cmd_fd, "rb", buffering=0))
        self.out, _ = await loop.connect_write_pipe(
            asyncio.Protocol, os.fdopen(out_fd, "wb", buffering=0)
        )
        self.send({"ready": os.getpid()})
        await commands.ended  # the host closed the pipe (or died): end
        for task in self.tasks.values():
            task.cancel()
        for cell in self.cells.values():
            cell.close()
        self.engine.close()

    def dispatch(self, msg: dict[str, Any]) -> None:
        op = msg["op"]
        if op == "cancel":
            task = self.tasks.pop(msg["i"], None)
            if task is not None:
                task.cancel()
        elif op == "close":
            cell = self.cells.pop(msg["c"], None)
            if cell is not None:
                cell.close()
        else:
            i = msg["i"]
            # Started at once: a quick step finishes (and answers) right here, without a
            # scheduled task or another loop iteration.
            task = start_eager(asyncio.get_running_loop(), self.command(i, op, msg))
            if not task.done():
                self.tasks[i] = task
                task.add_done_callback(lambda _t: self.tasks.pop(i, None))

    async def command(self, i: int, op: str, msg: dict[str, Any]) -> None:
        key = msg["c"]
        try:
            if op == "open":
                try:
                    self.cells[key] = await self.engine.open_cell(_boot(msg["boot"]))
                except EngineError as exc:
                    self.send({"i": i, "err": str(exc)})
                    return
                self.send({"i": i})
                return
            cell = self.cells.get(key)
            if cell is None:
                self.send({"i": i, "lost": "the cell's engine was closed"})
                return
            if op == "stop":
                report = await cell.stop_raw()
                self.cells.pop(key, None)
                self.send({"i": i, "r": raw_wire(report)})
                return
            if op == "run":
                report = await cell.run_raw()
            else:
                report = await cell.step_raw(msg["text"], int(msg["n"]))
            if cell.closed:
                self.cells.pop(key, None)
            self.send({"i": i, "r": raw_wire(report)})
            raw = report.raw
            if isinstance(raw, str) and len(raw) > _QUICK_REPORT_CHARS:
                self.answered = 0.0  # the host takes a while over this one
        except EngineLost as exc:
            self.cells.pop(key, None)
            self.send({"i": i, "lost": str(exc) or type(exc).__name__})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug, or V8 failing natively: this cell is lost
            cell = self.cells.pop(key, None)
            if cell is not None:
                cell.close()
            self.send({"i": i, "lost": f"{type(exc).__name__}: {exc}"})


def _boot(data: dict[str, Any]) -> Any:
    """The :class:`CellBoot` of :func:`boot_to_json`'s wire form."""
    fields = dict(data)
    fields["tools"] = tuple(
        ToolDefinition(**{**t, "kind": ToolKind(t["kind"])}) for t in data["tools"]
    )
    fields["limits"] = CellLimits(**data["limits"])
    fields["replay_reads"] = _replay_reads(data.get("replay_reads", ()))
    return CellBoot(**fields)


def _replay_reads(raw: Any) -> tuple[Any, ...]:
    return tuple(EnvRead(str(source), float(value), int(count)) for source, value, count in raw)


def boot_to_json(boot: Any) -> dict[str, Any]:
    """The wire form of a :class:`CellBoot` (used by the host): every field, whatever fields
    the dataclasses grow, with the tools and limits as objects."""
    data: dict[str, Any] = {}
    for field in dataclasses.fields(boot):
        value = getattr(boot, field.name)
        if field.name == "tools":
            value = [{f.name: getattr(t, f.name) for f in dataclasses.fields(t)} for t in value]
        elif field.name == "limits":
            value = dataclasses.asdict(value)
        elif field.name == "replay_reads":
            value = [[read.source, read.value, read.count] for read in value]
        elif isinstance(value, Mapping):
            value = dict(value)
        data[field.name] = value
    return data


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    config = json.loads(args[0])
    _die_with_parent(int(config["parent"]))
    _limit_memory(config.get("data_limit"))
    cmd_fd, out_fd = _protocol_fds()
    server = _Server(config)
    asyncio.run(server.serve(cmd_fd, out_fd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
