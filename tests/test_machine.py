"""Deterministic tests of the sans-IO cell state machine: no engine, no clock, no sleeps.

Each test feeds the machine a sequence of inputs, in the order they would happen on the event
loop, and checks the events callers receive and the effects the driver is asked to carry out.
"""

from __future__ import annotations

import pytest

from codemode import (
    AlreadyTerminating,
    BusyObserver,
    CellKind,
    ClosedCell,
    Completed,
    InvalidGeneration,
    MissingCell,
    Pending,
    PendingFrontier,
    ResumeOutcome,
    Terminated,
    TextItem,
    Yielded,
)
from codemode.cell.machine import (
    BeginSettling,
    CellMachine,
    Closed,
    CommitWrites,
    Decision,
    Phase,
    RunEngine,
    StopEngine,
    WakeObserver,
)


def T(*texts: str) -> tuple[TextItem, ...]:
    return tuple(TextItem(t) for t in texts)


def cont() -> CellMachine:
    return CellMachine("c1", CellKind.CONTINUING)


def paus() -> CellMachine:
    return CellMachine("p1", CellKind.PAUSABLE)


def out(m: CellMachine, *texts: str) -> None:
    for t in texts:
        m.output(TextItem(t))


def attach(m: CellMachine) -> int:
    r = m.observe()
    assert r.token is not None, r
    return r.token


def complete(m: CellMachine, error: str | None = None) -> list[object]:
    assert m.body_settled(error) == [BeginSettling()]
    return list(m.commit())


# ---------------------------------------------------------------- continuing: observation


def test_deadline_delivers_exactly_what_was_recorded() -> None:
    m = cont()
    out(m, "a")
    tok = attach(m)
    out(m, "b")
    assert m.observer_deadline(tok) == [WakeObserver(tok)]
    out(m, "c")  # after the deadline: goes to the next observation
    assert m.collect(tok) == Decision(event=Yielded(T("a", "b")))
    tok = attach(m)
    m.observer_deadline(tok)
    assert m.collect(tok).event == Yielded(T("c"))


def test_empty_yield_at_deadline() -> None:
    m = cont()
    tok = attach(m)
    m.observer_deadline(tok)
    assert m.collect(tok).event == Yielded(())


def test_yield_control_with_observer_ends_the_observation() -> None:
    m = cont()
    tok = attach(m)
    out(m, "a")
    assert m.yield_requested() == [WakeObserver(tok)]
    out(m, "b")
    assert m.observer_deadline(tok) == []  # already prepared: the deadline changes nothing
    assert m.collect(tok).event == Yielded(T("a"))


def test_initial_yield_boundary_is_stashed() -> None:  # scenario 28
    m = cont()
    out(m, "before")
    m.yield_requested()
    out(m, "after")
    complete(m)
    r = m.observe()
    assert r.event == Yielded(T("before"))
    r = m.observe()
    assert r.event == Completed(T("after"))
    assert r.effects == (Closed(),)
    assert m.phase is Phase.CLOSED
    with pytest.raises(MissingCell):
        m.observe()


def test_only_the_first_unattached_yield_stashes() -> None:
    m = cont()
    out(m, "a")
    m.yield_requested()
    out(m, "b")
    m.yield_requested()  # second unattached yield: output keeps accumulating
    out(m, "c")
    r = m.observe()
    assert r.event == Yielded(T("a"))
    tok = attach(m)
    m.observer_deadline(tok)
    assert m.collect(tok).event == Yielded(T("b", "c"))


def test_unattached_yield_after_a_delivery_does_nothing() -> None:  # scenario 30
    m = cont()
    tok = attach(m)
    m.observer_deadline(tok)
    m.collect(tok)
    out(m, "x")
    assert m.yield_requested() == []
    tok = attach(m)
    assert m.yield_requested() == [WakeObserver(tok)]  # attached: it does end the wait
    assert m.collect(tok).event == Yielded(T("x"))


def test_cancelled_wait_that_delivered_nothing_does_not_count() -> None:  # rule 7
    m = cont()
    tok = attach(m)
    m.observer_cancelled(tok)
    out(m, "a")
    m.yield_requested()  # still before any delivered event: stashes
    r = m.observe()
    assert r.event == Yielded(T("a"))


def test_cancelled_observer_gives_back_a_prepared_yield() -> None:
    m = cont()
    out(m, "a")
    tok = attach(m)
    m.observer_deadline(tok)
    out(m, "b")
    m.observer_cancelled(tok)
    tok = attach(m)
    m.observer_deadline(tok)
    assert m.collect(tok).event == Yielded(T("a", "b"))


