"""Python cells on the Monty sandbox (``pydantic-monty`` 1.4.0; docs/python-cells.md).

Each cell checks out one Monty worker (a subprocess of Monty's pool) and runs as two feeds: the
prelude (the helpers, ``tools``), then the cell's source, started with ``feed_start`` so that every
call into the host surfaces as a snapshot the engine answers:

- a helper (``text``, ``print``, ``image``, ``notify``, ``store``, ``yield_control``, ``exit``)
  is answered at once, after the host checked its arguments;
- a tool call gets its call id and is answered with a *future*, so the cell keeps running;
- ``asyncio.sleep`` (a host-driven timer) is answered with a future too;
- when every task of the cell waits on a future, Monty returns a future snapshot: the cell is
  quiescent and its pending futures are exactly the calls and timers it waits for. That is
  the step's report; the next step resumes it with results.

Rules this module keeps:

- every turn with the worker is awaited on the event loop (Monty does its I/O off the loop), and
  cancelling a turn discards its worker, which stops a runaway cell within milliseconds;
- ``max_cpu_seconds`` is the host-measured time of the cell's turns, enforced by cancelling the
  turn in flight at the deadline (Monty's own per-turn limit is a backstop);
- ``max_heap_bytes`` is Monty's ``max_memory`` (its ``MemoryError`` cannot be caught by the cell);
- the host decides every limit and the end of the cell: once it has, it never resumes the cell.

A paused cell (at a frontier) can be dumped to bytes and loaded into a fresh engine, even in
another process (:meth:`PythonCell.dump`, :meth:`PythonEngine.load_cell`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import hashlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from codemode.engine.base import (
    CellBoot,
    Engine,
    EngineCell,
    EngineEvent,
    EngineLost,
    NotifyRequested,
    OutputProduced,
    Settlement,
    StepInput,
    StepReport,
    StoreWritten,
    TimerSet,
    ToolCallRequested,
    ToolResultInput,
    YieldRequested,
    limit_error_text,
)
from codemode.engine.determinism import ReadPlayer, TooManyReads
from codemode.engine.python_env import (
    HelperError,
    build_prelude,
    check_imports,
    finite_json_text,
    image_item_fields,
    python_tool_identifiers,
    tool_input,
)
from codemode.errors import EngineError
from codemode.model import ImageItem, TextItem

__all__ = ["MONTY_VERSION", "PythonCell", "PythonEngine"]

logger = logging.getLogger("codemode.engine.python")

#: The pydantic-monty version this engine's behaviour is tested against.
MONTY_VERSION = "1.4.0"

_T = TypeVar("_T")

# Monty requires a bound on host round trips per checkout; every helper call and tool call is
# one, and `max_tool_calls` / `max_cpu_seconds` are the real bounds.
_MAX_SUSPENSIONS = 2**31 - 1
_SLEEP_FUNCTIONS = frozenset({"asyncio.sleep", "system.async_sleep"})
# What reads the clock in the sandbox (``datetime.now()``, ``date.today()``, the ``time`` module's
# clocks): routed to the host, which answers each through one recorded read (docs/determinism.md).
_CLOCK_FUNCTIONS = frozenset({"datetime.now", "date.today", "time.time"})
# The sandbox's clock and entropy go through the host; its zone is UTC whatever the machine's.
# An unseeded `random` would ask the host for `os.urandom`, which it refuses (and `random` cannot
# be imported anyway).
_OS_POLICY = {
    "sleep": "call_host",
    "datetime": "call_host",
    "timezone": "utc",
    "random_start": "call_host",
}
_DUMP_MAGIC = b"codemode-python-cell/1\n"
_SALVAGE_TIMEOUT = 0.2


def _codemode_host(*args: Any) -> None:  # pragma: no cover - never called: only its name is
    """The one host function of the sandbox; Monty reports calls to it by this name."""


_HOST_NAME = _codemode_host.__name__


class _LimitExceeded(Exception):
    def __init__(self, field_name: str) -> None:
        super().__init__(field_name)
        self.field_name = field_name


class _CellFailed(Exception):
    def __init__(self, error_text: str) -> None:
        super().__init__(error_text)
        self.error_text = error_text


class _Ended(Exception):
    """The host ended the cell (``exit()`` or a limit) while answering a helper."""

    def __init__(self, settlement: Settlement) -> None:
        super().__init__(settlement.error_text)
        self.settlement = settlement


def _monty() -> Any:
    try:
        import pydantic_monty
    except ImportError as exc:  # pragma: no cover - a broken install
        raise EngineError(f"pydantic-monty is not installed: {exc}") from exc
    return pydantic_monty


def error_text_of(exc: Any) -> str:
    """``{ExceptionType}: {message}`` and the cell's frames, innermost first
    (docs/python-cells.md)."""
    head = exc.display("type-msg")
    try:
        frames = list(exc.traceback())
    except Exception:  # pragma: no cover - defensive
        frames = []
    if not frames:
        return str(head)
    cell_file = frames[0].filename  # the outermost frame is the cell's own module
    lines = [str(head)]
    for frame in reversed(frames):
        if frame.filename != cell_file:
            continue  # the prelude's helpers
        where = f"cell.py:{frame.line}:{frame.column}"
        name = frame.function_name
        lines.append(
            f"    at {name} ({where})" if name and name != "<module>" else f"    at {where}"
        )
    return "\n".join(lines)


_STORED_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


class PythonEngine(Engine):
    """Runs each cell as Python in the Monty sandbox: one Monty worker process per live cell.

    ``min_workers`` workers are kept warm (a new cell starts in well under a millisecond);
    at most ``max_workers`` run at once (default: the session's ``max_live_cells``); a cell
    beyond it waits for a worker at admission, at most ``checkout_timeout`` seconds, then its
    create fails with ``EngineError``. The pool
    belongs to the event loop of the first cell and is released by :meth:`aclose`, which also
    stops the engine's cells: give each session its own ``PythonEngine``.
    """

    name = "python"
    language = "python"

    def __init__(
        self,
        *,
        min_workers: int = 1,
        max_workers: int | None = None,
        checkout_timeout: float = 30.0,
        binary_path: str | None = None,
    ) -> None:
        if min_workers < 0 or (max_workers is not None and max_workers < max(min_workers, 1)):
            raise ValueError("need 0 <= min_workers <= max_workers and max_workers >= 1")
        if not checkout_timeout > 0:
            raise ValueError("checkout_timeout must be positive")
        self._min_workers = min_workers
        self._max_workers = max_workers
        self._checkout_timeout = checkout_timeout
        self._binary_path = binary_path
        self._pool: Any = None
        self._pool_loop: asyncio.AbstractEventLoop | None = None
        self._pool_lock: asyncio.Lock | None = None
        self._closed = False
        self._closing: asyncio.Task[None] | None = None
        self._cells: set[PythonCell] = set()

    async def _acquire_pool(self, max_live_cells: int) -> Any:
        loop = asyncio.get_running_loop()
        if self._pool_loop is not None and self._pool_loop is not loop:
            raise EngineError("a PythonEngine serves the event loop of its first cell only")
        if self._pool is not None:
            return self._pool
        if self._pool_lock is None:
            self._pool_lock = asyncio.Lock()
        async with self._pool_lock:
            if self._pool is None:
                monty = _monty()
                pool = monty.AsyncMonty(
                    binary_path=self._binary_path,
                    min_processes=self._min_workers,
                    max_processes=self._max_workers or max(max_live_cells, self._min_workers),
                    checkout_timeout=self._checkout_timeout,
                )
                try:
                    await pool.__aenter__()
                except Exception as exc:
                    raise EngineError(f"could not start the Monty worker pool: {exc}") from exc
                self._pool = pool
                self._pool_loop = loop
        return self._pool

    async def _checkout(self, boot: CellBoot) -> Any:
        if self._closed:
            raise EngineError("the Python engine was closed")
        pool = await self._acquire_pool(boot.limits.max_live_cells)
        limits = boot.limits
        manager = pool.checkout(
            script_name="cell.py",
            limits={
                "max_memory": limits.max_heap_bytes,
                "max_turn_duration_secs": limits.max_cpu_seconds,
                "max_suspensions": _MAX_SUSPENSIONS,
            },
            os_policy=_OS_POLICY,
            print_flush_interval=0,
        )
        try:
            await manager.__aenter__()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise EngineError(f"could not start a Monty worker: {exc}") from exc
        return manager

    async def open_cell(self, boot: CellBoot) -> EngineCell:
        session = await self._checkout(boot)
        cell = PythonCell(self, session, boot)
        self._cells.add(cell)
        return cell

    async def load_cell(self, boot: CellBoot, state: bytes) -> PythonCell:
        """Restore a cell dumped by :meth:`PythonCell.dump` (possibly by another process) at its
        frontier. ``boot`` must be the cell's original boot (checked against the dump). Its
        first command is :meth:`PythonCell.step` with the results of its pending calls and
        timers; :attr:`PythonCell.pending_call_ids` and :attr:`PythonCell.pending_timer_ids`
        say what it waits for. Only load bytes this host produced and stored: Monty does not
        authenticate them."""
        if not state.startswith(_DUMP_MAGIC):
            raise EngineError("not a dumped Python cell")
        rest = state[len(_DUMP_MAGIC) :]
        header, sep, blob = rest.partition(b"\n")
        try:
            host = json.loads(header)
        except ValueError as exc:
            raise EngineError(f"corrupt dumped Python cell: {exc}") from exc
        if not sep or not isinstance(host, dict) or host.get("boot") != _boot_digest(boot):
            raise EngineError("the dumped Python cell does not belong to this boot")
        session = await self._checkout(boot)
        cell = PythonCell(self, session, boot)
        self._cells.add(cell)
        try:
            await cell._restore(host, blob)
        except BaseException:
            cell.close()
            raise
        return cell

    def _forget(self, cell: PythonCell) -> None:
        self._cells.discard(cell)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = self._pool_loop
        if self._pool is None or loop is None or loop.is_closed():
            return
        if threading.get_ident() == getattr(loop, "_thread_id", None):
            self._closing = loop.create_task(self._close_pool())
        else:
            loop.call_soon_threadsafe(self._schedule_close)

    def _schedule_close(self) -> None:
        if self._pool_loop is not None and self._closing is None:
            self._closing = self._pool_loop.create_task(self._close_pool())

    async def _close_pool(self) -> None:
        # Sessions of closed cells are returned first, so the pool's exit never waits on them.
        for cell in list(self._cells):
            cell.close()
        for cell in list(self._cells):
            await cell.released()
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await pool.__aexit__(None, None, None)
            except Exception:  # pragma: no cover - native teardown failure
                logger.exception("closing the Monty pool failed")
            # pydantic-monty 1.4.0 finishes its teardown on native threads after `__aexit__`
            # returns; an interpreter that exits meanwhile aborted (seen in about one run in
            # four). Its workers are our children: wait until they are gone, then a little.
            await _wait_workers_gone(self._binary_name())

    def _binary_name(self) -> str:
        return "monty" if self._binary_path is None else str(self._binary_path).rsplit("/", 1)[-1]

    async def aclose(self) -> None:
        self.close()
        if self._closing is not None:
            await asyncio.shield(self._closing)


def _monty_children(binary_name: str) -> int:
    """Child processes of this process running the Monty worker binary (Linux; 0 elsewhere)."""
    me = str(os.getpid())
    count = 0
    try:
        entries = os.listdir("/proc")
    except OSError:  # pragma: no cover - not Linux
        return 0
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
            if fields[1].decode() != me or fields[0] == b"Z":
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv0 = fh.read().split(b"\0", 1)[0].decode(errors="replace")
        except (OSError, IndexError):
            continue
        if argv0.rsplit("/", 1)[-1] == binary_name:
            count += 1
    return count


def _kill_worker(pid: int | None, binary_name: str) -> None:
    """SIGKILL a cell's worker, if ``pid`` is still a child of this process running Monty (a pid
    is never reused while its zombie is not reaped, but a reaped one may be)."""
    if pid is None:
        return
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv0 = fh.read().split(b"\0", 1)[0].decode(errors="replace")
        if int(fields[1]) != os.getpid() or argv0.rsplit("/", 1)[-1] != binary_name:
            return
        os.kill(pid, signal.SIGKILL)
    except (OSError, IndexError, ValueError):
        return


async def _wait_workers_gone(binary_name: str) -> None:
    deadline = time.monotonic() + 0.5
    while _monty_children(binary_name) and time.monotonic() < deadline:  # noqa: ASYNC110 - polls /proc
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.05)


def _boot_digest(boot: CellBoot) -> str:
    h = hashlib.sha256()
    h.update(boot.source.encode("utf-8", "surrogatepass"))
    for tool in boot.tools:
        h.update(
            b"\0" + tool.name.encode("utf-8", "surrogatepass") + b"\0" + str(tool.kind).encode()
        )
    return h.hexdigest()


def _call_number(call_id: str) -> tuple[int, str]:
    _, _, n = call_id.partition("-")
    return (int(n), call_id) if n.isdigit() else (0, call_id)


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


class PythonCell(EngineCell):
    """One Python cell: a checked-out Monty session driven snapshot by snapshot."""

    def __init__(self, engine: PythonEngine, session: Any, boot: CellBoot) -> None:
        self._engine = engine
        self._session = session
        self._boot = boot
        self._limits = boot.limits
        self._tools = tuple(boot.tools)
        self._idents = python_tool_identifiers(t.name for t in self._tools)
        self._closed = False
        self._released = asyncio.Event()
        self._release_task: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()
        self._inflight: asyncio.Future[Any] | None = None
        self._out_of_cpu = False
        self._cpu_used = 0.0
        self._snapshot: Any = None  # the future snapshot of the current quiescent point
        self._events: list[EngineEvent] = []
        # Host-side bookkeeping of the cell (dumped with it).
        self._calls_issued = 0
        self._output_bytes = 0
        self._tool_of_future: dict[int, str] = {}  # Monty future id -> "tool-N"
        self._future_of_tool: dict[str, int] = {}
        self._timers: set[int] = set()  # Monty future ids of sleeps
        self._env = ReadPlayer(boot.replay_reads)  # the cell's clock reads (docs/determinism.md)
        pid = session.worker_pid  # no exchange is in flight yet, so Monty knows it
        self._pid: int | None = pid if isinstance(pid, int) else None
        self._pidfd: int | None = None
        self._on_loss: Callable[[str], None] | None = None

    # ------------------------------------------------------------------ EngineCell

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending_call_ids(self) -> tuple[str, ...]:
        """The calls the cell waits for at its current frontier, sorted by number."""
        if self._snapshot is None:
            return ()
        return tuple(sorted(self._tool_of_future.values(), key=_call_number))

    @property
    def worker_pid(self) -> int | None:
        """The process id of the cell's Monty worker, when no exchange with it is in flight
        (diagnostics and tests)."""
        if self._closed:
            return None
        pid = self._session.worker_pid
        return pid if isinstance(pid, int) else None

    def watch_loss(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(reason)`` on the event loop if the cell's worker process dies while no
        exchange with it is in flight (it waited for a tool, or was paused); a death during an
        exchange ends that command with :class:`EngineLost` instead. Linux (pidfd); elsewhere a
        loss is found by the next command."""
        self._on_loss = callback
        if self._pidfd is not None or self._pid is None or self._closed:
            return
        try:
            fd = os.pidfd_open(self._pid)
            self._loop.add_reader(fd, self._worker_exited)
        except (AttributeError, OSError, NotImplementedError, ValueError):
            return
        self._pidfd = fd

    def _worker_exited(self) -> None:
        self._unwatch()
        if self._closed or (self._inflight is not None and not self._inflight.done()):
            return
        callback = self._on_loss
        if callback is not None:
            callback("the cell's Monty worker process ended")

    def _unwatch(self) -> None:
        fd, self._pidfd = self._pidfd, None
        if fd is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(fd)
            with contextlib.suppress(OSError):
                os.close(fd)

    @property
    def pending_timer_ids(self) -> tuple[int, ...]:
        """The timers (``asyncio.sleep``) the cell waits for; fire them with ``TimerFired``."""
        return tuple(sorted(self._timers))

    async def run(self) -> StepReport:
        rejected = check_imports(self._boot.source)
        if rejected is not None:
            module, line = rejected
            self.close()
            text = f"ImportError: Unsupported import in exec: {module}\n    at cell.py:{line}"
            return StepReport((), (), Settlement(text))
        stored = {}
        for key, value in self._boot.stored.items():
            stored[str(key)] = json.dumps(value, ensure_ascii=False)
        all_tools = tuple(
            {"name": ident, "description": t.description}
            for t, ident in zip(self._tools, self._idents, strict=True)
        )
        prelude = build_prelude(self._idents)
        inputs = {"_cm": _codemode_host, "_cm_stored": stored, "ALL_TOOLS": all_tools}

        async def start() -> Any:
            await self._session.feed_run(prelude, inputs=inputs, print_callback=_drop_print)
            return await self._session.feed_start(self._boot.source, print_callback=_drop_print)

        return await self._command(start)

    async def step(self, inputs: Sequence[StepInput]) -> StepReport:
        results: dict[int, Any] = {}
        for item in inputs:
            if isinstance(item, ToolResultInput):
                future_id = self._future_of_tool.get(item.call_id)
                if future_id is None:
                    continue
                if item.ok:
                    try:
                        value = json.loads(item.value_json)
                    except ValueError:
                        results[future_id] = {
                            "exception": RuntimeError("tool returned a value that is not JSON")
                        }
                        continue
                    results[future_id] = {"return_value": value}
                else:
                    results[future_id] = {"exception": RuntimeError(item.message)}
            elif item.timer_id in self._timers:
                results[item.timer_id] = {"return_value": None}
        snapshot = self._snapshot
        if snapshot is None or not results:
            return StepReport((), self._pending_ids(), None)
        # Every future the host has not answered yet is pending in Monty: no need to ask it.
        applicable = {
            k: v for k, v in results.items() if k in self._tool_of_future or k in self._timers
        }
        for future_id in applicable:
            self._forget_future(future_id)
        if not applicable:
            return StepReport((), self._pending_ids(), None)
        self._snapshot = None
        return await self._command(lambda: snapshot.resume(applicable))

    async def stop(self) -> tuple[EngineEvent, ...]:
        inflight = self._inflight
        if inflight is not None and not inflight.done():
            inflight.cancel()
            await asyncio.wait({inflight}, timeout=_SALVAGE_TIMEOUT)
        events = tuple(self._events)
        self._events = []
        self.close()
        return events

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._snapshot = None
        on_loop = threading.get_ident() == getattr(self._loop, "_thread_id", None)
        if on_loop:
            self._unwatch()
        inflight = self._inflight
        if inflight is not None and not inflight.done():
            # The worker may be spinning: kill it now (safe from any thread), and abandon the
            # turn (which would discard the worker too, but only once the loop runs again).
            _kill_worker(self._pid, self._engine._binary_name())
            if on_loop:
                inflight.cancel()
        try:
            if on_loop:
                self._release_task = self._loop.create_task(self._release())
            else:
                self._loop.call_soon_threadsafe(self._schedule_release)
        except RuntimeError:  # the loop is closed: nobody can return the worker to its pool
            _kill_worker(self._pid, self._engine._binary_name())
            self._released.set()

    def _schedule_release(self) -> None:
        if self._release_task is None:
            self._release_task = self._loop.create_task(self._release())

    async def _release(self) -> None:
        try:
            inflight = self._inflight
            if inflight is not None and not inflight.done():
                await asyncio.wait({inflight}, timeout=1.0)
            await self._session.__aexit__(None, None, None)
        except Exception:
            logger.debug(
                "releasing the Monty session of %s failed", self._boot.cell_id, exc_info=True
            )
        finally:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._released.set()
            self._engine._forget(self)

    async def released(self) -> None:
        """Wait until the cell's worker went back to the pool (after :meth:`close`)."""
        await self._released.wait()

    # ------------------------------------------------------------------ dump and load

    async def dump(self) -> bytes:
        """The paused cell as bytes: its Monty snapshot and the host's bookkeeping. Only at a
        frontier (after a report without settlement); the cell keeps running here."""
        if self._closed or self._snapshot is None:
            raise EngineError("only a Python cell at a frontier can be dumped")
        snapshot = self._snapshot
        blob: bytes = await asyncio.to_thread(snapshot.dump)
        host = {
            "boot": _boot_digest(self._boot),
            "calls_issued": self._calls_issued,
            "output_bytes": self._output_bytes,
            "cpu_used": self._cpu_used,
            "tool_of_future": {str(k): v for k, v in self._tool_of_future.items()},
            "timers": sorted(self._timers),
            "replay_at": list(self._env.position),
        }
        return _DUMP_MAGIC + json.dumps(host, separators=(",", ":")).encode() + b"\n" + blob

    async def _restore(self, host: dict[str, Any], blob: bytes) -> None:
        try:
            self._calls_issued = int(host["calls_issued"])
            self._output_bytes = int(host["output_bytes"])
            self._cpu_used = float(host["cpu_used"])
            self._tool_of_future = {int(k): str(v) for k, v in host["tool_of_future"].items()}
            self._future_of_tool = {v: k for k, v in self._tool_of_future.items()}
            self._timers = {int(t) for t in host["timers"]}
            if "replay_at" in host:
                at, left = host["replay_at"]
                self._env.seek((int(at), int(left)))
        except (KeyError, TypeError, ValueError) as exc:
            raise EngineError(f"corrupt dumped Python cell: {exc}") from exc
        try:
            snapshot = await self._session.load_snapshot(blob, print_callback=_drop_print)
        except Exception as exc:
            raise EngineError(f"could not load the dumped Python cell: {exc}") from exc
        if type(snapshot).__name__ != "AsyncFutureSnapshot":
            raise EngineError("the dumped Python cell was not at a frontier")
        self._snapshot = snapshot

    # ------------------------------------------------------------------ internals

    def _pending_ids(self) -> tuple[str, ...]:
        """The unsettled calls at a quiescent point; a continuing cell never takes a frontier,
        so it skips the list (docs/sessions.md)."""
        if self._snapshot is None or not self._boot.pausable:
            return ()
        return tuple(sorted(self._tool_of_future.values(), key=_call_number))

    def _forget_future(self, future_id: int) -> None:
        call_id = self._tool_of_future.pop(future_id, None)
        if call_id is not None:
            self._future_of_tool.pop(call_id, None)
        self._timers.discard(future_id)

    async def _command(self, start: Callable[[], Awaitable[Any]]) -> StepReport:
        """Run one turn and answer snapshots until the cell is quiescent or settled."""
        self._events = []
        cpu_before = self._cpu_used
        settlement: Settlement | None = None
        try:
            snapshot = await self._turn(start)
            settlement = await self._drive(snapshot)
        except _LimitExceeded as exc:
            settlement = Settlement(limit_error_text(self._limits, exc.field_name))
        except _Ended as exc:
            settlement = exc.settlement
        except _CellFailed as exc:
            settlement = Settlement(exc.error_text)
        events = tuple(self._events)
        self._events = []
        reads = self._env.take()
        if settlement is not None:
            self.close()  # after completion no code of the cell runs (docs/cells.md)
            return StepReport(events, (), settlement, self._cpu_used - cpu_before, reads)
        return StepReport(events, self._pending_ids(), None, self._cpu_used - cpu_before, reads)

    async def _drive(self, snapshot: Any) -> Settlement | None:
        """Answer every call into the host until Monty reports quiescence or completion."""
        monty = _monty()
        while True:
            if isinstance(snapshot, monty.MontyComplete):
                return Settlement(None)
            if isinstance(snapshot, monty.AsyncFutureSnapshot):
                self._snapshot = snapshot
                return None
            if isinstance(snapshot, monty.AsyncFunctionSnapshot):
                answer = self._answer(snapshot)
                current = snapshot
                if answer is _NOT_HANDLED:
                    snapshot = await self._turn(current.resume_not_handled)
                else:
                    snapshot = await self._turn(functools.partial(current.resume, answer))
                continue
            if isinstance(snapshot, monty.AsyncNameLookupSnapshot):
                # Leaving the name unbound raises NameError in the cell.
                snapshot = await self._turn(snapshot.resume)
                continue
            raise EngineLost(f"unexpected Monty snapshot {type(snapshot).__name__}")

    def _answer(self, snapshot: Any) -> Any:
        """The answer to one call into the host: a value, an exception, a future."""
        if snapshot.is_os_function:
            if snapshot.function_name in _SLEEP_FUNCTIONS:
                return self._sleep(snapshot)
            if snapshot.function_name in _CLOCK_FUNCTIONS:
                return self._clock(snapshot.function_name, snapshot.args)
            return _NOT_HANDLED  # no filesystem, network or process: Monty's own error
        if snapshot.function_name != _HOST_NAME:
            return {"exception": NameError(f"name {snapshot.function_name!r} is not defined")}
        args = snapshot.args
        if not args or not isinstance(args[0], str):
            return {"exception": TypeError("invalid call into the host")}
        try:
            return self._helper(args[0], args[1:], snapshot.call_id)
        except HelperError as exc:
            return {"exception": TypeError(str(exc))}

    def _clock(self, name: str, args: Any) -> Any:
        """Answer one read of the clock: the recorded value on a replay, else the host's."""
        try:
            ms = self._env.read("clock", _live_clock_ms)
        except TooManyReads as exc:
            return {"exception": RuntimeError(str(exc))}
        if name == "time.time":
            return {"return_value": ms / 1000.0}
        tz = args[0] if args else None
        if tz is not None and not isinstance(tz, datetime.tzinfo):
            return {"exception": TypeError("tzinfo argument must be None or of a tzinfo subclass")}
        try:
            moment = datetime.datetime.fromtimestamp(ms / 1000.0, datetime.UTC)
            if name == "date.today":
                return {"return_value": moment.date()}
            if tz is None:  # naive: the wall time of the sandbox's zone, UTC
                return {"return_value": moment.replace(tzinfo=None)}
            return {"return_value": moment.astimezone(tz)}
        except (OverflowError, OSError, ValueError) as exc:
            return {"exception": ValueError(str(exc))}

    def _sleep(self, snapshot: Any) -> Any:
        args = snapshot.args
        delay = args[0] if args else 0
        if isinstance(delay, bool) or not isinstance(delay, (int, float)):
            return {"exception": TypeError("asyncio.sleep expects a number of seconds")}
        delay = float(delay)
        if not delay > 0 or delay == float("inf"):
            delay = 0.0 if not delay > 0 else 1e9
        timer_id = int(snapshot.call_id)
        self._timers.add(timer_id)
        self._events.append(TimerSet(timer_id, delay))
        return {"future": ...}

    def _helper(self, op: str, args: tuple[Any, ...], future_id: int) -> Any:
        none = {"return_value": None}
        if op == "text":
            (value,) = _arity(args, 1)
            self._output(TextItem(_as_text(value)))
            return none
        if op == "notify":
            (value,) = _arity(args, 1)
            text = _as_text(value)
            if not text.strip():
                raise HelperError("notify expects non-empty text")
            self._count_output(text)
            self._events.append(NotifyRequested(text))
            return none
        if op == "image":
            value, detail = _arity(args, 2)
            url, chosen = image_item_fields(value, detail)
            self._output(ImageItem(url, chosen))
            return none
        if op == "store":
            key, encoded = _arity(args, 2)
            if not isinstance(key, str) or not isinstance(encoded, str):
                raise HelperError("store key must be a string")
            try:
                value = finite_json_text(encoded)
            except ValueError:
                raise HelperError(
                    f"Unable to store {json.dumps(key)}. "
                    "Only plain serializable objects can be stored."
                ) from None
            # The session keeps stored values as canonical JSON text (NaN already became null).
            self._events.append(StoreWritten(key, _STORED_JSON.encode(value)))
            return none
        if op == "yield":
            if not self._boot.pausable:
                self._events.append(YieldRequested())
            return none
        if op == "exit":
            raise _Ended(Settlement(None))
        if op == "call":
            index, call_args, call_kwargs = _arity(args, 3)
            if (
                isinstance(index, bool)
                or not isinstance(index, int)
                or not 0 <= index < len(self._tools)
            ):
                raise HelperError("unknown tool")
            value = tool_input(self._tools[index], call_args, call_kwargs)
            if self._calls_issued + 1 > self._limits.max_tool_calls:
                raise _LimitExceeded("max_tool_calls")
            self._calls_issued += 1
            call_id = f"tool-{self._calls_issued}"
            self._tool_of_future[int(future_id)] = call_id
            self._future_of_tool[call_id] = int(future_id)
            # Every call is reported at issue; the cell layer holds those beyond
            # max_parallel_tool_calls until a slot frees (docs/safety.md).
            self._events.append(ToolCallRequested(call_id, index, value))
            return {"future": ...}
        raise HelperError(f"unknown helper {op!r}")

    def _count_output(self, text: str) -> None:
        n = _utf8_len(text)
        if self._output_bytes + n > self._limits.max_output_bytes:
            raise _LimitExceeded("max_output_bytes")
        self._output_bytes += n

    def _output(self, item: TextItem | ImageItem) -> None:
        self._count_output(item.text if isinstance(item, TextItem) else item.image_url)
        self._events.append(OutputProduced(item))

    async def _turn(self, make: Callable[[], Awaitable[_T]]) -> _T:
        """One exchange with the worker, within the cell's remaining CPU budget. Cancelling it
        (termination, the deadline) discards the worker, which stops the cell's Python."""
        if self._closed:
            raise EngineLost("the cell's engine was closed")
        remaining = max(self._limits.max_cpu_seconds - self._cpu_used, 0.0)
        future: asyncio.Future[_T] = asyncio.ensure_future(make())
        self._inflight = future
        self._out_of_cpu = False
        deadline = self._loop.call_later(remaining, self._cpu_deadline, future)
        started = time.perf_counter()
        monty = _monty()
        try:
            return await future
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            if self._out_of_cpu:
                raise _LimitExceeded("max_cpu_seconds") from None
            raise EngineLost("the cell's engine was closed") from None
        except (monty.MontyRuntimeError, monty.MontySyntaxError) as exc:
            raise self._failure(exc) from None
        except monty.MontyCrashedError as exc:
            if self._out_of_cpu or getattr(exc, "timed_out", False):
                raise _LimitExceeded("max_cpu_seconds") from None
            raise EngineLost(f"the Monty worker ended: {exc}") from exc
        except monty.MontyError as exc:
            raise EngineLost(f"{type(exc).__name__}: {exc}") from exc
        finally:
            deadline.cancel()
            if future.done():
                self._inflight = None
            self._cpu_used += time.perf_counter() - started

    def _failure(self, exc: Any) -> Exception:
        try:
            head = str(exc.display("type-msg"))
        except Exception:  # pragma: no cover - defensive
            head = str(exc)
        if head.startswith("MemoryError: memory limit exceeded"):
            return _LimitExceeded("max_heap_bytes")
        if head.startswith("TimeoutError: ") and "time limit exceeded" in head:
            return _LimitExceeded("max_cpu_seconds")
        return _CellFailed(error_text_of(exc))

    def _cpu_deadline(self, future: asyncio.Future[Any]) -> None:
        self._out_of_cpu = True
        future.cancel()


_NOT_HANDLED = object()


def _live_clock_ms() -> float:
    return time.time() * 1000.0


def _drop_print(stream: str, text: str) -> None:
    """The builtin ``print`` is replaced by the prelude's; nothing reaches the host's stdout."""


def _arity(args: tuple[Any, ...], n: int) -> tuple[Any, ...]:
    if len(args) != n:
        raise HelperError("invalid call into the host")
    return args


def _as_text(value: Any) -> str:
    if not isinstance(value, str):
        raise HelperError("invalid call into the host")
    return value
