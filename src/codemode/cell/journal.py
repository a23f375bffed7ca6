"""The journal of a durable session, and the replay that brings a cell back from it.

A durable session (docs/durability.md) records what its cells did in a
:class:`~codemode.store.SessionStore`, write-ahead, at the engine seam: a cell's life is its
admission (the request and the stored values it booted with), then the groups of inputs its engine
consumed, step by step, each written *before* the engine sees it (so no answered call is ever
asked again), the values it read from the clock and the random source (written before the
effects of the step that read them are carried out), the resumes of a pausable cell with their
generation, the host's approval decisions, its committed completion with its stored writes, how
many output items each event delivered to a caller carried, and finally its closing.

:class:`Journal` is the session's one ordered writer: entries are appended synchronously, in the
order their facts happened on the event loop, and :meth:`Journal.flush` writes everything appended
so far in one :class:`~codemode.store.Batch` (concurrent flushes share the write in flight). A
:class:`CellRecorder` is one cell's view of it; :func:`replay` re-runs a cell from its record in a
fresh sandbox through the cell's own :class:`~codemode.cell.actor.CellActor` and
:class:`~codemode.cell.machine.CellMachine`, so every lifecycle rule applies to a recovered cell
exactly as it did the first time.

Journal entry kinds (payloads are JSON):

``step``      ``{"i": [input, ...]}``: one engine step's inputs in the order applied; a tool
              result is ``["r", call_id, ok, value_json_or_message, tool_name, input_digest]``,
              a timer firing ``["t", timer_id]``
``reads``     ``{"r": [[source, value, count], ...]}``: the environment reads of the step before
``timers``    ``{"t": [[timer_id, due], ...]}``: the timers the step before set, each with the
              wall-clock time (Unix seconds) it is due at: a timer still pending when the cell
              is recovered fires then (at once if that time has passed), not a whole delay later
``arrived``   ``{"i": [input]}``: a tool result that reached a *paused* cell (consumed by a
              later step once resumed; recorded at once, so a restart in between keeps it)
``resume``    ``{"g": generation, "seen": bool}``: a pausable cell resumed past a frontier
              (``seen``: that frontier had been delivered)
``held``      ``{"c": call_id, "t": tool_name, "i": input}``: a call of a tool that needs approval
              was held (what ``awaiting_approval`` answers while the cell is replayed again)
``approve``   ``{"c": call_id}``; ``reject`` ``{"c": call_id, "m": reason}``
``notified``  ``{}``: a notification of the cell reached the delegate (a recovered cell does
              not send those again)
``completed`` ``{"e": error_text}``: the completion was committed (its writes are in the same
              batch, as stored values)
``ended``     ``{"n": items}``: the completion was delivered to a caller whose reply may be lost
              (a cluster's host, ``SessionRuntime.observe_numbered``); the cell's closing is
              recorded once the caller acknowledges it, and a runtime that recovers the cell
              first keeps its completion for a retry of that caller (docs/cluster.md)
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from codemode.cell.machine import (
    CellMachine,
    CommitWrites,
    DispatchCall,
    Effect,
    Phase,
    RejectCall,
    call_number,
)
from codemode.engine.base import (
    EngineCell,
    EngineLost,
    EnvRead,
    StepInput,
    StepReport,
    TimerFired,
    TimerSet,
    ToolResultInput,
)
from codemode.errors import CodeModeError, SessionBusy, StoreError
from codemode.model import CellKind, CreateCellRequest, Pending, ToolDefinition, ToolKind, Yielded
from codemode.store.base import Batch, CellRecord, Delivery, Entry, JournalEntry, NewCell

if TYPE_CHECKING:
    from codemode.cell.actor import CellActor
    from codemode.store.base import SessionStore
    from codemode.store.lease import LeaseKeeper

__all__ = [
    "CellRecorder",
    "Journal",
    "RecordedCell",
    "input_digest",
    "replay",
    "request_from_json",
    "request_json",
]

logger = logging.getLogger("codemode.journal")

STEP = "step"
READS = "reads"
TIMERS = "timers"
ARRIVED = "arrived"
RESUME = "resume"
HELD = "held"
APPROVE = "approve"
REJECT = "reject"
COMPLETED = "completed"
NOTIFIED = "notified"
ENDED = "ended"

_GONE_KEPT = 65_536
_ENDED_KEPT = 4096

_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _no_default(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# The C encoder behind ``_compact.encode``, made once instead of at every call (the same text:
# same separators, sorted keys, NaN allowed), without the circular-reference bookkeeping: a
# circular value recurses until RecursionError and takes ``_compact``'s path, which says so.
_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
_fast_compact: Callable[[Any, int], Sequence[str]] | None = (
    _make_encoder(
        None, _no_default, json.encoder.encode_basestring, None, ":", ",", True, False, True
    )
    if _make_encoder is not None
    else None
)


def _digest_text(value: Any) -> str:
    """``_compact.encode(value)``: through the encoder made once when it can."""
    if _fast_compact is not None and not isinstance(value, str):
        try:
            return "".join(_fast_compact(value, 0))
        except RecursionError:
            pass  # circular (or too deep): the plain encoder tells which
    return _compact.encode(value)


def input_digest(value: Any) -> str:
    """A short digest of a call's input, compared when the call is replayed: blake2b (8 bytes,
    hex) of the input's compact JSON with sorted keys (its ``repr`` when JSON cannot hold it).
    Part of the journal's format: recorded digests must stay equal to what this computes
    (tests/durable/test_recording_path.py holds values computed by earlier releases)."""
    try:
        text = _digest_text(value)
    except (TypeError, ValueError):
        text = repr(value)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def request_json(request: CreateCellRequest, stored_json: str) -> dict[str, Any]:
    """The recorded form of an admitted cell's request, with the stored values it booted with."""
    return {
        "source": request.source,
        "tools": [asdict(t) for t in request.tools],
        "tool_call_id": request.tool_call_id,
        "idempotency_key": request.idempotency_key,
        "stored": stored_json,
    }


