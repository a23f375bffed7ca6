"""The asyncio driver of one cell: feeds the state machine, carries out its effects.

One :class:`CellActor` owns everything mutable about a cell: its :class:`CellMachine`, its engine
cell, the delegate tasks of its nested calls, its timers and its notification queue. Its *pump*
task runs the JavaScript (through the engine) whenever a tool result or a due timer is ready and
the machine allows it; callers' coroutines (``wait``, ``resume``, ``terminate``) call into the
machine synchronously and await only futures the actor resolves. All of it runs on one event
loop, so each machine call is atomic.

The actor deliberately holds no reference to the ``SessionRuntime`` object, only to the
:class:`CellHost` it needs, so a runtime dropped without ``shutdown`` can be garbage-collected and
stop its cells (docs/sessions.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from codemode import tracing
from codemode.cell.delegate import call_delegate
from codemode.cell.eager import start_eager
from codemode.cell.machine import (
    BeginSettling,
    CellMachine,
    Closed,
    CommitWrites,
    DispatchCall,
    Effect,
    RejectCall,
    RunEngine,
    StopEngine,
    WakeObserver,
)
from codemode.engine.base import (
    EngineCell,
    EngineLost,
    NotifyRequested,
    OutputProduced,
    StepInput,
    StepReport,
    StoresWritten,
    StoreWritten,
    TimerCleared,
    TimerFired,
    TimerSet,
    ToolCallRequested,
    ToolResultInput,
    YieldRequested,
)
from codemode.errors import CodeModeError
from codemode.model import (
    ApprovalRequest,
    CellKind,
    Completed,
    NestedToolCall,
    OutputItem,
    Pending,
    ResumeOutcome,
    SessionDelegate,
    Terminated,
    ToolDefinition,
    Yielded,
)

if TYPE_CHECKING:
    from codemode.cell.journal import CellRecorder

__all__ = ["CALLBACK_GRACE", "CellActor", "CellHost"]

logger = logging.getLogger("codemode.cell")

# How long cancelled delegate callbacks are awaited before they are abandoned (docs/sessions.md).
CALLBACK_GRACE = 0.1


class CellHost(Protocol):
    """What a cell needs from its session."""

    delegate: SessionDelegate

    def commit_writes(self, writes: dict[str, Any]) -> None: ...

    def prepare_writes(self, writes: dict[str, Any]) -> Any:
        """Work out, on any thread, what committing ``writes`` would make of the session's
        stored values; handed to ``writes_refused``."""
        ...

    def writes_refused(self, writes: dict[str, Any], prepared: Any = None) -> str | None:
        """The error text if committing ``writes`` (key -> JSON text) would pass the session's
        stored-values budget, else None. Commits that follow use the merge worked out here."""
        ...

    def cell_closed(self, cell_id: str) -> None: ...

    def loop_closing(self) -> None:
        """A cell's driver was cancelled by someone other than the cell itself: the event loop
        is being torn down without a shutdown (docs/sessions.md)."""
        ...


# Delegate callbacks abandoned after the grace period, kept alive until they end.
_ABANDONED: set[asyncio.Future[Any]] = set()

# Commits of more stored writes than this are merged on a worker thread first.
_THREAD_WRITES = 10_000


class CellActor:
    """Drives one cell. Created by the session after the engine cell was opened."""

    def __init__(
        self,
        cell_id: str,
        kind: CellKind,
        engine_cell: EngineCell,
        tools: tuple[ToolDefinition, ...],
        tool_call_id: str,
        host: CellHost,
        max_result_bytes: int,
        max_parallel_calls: int = 100,
        recorder: CellRecorder | None = None,
    ) -> None:
        self.cell_id = cell_id
        self.kind = kind
        self.machine = CellMachine(cell_id, kind, max_parallel=max_parallel_calls)
        self._engine = engine_cell
        self._tools = tools
        self._tool_call_id = tool_call_id
        self._host = host
        self._max_result_bytes = max_result_bytes
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._ready: list[StepInput] = []
        self._timers: dict[int, float] = {}
        self._timer_heap: list[tuple[float, int]] = []
        self._calls: dict[str, asyncio.Future[None]] = {}
        self._cancel_requested: set[str] = set()
        self._pending_ids: tuple[str, ...] = ()
        self._notes: asyncio.Queue[str] | None = None
        self._notifier: asyncio.Task[None] | None = None
        self._observer_futures: dict[int, asyncio.Future[None]] = {}
        self._pump_task: asyncio.Task[None] | None = None
        self._dispatched = False  # delegate calls started since the pump last looked
        # While the pump applies a report (and the delegate calls it starts), calls to start
        # wait here and are started eagerly, one after the other, once the report is applied.
        self._batching = False
        self._to_start: list[NestedToolCall] = []
        # While they start: the ids of the calls that answered at once (their slots are freed
        # together, CellMachine.calls_returned); None otherwise.
        self._returned: list[str] | None = None
        self._settle_task: asyncio.Task[None] | None = None
        self._stop_task: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._terminated_items: tuple[OutputItem, ...] = ()
        self._stopping = False  # the actor itself cancels its pump
        self._log = logging.LoggerAdapter(logger, {"cell_id": cell_id})
        self._debug = logger.isEnabledFor(logging.DEBUG)
        self._trace: tracing.CellTrace | None = None  # OpenTelemetry spans, when imported
        # A durable session's journal of this cell (docs/durability.md); None: not durable.
        self.recorder = recorder
        self._halted: BaseException | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Begin running the body in the background."""
        self._trace = tracing.cell_started(self.cell_id, self.kind.value, self._tool_call_id)
        self._pump_task = self._loop.create_task(self._pump(), name=f"codemode-cell-{self.cell_id}")
        self._engine.watch_loss(self._on_engine_lost)

    def _on_engine_lost(self, reason: str) -> None:
        """The engine was lost between commands (docs/sessions.md): settle as the pump would
        have."""
        if self.machine.may_run or self.machine.phase.value == "paused":
            self._log.warning("engine of cell %s lost: %s", self.cell_id, reason)
            self._apply(self.machine.engine_lost())
            self._wake.set()

    @property
    def is_live(self) -> bool:
        return self.machine.is_live

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def halt(self, error: BaseException) -> None:
        """Stop the cell here without any outcome (a durable session was suspended or lost its
        lease): the JavaScript stops, callbacks are cancelled, and callers waiting on the cell
        get ``error``."""
        self._halted = error
        self.abandon()
        for future in self._observer_futures.values():
            if not future.done():
                future.set_exception(error)
        self._closed.set()

    def abandon(self) -> None:
        """Stop the JavaScript at once without any cleanup (the runtime was dropped)."""
        self._stopping = True
        self._engine.close()
        for task in (self._pump_task, self._settle_task, self._notifier, *self._calls.values()):
            if task is not None and not task.done():
                task.cancel()

    # ------------------------------------------------------------------ caller operations

    async def observe(
        self, yield_after: float | None
    ) -> Yielded | Completed | Terminated | Pending:
        """``wait`` (with a budget) or ``wait_to_pending`` (without). Loses nothing if the
        caller is cancelled."""
        start = self.machine.observe()
        self._apply(start.effects)
        if start.event is not None:
            return start.event
        token = start.token
        assert token is not None
        future: asyncio.Future[None] = self._loop.create_future()
        self._observer_futures[token] = future
        deadline: asyncio.TimerHandle | None = None
        if yield_after is not None:
            deadline = self._loop.call_later(max(yield_after, 0.0), self._on_deadline, token)
        try:
            await future
        except asyncio.CancelledError:
            self._apply(self.machine.observer_cancelled(token))
            raise
        finally:
            self._observer_futures.pop(token, None)
            if deadline is not None:
                deadline.cancel()
        collected = self.machine.collect(token)
        self._apply(collected.effects)
        assert collected.event is not None
        return collected.event

    def resume(self, generation: int) -> ResumeOutcome:
        decision = self.machine.resume(generation)
        self._apply(decision.effects)
        assert decision.outcome is not None
        return decision.outcome

    async def terminate(self) -> Completed | Terminated:
        decision = self.machine.terminate()
        self._apply(decision.effects)
        if decision.event is not None:
            assert isinstance(decision.event, Completed)
            return decision.event
        # The termination goes on even if our caller is cancelled.
        await asyncio.shield(self._closed.wait())
        if self._halted is not None:
            raise self._halted
        return Terminated(self._terminated_items)

    def awaiting_approval(self) -> tuple[ApprovalRequest, ...]:
        """The cell's held calls, sorted by call id. While a recovered cell is replayed, the
        calls its record holds and does not decide (those the replay holds again: see
        :meth:`CellRecorder.held_in_record`): the cell knows its own only once the replay has
        reached them, and the decisions recorded after them once it has passed those."""
        recorder = self.recorder
        if recorder is not None and not recorder.replayed.is_set():
            tools = {tool.name: tool for tool in self._tools}
            return tuple(
                ApprovalRequest(self.cell_id, call_id, tools[name], value)
                for call_id, name, value in recorder.held_in_record()
                if name in tools
            )
        return self.machine.awaiting_approval

    def approve(self, call_id: str) -> None:
        """Send a held call to the delegate (``MissingCell`` / ``NotAwaitingApproval``)."""
        self._apply(self.machine.approve(call_id))

    def reject(self, call_id: str, reason: str) -> None:
        """Reject a held call's promise with ``reason`` (raises as :meth:`approve`)."""
        self._apply(self.machine.reject(call_id, reason))

    async def shutdown(self) -> None:
        """Terminate (or close) the cell for the session's shutdown and wait until it closed."""
        self._apply(self.machine.shutdown())
        await self._closed.wait()

    # ------------------------------------------------------------------ effects

    def _apply(self, effects: Iterable[Effect]) -> None:
        for effect in effects:
            # The effect of every nested call first (the others are once a cell or a step).
            if isinstance(effect, DispatchCall):
                if (
                    self.recorder is not None
                    and self.recorder.replaying
                    and self.recorder.dispatch(effect)
                ):
                    continue
                if self._batching and self.kind is not CellKind.PAUSABLE:
                    # (A pausable cell takes its frontier before any result: calls start as
                    # tasks of their own, after the pump took it.)
                    self._to_start.append(effect.call)
                    continue
                call = effect.call
                self._calls[call.call_id] = self._loop.create_task(self._invoke(call))
                self._dispatched = True
            elif isinstance(effect, WakeObserver):
                future = self._observer_futures.get(effect.token)
                if future is not None and not future.done():
                    future.set_result(None)
            elif isinstance(effect, RunEngine):
                self._wake.set()
            elif isinstance(effect, BeginSettling):
                large = len(self.machine.uncommitted_writes) > _THREAD_WRITES
                if not self._calls and self._notes is None and not large:
                    # Nothing to deliver or cancel first: commit in this same step.
                    self._commit_now()
                else:
                    self._settle_task = self._loop.create_task(self._settle())
            elif isinstance(effect, CommitWrites):
                self._host.commit_writes(effect.writes)
            elif isinstance(effect, StopEngine):
                self._stop_task = self._loop.create_task(self._stop())
            elif isinstance(effect, Closed):
                self._on_closed()
            elif isinstance(effect, RejectCall):
                if self.recorder is not None and self.recorder.replaying:
                    self.recorder.reject(effect)
                    continue
                self._ready.append(ToolResultInput(effect.call_id, False, message=effect.reason))
                self._wake.set()

    def _on_closed(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if self._trace is not None:
            error = self.machine._completion_error
            outcome = "terminated" if self._stopping else "failed" if error else "completed"
            self._trace.closed(outcome, error)
        self._engine.close()
        self._wake.set()
        self._host.cell_closed(self.cell_id)

    def _on_deadline(self, token: int) -> None:
        self._apply(self.machine.observer_deadline(token))

    # ------------------------------------------------------------------ the pump

    async def _pump(self) -> None:
        try:
            self._log.debug("cell %s starts", self.cell_id)
            rec = self.recorder
            if rec is not None and rec.recorded is not None:
                from codemode.cell.journal import replay

                await replay(self, rec)
            else:
                report = await self._engine.run()
                if rec is not None:
                    await rec.step_finished(report)
                self._handle(report)
            while self.machine.is_live:
                if not self.machine.may_run:
                    if not self.machine.is_paused:
                        return  # settling, completed or terminating: no more JavaScript
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                self._wake.clear()
                inputs = self._take_inputs()
                if inputs:
                    self.machine.inputs_applied()
                    if rec is not None:
                        rec.step_started(inputs)  # written while the step runs
                    report = await self._engine.step(inputs)
                    if rec is not None:
                        await rec.step_finished(report)  # before any of its effects
                    self._handle(report)
                    continue
                self._apply(self.machine.quiescent(self._pending_ids))
                if not self.machine.may_run:
                    continue
                if self._dispatched:
                    # Let the delegate calls just started take their first step, then look
                    # again: the results of those that answer at once make the next step
                    # without a wake-up of this task (and a loop iteration) per call.
                    self._dispatched = False
                    await asyncio.sleep(0)
                    continue
                if not self._timer_heap:
                    await self._wake.wait()
                    continue
                timeout = max(self._timer_heap[0][0] - time.monotonic(), 0.0)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
        except EngineLost as exc:
            if self.machine.takes_results:
                self._log.warning("engine of cell %s lost: %s", self.cell_id, exc)
                if self.recorder is not None:
                    self.recorder.cut = True  # the command in flight never reported
                self._apply(self.machine.engine_lost())
        except CodeModeError as exc:
            if self.recorder is None:  # pragma: no cover - a bug in codemode itself
                self._log.exception("cell %s failed inside codemode", self.cell_id)
                self._apply(self.machine.engine_lost())
            elif self.machine.takes_results:
                # A durable session's journal could not record a step (SessionBusy, StoreError).
                self._log.warning("cell %s stops: %s", self.cell_id, exc)
                self.recorder.cut = True
                self._apply(self.machine.engine_lost(f"exec cell stopped: {exc}"))
        except asyncio.CancelledError:
            if not self._stopping:
                self._engine.close()
                self._host.loop_closing()
            raise
        except Exception:  # pragma: no cover - a bug in codemode itself
            self._log.exception("cell %s failed inside codemode", self.cell_id)
            self._apply(self.machine.engine_lost())

    def _take_inputs(self) -> list[StepInput]:
        inputs = self._ready
        self._ready = []
        if not self._timer_heap:
            return inputs
        now = time.monotonic()
        while self._timer_heap and self._timer_heap[0][0] <= now:
            _, timer_id = heapq.heappop(self._timer_heap)
            if self._timers.pop(timer_id, None) is not None:
                inputs.append(TimerFired(timer_id))
        return inputs

    def _handle(self, report: StepReport) -> None:
        self._batching = True
        try:
            self._handle_events(report)
            # Before the settlement: settling cancels the calls still at the delegate.
            self._start_calls()
        finally:
            self._batching = False
            if self._to_start:  # an event failed midway: what it released starts as before
                released, self._to_start = self._to_start, []
                for call in released:
                    self._calls[call.call_id] = self._loop.create_task(self._invoke(call))
                    self._dispatched = True
        self._pending_ids = report.pending_call_ids
        if report.settlement is not None:
            self._apply(self.machine.body_settled(report.settlement.error_text))

    def _start_calls(self) -> None:
        """Start the delegate calls the report released, in order, each eagerly (its first step
        runs now, as a task of its own): one that answers at once puts its result in the next
        step's inputs with no task scheduled and no loop iteration. Calls that free a slot
        release more calls (``max_parallel_tool_calls``); those join the queue, so this stays a
        flat loop."""
        queue = self._to_start
        returned: list[str] = []
        self._returned = returned
        i = 0
        try:
            while True:
                while i < len(queue):
                    call = queue[i]
                    i += 1
                    task = start_eager(self._loop, self._invoke(call))
                    if not task.done():
                        self._calls[call.call_id] = task
                        self._dispatched = True
                if not returned:
                    break
                # The calls that answered at once free their slots together; the calls those
                # release join the queue (the machine's DispatchCall, while batching).
                ids = returned[:]
                returned.clear()
                self._apply(self.machine.calls_returned(ids))
        finally:
            self._returned = None
            del queue[:i]
            if returned:  # a call failed to start midway: the slots of those before it
                self._apply(self.machine.calls_returned(returned))

    def _handle_events(self, report: StepReport) -> None:
        machine = self.machine
        calls: list[NestedToolCall] = []  # a run of calls, issued to the machine at once
        for ev in report.events:
            if isinstance(ev, ToolCallRequested):  # the most frequent first
                calls.append(self._new_call(ev))
                continue
            if calls:
                self._apply(machine.calls_issued(calls))
                calls = []
            if isinstance(ev, OutputProduced):
                if self._trace is not None:
                    self._trace.output(ev.item)
                self._apply(machine.output(ev.item))
            elif isinstance(ev, TimerSet):
                due = time.monotonic() + ev.delay
                self._timers[ev.timer_id] = due
                # Ties fire in creation order: timer ids increase with creation.
                heapq.heappush(self._timer_heap, (due, ev.timer_id))
            elif isinstance(ev, TimerCleared):
                self._timers.pop(ev.timer_id, None)
                self._compact_timer_heap()
            elif isinstance(ev, NotifyRequested):
                self._enqueue_notification(ev.text)
            elif isinstance(ev, YieldRequested):
                if self.recorder is not None and self.recorder.replayed_yield(machine):
                    continue
                self._apply(machine.yield_requested())
            elif isinstance(ev, StoreWritten):
                machine.store_written(ev.key, ev.value)
            elif isinstance(ev, StoresWritten):
                machine.stores_written(ev.writes)
        if calls:
            self._apply(machine.calls_issued(calls))

    def _compact_timer_heap(self) -> None:
        """Cleared timers leave the heap once they are most of it (amortised O(1) a clear)."""
        if len(self._timer_heap) > 2 * len(self._timers) + 64:
            self._timer_heap = [(due, tid) for tid, due in self._timers.items()]
            heapq.heapify(self._timer_heap)

    # ------------------------------------------------------------------ nested calls

    def _new_call(self, ev: ToolCallRequested) -> NestedToolCall:
        """The call a report issued, recorded (durable sessions) and not yet at the machine,
        which decides when it reaches the delegate (a free slot, an approval)."""
        tool = self._tools[ev.tool_index]
        call = NestedToolCall(self.cell_id, ev.call_id, tool, ev.input)
        if self.recorder is not None:
            self.recorder.call_issued(ev.call_id, tool.name, ev.input)
            if tool.needs_approval:
                self.recorder.held(ev.call_id, tool.name, ev.input)
        if self._debug:
            self._log.debug("cell %s calls %s as %s", self.cell_id, tool.name, ev.call_id)
        return call

    async def _invoke(self, call: NestedToolCall) -> None:
        trace = self._trace
        delegate = self._host.delegate
        result = await call_delegate(
            delegate.invoke_tool if trace is None else (lambda c: trace.invoke(delegate, c)),
            call,
            cancel_requested=lambda: call.call_id in self._cancel_requested,
            max_bytes=self._max_result_bytes,
        )
        self._calls.pop(call.call_id, None)
        if self.machine.takes_results:
            if self.recorder is not None and self.machine.is_paused:
                self.recorder.arrived(result)
            self._ready.append(result)
            self._wake.set()
        returned = self._returned
        if returned is not None:  # answered while the report's calls start: freed with them
            returned.append(call.call_id)
        else:
            self._apply(self.machine.call_returned(call.call_id))

    # ------------------------------------------------------------------ notifications

    def _enqueue_notification(self, text: str) -> None:
        if self.recorder is not None and self.recorder.skip_notification():
            return  # it reached the delegate before this cell was recovered
        if self._notes is None:
            self._notes = asyncio.Queue()
            self._notifier = self._loop.create_task(self._notify_loop())
        self._notes.put_nowait(text)

    async def _notify_loop(self) -> None:
        assert self._notes is not None
        while True:
            text = await self._notes.get()
            try:
                await self._host.delegate.notify(self._tool_call_id, self.cell_id, text)
                if self.recorder is not None:
                    self.recorder.notified()
            except asyncio.CancelledError:
                raise
            except Exception:
                self._log.exception("notification of cell %s failed", self.cell_id)
            finally:
                self._notes.task_done()

    # ------------------------------------------------------------------ settling and stopping

    async def _settle(self) -> None:
        """Natural completion (docs/sessions.md): notifications first, then cancel calls, then
        commit."""
        if self._notes is not None:
            await self._notes.join()
        await self._cancel_and_wait(self._take_call_tasks())
        prepared = None
        writes = self.machine.uncommitted_writes
        if len(writes) > _THREAD_WRITES:
            # Merge many writes into the session's map off the loop; the commit below uses the
            # result if the map did not change meanwhile.
            prepared = await asyncio.to_thread(self._host.prepare_writes, dict(writes))
        self._commit_now(prepared)

    def _commit_now(self, prepared: Any = None) -> None:
        writes = self.machine.uncommitted_writes
        if writes:
            refused = self._host.writes_refused(writes, prepared)
            if refused is not None:
                self.machine.refuse_writes(refused)
        if self.recorder is None:
            self._apply(self.machine.commit())
        else:
            self._apply(self.recorder.committing(self.machine, self.machine.commit()))
        if self._notifier is not None:
            self._notifier.cancel()

    async def _stop(self) -> None:
        """Termination: stop the JavaScript, keep what it had produced, cancel every callback,
        close (docs/sessions.md)."""
        self._stopping = True
        pump = self._pump_task
        if pump is not None and not pump.done():
            pump.cancel()  # abandons the step in flight, which stops the JavaScript
            await asyncio.wait({pump}, timeout=CALLBACK_GRACE)
        for event in await self._engine.stop():
            if isinstance(event, OutputProduced):
                if self._trace is not None:
                    self._trace.output(event.item)
                self.machine.salvaged_output(event.item)
        tasks = self._take_call_tasks()
        for task in (self._settle_task, self._notifier):
            if task is not None and not task.done() and task is not asyncio.current_task():
                tasks.append(task)
        await self._cancel_and_wait(tasks)
        finished = self.machine.termination_finished()
        self._terminated_items = finished.items
        self._apply(finished.effects)

    def _take_call_tasks(self) -> list[asyncio.Future[Any]]:
        tasks: list[asyncio.Future[Any]] = []
        for call_id, task in self._calls.items():
            self._cancel_requested.add(call_id)
            tasks.append(task)
        self._calls.clear()
        return tasks

    @staticmethod
    async def _cancel_and_wait(tasks: list[asyncio.Future[Any]]) -> None:
        pending = [t for t in tasks if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            # Callbacks that ignore cancellation are abandoned after the grace period: no
            # longer awaited, their results discarded. asyncio holds tasks weakly, so keep them
            # until they end rather than let the garbage collector destroy them mid-flight.
            _, late = await asyncio.wait(pending, timeout=CALLBACK_GRACE)
            for task in late:
                _ABANDONED.add(task)
                task.add_done_callback(_ABANDONED.discard)
