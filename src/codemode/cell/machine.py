"""The lifecycle of one cell as a sans-IO state machine (docs/sessions.md).

Every rule about what a caller of ``wait``, ``wait_to_pending``, ``resume`` or ``terminate`` sees
lives here, and only here. The machine does no I/O, owns no clock and never awaits: each method
takes one input (something the engine did, or something a caller asked) and returns the
*effects* the driver must carry out, such as waking an observer, stopping the engine or
committing stored values. The asyncio driver (:mod:`codemode.cell.actor`) feeds it inputs in the
order they happen on the event loop, so the tests can replay any interleaving deterministically.

The machine also decides when each nested call reaches the delegate: at most ``max_parallel``
calls of the cell are at the delegate at once, further ones wait in issue order for a free slot;
a call of a tool that ``needs_approval`` is *held* until the host approves it (then it queues like
any call) or rejects it (then its promise rejects with the host's reason). Calls still waiting
(queued or held) when the cell settles, is terminated or the session shuts down never reach the
delegate. See ``docs/approvals.md``.

Vocabulary (docs/sessions.md): *recorded* output has reached the runtime and was not yet delivered;
an *observer* is a ``wait``/``wait_to_pending`` call in progress; *delivered* means returned to a
caller. An observer's event is *prepared* by the machine at the instant its reason occurs (a
deadline, a ``yield_control()``, a frontier, the commit, a termination) and *collected* when the
observer's task resumes; a cancelled observer gives a prepared event back, so nothing is lost.
"""

from __future__ import annotations

import enum
import functools
import os
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Concatenate, Final, ParamSpec, TypeVar

from codemode.cell.observers import refuse_second_observer
from codemode.errors import (
    AlreadyTerminating,
    ClosedCell,
    InvalidGeneration,
    MissingCell,
    NotAwaitingApproval,
)
from codemode.model import (
    ApprovalRequest,
    CellKind,
    Completed,
    NestedToolCall,
    OutputItem,
    Pending,
    PendingFrontier,
    ResumeOutcome,
    Terminated,
    Yielded,
)

__all__ = [
    "STRICT_ENV",
    "TRANSITIONS",
    "BeginSettling",
    "CellMachine",
    "Closed",
    "CommitWrites",
    "Decision",
    "DispatchCall",
    "DriverBug",
    "Effect",
    "Phase",
    "RejectCall",
    "RunEngine",
    "StopEngine",
    "WakeObserver",
    "check_refused",
]

Event = Yielded | Completed | Terminated | Pending


class Phase(enum.Enum):
    """Where a cell is in its life."""

    RUNNING = "running"  # its JavaScript runs whenever a tool result or timer unblocks it
    PAUSED = "paused"  # a pausable cell at a frontier: nothing runs until resume
    SETTLING = "settling"  # the body settled; notifications drain, calls are cancelled
    COMPLETED = "completed"  # the completion is committed; its event awaits delivery
    TERMINATING = "terminating"  # stopped by terminate/shutdown; callbacks are being cleaned up
    CLOSED = "closed"  # gone: every operation answers MissingCell

    # Members are singletons: hash by identity (C), not by name (a Python call in every table
    # lookup, two per nested call).
    __hash__ = object.__hash__


# ---------------------------------------------------------------------------- the transition table

STRICT_ENV: Final = "CODEMODE_STRICT_MACHINE"
"""Set to ``1`` to make every :class:`CellMachine` strict by default (the test suite does)."""


class DriverBug(RuntimeError):
    """A strict machine was fed an input that no correct driver produces in its phase (or an
    input left it in a phase the table does not allow)."""