def request_from_json(doc: Any) -> tuple[CreateCellRequest, str]:
    """The request and the stored values' JSON text of :func:`request_json`."""
    tools = []
    for t in doc.get("tools", []):
        t = dict(t)
        t["kind"] = ToolKind(t.get("kind", "function"))
        tools.append(ToolDefinition(**t))
    request = CreateCellRequest(
        source=doc["source"],
        tools=tuple(tools),
        tool_call_id=doc.get("tool_call_id", ""),
        idempotency_key=doc.get("idempotency_key"),
    )
    return request, doc.get("stored", "{}")


class Journal:
    """The ordered writer of one durable session.

    Appending is synchronous and never fails; :meth:`flush` makes everything appended so far
    durable in one batch and raises ``SessionBusy`` (the lease is lost) or ``StoreError``. The
    write is committed on the spot when the store can do that without waiting
    (``write_now``; ``write_entry_now`` when the batch is one entry, an engine step's, which
    spares building the batch), else it runs in a task of its own; either way a cancelled
    flusher never leaves half a batch behind. After a failure the journal is broken: every
    later flush raises the same error (and ``on_failed`` is called once with a ``StoreError``,
    so the session stops its cells).
    """

    def __init__(
        self,
        store: SessionStore,
        session_id: str,
        owner: str,
        keeper: LeaseKeeper,
        on_lost: Callable[[], None],
        on_failed: Callable[[StoreError], None] | None = None,
    ) -> None:
        self.store = store
        self.session_id = session_id
        self.owner = owner
        self._keeper = keeper
        self._on_lost = on_lost
        self._on_failed = on_failed  # called once, when a write fails with StoreError
        self._loop = asyncio.get_running_loop()
        self._cells: list[NewCell] = []
        self._entries: list[Entry] = []
        self._deliveries: list[Delivery] = []
        self._closed: list[str] = []
        self._values: dict[str, Any] = {}
        self._keys_deleted: list[str] = []
        self._appended = 0
        self._durable = 0
        self._task: asyncio.Task[None] | None = None
        # A store that can commit a small batch at once on this thread (SqliteStore.write_now):
        # such a write is made from a loop callback rather than a task of its own.
        self._write_now: Callable[[str, str, Batch], list[int] | None] | None = getattr(
            store, "write_now", None
        )
        # ... and one that commits a batch of one entry (an engine step's) without the batch.
        self._write_entry_now: Callable[[str, str, Entry], int | None] | None = getattr(
            store, "write_entry_now", None
        )
        self._soon: asyncio.Handle | None = None
        # Cells closed lately: nothing more is recorded of them (a late report of a closed
        # cell comes right after its close, so the most recent ones are enough).
        self._gone: dict[str, None] = {}
        self.failed: CodeModeError | None = None
        self.muted = False  # shutting down or stopped: record nothing more
        # Re-delivery (docs/cluster.md): cells whose closing waits for their caller's
        # acknowledgement (None: observed, not closed yet; True: closed, its record held), and
        # the completions of recovered cells whose delivery was recorded (a retry gets them).
        self._holding: dict[str, bool] = {}
        self.ended_events: dict[str, tuple[int, Any]] = {}

    # ------------------------------------------------------------------ appending

    def _bump(self) -> None:
        self._appended += 1

    def new_cell(self, cell: NewCell) -> None:
        if not self.muted:
            self._cells.append(cell)
            self._bump()

    def entry(self, cell_id: str, kind: str, payload: Any) -> None:
        if not self.muted and cell_id not in self._gone:
            self._entries.append(Entry(cell_id, kind, payload))
            self._bump()

    def delivery(self, cell_id: str, items: int) -> None:
        if not self.muted and cell_id not in self._gone:
            self._deliveries.append(Delivery(cell_id, items))
            self._bump()

    def closed(self, cell_id: str) -> None:
        if not self.muted and cell_id not in self._gone:
            self._gone[cell_id] = None
            if len(self._gone) > _GONE_KEPT:
                del self._gone[next(iter(self._gone))]
            if cell_id in self._holding:
                self._holding[cell_id] = True  # recorded when let go (release_close)
                return
            self._closed.append(cell_id)
            self._bump()

    def hold_close(self, cell_id: str) -> bool:
        """Keep the cell's closing from the store until :meth:`release_close` (its terminal
        event is on its way to a caller that acknowledges it); False if it is held already."""
        if cell_id in self._holding or cell_id in self._gone or self.muted:
            return False
        self._holding[cell_id] = False
        if len(self._holding) > _GONE_KEPT:  # callers that never acknowledged: record them
            self.release_close(next(iter(self._holding)))
        return True

    def holds_close(self, cell_id: str) -> bool:
        """Whether the cell closed and its closing is held."""
        return self._holding.get(cell_id, False)

    def release_close(self, cell_id: str) -> None:
        """Record the closing held for the cell, if it closed meanwhile (idempotent)."""
        if self._holding.pop(cell_id, False) and not self.muted:
            self._closed.append(cell_id)
            self._bump()
            self.kick()

    def ended(self, cell_id: str, items: int) -> None:
        """The cell's completion (``items`` items) was delivered; its closing is held."""
        if not self.muted:
            self._entries.append(Entry(cell_id, ENDED, {"n": items}))
            self._bump()

    def kept_completion(self, cell_id: str, count: int, event: Any) -> None:
        """A recovered cell's delivered completion, kept for a retry of its caller (its closing
        held until the caller acknowledges it; beyond :data:`_ENDED_KEPT` kept completions, the
        oldest is given up and its closing recorded)."""
        self.ended_events[cell_id] = (count, event)
        while len(self.ended_events) > _ENDED_KEPT:
            oldest = next(iter(self.ended_events))
            del self.ended_events[oldest]
            self.release_close(oldest)

    def values(self, writes: dict[str, str]) -> None:
        """Committed stored values (key -> the value's JSON text)."""
        if not self.muted:
            self._values.update(writes)
            self._bump()

    def key_deleted(self, key: str) -> None:
        if not self.muted:
            self._keys_deleted.append(key)
            self._bump()

    # ------------------------------------------------------------------ writing

    @property
    def has_pending(self) -> bool:
        return self._durable < self._appended

    def kick(self, *, now: bool = False) -> None:
        """Start writing what was appended, without waiting (:meth:`flush` waits for it). A
        store that commits small writes on this thread (:attr:`_write_now`) does it here with
        ``now``, else in the loop's next turn: a write of a few dozen microseconds made while
        the engine's thread runs a step would hand the GIL back and forth with that thread at
        each SQLite call, which costs more than the write."""
        if self._task is not None or self._durable >= self._appended or self.failed is not None:
            return
        if self._write_now is None:
            self._task = self._loop.create_task(self._write_pending())
        elif now:
            if self._soon is not None:
                self._soon.cancel()
                self._soon = None
            self._start_write()
        elif self._soon is None:
            self._soon = self._loop.call_soon(self._write_soon)

    def _write_soon(self) -> None:
        self._soon = None
        if self._task is None and self._durable < self._appended and self.failed is None:
            self._start_write()

    def _start_write(self) -> None:
        """Write what was appended: committed here when the store can do it at once, else in
        a task (:attr:`_task`)."""
        assert self._write_now is not None
        if (
            self._write_entry_now is not None
            and self._appended - self._durable == 1
            and len(self._entries) == 1
        ):
            # Only one entry is pending (nothing else was appended since the last write).
            entry = self._entries[0]
            try:
                self._keeper.check()
                seq = self._write_entry_now(self.session_id, self.owner, entry)
            except Exception as exc:
                self._entries = []
                self._failed_with(exc)
                return
            if seq is not None:
                self._entries = []
                self._durable = self._appended
                return
            # Not written (it would have to wait): the store's thread writes it.
            batch, upto = self._take()
            self._task = self._loop.create_task(self._write_pending(batch, upto))
            return
        batch, upto = self._take()
        if batch.is_empty():
            self._durable = upto
            return
        try:
            self._keeper.check()
            done = self._write_now(self.session_id, self.owner, batch)
        except Exception as exc:
            self._failed_with(exc)
            return
        if done is not None:
            self._durable = upto
        else:
            self._task = self._loop.create_task(self._write_pending(batch, upto))

    async def flush(self) -> None:
        """Make every fact appended so far durable (``SessionBusy`` / ``StoreError``)."""
        target = self._appended
        while self._durable < target:
            if self.failed is not None:
                self._tell_failed()  # (whichever path the failed write took)
                raise self.failed
            task = self._task
            if task is None:
                if self._write_now is not None:
                    if self._soon is not None:
                        self._soon.cancel()
                        self._soon = None
                    self._start_write()
                    continue
                task = self._task = self._loop.create_task(self._write_pending())
            await asyncio.shield(task)
        if self.failed is not None and self._durable < target:  # pragma: no cover
            raise self.failed

    def _take(self) -> tuple[Batch, int]:
        batch = Batch(
            cells=self._cells,
            entries=self._entries,
            deliveries=self._deliveries,
            closed=self._closed,
            values=self._values,
            keys_deleted=self._keys_deleted,
            journals_deleted=list(self._closed),
        )
        self._cells, self._entries, self._deliveries = [], [], []
        self._closed, self._values, self._keys_deleted = [], {}, []
        return batch, self._appended

    async def _write_pending(self, taken: Batch | None = None, upto: int = 0) -> None:
        try:
            if taken is None:
                batch, upto = self._take()
            else:
                batch = taken  # already taken (and checked against the lease) by _start_write
            if not batch.is_empty():
                if taken is None:
                    self._keeper.check()
                await self.store.write(self.session_id, self.owner, batch)
            self._durable = upto
        except Exception as exc:
            self._failed_with(exc)
        finally:
            self._task = None
        self._tell_failed()

    def _tell_failed(self) -> None:
        """After a write failed with ``StoreError``: call ``on_failed`` (once)."""
        if isinstance(self.failed, StoreError) and self._on_failed is not None:
            on_failed, self._on_failed = self._on_failed, None
            on_failed(self.failed)

    def _failed_with(self, exc: Exception) -> None:
        if isinstance(exc, SessionBusy):
            self.failed = exc
            self._on_lost()
        elif isinstance(exc, StoreError):
            logger.error("session %s: the store refused a write: %s", self.session_id, exc)
            self.failed = exc
        else:  # pragma: no cover - a bug in a store
            logger.error("session %s: writing the journal failed", self.session_id, exc_info=exc)
            self.failed = StoreError(f"writing the journal failed: {exc}")


