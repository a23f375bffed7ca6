"""Idempotent cell creation on real V8 (docs/sessions.md; scenarios 51-55).

Every behaviour that applies to both kinds of cell is checked for continuing (``create_cell``) and
pausable (``create_pausable_cell``) cells. Engine failures, slow admissions and cancellations
during an admission are made deterministic by a small engine wrapped around the V8 engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from codemode import (
    CellKind,
    CellLimits,
    Completed,
    CreateCellRequest,
    Engine,
    EngineError,
    IdempotencyConflict,
    MissingCell,
    SessionRuntime,
    ShuttingDown,
    TextItem,
    WrongCellKind,
)
from codemode.engine.base import CellBoot, EngineCell
from codemode.engine.v8 import V8Engine
from conftest import DEFAULT_TOOLS, ECHO, RecordingDelegate, request
from scenarios import (
    ECHO_SOURCE,
    ECHO_TEXT,
    Handle,
    assert_missing,
    assert_same_handle,
    create,
    finish,
    handle_type,
    lookup,
    other,
)

KINDS = [
    pytest.param(CellKind.CONTINUING, id="continuing"),
    pytest.param(CellKind.PAUSABLE, id="pausable"),
]

# ECHO_SOURCE (from scenarios) calls tools.echo exactly once, then prints ECHO_TEXT.
# Calls tools.block once and stays live until the test releases it.
BLOCK_SOURCE = "text(JSON.stringify(await tools.block({v: 2})))"
# Completes during its first run.
SYNC_SOURCE = 'text("done")'

# ------------------------------------------------------------------------------------ helpers


def texts(event: Completed) -> list[str]:
    return [i.text for i in event.items if isinstance(i, TextItem)]


class InjectedEngine(Engine):
    """The V8 engine behind a test hook.

    ``failures`` opens raise ``EngineError("injected")``; while ``gate`` is clear, every open for
    which ``held(boot)`` is true waits on it first (the admission is then "in flight").
    """

    name = "injected-v8"

    def __init__(
        self,
        *,
        failures: int = 0,
        gated: bool = False,
        held: Callable[[CellBoot], bool] = lambda boot: True,
    ) -> None:
        self.inner = V8Engine()
        self.failures = failures
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()
        self.held = held
        self.entered = asyncio.Event()  # set by the first open
        self.opens = 0  # open_cell calls
        self.booted: list[str] = []  # cell ids handed to the V8 engine
        self.active = 0
        self.max_active = 0

    async def open_cell(self, boot: CellBoot) -> EngineCell:
        self.opens += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.entered.set()
        try:
            if self.held(boot):
                await self.gate.wait()
            if self.failures > 0:
                self.failures -= 1
                raise EngineError("injected")
            self.booted.append(boot.cell_id)
            return await self.inner.open_cell(boot)
        finally:
            self.active -= 1

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
async def engine_runtime(delegate: RecordingDelegate) -> AsyncIterator[Any]:
    """A factory of runtimes over an :class:`InjectedEngine`, all shut down afterwards."""
    created: list[tuple[SessionRuntime, InjectedEngine]] = []

    def make(engine: InjectedEngine, limits: CellLimits | None = None) -> SessionRuntime:
        rt = SessionRuntime(delegate, engine=engine, limits=limits)
        created.append((rt, engine))
        return rt

    try:
        yield make
    finally:
        for rt, engine in created:
            engine.gate.set()  # never leave an admission parked: shutdown waits for admissions
            await asyncio.wait_for(rt.shutdown(), 10)


async def settle_loop(rounds: int = 5) -> None:
    """Let every task that is ready run until it blocks (no wall-clock wait)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


ATTEMPTS = 20


async def before_cancel(attempt: int) -> None:
    """Spread the cancellation points of successive attempts over a real V8 admission (which
    takes a few milliseconds and many loop iterations): first 0-5 loop iterations, then
    growing sub-millisecond delays. Where each lands does not matter to the assertions."""
    if attempt < 6:
        await settle_loop(attempt)
    else:
        await asyncio.sleep((attempt - 6) * 0.0003)


