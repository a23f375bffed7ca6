"""The ``SessionStore`` interface: where durable sessions live (docs/durability.md).

A store records, for each session: the session row (id, limits as JSON, creation time), one
lease (which runtime owns the session, until when), the session's cells (id, kind, request,
idempotency key and fingerprint, open or closed), an append-only journal per cell (entries with a
per-cell sequence number, a kind and a JSON payload), the delivered-event boundaries of each cell,
the stored values and the idempotency keys. It knows nothing of what cells mean: kinds and
payloads are opaque JSON to it.

Every write goes through :meth:`SessionStore.write`, one atomic transaction for a whole
:class:`Batch` (a writer records one batch per engine step), and is conditional on the writer
still holding the session's lease: a runtime that lost its lease (it was partitioned away and its
lease expired, or another runtime took over) gets :class:`~codemode.errors.SessionBusy` and
writes nothing. Reads need no lease.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from codemode.errors import StoreError

__all__ = [
    "Batch",
    "CellJournal",
    "CellRecord",
    "Delivery",
    "Entry",
    "JournalEntry",
    "KeyRecord",
    "Lease",
    "NewCell",
    "OpenedSession",
    "SessionRecord",
    "SessionStore",
]

CellState = Literal["open", "closed"]


@dataclass(frozen=True)
class SessionRecord:
    """A session as recorded: its id, its limits (JSON) and when it was created (Unix seconds)."""

    session_id: str
    limits: Any
    created: float


@dataclass(frozen=True)
class Lease:
    """The lease a runtime holds on a session.

    ``epoch`` grows by one each time the session changes hands (a first open, an open after a
    release, a takeover); ``taken_over`` says this acquisition took the session from a holder whose
    lease had expired without a release. The lease lasts ``seconds`` from the moment the store
    granted or renewed it, by the store's clock (the machine's for SQLite, the server's for
    PostgreSQL); a holder must stop driving its cells before that, by its own clock, counted from
    when it asked.
    """

    session_id: str
    owner: str
    epoch: int
    seconds: float
    taken_over: bool = False


@dataclass(frozen=True)
class OpenedSession:
    """What :meth:`SessionStore.open_session` returns: the session, the lease, and whether this
    call created the session."""

    session: SessionRecord
    lease: Lease
    created: bool


@dataclass(frozen=True)
class NewCell:
    """A cell to record as admitted (open). ``request`` is JSON; the key and fingerprint, when
    given, are also recorded as the session's idempotency key (which outlives the cell)."""

    cell_id: str
    kind: str
    request: Any
    idempotency_key: str | None = None
    fingerprint: str | None = None


@dataclass(frozen=True)
class CellRecord:
    """A cell as recorded. ``entries`` is the number of journal entries appended so far (the last
    sequence number; sequence numbers start at 1) and ``delivered`` the number of delivered-event
    boundaries recorded."""

    cell_id: str
    kind: str
    request: Any
    idempotency_key: str | None
    fingerprint: str | None
    state: CellState
    created: float
    entries: int
    delivered: int


@dataclass(frozen=True)
class Entry:
    """A journal entry to append to ``cell_id``'s journal: a kind and a JSON payload."""

    cell_id: str
    kind: str
    payload: Any


@dataclass(frozen=True)
class JournalEntry:
    """A journal entry as recorded, with its per-cell sequence number (1, 2, 3, ...)."""

    cell_id: str
    seq: int
    kind: str
    payload: Any


@dataclass(frozen=True)
class Delivery:
    """A delivered-event boundary: an event of ``cell_id`` reached an observer carrying ``items``
    output items."""

    cell_id: str
    items: int


@dataclass(frozen=True)
class CellJournal:
    """A recorded cell with everything a reopen needs of it: its record, its whole journal (in
    order) and its delivered-event boundaries (in order)."""

    record: CellRecord
    entries: list[JournalEntry]
    deliveries: list[int]


