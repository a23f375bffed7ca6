"""The worker-process engine: V8 cells in child processes, behind a pipe (docs/engines.md).

:class:`WorkerEngine` runs each cell in the in-process engine (:class:`V8Engine`) of a child
Python process (:mod:`codemode.engine.worker_main`). Native memory (ICU, parser zones, regular
expression code) and native crashes cannot be bounded inside the host process; a child can be:

- it runs under ``RLIMIT_DATA`` (``memory_limit_bytes``; V8 reserves about 1.4 TiB of address
  space at start, so ``RLIMIT_AS`` cannot be used) and an RSS watchdog (``rss_budget_bytes``)
  that stops the cell which grew it past the budget with a clear error;
- it dies with its parent (``PR_SET_PDEATHSIG`` and the end of its command pipe), and the host
  can kill it at any moment;
- a child that dies (crash, OOM kill, limit) ends only the cells it held: their commands end
  with :class:`EngineLost` (the cell completes with ``exec runtime ended unexpectedly``
  and commits nothing; the reason is logged), and the next cell gets a fresh child.

One child holds the cells of one engine, that is of one session (give each ``SessionRuntime``
its own ``WorkerEngine``), or at most ``cells_per_worker`` cells. Children start lazily, at the
first cell. The wire carries only JSON, one object per line, and every answer is validated: a
malformed answer means the child is compromised, and it is killed.

The host's event loop never blocks on the pipe: commands are written to an asyncio stream, and
answers are read by a protocol on the loop that decodes each line as it arrives and resolves
its command's future directly (no reader task between). One engine command is one round trip:
a nested call costs one line each way. See ``docs/engines.md`` and ``docs/call-path.md``.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from codemode.cell.authority import CellAuthority
from codemode.cell.stored import StoredSnapshot
from codemode.engine import spin as spin_mod
from codemode.engine.base import (
    CellBoot,
    Engine,
    EngineCell,
    EngineEvent,
    EngineLost,
    StepInput,
    StepReport,
    ToolResultInput,
)
from codemode.engine.drain import (
    RawReport,
    check_report_async,
    stopped_events,
    unreported_events,
)
from codemode.engine.v8 import _step_text
from codemode.engine.watchdog import rss_error_text
from codemode.engine.worker_main import boot_to_json
from codemode.errors import EngineError
from codemode.model import CellLimits

__all__ = [
    "DEFAULT_MEMORY_LIMIT",
    "DEFAULT_RSS_BUDGET",
    "WorkerEngine",
]

logger = logging.getLogger("codemode.engine.worker")

GiB = 1024 * 1024 * 1024

# RLIMIT_DATA of a worker: V8 itself commits about 0.6 GiB at start and about 10 MiB per live
# isolate (its thread's stack), so 4 GiB leaves room for the default 256 live cells.
DEFAULT_MEMORY_LIMIT = 4 * GiB
# The watchdog inside each worker: resident memory a worker may reach before the cell that grew
# it is stopped. A worker with a few idle cells uses about 100 MiB.
DEFAULT_RSS_BUDGET = 1 * GiB

# The longest answer a worker may send (a report carries at most a cell's output, its calls'
# inputs and its stored values, each far below this with the default limits).
DEFAULT_MAX_MESSAGE = 256 * 1024 * 1024

# How long the host's loop polls for a worker's answer, and the worker for the host's next
# command, before sleeping (WorkerEngine's answer_spin).
DEFAULT_WORKER_SPIN = 0.0003

# How long an unanswered `stop` may take before the child is declared unresponsive and killed.
STOP_TIMEOUT = 1.0
# Answers above this size are decoded on a worker thread, not on the event loop.
_BIG_MESSAGE = 1 << 20


_dumps = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode


class _Malformed(Exception):
    """An answer of the child broke the protocol."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} in an answer")


_decode = json.JSONDecoder(parse_constant=_reject_constant).decode


def _loads(data: bytes) -> Any:
    """Decode one answer (UTF-8 JSON; ``NaN`` and the infinities refused)."""
    return _decode(data.decode())


def _describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "stopped answering"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    if returncode == 133 or returncode == 134:  # V8's fatal-error trap / abort
        return f"aborted (exit status {returncode})"
    return f"exited with status {returncode}"


