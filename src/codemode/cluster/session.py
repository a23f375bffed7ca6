"""``ClusterSession``: a session on a cluster's session host (docs/cluster.md).

It has the methods, semantics and errors of :class:`~codemode.session.SessionRuntime`; the
session's runtime lives on a host actor, the delegate here. A thin client: the host's runtime
applies every rule of sessions and cells; this side adds what crossing processes needs, as
:class:`~codemode.protocol.client.RemoteSession` does over the wire:

- **Handles** are minted here and bound to this object; ``cell()`` / ``pausable_cell()`` answer
  from its record of the session's live cells (the cells it created, and those the host reported
  when the session was opened or reattached).
- **Nested calls** arrive on the session's call stream (a Ray streaming generator of the host)
  and run here through :func:`~codemode.cell.delegate.call_delegate`, the one delegate boundary;
  the answer goes back with one actor call. A call the host asks again (its host died and the
  session was recovered on another) joins the delegate call still running here, or gets the
  answer already computed: the delegate is not asked twice for one ``(cell_id, call_id)`` by one
  ``ClusterSession``.
- **Observations** are numbered per cell; a second concurrent ``wait`` raises ``BusyObserver``
  here; a cancelled ``wait`` asks the host to stop the observation, and an event the host had
  already produced is returned by the cell's next observation (nothing lost).
- **Failover.** When the host dies (or its node), or answers that it no longer holds the session
  (it was restarted), every operation waits while the session is reopened on a live host (by
  replay from the store, once the dead holder's lease expired), then runs there. ``create_cell``
  always carries an idempotency key (an internal one when the request has none), so a create
  whose reply was lost is found by its retry instead of admitting a second cell.
- **Re-delivery.** Each observation sends the host the delivery number of the last event
  received, so an event whose reply was lost with its host comes again. A front that serves a
  client of its own (``codemode serve --cluster``) uses :meth:`ClusterSession.observe_numbered`
  and :meth:`ClusterSession.acknowledge` to pass its client's number on and to hold the release
  of a completion until that client released it (docs/protocol.md, "Re-delivery").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from codemode.cell.delegate import call_delegate
from codemode.cell.machine import call_number
from codemode.contract import DEFAULT_REJECT_REASON, Session
from codemode.errors import (
    AlreadyTerminating,
    BusyObserver,
    ClosedCell,
    CodeModeError,
    MissingCell,
    NotAwaitingApproval,
    SessionBusy,
    ShuttingDown,
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
    OutputItem,
    PausableCell,
    PausableCellEvent,
    Pending,
    ResumeOutcome,
    SessionDelegate,
    Terminated,
    ToolDefinition,
    Yielded,
)
from codemode.registry import CellRegistry

from .orphans import caller_id
from .spec import CallMessage, CancelMessage, SessionMoved, unwrap

if TYPE_CHECKING:
    from .cluster import SessionCluster

__all__ = ["ClusterSession"]

logger = logging.getLogger("codemode.cluster.session")

INTERNAL_KEY_PREFIX: Final = "codemode-cluster:"
"""The idempotency keys a ClusterSession gives creates that have none (failover retries)."""
_ANSWERED: Final = 4096
"""Answers of nested calls kept for a host that asks again after a failover."""
_REATTACH_PAUSE: Final = 0.1

AnyEvent = Yielded | Completed | Terminated | Pending


def _gone(errors: Any, *more: type[Exception]) -> tuple[type[Exception], ...]:
    """What an actor call raises when its host is gone: dead or restarting (``RayActorError``),
    or pinned to a node that died (``ActorUnschedulableError``, not a ``RayActorError``)."""
    return (errors.RayActorError, errors.ActorUnschedulableError, *more)


class _ObservationCancelled(Exception):
    """The host stopped the observation before it produced an event."""


@dataclass(eq=False)
class _Observation:
    number: int
    task: asyncio.Task[tuple[AnyEvent, int | None]]  # the event and its delivery number
    stop_sent: bool = False


@dataclass(eq=False)
class _CellRecord:
    cell_id: str
    kind: CellKind
    next_observation: int = 0
    observation: _Observation | None = None
    observer_waiting: bool = False
    terminating: bool = False
    held: dict[str, ApprovalRequest] = field(default_factory=dict)
    held_frontier: int = 0
    # The delivery number of the last event received (None: unknown, a cell this client did
    # not create); sent with each observation so that a host that recovered the session gives
    # an event whose reply was lost again (docs/cluster.md, re-delivery).
    seen: int | None = None


@dataclass(eq=False)
class _Attachment:
    """The host the session is open on, from this client's point of view."""

    host: Any  # the host's ActorHandle
    name: str
    number: int
    broken: bool = False
    pump: asyncio.Task[None] | None = None
    answers: list[tuple[int, bool, str]] = field(default_factory=list)
    flusher: asyncio.Task[None] | None = None
    received: int = 0  # every request numbered below this reached the pump (or predates it)
    progress: asyncio.Event = field(default_factory=asyncio.Event)

    def advance(self, number: int) -> None:
        if number >= self.received:
            self.received = number + 1
            self.progress.set()

    async def caught_up(self, issued: int) -> None:
        """Wait until the requests the host had issued reached this client (or it broke)."""
        while self.received < issued and not self.broken:
            self.progress.clear()
            await self.progress.wait()