@dataclass(frozen=True)
class KeyRecord:
    """An idempotency key of a session, with the request fingerprint and the cell it admitted."""

    key: str
    fingerprint: str | None
    cell_id: str


@dataclass(frozen=True)
class Batch:
    """Everything one engine step records, written in one transaction, applied in this order:
    new cells, journal entries, deliveries, closed cells, stored values (set, then deleted),
    forgotten idempotency keys, deleted journals.

    - ``entries`` may name cells of ``cells`` (admission and first step in one batch) and cells
      of ``closed`` (a terminal outcome and the close in one batch); never a cell closed before.
    - ``values`` replaces those stored values (JSON); ``values_deleted`` removes keys.
    - ``journals_deleted`` deletes the journal and deliveries of cells that are closed (by an
      earlier batch or by this one); naming an open cell is a :class:`StoreError`.
    """

    cells: Sequence[NewCell] = ()
    entries: Sequence[Entry] = ()
    deliveries: Sequence[Delivery] = ()
    closed: Sequence[str] = ()
    values: Mapping[str, Any] = field(default_factory=dict)
    values_deleted: Sequence[str] = ()
    keys_deleted: Sequence[str] = ()
    journals_deleted: Sequence[str] = ()

    def is_empty(self) -> bool:
        return not (
            self.cells
            or self.entries
            or self.deliveries
            or self.closed
            or self.values
            or self.values_deleted
            or self.keys_deleted
            or self.journals_deleted
        )


@runtime_checkable
class SessionStore(Protocol):
    """Where durable sessions live. :class:`~codemode.SqliteStore` (one file, several processes of
    one machine) and :class:`~codemode.PostgresStore` (shared by the hosts of a cluster) implement
    it with the same semantics.

    Errors: every method raises :class:`~codemode.StoreError` when the store cannot do its job
    (unreachable, corrupt, read-only, full, a newer schema); writes raise
    :class:`~codemode.SessionBusy` when the writer does not hold the session's lease.
    """

    @property
    def lease_seconds(self) -> float:
        """How long a lease lasts after it was granted or last renewed."""
        ...

    async def open_session(self, session_id: str, owner: str, *, limits: Any) -> OpenedSession:
        """Create the session (with ``limits``) unless it exists, and give ``owner`` its lease.

        Atomic: of several runtimes opening one session at once, exactly one gets the lease.
        Succeeds when nobody holds the lease, when ``owner`` holds it already (it is renewed),
        or when the holder's lease has expired (a takeover); otherwise raises ``SessionBusy``.
        An existing session keeps its recorded limits; ``limits`` is ignored then.
        """
        ...

    async def renew_lease(self, session_id: str, owner: str) -> Lease:
        """Extend ``owner``'s lease by ``lease_seconds`` from now. Raises ``SessionBusy`` when
        ``owner`` no longer holds it (another owner took it over, or it was released): the lease
        is lost, and the holder must stop driving the session's cells. A lease that expired
        without anyone taking it over is renewed (its holder's writes were refused meanwhile)."""
        ...

    async def release_lease(self, session_id: str, owner: str) -> None:
        """Give the lease up if ``owner`` holds it (the next open takes it without waiting);
        nothing happens otherwise."""
        ...

    async def write(self, session_id: str, owner: str, batch: Batch) -> list[int]:
        """Apply ``batch`` in one transaction, all or nothing, if ``owner`` holds an unexpired
        lease on the session; otherwise write nothing and raise ``SessionBusy``.

        Returns the sequence numbers given to ``batch.entries``, in order: per cell they follow
        the last recorded one without a gap. A cell id or idempotency key already recorded, an
        entry or delivery for an unknown or closed cell, or a deleted journal of an open cell
        raises ``StoreError`` and writes nothing. A write whose caller is cancelled may still
        land, whole.
        """
        ...

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """The session's record, or ``None`` when the store has no such session."""
        ...

    async def get_lease(self, session_id: str) -> Lease | None:
        """The session's current unexpired lease, or ``None`` when nobody holds one."""
        ...

    async def list_cells(
        self, session_id: str, *, state: CellState | None = None
    ) -> list[CellRecord]:
        """The session's recorded cells (of that state, if given), in admission order."""
        ...

    async def get_cell(self, session_id: str, cell_id: str) -> CellRecord | None:
        """One recorded cell, or ``None``."""
        ...

    async def read_journal(
        self, session_id: str, cell_id: str, *, after: int = 0
    ) -> list[JournalEntry]:
        """The cell's journal entries with a sequence number above ``after``, in order."""
        ...

    async def deliveries(self, session_id: str, cell_id: str) -> list[int]:
        """The cell's delivered-event boundaries in order: how many items each event carried."""
        ...

    async def read_cells(
        self, session_id: str, *, state: CellState | None = None
    ) -> list[CellJournal]:
        """The session's recorded cells (of that state, if given) in admission order, each with
        its whole journal and its deliveries: what :meth:`list_cells`, :meth:`read_journal` and
        :meth:`deliveries` give, read in one go and as of one moment (a reopen reads the cells
        it recovers so)."""
        ...

    async def get_values(self, session_id: str) -> dict[str, Any]:
        """The session's stored values."""
        ...

    async def list_keys(self, session_id: str) -> list[KeyRecord]:
        """The session's idempotency keys, in the order they were recorded."""
        ...

    async def delete_cells(self, session_id: str, owner: str) -> None:
        """Delete every cell of the session with its journal and deliveries (at shutdown); stored
        values and idempotency keys stay. Conditional on the lease like :meth:`write`."""
        ...

    async def delete_session(self, session_id: str) -> None:
        """Delete everything the store holds of the session (retention); no lease needed."""
        ...

    async def close(self) -> None:
        """Release the store's connections and threads. Idempotent."""
        ...


