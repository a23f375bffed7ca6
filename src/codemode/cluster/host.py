"""``SessionHost``: one session-host process of a cluster, holding many sessions.

A host is an async Ray actor (:mod:`codemode.cluster.cluster` creates it, named, detached and
restartable). For each session it holds one :class:`~codemode.session.SessionRuntime`, durable on
the cluster's store, whose delegate is a proxy: each nested call and notification becomes a
:class:`~codemode.cluster.spec.CallMessage` on the session's call stream (a Ray streaming
generator the caller consumes), and the caller's answer comes back through
:meth:`SessionHost.answer`.
The host is the authority: it checks every answer (known request, a boolean and a string, JSON
text for a result) before the cell sees it, and every rule of sessions and cells stays in the
runtime.

Observations are numbered by the caller per cell (as on the wire, docs/protocol.md): the host
keeps each cell's latest observation, so a retried request with the same number joins it or
gets its outcome again instead of starting another one; a cancelled caller's observation is
stopped with :meth:`SessionHost.cancel_observation` and loses nothing (the runtime keeps the
output for the next observer).

A session whose caller process died (Ray's control store says so) and that no other caller
reopens within the host's grace period is suspended: it stays in the store for a later reopen
(:mod:`codemode.cluster.orphans`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from codemode.errors import BusyObserver, CodeModeError, ObservationConflict, SessionBusy
from codemode.model import (
    ApprovalRequest,
    CellKind,
    CellLimits,
    Completed,
    CreateCellRequest,
    NestedToolCall,
    Terminated,
    ToolDefinition,
    Yielded,
)
from codemode.session import SessionRuntime

from .orphans import ORPHAN_GRACE, dead_callers
from .spec import (
    MOVED,
    CallMessage,
    CancelMessage,
    Reply,
    StoreSpec,
    error_reply,
    ok_reply,
)

__all__ = ["SessionHost"]

logger = logging.getLogger("codemode.cluster.host")


class ToolCallRejected(Exception):
    """The caller answered a nested call with a rejection (its message is the cell's error)."""


@dataclass(eq=False)
class _Request:
    message: CallMessage
    answer: asyncio.Future[tuple[bool, str]]


@dataclass(eq=False)
class _Observation:
    cell_id: str
    number: int
    key: tuple[str, float | None]
    task: asyncio.Task[Any]
    cancelled: bool = False


@dataclass(eq=False)
class _Hosted:
    """One session held by this host."""

    session_id: str
    runtime: SessionRuntime
    kinds: dict[str, CellKind] = field(default_factory=dict)
    pending: dict[int, _Request] = field(default_factory=dict)
    queue: asyncio.Queue[CallMessage | CancelMessage | None] = field(default_factory=asyncio.Queue)
    observations: dict[str, _Observation] = field(default_factory=dict)
    next_request: int = 0
    attach: int = -1
    caller: str = ""
    orphaned_at: float | None = None  # when its caller was first found dead (monotonic)
    ending: bool = False  # this host is shutting it down or suspending it

    def lost(self) -> bool:
        """Whether the runtime ended without this host ending it: it lost its lease (it missed
        renewals, or another runtime took the session over). An operation that raced the loss
        fails with whatever the runtime raised (``SessionBusy``, or ``ShuttingDown`` when it
        was past the lease check); either way the session is no longer here."""
        return not self.ending and not self.runtime.is_alive

    def push(self, message: CallMessage | CancelMessage) -> None:
        self.queue.put_nowait(message)

    def live_cells(self) -> list[tuple[str, str, int]]:
        """``(cell_id, kind, next observation number)`` of each live cell."""
        self.kinds = {c: k for c, k in self.kinds.items() if self.runtime.is_live(c)}
        for cell_id in [c for c in self.observations if c not in self.kinds]:
            del self.observations[cell_id]
        live = []
        for cell_id, kind in self.kinds.items():
            latest = self.observations.get(cell_id)
            live.append((cell_id, str(kind), 0 if latest is None else latest.number + 1))
        return live


class _ProxyDelegate:
    """The runtime's delegate on a host: every call goes to the session's caller."""

    def __init__(self) -> None:
        self.hosted: _Hosted | None = None

    async def _ask(self, make: Any) -> tuple[bool, str]:
        hosted = self.hosted
        assert hosted is not None
        number = hosted.next_request
        hosted.next_request += 1
        message: CallMessage = make(number)
        request = _Request(message, asyncio.get_running_loop().create_future())
        hosted.pending[number] = request
        hosted.push(message)
        try:
            return await request.answer
        except asyncio.CancelledError:
            if hosted.pending.pop(number, None) is not None:
                hosted.push(CancelMessage(number))
            raise
        finally:
            hosted.pending.pop(number, None)

    async def invoke_tool(self, call: NestedToolCall) -> Any:
        ok, text = await self._ask(
            lambda n: CallMessage(n, call.cell_id, call.call_id, call.tool, call.input)
        )
        if not ok:
            raise ToolCallRejected(text)
        return json.loads(text)

    async def notify(self, call_id: str, cell_id: str, text: str) -> None:
        ok, message = await self._ask(
            lambda n: CallMessage(n, cell_id, call_id, None, text, notify=True)
        )
        if not ok:
            logger.warning("cell %s: notify failed in the caller: %s", cell_id, message)


def _exit_with_raylet(period: float = 0.5) -> None:
    """End this process when the raylet that started it dies (it is then re-parented).

    A worker outlives a raylet killed alone; Ray then declares the node dead and restarts the
    host elsewhere, but the orphan would go on renewing its sessions' leases, so they could
    never be reopened. Watched from a daemon thread: it works while the event loop is busy."""
    import threading
    import time

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(period)
        logger.error("the raylet (pid %d) is gone: this session host exits", parent)
        os._exit(70)

    threading.Thread(target=watch, name="codemode-raylet-watch", daemon=True).start()


class SessionHost:
    """A session host (run as an async Ray actor; see the module docstring)."""

    def __init__(
        self,
        host_id: str,
        spec: StoreSpec | None,
        limits: CellLimits | None,
        orphan_grace: float = ORPHAN_GRACE,
    ) -> None:
        _exit_with_raylet()
        self._host_id = host_id
        self._spec = spec
        self._limits = limits
        self._store: Any = None
        self._sessions: dict[str, _Hosted] = {}
        self._opening: dict[str, asyncio.Task[_Hosted]] = {}
        self._die_after_delivery: tuple[str, str] | None = None  # a fault drill (drill_...)
        self._orphan_grace = max(float(orphan_grace), 0.0)
        self._watcher: asyncio.Task[None] | None = None
        self._streams = 0  # call streams running now
        self._cleanups: set[asyncio.Task[None]] = set()
        self._reaped = 0  # orphaned sessions suspended so far
        logging.basicConfig(level=os.environ.get("CODEMODE_CLUSTER_LOG", "WARNING"))

    # ------------------------------------------------------------------ host-level

    async def info(self) -> dict[str, Any]:
        """This host's id, node, sessions and live cells."""
        import ray

        live = sum(len(h.live_cells()) for h in self._sessions.values())
        return {
            "host_id": self._host_id,
            "node_id": ray.get_runtime_context().get_node_id(),
            "sessions": len(self._sessions),
            "live_cells": live,
            "pid": os.getpid(),
            "opening": len(self._opening),
            "streams": self._streams,
            "orphans": sum(h.orphaned_at is not None for h in self._sessions.values()),
            "reaped": self._reaped,
            "orphan_grace": self._orphan_grace,
            "tasks": len(asyncio.all_tasks()),
        }

    async def holds(self, session_id: str) -> bool:
        """Whether this host holds the session open now."""
        hosted = self._sessions.get(session_id)
        return hosted is not None and hosted.runtime.is_alive

    async def caller_of(self, session_id: str) -> str | None:
        """The caller the session is open for here (``None`` when it is not open here)."""
        hosted = self._hosted(session_id)
        return None if hosted is None else hosted.caller

    async def load(self, session_id: str) -> tuple[bool, int, int]:
        """For placement: whether this host holds ``session_id``, its live cells and its
        sessions."""
        live = sum(len(h.live_cells()) for h in self._sessions.values())
        return await self.holds(session_id), live, len(self._sessions)

    def _store_object(self) -> Any:
        if self._store is None and self._spec is not None:
            self._store = self._spec.build()
        return self._store

    async def open(self, session_id: str, limits: CellLimits | None, caller: str) -> Reply:
        """Open (or reopen, by replay from the store) the session here, or find it open here,
        for ``caller`` (a client's id; a new caller's arrival stops the observations of the one
        before, which went away).

        Returns ``{"cells": [(cell_id, kind, next observation number), ...], "completions":
        [the same, of closed cells whose delivered completion awaits its acknowledgement],
        "limits": CellLimits, "issued": requests issued so far}``; ``SessionBusy`` while another
        live runtime holds its lease.
        """
        if limits is not None and not isinstance(limits, CellLimits):
            raise TypeError("limits must be CellLimits")
        try:
            hosted = self._sessions.get(session_id)
            if hosted is None or not hosted.runtime.is_alive:
                task = self._opening.get(session_id)
                if task is None:
                    task = asyncio.get_running_loop().create_task(self._open(session_id, limits))
                    self._opening[session_id] = task
                    task.add_done_callback(lambda _: self._opening.pop(session_id, None))
                hosted = await asyncio.shield(task)
            if hosted.caller != caller:
                hosted.caller = caller
                hosted.attach = -1  # the new caller numbers its call streams from 1 again
                hosted.orphaned_at = None
                for observation in hosted.observations.values():
                    if not observation.cancelled:
                        observation.cancelled = True
                        observation.task.cancel()
            self._watch_callers()
            cells, completions = await self._cells_of(hosted)
            return ok_reply(
                {
                    "cells": cells,
                    "completions": completions,
                    "limits": hosted.runtime.limits,
                    "issued": hosted.next_request,
                }
            )
        except CodeModeError as exc:
            return error_reply(exc)

    async def _open(self, session_id: str, limits: CellLimits | None) -> _Hosted:
        proxy = _ProxyDelegate()
        options: dict[str, Any] = {"limits": limits or self._limits}
        store = self._store_object()
        if store is not None:
            options["store"] = store
            options["session_id"] = session_id
        runtime = SessionRuntime(proxy, **options)
        hosted = _Hosted(session_id, runtime)
        proxy.hosted = hosted  # before open: replay may issue the calls left unanswered
        await runtime.open()
        self._sessions[session_id] = hosted
        logger.info("host %s: session %s open", self._host_id, session_id)
        return hosted

    async def _cells_of(
        self, hosted: _Hosted
    ) -> tuple[list[tuple[str, str, int]], list[tuple[str, str, int]]]:
        """``(live, completions)``: the session's live cells (those created here, and those
        recovered from the store), and its closed cells whose delivered completion awaits the
        caller's acknowledgement (SessionRuntime.delivered_completion: a retry gets it again),
        each ``(cell_id, kind, next observation number)``. Both are open in the store: a held
        completion's closing is recorded only once it is acknowledged."""
        completions: list[tuple[str, str, int]] = []
        store = self._store_object()
        if store is not None:
            runtime = hosted.runtime
            for record in await store.list_cells(hosted.session_id, state="open"):
                kind = CellKind.PAUSABLE if record.kind == "pausable" else CellKind.CONTINUING
                if runtime.is_live(record.cell_id):
                    hosted.kinds.setdefault(record.cell_id, kind)
                elif runtime.delivered_completion(record.cell_id):
                    latest = hosted.observations.get(record.cell_id)
                    number = 0 if latest is None else latest.number + 1
                    completions.append((record.cell_id, str(kind), number))
        return hosted.live_cells(), completions

    def _hosted(self, session_id: str) -> _Hosted | None:
        hosted = self._sessions.get(session_id)
        if hosted is None or not hosted.runtime.is_alive:
            return None
        return hosted

    def _moved(self, hosted: _Hosted) -> Reply:
        """The runtime lost the session's lease (it missed renewals, or another runtime took
        the session over): it is no longer here. Its caller reopens it (by replay)."""
        if self._sessions.get(hosted.session_id) is hosted:
            del self._sessions[hosted.session_id]
            hosted.queue.put_nowait(None)
            logger.warning("host %s: session %s lost its lease", self._host_id, hosted.session_id)
            # Release what the runtime still holds here (its engine); nothing is recorded.
            task = asyncio.get_running_loop().create_task(hosted.runtime.shutdown())
            self._cleanups.add(task)
            task.add_done_callback(self._cleanups.discard)
        return MOVED

    # ------------------------------------------------------------------ the call stream

    async def calls(
        self, session_id: str, attach: int
    ) -> AsyncIterator[list[CallMessage | CancelMessage]]:
        """The session's call stream (a Ray streaming generator): the calls and notifications
        its cells make, and cancellations, in batches of what is ready at once. A newer
        ``attach`` (a reattached caller) ends older streams; the calls still unanswered are sent
        again on the new one."""
        hosted = self._sessions.get(session_id)
        if hosted is None or attach < hosted.attach:
            return
        old = hosted.queue
        queue: asyncio.Queue[CallMessage | CancelMessage | None] = asyncio.Queue()
        hosted.queue = queue
        hosted.attach = attach
        old.put_nowait(None)
        for number in sorted(hosted.pending):
            queue.put_nowait(hosted.pending[number].message)
        self._streams += 1
        try:
            while True:
                batch = [await queue.get()]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                ended = None in batch
                messages = [m for m in batch if m is not None]
                if messages:
                    yield messages
                if ended:
                    return
        finally:
            self._streams -= 1

    async def answer_many(self, session_id: str, answers: list[tuple[int, bool, str]]) -> None:
        """Several answers at once (see :meth:`answer`)."""
        if not isinstance(answers, list):
            return
        for item in answers:
            if isinstance(item, tuple) and len(item) == 3 and isinstance(item[0], int):
                await self.answer(session_id, item[0], item[1], item[2])

    async def answer(self, session_id: str, number: int, ok: bool, text: str) -> None:
        """The caller's answer to request ``number``: a result's JSON text (``ok``) or a
        rejection's message. Checked here: an unknown request is ignored, a malformed answer
        rejects the call."""
        hosted = self._sessions.get(session_id)
        if hosted is None:
            return
        request = hosted.pending.get(number)
        if request is None or request.answer.done():
            return
        if not isinstance(ok, bool) or not isinstance(text, str):
            request.answer.set_result((False, "the caller sent a malformed answer"))
            return
        if ok and not request.message.notify:
            try:
                json.loads(text)
            except ValueError:
                tool = request.message.tool
                name = tool.name if tool is not None else "?"
                request.answer.set_result(
                    (False, f"tool `{name}` returned a value that is not JSON")
                )
                return
        request.answer.set_result((ok, text))

    # ------------------------------------------------------------------ operations

    async def create(self, session_id: str, kind: str, request: CreateCellRequest) -> Reply:
        """Admit a cell (idempotent by the request's key)."""
        hosted = self._hosted(session_id)
        if hosted is None:
            return MOVED
        if not isinstance(request, CreateCellRequest) or not all(
            isinstance(t, ToolDefinition) for t in request.tools
        ):
            raise TypeError("expected a CreateCellRequest of ToolDefinitions")
        try:
            if kind == "pausable":
                cell_id = (await hosted.runtime.create_pausable_cell(request)).cell_id
                hosted.kinds[cell_id] = CellKind.PAUSABLE
            else:
                cell_id = (await hosted.runtime.create_cell(request)).cell_id
                hosted.kinds[cell_id] = CellKind.CONTINUING
        except SessionBusy:
            return self._moved(hosted)
        except CodeModeError as exc:
            return self._moved(hosted) if hosted.lost() else error_reply(exc)
        return ok_reply(cell_id)

    async def observe(
        self,
        session_id: str,
        cell_id: str,
        number: int,
        yield_after: float | None,
        seen: int | None = None,
    ) -> Reply:
        """Observation ``number`` of a cell: ``wait`` with ``yield_after`` seconds, or
        ``wait_to_pending`` when it is ``None``. The same number again joins that observation
        (or returns its outcome); an older one is an ``ObservationConflict``. ``seen`` is the
        delivery number of the last event the caller received: a new observation gives the
        last delivered event again when the caller never received it (its host died after
        recording the delivery, SessionRuntime.observe_numbered)."""
        hosted = self._hosted(session_id)
        if hosted is None:
            return MOVED
        key = ("wait" if yield_after is not None else "pending", yield_after)
        latest = hosted.observations.get(cell_id)
        if latest is not None and latest.number == number:
            if latest.key != key:
                return error_reply(
                    ObservationConflict(
                        cell_id,
                        number,
                        f"observation generation {number} for cell {cell_id} was reused for a "
                        "different request",
                    )
                )
            return await self._outcome(hosted, latest)
        if latest is not None and number < latest.number:
            return error_reply(
                ObservationConflict(
                    cell_id,
                    number,
                    f"expected observation generation {latest.number + 1} for cell {cell_id}, "
                    f"got {number}",
                )
            )
        if latest is not None and not latest.task.done():
            return error_reply(BusyObserver(cell_id))
        runtime = hosted.runtime

        async def run() -> Any:
            return await runtime.observe_numbered(cell_id, yield_after, seen)

        observation = _Observation(
            cell_id, number, key, asyncio.get_running_loop().create_task(run())
        )
        hosted.observations[cell_id] = observation
        return await self._outcome(hosted, observation)

    async def _outcome(self, hosted: _Hosted, observation: _Observation) -> Reply:
        await asyncio.wait({observation.task})
        task = observation.task
        if task.cancelled():
            return ("cancelled", None)
        exc = task.exception()
        if isinstance(exc, SessionBusy) or (isinstance(exc, CodeModeError) and hosted.lost()):
            return self._moved(hosted)
        if isinstance(exc, CodeModeError):
            return error_reply(exc)
        if exc is not None:
            raise exc
        event, delivery = task.result()
        if self._die_after_delivery == (hosted.session_id, observation.cell_id):
            logger.error("host %s: the fault drill ends this process", self._host_id)
            os._exit(71)  # the delivery is recorded; its reply never leaves
        held: tuple[ApprovalRequest, ...] = ()
        if isinstance(event, Yielded):
            with contextlib.suppress(CodeModeError):
                held = hosted.runtime.awaiting_approval(observation.cell_id)
        # The requests issued so far: the caller delivers those to its delegate before it
        # returns the event, as an in-process runtime would have.
        return ok_reply((event, held, hosted.next_request, delivery))

    async def cancel_observation(self, session_id: str, cell_id: str, number: int) -> None:
        """Stop observation ``number`` (its caller went away): the cell keeps its output."""
        hosted = self._sessions.get(session_id)
        if hosted is None:
            return
        latest = hosted.observations.get(cell_id)
        if (
            latest is not None
            and latest.number == number
            and not latest.task.done()
            and not latest.cancelled
        ):
            # Once: the runtime turns one cancellation that races a delivery into that delivery
            # (it keeps the event for its caller); a second one could interrupt that.
            latest.cancelled = True
            latest.task.cancel()

    async def resume(self, session_id: str, cell_id: str, generation: int) -> Reply:
        hosted = self._hosted(session_id)
        if hosted is None:
            return MOVED
        runtime = hosted.runtime
        try:
            return ok_reply(await runtime.resume(runtime.pausable_cell(cell_id), int(generation)))
        except SessionBusy:
            return self._moved(hosted)
        except CodeModeError as exc:
            return self._moved(hosted) if hosted.lost() else error_reply(exc)

    async def terminate(self, session_id: str, cell_id: str) -> Reply:
        hosted = self._hosted(session_id)
        if hosted is None:
            return MOVED
        try:
            event: Completed | Terminated = await hosted.runtime.terminate(cell_id)
        except SessionBusy:
            return self._moved(hosted)
        except CodeModeError as exc:
            return self._moved(hosted) if hosted.lost() else error_reply(exc)
        hosted.observations.pop(cell_id, None)
        return ok_reply(event)

    async def awaiting_approval(self, session_id: str, cell_id: str) -> Reply:
        hosted = self._hosted(session_id)
        if hosted is None:
            return MOVED
        try:
            return ok_reply(hosted.runtime.awaiting_approval(cell_id))
        except SessionBusy:
            return self._moved(hosted)
        except CodeModeError as exc:
            return self._moved(hosted) if hosted.lost() else error_reply(exc)

    async def decide(
        self, session_id: str, cell_id: str, call_id: str, reason: str | None
    ) -> Reply:
        """Approve (``reason`` ``None``) or reject a held call."""
        hosted = self._hosted(session_id)
        if hosted is None:
            return MOVED
        try:
            if reason is None:
                await hosted.runtime.approve(cell_id, str(call_id))
            else:
                await hosted.runtime.reject(cell_id, str(call_id), str(reason))
        except SessionBusy:
            return self._moved(hosted)
        except CodeModeError as exc:
            return self._moved(hosted) if hosted.lost() else error_reply(exc)
        return ok_reply(None)

    async def release(self, session_id: str, cell_id: str, number: int) -> None:
        """The caller received observation ``number``'s terminal outcome: forget it."""
        hosted = self._sessions.get(session_id)
        if hosted is None:
            return
        latest = hosted.observations.get(cell_id)
        if latest is not None and latest.number == number and latest.task.done():
            del hosted.observations[cell_id]
        hosted.runtime.acknowledge(cell_id)  # a completion's closing is recorded now

    async def shutdown(self, session_id: str) -> Reply:
        """End the session (every cell terminated, its cells deleted from the store)."""
        hosted = self._sessions.get(session_id)
        if hosted is None or hosted.lost():
            # Lost here: the caller shuts it down where it is reopened (its cells leave the
            # store there).
            return MOVED if hosted is None else self._moved(hosted)
        hosted.ending = True
        await hosted.runtime.shutdown()
        hosted.queue.put_nowait(None)
        self._sessions.pop(session_id, None)
        return ok_reply(None)

    async def suspend(self, session_id: str) -> Reply:
        """Leave the session here: its cells stop without an outcome and the lease is released;
        the next open anywhere recovers them."""
        hosted = self._sessions.pop(session_id, None)
        if hosted is None:
            return ok_reply(None)
        hosted.ending = True
        if hosted.runtime.is_durable:
            await hosted.runtime.suspend()
        else:
            await hosted.runtime.shutdown()
        hosted.queue.put_nowait(None)
        return ok_reply(None)

    # ------------------------------------------------------------------ orphaned sessions

    def _watch_callers(self) -> None:
        """Start watching the callers of this host's sessions (once)."""
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(
                self._watch_loop(), name="codemode-cluster-orphans"
            )

    async def _watch_loop(self) -> None:
        period = min(5.0, max(0.5, self._orphan_grace / 4))
        while True:
            await asyncio.sleep(period)
            try:
                await self.reap_orphans()
            except Exception:  # the GCS did not answer: try again next period
                logger.warning("host %s: checking callers failed", self._host_id, exc_info=True)

    async def reap_orphans(self) -> list[str]:
        """Check the callers of the sessions held here now (Ray's control store); mark the
        sessions whose caller died, and suspend those marked for the grace period or longer
        whose caller did not change meanwhile. Returns the ids of the sessions suspended.
        (The host runs this every few seconds by itself.)"""
        callers = {h.caller for h in self._sessions.values() if h.caller}
        if not callers:
            return []
        dead = await asyncio.to_thread(dead_callers, callers)
        now = time.monotonic()
        due: list[_Hosted] = []
        for hosted in list(self._sessions.values()):
            if hosted.caller not in dead:
                hosted.orphaned_at = None
            elif hosted.orphaned_at is None:
                hosted.orphaned_at = now
                logger.warning(
                    "host %s: the caller of session %s is gone; suspending it in %.0f s unless "
                    "it is reopened",
                    self._host_id,
                    hosted.session_id,
                    self._orphan_grace,
                )
            if hosted.orphaned_at is not None and now - hosted.orphaned_at >= self._orphan_grace:
                due.append(hosted)
        reaped = await asyncio.gather(*(self._reap(h) for h in due))
        return [h.session_id for h, done in zip(due, reaped, strict=True) if done]

    async def _reap(self, hosted: _Hosted) -> bool:
        if self._sessions.get(hosted.session_id) is not hosted or hosted.orphaned_at is None:
            return False  # reopened (by another caller) or ended meanwhile
        await self.suspend(hosted.session_id)
        self._reaped += 1
        logger.warning(
            "host %s: session %s suspended (its caller is gone); it stays in the store",
            self._host_id,
            hosted.session_id,
        )
        return True

    async def stop(self) -> None:
        """Suspend every session (the host is being stopped)."""
        if self._watcher is not None:
            self._watcher.cancel()
        for session_id in list(self._sessions):
            await self.suspend(session_id)
        if self._store is not None:
            await self._store.close()

    async def drill_die_after_delivery(self, session_id: str, cell_id: str) -> None:
        """A fault drill (tests, operators): this host process exits right after the next
        observation of the cell has recorded its delivery, before its reply is sent: the
        narrowest window a host failure can hit (docs/cluster.md, re-delivery)."""
        self._die_after_delivery = (str(session_id), str(cell_id))

    async def ping(self) -> str:
        return self._host_id
