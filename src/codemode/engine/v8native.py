"""Answers of a V8 isolate's tasks with no Python on the isolate's thread (Linux).

mini-racer hands every task's answer to one native callback per context, called on the
isolate's thread. Its Python binding makes that callback a ctypes function into Python, so each
answer takes the GIL on the isolate's thread and runs Python there: two answers per sequential
call, about 40 of its 140 us on raw mini-racer on this machine kind (``benchmarks/v8_bindings.py``,
``miniracer-async`` against ``miniracer-native-async``).

Here the context's callback is libc's ``eventfd_write`` instead. mini-racer 0.14.1 (pinned)
calls its callback as ``void callback(uint64_t callback_id, Value* result)``;
``int eventfd_write(int fd, uint64_t value)`` takes its two arguments in the same registers on
x86-64 and arm64 (the System V and AAPCS64 conventions), and the result it returns is ignored.
So a task posted with an eventfd's number as its callback id is answered by writing its result's
address to that eventfd: the isolate's thread makes one system call and goes on.

The one rule that keeps this safe: **an eventfd carries at most one answer at a time** (an
eventfd adds what is written to it, so two answers would read as the sum of two addresses).
An eventfd is taken from :data:`POOL` when a task is posted and given back only once that task's
answer was read; mini-racer answers every posted task exactly once (completed or cancelled,
also when its context is freed: the context waits for every task first). An eventfd whose
answer never came is never closed, so its number cannot be reused by a file the isolate's late
answer would then write into.

Two kinds of answers:

- *loud*: the event loop watches the eventfd (``add_reader``) and hands the answer to a
  callback on the loop; a thread that may block (``V8Engine(step_wait=...)``) can take it
  first with :meth:`NativeAnswers.wait`;
- *quiet*: nobody is woken; the answer is read when asked for (:meth:`NativeAnswers.take`),
  which the engine does only once a task posted after it answered (the isolate's thread
  answers in order).
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import os
import platform
import select
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from codemode.engine.spin import poll_until
from codemode.errors import EngineError

logger = logging.getLogger("codemode.engine.v8")

# Set to "python" to take answers through mini-racer's own Python callback (the portable way).
ENV = "CODEMODE_V8_ANSWERS"

# Eventfds kept for reuse; more are closed when given back.
_POOL_KEEP = 256

_EVENTFD_FLAGS = getattr(os, "EFD_CLOEXEC", 0) | getattr(os, "EFD_NONBLOCK", 0)


def available() -> bool:
    """Whether answers can be taken natively here: Linux with eventfds, a calling convention
    where the two signatures agree (x86-64, arm64), mini-racer's callback type as pinned, and
    not turned off with ``CODEMODE_V8_ANSWERS=python``."""
    if os.environ.get(ENV, "native") == "python":
        return False
    if not sys.platform.startswith("linux") or not hasattr(os, "eventfd"):
        return False
    if platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64"):
        return False
    try:
        from py_mini_racer import _dll

        callback = _dll.MR_CALLBACK
        if tuple(callback._argtypes_) != (ctypes.c_uint64, _dll.RawValueHandle):
            return False
        if callback._restype_ is not None:
            return False
        return _eventfd_write_address() is not None
    except Exception:
        return False


_write_address: int | None = None


def _eventfd_write_address() -> int | None:
    global _write_address
    if _write_address is None:
        try:
            libc = ctypes.CDLL(None)
            _write_address = ctypes.cast(libc.eventfd_write, ctypes.c_void_p).value
        except (OSError, AttributeError):
            return None
    return _write_address


_callback: Any = None


def _native_callback() -> Any:
    """The context callback: ``eventfd_write`` as mini-racer's callback type (made once and
    kept for the process: a context calls it as long as it lives)."""
    global _callback
    if _callback is None:
        from py_mini_racer import _dll

        address = _eventfd_write_address()
        assert address is not None  # available() checked it
        _callback = _dll.MR_CALLBACK(address)
    return _callback


@contextlib.contextmanager
def native_context(loop: Any) -> Iterator[Any]:
    """A mini-racer context (as ``py_mini_racer._mini_racer._make_context`` makes it, for
    ``loop``) whose answers go to eventfds. mini-racer 0.14.1 internals (pinned)."""
    from py_mini_racer._context import Context, ContextType
    from py_mini_racer._dll import init_mini_racer
    from py_mini_racer._objects import ObjectFactoryImpl

    dll = init_mini_racer(ignore_duplicate_init=True)
    raw = ContextType(dll.mr_init_context(_native_callback()))
    try:
        yield Context(dll, raw, loop, ObjectFactoryImpl(), itertools.count(1))
    finally:
        dll.mr_free_context(raw)


class _FdPool:
    """Eventfds ready to carry one answer each (non-blocking, closed on exec). Safe from any
    thread: ``list.pop`` and ``list.append`` are atomic, and only opening and closing, which
    are rare, take the lock."""

    def __init__(self) -> None:
        self._free: list[int] = []
        self._lock = threading.Lock()
        self.opened = 0  # eventfds open now (in a pool or carrying an answer)

    def take(self) -> int:
        try:
            return self._free.pop()
        except IndexError:
            pass
        fd = os.eventfd(0, _EVENTFD_FLAGS)
        with self._lock:
            self.opened += 1
        return fd

    def give(self, fd: int) -> None:
        """Give back an eventfd whose one answer was read (never one that may still get one)."""
        if len(self._free) < _POOL_KEEP:
            self._free.append(fd)
            return
        with self._lock:
            self.opened -= 1
        os.close(fd)

    def idle(self) -> int:
        """Eventfds in this pool and in the event loops' (for tests)."""
        return len(self._free) + sum(len(w._idle) for w in list(_WATCHED.values()))