# ---------------------------------------------------------------------------- one cell


@dataclass
class RecordedCell:
    """A cell as the store holds it, ready to replay."""

    record: CellRecord
    entries: list[JournalEntry]
    deliveries: list[int]
    reads: list[EnvRead] = field(default_factory=list)
    answered: set[str] = field(default_factory=set)
    completed: bool = False
    completed_error: str | None = None
    arrived: dict[str, Any] = field(default_factory=dict)  # results not consumed by a step
    notified: int = 0
    paused_at_end: bool = False  # results reached it paused after its last resume
    cut_seq: int | None = None  # the engine command its engine was lost in (0: the run)
    timers: dict[int, float] = field(default_factory=dict)  # timer id -> due (wall clock)
    ended: bool = False  # its completion was delivered (an ``ended`` entry)
    held: dict[str, tuple[str, Any]] = field(default_factory=dict)  # call id -> (tool, input)
    decided: set[str] = field(default_factory=set)  # held calls approved or rejected

    @classmethod
    def parse(
        cls, record: CellRecord, entries: list[JournalEntry], deliveries: list[int]
    ) -> RecordedCell:
        cell = cls(record, entries, deliveries)
        for entry in entries:
            if entry.kind == READS:
                for read in entry.payload["r"]:
                    count = int(read[2]) if len(read) > 2 else 1
                    cell.reads.append(EnvRead(str(read[0]), float(read[1]), count))
            elif entry.kind == STEP:
                for item in entry.payload["i"]:
                    if item[0] == "r":
                        cell.answered.add(item[1])
                        cell.arrived.pop(item[1], None)
            elif entry.kind == RESUME:
                cell.paused_at_end = False
            elif entry.kind == ARRIVED:
                cell.paused_at_end = True
                for item in entry.payload["i"]:
                    cell.answered.add(item[1])
                    cell.arrived[item[1]] = item
            elif entry.kind == NOTIFIED:
                cell.notified += 1
            elif entry.kind == TIMERS:
                for timer_id, due in entry.payload["t"]:
                    cell.timers[int(timer_id)] = float(due)
            elif entry.kind == ENDED:
                cell.ended = True
            elif entry.kind == HELD:
                cell.held[str(entry.payload["c"])] = (str(entry.payload["t"]), entry.payload["i"])
            elif entry.kind in (APPROVE, REJECT):
                cell.decided.add(str(entry.payload["c"]))
            elif entry.kind == COMPLETED:
                cell.completed = True
                cell.completed_error = entry.payload.get("e")
                if entry.payload.get("cut"):
                    steps = [e.seq for e in entries if e.kind == STEP]
                    cell.cut_seq = steps[-1] if steps else 0
        return cell