_TABLE: Final = """
input                running      paused       settling     completed    terminating  closed
call_issued          =            =            bug          bug          late         late
calls_issued         =            =            bug          bug          late         late
call_returned        =            =            =            =            =            =
calls_returned       =            =            =            =            =            =
approve              =            =            =            =            =            !missing
reject               =            =            =            =            =            !missing
output               =            =            =            bug          late         late
store_written        =            bug          =            bug          late         late
stores_written       =            bug          =            bug          late         late
yield_requested      =            bug          bug          bug          late         late
inputs_applied       =            bug          bug          bug          bug          bug
quiescent            =|paused     bug          bug          bug          bug          bug
body_settled         settling     bug          bug          bug          late         late
engine_lost          settling     settling     late         late         late         late
refuse_writes        bug          bug          =            bug          late         late
commit               bug          bug          completed    bug          late         late
observe              =            =            =            =|closed     !closed      !missing
observer_deadline    =            =            =            =            =            =
collect              =            =            =            =|closed     =            =
observer_cancelled   =            =            =            =            =            =
resume               =            =|running    =            =            !closed      !missing
terminate            terminating  terminating  terminating  closed       !terminating !missing
shutdown             terminating  terminating  terminating  =|closed     late         late
salvaged_output      bug          bug          bug          bug          =            bug
termination_finished bug          bug          bug          bug          closed       bug
restore_delivered    =            =            =            =            bug          bug
"""
"""Every input of the machine (a method) in every phase. A cell is one of:

- a phase (``=`` the same one; ``a|b`` either): the input's rule applies, and leaves the cell in
  one of these phases (a strict machine checks it);
- ``!missing``, ``!closed``, ``!terminating``: the caller is refused with ``MissingCell``,
  ``ClosedCell`` or ``AlreadyTerminating``;
- ``late``: a legitimate input that comes too late to matter (a report of an engine step that was
  in flight when the cell was terminated, a call issued while the cell was stopped): ignored;
- ``bug``: no correct driver produces it (the pump feeds engine inputs only while the cell may
  run): ignored, or :class:`DriverBug` in a strict machine.
"""

_REFUSALS: Final[dict[str, Callable[[str], Exception]]] = {
    "!missing": MissingCell,
    "!closed": ClosedCell,
    "!terminating": AlreadyTerminating,
}


def _parse_table(text: str) -> dict[str, dict[Phase, str]]:
    lines = [line.split() for line in text.strip().splitlines()]
    phases = [Phase(name) for name in lines[0][1:]]
    table: dict[str, dict[Phase, str]] = {}
    for row in lines[1:]:
        assert len(row) == len(phases) + 1, row
        table[row[0]] = dict(zip(phases, row[1:], strict=True))
    return table


TRANSITIONS: Final = _parse_table(_TABLE)
"""``TRANSITIONS[input][phase]``: the verdict of the table above, parsed."""


def check_refused(name: str, phase: Phase, cell_id: str) -> None:
    """Raise the error with which the table refuses input ``name`` in ``phase`` (``MissingCell``,
    ``ClosedCell`` or ``AlreadyTerminating``); return when it does not refuse it. For a driver
    that knows a cell's phase with no machine at hand: ``RemoteSession`` while its own
    ``terminate`` of the cell is in flight."""
    refusal = _REFUSALS.get(TRANSITIONS[name][phase])
    if refusal is not None:
        raise refusal(cell_id)