class _Child:
    """One worker process and the cells it holds."""

    def __init__(self, engine: WorkerEngine) -> None:
        self.engine_ref = weakref.ref(engine)
        self.config = engine._config
        self.loop = asyncio.get_running_loop()
        self.proc: asyncio.subprocess.Process | None = None
        self.started: asyncio.Future[None] = self.loop.create_future()
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        # Answers whose future was cancelled (its awaiting task was cancelled) before they
        # came: kept until abandon() claims them or forget() drops them.
        self.unclaimed: dict[int, dict[str, Any]] = {}
        self.cells: dict[int, _WorkerCell] = {}
        self.opening = 0
        self.lost: str | None = None
        self.next_id = 0
        self.next_key = 0
        self.retired = False
        self.draining = False  # takes no new cells (its memory watchdog fired); ends when idle
        self._ending = False
        self.stderr_tail: deque[bytes] = deque(maxlen=4)
        # Polls the answer pipe for a quick answer (WorkerEngine's answer_spin); set once the
        # pipe is open. spin_now: off while answers take longer than the budget.
        self.spin = float(self.config.get("answer_spin", 0.0))
        self.answer_poll: spin_mod.ReadablePoll | None = None
        self.spin_now = True
        self._killed = False  # by us: its exit says nothing about its memory
        self._tasks: set[asyncio.Task[None]] = set()
        self._spawn = self._task(self._start())

    def _task(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def load(self) -> int:
        return len(self.cells) + self.opening

    # -------------------------------------------------------------- start and end

    async def _start(self) -> None:
        config = dict(self.config)
        config["parent"] = os.getpid()
        # Answers come on a pipe of our own, read by a protocol that resolves each command's
        # future as its line arrives (no reader task, no stream buffer between).
        answers_fd, child_out = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                self.config["python"],
                "-m",
                "codemode.engine.worker_main",
                json.dumps(config),
                stdin=asyncio.subprocess.PIPE,
                stdout=child_out,
                stderr=asyncio.subprocess.PIPE,
                # A process group of its own: a Ctrl-C at the terminal is the host's to handle.
                # Not a session of its own: Linux schedules each session as a group of its own
                # (autogroup), and on a loaded machine a worker in its own group waited for its
                # group's turn at every wake-up, that is at every nested call (2-3x slower).
                process_group=0,
            )
        except (OSError, ValueError) as exc:
            os.close(answers_fd)
            self._fail_start(f"could not start a worker process: {exc}")
            return
        finally:
            os.close(child_out)
        self.proc = proc
        _track(self.engine_ref(), proc)
        self._task(self._read_stderr())
        answers = _Answers(self, self.config["max_message_bytes"], self.loop)
        if self.spin:
            self.answer_poll = spin_mod.ReadablePoll(answers_fd)
        try:
            await self.loop.connect_read_pipe(
                lambda: answers, os.fdopen(answers_fd, "rb", buffering=0)
            )
            async with asyncio.timeout(self.config["start_timeout"]):
                line = await answers.first
            first = _loads(line) if line.endswith(b"\n") else None
            if not isinstance(first, dict) or first.get("ready") != proc.pid:
                raise _Malformed(f"unexpected first line {line[:200]!r}")
        except asyncio.CancelledError:
            answers.close()
            self._abandon_process()
            raise
        except Exception as exc:
            answers.close()
            await self._end(f"did not start ({type(exc).__name__}: {exc})")
            self._fail_start(self.lost or "the worker process did not start")
            return
        if not self.started.done():
            self.started.set_result(None)
        logger.debug("worker process %d started", proc.pid)
        if self.retired:
            self.shutdown()
        try:
            reason = await answers.ended
        except asyncio.CancelledError:
            answers.close()
            self._abandon_process()
            raise
        answers.close()
        await self._end(reason)

    def _fail_start(self, reason: str) -> None:
        self.lost = self.lost or reason
        if not self.started.done():
            self.started.set_exception(EngineError(reason))
            self.started.exception()  # retrieved: a start nobody awaited is not an error
        engine = self.engine_ref()
        if engine is not None:
            engine._child_ended(self)

    async def _read_stderr(self) -> None:
        """Drain the child's stderr (V8's fatal messages, Python tracebacks) in chunks, never
        by lines, so no output can stop the draining; keep the last few KiB for the reason."""
        assert self.proc is not None and self.proc.stderr is not None
        stream = self.proc.stderr
        with contextlib.suppress(Exception):
            while chunk := await stream.read(1 << 16):
                self.stderr_tail.append(chunk[-4096:])
                logger.debug("worker %s: %s", self.pid, chunk[:2000].decode("utf-8", "replace"))

    def answer(self, msg: Any) -> None:
        """One decoded answer: resolve the future of its command (an answer to a command
        forgotten meanwhile is dropped; one whose awaiting task was just cancelled is kept for
        :meth:`abandon`)."""
        if not isinstance(msg, dict):
            raise _Malformed("an answer is not an object")
        i = msg.get("i")
        if type(i) is not int:
            raise _Malformed("an answer without a command id")
        future = self.pending.pop(i, None)
        if future is not None:
            if not future.done():
                future.set_result(msg)
            elif future.cancelled():
                self.unclaimed[i] = msg

    def compromised(self, reason: str) -> None:
        """An answer broke the protocol: nothing the child says can be trusted any more."""
        self._give_up(f"sent a malformed answer ({reason[:200]}) and was killed")

    def unresponsive(self, what: str) -> None:
        self._give_up(f"did not answer {what} within {STOP_TIMEOUT} s and was killed")

    def _give_up(self, reason: str) -> None:
        self.lost = self.lost or f"the worker process {self.pid} {reason}"  # refuse commands now
        self._kill()
        self._task(self._end(reason))

    def _abandon_process(self) -> None:
        """The event loop is going away (``asyncio.run`` cancels every task before it closes the
        loop): the worker cannot be driven any more, so end it and its transport now."""
        self.lost = self.lost or "the event loop of the worker's host ended"
        self._kill()
        self._close_transport()

    def _close_transport(self) -> None:
        """Close the subprocess transport now, on its loop: asyncio never does it for us, and
        one collected after its loop closed complains ("Event loop is closed")."""
        transport = getattr(self.proc, "_transport", None)
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.close()

    def _kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            self._killed = True
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    async def _end(self, reason: str) -> None:
        """The child is gone (or must go): learn how it ended, then fail everything it held."""
        if self._ending:
            return
        self._ending = True
        self.lost = self.lost or f"the worker process {self.pid} {reason}"
        proc = self.proc
        returncode: int | None = None
        if proc is not None:
            try:
                async with asyncio.timeout(1.0):
                    returncode = await proc.wait()
            except TimeoutError:
                self._kill()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        returncode = await proc.wait()
        how = _describe_exit(returncode)
        text = f"the worker process {self.pid} {how}"
        if reason != "closed its pipe" or returncode is None:
            text += f" ({reason})"
        hint = self._hint(returncode)
        if hint:
            text += f"; {hint}"
        self.lost = text
        if not self.retired or returncode != 0:
            logger.warning("%s", text)
        self._fail_all(text)
        if returncode is not None:
            self._close_transport()
        engine = self.engine_ref()
        if engine is not None:
            engine._child_ended(self)

    def _hint(self, returncode: int | None) -> str:
        tail = b"".join(self.stderr_tail).decode("utf-8", "replace")
        memory = (
            "MemoryError" in tail
            or "out of memory" in tail.lower()
            or "allocation failed" in tail.lower()
            or returncode in (133, 134, -signal.SIGKILL, -signal.SIGTRAP, -signal.SIGABRT)
        )
        if memory and not self._killed and self.config.get("data_limit"):
            return f"it may have run out of memory (memory_limit_bytes={self.config['data_limit']})"
        return ""

    def _fail_all(self, text: str) -> None:
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(EngineLost(text))
        for cell in list(self.cells.values()):
            cell._lost = text
            if cell._inflight is None and cell._on_loss is not None:
                self.loop.call_soon(cell._on_loss, text)  # it waits for a tool or a resume
        if not self.started.done():
            self._fail_start(text)

    def shutdown(self) -> None:
        """No more cells: let the child end (its command pipe closes; it exits)."""
        self.retired = True
        proc = self.proc
        if proc is not None and proc.stdin is not None and not proc.stdin.is_closing():
            with contextlib.suppress(RuntimeError):  # the loop is closed: the pipe closes anyway
                proc.stdin.close()

    async def wait_ended(self, grace: float) -> None:
        proc = self.proc
        if proc is None:
            return
        try:
            async with asyncio.timeout(grace):
                await proc.wait()
        except TimeoutError:
            self._kill()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await proc.wait()

    # -------------------------------------------------------------- commands

    def send(self, line: bytes) -> None:
        proc = self.proc
        if self.lost is not None or proc is None or proc.stdin is None:
            raise EngineLost(self.lost or "the worker process is not running")
        if proc.stdin.is_closing():
            raise EngineLost("the worker process is shutting down")
        proc.stdin.write(line)

    def send_quietly(self, line: bytes) -> None:
        with contextlib.suppress(EngineLost, OSError, RuntimeError):
            self.send(line)

    async def request(self, head: str, tail: str | bytes = "}") -> tuple[int, asyncio.Future[Any]]:
        """:meth:`post`, then wait while the pipe to the child holds over 1 MiB unsent."""
        i, future = self.post(head, tail)
        await self.flow()
        return i, future

    async def flow(self) -> None:
        """Wait while the pipe to the child holds over 1 MiB unsent."""
        proc = self.proc
        stdin = proc.stdin if proc is not None else None
        if stdin is not None and stdin.transport.get_write_buffer_size() > 1 << 20:
            with contextlib.suppress(OSError, RuntimeError):  # a dead child: see the reader
                await stdin.drain()

    def post(self, head: str, tail: str | bytes = "}") -> tuple[int, asyncio.Future[Any]]:
        """Send ``head`` + ``"i": n`` + ``tail`` as one line (a ``bytes`` tail brings its own
        newline); return the id and the future of the answer."""
        self.next_id += 1
        i = self.next_id
        future: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        if isinstance(tail, str):
            self.send(f'{head}"i":{i}{tail}\n'.encode())
        else:  # a big line: written in two pieces rather than copied once more on the loop
            self.send(f'{head}"i":{i}'.encode())
            self.send(tail)
        self.pending[i] = future
        return i, future

    def abandon(self, i: int) -> asyncio.Future[Any] | None:
        """Abandon command ``i`` as :meth:`forget` does, but keep a place for its answer: a
        child that finished the command before it saw the cancel has already sent the answer
        (a drain's report is the only record of what it emptied). Returns the future that
        answer lands in; the child answers in order, so it has come by the time the answer to
        any later command has. The caller pops ``pending[i]`` when done with it."""
        late: asyncio.Future[Any] = self.loop.create_future()
        answered = self.unclaimed.pop(i, None)
        if answered is not None:  # it came after its awaiting task was cancelled
            late.set_result(answered)
            return late
        future = self.pending.pop(i, None)
        if future is None:
            return None
        if not future.done():
            future.set_exception(EngineLost("the cell's engine was closed"))
        self.pending[i] = late
        self.send_quietly(f'{{"op":"cancel","i":{i}}}\n'.encode())
        return late

    def forget(self, i: int, send_cancel: bool = True) -> None:
        """Abandon command ``i``: its answer will be dropped (whoever awaits it gets
        :class:`EngineLost`); the child stops it."""
        self.unclaimed.pop(i, None)
        future = self.pending.pop(i, None)
        if future is None:
            return
        if not future.done():
            future.set_exception(EngineLost("the cell's engine was closed"))
        if send_cancel:
            self.send_quietly(f'{{"op":"cancel","i":{i}}}\n'.encode())