# ------------------------------------------------------------------------------------ limits


def test_idempotency_key_bound_below_live_cells_is_rejected() -> None:
    with pytest.raises(ValueError):
        CellLimits(max_live_cells=10, max_idempotency_keys=5)
    limits = CellLimits(max_live_cells=5, max_idempotency_keys=5)  # equal is allowed
    assert limits.max_idempotency_keys == limits.max_live_cells == 5
    assert CellLimits().max_idempotency_keys == 10_000


# ------------------------------------------------------------------------------------ scenario 51


@pytest.mark.parametrize("kind", KINDS)
async def test_scenario_51_concurrent_creates_with_one_key_admit_one_cell(
    kind: CellKind, engine_runtime: Any, delegate: RecordingDelegate
) -> None:
    engine = InjectedEngine()
    rt = engine_runtime(engine)
    req = request(ECHO_SOURCE, idempotency_key="key-51", tool_call_id="call-51")

    handles = await asyncio.wait_for(
        asyncio.gather(*(create(rt, kind, req) for _ in range(50))), 20
    )

    first = handles[0]
    assert isinstance(first, handle_type(kind))
    assert first.kind is kind
    for h in handles:
        assert_same_handle(h, first)
    assert len(set(handles)) == 1
    assert engine.opens == 1
    assert engine.booted == [first.cell_id]

    event = await finish(rt, first)
    assert texts(event) == [ECHO_TEXT]
    assert event.error_text is None
    await asyncio.sleep(0.1)  # give a (wrongly) admitted second cell time to call its tool
    assert len(delegate.calls) == 1
    assert delegate.calls[0].cell_id == first.cell_id
    assert delegate.calls[0].tool.name == "echo"

    # Scenario 51, second half: the same key for the other kind of create.
    with pytest.raises(WrongCellKind) as info:
        await create(rt, other(kind), req)
    err = info.value
    assert err.cell_id == first.cell_id
    assert err.expected == str(other(kind))
    assert err.actual == str(kind)
    assert str(err) == f"exec cell {first.cell_id} is {kind}, expected {other(kind)}"
    assert engine.opens == 1


