"""Issue 12 point 4: an observation cancelled by its caller, then the cell terminated, over a real
``codemode serve`` child. The server may have answered the cancelled ``cell/wait`` first; the
event the client keeps for the next observer must not be dropped by ``terminate``. Nothing is
lost and nothing is delivered twice, in every trial."""

from __future__ import annotations

import asyncio
import contextlib
import random

from codemode import Completed, Pending, RemoteSession, Terminated, TextItem, Yielded
from conftest import BLOCK, RecordingDelegate, request

TRIALS = 60


def _texts(event: Yielded | Completed | Terminated) -> list[str]:
    return [item.text for item in event.items if isinstance(item, TextItem)]


async def test_cancelled_wait_then_terminate_keeps_the_output(
    delegate: RecordingDelegate,
) -> None:
    rng = random.Random(12)
    session = await RemoteSession.spawn(delegate)
    lost: list[int] = []
    twice: list[int] = []
    try:
        for trial in range(TRIALS):
            cell = await session.create_cell(
                request(f'text("out-{trial}"); await tools.block({{}});', BLOCK)
            )
            await delegate.wait_calls(trial + 1)  # the text was produced before the call
            waiter = asyncio.ensure_future(session.wait(cell, 0.02))
            # Cancel around the moment the server answers (its budget is 20 ms).
            await asyncio.sleep(rng.uniform(0.0, 0.06))
            waiter.cancel()
            seen: list[str] = []
            with contextlib.suppress(asyncio.CancelledError):
                seen += _texts(await waiter)
            seen += _texts(await asyncio.wait_for(session.terminate(cell), 20))
            count = seen.count(f"out-{trial}")
            if count == 0:
                lost.append(trial)
            elif count > 1:
                twice.append(trial)
    finally:
        await asyncio.wait_for(session.shutdown(), 20)
    assert lost == [], f"{len(lost)} of {TRIALS} trials lost the output: {lost}"
    assert twice == [], f"{len(twice)} of {TRIALS} trials delivered it twice: {twice}"


async def test_cancelled_wait_to_pending_then_terminate_keeps_the_output() -> None:
    rng = random.Random(13)
    delegate = RecordingDelegate()
    session = await RemoteSession.spawn(delegate)
    counts: list[int] = []
    try:
        for trial in range(TRIALS // 2):
            cell = await session.create_pausable_cell(
                request(f'text("out-{trial}"); await tools.block({{}});', BLOCK)
            )
            await delegate.wait_calls(trial + 1)
            waiter = asyncio.ensure_future(session.wait_to_pending(cell))
            await asyncio.sleep(rng.uniform(0.0, 0.012))
            waiter.cancel()
            seen: list[str] = []
            with contextlib.suppress(asyncio.CancelledError):
                event = await waiter
                assert isinstance(event, Pending)
                seen += [i.text for i in event.frontier.items if isinstance(i, TextItem)]
            seen += _texts(await asyncio.wait_for(session.terminate(cell), 20))
            counts.append(seen.count(f"out-{trial}"))
    finally:
        await asyncio.wait_for(session.shutdown(), 20)
    assert counts == [1] * (TRIALS // 2), counts