@dataclass(eq=False)
class _Call:
    """One nested call (or notification) running, or answered, here."""

    task: asyncio.Task[tuple[bool, str]] | None
    reply_to: tuple[_Attachment, int]
    cancel_requested: bool = False
    answer: tuple[bool, str] | None = None


class ClusterSession(Session):
    """A session whose runtime lives on a cluster's session host; tool calls come back here.

    Get one from :meth:`SessionCluster.session`; use it as ``async with`` or call
    :meth:`shutdown` (which ends it) or :meth:`suspend` (which leaves it in the store).
    """

    def __init__(
        self,
        cluster: SessionCluster,
        delegate: SessionDelegate,
        session_id: str,
        limits: CellLimits | None,
        *,
        _token: object,
    ) -> None:
        if _token is not _CONSTRUCT:
            raise TypeError("use SessionCluster.session(...)")
        self._cluster = cluster
        self._delegate = delegate
        self._session_id = session_id
        self._limits = limits
        self._caller = caller_id()  # this client, to the hosts (docs/cluster.md, orphans)
        self._cells: CellRegistry[_CellRecord] = CellRegistry()
        self._owner = self._cells.owner
        self._closed_ids: OrderedDict[str, None] = OrderedDict()
        # Re-delivery on the hop before this one (a protocol client, docs/protocol.md): the
        # cells whose completion reached a numbered observation (or an earlier caller, as the
        # host reports) and awaits the client's acknowledgement; their release to the host
        # waits for it.
        self._awaiting: OrderedDict[str, _CellRecord] = OrderedDict()
        self._releases: set[asyncio.Task[None]] = set()
        self._attachment: _Attachment | None = None
        self._attachments = 0
        self._reattaching: asyncio.Task[_Attachment] | None = None
        self._calls: OrderedDict[tuple[str, str, bool], _Call] = OrderedDict()
        self._background: set[asyncio.Task[Any]] = set()
        self._alive = True
        self._ended = False
        self._lost = False  # another caller took the session over
        self._shutdown_task: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()
        self.failovers = 0
        """How many times this session was reattached after its host failed."""
        self.failover_seconds: list[float] = []
        """How long each reattachment took, from the failure noticed to the session reopened."""

    # ------------------------------------------------------------------ properties

    @property
    def session_id(self) -> str:
        """The session's id in the store (pass it to ``SessionCluster.session`` to reopen)."""
        return self._session_id

    @property
    def is_alive(self) -> bool:
        """False once ``shutdown`` or ``suspend`` began."""
        return self._alive

    @property
    def limits(self) -> CellLimits:
        """The limits applied to every cell of this session (as its host's runtime has them)."""
        return self._limits or CellLimits()

    @property
    def is_durable(self) -> bool:
        """Always true: a cluster's sessions live in its store."""
        return True

    @property
    def host_name(self) -> str | None:
        """The name of the host actor the session is open on now (``None`` while it moves)."""
        attachment = self._attachment
        return None if attachment is None or attachment.broken else attachment.name

    # ------------------------------------------------------------------ attachment

    async def _open(self, first: tuple[str, Any] | None) -> None:
        """Open the session: on ``first`` (name, handle) if given, else by placement."""
        if first is not None:
            try:
                await self._attach(*first)
                return
            except _TryElsewhere:
                pass
        await self._reattach_once(None)

    async def _attach(self, name: str, host: Any) -> _Attachment:
        """Open the session on ``host`` and start its call stream; ``_TryElsewhere`` when the
        host is unreachable or the lease is held elsewhere."""
        import ray.exceptions

        try:
            reply = await host.open.remote(self._session_id, self._limits, self._caller)
            opened = unwrap(reply)
        except _gone(ray.exceptions, SessionMoved) as exc:
            raise _TryElsewhere(str(exc)) from None
        except SessionBusy as exc:
            raise _TryElsewhere(str(exc)) from None
        self._attachments += 1
        attachment = _Attachment(host, name, self._attachments)
        cells, self._limits = opened["cells"], opened["limits"]
        attachment.received = opened["issued"]
        for cell_id, kind, next_observation in cells:
            record = self._cells.get(cell_id)
            if record is None and cell_id not in self._closed_ids:
                record = _CellRecord(cell_id, CellKind(kind))
                self._cells.add(record)
            if record is not None:
                record.next_observation = max(record.next_observation, next_observation)
        for cell_id, kind, next_observation in opened.get("completions", ()):
            # Closed cells whose delivered completion the host still holds for a retry.
            record = self._awaiting.get(cell_id)
            if record is not None:
                record.next_observation = max(record.next_observation, next_observation)
            elif cell_id in self._closed_ids:
                # Received and released here; that release was lost with its host: again.
                self._release_soon(cell_id, -1)
            else:  # delivered to an earlier caller: its client may ask for it again
                self._await_acknowledgement(_CellRecord(cell_id, CellKind(kind), next_observation))
        self._attachment = attachment
        attachment.pump = self._loop.create_task(
            self._pump(attachment), name=f"codemode-cluster-calls-{self._session_id}"
        )
        logger.info("session %s open on %s", self._session_id, name)
        return attachment

    async def _current(self) -> _Attachment:
        """The live attachment, waiting for a reattachment in progress."""
        while True:
            if self._lost:
                raise SessionBusy(self._session_id)
            attachment = self._attachment
            if attachment is not None and not attachment.broken:
                return attachment
            await self._reattach_once(attachment)

    def _broken(self, attachment: _Attachment, why: str) -> None:
        if attachment.broken:
            return
        attachment.broken = True
        attachment.progress.set()
        logger.warning(
            "session %s: host %s failed (%s); reopening elsewhere",
            self._session_id,
            attachment.name,
            why,
        )

    async def _reattach_once(self, broken: _Attachment | None) -> _Attachment:
        task = self._reattaching
        if task is None:
            task = self._loop.create_task(self._reattach(broken))
            self._reattaching = task
            task.add_done_callback(lambda _: setattr(self, "_reattaching", None))
        return await asyncio.shield(task)

    async def _reattach(self, broken: _Attachment | None) -> _Attachment:
        """Reopen the session on a live host: its current holder if a live host holds it, else
        the least loaded one (waiting for a dead holder's lease to expire). Blocks until done."""
        if broken is not None:
            self.failovers += 1
        began = time.monotonic()
        while True:
            if self._lost:
                raise SessionBusy(self._session_id)
            if self._ended:
                raise ShuttingDown()
            for name, host in await self._cluster._candidates(self._session_id):
                try:
                    attachment = await self._attach(name, host)
                    if broken is not None:
                        self.failover_seconds.append(time.monotonic() - began)
                        logger.warning(
                            "session %s reopened on %s after %.2f s",
                            self._session_id,
                            name,
                            self.failover_seconds[-1],
                        )
                    return attachment
                except _TryElsewhere as exc:
                    logger.debug("session %s: not on %s: %s", self._session_id, name, exc)
            await asyncio.sleep(_REATTACH_PAUSE)

    async def _invoke(self, method: str, *args: Any) -> Any:
        """Call the host method for this session, through failovers; the reply's value, or
        its error raised."""
        import ray.exceptions

        while True:
            if self._lost:
                raise SessionBusy(self._session_id)
            if self._ended:
                raise ShuttingDown()
            attachment = await self._current()
            try:
                reply = await getattr(attachment.host, method).remote(self._session_id, *args)
                return unwrap(reply)
            except _gone(ray.exceptions, SessionMoved) as exc:
                self._broken(attachment, type(exc).__name__)
                continue

    def _background_task(self, coro: Any) -> None:
        task = self._loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ the call stream

    async def _pump(self, attachment: _Attachment) -> None:
        import ray.exceptions

        stream = attachment.host.calls.options(num_returns="streaming").remote(
            self._session_id, attachment.number
        )
        try:
            async for ref in stream:
                for message in await ref:
                    if isinstance(message, CancelMessage):
                        self._cancel_call(attachment, message.number)
                    elif isinstance(message, CallMessage):
                        self._on_call(attachment, message)
                        attachment.advance(message.number)
        except ray.exceptions.RayError as exc:
            if not self._ended:
                self._broken(attachment, type(exc).__name__)
        except asyncio.CancelledError:
            raise
        if (
            self._alive
            and not self._ended
            and self._attachment is attachment
            and not attachment.broken
        ):
            # The host ended the stream without a newer attach of ours (nor our own shutdown or
            # suspend): another caller took the session over, or the host lost it.
            caller: str | None = None
            with contextlib.suppress(ray.exceptions.RayError):
                caller = await attachment.host.caller_of.remote(self._session_id)
            if caller is not None and caller != self._caller:
                self._taken_over()
            else:
                self._broken(attachment, "its call stream ended")
        attachment.progress.set()

    def _taken_over(self) -> None:
        """Another caller reopened the session: this client stops driving it (its later
        operations raise ``SessionBusy``), as a runtime that lost its lease does."""
        logger.warning("session %s: reopened by another caller; this one stops", self._session_id)
        self._lost = True
        self._alive = False
        self._ended = True
        attachment = self._attachment
        if attachment is not None:
            attachment.broken = True
            attachment.progress.set()
        for entry in list(self._calls.values()):
            if entry.task is not None and not entry.task.done():
                entry.cancel_requested = True
                entry.task.cancel()

    def _on_call(self, attachment: _Attachment, message: CallMessage) -> None:
        if message.notify:
            # Notifications share their cell's tool call id: each is its own request.
            key = (message.cell_id, f"{attachment.number}:{message.number}", True)
        else:
            key = (message.cell_id, message.call_id, False)
        entry = self._calls.get(key)
        if entry is not None:
            # The same call asked again (by a host that recovered the session): join it.
            entry.reply_to = (attachment, message.number)
            self._calls.move_to_end(key)
            if entry.answer is not None:
                self._send_answer(entry)
            return
        entry = _Call(None, (attachment, message.number))
        self._calls[key] = entry
        entry.task = self._loop.create_task(self._run_call(entry, message))
        entry.task.add_done_callback(lambda t: self._call_done(key, entry, t))

    async def _run_call(self, entry: _Call, message: CallMessage) -> tuple[bool, str]:
        if message.notify:
            try:
                await self._delegate.notify(message.call_id, message.cell_id, str(message.input))
            except Exception as exc:
                logger.warning("cell %s: notify failed: %s", message.cell_id, exc)
                return (False, str(exc) or type(exc).__name__)
            return (True, "")
        assert isinstance(message.tool, ToolDefinition)
        call = NestedToolCall(message.cell_id, message.call_id, message.tool, message.input)
        result = await call_delegate(
            self._delegate.invoke_tool, call, cancel_requested=lambda: entry.cancel_requested
        )
        if result.ok:
            return (True, result.value_json)
        return (False, result.message)

    def _call_done(
        self, key: tuple[str, str, bool], entry: _Call, task: asyncio.Task[tuple[bool, str]]
    ) -> None:
        if task.cancelled() or task.exception() is not None:
            if self._calls.get(key) is entry:
                del self._calls[key]
            if not task.cancelled():
                logger.error("cell %s: nested call failed", key[0], exc_info=task.exception())
            return
        entry.answer = task.result()
        self._send_answer(entry)
        while len(self._calls) > _ANSWERED:
            oldest = next(iter(self._calls))
            if self._calls[oldest].answer is None:
                self._calls.move_to_end(oldest)
                break
            del self._calls[oldest]

    def _send_answer(self, entry: _Call) -> None:
        """Queue the answer for its host; one actor call carries every answer ready by then."""
        attachment, number = entry.reply_to
        assert entry.answer is not None
        ok, text = entry.answer
        attachment.answers.append((number, ok, text))
        if attachment.flusher is None or attachment.flusher.done():
            attachment.flusher = self._loop.create_task(self._flush_answers(attachment))

    async def _flush_answers(self, attachment: _Attachment) -> None:
        import ray.exceptions

        while attachment.answers:
            batch, attachment.answers = attachment.answers, []
            try:
                await attachment.host.answer_many.remote(self._session_id, batch)
            except ray.exceptions.RayError as exc:
                # The host died: the host that recovers the session asks again, and gets these
                # answers from self._calls.
                logger.debug("session %s: answers lost with their host: %s", self._session_id, exc)
                attachment.answers.clear()
                return

    def _cancel_call(self, attachment: _Attachment, number: int) -> None:
        for entry in self._calls.values():
            if entry.reply_to == (attachment, number) and entry.task is not None:
                if not entry.task.done():
                    entry.cancel_requested = True
                    entry.task.cancel()
                return

    # ------------------------------------------------------------------ records and handles

    def _usable(self, cell_id: str | None) -> None:
        if self._lost:
            raise SessionBusy(self._session_id)
        if not self._alive:
            raise ShuttingDown() if cell_id is None else MissingCell(cell_id)

    def _record(self, handle: Cell | PausableCell, expected: CellKind) -> _CellRecord:
        cell_id = self._cells.cell_id_of(handle, accept_ids=False)
        self._usable(cell_id)
        return self._cells.find_kind(cell_id, expected)

    def _forget(self, cell_id: str) -> None:
        self._cells.remove(cell_id)
        self._closed_ids[cell_id] = None
        self._closed_ids.move_to_end(cell_id)
        while len(self._closed_ids) > 4096:
            self._closed_ids.popitem(last=False)

    def _admitted(self, cell_id: str, kind: CellKind) -> None:
        if cell_id not in self._cells and cell_id not in self._closed_ids:
            # Created here: no event of it was delivered before (a keyed create that finds a
            # cell another caller observed is the one exception: its first event may then
            # come again, docs/cluster.md).
            self._cells.add(_CellRecord(cell_id, kind, seen=0))

    def cell(self, cell_id: str) -> Cell:
        """A handle on a live continuing cell of this session."""
        self._usable(cell_id)
        self._cells.find_kind(str(cell_id), CellKind.CONTINUING)
        return Cell(cell_id, self._owner)

    def pausable_cell(self, cell_id: str) -> PausableCell:
        """A handle on a live pausable cell of this session."""
        self._usable(cell_id)
        self._cells.find_kind(str(cell_id), CellKind.PAUSABLE)
        return PausableCell(cell_id, self._owner)

    def is_live(self, cell_id: str) -> bool:
        """Whether ``cell_id`` names a live cell of this session as this client knows it."""
        return self._alive and self._cells.is_live(str(cell_id))

    # ------------------------------------------------------------------ creation

    async def create_cell(self, request: CreateCellRequest) -> Cell:
        """Admit a continuing cell (idempotent by ``request.idempotency_key``)."""
        return Cell(await self._create(request, CellKind.CONTINUING), self._owner)

    async def create_pausable_cell(self, request: CreateCellRequest) -> PausableCell:
        """Admit a pausable cell; it runs to its first frontier and pauses there."""
        return PausableCell(await self._create(request, CellKind.PAUSABLE), self._owner)

    async def _create(self, request: CreateCellRequest, kind: CellKind) -> str:
        self._usable(None)
        if not isinstance(request, CreateCellRequest):
            raise TypeError(f"expected a CreateCellRequest, got {type(request).__name__}")
        for tool in request.tools:
            if not isinstance(tool, ToolDefinition):
                raise TypeError(f"tools must be ToolDefinition objects, got {type(tool).__name__}")
        keyed = request.idempotency_key is not None
        sent = request
        if not keyed:
            sent = replace(request, idempotency_key=INTERNAL_KEY_PREFIX + secrets.token_hex(12))
        sent = replace(sent, tools=tuple(request.tools))
        task = self._loop.create_task(self._invoke("create", str(kind), sent))
        try:
            cell_id: str = await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(lambda t: self._late_create(t, kind, keyed))
            raise
        self._admitted(cell_id, kind)
        return cell_id

    def _late_create(self, task: asyncio.Task[Any], kind: CellKind, keyed: bool) -> None:
        """The answer to a create whose caller was cancelled: keep a keyed cell (its retry
        finds it), terminate an unkeyed one nobody can reach (docs/sessions.md)."""
        if task.cancelled() or task.exception() is not None:
            return
        cell_id = task.result()
        if keyed:
            self._admitted(cell_id, kind)
        elif self._alive:
            self._background_task(self._terminate_quietly(cell_id))

    async def _terminate_quietly(self, cell_id: str) -> None:
        with contextlib.suppress(CodeModeError):
            await self._invoke("terminate", cell_id)

    # ------------------------------------------------------------------ observation

    async def wait(self, cell: Cell, yield_after: float) -> CellEvent:
        """Observe a continuing cell for up to ``yield_after`` seconds."""
        record = self._record(cell, CellKind.CONTINUING)
        seconds = float(yield_after)
        if math.isnan(seconds) or seconds < 0:
            seconds = 0.0
        event, _ = await self._observe(record, seconds, record.seen, numbered=False)
        assert isinstance(event, Yielded | Completed | Terminated)
        return event

    async def wait_to_pending(self, cell: PausableCell) -> PausableCellEvent:
        """The current frontier of a pausable cell, or wait for the next one."""
        record = self._record(cell, CellKind.PAUSABLE)
        event, _ = await self._observe(record, None, record.seen, numbered=False)
        assert isinstance(event, Pending | Completed | Terminated)
        return event

    async def observe_numbered(
        self, cell_id: str, yield_after: float | None, seen: int | None = None
    ) -> tuple[AnyEvent, int | None]:
        """For a front whose own replies can be lost (``codemode serve --cluster``): as
        :meth:`SessionRuntime.observe_numbered`, with the numbering of the host's store. ``seen``
        (the delivery number of the last event the front's client received) goes to the host,
        which gives that client's lost event again; ``None`` sends this session's own number.
        A terminal outcome is released to the host only when :meth:`acknowledge` is called, so
        a completion stays there for a retry through another front meanwhile."""
        cell_id = str(cell_id)
        self._usable(cell_id)
        record = self._awaiting.get(cell_id)
        if record is None:
            kind = CellKind.CONTINUING if yield_after is not None else CellKind.PAUSABLE
            record = self._cells.find_kind(cell_id, kind)
        if yield_after is not None:
            yield_after = float(yield_after)
            if math.isnan(yield_after) or yield_after < 0:
                yield_after = 0.0
        return await self._observe(
            record, yield_after, record.seen if seen is None else seen, numbered=True
        )

    def acknowledge(self, cell_id: str) -> None:
        """The front's client released the cell's terminal outcome: release it to the host,
        which records a held completion's closing now (idempotent)."""
        record = self._awaiting.pop(str(cell_id), None)
        if record is not None:
            self._release_soon(record.cell_id, record.next_observation - 1)

    def delivered_completion(self, cell_id: str) -> bool:
        """Whether the cell closed with a delivered completion that awaits :meth:`acknowledge`
        (:meth:`observe_numbered` gives it again)."""
        return str(cell_id) in self._awaiting

    def _await_acknowledgement(self, record: _CellRecord) -> None:
        self._awaiting[record.cell_id] = record
        self._awaiting.move_to_end(record.cell_id)
        while len(self._awaiting) > _ANSWERED:  # never acknowledged: let the host record them
            oldest = self._awaiting.popitem(last=False)[1]
            self._release_soon(oldest.cell_id, oldest.next_observation - 1)

    async def _observe(
        self, record: _CellRecord, yield_after: float | None, seen: int | None, *, numbered: bool
    ) -> tuple[AnyEvent, int | None]:
        if record.terminating:
            raise ClosedCell(record.cell_id)
        if record.observer_waiting:
            raise BusyObserver(record.cell_id)
        record.observer_waiting = True
        try:
            while True:
                if record.observation is None:
                    record.observation = self._start_observation(record, yield_after, seen)
                observation = record.observation
                try:
                    event, delivery = await asyncio.shield(observation.task)
                except asyncio.CancelledError:
                    if not observation.task.done() and not observation.stop_sent:
                        observation.stop_sent = True  # once per observation
                        self._background_task(self._stop_observation(record, observation))
                    raise
                except _ObservationCancelled:
                    record.observation = None
                    continue
                except MissingCell:
                    record.observation = None
                    self._forget(record.cell_id)
                    raise
                except BaseException:
                    record.observation = None
                    raise
                record.observation = None
                if isinstance(event, Completed | Terminated):
                    self._forget(record.cell_id)
                    if numbered:
                        self._await_acknowledgement(record)
                    else:
                        self._release_soon(record.cell_id, observation.number)
                return event, delivery
        finally:
            record.observer_waiting = False

    def _start_observation(
        self, record: _CellRecord, yield_after: float | None, seen: int | None
    ) -> _Observation:
        number = record.next_observation
        record.next_observation += 1
        task = self._loop.create_task(self._run_observation(record, number, yield_after, seen))
        task.add_done_callback(_retrieve)
        return _Observation(number, task)

    async def _run_observation(
        self, record: _CellRecord, number: int, yield_after: float | None, seen: int | None
    ) -> tuple[AnyEvent, int | None]:
        import ray.exceptions

        cell_id = record.cell_id
        while True:
            if self._lost:
                raise SessionBusy(self._session_id)
            if self._ended:
                raise MissingCell(cell_id)
            attachment = await self._current()
            try:
                reply = await attachment.host.observe.remote(
                    self._session_id, cell_id, number, yield_after, seen
                )
            except _gone(ray.exceptions) as exc:
                self._broken(attachment, type(exc).__name__)
                continue
            if reply[0] == "cancelled":
                raise _ObservationCancelled()
            try:
                event, held, issued, delivery = unwrap(reply)
            except SessionMoved:
                self._broken(attachment, "it no longer holds the session")
                continue
            if delivery is not None:
                record.seen = delivery
            await attachment.caught_up(issued)
            break
        if isinstance(event, Yielded):
            record.held = {a.call_id: a for a in held}
        elif isinstance(event, Pending) and event.frontier.generation > record.held_frontier:
            record.held_frontier = event.frontier.generation
            record.held = {a.call_id: a for a in event.frontier.awaiting_approval}
        assert isinstance(event, Yielded | Completed | Terminated | Pending)
        return event, delivery

    async def _stop_observation(self, record: _CellRecord, observation: _Observation) -> None:
        import ray.exceptions

        attachment = self._attachment
        if attachment is None or attachment.broken:
            return
        with contextlib.suppress(ray.exceptions.RayError):
            await attachment.host.cancel_observation.remote(
                self._session_id, record.cell_id, observation.number
            )

    def _release_soon(self, cell_id: str, number: int) -> None:
        """Release the cell's observation ``number`` (any number acknowledges the cell) to the
        host, in the background; a suspend or shutdown waits for it first."""
        task = self._loop.create_task(self._release(cell_id, number))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, cell_id: str, number: int) -> None:
        import ray.exceptions

        attachment = self._attachment
        if attachment is None or attachment.broken:
            return
        with contextlib.suppress(ray.exceptions.RayError):
            await attachment.host.release.remote(self._session_id, cell_id, number)

    # ------------------------------------------------------------------ resume, terminate

    async def resume(self, cell: PausableCell, generation: int) -> ResumeOutcome:
        """Continue a pausable cell past frontier ``generation``; retry-safe."""
        record = self._record(cell, CellKind.PAUSABLE)
        if record.terminating:
            raise ClosedCell(record.cell_id)
        try:
            outcome = await self._invoke("resume", record.cell_id, int(generation))
        except MissingCell:
            if record.observation is None:
                self._forget(record.cell_id)
            raise
        assert isinstance(outcome, ResumeOutcome)
        return outcome

    async def terminate(self, cell: Cell | PausableCell | str) -> Completed | Terminated:
        """Stop a cell of either kind and return its final event."""
        cell_id = self._cells.cell_id_of(cell)
        self._usable(cell_id)
        record = self._cells.find(cell_id)
        if record.terminating:
            raise AlreadyTerminating(cell_id)
        record.terminating = True
        try:
            task = self._loop.create_task(self._invoke("terminate", cell_id))
            try:
                event = await asyncio.shield(task)
            except MissingCell:
                kept = await self._claim_kept_event(record)
                self._forget(cell_id)
                if isinstance(kept, Completed | Terminated):
                    return kept
                raise
            kept = await self._claim_kept_event(record)
        finally:
            record.terminating = False
        self._forget(cell_id)
        assert isinstance(event, Completed | Terminated)
        kept_items: tuple[OutputItem, ...] = ()
        if isinstance(kept, Yielded):
            kept_items = kept.items
        elif isinstance(kept, Pending):
            kept_items = kept.frontier.items
        if kept_items:
            items = (*kept_items, *event.items)
            if isinstance(event, Completed):
                return Completed(items, event.error_text)
            return Terminated(items)
        return event

    async def _claim_kept_event(self, record: _CellRecord) -> AnyEvent | None:
        """The event of an observation whose caller went away, taken by ``terminate``."""
        observation = record.observation
        if observation is None or record.observer_waiting:
            return None
        record.observation = None
        try:
            return (await asyncio.shield(observation.task))[0]
        except asyncio.CancelledError:
            if not observation.task.done():
                record.observation = observation
            raise
        except Exception:
            return None

    # ------------------------------------------------------------------ approvals

    def _any_record(self, cell: Cell | PausableCell | str) -> _CellRecord:
        cell_id = self._cells.cell_id_of(cell)
        self._usable(cell_id)
        return self._cells.find(cell_id)

    def awaiting_approval(self, cell: Cell | PausableCell | str) -> tuple[ApprovalRequest, ...]:
        """The cell's calls held for approval as this client last learned them (from its latest
        ``Yielded`` or ``Pending`` event, less the calls decided since);
        :meth:`fetch_awaiting_approval` asks the host."""
        record = self._any_record(cell)
        return tuple(sorted(record.held.values(), key=lambda a: call_number(a.call_id)))

    async def fetch_awaiting_approval(
        self, cell: Cell | PausableCell | str
    ) -> tuple[ApprovalRequest, ...]:
        """The cell's held calls as the host knows them now (and remember them)."""
        record = self._any_record(cell)
        held: tuple[ApprovalRequest, ...] = await self._invoke("awaiting_approval", record.cell_id)
        record.held = {a.call_id: a for a in held}
        return held

    async def approve(self, cell: Cell | PausableCell | str, call_id: str) -> None:
        """Let the held call reach the delegate (SessionRuntime.approve)."""
        await self._decide(cell, str(call_id), None)

    async def reject(
        self,
        cell: Cell | PausableCell | str,
        call_id: str,
        reason: str = DEFAULT_REJECT_REASON,
    ) -> None:
        """Reject the held call with ``reason`` (SessionRuntime.reject)."""
        await self._decide(cell, str(call_id), str(reason))

    async def _decide(
        self, cell: Cell | PausableCell | str, call_id: str, reason: str | None
    ) -> None:
        record = self._any_record(cell)
        try:
            await self._invoke("decide", record.cell_id, call_id, reason)
        except NotAwaitingApproval:
            record.held.pop(call_id, None)
            raise
        except MissingCell:
            if record.observation is None:
                self._forget(record.cell_id)
            raise
        record.held.pop(call_id, None)

    # ------------------------------------------------------------------ ending

    async def shutdown(self) -> None:
        """Terminate every cell and end the session (its cells leave the store). Idempotent;
        concurrent calls share one cleanup, which goes on if a caller is cancelled."""
        self._alive = False
        if self._shutdown_task is None:
            self._shutdown_task = self._loop.create_task(self._end("shutdown"))
        await asyncio.shield(self._shutdown_task)

    async def suspend(self) -> None:
        """Leave the session: its cells stop on the host without an outcome and stay in the
        store; ``SessionCluster.session(delegate, session_id=...)`` reopens it."""
        self._alive = False
        if self._shutdown_task is None:
            self._shutdown_task = self._loop.create_task(self._end("suspend"))
        await asyncio.shield(self._shutdown_task)

    async def _end(self, how: str) -> None:
        if self._releases:  # acknowledgements reach the host before the session leaves it
            await asyncio.wait(set(self._releases), timeout=5.0)
        if not self._lost:  # a session another caller took over is theirs to end
            with contextlib.suppress(ShuttingDown):
                await self._invoke(how)
        self._ended = True
        for observation in [r.observation for r in self._cells.entries()]:
            if observation is not None:
                await asyncio.wait({observation.task}, timeout=5.0)
        attachment = self._attachment
        if attachment is not None and attachment.pump is not None:
            await asyncio.wait({attachment.pump}, timeout=5.0)
            attachment.pump.cancel()
        if attachment is not None and attachment.flusher is not None:
            await asyncio.wait({attachment.flusher}, timeout=5.0)
        for entry in list(self._calls.values()):
            if entry.task is not None and not entry.task.done():
                entry.cancel_requested = True
                entry.task.cancel()
        if self._background:
            await asyncio.wait(set(self._background), timeout=5.0)
        self._cells.clear()
        self._cluster._forget_session(self)

    async def __aenter__(self) -> ClusterSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()

    def __repr__(self) -> str:
        state = "alive" if self._alive else "ended"
        return f"<ClusterSession {self._session_id} on {self.host_name or '?'}, {state}>"


class _TryElsewhere(Exception):
    """This host cannot open the session now."""


_CONSTRUCT = object()


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()