class Diverged(Exception):
    """Replay departed from the record."""


class CellRecorder:
    """What one cell records, and (for a recovered cell) the record it replays first."""

    def __init__(
        self,
        journal: Journal,
        cell_id: str,
        kind: CellKind,
        *,
        recorded: RecordedCell | None = None,
        reopen: Callable[[], Awaitable[EngineCell]] | None = None,
    ) -> None:
        self.journal = journal
        self.cell_id = cell_id
        self.kind = kind
        self.calls: dict[str, tuple[str, str]] = {}  # call id -> (tool name, input digest)
        self.recorded = recorded
        self.reopen = reopen
        self.replaying = False
        self.cut = False  # its engine was lost in the middle of a command
        self.replayed = asyncio.Event()
        if recorded is None:
            self.replayed.set()
        # replay bookkeeping
        self.virtual: set[str] = set()  # recorded calls "at the delegate" during replay
        self.deferred: list[DispatchCall] = []  # unanswered calls, issued after the replay
        self.rejections: dict[str, ToolResultInput] = {}
        # Re-delivery (docs/cluster.md): how many events were delivered to callers (the
        # store's count for a recovered cell), and the last one when it can be given again.
        self.events_delivered = 0
        if recorded is not None:
            self.events_delivered = len(recorded.deliveries) + int(recorded.ended)
        self.last_event: Yielded | None = None

        # How many notifications had reached the delegate (a fresh replay skips them again).
        self.notified_before = recorded.notified if recorded is not None else 0

    # ------------------------------------------------------------------ recording

    def call_issued(self, call_id: str, tool_name: str, value: Any) -> None:
        self.calls[call_id] = (tool_name, input_digest(value))

    def _encode(self, inputs: Sequence[StepInput]) -> list[Any]:
        out: list[Any] = []
        for inp in inputs:
            if isinstance(inp, ToolResultInput):
                tool, digest = self.calls.pop(inp.call_id, ("", ""))
                text = inp.value_json if inp.ok else inp.message
                out.append(["r", inp.call_id, inp.ok, text, tool, digest])
            else:
                out.append(["t", inp.timer_id])
        return out

    def arrived(self, result: ToolResultInput) -> None:
        """A tool result reached the cell while it is paused: record it now (a step consumes
        it after the resume)."""
        tool, digest = self.calls.get(result.call_id, ("", ""))
        text = result.value_json if result.ok else result.message
        item = ["r", result.call_id, result.ok, text, tool, digest]
        self.journal.entry(self.cell_id, ARRIVED, {"i": [item]})

    def step_started(self, inputs: Sequence[StepInput]) -> None:
        """Start recording a step's inputs as the engine starts consuming them: committed here
        when the store can do it at once (SqliteStore), else written while the step runs.
        Either way :meth:`step_finished` waits for it before any effect of the step is carried
        out (a call dispatched, output delivered), so nothing outside the cell can depend on an
        input that is not recorded, and the window in which an answer can be lost to a crash
        (from its arrival to its write) is no wider than if the step waited."""
        self.journal.entry(self.cell_id, STEP, {"i": self._encode(inputs)})
        self.journal.kick(now=True)

    async def step_finished(self, report: StepReport) -> None:
        """Record a step's environment reads and the due times of the timers it set, and wait
        until the step is recorded."""
        if report.reads:
            reads = [[r.source, r.value, r.count] for r in report.reads]
            self.journal.entry(self.cell_id, READS, {"r": reads})
        timers = None
        for event in report.events:
            if isinstance(event, TimerSet):
                if timers is None:
                    timers, now = [], time.time()
                timers.append([event.timer_id, round(now + event.delay, 3)])
        if timers is not None:
            self.journal.entry(self.cell_id, TIMERS, {"t": timers})
        await self.journal.flush()

    def held(self, call_id: str, tool_name: str, value: Any) -> None:
        """A call of a tool that needs approval was held (recorded once: a replay that holds
        it again records nothing). An input JSON cannot hold is not recorded (the store would
        refuse the whole write): the replay still holds that call again, once it reaches it."""
        recorded = self.recorded
        if recorded is not None and call_id in recorded.held:
            return
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            return
        self.journal.entry(self.cell_id, HELD, {"c": call_id, "t": tool_name, "i": value})

    def held_in_record(self) -> list[tuple[str, str, Any]]:
        """While the cell is replayed: the calls its record holds and does not decide, as
        ``(call_id, tool_name, input)`` in issue order, none when the record ends the cell (a
        completion drops its held calls). These are the calls the replay holds again, unless it
        diverges; once it is over the cell itself knows them."""
        recorded = self.recorded
        if recorded is None or recorded.completed:
            return []
        undecided = [c for c in recorded.held if c not in recorded.decided]
        undecided.sort(key=call_number)
        return [(c, *recorded.held[c]) for c in undecided]

    def resumed(self, generation: int, seen: bool) -> None:
        self.journal.entry(self.cell_id, RESUME, {"g": generation, "seen": seen})

    def approved(self, call_id: str) -> None:
        self.journal.entry(self.cell_id, APPROVE, {"c": call_id})

    def rejected(self, call_id: str, reason: str) -> None:
        self.journal.entry(self.cell_id, REJECT, {"c": call_id, "m": reason})

    def notified(self) -> None:
        self.journal.entry(self.cell_id, NOTIFIED, {})

    def skip_notification(self) -> bool:
        """During replay: True for a notification that reached the delegate before."""
        recorded = self.recorded
        if recorded is not None and recorded.notified > 0:
            recorded.notified -= 1
            return True
        return False

    def replayed_yield(self, machine: CellMachine) -> bool:
        """During replay: True for a ``yield_control()`` whose effect happened before the cell
        was recovered (an event had been delivered since, so it made no initial yield)."""
        return (
            self.replaying
            and machine.has_observer
            and bool(self.recorded and self.recorded.deliveries)
        )

    def delivered(self, items: int, event: Yielded | Pending | None = None) -> None:
        self.journal.delivery(self.cell_id, items)
        self.events_delivered += 1
        self.last_event = event if isinstance(event, Yielded) else None

    def again(self, seen: int | None) -> Yielded | None:
        """The last delivered event again, for a caller that says it has seen ``seen`` events
        of this cell, one fewer than were delivered (its reply was lost: its host died after
        the delivery was recorded). ``None`` otherwise: observe as usual. A pausable cell's
        frontier is not kept here: observing it again repeats it anyway."""
        if seen is None or seen != self.events_delivered - 1:
            return None
        return self.last_event

    def committing(self, machine: CellMachine, effects: list[Effect]) -> list[Effect]:
        """The completion is being committed: record it with its writes, or, when replaying a
        completion that was already recorded, keep its recorded error and drop the writes (the
        store holds them)."""
        recorded = self.recorded
        if self.replaying and recorded is not None and recorded.completed:
            machine._completion_error = recorded.completed_error
            return [e for e in effects if not isinstance(e, CommitWrites)]
        error_text = machine._completion_error
        for effect in effects:
            if isinstance(effect, CommitWrites) and effect.writes:
                self.journal.values(dict(effect.writes))
        payload: dict[str, Any] = {"e": error_text}
        if self.cut:
            payload["cut"] = True  # replay stops before the command the engine was lost in
        self.journal.entry(self.cell_id, COMPLETED, payload)
        return effects

    # ------------------------------------------------------------------ replay hooks

    def dispatch(self, effect: DispatchCall) -> bool:
        """During replay: True when the call must not reach the delegate now (it is answered
        in the record, or it is issued once the replay is over)."""
        call_id = effect.call.call_id
        recorded = self.recorded
        if recorded is not None and call_id in recorded.answered:
            self.virtual.add(call_id)
        else:
            self.deferred.append(effect)
        return True

    def reject(self, effect: RejectCall) -> None:
        self.rejections[effect.call_id] = ToolResultInput(
            effect.call_id, False, message=effect.reason
        )


