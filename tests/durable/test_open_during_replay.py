"""``open`` returns once every recovered cell is re-admitted and its replay is over, or at the
latest ``REPLAY_GRACE`` seconds after (docs/durability.md, "Replay"): a cell whose recorded
JavaScript spins holds up no one but its own callers, each operation on a cell waits for that
cell's replay (a ``wait`` at most its budget), and the replay goes on under the cell's own
limits."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from durable_support import (  # the fixtures: imported for pytest to find them
    Runtimes,
    backend_fixture,  # noqa: F401
    postgres_server_fixture,  # noqa: F401
    runtimes_fixture,  # noqa: F401
)

from codemode import (
    ApprovalRequest,
    CellLimits,
    Completed,
    Pending,
    Terminated,
    TextItem,
    ToolDefinition,
    Yielded,
)
from codemode.cell.journal import STEP
from codemode.engine.base import limit_error_text
from codemode.store import SessionStore
from conftest import RecordingDelegate, request

HANG = 30.0  # a hang guard, far below the spinning cell's CPU limit

# A cell that delivers two items (each at the end of a step), then spins in the step that took
# its second call's answer.
SPINNER = 'text("s0"); await tools.echo({}); text("s1"); await tools.echo({}); while (true) {}'
PAUSED = 'text("p"); const a = await tools.echo({k: "a"}); text(a.k);'


def texts(items: tuple[object, ...]) -> list[str]:
    return [item.text for item in items if isinstance(item, TextItem)]


async def recorded_steps(store: SessionStore, session_id: str, cell_id: str) -> int:
    """How many engine steps of the cell its journal holds."""
    return sum(1 for e in await store.read_journal(session_id, cell_id) if e.kind == STEP)


async def spinning_session(runtimes: Runtimes, limits: CellLimits) -> tuple[str, str, str]:
    """A suspended session with a spinning cell whose two items were delivered, and a pausable
    cell at its first frontier (delivered): (session id, spinner id, paused id)."""
    first = RecordingDelegate()
    first.release()
    rt = runtimes.make(first, limits=limits)
    spinner = await rt.create_cell(request(SPINNER))
    paused = await rt.create_pausable_cell(request(PAUSED))
    items: list[str] = []
    while items != ["s0", "s1"]:
        event = await rt.wait(spinner, 0.2)
        assert isinstance(event, Yielded), event
        items += texts(event.items)
    frontier = await rt.wait_to_pending(paused)
    assert isinstance(frontier, Pending) and texts(frontier.frontier.items) == ["p"]
    await rt.suspend()
    return rt.session_id, spinner.cell_id, paused.cell_id


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_open_returns_while_a_recovered_cell_spins_and_the_others_are_served(
    runtimes: Runtimes,
) -> None:
    sid, spinner_id, paused_id = await spinning_session(runtimes, CellLimits(max_cpu_seconds=100))
    second = RecordingDelegate()
    second.release()
    rt2 = runtimes.make(second, sid)
    # The spinner's replay spins for up to 100 s; open waits for it REPLAY_GRACE seconds.
    await asyncio.wait_for(rt2.open(), HANG)
    spinner = rt2.cell(spinner_id)
    paused = rt2.pausable_cell(paused_id)

    # The spinner, still replaying (or spinning past its record): nothing new to deliver, and
    # a wait keeps its budget.
    event = await asyncio.wait_for(rt2.wait(spinner, 0.2), HANG)
    assert event == Yielded(())
    assert rt2.awaiting_approval(spinner) == ()
    assert rt2.is_live(spinner_id)

    # The other recovered cell and new cells are served meanwhile.
    frontier = await asyncio.wait_for(rt2.wait_to_pending(paused), HANG)
    assert isinstance(frontier, Pending) and frontier.frontier.generation == 1
    assert texts(frontier.frontier.items) == ["p"]
    await rt2.resume(paused, 1)
    end = await asyncio.wait_for(rt2.wait_to_pending(paused), HANG)
    assert isinstance(end, Completed) and end.error_text is None and texts(end.items) == ["a"]
    fresh = await rt2.create_cell(request('text("new")'))
    done = await asyncio.wait_for(rt2.wait(fresh, HANG), HANG)
    assert isinstance(done, Completed) and texts(done.items) == ["new"]

    # The spinner is still live; terminating it stops it at once, with nothing delivered twice.
    assert rt2.is_live(spinner_id)
    assert await asyncio.wait_for(rt2.terminate(spinner), HANG) == Terminated(())
    assert not rt2.is_live(spinner_id)
    assert [c.call_id for c in second.calls] == []  # recorded calls never asked again
    await rt2.shutdown()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_replay_goes_on_under_the_cells_own_cpu_limit(runtimes: Runtimes) -> None:
    """The reopened session keeps its recorded limits: the spinner's replay spins until its
    ``max_cpu_seconds``, then the cell completes with the limit's error, without repeating the
    output it had delivered; ``open`` did not wait for it."""
    limits = CellLimits(max_cpu_seconds=3.0)
    sid, spinner_id, paused_id = await spinning_session(runtimes, limits)
    rt2 = runtimes.make(RecordingDelegate(), sid)
    await asyncio.wait_for(rt2.open(), HANG)
    assert rt2.is_live(spinner_id)
    spinner = rt2.cell(spinner_id)
    event = await asyncio.wait_for(rt2.wait(spinner, HANG), HANG + 5)
    assert event == Completed((), limit_error_text(limits, "max_cpu_seconds")), event
    assert rt2.is_live(paused_id)
    await rt2.shutdown()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_terminate_of_a_replaying_pausable_cell_delivers_nothing_twice(
    runtimes: Runtimes,
) -> None:
    """A recovered pausable cell's delivered items are known once its replay passed its
    delivered frontiers, so ``terminate`` waits for the replay (at the latest until the
    spinning cell's CPU limit ends it) and answers with only what was never delivered."""
    limits = CellLimits(max_cpu_seconds=3.0)
    first = RecordingDelegate()
    first.release()
    rt = runtimes.make(first, limits=limits)
    cell = await rt.create_pausable_cell(
        request('text("p0"); await tools.echo({}); text("p1"); while (true) {}')
    )
    frontier = await rt.wait_to_pending(cell)
    assert isinstance(frontier, Pending) and texts(frontier.frontier.items) == ["p0"]
    store = runtimes.backend.make()
    steps_at_frontier = await recorded_steps(store, rt.session_id, cell.cell_id)
    await rt.resume(cell, 1)
    await first.wait_calls(1)
    # The answer is recorded before the step that applies it runs; suspending before that
    # would leave the call unanswered (asked again on reopen), which is another scenario.
    # Polled: the record lands in the store, which has no event to wait on.
    while await recorded_steps(store, rt.session_id, cell.cell_id) == steps_at_frontier:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    await store.close()
    await rt.suspend()  # spinning, "p1" produced in the spinning step: never delivered
    rt2 = runtimes.make(RecordingDelegate(), rt.session_id)
    await asyncio.wait_for(rt2.open(), HANG)
    event = await asyncio.wait_for(rt2.terminate(rt2.pausable_cell(cell.cell_id)), HANG)
    # Terminated, or ended by its CPU limit first (where the replay stops): "p1" once, no "p0".
    assert texts(event.items) == ["p1"], event
    assert isinstance(event, Terminated) or event == Completed(
        (TextItem("p1"),), limit_error_text(limits, "max_cpu_seconds")
    ), event
    await rt2.shutdown()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_awaiting_approval_during_a_replay_gives_the_records_undecided_holds(
    runtimes: Runtimes,
) -> None:
    """While a recovered cell is still replaying after ``open`` returned (it spins), its held
    calls are those its record holds and does not decide: a call approved before the suspend is
    not among them, one still held is, with its tool and input."""
    guarded = ToolDefinition("guarded", "needs approval", needs_approval=True)
    echo = ToolDefinition("echo", "Returns its input.")
    first = RecordingDelegate()
    first.release()
    rt = runtimes.make(first, limits=CellLimits(max_cpu_seconds=100))
    cell = await rt.create_cell(
        request(
            "const a = tools.guarded({n: 1}); const b = tools.guarded({n: 2});"
            "await tools.echo({}); while (true) {}",
            guarded,
            echo,
        )
    )
    held = (
        ApprovalRequest(cell.cell_id, "tool-1", guarded, {"n": 1}),
        ApprovalRequest(cell.cell_id, "tool-2", guarded, {"n": 2}),
    )
    async with asyncio.timeout(HANG):
        while rt.awaiting_approval(cell) != held:
            await rt.wait(cell, 0.05)
        await rt.approve(cell, "tool-1")
        await first.wait_calls(2)  # echo and the approved call
    await rt.suspend()

    rt2 = runtimes.make(RecordingDelegate(), rt.session_id)
    await asyncio.wait_for(rt2.open(), HANG)  # after REPLAY_GRACE: the replay spins on
    spinner = rt2.cell(cell.cell_id)
    assert await asyncio.wait_for(rt2.wait(spinner, 0.1), HANG) == Yielded(())
    assert rt2.awaiting_approval(spinner) == held[1:]
    await asyncio.wait_for(rt2.terminate(spinner), HANG)
    await rt2.shutdown()