def test_cancelled_observer_leaves_the_completion_buffered() -> None:
    m = cont()
    tok = attach(m)
    out(m, "a")
    effects = complete(m)
    assert WakeObserver(tok) in effects
    m.observer_cancelled(tok)
    assert m.phase is Phase.COMPLETED
    r = m.observe()
    assert r.event == Completed(T("a"))


def test_busy_observer_keeps_the_first_in_place() -> None:
    m = cont()
    tok = attach(m)
    with pytest.raises(BusyObserver, match="exec cell c1 already has an active observer"):
        m.observe()
    out(m, "a")
    complete(m)
    assert m.collect(tok) == Decision((Closed(),), Completed(T("a")))


def test_completion_with_observer_is_delivered_and_closes() -> None:
    m = cont()
    tok = attach(m)
    out(m, "x")
    effects = complete(m, "Error: boom")
    assert effects == [WakeObserver(tok)]
    assert m.collect(tok) == Decision((Closed(),), Completed(T("x"), "Error: boom"))


def test_completion_buffering() -> None:  # scenario 32
    m = cont()
    out(m, "done")
    complete(m)
    assert m.phase is Phase.COMPLETED and m.is_live
    r = m.observe()
    assert r.event == Completed(T("done"))
    with pytest.raises(MissingCell):
        m.observe()


def test_delivered_once_across_many_yields() -> None:  # scenario 35
    m = cont()
    delivered: list[TextItem] = []
    for i in range(3):
        tok = attach(m)
        out(m, f"a{i}", f"b{i}")
        m.yield_requested()
        ev = m.collect(tok).event
        assert isinstance(ev, Yielded)
        delivered.extend(ev.items)  # type: ignore[arg-type]
    out(m, "end")
    complete(m)
    r = m.observe()
    assert r.event is not None
    delivered.extend(r.event.items)  # type: ignore[union-attr,arg-type]
    assert tuple(delivered) == T("a0", "b0", "a1", "b1", "a2", "b2", "end")


# ---------------------------------------------------------------- writes and commit


def test_writes_commit_inside_the_commit_step() -> None:
    m = cont()
    m.store_written("k", 1)
    m.store_written("k", 2)
    m.store_written("j", [1])
    m.body_settled(None)
    assert m.commit() == [CommitWrites({"k": 2, "j": [1]})]


def test_failed_completion_commits_writes() -> None:  # scenario 23
    m = cont()
    m.store_written("k", 1)
    m.body_settled("Error: boom")
    assert m.commit() == [CommitWrites({"k": 1})]


def test_termination_before_commit_wins() -> None:  # scenario 63
    m = cont()
    m.store_written("k", 1)
    out(m, "a")
    m.body_settled(None)  # completion queued, waiting to commit
    r = m.terminate()
    assert r.event is None and r.effects == (StopEngine(),)
    assert m.commit() == []  # discarded: no writes, no event
    assert m.termination_finished() == Decision((Closed(),), items=T("a"))
    with pytest.raises(MissingCell):
        m.terminate()


def test_engine_loss_fails_without_writes() -> None:
    m = cont()
    m.store_written("k", 1)
    out(m, "a")
    assert m.engine_lost() == [BeginSettling()]
    assert m.commit() == []  # nothing to commit: writes discarded; no observer
    r = m.observe()
    assert r.event is not None
    assert r.event == Completed(T("a"), "exec runtime ended unexpectedly")


def test_engine_loss_keeps_an_unobserved_frontier() -> None:
    m = paus()
    out(m, "f")
    m.quiescent(("tool-1",))
    assert m.resume(1).outcome is ResumeOutcome.RESUMED  # resumed without observing
    m.engine_lost()
    m.commit()
    r = m.observe()
    assert r.event == Completed(T("f"), "exec runtime ended unexpectedly")


# ---------------------------------------------------------------- termination


def test_terminate_running_cell_returns_undelivered_and_observer_gets_nothing() -> None:
    m = cont()
    out(m, "a")
    tok = attach(m)
    r = m.terminate()
    assert r.event is None and r.token is None
    assert r.effects == (StopEngine(), WakeObserver(tok))
    assert m.collect(tok).event == Terminated(())
    with pytest.raises(AlreadyTerminating, match="exec cell c1 is already terminating"):
        m.terminate()
    with pytest.raises(ClosedCell, match="exec cell c1 closed unexpectedly"):
        m.observe()
    m.salvaged_output(TextItem("late"))  # produced before the stop, read by the salvage
    assert m.termination_finished() == Decision((Closed(),), items=T("a", "late"))