async def replay(actor: CellActor, rec: CellRecorder) -> None:
    """Run a recovered cell from its record: the body again in a fresh sandbox, each recorded
    step's inputs fed back in their recorded grouping, resumes and approval decisions applied
    where they happened, recorded calls kept from the delegate. Leaves the cell where the record
    ends (a divergence ends it with the fixed error text) and marks the already delivered output.
    """
    assert rec.recorded is not None
    rec.replaying = True
    try:
        await _replay_all(actor, rec)
        if rec.recorded is not None and rec.recorded.ended:
            await _keep_completion(actor, rec)
    finally:
        rec.replaying = False
        rec.recorded = None  # free the record
        rec.deferred.clear()
        rec.rejections.clear()
        rec.virtual.clear()
        rec.replayed.set()


async def _keep_completion(actor: CellActor, rec: CellRecorder) -> None:
    """A recovered cell whose completion had been delivered: take that completion again (the
    replay reproduced it; the cell closes now) and keep it for a retry of the caller whose
    reply was lost (docs/cluster.md, re-delivery). Its closing stays held, as it was in the
    runtime that delivered it, until that caller acknowledges it: the store keeps the cell
    open with its record, so a runtime that recovers the session after this one died too
    derives the completion again."""
    rec.replaying = False
    if actor.machine.phase not in (Phase.SETTLING, Phase.COMPLETED):
        return  # the record said it ended; its replay did not (a divergence already told)
    journal = rec.journal
    held = journal.hold_close(rec.cell_id)
    try:
        event = await actor.observe(None)
    except CodeModeError:
        if held:
            journal.release_close(rec.cell_id)  # nothing kept: its closing goes as usual
        return
    journal.kept_completion(rec.cell_id, rec.events_delivered, event)


