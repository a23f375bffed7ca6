"""The cell machine's transition table (``codemode.cell.machine.TRANSITIONS``): every input in
every phase is refused, ignored as late, rejected as a driver bug (strict), or handled and leaves
the cell in a phase the table allows."""

from __future__ import annotations

import pytest

from codemode import AlreadyTerminating, BusyObserver, CellKind, ClosedCell, MissingCell, TextItem
from codemode.cell.machine import (
    STRICT_ENV,
    TRANSITIONS,
    BeginSettling,
    CellMachine,
    Decision,
    DriverBug,
    Phase,
    StopEngine,
    check_refused,
)
from codemode.cell.observers import refuse_second_observer


def machine(kind: CellKind = CellKind.CONTINUING, *, strict: bool = True) -> CellMachine:
    return CellMachine("c1", kind, strict=strict)


def terminating(m: CellMachine) -> CellMachine:
    assert m.terminate().event is None
    return m


def test_every_input_has_a_row_and_every_row_a_method() -> None:
    for name, row in TRANSITIONS.items():
        assert callable(getattr(CellMachine, name)), name
        assert set(row) == set(Phase), name
        for verdict in row.values():
            if verdict in ("late", "bug") or verdict.startswith("!"):
                continue
            for target in verdict.split("|"):
                assert target == "=" or Phase(target), (name, verdict)
    public = {
        name
        for name in vars(CellMachine)
        if not name.startswith("_") and callable(vars(CellMachine)[name])
    }
    assert public == set(TRANSITIONS)


def test_the_test_suite_runs_strict_machines() -> None:
    import os

    assert os.environ.get(STRICT_ENV) == "1"
    assert CellMachine("c", CellKind.CONTINUING).strict


def test_a_driver_bug_raises_in_a_strict_machine_and_is_ignored_otherwise() -> None:
    with pytest.raises(DriverBug, match="commit while running"):
        machine().commit()
    assert machine(strict=False).commit() == []
    paused = machine(CellKind.PAUSABLE)
    paused.quiescent(())
    assert paused.is_paused
    with pytest.raises(DriverBug, match="body_settled while paused"):
        paused.body_settled(None)
    with pytest.raises(DriverBug, match="termination_finished while running"):
        machine().termination_finished()
    assert machine(strict=False).termination_finished() == Decision()


def test_late_inputs_are_ignored_even_when_strict() -> None:
    m = terminating(machine())
    assert m.output(TextItem("late")) == []
    assert m.body_settled(None) == []
    assert m.commit() == []
    assert m.shutdown() == []
    assert m.termination_finished().items == ()  # the late output was not recorded
    assert m.phase is Phase.CLOSED


def test_refusals_come_from_the_table() -> None:
    m = terminating(machine())
    with pytest.raises(ClosedCell):
        m.observe()
    with pytest.raises(AlreadyTerminating):
        m.terminate()
    m.termination_finished()
    for call in (m.observe, m.terminate, lambda: m.resume(1), lambda: m.approve("tool-1")):
        with pytest.raises(MissingCell):
            call()


def test_a_driver_without_a_machine_is_refused_by_the_same_table() -> None:
    # RemoteSession asks check_refused while its own terminate of a cell is in flight.
    with pytest.raises(ClosedCell, match="exec cell c9 closed unexpectedly"):
        check_refused("observe", Phase.TERMINATING, "c9")
    with pytest.raises(ClosedCell):
        check_refused("resume", Phase.TERMINATING, "c9")
    with pytest.raises(AlreadyTerminating, match="exec cell c9 is already terminating"):
        check_refused("terminate", Phase.TERMINATING, "c9")
    with pytest.raises(MissingCell, match="exec cell c9 not found"):
        check_refused("approve", Phase.CLOSED, "c9")
    for name, row in TRANSITIONS.items():
        for phase, verdict in row.items():
            if not verdict.startswith("!"):
                check_refused(name, phase, "c9")  # not refused: returns


def test_one_observer_at_a_time() -> None:
    refuse_second_observer("c9", False)
    with pytest.raises(BusyObserver, match="exec cell c9 already has an active observer"):
        refuse_second_observer("c9", True)
    m = machine()
    token = m.observe().token
    assert token is not None
    with pytest.raises(BusyObserver):
        m.observe()
    m.observer_cancelled(token)
    assert m.observe().token is not None  # the place is free again


def test_queries_instead_of_phase_values() -> None:
    m = machine(CellKind.PAUSABLE)
    assert m.may_run and m.takes_results and not m.is_paused
    m.quiescent(())
    assert m.is_paused and m.takes_results and not m.may_run
    m = machine()
    assert m.body_settled(None) == [BeginSettling()]
    assert not m.takes_results and not m.is_paused and m.is_live
    assert m.terminate() == Decision((StopEngine(),))
