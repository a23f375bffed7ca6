"""Start a coroutine as a task whose first step runs at once (eager task start).

A nested call whose delegate answers without suspending (a plain function behind
``tools_delegate``, an ``async def`` that never awaits anything pending) should not cost an
asyncio task scheduled on the loop and a loop iteration to run it. Python 3.12 has eager tasks
(``eager_start``); Python 3.11 does not, and running the coroutine's first step from the caller
(``coro.send(None)``) is wrong: during that step ``asyncio.current_task()`` would be the
caller's task, so an ``asyncio.timeout`` in a tool would cancel the caller.

:func:`start_eager` does what 3.12's eager start does: it makes the task object first, makes it
the loop's current task, runs the first step, and puts the caller's task back. A coroutine that
finishes in that step leaves a finished task behind that was never scheduled; one that
suspends goes on as an ordinary task (the same object ``current_task()`` returned during its
first step: cancelling it, timeouts and ``cancelling()`` behave as for any task). See
docs/call-path.md.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from asyncio import futures as _futures
from asyncio import tasks as _tasks
from collections.abc import Coroutine
from typing import Any

__all__ = ["start_eager"]


if sys.version_info >= (3, 12):

    def start_eager(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], name: str | None = None
    ) -> asyncio.Future[Any]:
        """Run ``coro``'s first step now, as a task of its own; returns the task (done
        already if the coroutine finished without suspending)."""
        return asyncio.Task(coro, loop=loop, name=name, eager_start=True)  # type: ignore[call-arg,unused-ignore]

else:
    _PyTask: Any = getattr(_tasks, "_PyTask")  # noqa: B009 - private: not in typeshed
    _enter_task: Any = getattr(_tasks, "_enter_task")  # noqa: B009
    _leave_task: Any = getattr(_tasks, "_leave_task")  # noqa: B009
    _register_task: Any = getattr(_tasks, "_register_task")  # noqa: B009
    _task_name_counter: Any = getattr(_tasks, "_task_name_counter")  # noqa: B009
    _current_tasks: Any = getattr(_tasks, "_current_tasks")  # noqa: B009 - what current_task reads
    _PENDING: Any = getattr(_futures, "_PENDING")  # noqa: B009

    class _EagerTask(_PyTask):  # type: ignore[misc]
        """Python 3.11's pure-Python ``Task`` (the same class asyncio falls back to without its
        C accelerator), made without scheduling its first step: :meth:`start` runs it."""

        def __init__(
            self,
            coro: Coroutine[Any, Any, Any],
            loop: asyncio.AbstractEventLoop,
            name: str | None,
        ) -> None:
            # Task.__init__ of asyncio 3.11 minus `loop.call_soon(self.__step)` (start runs it)
            # and minus the registration (start registers the task if it goes on).
            _futures._PyFuture.__init__(self, loop=loop)  # type: ignore[attr-defined]
            if self._source_traceback:
                del self._source_traceback[-1]
            self._name = f"Task-{_task_name_counter()}" if name is None else str(name)
            self._num_cancels_requested = 0
            self._must_cancel = False
            self._fut_waiter = None
            self._coro = coro
            self._context = contextvars.copy_context()

        def start(self) -> None:
            loop = self._loop
            caller = _current_tasks.get(loop)
            if caller is not None:
                _leave_task(loop, caller)
            try:
                # __step enters this task as the loop's current task and leaves it again.
                self._context.run(self._Task__step)
            finally:
                if caller is not None:
                    _enter_task(loop, caller)
            if not self.done():
                _register_task(self)  # it goes on: asyncio.all_tasks() sees it

        def __del__(self) -> None:
            # The common end, a result nobody has to hear about, costs no call into asyncio's
            # finalizers (they warn only of a pending task or an unretrieved exception).
            if self._state == _PENDING or self._exception is not None:
                super().__del__()

    def start_eager(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], name: str | None = None
    ) -> asyncio.Future[Any]:
        """Run ``coro``'s first step now, as a task of its own; returns the task (done
        already if the coroutine finished without suspending)."""
        task = _EagerTask(coro, loop, name)
        task.start()
        return task  # type: ignore[no-any-return,unused-ignore]