class _PipelineStopped(Exception):
    """The engine could not run the recorded steps back to back (:func:`_replay_once`)."""


# Recorded steps handed to the engine at once when it can run them back to back.
_PIPELINE_STEPS = 4096


async def _replay_all(actor: CellActor, rec: CellRecorder) -> None:
    attempts = 0
    pipelined = True
    try:
        while True:
            attempts += 1
            try:
                await _replay_once(actor, rec, pipelined)
                break
            except _PipelineStopped:
                # A limit or a lost isolate in the middle of the steps run back to back: again
                # in a fresh sandbox, step by step, which reports that ending precisely.
                attempts -= 1
                pipelined = False
                await _fresh_start(actor, rec)
            except EngineLost:
                if attempts >= 2:
                    _diverge_text(actor, "its sandbox died during replay")
                    break
                logger.warning("cell %s: its sandbox died during replay; again", rec.cell_id)
                await _fresh_start(actor, rec)
            except Diverged as exc:
                _diverge_text(actor, f"replay diverged at {exc}")
                break
    finally:
        rec.replaying = False
    machine = actor.machine
    recorded = rec.recorded
    if (
        recorded is not None
        and recorded.deliveries
        and actor.kind is CellKind.CONTINUING
        and rec.events_delivered == len(recorded.deliveries)  # none delivered during replay
        and len(machine.skipped_tail) == recorded.deliveries[-1]
    ):
        # The replay reproduced the last delivered event's items: kept for re-delivery.
        rec.last_event = Yielded(tuple(machine.skipped_tail))
    machine.skipped_tail = []
    if machine.takes_results:
        leftover = rec.recorded.arrived if rec.recorded is not None else {}
        for call_id, item in leftover.items():
            if call_id in rec.virtual:
                rec.virtual.discard(call_id)
                actor._apply(machine.call_returned(call_id))
            ok, text = bool(item[2]), str(item[3])
            actor._ready.append(
                ToolResultInput(call_id, True, value_json=text)
                if ok
                else ToolResultInput(call_id, False, message=text)
            )
        for effect in rec.deferred:
            actor._apply((effect,))
        for result in rec.rejections.values():
            actor._ready.append(result)
        if rec.recorded is not None and rec.recorded.timers and actor._timers:
            _timers_at_recorded_times(actor, rec.recorded.timers)