POOL = _FdPool()

# How many forks this process is from the one that imported this module (see
# _forget_after_fork).
_forks = [0]


def _forget_after_fork() -> None:
    """In a forked child: the pools' eventfds are the parent's too (the same open files), and
    the parent's isolates may still answer into them; the child closes its copies and makes
    its own."""
    _forks[0] += 1
    fds = POOL._free + [fd for w in list(_WATCHED.values()) for fd in w._idle]
    POOL._free = []
    POOL.opened = 0
    _WATCHED.clear()
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


class _Watched:
    """The eventfds an event loop watches (``add_reader``) for loud answers, kept registered
    between uses, so a step costs no registration: an idle one is never readable. Used on the
    loop's thread only. Once the loop is gone, its idle eventfds go back to :data:`POOL`."""

    def __init__(self, loop: Any) -> None:
        self._loop = loop
        self._idle: list[int] = []
        self.handlers: dict[int, Callable[[int], Any]] = {}
        weakref.finalize(loop, _give_all, self._idle, _forks[0])

    def take(self, handler: Callable[[int], Any]) -> int:
        if self._idle:
            fd = self._idle.pop()
        else:
            fd = POOL.take()
            try:
                self._loop.add_reader(fd, self._ready, fd)
            except BaseException:
                POOL.give(fd)
                raise
        self.handlers[fd] = handler
        return fd

    def give(self, fd: int) -> None:
        """Give back a watched eventfd whose one answer was read."""
        del self.handlers[fd]
        if len(self._idle) < _WATCHED_KEEP and not self._loop.is_closed():
            self._idle.append(fd)
            return
        if not self._loop.is_closed():
            self._loop.remove_reader(fd)
        POOL.give(fd)

    def _ready(self, fd: int) -> None:
        handler = self.handlers.get(fd)
        if handler is not None:
            handler(fd)
        else:  # pragma: no cover - an idle eventfd is never written to
            logger.error("an answer came on an idle eventfd %d; it is dropped", fd)
            _read(fd)


def _give_all(fds: list[int], forks: int) -> None:
    if forks != _forks[0]:
        return  # a loop of the parent's, collected in a forked child: not its eventfds
    for fd in fds:
        POOL.give(fd)
    fds.clear()


# Watched eventfds kept per event loop between uses.
_WATCHED_KEEP = 32

_WATCHED: weakref.WeakKeyDictionary[Any, _Watched] = weakref.WeakKeyDictionary()


def _watched(loop: Any) -> _Watched:
    watched = _WATCHED.get(loop)
    if watched is None:
        watched = _WATCHED[loop] = _Watched(loop)
    return watched


def _read(fd: int) -> bytes | None:
    """The 8 bytes written to ``fd`` (an address, in native order), or None if nothing was."""
    try:
        return os.read(fd, 8)
    except BlockingIOError:
        return None