# ------------------------------------------------------------------------------ shared helpers


# json.dumps with these options builds an encoder at every call: made once (the same text).
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def dump_json(value: Any, what: str) -> str:
    """JSON text of ``value`` (compact, exact); a value JSON cannot hold is a StoreError."""
    try:
        return _dumps(value)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"the store cannot record {what}: {exc}") from exc


def load_json(text: str) -> Any:
    return json.loads(text)


def group_cells(
    records: Sequence[CellRecord],
    entries: Iterable[tuple[str, int, str, str]],
    deliveries: Iterable[tuple[str, int]],
) -> list[CellJournal]:
    """:meth:`SessionStore.read_cells` from rows read in one go: ``records`` in admission
    order, the session's journal rows ``(cell_id, seq, kind, payload_json)`` and delivery rows
    ``(cell_id, items)``, each cell's in order; rows of other cells are skipped."""
    journals = {r.cell_id: CellJournal(r, [], []) for r in records}
    for cell_id, seq, kind, payload in entries:
        cell = journals.get(cell_id)
        if cell is not None:
            cell.entries.append(JournalEntry(cell_id, int(seq), kind, load_json(payload)))
    for cell_id, items in deliveries:
        cell = journals.get(cell_id)
        if cell is not None:
            cell.deliveries.append(int(items))
    return list(journals.values())


def check_batch(batch: Batch) -> None:
    """Refuse a malformed batch before any I/O (StoreError)."""
    seen: set[str] = set()
    for cell in batch.cells:
        if cell.cell_id in seen:
            raise StoreError(f"the batch admits cell {cell.cell_id} twice")
        seen.add(cell.cell_id)
    for delivery in batch.deliveries:
        if isinstance(delivery.items, bool) or not isinstance(delivery.items, int):
            raise StoreError("a delivery's item count must be an integer")
        if delivery.items < 0:
            raise StoreError("a delivery's item count cannot be negative")
    overlap = set(batch.values) & set(batch.values_deleted)
    if overlap:
        raise StoreError(f"the batch both sets and deletes stored value {sorted(overlap)[0]}")