def _timers_at_recorded_times(actor: CellActor, recorded: dict[int, float]) -> None:
    """The timers still pending after a replay were set again by it, each its whole delay from
    now: make each due at the wall-clock time it was recorded with instead (at once if that
    time has passed), so a recovery does not postpone a timer by the time the cell was down."""
    wall, mono = time.time(), time.monotonic()
    for timer_id in actor._timers:
        due = recorded.get(timer_id)
        if due is not None:
            actor._timers[timer_id] = mono + max(due - wall, 0.0)
    actor._timer_heap = [(due, timer_id) for timer_id, due in actor._timers.items()]
    heapq.heapify(actor._timer_heap)


async def _fresh_start(actor: CellActor, rec: CellRecorder) -> None:
    assert rec.reopen is not None
    actor._engine.close()
    actor.machine = CellMachine(actor.cell_id, actor.kind, max_parallel=actor.machine.max_parallel)
    actor._timers.clear()
    actor._timer_heap.clear()
    actor._ready.clear()
    actor._pending_ids = ()
    rec.calls.clear()
    rec.virtual.clear()
    rec.deferred.clear()
    rec.rejections.clear()
    if rec.recorded is not None:
        rec.recorded.notified = rec.notified_before
    actor._engine = await rec.reopen()


def _diverge_text(actor: CellActor, what: str) -> None:
    text = f"exec cell {actor.cell_id} could not be recovered: {what}"
    logger.warning("%s", text)
    actor._apply(actor.machine.engine_lost(text))
    actor._engine.close()


def _lost_again(actor: CellActor, recorded: RecordedCell) -> None:
    """End a replayed cell as its recorded completion says its engine was lost."""
    if actor.machine.takes_results:
        actor._apply(actor.machine.engine_lost(recorded.completed_error))
    actor._engine.close()


def _check_reads(rec: CellRecorder, seen: list[EnvRead], report: StepReport, step: int) -> None:
    assert rec.recorded is not None
    expected = rec.recorded.reads
    for read in report.reads:
        n = len(seen)
        if n < len(expected) and expected[n] != read:
            raise Diverged(
                f"step {step}: read {n + 1} of the environment was {read.source} "
                f"{read.value!r}, the record has {expected[n].source} {expected[n].value!r}"
            )
        seen.append(read)


async def _record_new_reads(rec: CellRecorder, seen: list[EnvRead]) -> None:
    """Reads a replayed command made past the record (its process died after recording the
    command's inputs, before its reads): record them before any effect of the command is
    carried out, as a live step does, so that what the cell does with them (a call it issues)
    is replayed the same way after another restart. They join the record in memory too (a
    fresh sandbox of this recovery answers them, see ``reopen`` in session.py)."""
    assert rec.recorded is not None
    expected = rec.recorded.reads
    if len(seen) > len(expected):
        new = seen[len(expected) :]
        expected.extend(new)
        rec.journal.entry(rec.cell_id, READS, {"r": [[r.source, r.value, r.count] for r in new]})
        await rec.journal.flush()


def _recorded_inputs(payload: Any) -> list[StepInput]:
    """A recorded step's inputs, as they were applied (unchecked: see :func:`_replay_once`)."""
    inputs: list[StepInput] = []
    for item in payload["i"]:
        if item[0] == "r":
            if item[2]:
                inputs.append(ToolResultInput(item[1], True, value_json=item[3]))
            else:
                inputs.append(ToolResultInput(item[1], False, message=item[3]))
        else:
            inputs.append(TimerFired(int(item[1])))
    return inputs


class _Reports:
    """The reports of a recovered cell's recorded steps.

    Step by step, each comes from :meth:`EngineCell.step` when the replay reaches it. With an
    engine that can run recorded steps back to back (``replay_steps``, the V8 engine), they
    are run in windows of :data:`_PIPELINE_STEPS` ahead of the host's checks: the first window
    before the host handles anything of the cell (so a window that stops early costs nothing
    but a fresh start, see :func:`_replay_all`). Each step's inputs are the record's, in their
    recorded grouping; the host still checks each of them against what the cell issued, and
    every report, in order, as before."""

    def __init__(self, actor: CellActor, recorded: RecordedCell, pipelined: bool) -> None:
        self._actor = actor
        self._run: Any = getattr(actor._engine, "replay_steps", None) if pipelined else None
        self._inputs: list[list[StepInput]] = []
        if self._run is not None:
            for entry in recorded.entries:
                if entry.seq == recorded.cut_seq:
                    break
                if entry.kind == STEP:
                    try:
                        self._inputs.append(_recorded_inputs(entry.payload))
                    except (KeyError, IndexError, TypeError, ValueError):
                        break  # a malformed step: checked (and refused) when reached
        self._window: list[StepReport] = []
        self._base = 0  # the index of the window's first step
        self._short = False  # the last window ended early (a step settled the cell)

    async def prefetch(self) -> None:
        if self._run is not None and self._inputs:
            await self._fetch(0)

    async def _fetch(self, base: int) -> None:
        window = self._inputs[base : base + _PIPELINE_STEPS]
        got = await self._run(window)
        if got is None:
            raise _PipelineStopped()
        self._base, self._window = base, got
        self._short = len(got) < len(window)

    async def report(self, index: int, inputs: list[StepInput], step: int) -> StepReport:
        """The report of recorded step ``index`` (from 0), whose checked inputs are ``inputs``."""
        if self._run is None or index >= len(self._inputs):
            return await self._actor._engine.step(inputs)
        if index >= self._base + len(self._window):
            if self._short:
                raise Diverged(f"step {step}: the cell has ended where the record goes on")
            await self._fetch(index)
        return self._window[index - self._base]