class NativeAnswers:
    """The answers of one context's tasks, through eventfds (see the module's docstring).

    Ids handed out are eventfd numbers, passed to mini-racer as the task's callback id. Loud
    ids are watched by the context's event loop; their callbacks run there (or on a thread
    that took the answer with :meth:`wait`). A raw answer is a ``RawValueHandle`` that
    whoever gets it converts and frees (``Context._free``: a no-op once the isolate is being
    freed)."""

    def __init__(self, context: Any) -> None:
        from py_mini_racer._dll import RawValueHandle

        self._context = context
        self._loop = context.event_loop
        self._raw = RawValueHandle.from_buffer_copy  # the handle, from the 8 bytes read
        self._loud: dict[int, Callable[[Any], None] | None] = {}
        # Quiet ids posted and not read yet: given back once read, or after the isolate is
        # freed (every task has answered then).
        self._quiet: set[int] = set()
        self._lock = threading.Lock()  # _quiet: the reaper's thread drains it
        self._watched: _Watched | None = None

    # -------------------------------------------------------------- quiet

    def quiet_id(self) -> int:
        fd = POOL.take()
        with self._lock:
            self._quiet.add(fd)
        return fd

    def take(self, callback_id: int) -> Any:
        """The raw answer (None if it has not come: the id stays taken until it does; or if
        the isolate was freed meanwhile: then :meth:`after_free` has the id)."""
        with self._lock:  # never read an id after_free may have given back already
            if callback_id not in self._quiet:
                return None
            data = _read(callback_id)
            if data is None:
                return None
            self._quiet.discard(callback_id)
        POOL.give(callback_id)
        return self._raw(data)

    def discard(self, callback_id: int) -> None:
        """Forget a quiet id, freeing its answer if it came."""
        raw = self.take(callback_id)
        if raw is not None:
            self._context._free(raw)

    # -------------------------------------------------------------- loud

    def loud_id(self, callback: Callable[[Any], None], *, handoff: bool = False) -> int:
        """An id whose answer goes to ``callback`` on the event loop (or on a thread that
        takes it with :meth:`wait`; ``handoff`` is for the portable way's sake). On the event
        loop's thread only."""
        del handoff
        watched = self._watched
        if watched is None:
            watched = self._watched = _watched(self._loop)
        fd = watched.take(self._ready)
        self._loud[fd] = callback
        return fd

    def forget(self, callback_id: int) -> None:
        """Drop a loud id's callback: its answer, when it comes, is freed unread."""
        if callback_id in self._loud:
            self._loud[callback_id] = None

    def pending(self, callback_id: int) -> bool:
        """Whether a loud id's answer has not been handed to its callback yet."""
        return self._loud.get(callback_id) is not None

    def wait(self, callback_id: int, timeout: float) -> bool:
        """Block this thread up to ``timeout`` seconds for a loud id's answer; True if it came
        and went to its callback (on this thread), False if it will come through the loop."""
        if callback_id not in self._loud:
            return False
        poll = select.poll()
        poll.register(callback_id, select.POLLIN)
        if not poll.poll(max(int(timeout * 1000), 0)):
            return False
        return self._ready(callback_id)

    def spin(self, callback_id: int, seconds: float) -> bool:
        """Poll a loud id's answer without sleeping, up to ``seconds``: True if it came and
        went to its callback (on this thread). A thread that sleeps in ``epoll`` is woken
        through the kernel, which on a virtual machine costs tens of microseconds on both
        threads; an answer read by a thread that is still running costs neither. Each poll is
        a ``read`` that releases the GIL, so other Python threads are not held up."""
        if callback_id not in self._loud:
            return False
        ready = self._ready
        return poll_until(lambda: ready(callback_id), seconds)

    def _ready(self, fd: int) -> bool:
        """On the loop's thread (or the one in :meth:`wait`): take ``fd``'s answer and hand it
        to its callback."""
        if fd not in self._loud:
            return False
        data = _read(fd)
        if data is None:
            return False
        callback = self._loud.pop(fd)
        assert self._watched is not None
        self._watched.give(fd)
        raw = self._raw(data)
        if callback is None:
            self._context._free(raw)
        else:
            callback(raw)
        return True

    # -------------------------------------------------------------- blocking, on a thread

    def run_sync(self, method: Any, *args: Any, timeout: float) -> Any:
        """Post ``method(ctx, *args, id)`` and wait for its answer on this thread (never the
        event loop's), converted; ``EngineError`` if it does not come in ``timeout`` seconds
        (the id is then given back after the isolate is freed)."""
        context = self._context
        fd = self.quiet_id()
        method(context._ctx, *args, fd)
        poll = select.poll()
        poll.register(fd, select.POLLIN)
        raw = self.take(fd) if poll.poll(max(int(timeout * 1000), 0)) else None
        if raw is None:
            raise EngineError("a new V8 isolate did not answer")
        return context._value_handle_to_python(context._wrap_raw_handle(raw))

    def after_free(self) -> None:
        """Once the context is freed (every task has answered): read what the quiet ids got
        and give them back (the values went with the context)."""
        with self._lock:
            left, self._quiet = self._quiet, set()
        for fd in left:
            if _read(fd) is not None:
                POOL.give(fd)
            # else: never answered (cannot happen once the context is freed); kept open
