"""The observation records of the protocol server (``docs/protocol.md``, observation numbering).

Sans-IO: no event loop, no clock, no V8. :class:`ObservationRecords` keeps, per cell of one
served session, the latest observation (its number, the request that started it and its state)
and decides what a ``cell/wait`` / ``cell/waitToPending`` or an ``observation/release`` means:

- observation numbers start at 0 per cell and increase by one; any other number is an
  ``ObservationConflict`` naming the number expected;
- the latest number repeated with the *same* request is a replay: it joins the running
  observation or answers its recorded outcome; with a different request, or after release, it is
  an ``ObservationConflict``;
- the next number while the latest observation is still pending is ``BusyObserver``;
- only a finished terminal observation (a ``completed`` / ``terminated`` event, or an error) can be
  released; releasing an older number is a no-op, a newer one a conflict;
- at most :data:`MAX_TERMINAL_RECORDS` unreleased terminal outcomes are kept (the oldest is
  released first), and beyond :data:`MAX_RECORDS` records those of closed cells are dropped,
  oldest first.

The server drives it: it starts the observation task for a new record, and reports the task's
outcome with :meth:`ObservationRecords.finish`.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from codemode.cell.observers import refuse_second_observer
from codemode.errors import ObservationConflict
from codemode.protocol.rpc import RpcError

__all__ = [
    "MAX_RECORDS",
    "MAX_TERMINAL_RECORDS",
    "ObservationRecord",
    "ObservationRecords",
    "ObservationRequest",
    "ObservationState",
]

MAX_TERMINAL_RECORDS: Final = 4096
"""Unreleased terminal observation outcomes kept per session; oldest dropped first."""
MAX_RECORDS: Final = 65536
"""Observation records (released ones and those of closed cells included) kept per session before
records of closed cells are dropped, oldest first."""


class ObservationState(enum.Enum):
    PENDING = "pending"  # the observation runs
    FINISHED = "finished"  # its outcome is recorded (replayable)
    RELEASED = "released"  # its outcome was released (or dropped by the bound)


@dataclass(frozen=True)
class ObservationRequest:
    """What identifies an observation request: a replay must repeat every field."""

    method: str  # "cell/wait" or "cell/waitToPending"
    session_id: str
    cell_id: str
    generation: int
    yield_after_ms: Any = None  # cell/wait only


@dataclass(eq=False)
class ObservationRecord:
    """The latest observation of one cell."""

    request: ObservationRequest
    state: ObservationState = ObservationState.PENDING
    result: dict[str, Any] | None = None  # the event, when it finished with one
    error: dict[str, Any] | None = None  # the JSON-RPC error object, when it failed
    terminal: bool = False
    task: Any = None  # the driver's handle on the running observation (opaque here)

    @property
    def generation(self) -> int:
        return self.request.generation

    @property
    def pending(self) -> bool:
        return self.state is ObservationState.PENDING

    def outcome(self) -> dict[str, Any]:
        """The recorded event, or raise the recorded error."""
        if self.error is not None:
            raise RpcError(self.error["code"], self.error["message"], self.error.get("data"))
        assert self.result is not None
        return self.result


class ObservationRecords:
    """The observation records of one served session (see the module docstring)."""

    def __init__(self, is_live: Callable[[str], bool]) -> None:
        self._is_live = is_live  # whether the session still has the cell
        self.records: dict[str, ObservationRecord] = {}
        self._terminal: OrderedDict[str, None] = OrderedDict()

    def get(self, cell_id: str) -> ObservationRecord | None:
        return self.records.get(cell_id)

    def observe(self, request: ObservationRequest) -> tuple[ObservationRecord, bool]:
        """The record answering ``request`` and whether it is new (the driver must then start
        the observation and store its handle in ``record.task``), or raise
        ``ObservationConflict`` / ``BusyObserver``."""
        cell_id, generation = request.cell_id, request.generation
        record = self.records.get(cell_id)
        if record is not None and generation == record.generation:
            if record.request != request:
                raise ObservationConflict(
                    cell_id,
                    generation,
                    f"observation generation {generation} for cell {cell_id} was reused for a "
                    "different request",
                )
            if record.state is ObservationState.RELEASED:
                raise ObservationConflict(
                    cell_id,
                    generation,
                    f"observation generation {generation} for cell {cell_id} was released",
                )
            return record, False
        expected = 0 if record is None else record.generation + 1
        if generation != expected:
            if record is None:
                message = f"first observation for cell {cell_id} must use generation 0"
            else:
                message = (
                    f"expected observation generation {expected} for cell {cell_id}, "
                    f"got {generation}"
                )
            raise ObservationConflict(cell_id, generation, message)
        refuse_second_observer(cell_id, record is not None and record.pending)
        record = ObservationRecord(request)
        self.records.pop(cell_id, None)
        self._terminal.pop(cell_id, None)
        self.records[cell_id] = record
        if len(self.records) > MAX_RECORDS:
            self._prune()
        return record, True

    def finish(
        self,
        record: ObservationRecord,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        terminal: bool,
    ) -> None:
        """The observation of ``record`` ended with ``result`` (an event) or ``error``."""
        record.result = result
        record.error = error
        record.terminal = terminal
        record.state = ObservationState.FINISHED
        record.task = None
        cell_id = record.request.cell_id
        if terminal and self.records.get(cell_id) is record:
            self._terminal[cell_id] = None
            while len(self._terminal) > MAX_TERMINAL_RECORDS:
                oldest, _ = self._terminal.popitem(last=False)
                self._drop_outcome(self.records[oldest])

    @staticmethod
    def _drop_outcome(record: ObservationRecord) -> None:
        record.state = ObservationState.RELEASED
        record.result = None
        record.error = None

    def release(self, cell_id: str, generation: int) -> None:
        """``observation/release``: free a finished terminal outcome (see the module docstring)."""
        record = self.records.get(cell_id)
        if record is None or generation < record.generation:
            return
        if generation > record.generation:
            raise ObservationConflict(
                cell_id,
                generation,
                f"cannot release future observation generation {generation} for cell "
                f"{cell_id}; latest generation is {record.generation}",
            )
        if record.state is ObservationState.RELEASED:
            return
        if record.pending:
            raise ObservationConflict(
                cell_id,
                generation,
                f"observation generation {generation} for cell {cell_id} is still pending",
            )
        if not record.terminal:
            raise ObservationConflict(
                cell_id,
                generation,
                f"observation generation {generation} for cell {cell_id} is not terminal",
            )
        self._drop_outcome(record)
        self._terminal.pop(cell_id, None)

    def _prune(self) -> None:
        excess = len(self.records) - MAX_RECORDS
        for cell_id in list(self.records):
            if excess <= 0:
                break
            record = self.records[cell_id]
            if record.pending or self._is_live(cell_id):
                continue
            del self.records[cell_id]
            self._terminal.pop(cell_id, None)
            excess -= 1