@pytest.mark.parametrize("state", ["running", "closed"])
@pytest.mark.parametrize("kind", KINDS)
async def test_kind_mismatch_is_checked_before_the_fingerprint(
    kind: CellKind, state: str, runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    req = request(BLOCK_SOURCE, idempotency_key="kind-key", tool_call_id="c1")
    first = await create(runtime, kind, req)
    await delegate.wait_calls(1)
    if state == "closed":
        delegate.release()
        await finish(runtime, first)
        await assert_missing(runtime, first)

    differing = [
        req,
        request(SYNC_SOURCE, idempotency_key="kind-key", tool_call_id="c1"),
        request(BLOCK_SOURCE, ECHO, idempotency_key="kind-key", tool_call_id="other"),
    ]
    for r in differing:
        with pytest.raises(WrongCellKind) as info:
            await create(runtime, other(kind), r)
        err = info.value
        assert (err.cell_id, err.expected, err.actual) == (
            first.cell_id,
            str(other(kind)),
            str(kind),
        )
        assert str(err) == f"exec cell {first.cell_id} is {kind}, expected {other(kind)}"
    assert_same_handle(await create(runtime, kind, req), first)
    assert len(delegate.calls) == 1


# ------------------------------------------------------------------------------------ scenario 53


@pytest.mark.parametrize("kind", KINDS)
async def test_retry_while_a_completion_is_buffered_returns_the_same_handle(
    kind: CellKind, runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    req = request(SYNC_SOURCE, idempotency_key="key-buffered")
    first = await create(runtime, kind, req)
    await asyncio.sleep(0.3)  # the cell completes unobserved; its completion is buffered
    assert_same_handle(lookup(runtime, first), first)  # still registered

    retry = await create(runtime, kind, req)
    assert_same_handle(retry, first)
    event = await finish(runtime, retry)
    assert texts(event) == ["done"]
    await assert_missing(runtime, first)
    assert_same_handle(await create(runtime, kind, req), first)
    assert delegate.calls == []


@pytest.mark.parametrize("kind", KINDS)
async def test_retry_while_the_cell_runs_returns_the_same_handle(
    kind: CellKind, runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    req = request(BLOCK_SOURCE, idempotency_key="key-running")
    first = await create(runtime, kind, req)
    await delegate.wait_calls(1)
    assert_same_handle(await create(runtime, kind, req), first)
    delegate.release()
    assert texts(await finish(runtime, first)) == ['{"v":2}']
    assert len(delegate.calls) == 1


# ------------------------------------------------------------------------------------ scenario 54


@pytest.mark.parametrize("kind", KINDS)
async def test_scenario_54_failed_admission_records_nothing_and_retry_admits(
    kind: CellKind, engine_runtime: Any, delegate: RecordingDelegate
) -> None:
    engine = InjectedEngine(failures=1)
    rt = engine_runtime(engine)
    req = request(ECHO_SOURCE, idempotency_key="key-54")

    with pytest.raises(EngineError) as info:
        await create(rt, kind, req)
    assert str(info.value) == "injected"
    assert info.value.text == "injected"
    assert engine.opens == 1 and engine.booted == []
    assert delegate.calls == []

    handle = await create(rt, kind, req)
    assert isinstance(handle, handle_type(kind))
    assert engine.opens == 2
    assert engine.booted == [handle.cell_id]
    assert texts(await finish(rt, handle)) == [ECHO_TEXT]
    assert [c.cell_id for c in delegate.calls] == [handle.cell_id]

    # Now it is recorded: a further retry admits nothing.
    assert_same_handle(await create(rt, kind, req), handle)
    assert engine.opens == 2


@pytest.mark.parametrize("kind", KINDS)
async def test_failed_admission_leaves_the_key_free_for_any_request(
    kind: CellKind, engine_runtime: Any, delegate: RecordingDelegate
) -> None:
    engine = InjectedEngine(failures=1)
    rt = engine_runtime(engine)
    with pytest.raises(EngineError, match=r"^injected$"):
        await create(rt, kind, request(SYNC_SOURCE, idempotency_key="key-free"))
    # Neither WrongCellKind nor IdempotencyConflict: nothing was recorded for the key.
    handle = await create(rt, other(kind), request(ECHO_SOURCE, idempotency_key="key-free"))
    assert handle.kind is other(kind)
    assert texts(await finish(rt, handle)) == [ECHO_TEXT]
    assert [c.cell_id for c in delegate.calls] == [handle.cell_id]


@pytest.mark.parametrize("kind", KINDS)
async def test_concurrent_waiter_admits_itself_after_a_failed_admission(
    kind: CellKind, engine_runtime: Any, delegate: RecordingDelegate
) -> None:
    engine = InjectedEngine(failures=1, gated=True)
    rt = engine_runtime(engine)
    req = request(ECHO_SOURCE, idempotency_key="key-waiters")

    failing = asyncio.ensure_future(create(rt, kind, req))
    await asyncio.wait_for(engine.entered.wait(), 5)
    waiters = [asyncio.ensure_future(create(rt, kind, req)) for _ in range(2)]
    await settle_loop()
    assert engine.opens == 1  # the waiters wait for the admission in flight
    assert not any(w.done() for w in waiters)

    engine.gate.set()
    with pytest.raises(EngineError, match=r"^injected$"):
        await asyncio.wait_for(failing, 5)
    a, b = await asyncio.wait_for(asyncio.gather(*waiters), 5)
    assert_same_handle(b, a)
    assert engine.opens == 2  # exactly one waiter attempted the admission
    assert engine.max_active == 1
    assert engine.booted == [a.cell_id]
    assert texts(await finish(rt, a)) == [ECHO_TEXT]
    assert [c.cell_id for c in delegate.calls] == [a.cell_id]


@pytest.mark.parametrize("kind", KINDS)
async def test_waiters_retry_a_failing_admission_one_at_a_time(
    kind: CellKind, engine_runtime: Any, delegate: RecordingDelegate
) -> None:
    engine = InjectedEngine(failures=2, gated=True)
    rt = engine_runtime(engine)
    req = request(ECHO_SOURCE, idempotency_key="key-one-at-a-time")

    failing = asyncio.ensure_future(create(rt, kind, req))
    await asyncio.wait_for(engine.entered.wait(), 5)
    waiters = [asyncio.ensure_future(create(rt, kind, req)) for _ in range(3)]
    await settle_loop()
    engine.gate.set()
    with pytest.raises(EngineError, match=r"^injected$"):
        await asyncio.wait_for(failing, 5)
    outcomes = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 5)

    errors = [o for o in outcomes if isinstance(o, BaseException)]
    handles = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(errors) == 1 and isinstance(errors[0], EngineError), outcomes
    assert len(handles) == 2
    assert_same_handle(handles[1], handles[0])
    assert engine.opens == 3
    assert engine.max_active == 1  # never two admissions of one key at once
    assert engine.booted == [handles[0].cell_id]
    await finish(rt, handles[0])
    assert len(delegate.calls) == 1


# ------------------------------------------------------------------------------------ scenario 55


@pytest.mark.parametrize("retry_when", ["during_admission", "after_admission"])
@pytest.mark.parametrize("kind", KINDS)
async def test_scenario_55_keyed_create_cancelled_during_admission_is_found_by_its_retry(
    kind: CellKind, retry_when: str, engine_runtime: Any, delegate: RecordingDelegate
) -> None:
    engine = InjectedEngine(gated=True)
    rt = engine_runtime(engine)
    req = request(ECHO_SOURCE, idempotency_key="key-55")

    creator = asyncio.ensure_future(create(rt, kind, req))
    await asyncio.wait_for(engine.entered.wait(), 5)
    creator.cancel()
    with pytest.raises(asyncio.CancelledError):
        await creator

    if retry_when == "during_admission":
        retry_task = asyncio.ensure_future(create(rt, kind, req))
        await settle_loop()
        assert not retry_task.done()
        engine.gate.set()
        retry = await asyncio.wait_for(retry_task, 5)
    else:
        engine.gate.set()
        await delegate.wait_calls(1)  # the admission finished and the cell runs unobserved
        retry = await create(rt, kind, req)

    assert isinstance(retry, handle_type(kind))
    assert engine.opens == 1
    assert engine.booted == [retry.cell_id]  # the very cell the cancelled create admitted
    assert texts(await finish(rt, retry)) == [ECHO_TEXT]
    await asyncio.sleep(0.05)
    assert [c.cell_id for c in delegate.calls] == [retry.cell_id]


@pytest.mark.parametrize("kind", KINDS)
async def test_scenario_55_unkeyed_create_cancelled_during_admission_leaves_no_running_cell(
    kind: CellKind, engine_runtime: Any, delegate: RecordingDelegate
) -> None:
    engine = InjectedEngine(gated=True)
    rt = engine_runtime(engine)

    creator = asyncio.ensure_future(create(rt, kind, request(ECHO_SOURCE)))
    await asyncio.wait_for(engine.entered.wait(), 5)
    creator.cancel()
    with pytest.raises(asyncio.CancelledError):
        await creator
    engine.gate.set()
    await asyncio.sleep(0.3)  # time for a wrongly surviving cell to call its tool
    assert delegate.calls == []

    # The session still admits cells, and its shutdown is not held up by the cancelled one.
    handle = await create(rt, kind, request(ECHO_SOURCE))
    assert texts(await finish(rt, handle)) == [ECHO_TEXT]
    assert [c.cell_id for c in delegate.calls] == [handle.cell_id]
    await asyncio.wait_for(rt.shutdown(), 5)
    assert not rt.is_alive
    assert [c.cell_id for c in delegate.calls] == [handle.cell_id]


@pytest.mark.parametrize("kind", KINDS)
async def test_keyed_create_cancelled_anywhere_in_a_real_v8_admission_runs_once(
    kind: CellKind, runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    """Cancel the caller at points spread over the V8 engine's own admission; whether or not
    the cancellation landed before the handle was returned, the retry finds the one cell."""
    for attempt in range(ATTEMPTS):
        source = f"text(JSON.stringify(await tools.echo({{attempt: {attempt}}})))"
        req = request(source, idempotency_key=f"key-v8-{attempt}")
        creator = asyncio.ensure_future(create(runtime, kind, req))
        await before_cancel(attempt)
        creator.cancel()
        try:
            first: Handle | None = await creator
        except asyncio.CancelledError:
            first = None
        retry = await asyncio.wait_for(create(runtime, kind, req), 5)
        if first is not None:
            assert_same_handle(retry, first)
        assert texts(await finish(runtime, retry)) == [f'{{"attempt":{attempt}}}']
    await asyncio.sleep(0.1)
    assert [c.input for c in delegate.calls] == [{"attempt": i} for i in range(ATTEMPTS)]


@pytest.mark.parametrize("kind", KINDS)
async def test_unkeyed_create_cancelled_anywhere_in_a_real_v8_admission_leaves_no_cell(
    kind: CellKind, runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cancelled: set[int] = set()
    for attempt in range(ATTEMPTS):
        source = f"text(JSON.stringify(await tools.echo({{attempt: {attempt}}})))"
        creator = asyncio.ensure_future(create(runtime, kind, request(source)))
        await before_cancel(attempt)
        creator.cancel()
        try:
            handle = await creator
        except asyncio.CancelledError:
            cancelled.add(attempt)
        else:
            await finish(runtime, handle)
    await asyncio.sleep(0.3)
    seen = {c.input["attempt"] for c in delegate.calls}
    assert not (seen & cancelled), f"cancelled creates whose cell ran: {seen & cancelled}"
    assert seen == set(range(ATTEMPTS)) - cancelled
    await asyncio.wait_for(runtime.shutdown(), 5)


# ------------------------------------------------------------------------------------ shutdown


@pytest.mark.parametrize("kind", KINDS)
async def test_shutting_down_is_checked_before_the_key(
    kind: CellKind, runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    req = request(BLOCK_SOURCE, idempotency_key="key-shutdown")
    first = await create(runtime, kind, req)
    await delegate.wait_calls(1)

    shutdown = asyncio.ensure_future(runtime.shutdown())
    await asyncio.sleep(0)
    assert not runtime.is_alive
    for phase in ("began", "finished"):
        for k, r in [
            (kind, req),  # a matching retry
            (other(kind), req),  # would be WrongCellKind
            (kind, request(SYNC_SOURCE, idempotency_key="key-shutdown")),  # would conflict
            (kind, request(SYNC_SOURCE, idempotency_key="key-new")),
            (kind, request(SYNC_SOURCE)),
        ]:
            with pytest.raises(ShuttingDown) as info:
                await create(runtime, k, r)
            assert str(info.value) == "code mode session is shutting down", phase
        if phase == "began":
            await asyncio.wait_for(shutdown, 10)
    await assert_missing(runtime, first)


@pytest.mark.parametrize("kind", KINDS)
async def test_keyed_admission_racing_shutdown_registers_or_raises(
    kind: CellKind, engine_runtime: Any, delegate: RecordingDelegate
) -> None:
    engine = InjectedEngine(gated=True)
    rt = engine_runtime(engine)
    req = request(ECHO_SOURCE, idempotency_key="key-race")
    creator = asyncio.ensure_future(create(rt, kind, req))
    await asyncio.wait_for(engine.entered.wait(), 5)
    waiter = asyncio.ensure_future(create(rt, kind, req))
    await settle_loop()

    shutdown = asyncio.ensure_future(rt.shutdown())
    await settle_loop()
    assert not rt.is_alive
    engine.gate.set()
    outcomes = await asyncio.wait_for(asyncio.gather(creator, waiter, return_exceptions=True), 5)
    await asyncio.wait_for(shutdown, 10)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            assert isinstance(outcome, ShuttingDown), outcome
        else:
            await assert_missing(rt, outcome)
    handles = [o for o in outcomes if not isinstance(o, BaseException)]
    if len(handles) == 2:
        assert_same_handle(handles[1], handles[0])
    with pytest.raises(ShuttingDown):
        await create(rt, kind, req)


# ------------------------------------------------------------------------------------ retention


@pytest.mark.parametrize("kind", KINDS)
async def test_eviction_takes_the_oldest_closed_key_and_never_a_live_one(
    kind: CellKind, make_runtime: Any, delegate: RecordingDelegate
) -> None:
    rt = make_runtime(limits=CellLimits(max_live_cells=2, max_idempotency_keys=3))

    def req(key: str, source: str) -> CreateCellRequest:
        return request(source, idempotency_key=key)

    async def run_to_close(cell: Handle) -> None:
        await finish(rt, cell)
        with pytest.raises(MissingCell):
            lookup(rt, cell)

    a = await create(rt, kind, req("kA", BLOCK_SOURCE))  # oldest key; its cell stays live
    b = await create(rt, kind, req("kB", SYNC_SOURCE))
    await run_to_close(b)
    c = await create(rt, kind, req("kC", SYNC_SOURCE))
    await run_to_close(c)
    d = await create(rt, kind, req("kD", BLOCK_SOURCE))  # 4th key: evicts kB, not kA
    await delegate.wait_calls(2)

    assert_same_handle(await create(rt, kind, req("kA", BLOCK_SOURCE)), a)
    assert_same_handle(await create(rt, kind, req("kC", SYNC_SOURCE)), c)

    await rt.terminate(d)  # frees a live slot; kD's cell is now closed
    b2 = await create(rt, kind, req("kB", SYNC_SOURCE))  # evicted: a new cell
    assert b2.cell_id != b.cell_id
    assert texts(await finish(rt, b2)) == ["done"]  # recording kB evicted kC (older than kD)

    assert_same_handle(await create(rt, kind, req("kA", BLOCK_SOURCE)), a)
    assert_same_handle(await create(rt, kind, req("kD", BLOCK_SOURCE)), d)
    assert_same_handle(await create(rt, kind, req("kB", SYNC_SOURCE)), b2)

    c2 = await create(rt, kind, req("kC", SYNC_SOURCE))  # evicted: a new cell; evicts kD
    assert c2.cell_id not in (c.cell_id, b.cell_id, b2.cell_id)
    await run_to_close(c2)
    d2 = await create(rt, kind, req("kD", BLOCK_SOURCE))
    assert d2.cell_id != d.cell_id
    await delegate.wait_calls(3)

    # Through all of this the oldest key, a live cell's, was never evicted.
    assert_same_handle(await create(rt, kind, req("kA", BLOCK_SOURCE)), a)
    assert [c.cell_id for c in delegate.calls] == [a.cell_id, d.cell_id, d2.cell_id]
    delegate.release()
    assert texts(await finish(rt, a)) == ['{"v":2}']


@pytest.mark.parametrize("kind", KINDS)
async def test_a_key_whose_completion_is_buffered_is_not_evicted(
    kind: CellKind, make_runtime: Any, delegate: RecordingDelegate
) -> None:
    rt = make_runtime(limits=CellLimits(max_live_cells=2, max_idempotency_keys=2))
    a = await create(rt, kind, request(SYNC_SOURCE, idempotency_key="kA"))  # completes, unobserved
    b = await create(rt, kind, request(SYNC_SOURCE, idempotency_key="kB"))
    await finish(rt, b)  # delivered: closed
    await asyncio.sleep(0.2)
    assert_same_handle(lookup(rt, a), a)  # completed but still registered (not closed)
    c = await create(rt, kind, request(ECHO_SOURCE, idempotency_key="kC"))  # evicts kB, not kA
    await finish(rt, c)

    assert_same_handle(await create(rt, kind, request(SYNC_SOURCE, idempotency_key="kA")), a)
    assert texts(await finish(rt, a)) == ["done"]
    b2 = await create(rt, kind, request(SYNC_SOURCE, idempotency_key="kB"))
    assert b2.cell_id != b.cell_id
    await finish(rt, b2)


# ------------------------------------------------------------------------------------ no key


@pytest.mark.parametrize("kind", KINDS)
async def test_creates_without_a_key_always_admit_a_new_cell(
    kind: CellKind, runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    req = CreateCellRequest(ECHO_SOURCE, DEFAULT_TOOLS, tool_call_id="same", idempotency_key=None)
    first = await create(runtime, kind, req)
    second = await create(runtime, kind, req)
    concurrent = await asyncio.gather(*(create(runtime, kind, req) for _ in range(3)))
    handles = [first, second, *concurrent]
    assert len({h.cell_id for h in handles}) == 5
    assert first != second
    for h in handles:
        assert texts(await finish(runtime, h)) == [ECHO_TEXT]
    assert sorted(c.cell_id for c in delegate.calls) == sorted(h.cell_id for h in handles)


# ------------------------------------------------------------------------------------ concurrency


@pytest.mark.parametrize("kind", KINDS)
async def test_creates_with_other_keys_admit_while_one_admission_is_in_flight(
    kind: CellKind, engine_runtime: Any, delegate: RecordingDelegate
) -> None:
    engine = InjectedEngine(gated=True, held=lambda boot: "held" in boot.source)
    rt = engine_runtime(engine)
    held_req = request(f"/* held */ {ECHO_SOURCE}", idempotency_key="k-held")
    slow = asyncio.ensure_future(create(rt, kind, held_req))
    await asyncio.wait_for(engine.entered.wait(), 5)
    same_key = asyncio.ensure_future(create(rt, kind, held_req))

    other_keyed = await asyncio.wait_for(
        create(rt, kind, request(ECHO_SOURCE, idempotency_key="k-free")), 5
    )
    unkeyed = await asyncio.wait_for(create(rt, kind, request(ECHO_SOURCE)), 5)
    assert not slow.done() and not same_key.done()
    assert texts(await finish(rt, other_keyed)) == [ECHO_TEXT]
    assert texts(await finish(rt, unkeyed)) == [ECHO_TEXT]

    engine.gate.set()
    a, b = await asyncio.wait_for(asyncio.gather(slow, same_key), 5)
    assert_same_handle(b, a)
    await finish(rt, a)
    assert len(delegate.calls) == 3


@pytest.mark.parametrize("kind", KINDS)
async def test_mismatching_waiters_are_judged_against_the_admission_they_waited_for(
    kind: CellKind, engine_runtime: Any, delegate: RecordingDelegate
) -> None:
    engine = InjectedEngine(gated=True)
    rt = engine_runtime(engine)
    req = request(ECHO_SOURCE, idempotency_key="k-judged")
    first_task = asyncio.ensure_future(create(rt, kind, req))
    await asyncio.wait_for(engine.entered.wait(), 5)
    conflicting = asyncio.ensure_future(
        create(rt, kind, request(SYNC_SOURCE, idempotency_key="k-judged"))
    )
    wrong_kind = asyncio.ensure_future(
        create(rt, other(kind), request(SYNC_SOURCE, idempotency_key="k-judged"))
    )
    await settle_loop()
    assert not conflicting.done() and not wrong_kind.done()

    engine.gate.set()
    first = await asyncio.wait_for(first_task, 5)
    with pytest.raises(
        IdempotencyConflict, match=r"^idempotency key k-judged was reused for a different request$"
    ):
        await asyncio.wait_for(conflicting, 5)
    with pytest.raises(WrongCellKind) as info:
        await asyncio.wait_for(wrong_kind, 5)
    assert (info.value.cell_id, info.value.expected, info.value.actual) == (
        first.cell_id,
        str(other(kind)),
        str(kind),
    )
    assert engine.opens == 1
    await finish(rt, first)
    assert len(delegate.calls) == 1