def _strict_default() -> bool:
    return os.environ.get(STRICT_ENV, "") == "1"


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _rule(
    name: str, empty: Any = None
) -> Callable[
    [Callable[Concatenate[CellMachine, _P], _R]], Callable[Concatenate[CellMachine, _P], _R]
]:
    """Gate a method of :class:`CellMachine` by its row of the table: refuse, ignore (returning
    ``empty``), or run it and (strict) check the phase it leaves."""
    row = TRANSITIONS[name]
    # The phases in which the input's rule simply runs (not refused, not ignored).
    runs = {
        phase: verdict not in _REFUSALS and verdict not in ("late", "bug")
        for phase, verdict in row.items()
    }

    def wrap(
        method: Callable[Concatenate[CellMachine, _P], _R],
    ) -> Callable[Concatenate[CellMachine, _P], _R]:
        @functools.wraps(method)
        def gated(self: CellMachine, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
            before = self.phase
            if runs[before] and not self.strict:
                return method(self, *args, **kwargs)
            verdict = row[before]
            refusal = _REFUSALS.get(verdict)
            if refusal is not None:
                raise refusal(self.cell_id)
            if verdict == "late":
                return empty  # type: ignore[no-any-return]
            if verdict == "bug":
                if self.strict:
                    raise DriverBug(f"cell {self.cell_id}: {name} while {before.value}")
                return empty  # type: ignore[no-any-return]
            result = method(self, *args, **kwargs)
            if self.strict:
                allowed = {before if t == "=" else Phase(t) for t in verdict.split("|")}
                if self.phase not in allowed:
                    raise DriverBug(
                        f"cell {self.cell_id}: {name} moved it from {before.value} to "
                        f"{self.phase.value}, not {'|'.join(sorted(p.value for p in allowed))}"
                    )
            return result

        return gated

    return wrap


# ---------------------------------------------------------------------------- effects


@dataclass(frozen=True, slots=True)
class WakeObserver:
    """The attached observer has a prepared event: wake its task so it collects it."""

    token: int


@dataclass(frozen=True, slots=True)
class RunEngine:
    """Execution may continue (after a resume): wake the engine pump."""


@dataclass(frozen=True, slots=True)
class BeginSettling:
    """The body settled: deliver issued notifications, cancel outstanding calls, then call
    :meth:`CellMachine.commit`."""


@dataclass(frozen=True, slots=True)
class CommitWrites:
    """Merge these stored-value writes into the session map, now, in this same step."""

    writes: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StopEngine:
    """Stop the JavaScript now, cancel every callback (100 ms grace), then call
    :meth:`CellMachine.termination_finished`."""


@dataclass(frozen=True, slots=True)
class Closed:
    """The cell has closed: drop it from the session's registry."""


@dataclass(frozen=True, slots=True)
class DispatchCall:
    """Hand this nested call to the delegate now; report its end with
    :meth:`CellMachine.call_returned`."""

    call: NestedToolCall


@dataclass(frozen=True, slots=True)
class RejectCall:
    """Reject this held call's promise in the cell with ``reason``, as a tool error the engine
    consumes when the cell may run (never advancing a paused cell by itself)."""

    call_id: str
    reason: str


Effect = (
    WakeObserver
    | RunEngine
    | BeginSettling
    | CommitWrites
    | StopEngine
    | Closed
    | DispatchCall
    | RejectCall
)


def call_number(call_id: str) -> int:
    """The number of a call id (``tool-12`` -> 12), its order of issue; -1 if it has none."""
    _, _, digits = call_id.rpartition("-")
    return int(digits) if digits.isdigit() else -1


# ---------------------------------------------------------------------------- decisions


@dataclass(frozen=True, slots=True)
class Decision:
    """The machine's answer to a caller's request (``observe``, ``collect``, ``resume``,
    ``terminate``, ``termination_finished``): what the caller gets, and the effects the driver
    carries out first.

    - ``event``: an event to return now (``observe`` with one ready, ``collect``, ``terminate``
      of a completed cell);
    - ``token``: ``observe`` attached an observer; its event is prepared later and collected with
      this token;
    - neither, from ``terminate``: the termination began; its caller gets ``Terminated(items)``
      with the ``items`` of :meth:`CellMachine.termination_finished`, once the cleanup finished;
    - ``outcome``: the answer of ``resume``.
    """

    effects: tuple[Effect, ...] = ()
    event: Event | None = None
    token: int | None = None
    outcome: ResumeOutcome | None = None
    items: tuple[OutputItem, ...] = ()


# ---------------------------------------------------------------------------- internals


class _Prepared(enum.Enum):
    YIELDED = "yielded"  # items fixed at preparation; given back if the observer goes away
    PENDING = "pending"  # the current frontier
    COMPLETED = "completed"  # the committed completion (items read at collection)
    TERMINATED = "terminated"  # items fixed at preparation


@dataclass
class _Observer:
    token: int
    prepared: _Prepared | None = None
    items: tuple[OutputItem, ...] = ()
    by_hold: bool = False  # ended because a call became held
    frontier: PendingFrontier | None = None


@dataclass
class _Frontier:
    frontier: PendingFrontier
    delivered: bool = False


@dataclass
class CellMachine:
    """All mutable lifecycle state of one cell, and every rule that changes it."""

    cell_id: str
    kind: CellKind
    phase: Phase = Phase.RUNNING
    _recorded: list[OutputItem] = field(default_factory=list)
    _stash: tuple[OutputItem, ...] | None = None
    _delivered_any: bool = False
    _observer: _Observer | None = None
    _next_token: int = 1
    _writes: dict[str, Any] = field(default_factory=dict)
    _completion_error: str | None = None
    _discard_writes: bool = False
    # pausable cells
    _generation: int = 0
    _frontier: _Frontier | None = None
    _last_resumed: int | None = None
    _progressed: bool = True  # processed work since the last frontier or resume
    _terminated_by_shutdown: bool = False
    # nested calls: at most max_parallel at the delegate, the rest queued in issue order; calls
    # of tools that need approval held until the host decides
    max_parallel: int = 100
    _at_delegate: set[str] = field(default_factory=set)
    _queued: deque[NestedToolCall] = field(default_factory=deque)
    _held: dict[str, NestedToolCall] = field(default_factory=dict)
    _hold_notice: bool = False  # a call became held with nobody observing (continuing cells)
    _skip_output: int = 0  # output items a recovered cell had delivered (restore_delivered)
    _keep_skipped: int = 0  # the last this many of them are kept in skipped_tail
    skipped_tail: list[OutputItem] = field(default_factory=list)
    """The items of a recovered cell's last delivered event, reproduced by its replay (kept for
    a caller whose reply was lost: docs/cluster.md, re-delivery)."""
    strict: bool = field(default_factory=_strict_default)
    """Raise :class:`DriverBug` on inputs the table marks ``bug`` (on in the test suite)."""

    # ------------------------------------------------------------------ queries

    @property
    def may_run(self) -> bool:
        """True while the engine may run JavaScript and consume tool results and timers."""
        return self.phase is Phase.RUNNING

    @property
    def is_live(self) -> bool:
        """True until the cell has closed."""
        return self.phase is not Phase.CLOSED

    @property
    def is_paused(self) -> bool:
        """A pausable cell at a frontier: nothing runs until a resume."""
        return self.phase is Phase.PAUSED

    @property
    def takes_results(self) -> bool:
        """Running or paused: the engine will still consume tool results (a paused cell once it
        is resumed); afterwards a result has nowhere to go."""
        return self.phase in (Phase.RUNNING, Phase.PAUSED)

    @property
    def generation(self) -> int:
        """The generation of the latest frontier taken (0: none yet)."""
        return self._generation

    @property
    def current_frontier(self) -> PendingFrontier | None:
        return self._frontier.frontier if self._frontier is not None else None

    @property
    def has_observer(self) -> bool:
        return self._observer is not None

    @property
    def frontier_seen(self) -> bool:
        """The current frontier was delivered (or is being collected); a durable session
        records it with the resume that consumes the frontier."""
        return self._frontier_handed_over()

    @property
    def awaiting_approval(self) -> tuple[ApprovalRequest, ...]:
        """The held calls, sorted by call id (issue order)."""
        return tuple(
            ApprovalRequest(c.cell_id, c.call_id, c.tool, c.input)
            for c in sorted(self._held.values(), key=lambda c: call_number(c.call_id))
        )

    @property
    def calls_at_delegate(self) -> int:
        """How many nested calls are at the delegate now."""
        return len(self._at_delegate)

    @property
    def calls_queued(self) -> tuple[str, ...]:
        """The ids of the calls waiting for a free slot, in issue order."""
        return tuple(c.call_id for c in self._queued)

    # ------------------------------------------------------------------ nested calls

    @_rule("call_issued", [])
    def call_issued(self, call: NestedToolCall) -> list[Effect]:
        """The cell issued a nested call (its id assigned, counted against the limits).

        A call of a tool that needs approval is held: it reaches no delegate until
        :meth:`approve`; in a continuing cell the current observation ends at once with
        ``Yielded`` (or, with nobody observing, the next observation does). Any other call
        reaches the delegate now if fewer than ``max_parallel`` calls are there, else it waits
        its turn in issue order.
        """
        return self._issue((call,))

    @_rule("calls_issued", [])
    def calls_issued(self, calls: Sequence[NestedToolCall]) -> list[Effect]:
        """:meth:`call_issued` of each call, in order, as one input (a report's run of calls:
        the slots are filled once, in issue order, as the calls one by one would fill them)."""
        return self._issue(calls)

    def _issue(self, calls: Sequence[NestedToolCall]) -> list[Effect]:
        effects: list[Effect] = []
        for call in calls:
            if call.tool.needs_approval:
                self._held[call.call_id] = call
                effects += self._announce_hold()
            else:
                self._queued.append(call)
        effects += self._dispatch()
        return effects

    @_rule("call_returned", [])
    def call_returned(self, call_id: str) -> list[Effect]:
        """The delegate's coroutine for ``call_id`` ended: its slot goes to the next queued call."""
        self._at_delegate.discard(call_id)
        return self._dispatch()

    @_rule("calls_returned", [])
    def calls_returned(self, call_ids: Sequence[str]) -> list[Effect]:
        """:meth:`call_returned` of each call, as one input (the calls a report started that
        answered at once): their slots go to the oldest waiting calls, the same calls in the
        same order as one by one."""
        for call_id in call_ids:
            self._at_delegate.discard(call_id)
        return self._dispatch()

    @_rule("approve", [])
    def approve(self, call_id: str) -> list[Effect]:
        """The host approved a held call: from now on it is an ordinary call (it may queue).

        Raises ``MissingCell`` for a closed cell and ``NotAwaitingApproval`` for a call that is
        not held (never issued, already decided, or dropped when the cell stopped).
        """
        call = self._take_held(call_id)
        self._queued.append(call)
        return self._dispatch()

    @_rule("reject", [])
    def reject(self, call_id: str, reason: str) -> list[Effect]:
        """The host rejected a held call: its promise rejects with ``reason``. Raises as
        :meth:`approve`. A paused cell sees the rejection only after it is resumed."""
        self._take_held(call_id)
        return [RejectCall(call_id, reason)]

    def _take_held(self, call_id: str) -> NestedToolCall:
        call = self._held.pop(call_id, None)
        if call is None:
            raise NotAwaitingApproval(self.cell_id, call_id)
        return call

    def _announce_hold(self) -> list[Effect]:
        if self.kind is CellKind.PAUSABLE:
            return []  # the frontier lists it
        obs = self._observer
        if obs is None:
            self._hold_notice = True
            return []
        if obs.prepared is None:
            effects = self._prepare_yield(obs)
            obs.by_hold = True
            return effects
        return []  # its observer is about to return anyway

    def _dispatch(self) -> list[Effect]:
        if not self._queued or self.phase not in (Phase.RUNNING, Phase.PAUSED):
            return []
        effects: list[Effect] = []
        while self._queued and len(self._at_delegate) < self.max_parallel:
            call = self._queued.popleft()
            self._at_delegate.add(call.call_id)
            effects.append(DispatchCall(call))
        return effects

    def _drop_waiting_calls(self) -> None:
        """The cell stops: calls queued or held never reach the delegate."""
        self._queued.clear()
        self._held.clear()
        self._hold_notice = False

    # ------------------------------------------------------------------ engine inputs

    @_rule("output", [])
    def output(self, item: OutputItem) -> list[Effect]:
        """The cell produced an output item."""
        if self._skip_output:
            self._skip_output -= 1  # delivered before a durable session was recovered
            if self._skip_output < self._keep_skipped:
                self.skipped_tail.append(item)
            return []
        self._recorded.append(item)
        return []

    @_rule("store_written")
    def store_written(self, key: str, value: Any) -> None:
        """The cell stored a value; it is committed with the completion, if ever."""
        self._writes[key] = value

    @_rule("stores_written")
    def stores_written(self, writes: Mapping[str, Any]) -> None:
        """Many ``store_written`` at once, in order."""
        self._writes.update(writes)

    @_rule("yield_requested", [])
    def yield_requested(self) -> list[Effect]:
        """``yield_control()`` (docs/sessions.md rules 3 and 5; a no-op for pausable cells)."""
        if self.kind is CellKind.PAUSABLE:
            return []
        obs = self._observer
        if obs is not None:
            if obs.prepared is None:
                return self._prepare_yield(obs)
            return []
        if not self._delivered_any and self._stash is None:
            self._stash = tuple(self._recorded)
            self._recorded.clear()
        return []

    @_rule("inputs_applied")
    def inputs_applied(self) -> None:
        """The engine processed at least one tool result or timer."""
        self._progressed = True

    @_rule("quiescent", [])
    def quiescent(self, pending_call_ids: tuple[str, ...]) -> list[Effect]:
        """All JavaScript that could run has run and no input waits to be processed.

        A pausable cell that has processed work since its last frontier (or resume) takes a new
        frontier here and pauses (docs/sessions.md); a continuing cell passes on.
        """
        if self.kind is not CellKind.PAUSABLE or not self._progressed:
            return []
        self._progressed = False
        self._generation += 1
        pending = set(pending_call_ids)
        held = tuple(r for r in self.awaiting_approval if r.call_id in pending)
        frontier = PendingFrontier(self._generation, tuple(self._recorded), pending_call_ids, held)
        self._recorded.clear()
        self._frontier = _Frontier(frontier)
        self.phase = Phase.PAUSED
        obs = self._observer
        if obs is not None and obs.prepared is None:
            obs.prepared = _Prepared.PENDING
            obs.frontier = frontier
            return [WakeObserver(obs.token)]
        return []

    @_rule("body_settled", [])
    def body_settled(self, error_text: str | None) -> list[Effect]:
        """The body settled, ``exit()`` was called, or a limit ended the cell (docs/sessions.md)."""
        self._completion_error = error_text
        self.phase = Phase.SETTLING
        self._drop_waiting_calls()
        return [BeginSettling()]

    @_rule("engine_lost", [])
    def engine_lost(self, error_text: str | None = None) -> list[Effect]:
        """The engine ended without a settlement (docs/sessions.md): fail, commit nothing. A durable
        session's replay that cannot recover the cell ends it so, with its own ``error_text``."""
        if self._frontier is not None and not self._frontier_handed_over():
            self._recorded[:0] = self._frontier.frontier.items
        self._frontier = None
        self._discard_writes = True
        self._completion_error = error_text or "exec runtime ended unexpectedly"
        self.phase = Phase.SETTLING
        self._drop_waiting_calls()
        return [BeginSettling()]

    @property
    def uncommitted_writes(self) -> dict[str, Any]:
        """The writes a commit would apply now (empty if they are to be discarded)."""
        return {} if self._discard_writes else self._writes

    @_rule("refuse_writes")
    def refuse_writes(self, error_text: str) -> None:
        """The session cannot take this cell's writes (``max_stored_bytes``): the completion
        commits nothing and fails with ``error_text``."""
        self._discard_writes = True
        self._completion_error = error_text

    @_rule("commit", [])
    def commit(self) -> list[Effect]:
        """The single linearisation point of a natural completion (docs/sessions.md).

        Does nothing if a termination was requested first; otherwise commits the stored writes
        and makes the completion deliverable, in this one synchronous step.
        """
        self.phase = Phase.COMPLETED
        effects: list[Effect] = []
        if not self._discard_writes and self._writes:
            effects.append(CommitWrites(dict(self._writes)))
        self._writes.clear()
        obs = self._observer
        if obs is not None and obs.prepared is None:
            obs.prepared = _Prepared.COMPLETED
            effects.append(WakeObserver(obs.token))
        return effects

    @_rule("restore_delivered")
    def restore_delivered(self, items: int, any_delivered: bool, keep: int = 0) -> None:
        """A continuing cell about to be replayed (durable sessions): the first ``items``
        output items it produces were delivered before it was recovered, so they are dropped;
        ``any_delivered`` says whether any event was (the initial-yield boundary of docs/sessions.md
        rule 5 is then behind it). The last ``keep`` of them (the last delivered event's) are
        kept in :attr:`skipped_tail`."""
        self._skip_output = items
        self._keep_skipped = min(keep, items)
        self.skipped_tail = []
        self._delivered_any = self._delivered_any or any_delivered

    # ------------------------------------------------------------------ observers

    @_rule("observe")
    def observe(self) -> Decision:
        """Begin ``wait`` (continuing) or ``wait_to_pending`` (pausable) after the handle checks.

        Raises ``MissingCell``, ``ClosedCell`` or ``BusyObserver`` (docs/sessions.md rule 2).
        """
        refuse_second_observer(self.cell_id, self._observer is not None)
        if self.kind is CellKind.CONTINUING and self._stash is not None:
            items, self._stash = self._stash, None
            self._delivered_any = True
            self._hold_notice = False
            return Decision(event=Yielded(items))
        if self.kind is CellKind.PAUSABLE and self._frontier is not None:
            self._frontier.delivered = True
            self._delivered_any = True
            return Decision(event=Pending(self._frontier.frontier))
        if self.phase is Phase.COMPLETED:
            return Decision((Closed(),), self._take_completion())
        if self._hold_notice:
            # A call became held while nobody observed: this observation ends at once.
            self._hold_notice = False
            self._delivered_any = True
            items = tuple(self._recorded)
            self._recorded.clear()
            return Decision(event=Yielded(items))
        token = self._next_token
        self._next_token += 1
        self._observer = _Observer(token)
        return Decision(token=token)

    @_rule("observer_deadline", [])
    def observer_deadline(self, token: int) -> list[Effect]:
        """The budget of a ``wait`` ran out: it gets exactly the output recorded by now."""
        obs = self._observer
        if obs is None or obs.token != token or obs.prepared is not None:
            return []
        return self._prepare_yield(obs)

    @_rule("collect")
    def collect(self, token: int) -> Decision:
        """The woken observer takes its prepared event; this is the moment of delivery."""
        obs = self._observer
        if obs is None or obs.token != token or obs.prepared is None:
            raise MissingCell(self.cell_id)
        self._observer = None
        self._delivered_any = True
        kind = obs.prepared
        if kind is _Prepared.YIELDED:
            self._hold_notice = False
            return Decision(event=Yielded(obs.items))
        if kind is _Prepared.PENDING:
            assert obs.frontier is not None
            if self._frontier is not None and self._frontier.frontier is obs.frontier:
                self._frontier.delivered = True
            return Decision(event=Pending(obs.frontier))
        if kind is _Prepared.COMPLETED:
            return Decision((Closed(),), self._take_completion())
        return Decision(event=Terminated(obs.items))

    @_rule("observer_cancelled", [])
    def observer_cancelled(self, token: int) -> list[Effect]:
        """The observer's task went away: detach it and give back what it did not receive."""
        obs = self._observer
        if obs is None or obs.token != token:
            return []
        self._observer = None
        if obs.prepared is _Prepared.YIELDED:
            self._recorded[:0] = obs.items
            if obs.by_hold and self._held and self.phase is Phase.RUNNING:
                self._hold_notice = True  # the host did not learn of the hold yet
        elif obs.prepared is _Prepared.PENDING and obs.frontier is not None:
            current = self._frontier.frontier if self._frontier is not None else None
            if obs.frontier is not current:
                # Resumed while this observer held it: its items were never delivered.
                self._recorded[:0] = obs.frontier.items
        return []

    def _frontier_handed_over(self) -> bool:
        """The current frontier was delivered, or an observer is about to collect it."""
        if self._frontier is None:
            return False
        obs = self._observer
        being_collected = (
            obs is not None
            and obs.prepared is _Prepared.PENDING
            and obs.frontier is self._frontier.frontier
        )
        return self._frontier.delivered or being_collected

    def _prepare_yield(self, obs: _Observer) -> list[Effect]:
        obs.prepared = _Prepared.YIELDED
        obs.items = tuple(self._recorded)
        self._recorded.clear()
        return [WakeObserver(obs.token)]

    def _take_completion(self) -> Completed:
        items = (self._stash or ()) + tuple(self._recorded)
        self._stash = None
        self._recorded.clear()
        self.phase = Phase.CLOSED
        return Completed(items, self._completion_error)

    def _undelivered(self) -> tuple[OutputItem, ...]:
        items: list[OutputItem] = list(self._stash or ())
        if self._frontier is not None and not self._frontier_handed_over():
            items.extend(self._frontier.frontier.items)
        items.extend(self._recorded)
        self._stash = None
        self._recorded.clear()
        return tuple(items)

    # ------------------------------------------------------------------ pausable control

    @_rule("resume")
    def resume(self, generation: int) -> Decision:
        """``resume(cell, generation)``: the decision table of docs/sessions.md, after the handle
        checks.

        ==========================================  ==========================================
        situation                                   result
        ==========================================  ==========================================
        cell closed                                 MissingCell
        termination in progress                     ClosedCell
        frontier F, generation == F.generation      RESUMED (F cleared, L = generation)
        frontier F, generation <  F.generation      ALREADY_RUNNING
        frontier F, generation >  F.generation      InvalidGeneration(latest=F.generation)
        no F, L set and generation <= L             ALREADY_RUNNING
        no F, otherwise                             InvalidGeneration(latest=L)
        ==========================================  ==========================================
        """
        current = self._frontier
        if current is not None:
            latest = current.frontier.generation
            if generation == latest:
                if not self._frontier_handed_over():
                    self._recorded[:0] = current.frontier.items
                self._frontier = None
                self._last_resumed = generation
                self._progressed = False
                self.phase = Phase.RUNNING
                return Decision((RunEngine(),), outcome=ResumeOutcome.RESUMED)
            if generation < latest:
                return Decision(outcome=ResumeOutcome.ALREADY_RUNNING)
            raise InvalidGeneration(self.cell_id, generation, latest)
        if self._last_resumed is not None and generation <= self._last_resumed:
            return Decision(outcome=ResumeOutcome.ALREADY_RUNNING)
        raise InvalidGeneration(self.cell_id, generation, self._last_resumed)

    # ------------------------------------------------------------------ termination

    @_rule("terminate")
    def terminate(self) -> Decision:
        """``terminate(cell)`` (docs/sessions.md). A running or paused cell enters TERMINATING at
        once, so a completion not yet committed loses; its attached observer gets
        ``Terminated(())``; the caller's items are counted when the cleanup has finished."""
        if self.phase is Phase.COMPLETED:
            obs = self._observer
            if obs is not None and obs.prepared is _Prepared.COMPLETED:
                # Its observer is receiving the completion right now: it counts as delivered.
                raise MissingCell(self.cell_id)
            return Decision((Closed(),), self._take_completion())
        effects: list[Effect] = [StopEngine()]
        obs = self._observer
        if obs is not None and obs.prepared is None:
            obs.prepared = _Prepared.TERMINATED
            obs.items = ()
            effects.append(WakeObserver(obs.token))
        self._enter_terminating(by_shutdown=False)
        return Decision(tuple(effects))

    @_rule("shutdown", [])
    def shutdown(self) -> list[Effect]:
        """The session shuts down (docs/sessions.md): terminate, or close a committed completion. An
        attached observer gets ``Terminated(undelivered items)`` when the cleanup finishes."""
        if self.phase is Phase.COMPLETED:
            obs = self._observer
            if obs is not None and obs.prepared is _Prepared.COMPLETED:
                return []  # being delivered; the observer's collection closes the cell
            self.phase = Phase.CLOSED
            self._observer = None
            return [Closed()]
        self._enter_terminating(by_shutdown=True)
        return [StopEngine()]

    def _enter_terminating(self, *, by_shutdown: bool) -> None:
        self.phase = Phase.TERMINATING
        self._writes.clear()
        self._drop_waiting_calls()
        self._terminated_by_shutdown = by_shutdown

    @_rule("salvaged_output")
    def salvaged_output(self, item: OutputItem) -> None:
        """Output the stopped engine still had (produced before it was stopped, never reported):
        it belongs to the termination's items."""
        self._recorded.append(item)

    @_rule("termination_finished", Decision())
    def termination_finished(self) -> Decision:
        """The engine is stopped and every callback finished or was abandoned.

        Decides the undelivered items (``items``), for ``terminate``'s caller; when the session's
        shutdown stopped the cell, they go to an attached observer instead.
        """
        items = self._undelivered()
        self._frontier = None
        self.phase = Phase.CLOSED
        effects: list[Effect] = []
        obs = self._observer
        if self._terminated_by_shutdown and obs is not None and obs.prepared is None:
            obs.prepared = _Prepared.TERMINATED
            obs.items = items
            effects.append(WakeObserver(obs.token))
            items = ()
        effects.append(Closed())
        return Decision(tuple(effects), items=items)
