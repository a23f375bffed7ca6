"""Polling for a quick answer instead of sleeping for it (docs/call-path.md, "Polling for a
quick answer").

On a virtual machine, waking a thread that sleeps in the kernel (``epoll``, ``poll``, a futex)
costs tens of microseconds, on the waking thread's side and the sleeping one's: more than a
quick step of a cell takes. A thread that expects an answer within microseconds, and has
nothing else to do, polls for it for a bounded time first, and sleeps only after that.

The rules every user of this module keeps:

- it polls only when its event loop has nothing else ready (:func:`loop_busy`), and only after
  the loop took one turn since the request was made, so every other task still runs;
- it polls at most a fixed budget (well under a millisecond), so other I/O waits at most that;
- it stops polling while answers take longer than the budget (:func:`still_quick`), so a slow
  exchange does not spend the budget in vain at every step, and does not poll for an exchange
  that carries many items (:data:`QUICK_ITEMS`: a step with a thousand results takes
  milliseconds);
- each poll is a system call that releases the GIL, so other Python threads are not held up,
  and between two polls the thread yields its CPU (:func:`yield_cpu`): a thread that waits for
  that CPU (the isolate's, a worker's, on a machine with fewer cores than busy threads) runs
  first, and the poller goes on at once when none does.
"""

from __future__ import annotations

import asyncio
import os
import select
import time
from collections.abc import Callable

# The most any caller may poll for one answer (seconds).
MAX_SPIN = 0.001

# An exchange that carries more items than this (tool results to a step, events in a report)
# is not polled for.
QUICK_ITEMS = 16


def _no_yield() -> None:
    """Where the OS has no ``sched_yield``: poll without yielding."""


yield_cpu = getattr(os, "sched_yield", _no_yield)


def check_spin(name: str, value: float) -> float:
    """``value`` as a float, or ``ValueError`` if it is not between 0 and :data:`MAX_SPIN`."""
    if isinstance(value, bool) or not 0.0 <= value <= MAX_SPIN:
        raise ValueError(f"{name} must be between 0 and {MAX_SPIN} seconds")
    return float(value)


def loop_busy(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop`` has callbacks ready to run (asyncio's own loops keep them in
    ``_ready``); any other kind of loop counts as busy, so nothing polls on it."""
    ready = getattr(loop, "_ready", None)
    return ready is None or len(ready) > 0


def still_quick(elapsed: float, budget: float) -> bool:
    """Whether an exchange that took ``elapsed`` seconds (without polling, it includes the
    wake-up) is quick enough to poll for the next one."""
    return elapsed <= 2 * budget


def poll_until(ready: Callable[[], bool], seconds: float) -> bool:
    """Call ``ready`` until it returns True (then True) or ``seconds`` have passed (then
    False), yielding the CPU (:func:`yield_cpu`) between two calls."""
    if ready():
        return True
    clock = time.perf_counter
    end = clock() + seconds
    pause = yield_cpu
    while clock() < end:
        pause()
        if ready():
            return True
    return False


class ReadablePoll:
    """Polls one file descriptor for readability without sleeping."""

    __slots__ = ("_poll",)

    def __init__(self, fd: int) -> None:
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)

    def spin(self, seconds: float) -> bool:
        """Poll up to ``seconds``; True once the descriptor is readable (or closed)."""
        poll = self._poll.poll
        return poll_until(lambda: bool(poll(0)), seconds)
