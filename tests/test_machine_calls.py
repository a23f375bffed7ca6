"""Deterministic tests of the nested-call rules of the cell state machine: the concurrency bound
(calls beyond ``max_parallel`` wait in issue order) and approvals (held calls, approve, reject).

No engine, no clock: each test feeds the machine inputs in event-loop order and checks the
effects (which calls reach the delegate, when) and the events callers receive.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codemode import (
    ApprovalRequest,
    CellKind,
    Completed,
    MissingCell,
    NestedToolCall,
    NotAwaitingApproval,
    Pending,
    TextItem,
    ToolDefinition,
    Yielded,
)
from codemode.cell.machine import (
    BeginSettling,
    CellMachine,
    DispatchCall,
    Phase,
    RejectCall,
    StopEngine,
    WakeObserver,
    call_number,
)

PLAIN = ToolDefinition("plain")
GATED = ToolDefinition("delete_file", needs_approval=True)


def call(
    m: CellMachine, n: int, tool: ToolDefinition = PLAIN, arg: object = None
) -> NestedToolCall:
    return NestedToolCall(m.cell_id, f"tool-{n}", tool, {"n": n} if arg is None else arg)


def dispatched(effects: Sequence[object]) -> list[str]:
    return [e.call.call_id for e in effects if isinstance(e, DispatchCall)]


def attach(m: CellMachine) -> int:
    r = m.observe()
    assert r.token is not None, r
    return r.token


# ---------------------------------------------------------------- the concurrency bound


def test_calls_beyond_the_bound_wait_in_issue_order() -> None:
    m = CellMachine("c1", CellKind.CONTINUING, max_parallel=2)
    assert dispatched(m.call_issued(call(m, 1))) == ["tool-1"]
    assert dispatched(m.call_issued(call(m, 2))) == ["tool-2"]
    for n in (3, 4, 5):
        assert m.call_issued(call(m, n)) == []
    assert m.calls_at_delegate == 2
    assert m.calls_queued == ("tool-3", "tool-4", "tool-5")
    # The second call settles first: its slot goes to the oldest waiting call.
    assert dispatched(m.call_returned("tool-2")) == ["tool-3"]
    assert dispatched(m.call_returned("tool-1")) == ["tool-4"]
    assert dispatched(m.call_returned("tool-3")) == ["tool-5"]
    assert m.call_returned("tool-4") == []
    assert m.calls_at_delegate == 1 and m.calls_queued == ()


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([CellKind.CONTINUING, CellKind.PAUSABLE]),
    st.integers(1, 4),
    st.lists(st.booleans(), min_size=1, max_size=12),
    st.integers(0, 3),
)
def test_a_run_of_calls_issued_at_once_is_the_calls_one_by_one(
    kind: CellKind, bound: int, gated: list[bool], observed: int
) -> None:
    """``calls_issued`` (a report's run of calls, as the actor issues it) dispatches the same
    calls in the same order, queues and holds the same, as ``call_issued`` of each in turn,
    with or without an observation in progress."""
    one, batch = (CellMachine("c1", kind, max_parallel=bound) for _ in range(2))
    for m in (one, batch):
        for n in range(1, observed + 1):  # calls before, at the delegate or queued
            m.call_issued(call(m, n))
        if kind is CellKind.CONTINUING:
            attach(m)  # an observation in progress: a held call ends it
    calls = [call(one, observed + i + 1, GATED if g else PLAIN) for i, g in enumerate(gated)]
    singly = [e for c in calls for e in one.call_issued(c)]
    at_once = batch.calls_issued(calls)
    assert dispatched(at_once) == dispatched(singly)
    assert sorted(map(repr, at_once)) == sorted(map(repr, singly))  # the same effects
    assert batch.calls_queued == one.calls_queued
    assert batch.awaiting_approval == one.awaiting_approval
    assert batch.calls_at_delegate == one.calls_at_delegate
    if observed:  # a slot freed afterwards goes to the same call
        assert dispatched(batch.call_returned("tool-1")) == dispatched(one.call_returned("tool-1"))
    assert batch.calls_queued == one.calls_queued


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([CellKind.CONTINUING, CellKind.PAUSABLE]),
    st.integers(1, 4),
    st.integers(1, 12),
    st.data(),
)
def test_calls_returned_at_once_free_their_slots_as_one_by_one(
    kind: CellKind, bound: int, issued: int, data: st.DataObject
) -> None:
    """``calls_returned`` (the calls a report started that answered at once) hands the freed
    slots to the same waiting calls, in the same order, as ``call_returned`` of each."""
    one, batch = (CellMachine("c1", kind, max_parallel=bound) for _ in range(2))
    for m in (one, batch):
        m.calls_issued([call(m, n) for n in range(1, issued + 1)])
    at_delegate = [f"tool-{n}" for n in range(1, min(bound, issued) + 1)]
    ids = data.draw(st.lists(st.sampled_from(at_delegate), unique=True, min_size=1))
    singly = [e for call_id in ids for e in one.call_returned(call_id)]
    assert dispatched(batch.calls_returned(ids)) == dispatched(singly)
    assert batch.calls_queued == one.calls_queued
    assert batch.calls_at_delegate == one.calls_at_delegate


def test_a_paused_cell_keeps_feeding_the_delegate() -> None:
    m = CellMachine("p1", CellKind.PAUSABLE, max_parallel=1)
    m.call_issued(call(m, 1))
    m.call_issued(call(m, 2))
    m.quiescent(("tool-1", "tool-2"))
    assert m.phase is Phase.PAUSED
    # Queued calls are issued calls: a slot freed while paused is used at once (docs/sessions.md).
    assert dispatched(m.call_returned("tool-1")) == ["tool-2"]


def test_a_frontier_lists_queued_calls() -> None:
    m = CellMachine("p1", CellKind.PAUSABLE, max_parallel=1)
    m.call_issued(call(m, 1))
    m.call_issued(call(m, 2))
    m.quiescent(("tool-1", "tool-2"))  # the engine reports both promises unsettled
    r = m.observe()
    assert isinstance(r.event, Pending)
    assert r.event.frontier.pending_tool_call_ids == ("tool-1", "tool-2")


@pytest.mark.parametrize("stop", ["settle", "terminate", "shutdown", "engine_lost"])
def test_waiting_calls_are_dropped_when_the_cell_stops(stop: str) -> None:
    m = CellMachine("c1", CellKind.CONTINUING, max_parallel=1)
    m.call_issued(call(m, 1))
    m.call_issued(call(m, 2))
    m.call_issued(call(m, 3, GATED))
    if stop == "settle":
        assert m.body_settled(None) == [BeginSettling()]
    elif stop == "terminate":
        assert m.terminate().event is None
    elif stop == "shutdown":
        assert m.shutdown() == [StopEngine()]
    else:
        m.engine_lost()
    assert m.calls_queued == () and m.awaiting_approval == ()
    # The call at the delegate ends (it is cancelled): nothing waiting goes out.
    assert m.call_returned("tool-1") == []
    with pytest.raises(NotAwaitingApproval):
        m.approve("tool-3")


def test_call_number_orders_numerically() -> None:
    assert sorted(["tool-10", "tool-2", "tool-1"], key=call_number) == [
        "tool-1",
        "tool-2",
        "tool-10",
    ]
    assert call_number("odd") == -1


# ---------------------------------------------------------------- approvals


def test_a_held_call_reaches_the_delegate_only_when_approved() -> None:
    m = CellMachine("c1", CellKind.CONTINUING)
    held = call(m, 1, GATED, {"path": "/x"})
    assert m.call_issued(held) == []
    assert m.awaiting_approval == (ApprovalRequest("c1", "tool-1", GATED, {"path": "/x"}),)
    assert m.calls_at_delegate == 0
    assert dispatched(m.approve("tool-1")) == ["tool-1"]
    assert m.awaiting_approval == ()
    with pytest.raises(NotAwaitingApproval) as info:
        m.approve("tool-1")  # decided already
    assert str(info.value) == "exec cell c1 has no call tool-1 awaiting approval"
    assert info.value.fields() == {"cell_id": "c1", "call_id": "tool-1"}


def test_reject_rejects_the_promise_with_the_reason() -> None:
    m = CellMachine("c1", CellKind.CONTINUING)
    m.call_issued(call(m, 1, GATED))
    assert m.reject("tool-1", "not today") == [RejectCall("tool-1", "not today")]
    with pytest.raises(NotAwaitingApproval):
        m.reject("tool-1", "again")
    with pytest.raises(NotAwaitingApproval):
        m.approve("tool-9")  # never issued


def test_an_approved_call_respects_the_bound() -> None:
    m = CellMachine("c1", CellKind.CONTINUING, max_parallel=1)
    m.call_issued(call(m, 1))
    m.call_issued(call(m, 2, GATED))
    assert m.approve("tool-2") == []  # the slot is taken: it queues
    assert m.calls_queued == ("tool-2",)
    assert dispatched(m.call_returned("tool-1")) == ["tool-2"]


def test_holding_ends_the_current_observation() -> None:
    m = CellMachine("c1", CellKind.CONTINUING)
    tok = attach(m)
    m.output(TextItem("a"))
    assert m.call_issued(call(m, 1, GATED)) == [WakeObserver(tok)]
    m.output(TextItem("b"))
    assert m.collect(tok).event == Yielded((TextItem("a"),))
    # The host learned of it: the next observation waits normally.
    assert m.observe().token is not None


def test_a_hold_with_nobody_observing_ends_the_next_observation_at_once() -> None:
    m = CellMachine("c1", CellKind.CONTINUING)
    tok = attach(m)
    m.observer_deadline(tok)
    m.collect(tok)
    m.output(TextItem("a"))
    m.call_issued(call(m, 1, GATED))
    r = m.observe()
    assert r.event == Yielded((TextItem("a"),))
    assert m.observe().token is not None  # once per hold, not a busy loop


def test_a_cancelled_observer_gives_the_hold_notice_back() -> None:
    m = CellMachine("c1", CellKind.CONTINUING)
    tok = attach(m)
    m.output(TextItem("a"))
    m.call_issued(call(m, 1, GATED))
    m.observer_cancelled(tok)
    r = m.observe()
    assert r.event == Yielded((TextItem("a"),))


def test_completion_wins_over_a_hold_notice() -> None:
    m = CellMachine("c1", CellKind.CONTINUING)
    m.call_issued(call(m, 1, GATED))
    m.body_settled(None)
    m.commit()
    r = m.observe()
    assert r.event == Completed(())
    assert m.phase is Phase.CLOSED
    with pytest.raises(MissingCell):
        m.approve("tool-1")


def test_a_frontier_lists_held_calls_and_deciding_does_not_advance_it() -> None:
    m = CellMachine("p1", CellKind.PAUSABLE)
    m.call_issued(call(m, 1))
    m.call_issued(call(m, 2, GATED, {"path": "/a"}))
    m.call_issued(call(m, 3, GATED, {"path": "/b"}))
    m.quiescent(("tool-1", "tool-2", "tool-3"))
    r = m.observe()
    assert isinstance(r.event, Pending)
    frontier = r.event.frontier
    assert frontier.pending_tool_call_ids == ("tool-1", "tool-2", "tool-3")
    assert [a.call_id for a in frontier.awaiting_approval] == ["tool-2", "tool-3"]
    assert dispatched(m.approve("tool-2")) == ["tool-2"]
    assert m.reject("tool-3", "no") == [RejectCall("tool-3", "no")]
    assert m.phase is Phase.PAUSED
    r = m.observe()
    assert r.event == Pending(frontier)  # the same frontier


def test_a_pausable_hold_does_not_end_an_observation() -> None:
    m = CellMachine("p1", CellKind.PAUSABLE)
    attach(m)
    assert m.call_issued(call(m, 1, GATED)) == []  # the frontier will list it


# ---------------------------------------------------------------- a property over any interleaving


@settings(max_examples=300, deadline=None)
@given(
    bound=st.integers(min_value=1, max_value=4),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["issue", "gated", "return", "approve", "reject"]), st.integers(0, 50)
        ),
        max_size=60,
    ),
)
def test_any_interleaving_keeps_the_bound_the_order_and_the_gate(
    bound: int, steps: list[tuple[str, int]]
) -> None:
    """Whatever the order of issues, returns and decisions: never more than ``bound`` calls at
    the delegate, plain calls reach it in issue order, every call at most once, and a held call
    only after its approval (a rejected one never)."""
    m = CellMachine("c1", CellKind.CONTINUING, max_parallel=bound)
    issued = 0
    at_delegate: list[str] = []
    sent: list[str] = []
    approved: set[str] = set()
    rejected: set[str] = set()
    gated: set[str] = set()

    def apply(effects: Sequence[object]) -> None:
        for e in effects:
            if isinstance(e, DispatchCall):
                sent.append(e.call.call_id)
                at_delegate.append(e.call.call_id)
            elif isinstance(e, RejectCall):
                rejected.add(e.call_id)
        assert len(at_delegate) <= bound

    for action, pick in steps:
        if action in ("issue", "gated"):
            issued += 1
            tool = GATED if action == "gated" else PLAIN
            if tool is GATED:
                gated.add(f"tool-{issued}")
            apply(m.call_issued(call(m, issued, tool)))
        elif action == "return" and at_delegate:
            apply(m.call_returned(at_delegate.pop(pick % len(at_delegate))))
        elif action in ("approve", "reject") and m.awaiting_approval:
            held = m.awaiting_approval[pick % len(m.awaiting_approval)].call_id
            if action == "approve":
                approved.add(held)
                apply(m.approve(held))
            else:
                apply(m.reject(held, "no"))
    assert len(sent) == len(set(sent))
    assert not (set(sent) & rejected)
    assert set(sent) & gated <= approved
    plain_sent = [c for c in sent if c not in gated]
    assert plain_sent == sorted(plain_sent, key=call_number)
    # Nothing waits while a slot is free.
    assert not m.calls_queued or m.calls_at_delegate == bound
