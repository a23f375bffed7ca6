"""``SessionRuntime``: the cells of one session, their kinds, stored values and lifecycle.

The session layer owns the registry of cells (with each cell's kind, the single source of its
execution policy), idempotent admission, the stored-value map, the session-wide limits and shutdown
(docs/sessions.md). Every rule about one cell's observation and termination lives in
the cell layer; the methods here check the handle, find the cell and delegate.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import secrets
import socket
import sys
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any

from codemode.cell.actor import CellActor
from codemode.cell.stored import StoredBudgetExceeded, StoredSnapshot
from codemode.contract import Session
from codemode.engine.base import CellBoot, Engine, limit_error_text
from codemode.errors import (
    CodeModeError,
    EngineError,
    IdempotencyConflict,
    MissingCell,
    SessionBusy,
    ShuttingDown,
    StoreError,
    WrongCellKind,
)
from codemode.model import (
    ApprovalRequest,
    Cell,
    CellEvent,
    CellKind,
    CellLimits,
    Completed,
    CreateCellRequest,
    NestedToolCall,
    NotifyFunction,
    PausableCell,
    PausableCellEvent,
    Pending,
    ResumeOutcome,
    SessionDelegate,
    Terminated,
    ToolDefinition,
    ToolFunction,
    Yielded,
)
from codemode.registry import CellRegistry
from codemode.tools.catalog import reference_json

if TYPE_CHECKING:
    from codemode.cell.journal import CellRecorder, Journal
    from codemode.store.base import CellJournal, SessionStore
    from codemode.store.lease import LeaseKeeper

__all__ = ["SessionRuntime", "new_cell_id", "tools_delegate"]

logger = logging.getLogger("codemode.session")

CELL_ID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def new_cell_id() -> str:
    """A fresh 16-character cell id: 80 random bits in the alphabet of docs/safety.md."""
    bits = secrets.randbits(80)
    chars = []
    for _ in range(16):
        chars.append(CELL_ID_ALPHABET[bits & 31])
        bits >>= 5
    return "".join(chars)


def _fingerprint(request: CreateCellRequest, kind: CellKind) -> str:
    """A digest of the whole request and the kind of create (docs/sessions.md rule 2)."""
    doc = {
        "kind": str(kind),
        "source": request.source,
        "tool_call_id": request.tool_call_id,
        "tools": [asdict(t) for t in request.tools],
    }
    text = json.dumps(doc, sort_keys=True, default=repr, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class _KeyRecord:
    cell_id: str
    kind: CellKind
    fingerprint: str


class _FunctionDelegate:
    def __init__(self, tools: Mapping[str, ToolFunction], notify: NotifyFunction | None) -> None:
        self._tools = dict(tools)
        self._notify = notify

    async def invoke_tool(self, call: NestedToolCall) -> Any:
        fn = self._tools.get(call.tool.name)
        if fn is None:
            raise LookupError(f"no handler for tool {call.tool.name}")
        result = fn(call.input)
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            result = await result
        return result

    async def notify(self, call_id: str, cell_id: str, text: str) -> None:
        if self._notify is not None:
            await self._notify(call_id, cell_id, text)


def tools_delegate(
    tools: Mapping[str, ToolFunction], notify: NotifyFunction | None = None
) -> SessionDelegate:
    """A delegate that dispatches each nested call by tool name to a plain function.

    Each function is called with the call's input (a dict for function tools, a str for
    freeform tools) and may be sync or async; its return value resolves the call. ``notify``, if
    given, receives ``(call_id, cell_id, text)`` for every ``notify(...)`` of a cell.
    """
    return _FunctionDelegate(tools, notify)


# How long ``open`` waits for the replays of a reopened session's cells (docs/durability.md):
# replays still going on then (a cell that spins) continue in the background.
REPLAY_GRACE = 2.0

# A stored-values map with more keys than this has its JSON joined on a worker thread.
_THREAD_SNAPSHOT_KEYS = 10_000


class _SessionCore:
    """The state a session's cells share. Cells reference this, never the runtime object."""

    def __init__(self, delegate: SessionDelegate, limits: CellLimits, engine: Engine) -> None:
        self.delegate = delegate
        self.limits = limits
        self.engine = engine
        self.alive = True
        self.cells: CellRegistry[CellActor] = CellRegistry()  # owns the handles' identity
        self.stored = StoredSnapshot()  # immutable; each commit makes a new one
        # (snapshot, writes, result) of the merge writes_refused just checked
        self._merged: tuple[StoredSnapshot, dict[str, Any], StoredSnapshot | None] | None = None
        self.keys: OrderedDict[str, _KeyRecord] = OrderedDict()
        self.admitting_keys: dict[str, asyncio.Future[None]] = {}
        self.admission_tasks: set[asyncio.Task[str]] = set()
        self.admissions = 0
        self.admissions_idle = asyncio.Event()
        self.admissions_idle.set()
        self.shutdown_task: asyncio.Task[None] | None = None
        self.loop = asyncio.get_running_loop()
        # durable sessions (docs/durability.md): None without a store
        self.session_id = ""
        self.journal: Journal | None = None
        self.keeper: LeaseKeeper | None = None
        self.lost = False  # the lease was lost: every call raises SessionBusy
        self.failed: StoreError | None = None  # the store failed: every call raises it
        self.ending = asyncio.Event()  # shutdown or suspend began: open stops waiting

    # CellHost
    def commit_writes(self, writes: dict[str, Any]) -> None:
        # writes_refused was asked first, in this same step, and merged them already.
        merged, self._merged = self._merged, None
        if (
            merged is not None
            and merged[2] is not None
            and merged[0] is self.stored
            and merged[1] == writes
        ):
            self.stored = merged[2]
        else:
            self.stored = self.stored.merged(writes, self.limits.max_stored_bytes)

    def prepare_writes(self, writes: dict[str, Any]) -> Any:
        base = self.stored
        try:
            return (base, writes, base.merged(writes, self.limits.max_stored_bytes))
        except StoredBudgetExceeded:
            return (base, writes, None)

    def writes_refused(self, writes: dict[str, Any], prepared: Any = None) -> str | None:
        if prepared is None or prepared[0] is not self.stored or prepared[1] != writes:
            prepared = self.prepare_writes(dict(writes))
        self._merged = prepared
        if prepared[2] is None:
            return limit_error_text(self.limits, "max_stored_bytes")
        return None

    def cell_closed(self, cell_id: str) -> None:
        self.cells.remove(cell_id)
        if self.journal is not None:
            self.journal.closed(cell_id)

    def lease_lost(self) -> None:
        """Another runtime took the session over (or the lease ran out): stop every cell here
        without recording anything; later calls raise ``SessionBusy``."""
        if self.lost:
            return
        logger.warning("session %s: lease lost; its cells stop here", self.session_id)
        self.lost = True
        self.alive = False
        if self.keeper is not None:
            self.keeper.cancel()
        if self.journal is not None:
            self.journal.muted = True
        if self.failed is None:  # else they stopped already, and stay known (store_failed)
            self.halt_cells(SessionBusy(self.session_id))

    def store_failed(self, error: StoreError) -> None:
        """The store refused a write of the journal (docs/durability.md, "When the store
        fails"): nothing more can be recorded, so no cell can go on here. Every cell stops
        without an outcome, as at a suspend (its JavaScript stops, its delegate calls are
        cancelled, observers waiting on it get ``error``), and every later call on the session
        raises ``error``; the cells stay open in the store, and a later ``open`` recovers them
        from their last recorded step. The cells stay known here (``is_live``), never
        ``MissingCell``: they are not closed."""
        if self.failed is not None or self.lost:
            return
        logger.error(
            "session %s: the store failed (%s); its cells stop here", self.session_id, error
        )
        self.failed = error
        if self.journal is not None:
            self.journal.muted = True
        for actor in self.cells.entries():
            with _suppress_all():
                actor.halt(error)

    def halt_cells(self, error: BaseException) -> None:
        for actor in self.cells.entries():
            with _suppress_all():
                actor.halt(error)
        self.cells.clear()

    def loop_closing(self) -> None:
        if self.alive or self.cells:
            logger.warning("event loop closing without a shutdown: stopping every cell")
            self.alive = False
            self._abandon_now()

    def abandon(self) -> None:
        """The runtime was dropped without shutdown: stop every cell's JavaScript now."""
        self.alive = False
        if self.keeper is not None:
            with _suppress_all():
                self.keeper.cancel()  # an implicit suspend: the lease expires
        if self.loop.is_closed():
            actors = self.cells.entries()
            for actor in actors:
                with _suppress_all():
                    actor.abandon()
            return
        if threading.get_ident() == getattr(self.loop, "_thread_id", None):
            self._abandon_now()
        else:
            with _suppress_all():
                self.loop.call_soon_threadsafe(self._abandon_now)

    def _abandon_now(self) -> None:
        for actor in self.cells.entries():
            with _suppress_all():
                actor.abandon()
        self.cells.clear()
        with _suppress_all():
            self.engine.close()