def test_terminate_includes_the_stash() -> None:
    m = cont()
    out(m, "a")
    m.yield_requested()
    out(m, "b")
    m.terminate()
    assert m.termination_finished().items == T("a", "b")


def test_terminate_after_commit_returns_the_completion() -> None:  # scenario 56
    m = cont()
    out(m, "a")
    complete(m)
    r = m.terminate()
    assert r.event == Completed(T("a"))
    assert r.effects == (Closed(),)
    with pytest.raises(MissingCell):
        m.terminate()


def test_terminate_while_observer_collects_completion_is_missing() -> None:
    m = cont()
    tok = attach(m)
    complete(m)
    with pytest.raises(MissingCell):
        m.terminate()
    assert m.collect(tok).event == Completed(())


def test_shutdown_gives_observer_the_undelivered_items() -> None:
    m = cont()
    out(m, "a")
    tok = attach(m)
    assert m.shutdown() == [StopEngine()]
    assert m.shutdown() == []  # idempotent while terminating
    m.salvaged_output(TextItem("b"))
    assert m.termination_finished() == Decision((WakeObserver(tok), Closed()))
    assert m.collect(tok).event == Terminated(T("a", "b"))


def test_shutdown_closes_a_buffered_completion() -> None:
    m = cont()
    complete(m)
    assert m.shutdown() == [Closed()]
    assert m.phase is Phase.CLOSED


def test_output_after_termination_is_ignored() -> None:
    m = cont()
    m.terminate()
    out(m, "late")
    m.store_written("k", 1)
    assert m.body_settled(None) == []
    assert m.termination_finished() == Decision((Closed(),))


# ---------------------------------------------------------------- pausable: frontiers


def test_first_frontier_and_repeatable_observation() -> None:  # scenario 39
    m = paus()
    out(m, "a")
    assert m.quiescent(("tool-1",)) == []
    f = PendingFrontier(1, T("a"), ("tool-1",))
    for _ in range(3):
        r = m.observe()
        assert r.event == Pending(f)
    assert not m.may_run


def test_frontier_wakes_an_attached_observer() -> None:
    m = paus()
    tok = attach(m)
    out(m, "a")
    assert m.quiescent(()) == [WakeObserver(tok)]
    assert m.collect(tok).event == Pending(PendingFrontier(1, T("a"), ()))


def test_continuing_cell_never_takes_a_frontier() -> None:
    m = cont()
    assert m.quiescent(("tool-1",)) == []
    assert m.may_run


def test_yield_control_is_a_noop_in_a_pausable_cell() -> None:
    m = paus()
    tok = attach(m)
    out(m, "a")
    assert m.yield_requested() == []
    m.quiescent(())
    assert m.collect(tok).event == Pending(PendingFrontier(1, T("a"), ()))


def test_resume_needs_new_work_before_the_next_frontier() -> None:  # docs/sessions.md
    m = paus()
    m.quiescent(("tool-1",))
    assert m.resume(1) == Decision((RunEngine(),), outcome=ResumeOutcome.RESUMED)
    assert m.may_run
    assert m.quiescent(("tool-1",)) == []  # nothing processed yet: no identical frontier
    assert m.may_run
    m.inputs_applied()
    out(m, "b")
    m.quiescent(("tool-2",))
    r = m.observe()
    assert r.event == Pending(PendingFrontier(2, T("b"), ("tool-2",)))


def test_unobserved_frontier_items_move_on_after_resume() -> None:
    m = paus()
    out(m, "a")
    m.quiescent(("tool-1",))
    m.resume(1)
    m.inputs_applied()
    out(m, "b")
    m.quiescent(())
    r = m.observe()
    assert r.event is not None
    assert r.event == Pending(PendingFrontier(2, T("a", "b"), ()))


def test_terminate_paused_cell_returns_unobserved_frontier_items() -> None:  # scenario 50
    m = paus()
    out(m, "a")
    m.quiescent(("tool-1",))
    m.terminate()
    assert m.termination_finished().items == T("a")


def test_terminate_paused_cell_after_observation_returns_nothing() -> None:  # scenario 45
    m = paus()
    out(m, "before")
    m.quiescent(())
    m.observe()
    m.terminate()
    assert m.termination_finished().items == ()


def test_pausable_writes_commit_only_at_completion() -> None:
    m = paus()
    m.store_written("k", 1)
    m.quiescent(())
    m.resume(1)
    m.inputs_applied()
    m.body_settled(None)
    assert m.commit() == [CommitWrites({"k": 1})]


# ---------------------------------------------------------------- the resume decision table