class _Answers(asyncio.Protocol):
    """The worker's answer pipe: splits what arrives into lines and hands each, decoded, to
    :meth:`_Child.answer` at once, in order. A line longer than ``limit``, one that is not JSON
    or not an answer ends the stream (``ended`` gets the reason; the child is then ended). The
    first line (the worker's ``ready``) goes to ``first`` undecoded. Lines over
    ``_BIG_MESSAGE`` are decoded on a worker thread; lines behind one wait for it."""

    def __init__(self, child: _Child, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        self._child = child
        self._limit = limit
        self._loop = loop
        self._parts: list[bytes] = []
        self._size = 0
        self._transport: asyncio.ReadTransport | None = None
        self._backlog: deque[bytes] | None = None  # lines behind one decoded on a thread
        self.first: asyncio.Future[bytes] = loop.create_future()
        self.ended: asyncio.Future[str] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.ReadTransport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if self.ended.done():
            return
        start = 0
        n = len(data)
        while start < n:
            end = data.find(b"\n", start)
            if end < 0:
                self._parts.append(data[start:] if start else data)
                self._size += n - start
                if self._size > self._limit:
                    self._fail(ValueError(f"an answer longer than {self._limit} bytes"))
                return
            if self._parts:
                self._parts.append(data[start : end + 1])
                line = b"".join(self._parts)
                self._parts.clear()
                self._size = 0
            else:
                line = data if start == 0 and end == n - 1 else data[start : end + 1]
            start = end + 1
            if len(line) > self._limit:
                self._fail(ValueError(f"an answer longer than {self._limit} bytes"))
                return
            self._line(line)
            if self.ended.done():
                return

    def _line(self, line: bytes) -> None:
        if not self.first.done():
            self.first.set_result(line)
            return
        if self._backlog is not None:
            self._backlog.append(line)
            return
        if len(line) > _BIG_MESSAGE:
            self._backlog = deque()
            self._child._task(self._decode_big(line))
            return
        try:
            self._child.answer(_loads(line))
        except Exception as exc:  # not JSON, not an answer
            self._fail(exc)

    async def _decode_big(self, line: bytes) -> None:
        try:
            msg = await asyncio.to_thread(_loads, line)
            self._child.answer(msg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(exc)
            return
        backlog, self._backlog = self._backlog, None
        while backlog and not self.ended.done():
            self._line(backlog.popleft())
            if self._backlog is not None:  # another big one: it takes the rest
                self._backlog.extend(backlog)
                return

    def _fail(self, exc: BaseException) -> None:
        if not self.ended.done():
            self.ended.set_result(
                f"sent a malformed answer ({type(exc).__name__}: {str(exc)[:200]})"
            )
        if not self.first.done():
            self.first.set_exception(_Malformed(f"a malformed first line ({exc})"))
        self.close()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.first.done():
            self.first.set_result(b"")
        if not self.ended.done():
            self.ended.set_result("closed its pipe")

    def close(self) -> None:
        """Stop reading (the child is ending or ended)."""
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.close()


def _track(engine: WorkerEngine | None, proc: asyncio.subprocess.Process) -> None:
    """A worker whose engine is garbage-collected is killed (its session was dropped)."""
    if engine is not None:
        weakref.finalize(engine, _kill_unreaped, proc)


def _kill_unreaped(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:  # not reaped yet, so the pid is still this worker's
        with contextlib.suppress(OSError):
            os.kill(proc.pid, signal.SIGKILL)


class WorkerEngine(Engine):
    """Runs cells in child processes, each under an OS memory limit (see the module docstring).

    All arguments are optional:

    - ``memory_limit_bytes``: ``RLIMIT_DATA`` of each worker (default 4 GiB; ``None``: none);
    - ``rss_budget_bytes``: resident memory of a worker past which the cell that grew it is
      stopped with ``exec cell exceeded rss_budget_bytes (...)`` (default 1 GiB; ``None``: off);
    - ``cells_per_worker``: live cells one worker holds (default ``None``: all of this engine's);
    - ``pool_size``: isolates each worker creates ahead of time (default 2);
    - ``start_timeout``: seconds a worker may take to start (default 60);
    - ``python``: the interpreter to run workers with (default ``sys.executable``);
    - ``max_message_bytes``: the longest answer accepted from a worker (default 256 MiB); a
      longer one counts as a protocol violation;
    - ``answer_spin``: seconds the host's event loop polls a worker's answer pipe, once it
      has nothing else ready, before sleeping, and the worker its command pipe for the
      host's next command (default 0.0003, at most 0.001; 0: off). A sleeping thread costs
      tens of microseconds to wake on a virtual machine; an exchange that takes longer than
      the budget stops the polling until one is quick again (docs/call-path.md).

    Use one engine per session: a worker that dies ends the cells of its engine only.
    """

    name = "worker"

    def __init__(
        self,
        *,
        memory_limit_bytes: int | None = DEFAULT_MEMORY_LIMIT,
        rss_budget_bytes: int | None = DEFAULT_RSS_BUDGET,
        cells_per_worker: int | None = None,
        pool_size: int = 2,
        start_timeout: float = 60.0,
        python: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE,
        answer_spin: float = DEFAULT_WORKER_SPIN,
    ) -> None:
        for name, value in (
            ("memory_limit_bytes", memory_limit_bytes),
            ("rss_budget_bytes", rss_budget_bytes),
            ("cells_per_worker", cells_per_worker),
            ("max_message_bytes", max_message_bytes),
        ):
            if value is not None and (isinstance(value, bool) or int(value) <= 0):
                raise ValueError(f"{name} must be a positive integer or None")
        if pool_size < 0:
            raise ValueError("pool_size must be at least 0")
        self.memory_limit_bytes = memory_limit_bytes
        self.rss_budget_bytes = rss_budget_bytes
        self.cells_per_worker = cells_per_worker
        self._config: dict[str, Any] = {
            "data_limit": memory_limit_bytes,
            "rss_budget": rss_budget_bytes,
            "pool_size": pool_size,
            "start_timeout": float(start_timeout),
            "python": python or sys.executable,
            "max_message_bytes": int(max_message_bytes),
            "answer_spin": spin_mod.check_spin("answer_spin", answer_spin),
        }
        self._children: list[_Child] = []
        self._retired: set[_Child] = set()
        self._closed = False

    # -------------------------------------------------------------- Engine

    async def open_cell(self, boot: CellBoot) -> EngineCell:
        if self._closed:
            raise EngineError("the worker engine was closed")
        child = self._child_with_room()
        child.opening += 1
        try:
            await asyncio.shield(child.started)
            if not boot.stored:
                body = _dumps(boot_to_json(boot))
            elif isinstance(boot.stored, StoredSnapshot) and boot.stored.json_ready:
                body = _boot_body(boot)
            else:  # a large map is joined on a thread (in pieces: the loop keeps the GIL)
                body = await asyncio.to_thread(_boot_body, boot)
            child.next_key += 1
            key = child.next_key
            i, future = await child.request('{"op":"open",', f',"c":{key},"boot":{body}}}')
            try:
                answer = await future
            except asyncio.CancelledError:
                child.forget(i)
                child.send_quietly(f'{{"op":"close","c":{key}}}\n'.encode())
                raise
        except EngineLost as exc:
            raise EngineError(f"could not start the cell: {exc}") from exc
        finally:
            child.opening -= 1
        if "err" in answer:
            raise EngineError(str(answer["err"])[:1000])
        if set(answer) != {"i"}:
            child.compromised("bad answer to open")
            raise EngineError("could not start the cell: the worker process misbehaved")
        cell = _WorkerCell(child, key, boot)
        child.cells[key] = cell
        return cell

    def close(self) -> None:
        """Refuse new cells; each worker ends once its last cell closed."""
        if self._closed:
            return
        self._closed = True
        for child in list(self._children):
            if child.load == 0:
                self._retire(child)

    async def aclose(self) -> None:
        """Close, and wait (a few seconds at most, then kill) until idle workers exited."""
        self.close()
        children = list(self._retired)
        await asyncio.gather(*(c.wait_ended(5.0) for c in children), return_exceptions=True)

    # -------------------------------------------------------------- introspection

    def worker_pids(self) -> list[int]:
        """The process ids of this engine's running workers."""
        return [c.pid for c in self._children if c.pid is not None and c.lost is None]

    def stats(self) -> list[dict[str, Any]]:
        """Per running worker: ``pid``, ``cells``, ``rss_bytes`` and ``cpu_seconds`` (Linux)."""
        out = []
        for child in self._children:
            if child.pid is None or child.lost is not None:
                continue
            out.append({"pid": child.pid, "cells": len(child.cells), **_proc_usage(child.pid)})
        return out

    # -------------------------------------------------------------- children

    def _child_with_room(self) -> _Child:
        for child in self._children:
            if (
                child.lost is None
                and not child.draining
                and (self.cells_per_worker is None or child.load < self.cells_per_worker)
            ):
                return child
        child = _Child(self)
        self._children.append(child)
        return child

    def _cell_closed(self, child: _Child) -> None:
        if child.load == 0 and (self._closed or child.lost is not None or child.draining):
            self._retire(child)
        elif (
            child.load == 0
            and self.cells_per_worker is not None
            and sum(1 for c in self._children if c.lost is None) > 1
        ):
            self._retire(child)  # a spare worker: keep one, end the others

    def _retire(self, child: _Child) -> None:
        if child in self._children:
            self._children.remove(child)
        self._retired.add(child)
        child.shutdown()

    def _child_ended(self, child: _Child) -> None:
        if child in self._children:
            self._children.remove(child)
        self._retired.discard(child)


def _proc_usage(pid: int) -> dict[str, Any]:
    usage: dict[str, Any] = {"rss_bytes": None, "cpu_seconds": None}
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            usage["rss_bytes"] = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        usage["cpu_seconds"] = (int(fields[11]) + int(fields[12])) / ticks
    except (OSError, ValueError, IndexError):
        pass
    return usage


class _WorkerCell(EngineCell):
    def __init__(self, child: _Child, key: int, boot: CellBoot) -> None:
        self._child = child
        self._key = key
        # The host's record of the cell: every report the worker sends is checked against it.
        self._authority = CellAuthority(
            boot.tools, boot.limits, pausable=boot.pausable, stored=boot.stored
        )
        self._limits = boot.limits
        self._closed = False
        self._lost: str | None = None
        self._inflight: int | None = None
        # A command abandoned in flight whose answer may still come (_Child.abandon), and the
        # reports whose caller was cancelled while they were checked: their output is the
        # cell's, so stop() gives it first.
        self._late: tuple[int, asyncio.Future[Any]] | None = None
        self._unreported: list[asyncio.Future[StepReport]] = []
        self._on_loss: Callable[[str], None] | None = None
        self._head = '{"op":"%s","c":' + str(key) + ","
        budget = child.config.get("rss_budget")
        self._rss_error = rss_error_text(budget) if budget is not None else None

    @property
    def closed(self) -> bool:
        return self._closed or self._lost is not None

    def watch_loss(self, callback: Callable[[str], None]) -> None:
        self._on_loss = callback

    async def run(self) -> StepReport:
        return await self._command("run", "}")

    async def step(self, inputs: Sequence[StepInput]) -> StepReport:
        self._authority.inputs(inputs)
        size = sum(len(i.value_json) for i in inputs if isinstance(i, ToolResultInput))
        few = len(inputs) <= spin_mod.QUICK_ITEMS  # a step worth polling for
        if size > _BIG_MESSAGE:  # big tool results: build the line off the event loop
            tail = await asyncio.to_thread(_step_tail_bytes, inputs)
            return await self._command("step", tail, few=False)
        return await self._command("step", _step_tail(inputs), few=few)

    async def stop(self) -> tuple[EngineEvent, ...]:
        if self.closed:
            self.close()
            return ()
        child = self._child
        if self._inflight is not None:
            self._abandon(self._inflight, None)
        early = await unreported_events(self._unreported) if self._unreported else ()
        try:
            i, future = await child.request(self._head % "stop")
        except EngineLost:
            early += self._late_output()
            self.close()
            return early
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                answer = await future
            # An abandoned command's answer came before the stop's, if the child sent one.
            early += self._late_output()
            return early + stopped_events(self._authority, _raw_report(answer["r"]))
        except TimeoutError:
            child.forget(i)
            child.unresponsive("a stop")
            return early
        except EngineLost:
            return early + self._late_output()
        except (_Malformed, KeyError, TypeError, ValueError, IndexError) as exc:
            child.compromised(f"stop: {exc}")
            return early
        finally:
            self._drop_late()
            self._mark_closed()

    def _abandon(self, i: int, future: asyncio.Future[Any] | None) -> None:
        """Command ``i`` (awaited through ``future``) is abandoned in flight: keep its answer
        coming, whether it is already here or still on its way (see :meth:`stop`)."""
        if future is not None:
            if future.done() and not future.cancelled():
                self._late = (i, future)  # answered just before the cancellation landed
                return
            future.cancel()  # nobody awaits it any more
        late = self._child.abandon(i)
        if late is not None:
            self._late = (i, late)

    def _late_output(self) -> tuple[EngineEvent, ...]:
        """The events of the abandoned command's answer, if it came, checked now (in order)
        by the cell's authority; a malformed one compromises the worker and gives nothing."""
        late, self._late = self._late, None
        if late is None:
            return ()
        i, future = late
        self._child.pending.pop(i, None)
        if not future.done() or future.cancelled() or future.exception() is not None:
            return ()
        answer = future.result()
        if "r" not in answer:  # the child lost the cell, or the command failed
            return ()
        try:
            return stopped_events(self._authority, _raw_report(answer["r"]))
        except (_Malformed, KeyError, TypeError, ValueError, IndexError) as exc:
            self._child.compromised(f"an abandoned command: {exc}")
            return ()

    def _drop_late(self) -> None:
        late, self._late = self._late, None
        if late is not None:
            self._child.pending.pop(late[0], None)

    def close(self) -> None:
        if self._closed:
            return
        child = self._child
        if self._inflight is not None:
            child.forget(self._inflight, send_cancel=False)  # the close stops it in the child
        self._drop_late()
        if self._lost is None:
            child.send_quietly(f'{{"op":"close","c":{self._key}}}\n'.encode())
        self._mark_closed()

    def _mark_closed(self) -> None:
        if self._closed:
            return
        self._closed = True
        child = self._child
        child.cells.pop(self._key, None)
        engine = child.engine_ref()
        if engine is not None:
            engine._cell_closed(child)

    async def _command(self, op: str, tail: str | bytes, *, few: bool = True) -> StepReport:
        if self._closed:
            raise EngineLost("the cell's engine was closed")
        if self._lost is not None:
            raise EngineLost(self._lost)
        child = self._child
        i, future = child.post(self._head % op, tail)
        self._inflight = i
        try:
            await child.flow()  # a cancellation here abandons the command sent, as below
            poll = child.answer_poll
            sent = time.perf_counter()
            if poll is not None and child.spin_now and few:
                # One turn of the loop (every other task runs), then, with nothing else ready,
                # poll the answer pipe instead of sleeping (engine/spin.py): the worker's write
                # then wakes nobody, and the loop finds the answer at once.
                await asyncio.sleep(0)
                if not future.done() and not spin_mod.loop_busy(asyncio.get_running_loop()):
                    poll.spin(child.spin)
            answer = await future
            if poll is not None:
                child.spin_now = spin_mod.still_quick(time.perf_counter() - sent, child.spin)
        except asyncio.CancelledError:
            # The child abandons the step, which stops its JavaScript; an answer it sent
            # before that is still the cell's (stop() gives its output).
            self._abandon(i, future)
            raise
        finally:
            self._inflight = None
        if self._closed:
            raise EngineLost("the cell's engine was closed")
        try:
            if "lost" in answer:
                self._lost = str(answer["lost"])[:1000]
                self._mark_closed()
                raise EngineLost(f"the worker reported: {self._lost}")
            raw = _raw_report(answer["r"])
        except (_Malformed, KeyError, TypeError, ValueError, IndexError) as exc:
            child.compromised(f"{op}: {exc}")
            raise EngineLost(f"the worker process sent a malformed answer ({exc})") from None
        # Checked here, by the host's record of the cell (a large report on a thread).
        report = await check_report_async(self._authority, self._limits, raw, self._unreported)
        if report.settlement is not None:
            error_text = report.settlement.error_text
            if error_text is not None and error_text == self._rss_error:
                # The allocator keeps what the cell grew: later cells get a fresh worker.
                child.draining = True
            self.close()  # no JavaScript of it runs again (the child may have closed it)
        return report


def _step_tail(inputs: Sequence[StepInput]) -> str:
    """The end of a step command's line: the number of inputs, then, after a tab, the
    in-process engine's step text, which the worker hands to the isolate as it is (no decoding
    and encoding of every value there). JSON text holds a line break only between its tokens,
    where a space means the same: the message stays one line."""
    text = _step_text(inputs)
    if "\n" in text:
        text = text.replace("\n", " ")
    return f',"n":{len(inputs)}}}\t{text}'


def _step_tail_bytes(inputs: Sequence[StepInput]) -> bytes:
    return (_step_tail(inputs) + "\n").encode()


# ------------------------------------------------------------------ validation of answers


def _boot_body(boot: CellBoot) -> str:
    """The wire form of ``boot`` with the stored values embedded as the snapshot's own JSON
    text: a large map is never decoded and encoded again in one GIL-holding call."""
    head = boot_to_json(dataclasses.replace(boot, stored={}))
    del head["stored"]
    stored = boot.stored
    stored_json = stored.json_text() if isinstance(stored, StoredSnapshot) else _dumps(dict(stored))
    return _dumps(head)[:-1] + ',"stored":' + stored_json + "}"


_LIMIT_FIELDS = frozenset(f.name for f in dataclasses.fields(CellLimits))


def _raw_report(data: Any) -> RawReport:
    """An answer's report, as the worker's cell gave it (worker_main.raw_wire). Only its
    envelope is checked here (a bad envelope means the worker itself is compromised); what the
    cell reported is checked by the cell's authority (engine/drain.py)."""
    if not isinstance(data, dict):
        raise _Malformed("a report is not an object")
    raw = data["raw"]
    if raw is not None and not isinstance(raw, str) and raw != 0:
        raise _Malformed("a drain that is not text")
    cpu = data["cpu"]
    if type(cpu) not in (int, float) or not math.isfinite(cpu) or cpu < 0:
        raise _Malformed("bad cpu time")
    reads: bytes | None = None
    encoded = data.get("rd")
    if encoded is not None:
        if not isinstance(encoded, str):
            raise _Malformed("reads that are not base64 text")
        try:
            reads = binascii.a2b_base64(encoded, strict_mode=True)
        except (binascii.Error, ValueError):
            raise _Malformed("reads that are not base64 text") from None
    journal: tuple[tuple[int, str], ...] = ()
    records = data.get("j")
    if records is not None:
        if not isinstance(records, list):
            raise _Malformed("journal records that are not a list")
        for record in records:
            if (
                not isinstance(record, list)
                or len(record) != 2
                or type(record[0]) is not int
                or not isinstance(record[1], str)
            ):
                raise _Malformed("a journal record that is not a kind and a text")
        journal = tuple((kind, text) for kind, text in records)
    limit = data.get("lim")
    if limit is not None and limit not in _LIMIT_FIELDS:
        raise _Malformed(f"unknown limit {str(limit)[:40]!r}")
    ending = data.get("end")
    if ending is not None and not isinstance(ending, str):
        raise _Malformed("an ending that is not text")
    return RawReport(raw, float(cpu), reads, journal, limit, ending)
