"""The default engine: one V8 isolate per cell, through mini-racer (docs/cells.md; ENGINE-NOTES).

Rules this module keeps (each learned the hard way, see ENGINE-NOTES.md):

- every context gets a hard heap limit, so V8's own out-of-memory handling never aborts the process;
- only strings cross the boundary, as call arguments (data, never spliced into source); Python
  holds only the prelude's bridge functions, which no global names (docs/safety.md);
- every host-to-JavaScript step of a cell is an abandonable mini-racer task awaited on the event
  loop, so a busy isolate never blocks the loop, and a runaway step can be abandoned (only the
  prelude, the host's own code, runs through synchronous calls, on the thread creating the
  isolate, before any cell has it);
- every report the cell sends is checked by the host (:class:`CellAuthority`), and a heap-limit
  hit is detected after every step, continuations included;
- a runaway cell is stopped by cancelling its eval (and, at the end, freeing its context), which
  terminates execution on the isolate's own thread.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import functools
import importlib.resources
import json
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from codemode.cell.authority import CellAuthority
from codemode.cell.stored import StoredSnapshot
from codemode.engine import spin as spin_mod
from codemode.engine import v8native
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
from codemode.engine.determinism import pin_v8_zone_and_locale, read_runs, replay_wire
from codemode.engine.drain import (
    RawReport,
    check_report,
    check_report_async,
    offloaded,
    stopped_events,
    unreported_events,
)
from codemode.engine.jsscan import scan_source
from codemode.engine.source import (
    prepare_source_async,
    syntax_error_from,
)
from codemode.engine.v8guard import SYNC_CALLBACK_ID, drop_answers_after_loop_close, to_loop
from codemode.errors import EngineError
from codemode.identifiers import tool_identifiers

__all__ = ["V8Engine"]

logger = logging.getLogger("codemode.engine.v8")

PRELUDE = importlib.resources.files("codemode.engine").joinpath("prelude.js").read_text("utf-8")

# V8 flags are process-wide and fixed at the first initialisation. `--expose-gc` lets the prelude
# reclaim dropped ArrayBuffers before it declares the external-memory budget exhausted; the prelude
# hides `gc` from cells. If the embedding application initialised mini-racer first, the prelude
# falls back to sweeping without a forced GC.
V8_FLAGS = ("--single-threaded", "--expose-gc")

# Reading the outbox of a cell stopped for a limit must not itself hang.
_SALVAGE_TIMEOUT = 0.2
# How long a bridge call terminated for outliving its time is still awaited: it may have
# finished just before (see _Bridge.settle_within).
_STOP_GRACE = 0.1


# mini-racer's exception types, bound by _init_v8 (importing mini-racer is deferred until an
# engine is made, so `import codemode` stays light).
_JSEvalException: Any = None
_JSOOMException: Any = None


_init_lock = threading.Lock()
_v8_ready = False


def _init_v8() -> None:
    """Initialise V8 with :data:`V8_FLAGS`, once per process. If the application initialised
    mini-racer first, its flags stay (V8 fixes them at the first initialisation) and a warning
    says so: without ``--expose-gc`` a cell's dropped ArrayBuffers are counted against
    ``max_heap_bytes`` until V8 collects them on its own (docs/safety.md)."""
    global _JSEvalException, _JSOOMException, _v8_ready
    from py_mini_racer import JSEvalException, JSOOMException, _dll

    _JSEvalException, _JSOOMException = JSEvalException, JSOOMException
    with _init_lock:
        if not _v8_ready:
            try:
                _dll.init_mini_racer(flags=V8_FLAGS, ignore_duplicate_init=False)
            except _dll.LibAlreadyInitializedError:
                logger.warning(
                    "mini-racer was initialised before codemode: cells run under the "
                    "application's V8 flags, not %s; without --expose-gc, typed arrays a cell "
                    "drops count against max_heap_bytes until V8 collects them on its own "
                    "(docs/safety.md)",
                    " ".join(V8_FLAGS),
                )
            _v8_ready = True
    pin_v8_zone_and_locale(_NATIVE_LOCK)  # once per process (docs/determinism.md)


class _Inbox:
    """The host's side of the prelude's inbox: a step's inputs are written into the isolate's
    memory instead of being copied in as a string argument, which costs a blocking round trip
    to the isolate's thread. Only written between two bridge calls, while the cell's
    JavaScript is quiescent (it runs only inside the host's calls)."""

    __slots__ = ("length", "units")

    def __init__(self, length: memoryview, units: memoryview) -> None:
        self.length = length
        self.units = units

    @classmethod
    def of(cls, journal: memoryview) -> _Inbox | None:
        base = 2 * _JOURNAL_UNITS
        if len(journal) < base + 4 + 2 * _INBOX_UNITS:
            return None
        return cls(
            journal[base : base + 4].cast("I"), journal[base + 4 : base + 4 + 2 * _INBOX_UNITS]
        )

    def put(self, text: str) -> bool:
        """Write ``text`` into the inbox; False when it does not fit (then it goes as an
        argument)."""
        if len(text) > _INBOX_UNITS:
            return False
        data = text.encode("utf-16-le", "surrogatepass")
        if len(data) > 2 * _INBOX_UNITS:
            return False
        self.units[: len(data)] = data
        self.length[0] = len(data) // 2
        return True


class _LimitExceeded(Exception):
    def __init__(self, field_name: str) -> None:
        super().__init__(field_name)
        self.field_name = field_name


_dumps = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode


# mini-racer context creation must never run concurrently: creating the process's first
# isolates on several threads at once aborted the whole process inside V8
# ("FATAL partition_address_space.cc: Check failed: !IsConfigurablePoolInitialized()"), seen
# when the pool filled on worker threads. Creation takes a few milliseconds, so one lock costs
# little. Teardown takes its own lock (see _exit_context).
_NATIVE_LOCK = threading.Lock()


def _enter_context(manager: Any) -> Any:
    with _NATIVE_LOCK:
        context = manager.__enter__()
    drop_answers_after_loop_close(context)  # before the context runs anything
    return context


class _Bridge:
    """The host's handles on the prelude's bridge functions (docs/safety.md).

    The prelude returns its bridge as the completion value of its script, so no global names
    it: only these handles reach it, and a cell can neither call nor re-boot it. Every call
    passes its data as string arguments (never spliced into source: no compilation, nothing in
    the compilation cache) and is an abandonable mini-racer task, like ``eval_cancelable``.
    """

    def __init__(self, context: Any, bridge: Any, arrays: Any, answers: Any) -> None:
        self.context = context
        self.bridge = bridge
        self.start = bridge["start"]
        self.step = bridge["step"]
        self.drain = bridge["drain"]
        self.hold = bridge["hold"]
        self.journal = bridge["journal"]
        self.compiles = bridge["compiles"]
        # Reused argument arrays, one per arity (setting a slot is one quick native call).
        self.argv: tuple[Any, ...] = (arrays[0], arrays[1], None, arrays[2])
        # The answers of the tasks posted to the isolate: NativeAnswers (v8native.py) or,
        # the portable way, _QuietResults; both have the same methods.
        self.quiet: Any = answers
        # Results already converted, freed once the next step is submitted: the loop's thread
        # frees them while the isolate's thread runs that step, not between two steps.
        self.garbage: list[Any] = []
        self._raw_ctx = context._ctx
        self._raw_this = bridge.raw_handle.raw
        self._raws: dict[int, tuple[Any, Any]] = {}  # id(handle's owner) -> (owner, raw)
        self.native_call, self.native_cancel = (
            context._dll.mr_call_function,
            context._dll.mr_cancel_task,
        )

    def post(self, fn: Any, argv: Any, callback_id: int) -> int:
        """Submit ``fn(...argv)`` to the isolate's thread, its answer to ``callback_id``;
        returns the native task's id. mini-racer 0.14.1 internals (pinned): ``mr_call_function``
        on the raw handles (each looked up once per bridge: a function or an argument array
        lives as long as the bridge that holds it)."""
        raws = self._raws
        fn_raw = raws.get(id(fn))
        if fn_raw is None:
            fn_raw = raws[id(fn)] = (fn, fn.raw_handle.raw)
        argv_raw = raws.get(id(argv))
        if argv_raw is None:
            argv_raw = raws[id(argv)] = (argv, argv.raw_handle.raw)
        return int(
            self.native_call(self._raw_ctx, fn_raw[1], self._raw_this, argv_raw[1], callback_id)
        )

    def free_garbage(self) -> None:
        """Free the results put aside (see ``garbage``); a freed isolate ignores it."""
        free = self.context._free  # looked up now: a no-op once the isolate is being freed
        for raw in self.garbage:  # (only the loop's thread adds to it)
            free(raw)
        self.garbage.clear()  # in place: the calls in flight hold the list

    async def arguments(self, args: tuple[str, ...]) -> Any:
        """The reused argument array holding ``args`` (each set with a blocking native call;
        a large one from a worker thread)."""
        argv = self.argv[len(args)]
        for i, arg in enumerate(args):
            if len(arg) > _THREAD_ARG_CHARS:
                # Copying a large string into the isolate blocks until V8 made it: off the loop.
                await asyncio.to_thread(argv.__setitem__, i, arg)
            else:
                argv[i] = arg
        return argv

    def call_sync(self, fn: Any, *args: str) -> Any:
        """As :meth:`call`, waiting on the calling thread, which must not be the event loop's
        (see :func:`_run_sync`); for short arguments only (each copied in with a blocking
        native call)."""
        argv = self.argv[len(args)]
        for i, arg in enumerate(args):
            argv[i] = arg
        return self.quiet.run_sync(
            self.native_call,
            fn.raw_handle.raw,
            self.bridge.raw_handle.raw,
            argv.raw_handle.raw,
            timeout=_SYNC_TIMEOUT,
        )

    async def call_within(self, fn: Any, seconds: float) -> Any:
        """Call ``fn()`` and take its answer as :meth:`settle_within` does; the answer is freed
        unread when it comes after this returned."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        ctx = self.context
        answers = self.quiet
        callback_id = answers.loud_id(functools.partial(_settle_raw, ctx, future))
        task_id = self.post(fn, self.argv[0], callback_id)
        try:
            return await self.settle_within(future, task_id, seconds)
        finally:
            if answers.pending(callback_id):
                answers.forget(callback_id)
                self.native_cancel(ctx._ctx, task_id)

    async def settle_within(
        self, future: asyncio.Future[Any], task_id: int | None, seconds: float
    ) -> Any:
        """The result of the bridge call ``future`` waits for, if it comes within ``seconds``.
        Past that the call (native task ``task_id``) is terminated, and its answer still awaited
        for up to ``_STOP_GRACE``: the call may have finished just before, and then its result
        counts (a drain's report is then the only record of what it emptied). Raises the
        call's error, or ``TimeoutError`` when no answer came. ``future`` is never cancelled
        here: its callback may still settle it."""
        done, _ = await asyncio.wait((future,), timeout=seconds)
        if not done:
            if task_id is not None:
                self.native_cancel(self.context._ctx, task_id)
            done, _ = await asyncio.wait((future,), timeout=_STOP_GRACE)
            if not done:
                raise TimeoutError("the isolate did not answer")
        return future.result()


class _QuietResults:
    """Where the answers of the bridge calls the engine submits go, decided on the isolate's
    thread (mini-racer 0.14.1 internals, pinned: every task's result reaches Python through
    ``Context.handle_callback_from_v8``, on the isolate's thread with the GIL held).

    - *quiet* results (a step: the drain behind it wakes the loop) are only kept, raw, until
      :meth:`take` asks for them;
    - a result a blocked thread waits for goes to it (``handoffs``, see :class:`_Handoff`);
    - a result with a *direct* callback goes, raw, to that callback on the event loop (one
      ``call_soon_threadsafe``, none of mini-racer's per-answer wrapping and look-up); the
      callback converts and frees it (:func:`_to_python`);
    - anything else goes mini-racer's way (dropped once the loop closed, ``v8guard``).

    A raw result is never freed on the isolate's thread (freeing a value there could wait for
    the thread itself): whoever takes it frees it."""

    def __init__(self, context: Any) -> None:
        self._expected: set[int] = set()
        self._results: dict[int, Any] = {}
        self.handoffs: dict[int, _Handoff] = {}  # results a blocked thread takes (_Handoff)
        self.direct: dict[int, Callable[[Any], None]] = {}  # raw result -> on the event loop
        self._context = context
        wake = context.handle_callback_from_v8
        loop = context.event_loop
        call_soon = loop.call_soon_threadsafe
        expected, results, handoffs, direct = (
            self._expected,
            self._results,
            self.handoffs,
            self.direct,
        )

        def handle_callback_from_v8(callback_id: int, raw: Any) -> None:
            if callback_id in expected:
                results[callback_id] = raw
            elif handoffs and (h := handoffs.get(callback_id)) is not None and h.offer(raw):
                pass  # the thread blocked for it takes it (and frees it, on its own thread)
            elif (callback := direct.pop(callback_id, None)) is not None:
                to_loop(loop, call_soon, callback, raw)
            else:  # dropped once the loop closed (drop_answers_after_loop_close)
                wake(callback_id, raw)

        object.__setattr__(context, "handle_callback_from_v8", handle_callback_from_v8)

    def quiet_id(self) -> int:
        """An id whose answer is kept until :meth:`take` asks for it."""
        callback_id: int = next(self._context._next_async_callback_id)
        self._expected.add(callback_id)
        return callback_id

    def loud_id(self, callback: Callable[[Any], None], *, handoff: bool = False) -> int:
        """An id whose answer goes to ``callback`` on the event loop; with ``handoff``, a
        thread may take it first (:meth:`wait`). Registered before the task is posted, so its
        answer cannot pass it by."""
        callback_id: int = next(self._context._next_async_callback_id)
        self.direct[callback_id] = callback
        if handoff:
            self.handoffs[callback_id] = _Handoff()
        return callback_id

    def forget(self, callback_id: int) -> None:
        """Drop a loud id's callback: its answer, when it comes, goes mini-racer's way."""
        self.direct.pop(callback_id, None)

    def pending(self, callback_id: int) -> bool:
        """Whether a loud id's answer has not been handed to its callback yet."""
        return callback_id in self.direct

    def wait(self, callback_id: int, timeout: float) -> bool:
        """Block this thread up to ``timeout`` seconds for the answer of a loud id made with
        ``handoff``; True if it came and went to its callback (on this thread), False if it
        will come through the loop (never both, never neither)."""
        handoff = self.handoffs.get(callback_id)
        if handoff is None:
            return False
        try:
            raw = handoff.wait(timeout)
        finally:
            self.handoffs.pop(callback_id, None)
        if raw is None:
            return False
        callback = self.direct.pop(callback_id, None)
        if callback is not None:
            callback(raw)  # frees it, on this thread
        else:
            self._context._free(raw)
        return True

    def run_sync(self, method: Any, *args: Any, timeout: float) -> Any:
        """See :func:`_run_sync`."""
        del timeout
        return _run_sync(self._context, method, *args)

    def spin(self, callback_id: int, seconds: float) -> bool:
        """Never: the portable way's answers need the GIL on the isolate's thread, so the
        loop's thread cannot poll for them (see :meth:`NativeAnswers.spin`)."""
        del callback_id, seconds
        return False

    def after_free(self) -> None:
        """Nothing to give back once the context is freed."""

    def take(self, callback_id: int) -> Any:
        """The raw result (None if it has not come), which the caller frees
        (:func:`_to_python` or :meth:`discard`); the id is forgotten."""
        self._expected.discard(callback_id)
        return self._results.pop(callback_id, None)

    def discard(self, callback_id: int) -> None:
        """Forget a quiet call, freeing its result if it came."""
        raw = self.take(callback_id)
        if raw is not None:
            self._context._free(raw)


def _settle_raw(context: Any, future: asyncio.Future[Any], raw: Any) -> None:
    """Resolve ``future`` with a raw answer, converted and freed (on the event loop), or with
    its JavaScript error."""
    try:
        value = _to_python(context, raw)
    except Exception as exc:
        if not future.done():
            future.set_exception(exc)
        return
    if not future.done():
        future.set_result(value)


def _to_python(context: Any, raw: Any, garbage: list[Any] | None = None) -> Any:
    """Convert a raw result of ``context``'s isolate (a string, the engine's usual answer, and
    ``undefined`` without mini-racer's general conversion) and free it, or with ``garbage``
    put it there to be freed later (:meth:`_Bridge.free_garbage`); raises a result's
    JavaScript error as mini-racer does. mini-racer 0.14.1 internals (pinned): the value
    layout (``_RawValue``), its type codes, ``Context._free``.

    Once the isolate is being freed (its cell closed: :func:`_disarm_value_handles`, on the
    loop's thread, before the teardown starts) the raw value may be gone: it is not read, and
    the result is None. An answer handed to the loop just before the close gets there."""
    if context._free is _no_free:
        return None
    contents = raw.contents
    kind = contents.type
    if kind == _STR_UTF8:
        value: Any = contents.value.bytes_val[0 : contents.len].decode("utf-8")
    elif kind == _UNDEFINED:
        value = None
    else:  # freed with its handle (or kept by the object it became)
        return context._value_handle_to_python(context._wrap_raw_handle(raw))
    if garbage is None:
        context._free(raw)
    else:
        garbage.append(raw)
    return value


class _Handoff:
    """The result of one bridge call, handed straight to a thread blocked for it (the event
    loop's, in a worker process: see ``V8Engine``'s ``step_wait``), so it wakes no event
    loop. Once that thread stops waiting without it, the result goes the usual way (through
    the loop). Only the raw handle crosses: it is converted and freed on the waiting thread,
    never on the isolate's."""

    __slots__ = ("_gate", "_mutex", "_raw", "_waiting")

    def __init__(self) -> None:
        self._gate = threading.Lock()
        self._gate.acquire()  # released by offer()
        self._mutex = threading.Lock()
        self._waiting = True
        self._raw: Any = None

    def offer(self, raw: Any) -> bool:
        """On the isolate's thread: hand ``raw`` over; False once nobody waits for it."""
        with self._mutex:
            if not self._waiting:
                return False
            self._waiting = False
            self._raw = raw
        self._gate.release()
        return True

    def wait(self, timeout: float) -> Any:
        """Block up to ``timeout`` seconds; the raw result, or None (then it will come the
        usual way: never both, never neither)."""
        self._gate.acquire(timeout=max(timeout, 0.0))
        with self._mutex:
            self._waiting = False
            return self._raw


class _Calls:
    """Bridge calls submitted back to back to the isolate's thread.

    The thread runs them in order, and runs the microtasks a call left behind before the next
    call starts (mini-racer's explicit microtask checkpoint after each task), so a step and the
    drain submitted right behind it cost one wait for the isolate, not two round trips. The
    step is submitted *quiet* (its result wakes nobody; the drain's does) and the drain with a
    future, resolved by a *direct* callback (:class:`_QuietResults`). mini-racer 0.14.1
    internals (pinned): ``mr_call_function`` with a callback id of the context's counter, as
    ``Context._run_cancelable_mr_task`` does, without its per-call task.

    :meth:`abort` abandons the step, which terminates its JavaScript (as abandoning
    ``eval_cancelable`` does), but lets a drain behind it run: that drain empties the cell's
    outbox, so its report is what a salvage must give (``orphan``); nothing the cell did is
    lost to the pipelining.
    """

    __slots__ = (
        "_answers",
        "_bridge",
        "_drain",
        "_handoff",
        "_ids",
        "_late",
        "_quiet",
        "_quiet_task",
        "_tasks",
        "future",
        "orphan",
        "orphan_task",
    )

    def __init__(self, bridge: _Bridge) -> None:
        self._bridge = bridge
        self._answers = bridge.quiet
        self._ids: list[int] = []
        self._quiet: int | None = None
        self._quiet_task: int | None = None
        self._tasks: list[int] = []
        self._drain = False
        self._handoff: int | None = None  # the id settle_blocking may wait for
        self.future: asyncio.Future[Any] | None = None  # the last call's result
        # Once aborted with a drain behind the step: resolves to the drain's report (None if
        # it failed); set by abort().
        self.orphan: asyncio.Future[str | None] | None = None
        self.orphan_task: int | None = None  # the native task of that drain
        # The drain's answer when it came after ``future`` was cancelled but before abort()
        # made the orphan (a task cancelled while awaiting ``future`` cancels it at once, and
        # only sees its cancellation, and aborts, a loop iteration later): a 1-tuple.
        self._late: tuple[str | None] | None = None

    def submit_quiet(self, fn: Any, argv: Any) -> None:
        """Submit a call whose result does not wake the event loop: it is kept until
        :meth:`quiet_result` asks for it, once a call submitted behind it came back."""
        callback_id = self._answers.quiet_id()
        self._quiet = callback_id
        self._quiet_task = self._bridge.post(fn, argv, callback_id)

    def quiet_result(self) -> Any:
        """The quiet call's result (raises its JavaScript error); call only after a call
        submitted behind it came back (the isolate's thread answers in order)."""
        if self._quiet is None:  # abandoned meanwhile
            raise EngineLost("the cell's engine was closed")
        raw = self._answers.take(self._quiet)
        self._quiet = None
        if raw is None:
            raise EngineLost("the step's result is missing")
        # A step's usual result: undefined.
        return _to_python(self._bridge.context, raw, self._bridge.garbage)

    def submit(
        self,
        fn: Any,
        argv: Any,
        loop: asyncio.AbstractEventLoop,
        *,
        drain: bool = False,
        handoff: bool = False,
    ) -> asyncio.Future[Any]:
        """Submit the last call of the batch; its future gets the result. ``drain``: it is the
        drain behind a quiet step (see :meth:`abort`). ``handoff``: :meth:`settle_blocking`
        may take the result on this thread."""
        ctx = self._bridge.context
        garbage = self._bridge.garbage
        future: asyncio.Future[Any] = loop.create_future()
        calls = self

        def done(raw: Any) -> None:  # on the event loop (or the thread blocked for it)
            try:
                value = _to_python(ctx, raw, garbage)
            except _JSEvalException as exc:
                if not future.done():
                    future.set_exception(exc)
                else:
                    calls._late_report(None)
                return
            if not future.done():
                future.set_result(value)
            else:
                calls._late_report(value)

        callback_id = self._answers.loud_id(done, handoff=handoff)
        self._ids.append(callback_id)
        self._drain = drain
        self.future = future
        if handoff:
            self._handoff = callback_id
        self._tasks.append(self._bridge.post(fn, argv, callback_id))
        return future

    def _late_report(self, value: Any) -> None:
        """The drain's answer came after its future was done (cancelled): it goes to the
        orphan, or is kept until :meth:`abort` makes it. A drain's report is the only record of
        what it emptied, so it is never dropped while the batch may still be aborted."""
        report = value if isinstance(value, str) else None
        orphan = self.orphan
        if orphan is None:
            if self._drain:
                self._late = (report,)
        elif not orphan.done():
            orphan.set_result(report)

    def settle_blocking(self, timeout: float, *, spin: float = 0.0) -> None:
        """Block this thread (up to ``timeout`` seconds, polling without sleeping for the
        first ``spin`` of them) for the last call's result, submitted with ``handoff``; if it
        comes, resolve the future now, with no event-loop wake-up. Otherwise the result comes
        through the event loop as usual."""
        if self._handoff is None:
            return
        callback_id, self._handoff = self._handoff, None
        if spin and self._answers.spin(callback_id, min(spin, timeout)):
            return
        self._answers.wait(callback_id, timeout)

    def spin(self, seconds: float) -> bool:
        """Poll for the last call's result without sleeping, up to ``seconds``; if it comes,
        resolve the future now (see :meth:`NativeAnswers.spin`)."""
        return bool(self._ids) and self._answers.spin(self._ids[-1], seconds)

    def abort(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Abandon the batch now: its future is cancelled and the step's JavaScript is
        terminated; a drain behind the step still runs and ``orphan`` gets its report (not
        without a ``loop``: then the drain is abandoned too), also when the task awaiting the
        future cancelled it first, before or after the drain answered. Calling it again
        changes nothing."""
        self._drop_quiet()
        future = self.future
        if future is None or (not self._drain and future.done()):
            self.release()
            return
        if not self._drain or (loop is None and self.orphan is None):
            future.cancel()
            self.release()
            return
        if self.orphan is None:
            assert loop is not None
            orphan: asyncio.Future[str | None] = loop.create_future()
            self.orphan = orphan
            if self._late is not None:  # it answered after `future` was cancelled
                orphan.set_result(self._late[0])
                self._late = None
            elif future.done() and not future.cancelled():
                value = future.result() if future.exception() is None else None
                orphan.set_result(value if isinstance(value, str) else None)
            else:
                # Not answered yet (a task cancelled while awaiting `future` cancelled it: the
                # drain still runs). The drain's callback stays registered: it resolves the
                # orphan (and is dropped when it comes; never, if the isolate is freed first).
                self.orphan_task = self._tasks[-1] if self._tasks else None
                future.cancel()
                self._ids.clear()
                self._tasks.clear()
                return
        self.release()

    def forget(self) -> None:
        """After the last call came back: every call of the batch has finished (the isolate's
        thread runs them in order), so there is nothing to cancel; forget the callbacks."""
        for callback_id in self._ids:
            self._answers.forget(callback_id)
        self._ids.clear()
        self._tasks.clear()
        self._quiet_task = None
        if self._quiet is not None:
            self._answers.discard(self._quiet)
            self._quiet = None

    def release(self) -> None:
        """Forget the callbacks and cancel the native tasks (ignored for finished ones)."""
        self.settle_blocking(0.0)  # (never left registered: see _V8Cell._eval)
        for callback_id in self._ids:
            self._answers.forget(callback_id)
        self._ids.clear()
        self._drop_quiet()
        ctx = self._bridge.context
        for task_id in self._tasks:
            self._bridge.native_cancel(ctx._ctx, task_id)
        self._tasks.clear()

    def _drop_quiet(self) -> None:
        """Forget the quiet call's result and cancel its native task (ignored once it
        finished); calling it again changes nothing."""
        if self._quiet is not None:
            self._answers.discard(self._quiet)
            self._quiet = None
        if self._quiet_task is not None:
            self._bridge.native_cancel(self._bridge.context._ctx, self._quiet_task)
            self._quiet_task = None


class _Isolate:
    """One mini-racer context (an isolate on a thread of its own) with the prelude evaluated."""

    def __init__(self, manager: Any, context: Any, answers: Any) -> None:
        self.manager: Any | None = manager
        self.context = context
        self.answers = answers  # NativeAnswers or _QuietResults: see _Bridge
        self.bridge: _Bridge | None = None
        self.journal: memoryview | None = None  # the output journal's memory (see prelude)
        self.reads: memoryview | None = None  # the environment reads' memory (see prelude)
        self.inbox: _Inbox | None = None  # a step's inputs go in there, in the same buffer
        self.hold_word: memoryview | None = None
        self.journal_end: memoryview | None = None  # the journal's end word (see prelude)

    def free(self) -> threading.Event | None:
        """Release the isolate and its thread, without blocking: the native teardown runs on
        a reaper thread. Safe from any thread, including a garbage-collector finalizer running
        on a thread that holds the native lock. Returns an event set once it is freed (None if
        it was already handed over); :func:`wait_freed` waits for every one."""
        manager, self.manager = self.manager, None
        if manager is not None:
            _disarm_value_handles(self.context)
            return _REAPER.free(manager, self.answers.after_free)
        return None


def _no_free(raw: Any) -> None:
    del raw


def _disarm_value_handles(context: Any) -> None:
    """From now on no value handle of ``context`` frees itself: freeing a value while another
    thread frees its context aborted the process inside V8 (a handle's ``__del__`` on the loop
    thread, racing the reaper). The context's teardown frees every value it still holds.
    mini-racer 0.14.1 internals (pinned): each handle calls ``context._free(raw)``, looked up
    when it is collected."""
    object.__setattr__(context, "_free", _no_free)


def _exit_context(manager: Any) -> bool:
    # Not under the native lock: freeing a context waits for its isolate's thread, which may be
    # stuck for seconds in a long native builtin (JSON.parse, normalize) before it notices the
    # termination; holding the lock meanwhile blocked every other session's cell creation.
    # Creation still never runs concurrently with creation.
    try:
        manager.__exit__(None, None, None)
    except Exception:  # pragma: no cover - native teardown failure
        logger.exception("freeing a V8 context failed")
        return False
    return True


class _Reaper:
    """Frees contexts on daemon threads of its own, one thread per context, so that freeing
    never runs on the caller's thread (it can neither stall the event loop nor deadlock a thread
    that holds the native lock), and an isolate stuck for seconds in a long native builtin
    delays the release of no other isolate."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending = 0

    def free(self, manager: Any, then: Callable[[], None] | None = None) -> threading.Event:
        """Start freeing ``manager`` (then call ``then``, on the reaper's thread); the event is
        set once it is freed."""
        done = threading.Event()
        with self._cond:
            self._pending += 1
        try:
            threading.Thread(
                target=self._free_one,
                args=(manager, done, then),
                name="codemode-v8-reaper",
                daemon=True,
            ).start()
        except RuntimeError:
            # The interpreter is shutting down (Python 3.12+ starts no thread then): the
            # process's exit frees the context; nobody is left to wait for it.
            with self._cond:
                self._pending -= 1
                self._cond.notify_all()
            done.set()
        return done

    def _free_one(
        self, manager: Any, done: threading.Event, then: Callable[[], None] | None
    ) -> None:
        try:
            if _exit_context(manager) and then is not None:
                then()
        finally:
            done.set()
            with self._cond:
                self._pending -= 1
                if self._pending == 0:
                    self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Block until every context handed over so far is freed; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout)

    @property
    def pending(self) -> int:
        return self._pending


_REAPER = _Reaper()


def _wait_for_frees_at_exit() -> None:
    # A context still being freed (an isolate stuck in a long native call) when the interpreter
    # exits would race V8's process-wide teardown; give the frees in flight time to finish.
    _REAPER.wait_idle(30.0)


atexit.register(_wait_for_frees_at_exit)


def _wait_all(events: list[threading.Event], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for event in events:
        if not event.wait(max(deadline - time.monotonic(), 0.0)):
            return


async def wait_freed() -> None:
    """Wait (at most 5 s) until every isolate freed so far has released its resources."""
    if _REAPER.pending:
        await asyncio.to_thread(_REAPER.wait_idle, 5.0)


def _run_sync(context: Any, method: Any, *args: Any) -> Any:
    """Run one mini-racer task and wait for its result on the calling thread, which must not be
    the event loop's. The result comes back through mini-racer's queue of uncancelable tasks
    (callback id 0), so no event loop is woken or needed. Only for the host's own code (the
    prelude and its warm-up, which cannot run away); a lost isolate is given up on after
    ``_SYNC_TIMEOUT`` seconds. mini-racer 0.14.1 internals (pinned): that queue is single file,
    so only one thread may use it per context (the thread creating the isolate)."""
    method(context._ctx, *args, SYNC_CALLBACK_ID)
    try:
        handle = context._non_cancelable_mr_task_results_queue.get(timeout=_SYNC_TIMEOUT)
    except queue.Empty:
        raise EngineError("a new V8 isolate did not answer") from None
    return context._value_handle_to_python(handle)


def _create_isolate(loop: asyncio.AbstractEventLoop) -> _Isolate:
    """Create an isolate and evaluate the prelude in it, on the calling thread (never the event
    loop's: every native call here waits for the isolate's thread). The event loop is not
    involved until the isolate is handed over. Never leaks: a failure frees what it made."""
    from py_mini_racer._mini_racer import _make_context

    native = v8native.available()
    manager = v8native.native_context(loop) if native else _make_context(loop)
    context = _enter_context(manager)
    answers = v8native.NativeAnswers(context) if native else _QuietResults(context)
    isolate = _Isolate(manager, context, answers)
    try:
        context.set_hard_memory_limit(_POOL_HEAP_LIMIT)
        source = context._python_to_value_handle(f"{PRELUDE}\n//# sourceURL=codemode-prelude.js")
        run_sync, mr_eval = answers.run_sync, context._dll.mr_eval
        bridge_object = run_sync(mr_eval, source.raw, timeout=_SYNC_TIMEOUT)
        arrays_source = context._python_to_value_handle("[[], [0], [0, 0, 0]]")
        arrays = run_sync(mr_eval, arrays_source.raw, timeout=_SYNC_TIMEOUT)
        bridge = isolate.bridge = _Bridge(context, bridge_object, arrays, answers)
        # A throwaway cell compiles the prelude's hot paths now rather than in a real cell's
        # first step (about 0.4 ms); `boot` resets every piece of per-cell state.
        bridge.call_sync(bridge.start, *_WARM_UP)
        bridge.call_sync(bridge.drain)
        journal = bridge.call_sync(bridge.journal)
        if isinstance(journal, memoryview):
            isolate.journal = journal
            isolate.inbox = _Inbox.of(journal)
            isolate.hold_word = journal[len(journal) - 4 :].cast("I")
            isolate.journal_end = journal[0:4].cast("I")
        reads = bridge.call_sync(bridge.journal, "reads")
        if isinstance(reads, memoryview):
            isolate.reads = reads
    except BaseException:
        isolate.free()
        raise
    return isolate


async def _new_isolate(
    loop: asyncio.AbstractEventLoop, threads: concurrent.futures.Executor | None = None
) -> _Isolate:
    """Create an isolate with the prelude on a thread of ``threads`` (by default the threads
    of on-demand creation), off the event loop: the loop is woken once, when it is ready.
    Never leaks: a cancelled or failed creation frees what it made."""
    created = (threads or _ON_DEMAND_THREADS).submit(_create_isolate, loop)
    try:
        return await asyncio.wrap_future(created, loop=loop)
    except BaseException:  # cancelled, or the coroutine itself was garbage-collected
        created.add_done_callback(_free_if_created)
        raise


def _free_if_created(future: concurrent.futures.Future[_Isolate]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().free()


# Isolates are created on threads of their own, never on the event loop's: the pool's refill on
# one thread (one isolate at a time, so a refill never takes more than one core from the cells
# running meanwhile), a cell that found the pool empty on a few others.
_FILL_THREAD = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="codemode-v8-fill")
_ON_DEMAND_THREADS = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="codemode-v8-new")

# How long the thread creating an isolate waits for one of its answers.
_SYNC_TIMEOUT = 30.0


_WARM_UP = (
    '{"pausable": false, "limits": {"maxToolCalls": 10, "maxParallel": 10, '
    '"maxOutputBytes": 4096, "maxExternalBytes": 4096, "maxStoredBytes": 4096}, '
    '"storedBytes": 7, "tools": [{"name": "t", "ident": "t", "kind": "function", '
    '"description": ""}]}',
    '{"k":1}',
    'text("w"); console.log("w", 1); store("k", load("k")); yield_control();'
    "clearTimeout(setTimeout(() => {}, 1)); setTimeout(() => {}, 1); tools.t({a: 1});"
    "await tools.t({});",
)

# The prelude needs far less than this; the cell's own limit is set when it takes the isolate.
_POOL_HEAP_LIMIT = 64 * 1024 * 1024


class _IsolatePool:
    """Isolates created ahead of time for one event loop, so a new cell skips isolate creation
    and the prelude (ENGINE-NOTES 9). Bounded, never shared: an isolate is handed to exactly
    one cell and freed with it.

    Refilled off the cells' path: an isolate taken is replaced once the cell that took it
    closes, or at the latest ``_REFILL_MAX_DELAY`` seconds after it was taken, and at once when
    no isolate is left ready (the next cell would otherwise create its own). The refill runs on
    one thread of its own, one isolate at a time, and wakes the event loop once per isolate, so
    a cell running its calls meanwhile competes with it for neither the loop nor more than one
    core."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.loop = loop
        self.size = size
        self.users = 0
        self._ready: collections.deque[_Isolate] = collections.deque()
        self._filling: set[asyncio.Task[None]] = set()
        self._refill_handle: asyncio.TimerHandle | None = None

    async def take(self) -> _Isolate:
        isolate = self._ready.popleft() if self._ready else None
        if not self._ready:
            self.refill()
        elif self._refill_handle is None:
            self._refill_handle = self.loop.call_later(_REFILL_MAX_DELAY, self.refill)
        if isolate is None:
            logger.debug("isolate pool empty: creating one on demand")
            isolate = await _new_isolate(self.loop)
        return isolate

    def released(self) -> None:
        """A cell that took an isolate closed: refill now (on the pool's loop only)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return  # the bound of take() still holds
        if running is self.loop:
            self.refill()

    def refill(self) -> None:
        if self._refill_handle is not None:
            self._refill_handle.cancel()
            self._refill_handle = None
        while self.users > 0 and len(self._ready) + len(self._filling) < self.size:
            task = self.loop.create_task(self._fill_one())
            self._filling.add(task)
            task.add_done_callback(self._filling.discard)

    async def _fill_one(self) -> None:
        try:
            isolate = await _new_isolate(self.loop, _FILL_THREAD)
        except asyncio.CancelledError:
            raise
        except Exception:  # pragma: no cover - native failure; the next take creates one
            logger.exception("pre-creating a V8 isolate failed")
            return
        if self.users > 0 and len(self._ready) < self.size:
            self._ready.append(isolate)
        else:
            isolate.free()

    def close(self) -> list[threading.Event]:
        """Free the ready isolates; returns the events set once each is freed."""
        if self._refill_handle is not None:
            self._refill_handle.cancel()
            self._refill_handle = None
        for task in list(self._filling):
            task.cancel()
        freeing = []
        while self._ready:
            done = self._ready.popleft().free()
            if done is not None:
                freeing.append(done)
        return freeing


_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _IsolatePool] = (
    weakref.WeakKeyDictionary()
)

DEFAULT_POOL_SIZE = 4

# How long the event loop polls for a quick step's answer before it sleeps (V8Engine's
# answer_spin).
DEFAULT_ANSWER_SPIN = 0.0001
# The latest an isolate taken from the pool is replaced, while the cell that took it lives.
_REFILL_MAX_DELAY = 0.1


class V8Engine(Engine):
    """Runs each cell in a fresh V8 isolate on a thread of its own (mini-racer 0.14.1).

    Engines on one event loop share a pool of ``pool_size`` isolates created ahead of time
    (the largest size asked for wins); the pool is freed when the last engine using it closes.
    ``pool_size=0`` creates every isolate on demand.

    ``step_wait`` (seconds, at most 0.01; default 0: never) lets a step block the event loop's
    thread that long for its result before waiting asynchronously: a step that answers within
    it wakes no event loop. For a loop that serves only its cells (the worker process of
    :class:`~codemode.engine.worker.WorkerEngine`), never for an application's loop.

    ``answer_spin`` (seconds, at most 0.001; default 0.0001): once a step is submitted, the
    event loop takes one turn (other tasks run while the isolate's thread works), then, if it
    has nothing else ready, polls for the step's answer up to that long before sleeping in
    ``epoll`` (docs/call-path.md, "Polling for a quick answer"). On a virtual machine a
    sleeping thread costs tens of microseconds to wake, more than a quick step takes. A cell
    whose steps take longer stops polling until a step is quick again. Other I/O waits at
    most that long; 0 turns it off. Only with answers taken natively (Linux, see
    ``CODEMODE_V8_ANSWERS``) and on asyncio's own event loops.

    ``hold`` (default True; only with ``answer_spin`` and no ``step_wait``): between two quick
    steps of a cell whose tools answer at once, the isolate's thread polls for the next step
    (about 0.1 ms at most) instead of sleeping, so posting it wakes no sleeping thread. About
    10 % less time per sequential call for about 20 % more CPU (the isolate's thread polls
    while the loop's works); ``hold=False`` keeps the CPU.
    """

    name = "v8"

    def __init__(
        self,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        step_wait: float = 0.0,
        answer_spin: float = DEFAULT_ANSWER_SPIN,
        hold: bool = True,
    ) -> None:
        if pool_size < 0:
            raise ValueError("pool_size must be at least 0")
        if not 0.0 <= step_wait <= _MAX_STEP_WAIT:
            raise ValueError(f"step_wait must be between 0 and {_MAX_STEP_WAIT} seconds")
        _init_v8()
        self._step_wait = float(step_wait)
        self.answer_spin = spin_mod.check_spin("answer_spin", answer_spin)
        if not isinstance(hold, bool):
            raise TypeError("hold must be True or False")
        self.hold = hold
        self._pool_size = pool_size
        self._pool: _IsolatePool | None = None
        self._closed = False
        self._freeing: list[threading.Event] = []  # this engine's cells' isolates

    def _acquire_pool(self) -> _IsolatePool:
        if self._pool is None:
            loop = asyncio.get_running_loop()
            pool = _pools.get(loop)
            if pool is None:
                pool = _pools[loop] = _IsolatePool(loop, self._pool_size)
            pool.size = max(pool.size, self._pool_size)
            pool.users += 1
            self._pool = pool
        return self._pool

    async def open_cell(self, boot: CellBoot) -> EngineCell:
        if self._closed:
            raise EngineError("the V8 engine was closed")
        pool = self._acquire_pool()
        try:
            isolate = await pool.take()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # pragma: no cover - native failure
            raise EngineError(f"could not create a V8 isolate: {exc}") from exc
        try:
            return _V8Cell(
                isolate, boot, self._track_free, self._step_wait, self.answer_spin, self.hold
            )
        except Exception as exc:
            isolate.free()
            raise EngineError(f"could not start the V8 cell environment: {exc}") from exc

    def _track_free(self, done: threading.Event) -> None:
        self._freeing = [e for e in self._freeing if not e.is_set()]
        self._freeing.append(done)
        if self._pool is not None:
            self._pool.released()  # the cell closed: the pool refills now

    async def aclose(self) -> None:
        """Close, and wait (at most 5 s) until the isolates of this engine's cells are freed;
        an isolate of another engine, stuck in a long native call, delays nobody else."""
        self.close()
        pending = [e for e in self._freeing if not e.is_set()]
        self._freeing = []
        if pending:
            await asyncio.to_thread(_wait_all, pending, 5.0)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.users -= 1
            if pool.users <= 0:
                self._freeing.extend(pool.close())
                if _pools.get(pool.loop) is pool:
                    del _pools[pool.loop]


class _V8Cell(EngineCell):
    def __init__(
        self,
        isolate: _Isolate,
        boot: CellBoot,
        on_free: Callable[[threading.Event], None] | None = None,
        step_wait: float = 0.0,
        answer_spin: float = 0.0,
        hold: bool = False,
    ) -> None:
        self._isolate = isolate
        self._step_wait = step_wait
        self._on_free = on_free
        self._context = isolate.context
        self._boot = boot
        self._limits = boot.limits
        self._closed = False
        self._inflight: _Calls | None = None
        self._deadline = 0.0  # the CPU deadline of the calls in flight (time.perf_counter)
        self._watch_handle: asyncio.TimerHandle | None = None  # see _arm_watch
        self._out_of_cpu = False
        self._flagged: str | None = None
        # The drain submitted behind a step that was abandoned or failed (_Calls.abort): it
        # emptied the cell's outbox, so its report is what the next salvage gives.
        self._orphan: asyncio.Future[str | None] | None = None
        self._orphan_task: int | None = None  # the orphan drain's native task, if known
        # Reports whose caller was cancelled while they were checked (drain.check_report_async).
        self._unreported: list[asyncio.Future[StepReport]] = []
        # The salvage of a command a limit stopped, when its caller was cancelled meanwhile.
        self._salvaging: asyncio.Future[RawReport] | None = None
        self._cpu_used = 0.0
        assert isolate.bridge is not None
        self._bridge = isolate.bridge
        # Polling for a step's answer (V8Engine's answer_spin); off while steps take longer.
        native = isinstance(self._bridge.quiet, v8native.NativeAnswers)
        self._spin = answer_spin if native else 0.0
        self._spin_now = True
        self._few = True  # the step carries few inputs (spin.QUICK_ITEMS)
        self._context.set_hard_memory_limit(boot.limits.max_heap_bytes)
        self._stored = StoredSnapshot.from_values(boot.stored)
        self._authority = CellAuthority(
            boot.tools, boot.limits, pausable=boot.pausable, stored=self._stored
        )
        self._boot_config = self._render_boot()  # serialised at admission: the snapshot is fixed
        self._journal = isolate.journal
        self._journal_end = isolate.journal_end
        self._reads = isolate.reads
        self._inbox = isolate.inbox
        # Holding the isolate's thread between quick steps (bridge.hold in the prelude): in
        # process only, where the loop polls too; a worker's loop waits for its host, and a
        # hold there would take a core the host's and the worker's threads need.
        holding = hold and self._spin and step_wait <= 0
        self._hold_word = isolate.hold_word if holding else None
        self._hold: int | None = None  # the quiet id of the hold posted behind the last step
        self._answered_at = 0.0  # when the last step's report came (time.perf_counter)

    @property
    def closed(self) -> bool:
        return self._closed

    def _render_boot(self) -> str:
        """The configuration that installs this cell's tools and limits. It is given to the
        same bridge call as the body's start (one crossing fewer per cell), with the stored
        values' JSON text beside it, parsed inside the cell."""
        b = self._boot
        idents = tool_identifiers(t.name for t in b.tools)
        config = {
            "pausable": b.pausable,
            "limits": {
                "maxToolCalls": b.limits.max_tool_calls,
                "maxParallel": b.limits.max_parallel_tool_calls,
                "maxOutputBytes": b.limits.max_output_bytes,
                "maxExternalBytes": b.limits.max_heap_bytes,
                "maxStoredBytes": b.limits.max_stored_bytes,
            },
            "storedBytes": self._stored.total_bytes,
            "tools": [
                {"name": t.name, "ident": ident, "kind": str(t.kind), "description": t.description}
                for t, ident in zip(b.tools, idents, strict=True)
            ],
        }
        # The catalog entries stay JSON text in the cell, parsed on first use (docs/model-tools.md)
        if b.tool_reference is not None:
            config["reference"] = b.tool_reference
        if b.replay_reads:  # the reads to answer first (docs/determinism.md)
            config["replay"] = replay_wire(b.replay_reads)
        return _dumps(config)

    async def run(self) -> StepReport:
        raw = await self.run_raw()
        return await self._checked_async(raw) if offloaded(raw) else self._checked(raw)

    async def run_raw(self) -> RawReport:
        """:meth:`run`, its report not checked (a worker's host checks it: engine/drain.py).
        The cell is closed when the engine ended it; a report that settles it is not seen
        here, so the caller closes it then."""
        prepared = await prepare_source_async(self._boot.source)
        if prepared.as_written is not None and await self._eval(
            self._bridge.compiles, prepared.as_written
        ):
            prepared = prepared.as_javascript()  # valid JavaScript runs as written
        if prepared.error_text is not None:
            self.close()
            return RawReport(ending=prepared.error_text)
        scan = scan_source(prepared.code)
        if scan.static_import is not None:
            self.close()
            return RawReport(
                ending=f"SyntaxError: Unsupported import in exec: {scan.static_import}"
            )
        stored_json = self._stored.json_text()
        bridge = self._bridge
        try:
            # As arguments, not through the inbox: the inbox's JSON text would stay in every
            # idle cell's heap as garbage (about 16 KiB a cell) to save three quick copies.
            return await self._command(bridge.start, self._boot_config, stored_json, scan.source)
        except EngineLost as lost:
            located = syntax_error_from(str(lost.__cause__ or ""), scan.source)
            if located is None:
                raise
            self.close()
            return RawReport(ending=located)

    async def step(self, inputs: Sequence[StepInput]) -> StepReport:
        self._authority.inputs(inputs)
        raw = await self._command(*self._step_args(_step_text(inputs), len(inputs)))
        # (A small report is checked right here, without another coroutine.)
        return await self._checked_async(raw) if offloaded(raw) else self._checked(raw)

    async def step_raw(self, text: str, count: int) -> RawReport:
        """:meth:`step`, its report not checked (see :meth:`run_raw`), its ``count`` inputs
        given as their step text (a worker gets it so from its host)."""
        return await self._command(*self._step_args(text, count))

    def _step_args(self, text: str, count: int) -> tuple[Any, ...]:
        """The bridge call of a step: its inputs put in the inbox (or given as the argument)."""
        self._few = count <= spin_mod.QUICK_ITEMS  # a step worth polling for
        inbox = self._inbox
        if self._closed:  # the inbox's memory went with the isolate
            raise EngineLost("the cell's engine was closed")
        if inbox is not None and inbox.put(text):
            return (self._bridge.step,)  # no argument to copy in
        return (self._bridge.step, text)

    def _checked(self, raw: RawReport) -> StepReport:
        """``raw`` checked by the cell's authority (see :meth:`_settles`)."""
        return self._settles(check_report(self._authority, self._limits, raw))

    async def _checked_async(
        self, raw: RawReport, unreported: list[asyncio.Future[StepReport]] | None = None
    ) -> StepReport:
        """:meth:`_checked` of a report that may be large, checked on a worker thread then.
        Cancelled meanwhile, the report joins ``unreported`` (default: the cell's own list,
        whose output :meth:`stop` gives first)."""
        if unreported is None:
            unreported = self._unreported
        checked = await check_report_async(self._authority, self._limits, raw, unreported)
        return self._settles(checked)

    def _settles(self, report: StepReport) -> StepReport:
        """``report``, the cell closed when it settles it (after completion no JavaScript of
        the cell runs: docs/cells.md)."""
        if report.settlement is not None:
            self.close()
        return report

    async def replay_steps(self, steps: Sequence[Sequence[StepInput]]) -> list[StepReport] | None:
        """Replay (docs/durability.md): run recorded steps back to back, as many :meth:`step`
        calls would, with one wait for the isolate's thread instead of one per step.

        The host knows every recorded step's inputs, so it hands them over in one piece
        (prelude ``replayQueue``) and submits one task per step at once (``replayNext``: the
        report of the step before, then the next inputs; V8 runs a step's microtasks after its
        task, so each report is what :meth:`step` would have returned). Every report is then
        checked in order by the host's :class:`CellAuthority`, each step's inputs declared to
        it first, exactly as :meth:`step` does. Returns the reports in order; fewer when one
        settled the cell (which is then closed, as :meth:`step` closes it). None when the run
        did not finish normally (a limit, a JavaScript error of the bridge, a lost isolate):
        the cell is closed and none of its reports was checked; replay in a fresh cell with
        :meth:`step`, which reports such endings precisely."""
        if not steps:
            return []
        if self._closed:
            raise EngineLost("the cell's engine was closed")
        self._release_hold()
        bridge = self._bridge
        ctx = self._context
        fns = getattr(bridge, "replay_fns", None)
        if fns is None:
            fns = tuple(bridge.bridge[n] for n in ("replayQueue", "replayNext", "replayDrain"))
            bridge.replay_fns = fns  # type: ignore[attr-defined]
        queue_fn, next_fn, drain_fn = fns
        queue_text = _dumps([_step_text(inputs) for inputs in steps])
        inbox = self._inbox
        if inbox is not None and inbox.put(queue_text):
            argv = bridge.argv[0]
        else:
            argv = await bridge.arguments((queue_text,))
        if self._closed:
            raise EngineLost("the cell's engine was closed")
        answers = bridge.quiet
        # One task per step and the drain, posted _REPLAY_POSTED at a time: each batch's last
        # task wakes the loop, the others' answers are kept (one eventfd each, natively).
        posts = [(queue_fn, argv)] + [(next_fn, bridge.argv[0])] * (len(steps) - 1)
        posts.append((drain_fn, bridge.argv[0]))
        values: list[Any] = []  # every task's result after the first: the reports, in order
        started = time.perf_counter()
        deadline = started + max(self._limits.max_cpu_seconds - self._cpu_used, 0.0)
        finished = False
        quiet: list[int] = []
        tasks: list[int] = []
        try:
            for first in range(0, len(posts), _REPLAY_POSTED):
                batch = posts[first : first + _REPLAY_POSTED]
                quiet.clear()
                tasks.clear()
                future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                for fn, args in batch[:-1]:
                    quiet.append(answers.quiet_id())
                    tasks.append(bridge.post(fn, args, quiet[-1]))
                final = answers.loud_id(functools.partial(_settle_raw, ctx, future))
                try:
                    tasks.append(bridge.post(*batch[-1], final))
                    while not future.done():
                        now = time.perf_counter()
                        if now >= deadline or self._limit_flag() is not None:
                            return None  # a limit: the step-by-step replay reports it precisely
                        await asyncio.wait({future}, timeout=min(deadline - now, _FLAG_POLL))
                finally:
                    answers.forget(final)
                if future.exception() is not None or ctx.was_hard_memory_limit_reached():
                    return None
                queueing = first == 0
                while quiet:
                    raw = answers.take(quiet[0])
                    if raw is None:
                        return None
                    del quiet[0]  # taken: never discarded again (its id may be reused)
                    if queueing:
                        queueing = False
                        ctx._free(raw)  # the queueing task's result
                    else:
                        values.append(_to_python(ctx, raw))
                values.append(future.result())
            finished = True
        except _JSEvalException:
            return None
        finally:
            for callback_id in quiet:
                answers.discard(callback_id)
            if not finished:
                for task_id in tasks:
                    bridge.native_cancel(ctx._ctx, task_id)
                self.close()
            self._cpu_used += time.perf_counter() - started
        self._journal_delivered()  # (a replayed step's output was delivered before)
        raws = values
        cpu = (time.perf_counter() - started) / len(steps)
        reports: list[StepReport] = []
        for inputs, raw in zip(steps, raws, strict=True):
            self._authority.inputs(inputs)
            # A replayed step's output was delivered before: a cancelled replay drops it.
            report = await self._checked_async(RawReport(raw, cpu, self._reads_of(raw)), [])
            reports.append(report)
            if report.settlement is not None:
                break  # the cell is closed (_checked_async)
        return reports

    async def stop(self) -> tuple[EngineEvent, ...]:
        raw = await self.stop_raw()
        # A report still being checked when its caller was cancelled comes first.
        early = await unreported_events(self._unreported) if self._unreported else ()
        return early + stopped_events(self._authority, raw)

    async def stop_raw(self) -> RawReport:
        """:meth:`stop`: the cell's last output, not checked (see :meth:`run_raw`)."""
        salvaging, self._salvaging = self._salvaging, None
        if salvaging is not None:  # a limit stopped the cell, and its caller went away
            return await salvaging
        if self._closed:
            return RawReport()
        inflight = self._inflight
        if inflight is not None:
            # Abandoning a step terminates its JavaScript and leaves the context usable.
            self._abort(inflight)
        try:
            return await self._stopped()
        finally:
            self.close()

    async def _stopped(self, limit: str | None = None) -> RawReport:
        """What a stopped cell recorded since its last report: one bounded drain if V8 still
        answers, else the output records of its journal. Before the cell is closed."""
        raw = await self._drain_stopped()
        if raw is None:
            return RawReport(journal=self._read_journal(), limit=limit)
        return RawReport(raw, 0.0, self._reads_of(raw), limit=limit)

    def _reads_of(self, raw: Any) -> bytes | None:
        """A copy of the read memory the drain report ``raw`` refers to (``"reads": N``)."""
        runs = read_runs(raw)
        memory = self._reads
        if not runs or memory is None or self._closed:
            return None
        return bytes(memory[: min(24 * runs, len(memory))])

    def _read_journal(self) -> tuple[tuple[int, str], ...]:
        """The output records of the cell that no report in the host's hands holds (see
        :meth:`_journal_delivered`), read from the journal's memory without running JavaScript
        (the isolate may be spinning in a continuation, where stopping it also stops any
        drain). Only while the isolate lives: never after close."""
        view = self._journal
        if view is None or self._closed:
            return ()
        try:
            # One copy of the records up to the committed end (not of the whole buffer); the
            # cell may still be writing past the end mark.
            end = min(int.from_bytes(view[0:4], "little"), _JOURNAL_UNITS)
            data = bytes(view[: 2 * end])
            return tuple(_journal_items(data))
        except Exception:  # pragma: no cover - a journal is best effort
            logger.debug("journal of cell %s unreadable", self._boot.cell_id, exc_info=True)
            return ()

    def close(self) -> None:
        if self._closed:
            return
        self._release_hold()
        self._closed = True
        self._hold_word = None  # its memory goes with the isolate
        if self._inflight is not None:
            self._inflight.abort(None)
        if self._watch_handle is not None:
            self._watch_handle.cancel()
            self._watch_handle = None
        done = self._isolate.free()
        if done is not None and self._on_free is not None:
            self._on_free(done)

    # ------------------------------------------------------------------ internals

    async def _command(self, fn: Any, *args: str) -> RawReport:
        """Run one step and the drain that follows it (microtasks run between the two; both
        are submitted at once, so the host waits for the isolate once). A limit that stops it
        closes the cell, after reading what the cell recorded before (:meth:`_stopped`)."""
        cpu_before = self._cpu_used
        try:
            raw = await self._eval(fn, *args, drain=True)
            self._journal_delivered()
        except _LimitExceeded as exc:
            # Shielded: a caller cancelled meanwhile (terminate) leaves the salvage running,
            # and the cell's stop gives its report (the drain in it empties the cell).
            salvage = asyncio.ensure_future(self._salvage(exc.field_name))
            try:
                return await asyncio.shield(salvage)
            except asyncio.CancelledError:
                self._salvaging = salvage
                raise
        return RawReport(raw, self._cpu_used - cpu_before, self._reads_of(raw))

    def _journal_delivered(self) -> None:
        """Empty the output journal: the host has the drain report that holds its records.

        Only the host empties it (the prelude's drain never does): mini-racer reports a drain
        terminated just after it committed as terminated and drops its report (its
        CancelableTask, 0.14.1), so until the report is here the journal is the only record of
        the output the drain emptied. The cell's JavaScript is not running now (the drain
        answered and nothing was posted since), so the end word is the host's to write."""
        end = self._journal_end
        if end is not None and not self._closed:
            end[0] = _JOURNAL_START

    async def _salvage(self, limit: str) -> RawReport:
        """:meth:`_stopped` for a command ``limit`` stopped; then the cell is closed."""
        try:
            return await self._stopped(limit=limit)
        finally:
            self.close()

    async def _drain_stopped(self) -> Any:
        """One bounded drain of a cell whose JavaScript was stopped (an abandoned eval leaves the
        context usable): its raw report, or None if V8 could not answer.

        Nothing the cell wrote is lost either way. A drain empties nothing until its report is
        whole (the prelude's ``drain()`` commits at its very end), and one that outlives its
        budget is terminated and its answer awaited (:meth:`_Bridge.settle_within`): either it
        finished first and its report is taken, or it emptied nothing and the output journal
        the caller then reads still holds the cell's output."""
        if self._closed:
            return None
        try:
            budget = time.monotonic() + _SALVAGE_TIMEOUT
            orphan, self._orphan = self._orphan, None
            orphan_task, self._orphan_task = self._orphan_task, None
            bridge = self._bridge
            # The drain queued behind an abandoned step, if any; it fails when the step's
            # termination reached it too (then it emptied nothing: drain afresh).
            raw = None
            if orphan is not None:
                raw = await bridge.settle_within(orphan, orphan_task, _SALVAGE_TIMEOUT)
            if raw is None and not self._closed:
                self._release_hold()
                raw = await bridge.call_within(bridge.drain, max(budget - time.monotonic(), 0.0))
            return raw
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.debug("nothing salvaged from cell %s", self._boot.cell_id, exc_info=True)
            return None

    async def _eval(self, fn: Any, *args: str, drain: bool = False) -> Any:
        """Call the bridge function ``fn`` within the cell's remaining CPU budget; with
        ``drain``, submit the drain right behind it and return the drain's result.

        Cancelling the caller abandons the calls, which terminates the running JavaScript. A
        heap-limit hit anywhere in them (microtasks included, which V8 runs after each call)
        is a ``max_heap_bytes`` limit, even when the call itself came back normally.
        """
        if self._closed:
            raise EngineLost("the cell's engine was closed")
        self._release_hold()
        bridge = self._bridge
        argv = await bridge.arguments(args) if args else bridge.argv[0]
        if self._closed:
            raise EngineLost("the cell's engine was closed")
        loop = asyncio.get_running_loop()
        calls = _Calls(bridge)
        wait = self._step_wait
        self._inflight = calls
        self._out_of_cpu = False
        self._flagged = None
        started = time.perf_counter()
        deadline = self._deadline = started + max(
            self._limits.max_cpu_seconds - self._cpu_used, 0.0
        )
        # Before submitting: once the calls are posted, the isolate's thread soon wants the GIL
        # for the step's answer, so the loop's thread does as little as it can before it waits.
        self._arm_watch(loop, deadline - started)
        finished = False
        held = None
        try:
            if drain:
                # The step's own result wakes nobody: the drain's answer comes right after it.
                calls.submit_quiet(fn, argv)
                step = calls.submit(
                    bridge.drain, bridge.argv[0], loop, drain=True, handoff=wait > 0
                )
                held, self._hold = self._hold, None
                # Behind the drain, a hold keeps the isolate's thread running until the next
                # step is posted (no wake-up of a sleeping thread then), when the host came
                # back quickly with this one (its tools answer at once) and the step is small.
                gap = started - self._answered_at
                if (
                    self._hold_word is not None
                    and self._few
                    and spin_mod.still_quick(gap, self._spin)
                ):
                    hold_id = bridge.quiet.quiet_id()
                    bridge.post(bridge.hold, bridge.argv[0], hold_id)
                    self._hold = hold_id
            else:
                step = calls.submit(fn, argv, loop)
            if bridge.garbage:
                bridge.free_garbage()  # while the isolate's thread runs the step
            spin = self._spin if drain and self._spin_now and self._few else 0.0
            if spin and wait <= 0:
                # One turn of the loop while the isolate's thread runs the step: a cell whose
                # answers are taken by polling still lets every other task run once per step.
                await asyncio.sleep(0)
                if not step.done() and not spin_mod.loop_busy(loop):
                    calls.spin(spin)
            if drain and wait > 0:  # a quick step resolves `step` here, with no wake-up
                calls.settle_blocking(min(wait, deadline - started), spin=spin)
            result = await step  # a cancelled caller abandons the calls too
            if drain:
                calls.quiet_result()  # raises the step's error, if any
            finished = True
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # our caller was cancelled
            if self._out_of_cpu:
                raise _LimitExceeded("max_cpu_seconds") from None
            if self._flagged is not None:
                raise _LimitExceeded(self._flagged) from None
            raise EngineLost("the cell's engine was closed") from None
        except Exception as exc:
            if isinstance(exc, _JSOOMException):
                raise _LimitExceeded("max_heap_bytes") from exc
            if self._context.was_hard_memory_limit_reached():
                raise _LimitExceeded("max_heap_bytes") from exc
            raise EngineLost(f"{type(exc).__name__}: {exc}") from exc
        finally:
            if finished:
                calls.forget()
            else:
                self._abort(calls)
            if self._inflight is calls:
                self._inflight = None
            now = time.perf_counter()
            if drain:
                if held is not None:
                    bridge.quiet.discard(held)  # it ran before this step
                self._answered_at = now
            elapsed = now - started
            self._cpu_used += elapsed
            if self._spin:  # poll again once a step is quick (slept in epoll: still quick)
                self._spin_now = spin_mod.still_quick(elapsed, self._spin)
        if self._context.was_hard_memory_limit_reached():
            if drain:  # the report the drain made is what the salvage gives
                self._orphan = asyncio.get_running_loop().create_future()
                self._orphan.set_result(result if isinstance(result, str) else None)
            raise _LimitExceeded("max_heap_bytes")
        return result

    def _release_hold(self) -> None:
        """End a hold the isolate's thread may be running (bridge.hold): call before posting
        anything, and before the isolate is freed."""
        word = self._hold_word
        if word is not None and not self._closed:
            word[0] = (word[0] + 1) & 0x7FFFFFFF

    def _abort(self, calls: _Calls) -> None:
        """Abandon a batch of bridge calls (idempotent); keep its drain's report coming."""
        calls.abort(asyncio.get_running_loop())
        if calls.orphan is not None:
            self._orphan = calls.orphan
            self._orphan_task = calls.orphan_task

    def _arm_watch(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        """Make sure :meth:`_watch` looks at the cell within ``delay`` seconds, and within
        ``_FLAG_POLL``. One timer per cell, kept from step to step: an armed one that fires
        soon enough stays (a sequential cell's steps arm no timer of their own)."""
        at = loop.time() + min(delay, _FLAG_POLL)
        watch = self._watch_handle
        if watch is not None:
            if watch.when() <= at:
                return
            watch.cancel()
        self._watch_handle = loop.call_at(at, self._watch, loop)

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """While a call runs: past the CPU deadline, or once the cell flagged a limit in its
        journal (even if it caught the unwinding and spins on), abandon it. Re-armed every
        ``_FLAG_POLL`` seconds while calls run; with none in flight, the next one arms it."""
        self._watch_handle = None
        calls = self._inflight
        if calls is None or calls.future is None or calls.future.done():
            return  # nothing running: the caller of a finished call takes the result
        now = time.perf_counter()
        if now >= self._deadline:
            self._out_of_cpu = True
            self._abort(calls)
            return
        flagged = self._limit_flag()
        if flagged is not None:
            self._flagged = flagged
            self._abort(calls)
            return
        self._arm_watch(loop, self._deadline - now)

    def _limit_flag(self) -> str | None:
        """The limit the cell flagged in its journal while running, if any."""
        view = self._journal
        if view is None or self._closed or len(view) < 8:
            return None
        code = int.from_bytes(view[4:8], "little")
        if 1 <= code <= len(_FLAGGED_LIMITS):
            return _FLAGGED_LIMITS[code - 1]
        return None


def _step_text(inputs: Sequence[StepInput]) -> str:
    """A step's inputs as the prelude's ``step`` reads them (for :meth:`_V8Cell.step`, the
    replay's back-to-back steps and the worker engine's step line). Call ids are the runtime's
    own "tool-N": no escaping needed."""
    parts = []
    for item in inputs:
        if isinstance(item, ToolResultInput):
            if item.ok:
                parts.append(f'["r","{item.call_id}",true,{item.value_json}]')
            else:
                parts.append(f'["r","{item.call_id}",false,{_dumps(item.message)}]')
        else:
            parts.append(f'["t",{int(item.timer_id)}]')
    return f"[{','.join(parts)}]"


def _journal_items(data: bytes) -> list[tuple[int, str]]:
    """Decode journal records up to the committed end (see the prelude's output journal)."""
    units = len(data) // 2
    end = min(int.from_bytes(data[0:4], "little"), units)
    items: list[tuple[int, str]] = []
    at = _JOURNAL_START
    while at + 3 <= end:
        kind = int.from_bytes(data[2 * at : 2 * at + 2], "little")
        n = int.from_bytes(data[2 * at + 2 : 2 * at + 4], "little")
        n |= int.from_bytes(data[2 * at + 4 : 2 * at + 6], "little") << 16
        start = at + 3
        if start + n > end:
            break
        text = data[2 * start : 2 * (start + n)].decode("utf-16-le", "surrogatepass")
        items.append((kind, text))
        at = start + n
    return items


# The limits a cell's journal can flag (the prelude's FLAGGED_LIMITS, in order).
_FLAGGED_LIMITS = (
    "max_tool_calls",
    "max_parallel_tool_calls",
    "max_output_bytes",
    "max_heap_bytes",
    "max_stored_bytes",
)

# How often a running step looks at its cell's limit flag.
_FLAG_POLL = 0.02

# How many tasks a back-to-back replay posts before it waits for them (each holds an eventfd
# until its answer is read, see v8native.py).
_REPLAY_POSTED = 64

# The longest a step may block its event loop's thread (V8Engine's step_wait); shorter than
# _FLAG_POLL, so a blocked wait never misses a look at the limit flag.
_MAX_STEP_WAIT = 0.01

# The layout of the journal's buffer (the prelude's JOURNAL_UNITS): the journal's records, then
# the inbox (one 32-bit length word, then up to _INBOX_UNITS UTF-16 units).
_JOURNAL_UNITS = 4194304 - 131072
_JOURNAL_START = 4  # the first record's unit (the end word and the limit flag come before)
_INBOX_UNITS = 131072 - 4  # the length word before, the hold word after

# mini-racer's type codes of a UTF-8 string and of `undefined` (0.14.1, `_MiniRacerTypes`).
_STR_UTF8 = 5
_UNDEFINED = 11

# Arguments longer than this are copied into the isolate from a worker thread.
_THREAD_ARG_CHARS = 256 * 1024
