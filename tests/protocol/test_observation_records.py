"""The protocol server's observation records (``codemode.protocol.observations``), sans-IO."""

from __future__ import annotations

import pytest

import codemode.protocol.observations as observations_module
from codemode import BusyObserver, ObservationConflict
from codemode.protocol.observations import (
    ObservationRecords,
    ObservationRequest,
    ObservationState,
)
from codemode.protocol.rpc import RpcError

COMPLETED = {"type": "completed", "items": []}
YIELDED = {"type": "yielded", "items": []}


def wait(cell: str, generation: int, ms: int = 10) -> ObservationRequest:
    return ObservationRequest("cell/wait", "s1", cell, generation, ms)


def records(live: frozenset[str] = frozenset()) -> ObservationRecords:
    return ObservationRecords(lambda cell_id: cell_id in live)


def test_numbers_start_at_zero_and_increase_by_one() -> None:
    r = records()
    with pytest.raises(
        ObservationConflict, match="first observation for cell c must use generation 0"
    ):
        r.observe(wait("c", 1))
    record, new = r.observe(wait("c", 0))
    assert new and record.state is ObservationState.PENDING
    r.finish(record, result=YIELDED, terminal=False)
    with pytest.raises(
        ObservationConflict, match="expected observation generation 1 for cell c, got 2"
    ):
        r.observe(wait("c", 2))
    nxt, new = r.observe(wait("c", 1))
    assert new and nxt.generation == 1


def test_next_number_while_pending_is_busy() -> None:
    r = records()
    r.observe(wait("c", 0))
    with pytest.raises(BusyObserver):
        r.observe(wait("c", 1))


def test_replay_joins_or_answers_the_same_record() -> None:
    r = records()
    record, _ = r.observe(wait("c", 0))
    again, new = r.observe(wait("c", 0))
    assert again is record and not new
    r.finish(record, result=COMPLETED, terminal=True)
    again, new = r.observe(wait("c", 0))
    assert again is record and not new and again.outcome() == COMPLETED
    with pytest.raises(ObservationConflict, match="was reused for a different request"):
        r.observe(wait("c", 0, ms=20))


def test_release_rules() -> None:
    r = records()
    record, _ = r.observe(wait("c", 0))
    with pytest.raises(ObservationConflict, match="is still pending"):
        r.release("c", 0)
    with pytest.raises(ObservationConflict, match="cannot release future observation generation 1"):
        r.release("c", 1)
    r.finish(record, result=YIELDED, terminal=False)
    with pytest.raises(ObservationConflict, match="is not terminal"):
        r.release("c", 0)
    second, _ = r.observe(wait("c", 1))
    r.release("c", 0)  # older: a no-op
    r.finish(second, error={"code": -32001, "message": "gone"}, terminal=True)
    with pytest.raises(RpcError):
        second.outcome()
    r.release("c", 1)
    r.release("c", 1)  # twice: a no-op
    assert second.state is ObservationState.RELEASED
    with pytest.raises(ObservationConflict, match="was released"):
        r.observe(wait("c", 1))


def test_the_oldest_unreleased_terminal_outcome_is_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(observations_module, "MAX_TERMINAL_RECORDS", 2)
    r = records()
    finished = []
    for cell in "abc":
        record, _ = r.observe(wait(cell, 0))
        r.finish(record, result=COMPLETED, terminal=True)
        finished.append(record)
    assert [x.state for x in finished] == [
        ObservationState.RELEASED,
        ObservationState.FINISHED,
        ObservationState.FINISHED,
    ]


def test_records_of_closed_cells_are_pruned_beyond_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(observations_module, "MAX_RECORDS", 2)
    r = records(live=frozenset({"live"}))
    for cell in ("live", "closed", "pending"):
        record, _ = r.observe(wait(cell, 0))
        if cell != "pending":
            r.finish(record, result=COMPLETED, terminal=True)
    assert set(r.records) == {"live", "pending"}