async def _replay_over(actor: CellActor, bound: float | None) -> bool:
    """Wait (at most ``bound`` seconds, None: no bound) until a recovered cell's replay is over
    or the cell stopped; False if the time ran out. True at once for a cell that is not
    replaying."""
    recorder = actor.recorder
    if recorder is None or recorder.replayed.is_set():
        return True
    waits = {
        asyncio.ensure_future(recorder.replayed.wait()),
        asyncio.ensure_future(actor.wait_closed()),
    }
    try:
        done, _ = await asyncio.wait(waits, timeout=bound, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waits:
            waiter.cancel()
    return bool(done)


# How many recovered cells of a reopened session open their sandbox at once (session.open).
_RECOVERING_AT_ONCE = 8


@dataclass(frozen=True)
class _Recovered:
    """A recorded cell whose fresh sandbox is open: ``start`` registers it and starts its
    replay (once), else ``engine_cell`` must be closed."""

    engine_cell: Any
    start: Callable[[], CellRecorder]


def _close_unstarted(task: asyncio.Task[_Recovered | None]) -> None:
    """A sandbox opened for a recovery that was given up before its cell started: close it."""
    if not task.cancelled() and task.exception() is None:
        recovered = task.result()
        if recovered is not None:
            recovered.engine_cell.close()


class _suppress_all:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


class SessionRuntime(Session):
    """A code-mode session: runs cells, routes their nested calls to ``delegate``.

    All methods must be called from the event loop the runtime was created on. Use it as an
    ``async with`` block, or call :meth:`shutdown`; a runtime dropped without shutdown stops its
    cells' JavaScript when it is garbage-collected.
    """

    def __init__(
        self,
        delegate: SessionDelegate,
        *,
        limits: CellLimits | None = None,
        engine: Engine | None = None,
        store: SessionStore | None = None,
        session_id: str | None = None,
    ) -> None:
        if engine is None:
            from codemode.engine.choice import default_engine

            engine = default_engine()
        self._core = _SessionCore(delegate, limits or CellLimits(), engine)
        self._core.session_id = str(session_id) if session_id is not None else new_cell_id()
        self._store = store
        self._opened = store is None  # a session without a store needs no open
        self._open_task: asyncio.Task[None] | None = None
        self._finalizer = weakref.finalize(self, _SessionCore.abandon, self._core)

    # ------------------------------------------------------------------ properties

    @property
    def is_alive(self) -> bool:
        """False once shutdown began."""
        return self._core.alive

    @property
    def session_id(self) -> str:
        """The session's id: the one given, else a new one (16 characters)."""
        return self._core.session_id

    @property
    def is_durable(self) -> bool:
        """True when the session keeps its cells in a store (docs/durability.md)."""
        return self._store is not None

    # ------------------------------------------------------------------ durability

    async def open(self) -> SessionRuntime:
        """Load the session from its store, or create it there, and take its lease; re-admit
        every cell that had not closed and return once their replays are over, or at the
        latest ``REPLAY_GRACE`` seconds after (a replay still going on then, such as a cell
        that spins, goes on in the background under the cell's own limits; an operation on
        that cell waits for its replay, a ``wait`` at most its budget). Idempotent; a no-op
        without a store. Raises ``SessionBusy`` when another live runtime holds the session,
        ``StoreError`` when the store cannot serve it."""
        if self._opened:
            return self
        core = self._core
        if not core.alive:
            raise ShuttingDown()
        if self._open_task is None:
            self._open_task = core.loop.create_task(self._open())
        task = self._open_task
        try:
            await asyncio.shield(task)
        except BaseException:
            if task.done() and self._open_task is task:
                self._open_task = None  # a failed open may be retried
            raise
        return self

    async def _open(self) -> None:
        from codemode.cell.journal import Journal
        from codemode.store.lease import LeaseKeeper

        store = self._store
        assert store is not None
        core = self._core
        sid = core.session_id
        owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(6)}"
        keeper = LeaseKeeper(store, sid, owner, on_lost=core.lease_lost)
        sent = time.monotonic()
        opened = await store.open_session(sid, owner, limits=asdict(core.limits))
        keeper.granted(sent, opened.lease)
        keeper.start()
        core.keeper = keeper
        core.journal = Journal(store, sid, owner, keeper, core.lease_lost, core.store_failed)
        try:
            if not opened.created:
                recorded = opened.session.limits
                if isinstance(recorded, dict):
                    core.limits = CellLimits(**recorded)
                values = await store.get_values(sid)
                core.stored = StoredSnapshot().merged(
                    {k: str(v) for k, v in values.items()}, sys.maxsize
                )
                for key in await store.list_keys(sid):
                    kind, _, digest = (key.fingerprint or "").partition(":")
                    if kind in (CellKind.CONTINUING.value, CellKind.PAUSABLE.value):
                        core.keys[key.key] = _KeyRecord(key.cell_id, CellKind(kind), digest)
                # Each recovered cell replays in its own task, under its own limits. open
                # returns once every cell is re-admitted and every replay is over, or at the
                # latest REPLAY_GRACE seconds later (or when a shutdown or suspend begins): a
                # cell whose recorded JavaScript spins holds up no one but its own callers, as
                # each operation on a cell waits for that cell's replay (docs/durability.md).
                cells = await store.read_cells(sid, state="open")
                recovering = [r.replayed.wait() for r in await self._recover_all(cells)]
                if recovering:
                    replays: asyncio.Future[Any] = asyncio.gather(*recovering)
                    ending: asyncio.Future[Any] = core.loop.create_task(core.ending.wait())
                    try:
                        await asyncio.wait(
                            {replays, ending},
                            timeout=REPLAY_GRACE,
                            return_when=asyncio.FIRST_COMPLETED,
                        )
                    finally:
                        ending.cancel()
                        replays.cancel()
                await core.journal.flush()
        except BaseException:
            core.halt_cells(ShuttingDown())
            keeper.cancel()
            with _suppress_all():
                await store.release_lease(sid, owner)
            core.journal = None
            core.keeper = None
            raise
        self._opened = True

    async def _recover_all(self, cells: list[CellJournal]) -> list[CellRecorder]:
        """Admit the recorded ``cells`` again (given in admission order), each in a fresh sandbox
        that replays its record; returns their recorders.

        The sandboxes are opened concurrently, at most :data:`_RECOVERING_AT_ONCE` at a time,
        and each cell is registered and started once its sandbox and those of every cell before
        it are open: the cells are re-admitted in their admission order, as one at a time would
        (the registry's order, and the order in which their replays start, stay that), while the
        store is read once and the opening of a sandbox overlaps the others' and the replays
        already started. A cell that cannot be recovered is logged and recorded closed
        (:meth:`_recover`) and holds up no other. If this is interrupted (cancelled, or a
        failure that is not the cell's own), the sandboxes opened and not started are closed."""
        gate = asyncio.Semaphore(_RECOVERING_AT_ONCE)

        async def opened(cell: CellJournal) -> _Recovered | None:
            async with gate:
                return await self._recover(cell)

        loop = self._core.loop
        tasks = [loop.create_task(opened(cell)) for cell in cells]
        recorders: list[CellRecorder] = []
        started = 0
        try:
            for task in tasks:
                recovered = await task
                started += 1
                if recovered is not None:
                    recorders.append(recovered.start())
        finally:
            for task in tasks[started:]:
                task.cancel()
            for task in tasks[started:]:
                task.add_done_callback(_close_unstarted)
        return recorders

    async def _recover(self, found: CellJournal) -> _Recovered | None:
        """Open a fresh sandbox for a recorded cell, returning what admits it again (its
        actor replays the record first); None when the cell cannot be recovered (its record is
        malformed or no sandbox could be opened): that is logged, and the cell recorded
        closed."""
        from codemode.cell.journal import CellRecorder, RecordedCell, request_from_json

        core = self._core
        assert core.journal is not None
        journal = core.journal
        record = found.record
        try:
            cell = RecordedCell.parse(record, found.entries, found.deliveries)
            request, stored_json = request_from_json(record.request)
            kind = CellKind(record.kind)
            stored = StoredSnapshot.from_values(json.loads(stored_json))
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            logger.error("cell %s cannot be recovered: its record is %s", record.cell_id, exc)
            journal.closed(record.cell_id)
            return None
        tools = tuple(request.tools)
        boot = CellBoot(
            cell_id=record.cell_id,
            source=request.source,
            tools=tools,
            stored=stored,
            limits=core.limits,
            pausable=kind is CellKind.PAUSABLE,
            tool_reference=reference_json(tools),
            replay_reads=tuple(cell.reads),
        )

        async def reopen() -> Any:
            # A fresh sandbox answers the reads recorded so far, those this recovery recorded
            # included (cell/journal.py).
            return await core.engine.open_cell(replace(boot, replay_reads=tuple(cell.reads)))

        try:
            engine_cell = await reopen()
        except EngineError as exc:
            logger.error("cell %s cannot be recovered: %s", record.cell_id, exc)
            journal.closed(record.cell_id)
            return None

        def start() -> CellRecorder:
            recorder = CellRecorder(journal, record.cell_id, kind, recorded=cell, reopen=reopen)
            self._start_actor(
                record.cell_id, kind, engine_cell, tools, request.tool_call_id, recorder
            )
            return recorder

        return _Recovered(engine_cell, start)

    def _start_actor(
        self,
        cell_id: str,
        kind: CellKind,
        engine_cell: Any,
        tools: tuple[ToolDefinition, ...],
        tool_call_id: str,
        recorder: CellRecorder | None,
    ) -> CellActor:
        """Register a cell whose engine cell is open and start driving it: the one place both
        an admission and a recovery (whose ``recorder`` replays the record first) go through."""
        core = self._core
        actor = CellActor(
            cell_id,
            kind,
            engine_cell,
            tools,
            tool_call_id,
            core,
            max_result_bytes=core.limits.max_heap_bytes,
            max_parallel_calls=core.limits.max_parallel_tool_calls,
            recorder=recorder,
        )
        core.cells.add(actor)
        actor.start()
        return actor

    async def suspend(self) -> None:
        """Stop the cells running here without ending them and release the lease: the next
        ``open`` of this session id, in any process sharing the store, recovers them. The
        runtime is finished afterwards (open a new one to continue)."""
        if self._store is None:
            raise RuntimeError("suspend needs a durable session (a store)")
        core = self._core
        core.alive = False
        core.ending.set()
        if self._open_task is not None and not self._opened:
            with _suppress_all():
                await asyncio.shield(self._open_task)
        await core.admissions_idle.wait()
        core.halt_cells(ShuttingDown())
        journal = core.journal
        if journal is not None and not core.lost:
            # Facts already carried out (a step fed to an engine, an event delivered) stay.
            try:
                await journal.flush()
            except CodeModeError as exc:
                logger.warning("session %s: suspending: %s", core.session_id, exc)
            journal.muted = True
        if core.keeper is not None:
            with _suppress_all():
                await core.keeper.stop(release=not core.lost)
        await core.engine.aclose()
        self._finalizer.detach()

    async def _gate(self) -> None:
        """Durable sessions: open first; after a failed store write every call raises its
        ``StoreError``, after a lost lease ``SessionBusy`` (whichever came first)."""
        if not self._opened:
            await self.open()
        self._broken()

    def _gate_sync(self) -> None:
        if not self._opened:
            raise RuntimeError("open the session first")
        self._broken()

    def _broken(self) -> None:
        core = self._core
        if core.failed is not None:
            raise core.failed
        if core.lost:
            raise SessionBusy(core.session_id)

    async def _replayed(
        self, cell: Cell | PausableCell | str, expected: CellKind | None
    ) -> CellActor:
        """Durable sessions: the cell, once its replay (if it is a recovered cell) is over."""
        actor = self._core.cells.resolve(cell, expected)
        recorder = actor.recorder
        if recorder is not None and not recorder.replayed.is_set():
            await _replay_over(actor, None)
            await self._gate()
            actor = self._core.cells.resolve(cell, expected)
        return actor

    async def _recorded(self) -> None:
        """Make the facts of a call durable before its answer reaches the caller. A caller
        cancelled meanwhile still gets its answer: the cell already counts it as delivered."""
        journal = self._core.journal
        if journal is None or not journal.has_pending:
            return
        try:
            await journal.flush()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            await journal.flush()

    async def _delivered(self, actor: CellActor, event: Any, first: bool) -> None:
        recorder = actor.recorder
        if recorder is not None and first and isinstance(event, Yielded | Pending):
            items = event.items if isinstance(event, Yielded) else event.frontier.items
            recorder.delivered(len(items), event)
        await self._recorded()

    @property
    def language(self) -> str:
        """The language of this session's cells: ``"javascript"``, or ``"python"`` on a
        :class:`~codemode.PythonEngine` (model-facing descriptions follow it)."""
        return self._core.engine.language

    @property
    def limits(self) -> CellLimits:
        """The limits applied to every cell of this session."""
        return self._core.limits

    # ------------------------------------------------------------------ creation

    async def create_cell(self, request: CreateCellRequest) -> Cell:
        """Admit a continuing cell and return its handle without waiting for it to run."""
        cell_id = await self._create(request, CellKind.CONTINUING)
        return Cell(cell_id, self._core.cells.owner)

    async def create_pausable_cell(self, request: CreateCellRequest) -> PausableCell:
        """Admit a pausable cell; it runs to its first frontier and pauses there."""
        cell_id = await self._create(request, CellKind.PAUSABLE)
        return PausableCell(cell_id, self._core.cells.owner)

    async def _create(self, request: CreateCellRequest, kind: CellKind) -> str:
        if self._store is not None:
            await self._gate()
        core = self._core
        if not core.alive:
            raise ShuttingDown()
        if not isinstance(request, CreateCellRequest):
            raise TypeError(f"expected a CreateCellRequest, got {type(request).__name__}")
        key = request.idempotency_key
        if key is None:
            return await self._admit(request, kind)
        fingerprint = _fingerprint(request, kind)
        while True:
            if not core.alive:
                raise ShuttingDown()
            record = core.keys.get(key)
            if record is not None:
                if record.kind is not kind:
                    raise WrongCellKind(record.cell_id, str(kind), str(record.kind))
                if record.fingerprint != fingerprint:
                    raise IdempotencyConflict(key)
                return record.cell_id
            in_flight = core.admitting_keys.get(key)
            if in_flight is not None:
                await asyncio.shield(in_flight)
                continue
            done: asyncio.Future[None] = core.loop.create_future()
            core.admitting_keys[key] = done
            task = core.loop.create_task(self._admit_keyed(request, kind, key, fingerprint, done))
            # A cancelled caller leaves the admission running; it records the key
            # (docs/sessions.md).
            # asyncio holds tasks weakly: keep this one until it ends, whoever still awaits it.
            core.admission_tasks.add(task)
            task.add_done_callback(core.admission_tasks.discard)
            return await asyncio.shield(task)

    async def _admit_keyed(
        self,
        request: CreateCellRequest,
        kind: CellKind,
        key: str,
        fingerprint: str,
        done: asyncio.Future[None],
    ) -> str:
        core = self._core
        try:
            cell_id = await self._admit(request, kind, key, fingerprint)
            core.keys[key] = _KeyRecord(cell_id, kind, fingerprint)
            self._evict_keys()
            return cell_id
        finally:
            core.admitting_keys.pop(key, None)
            if not done.done():
                done.set_result(None)

    def _evict_keys(self) -> None:
        core = self._core
        excess = len(core.keys) - core.limits.max_idempotency_keys
        if excess <= 0:
            return
        for key in list(core.keys):
            if excess <= 0:
                break
            if core.keys[key].cell_id not in core.cells:
                del core.keys[key]
                excess -= 1
                if core.journal is not None:
                    core.journal.key_deleted(key)

    async def _admit(
        self,
        request: CreateCellRequest,
        kind: CellKind,
        key: str | None = None,
        fingerprint: str | None = None,
    ) -> str:
        core = self._core
        if not core.alive:
            raise ShuttingDown()
        if len(core.cells) + core.admissions >= core.limits.max_live_cells:
            raise EngineError(
                f"code mode session has too many live cells ({core.limits.max_live_cells})"
            )
        cell_id = new_cell_id()
        while cell_id in core.cells:
            cell_id = new_cell_id()
        tools = tuple(request.tools)
        for tool in tools:
            if not isinstance(tool, ToolDefinition):
                raise TypeError(f"tools must be ToolDefinition objects, got {type(tool).__name__}")
        stored = core.stored
        boot = CellBoot(
            cell_id=cell_id,
            source=request.source,
            tools=tools,
            stored=stored,
            limits=core.limits,
            pausable=kind is CellKind.PAUSABLE,
            tool_reference=reference_json(tools),
        )
        core.admissions += 1
        core.admissions_idle.clear()
        logger.debug("admitting %s cell %s", kind, cell_id)
        try:
            if not stored.json_ready and len(stored) > _THREAD_SNAPSHOT_KEYS:
                # Join a large map's JSON off the loop (once per commit).
                await asyncio.to_thread(stored.json_text)
            engine_cell = await core.engine.open_cell(boot)
        finally:
            core.admissions -= 1
            if core.admissions == 0:
                core.admissions_idle.set()
        if not core.alive:
            engine_cell.close()
            raise ShuttingDown()
        recorder = None
        if core.journal is not None:
            recorder = await self._record_admission(
                engine_cell, cell_id, kind, request, stored, key, fingerprint
            )
        self._start_actor(cell_id, kind, engine_cell, tools, request.tool_call_id, recorder)
        logger.debug("admitted %s cell %s", kind, cell_id)
        return cell_id

    async def _record_admission(
        self,
        engine_cell: Any,
        cell_id: str,
        kind: CellKind,
        request: CreateCellRequest,
        stored: StoredSnapshot,
        key: str | None,
        fingerprint: str | None,
    ) -> CellRecorder:
        """Record an admission (with the stored values the cell boots with) before the cell
        runs or its handle is returned."""
        from codemode.cell.journal import CellRecorder, request_json
        from codemode.store.base import NewCell

        core = self._core
        journal = core.journal
        assert journal is not None
        digest = f"{kind.value}:{fingerprint}" if key is not None else None
        journal.new_cell(
            NewCell(cell_id, kind.value, request_json(request, stored.json_text()), key, digest)
        )
        try:
            await journal.flush()
        except BaseException:
            engine_cell.close()
            if not journal.failed:
                journal.closed(cell_id)  # the caller went away: nobody can reach the cell
            raise
        if not core.alive:
            engine_cell.close()
            journal.closed(cell_id)
            raise ShuttingDown()
        return CellRecorder(journal, cell_id, kind)

    # ------------------------------------------------------------------ handles

    def _find(self, cell: Cell | PausableCell | str) -> CellActor:
        """The live cell a handle or raw id names: ``ForeignHandle``, then ``MissingCell``."""
        return self._core.cells.resolve(cell)

    def _actor(self, cell: Cell | PausableCell | str, expected: CellKind) -> CellActor:
        """:meth:`_find`, then ``WrongCellKind`` unless the cell is of the ``expected`` kind."""
        return self._core.cells.resolve(cell, expected)

    def is_live(self, cell_id: str) -> bool:
        """Whether ``cell_id`` names a live cell of this session, of either kind (never
        raises; servers ask this instead of catching ``MissingCell``)."""
        return self._core.cells.is_live(str(cell_id))

    def cell(self, cell_id: str) -> Cell:
        """A handle on the live continuing cell ``cell_id``."""
        if self._store is not None:
            self._gate_sync()
        self._actor(str(cell_id), CellKind.CONTINUING)
        return Cell(cell_id, self._core.cells.owner)

    def pausable_cell(self, cell_id: str) -> PausableCell:
        """A handle on the live pausable cell ``cell_id``."""
        if self._store is not None:
            self._gate_sync()
        self._actor(str(cell_id), CellKind.PAUSABLE)
        return PausableCell(cell_id, self._core.cells.owner)

    # ------------------------------------------------------------------ operations

    async def wait(self, cell: Cell, yield_after: float) -> CellEvent:
        """Observe a continuing cell for up to ``yield_after`` seconds (docs/sessions.md)."""
        budget = float(yield_after)
        if self._store is not None:
            await self._gate()
            actor = self._actor(cell, CellKind.CONTINUING)
            if actor.recorder is not None and not actor.recorder.replayed.is_set():
                # A recovered cell still replaying has nothing new to deliver: wait for the
                # replay within the budget, else yield empty-handed (the cell runs on).
                started = time.monotonic()
                if not await _replay_over(actor, budget):
                    self._gate_sync()
                    return Yielded(())
                await self._gate()
                actor = self._actor(cell, CellKind.CONTINUING)
                budget = max(budget - (time.monotonic() - started), 0.0)
        else:
            actor = self._actor(cell, CellKind.CONTINUING)
        event = await actor.observe(budget)
        assert isinstance(event, Yielded | Completed | Terminated)
        if actor.recorder is not None:
            await self._delivered(actor, event, True)
        return event

    async def wait_to_pending(self, cell: PausableCell) -> PausableCellEvent:
        """The current frontier of a pausable cell, or wait for the next one (docs/sessions.md)."""
        if self._store is None:
            actor = self._actor(cell, CellKind.PAUSABLE)
        else:
            await self._gate()
            actor = await self._replayed(cell, CellKind.PAUSABLE)
        if actor.recorder is None:
            event = await actor.observe(None)
        else:
            repeat = actor.machine.current_frontier is not None and actor.machine.frontier_seen
            event = await actor.observe(None)
            await self._delivered(actor, event, not repeat)
        assert isinstance(event, Pending | Completed | Terminated)
        return event

    async def observe_numbered(
        self, cell_id: str, yield_after: float | None, seen: int | None = None
    ) -> tuple[Yielded | Completed | Terminated | Pending, int | None]:
        """For fronts whose replies can be lost on their way (a cluster's hosts): ``wait`` for
        ``yield_after`` seconds (``None``: ``wait_to_pending``), and the event's *delivery
        number*, how many events of the cell were delivered with it (``None`` without a store).
        The caller passes the number of the last event it received as ``seen``; when the last
        delivered event never reached it (``seen`` is one less than the delivered count: the
        process that answered died after recording the delivery, which a recovered runtime
        knows from the store), that event is returned again, its items reproduced by replay,
        instead of a new observation. A delivered completion's closing is recorded once the
        caller acknowledges it (:meth:`acknowledge`), so a runtime that recovers the session
        meanwhile can give it again. docs/cluster.md, re-delivery."""
        kind = CellKind.CONTINUING if yield_after is not None else CellKind.PAUSABLE
        if self._store is None:
            if yield_after is None:
                return await self.wait_to_pending(self.pausable_cell(cell_id)), None
            return await self.wait(self.cell(cell_id), yield_after), None
        await self._gate()
        journal = self._core.journal
        assert journal is not None
        kept = journal.ended_events.get(cell_id) if seen is not None else None
        if kept is not None and seen is not None and kept[0] == seen + 1:
            return kept[1], kept[0]
        actor = self._actor(cell_id, kind)
        if seen is not None:
            try:
                actor = await self._replayed(cell_id, kind)
            except MissingCell:
                kept = journal.ended_events.get(cell_id)  # its replay found it delivered
                if kept is not None and kept[0] == seen + 1:
                    return kept[1], kept[0]
                raise
            again = actor.recorder.again(seen) if actor.recorder is not None else None
            if again is not None:
                assert actor.recorder is not None
                return again, actor.recorder.events_delivered
        recorder = actor.recorder
        held = journal.hold_close(cell_id)
        event: Yielded | Completed | Terminated | Pending | None = None
        try:
            if yield_after is None:
                event = await self.wait_to_pending(PausableCell(cell_id, self._core.cells.owner))
            else:
                event = await self.wait(Cell(cell_id, self._core.cells.owner), yield_after)
        finally:
            if held and not isinstance(event, Completed):
                journal.release_close(cell_id)
        assert event is not None
        if recorder is None:
            return event, None
        if isinstance(event, Completed):
            recorder.events_delivered += 1
            if held and journal.holds_close(cell_id):
                journal.ended(cell_id, len(event.items))
                # Kept for a retry until acknowledged: a caller whose own reply was lost after
                # this runtime answered (a front killed in between) observes it again here.
                journal.kept_completion(cell_id, recorder.events_delivered, event)
                await self._recorded()
            elif held:
                journal.release_close(cell_id)
        return event, recorder.events_delivered

    def delivered_completion(self, cell_id: str) -> bool:
        """Whether ``cell_id`` closed with a delivered completion that its caller has not
        acknowledged yet (:meth:`observe_numbered` can give it again)."""
        journal = self._core.journal
        return journal is not None and str(cell_id) in journal.ended_events

    def acknowledge(self, cell_id: str) -> None:
        """The caller of :meth:`observe_numbered` received the cell's completion: its closing
        is recorded now (idempotent)."""
        journal = self._core.journal
        if journal is not None:
            journal.release_close(str(cell_id))
            journal.ended_events.pop(str(cell_id), None)

    async def resume(self, cell: PausableCell, generation: int) -> ResumeOutcome:
        """Continue a pausable cell past frontier ``generation`` (docs/sessions.md)."""
        if self._store is None:
            return self._actor(cell, CellKind.PAUSABLE).resume(int(generation))
        await self._gate()
        actor = await self._replayed(cell, CellKind.PAUSABLE)
        recorder = actor.recorder
        if recorder is None:
            return actor.resume(int(generation))
        seen = actor.machine.frontier_seen
        outcome = actor.resume(int(generation))
        if outcome is ResumeOutcome.RESUMED:
            recorder.resumed(int(generation), seen)
            await self._recorded()
        return outcome

    async def terminate(self, cell: Cell | PausableCell | str) -> Completed | Terminated:
        """Stop a cell of either kind (docs/sessions.md)."""
        if self._store is None:
            return await self._find(cell).terminate()
        await self._gate()
        actor = self._find(cell)
        if actor.kind is CellKind.PAUSABLE:
            # Which of a recovered pausable cell's items were delivered is known once its replay
            # passed its delivered frontiers: the replay first, so none is delivered twice.
            actor = await self._replayed(cell, None)
        event = await actor.terminate()
        if self._core.journal is not None:
            self._core.journal.release_close(actor.cell_id)  # recorded before the answer
        await self._recorded()
        return event

    # ------------------------------------------------------------------ approvals

    def awaiting_approval(self, cell: Cell | PausableCell | str) -> tuple[ApprovalRequest, ...]:
        """The calls of ``cell`` held for the host's approval, sorted by call id; of a
        recovered cell still replaying, those its record holds and does not decide
        (docs/durability.md, "While a cell replays").

        Raises ``ForeignHandle`` or ``MissingCell`` (unknown or closed cell). See
        ``docs/approvals.md``.
        """
        if self._store is None:
            return self._find(cell).awaiting_approval()
        self._gate_sync()
        return self._find(cell).awaiting_approval()

    async def approve(self, cell: Cell | PausableCell | str, call_id: str) -> None:
        """Let the held call ``call_id`` reach the delegate; it is an ordinary call from now on
        (a pausable cell is not advanced: resume it as usual).

        Raises ``ForeignHandle``, ``MissingCell``, or ``NotAwaitingApproval`` when the call is
        not held (never issued, already decided, or dropped because the cell stopped).
        """
        if self._store is None:
            self._find(cell).approve(str(call_id))
            return
        await self._gate()
        actor = await self._replayed(cell, None)
        actor.approve(str(call_id))
        if actor.recorder is not None:
            actor.recorder.approved(str(call_id))
            await self._recorded()

    async def reject(
        self,
        cell: Cell | PausableCell | str,
        call_id: str,
        reason: str = "the host rejected this call",
    ) -> None:
        """Reject the held call ``call_id``: its promise in the cell rejects with an ``Error``
        whose message is ``reason`` (a pausable cell sees it once resumed). Raises as
        :meth:`approve`."""
        if self._store is None:
            self._find(cell).reject(str(call_id), str(reason))
            return
        await self._gate()
        actor = await self._replayed(cell, None)
        actor.reject(str(call_id), str(reason))
        if actor.recorder is not None:
            actor.recorder.rejected(str(call_id), str(reason))
            await self._recorded()

    async def shutdown(self) -> None:
        """Terminate every cell and release the engine (docs/sessions.md). Idempotent; concurrent
        calls
        share one cleanup, which goes on even if a caller is cancelled."""
        if self._store is not None and not self._opened and self._core.alive:
            self._core.ending.set()  # an open stops waiting for replays: they are ended
            with _suppress_all():
                await self.open()  # ending a session ends its recorded cells too
        core = self._core
        core.alive = False
        if core.shutdown_task is None:
            core.shutdown_task = core.loop.create_task(self._shutdown_all())
        await asyncio.shield(core.shutdown_task)

    async def _shutdown_all(self) -> None:
        core = self._core
        await core.admissions_idle.wait()
        actors = core.cells.entries()
        if actors:
            await asyncio.gather(*(a.shutdown() for a in actors), return_exceptions=True)
        if core.journal is not None and not core.lost:
            await self._end_durable()
        await core.engine.aclose()
        self._finalizer.detach()

    async def _end_durable(self) -> None:
        """Shutdown of a durable session: commits already made are written, then the session's
        cells leave the store (its stored values and keys stay) and the lease is released."""
        core = self._core
        journal, keeper = core.journal, core.keeper
        assert journal is not None and keeper is not None
        try:
            await journal.flush()
            journal.muted = True
            await journal.store.delete_cells(core.session_id, journal.owner)
        except CodeModeError as exc:
            logger.warning("session %s: shutting down: %s", core.session_id, exc)
        journal.muted = True
        with _suppress_all():
            await keeper.stop(release=not core.lost)

    async def __aenter__(self) -> SessionRuntime:
        if self._store is not None:
            await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()

    def __repr__(self) -> str:
        state = "alive" if self._core.alive else "shut down"
        return f"<SessionRuntime {state}, {len(self._core.cells)} live cells>"
