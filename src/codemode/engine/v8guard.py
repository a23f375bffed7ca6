"""One rule for every mini-racer context codemode makes: a task's answer that arrives after the
context's event loop closed is dropped, never raised on the isolate's thread."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

# mini-racer's callback id of uncancelable tasks (0.14.1, pinned): their answers go to a queue
# that a thread reads (``_non_cancelable_mr_task_results_queue``), not to the event loop, so
# they are handed over whether the loop is open or not.
SYNC_CALLBACK_ID = 0


def drop_answers_after_loop_close(context: Any) -> None:
    """From now on, an answer of ``context``'s isolate that arrives once its event loop is
    closed is dropped: nobody waits for it any more (a task abandoned when its loop ended, such
    as an isolate still being made for the pool), and its value goes with the context.

    mini-racer 0.14.1 internals (pinned): every task's answer reaches Python through
    ``Context.handle_callback_from_v8``, on the isolate's thread inside a ctypes callback, which
    hands it to the loop with ``call_soon_threadsafe``; on a closed loop that raised "Event loop
    is closed", printed as "Exception ignored on calling ctypes callback function". Install it
    before the context runs anything; later wrappers (the V8 engine's quiet results) call it."""
    wake = context.handle_callback_from_v8
    loop = context.event_loop

    def handle_callback_from_v8(callback_id: int, raw: Any) -> None:
        if callback_id == SYNC_CALLBACK_ID:
            wake(callback_id, raw)
        else:
            to_loop(loop, wake, callback_id, raw)

    object.__setattr__(context, "handle_callback_from_v8", handle_callback_from_v8)


def to_loop(loop: asyncio.AbstractEventLoop, hand_over: Callable[..., Any], *args: Any) -> None:
    """Call ``hand_over(*args)``, which hands an answer to ``loop`` from the isolate's thread
    (``call_soon_threadsafe``, directly or through mini-racer); dropped once the loop is closed
    (nobody waits for it any more), even when it closes between the check and the hand-over."""
    if loop.is_closed():
        return
    try:
        hand_over(*args)
    except RuntimeError:
        if not loop.is_closed():
            raise