def at_frontier(gen: int) -> CellMachine:
    """A pausable machine whose current frontier has generation ``gen``."""
    m = paus()
    for g in range(1, gen + 1):
        m.inputs_applied()
        m.quiescent((f"tool-{g}",))
        if g < gen:
            assert m.resume(g).outcome is ResumeOutcome.RESUMED
    assert m.current_frontier is not None and m.current_frontier.generation == gen
    return m


@pytest.mark.parametrize(
    ("frontier", "last", "requested", "expected"),
    [
        # F exists
        (2, 1, 2, ResumeOutcome.RESUMED),
        (2, 1, 1, ResumeOutcome.ALREADY_RUNNING),
        (2, 1, 0, ResumeOutcome.ALREADY_RUNNING),
        (2, 1, 3, InvalidGeneration(cell_id="p1", requested=3, latest=2)),
        (1, None, 1, ResumeOutcome.RESUMED),
        (1, None, 2, InvalidGeneration(cell_id="p1", requested=2, latest=1)),
        # no F, L exists
        (None, 2, 2, ResumeOutcome.ALREADY_RUNNING),
        (None, 2, 1, ResumeOutcome.ALREADY_RUNNING),
        (None, 2, 3, InvalidGeneration(cell_id="p1", requested=3, latest=2)),
        # no F, no L
        (None, None, 1, InvalidGeneration(cell_id="p1", requested=1, latest=None)),
        (None, None, 0, InvalidGeneration(cell_id="p1", requested=0, latest=None)),
    ],
)
def test_resume_table(
    frontier: int | None, last: int | None, requested: int, expected: object
) -> None:
    if frontier is not None:
        m = at_frontier(frontier)
    elif last is not None:
        m = at_frontier(last)
        assert m.resume(last).outcome is ResumeOutcome.RESUMED  # running, no current frontier
    else:
        m = paus()  # running towards its first frontier
    if isinstance(expected, InvalidGeneration):
        with pytest.raises(InvalidGeneration) as info:
            m.resume(requested)
        assert (info.value.requested, info.value.latest) == (expected.requested, expected.latest)
        assert str(info.value) == str(expected)
    else:
        assert m.resume(requested).outcome is expected


def test_resume_table_closed_and_terminating() -> None:
    m = at_frontier(1)
    m.terminate()
    with pytest.raises(ClosedCell):
        m.resume(1)
    m.termination_finished()
    with pytest.raises(MissingCell):
        m.resume(1)


def test_two_resumes_of_one_generation_give_one_resumed() -> None:  # scenario 40
    m = at_frontier(1)
    outcomes = [m.resume(1).outcome, m.resume(1).outcome]
    assert outcomes == [ResumeOutcome.RESUMED, ResumeOutcome.ALREADY_RUNNING]


def test_invalid_generation_message_says_none() -> None:  # scenario 49
    m = paus()
    with pytest.raises(InvalidGeneration) as info:
        m.resume(1)
    assert str(info.value) == "exec cell p1 cannot resume generation 1; latest generation is none"


def test_observer_of_a_frontier_cleared_by_termination_still_gets_it() -> None:
    m = paus()
    tok = attach(m)
    out(m, "a")
    m.quiescent(())
    m.terminate()  # the frontier is being delivered: not repeated in the termination
    assert m.collect(tok).event == Pending(PendingFrontier(1, T("a"), ()))
    assert m.termination_finished().items == ()


def test_pausable_completion_buffered_then_closed() -> None:  # scenario 46
    m = paus()
    out(m, "done")
    complete(m)
    r = m.observe()
    assert r.event == Completed(T("done"))
    assert r.effects == (Closed(),)


def test_resume_racing_the_observer_of_that_frontier_delivers_once() -> None:
    m = paus()
    out(m, "before")
    tok = attach(m)
    m.quiescent(("tool-1",))  # prepared for the observer, not yet collected
    assert m.resume(1).outcome is ResumeOutcome.RESUMED
    assert m.collect(tok).event == Pending(PendingFrontier(1, T("before"), ("tool-1",)))
    m.inputs_applied()
    out(m, "done")
    complete(m)
    r = m.observe()
    assert r.event == Completed(T("done"))


def test_observer_cancelled_after_a_resume_gives_the_frontier_items_back() -> None:
    m = paus()
    out(m, "before")
    tok = attach(m)
    m.quiescent(("tool-1",))
    m.resume(1)
    m.observer_cancelled(tok)  # never collected: its items must not be lost
    m.inputs_applied()
    out(m, "done")
    complete(m)
    r = m.observe()
    assert r.event == Completed(T("before", "done"))