async def _replay_once(actor: CellActor, rec: CellRecorder, pipelined: bool = False) -> None:
    recorded = rec.recorded
    assert recorded is not None
    machine = actor.machine
    if actor.kind is CellKind.CONTINUING:
        last = recorded.deliveries[-1] if recorded.deliveries else 0
        machine.restore_delivered(sum(recorded.deliveries), bool(recorded.deliveries), last)
    reads: list[EnvRead] = []
    step = 0
    seen_resumes = 0
    if recorded.cut_seq == 0:
        _lost_again(actor, recorded)  # lost in its first command: nothing ran
        return
    report = await actor._engine.run()
    reports = _Reports(actor, recorded, pipelined and report.settlement is None)
    await reports.prefetch()
    _check_reads(rec, reads, report, step)
    await _record_new_reads(rec, reads)
    actor._handle(report)
    for entry in recorded.entries:
        if entry.seq == recorded.cut_seq:
            _lost_again(actor, recorded)
            return
        machine = actor.machine
        kind = entry.kind
        payload = entry.payload
        if kind == STEP:
            step += 1
            if not machine.may_run:
                raise Diverged(f"step {step}: the cell has ended where the record goes on")
            inputs: list[StepInput] = []
            for item in payload["i"]:
                if item[0] == "r":
                    _, call_id, ok, text, tool, digest = item
                    issued = rec.calls.pop(call_id, None)
                    if issued is None:
                        raise Diverged(
                            f"step {step}: {call_id} of tool {tool} was not called again"
                        )
                    if tool and issued[0] != tool:
                        raise Diverged(
                            f"step {step}: {call_id} called tool {issued[0]}, the record has {tool}"
                        )
                    if digest and issued[1] != digest:
                        raise Diverged(f"step {step}: {call_id} called {tool} with other input")
                    if call_id in rec.virtual:
                        rec.virtual.discard(call_id)
                        actor._apply(machine.call_returned(call_id))
                    rec.rejections.pop(call_id, None)
                    if ok:
                        inputs.append(ToolResultInput(call_id, True, value_json=text))
                    else:
                        inputs.append(ToolResultInput(call_id, False, message=text))
                else:
                    timer_id = int(item[1])
                    if actor._timers.pop(timer_id, None) is None:
                        raise Diverged(f"step {step}: timer {timer_id} was not set")
                    inputs.append(TimerFired(timer_id))
            machine.inputs_applied()
            report = await reports.report(step - 1, inputs, step)
            _check_reads(rec, reads, report, step)
            await _record_new_reads(rec, reads)
            actor._handle(report)
        elif kind == RESUME:
            generation = int(payload["g"])
            actor._apply(machine.quiescent(actor._pending_ids))
            if not machine.is_paused or machine.generation != generation:
                raise Diverged(f"step {step}: frontier {generation} was not reached again")
            if payload.get("seen"):
                seen_resumes += 1
                machine.observe()  # the frontier had been delivered
            actor._apply(machine.resume(generation).effects)
        elif kind == APPROVE:
            try:
                actor._apply(machine.approve(str(payload["c"])))
            except CodeModeError as exc:
                raise Diverged(f"step {step}: {exc}") from None
        elif kind == REJECT:
            try:
                actor._apply(machine.reject(str(payload["c"]), str(payload["m"])))
            except CodeModeError as exc:
                raise Diverged(f"step {step}: {exc}") from None
    if len(reads) < len(recorded.reads):
        raise Diverged(
            f"step {step}: the cell read its environment {len(reads)} times, "
            f"the record has {len(recorded.reads)}"
        )
    machine = actor.machine
    if recorded.completed and machine.takes_results:
        # Its engine was lost between two commands (7.6): it completes so again.
        _lost_again(actor, recorded)
        return
    pausable = actor.kind is CellKind.PAUSABLE
    seen = len(recorded.deliveries) > seen_resumes
    if pausable and (seen or recorded.paused_at_end) and machine.may_run:
        # The cell was paused at its current frontier: take it where it was taken.
        actor._apply(machine.quiescent(actor._pending_ids))
        if machine.is_paused and seen:
            machine.observe()  # it had been delivered
