"""A synchronous request/response host for pausable cells (docs/sessions.md).

Picture an API server: a client posts a JavaScript program; the server must answer *this* HTTP
request with the batch of tool calls the program is waiting on, and the client, which owns the
tools, posts their results in a later request. Between the two requests the program is paused at
a *pending frontier*; nothing runs, whatever arrives.

``RequestResponseHost`` is that server's core, with a plain blocking API::

    host = RequestResponseHost()
    response = host.handle(NewProgram(source, tools, request_id="req-1"))
    while isinstance(response, PendingResponse):
        results = {c.call_id: run_tool(c.name, c.input) for c in response.calls}
        response = host.handle(ToolResults(response.cell_id, response.generation, results))
    print(response.texts)
    host.close()

How it follows docs/sessions.md:

1. The delegate parks one future per ``(cell_id, call_id)`` and awaits it: the cell's calls wait
   for the client, not for a tool implementation on the server.
2. ``wait_to_pending`` gives the frontier: its items and the calls still unresolved in the cell.
3. The response hands both to the client with ``cell_id`` and ``generation``.
4. The client's results resolve the parked futures; then ``resume(cell, generation)`` lets the
   program go on to its next frontier, or to its end.

Retries are harmless. A retried request gets the response of the first one (responses are kept
per ``(cell_id, request generation)``; a new program is deduplicated by its ``request_id``, the
cell's idempotency key, docs/sessions.md). A stale request, one naming a generation that was already
resumed, also gets its recorded response; an answer given twice is ignored; the runtime itself
treats a repeated ``resume`` as ``ALREADY_RUNNING``. Only a generation the server never handed
out is an error (``BadRequest``).

Internally a ``SessionRuntime`` runs on an event loop in a background thread; the public methods
submit coroutines to it and block on the result. Run ``python examples/request_response_host.py``
for a demo with a fake client.

**Durable mode** (docs/durability.md, "Fronts"): ``RequestResponseHost(store=PATH,
session_id=ID)`` keeps its programs in a durable session in the SQLite file ``PATH``, so that
each request may be served by another process: one that was restarted after a crash, or another
replica on the machine. A host that opens the session recovers its paused programs at their
frontiers; a ``ToolResults`` request for a program this process never saw is served from the
recovered cell. ``python examples/request_response_host.py --store trips.db`` runs the demo with
every request sent to a host *process*, and kills that process with SIGKILL between two requests:
a new process takes over and the program ends exactly as without the crash. (A response lost with
its process is not kept: a retry of that request to the new process gets the program's next state
but not the output the lost response carried.)
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

from codemode import (
    CellLimits,
    Completed,
    CreateCellRequest,
    InvalidGeneration,
    MissingCell,
    NestedToolCall,
    OutputItem,
    Pending,
    SessionBusy,
    SessionRuntime,
    SqliteStore,
    TextItem,
    ToolDefinition,
)

__all__ = [
    "BadRequest",
    "ClientRequest",
    "FinalResponse",
    "HostProcess",
    "HostResponse",
    "NewProgram",
    "PendingResponse",
    "RequestResponseHost",
    "ToolCallRequest",
    "ToolResults",
    "UnknownProgram",
    "main",
]

T = TypeVar("T")


# --------------------------------------------------------------------------- the wire shapes


@dataclass(frozen=True)
class NewProgram:
    """A client request: run this program with these tools (the client implements them)."""

    source: str
    tools: Sequence[ToolDefinition]
    request_id: str | None = None  # makes a retried request safe: it finds the same program


@dataclass(frozen=True)
class ToolResults:
    """A client request: results for calls of frontier ``generation``; some or all of them.

    ``results`` maps a call id to the JSON value that resolves the call in the program;
    ``errors`` maps a call id to a message that rejects it (the program sees an ``Error``).
    """

    cell_id: str
    generation: int
    results: Mapping[str, Any] = field(default_factory=dict)
    errors: Mapping[str, str] = field(default_factory=dict)


ClientRequest = NewProgram | ToolResults


@dataclass(frozen=True)
class ToolCallRequest:
    """One call the program is waiting on: the client runs it and sends the result back."""

    call_id: str
    name: str
    input: Any


@dataclass(frozen=True)
class PendingResponse:
    """The program is paused: answer ``calls`` and send ``ToolResults(cell_id, generation)``."""

    cell_id: str
    generation: int
    items: tuple[OutputItem, ...]  # output since the previous response
    calls: tuple[ToolCallRequest, ...]

    @property
    def texts(self) -> list[str]:
        return [i.text for i in self.items if isinstance(i, TextItem)]


@dataclass(frozen=True)
class FinalResponse:
    """The program is over: its last output, and ``error_text`` if it failed."""

    cell_id: str
    items: tuple[OutputItem, ...]  # output since the previous response
    error_text: str | None = None
    terminated: bool = False  # stopped by the host (it waited on nothing the client can answer)

    @property
    def texts(self) -> list[str]:
        return [i.text for i in self.items if isinstance(i, TextItem)]


HostResponse = PendingResponse | FinalResponse


class BadRequest(ValueError):
    """The request names a generation this host never handed out."""


class UnknownProgram(LookupError):
    """The request names a program this host does not know (or has forgotten)."""


class ToolRejected(Exception):
    """Raised inside the delegate for a call the client answered with an error."""


# --------------------------------------------------------------------------- the delegate


@dataclass
class _Slot:
    """One nested call as the host sees it: the future its delegate coroutine awaits."""

    future: asyncio.Future[Any]
    invoked: asyncio.Event = field(default_factory=asyncio.Event)
    call: NestedToolCall | None = None


class _ParkingDelegate:
    """docs/sessions.md step 1: each nested call parks a future until the client answers it."""

    def __init__(self) -> None:
        self._slots: dict[tuple[str, str], _Slot] = {}

    def _slot(self, cell_id: str, call_id: str) -> _Slot:
        key = (cell_id, call_id)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot(asyncio.get_running_loop().create_future())
        return slot

    async def invoke_tool(self, call: NestedToolCall) -> Any:
        slot = self._slot(call.cell_id, call.call_id)
        slot.call = call
        slot.invoked.set()
        return await slot.future

    async def call_of(self, cell_id: str, call_id: str) -> NestedToolCall:
        """The call, once it has reached the delegate (a frontier may list a call whose
        delegate coroutine has not started yet)."""
        slot = self._slot(cell_id, call_id)
        await slot.invoked.wait()
        assert slot.call is not None
        return slot.call

    def answer(
        self,
        cell_id: str,
        call_id: str,
        value: Any = None,
        error: str | None = None,
        *,
        ahead: bool = False,
    ) -> None:
        """Resolve (or reject) a parked call. Unknown or already answered calls are ignored;
        with ``ahead``, an unknown call is answered before it arrives (a recovered cell issues
        its unanswered calls again, maybe after its client's answer)."""
        slot = self._slot(cell_id, call_id) if ahead else self._slots.get((cell_id, call_id))
        if slot is None or slot.future.done():
            return  # a duplicate answer, or one for a call never handed out
        if error is not None:
            slot.future.set_exception(ToolRejected(error))
        else:
            slot.future.set_result(value)

    def is_answered(self, cell_id: str, call_id: str) -> bool:
        slot = self._slots.get((cell_id, call_id))
        return slot is not None and slot.future.done()

    def forget(self, cell_id: str) -> None:
        """The program is over: drop its calls."""
        for key in [k for k in self._slots if k[0] == cell_id]:
            del self._slots[key]

    async def notify(self, call_id: str, cell_id: str, text: str) -> None:
        return None  # a real server could stream these to the client


# --------------------------------------------------------------------------- the host


@dataclass
class _Program:
    """What the host remembers about one program."""

    cell_id: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Responses already given, by the generation of the request (0: the NewProgram request).
    responses: dict[int, HostResponse] = field(default_factory=dict)
    handed_out: set[int] = field(default_factory=set)  # generations sent to the client
    carry: list[OutputItem] = field(default_factory=list)  # items observed, not yet sent
    final: FinalResponse | None = None
    # Recovered from the store: another process handed its frontiers out.
    recovered: bool = False


class RequestResponseHost:
    """Drives pausable cells for a client that answers tool calls in later requests.

    Every public method is a plain blocking call, safe to use from any thread (concurrent
    requests for one program are handled one at a time). ``wait_timeout`` bounds how long one
    request waits for the program's next frontier; a program that outlives it while waiting on
    nothing the client can answer (a timer far away, a promise nothing settles) is terminated.
    """

    def __init__(
        self,
        *,
        limits: CellLimits | None = None,
        wait_timeout: float = 30.0,
        max_finished_programs: int = 1000,
        store: str | os.PathLike[str] | None = None,
        session_id: str | None = None,
        lease_seconds: float = 10.0,
    ) -> None:
        """With ``store`` (a SQLite file) the host is durable: its programs live in the session
        ``session_id`` of that store (a new session when ``None``; see :attr:`session_id`),
        and a host opened later on the same store and id, in this process or another, carries
        them on. Opening waits up to ``lease_seconds`` (and a little more) for a host that
        crashed to lose its lease; ``SessionBusy`` if the session stays held."""
        self.wait_timeout = wait_timeout
        self._max_finished = max_finished_programs
        self._delegate = _ParkingDelegate()
        self._programs: OrderedDict[str, _Program] = OrderedDict()
        self._closed = False
        self._store = SqliteStore(store, lease_seconds=lease_seconds) if store is not None else None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="codemode-request-response-host", daemon=True
        )
        self._thread.start()
        try:
            self._runtime: SessionRuntime = self._call(self._make_runtime(limits, session_id))
        except BaseException:
            self._stop_loop()
            raise

    async def _make_runtime(
        self, limits: CellLimits | None, session_id: str | None
    ) -> SessionRuntime:
        if self._store is None:
            return SessionRuntime(self._delegate, limits=limits)
        deadline = time.monotonic() + self._store.lease_seconds * 2 + 5.0
        while True:
            runtime = SessionRuntime(
                self._delegate, limits=limits, store=self._store, session_id=session_id
            )
            try:
                return await runtime.open()
            except SessionBusy:
                # A host that crashed holds the lease until it runs out; a live one keeps it.
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    @property
    def session_id(self) -> str | None:
        """The durable session's id (``None`` without a store)."""
        return self._runtime.session_id if self._store is not None else None

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the host's loop and block until it is done.

        If the caller stops waiting (``timeout``), the coroutine still finishes on the loop, so
        its response is recorded and a retried request gets it.
        """
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    # ------------------------------------------------------------------ public API

    def handle(self, request: ClientRequest, timeout: float | None = None) -> HostResponse:
        """Answer one client request: the next batch of tool calls, or the program's end."""
        if self._closed:
            raise RuntimeError("the host is closed")
        if isinstance(request, NewProgram):
            return self._call(self._new_program(request), timeout)
        if isinstance(request, ToolResults):
            return self._call(self._tool_results(request), timeout)
        raise TypeError(f"unexpected request {type(request).__name__}")

    def start(
        self, source: str, tools: Sequence[ToolDefinition], request_id: str | None = None
    ) -> HostResponse:
        """``handle(NewProgram(...))``."""
        return self.handle(NewProgram(source, tuple(tools), request_id))

    def submit(
        self,
        cell_id: str,
        generation: int,
        results: Mapping[str, Any] | None = None,
        errors: Mapping[str, str] | None = None,
    ) -> HostResponse:
        """``handle(ToolResults(...))``."""
        return self.handle(
            ToolResults(cell_id, generation, dict(results or {}), dict(errors or {}))
        )

    def close(self) -> None:
        """Terminate every program, shut the runtime down and stop the loop thread (a durable
        host ends its session: its programs are gone from the store too)."""
        self._leave(self._runtime.shutdown())

    def suspend(self) -> None:
        """A durable host's way out without ending anything: stop here, release the session,
        and let another host (process) carry its programs on. Without a store, ``close``."""
        self._leave(
            self._runtime.suspend() if self._store is not None else self._runtime.shutdown()
        )

    def _leave(self, end: Coroutine[Any, Any, None]) -> None:
        if self._closed:
            end.close()
            return
        self._closed = True
        try:
            self._call(end, timeout=30)
            if self._store is not None:
                self._call(self._store.close(), timeout=10)
            self._call(self._loop.shutdown_default_executor(), timeout=10)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> RequestResponseHost:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ on the loop

    async def _new_program(self, request: NewProgram) -> HostResponse:
        create = CreateCellRequest(
            request.source, tuple(request.tools), idempotency_key=request.request_id
        )
        # With a request_id, a retried NewProgram finds the same cell (docs/sessions.md), even closed.
        handle = await self._runtime.create_pausable_cell(create)
        program = self._programs.get(handle.cell_id)
        if program is None:
            program = self._programs[handle.cell_id] = _Program(handle.cell_id)
        async with program.lock:
            cached = program.responses.get(0)
            if cached is not None:
                return cached  # a retry
            response = await self._advance(program)
            program.responses[0] = response
            return response

    async def _tool_results(self, request: ToolResults) -> HostResponse:
        program = self._programs.get(request.cell_id)
        if program is None and self._store is not None and self._runtime.is_live(request.cell_id):
            # A program another host process started (it crashed, or it is a replica): its
            # cell was recovered from the store when this host opened the session.
            program = self._programs[request.cell_id] = _Program(request.cell_id, recovered=True)
        if program is None:
            raise UnknownProgram(f"no program {request.cell_id}")
        async with program.lock:
            cached = program.responses.get(request.generation)
            if cached is not None:
                return cached  # a retried or stale request: same answer as the first time
            if request.generation not in program.handed_out and not program.recovered:
                raise BadRequest(
                    f"program {request.cell_id} has no frontier {request.generation} "
                    f"(handed out: {sorted(program.handed_out)})"
                )
            if program.final is not None:
                return program.final
            # docs/sessions.md step 4: resolve the parked futures, then resume (order does not matter).
            ahead = program.recovered  # the recovered cell may not have issued them again yet
            for call_id, value in request.results.items():
                self._delegate.answer(request.cell_id, call_id, value, ahead=ahead)
            for call_id, message in request.errors.items():
                self._delegate.answer(request.cell_id, call_id, error=message, ahead=ahead)
            try:
                cell = self._runtime.pausable_cell(request.cell_id)
                # RESUMED or ALREADY_RUNNING: either way the program goes on.
                await self._runtime.resume(cell, request.generation)
            except MissingCell as exc:  # terminated behind our back (e.g. the host closed)
                raise UnknownProgram(str(exc)) from exc
            except InvalidGeneration as exc:
                raise BadRequest(str(exc)) from exc
            program.recovered = False  # from now on this host hands its frontiers out
            response = await self._advance(program)
            program.responses[request.generation] = response
            return response

    async def _advance(self, program: _Program) -> HostResponse:
        """docs/sessions.md steps 2-3: wait for the next frontier (or the end) and build the response.

        A frontier whose calls were all answered already (their results queued in the paused
        cell), or that waits only on a timer, asks nothing of the client: it is resumed at once
        and its items are carried into the response.
        """
        cell = self._runtime.pausable_cell(program.cell_id)
        while True:
            try:
                event = await asyncio.wait_for(
                    self._runtime.wait_to_pending(cell), self.wait_timeout
                )
            except TimeoutError:
                # A cancelled wait_to_pending loses nothing: terminate returns the rest.
                event = await self._runtime.terminate(cell)
            if isinstance(event, Pending):
                frontier = event.frontier
                program.carry.extend(frontier.items)
                open_ids = [
                    call_id
                    for call_id in frontier.pending_tool_call_ids
                    if not self._delegate.is_answered(program.cell_id, call_id)
                ]
                if not open_ids:
                    await self._runtime.resume(cell, frontier.generation)
                    continue
                calls = tuple([await self._call_request(program.cell_id, i) for i in open_ids])
                items = tuple(program.carry)
                program.carry.clear()
                program.handed_out.add(frontier.generation)
                return PendingResponse(program.cell_id, frontier.generation, items, calls)
            items = (*program.carry, *event.items)
            program.carry.clear()
            if isinstance(event, Completed):
                final = FinalResponse(program.cell_id, items, event.error_text)
            else:
                final = FinalResponse(program.cell_id, items, terminated=True)
            program.final = final
            self._delegate.forget(program.cell_id)
            self._forget_old_programs()
            return final

    async def _call_request(self, cell_id: str, call_id: str) -> ToolCallRequest:
        call = await self._delegate.call_of(cell_id, call_id)
        return ToolCallRequest(call_id, call.tool.name, call.input)

    def _forget_old_programs(self) -> None:
        finished = [cid for cid, p in self._programs.items() if p.final is not None]
        for cell_id in finished[: max(len(finished) - self._max_finished, 0)]:
            del self._programs[cell_id]


# --------------------------------------------------------------------------- demo


TRIP_TOOLS = (
    ToolDefinition("weather", "Forecast for a city: {city} -> {city, forecast, temp_c}."),
    ToolDefinition("hotel_price", "Nightly price of a hotel: {hotel} -> {hotel, price}."),
    ToolDefinition("book", "Books a hotel: {hotel} -> {confirmation}."),
)

TRIP_PROGRAM = """
text("planning a weekend in Paris");
const weather = await tools.weather({city: "Paris"});
text(`forecast: ${weather.forecast}, ${weather.temp_c} °C`);
const prices = await Promise.all(
  ["Ritz", "Ibis", "Hotel du Nord"].map(hotel => tools.hotel_price({hotel})));
const cheapest = prices.reduce((a, b) => (b.price < a.price ? b : a));
text(`cheapest: ${cheapest.hotel} at ${cheapest.price} EUR`);
try {
  const booking = await tools.book({hotel: "Ritz"});
  text(`booked the Ritz: ${booking.confirmation}`);
} catch (e) {
  text(`could not book the Ritz: ${e.message}`);
}
const booking = await tools.book({hotel: cheapest.hotel});
text(`booked ${cheapest.hotel}: ${booking.confirmation}`);
"""


HOTEL_PRICES: dict[str, int] = {"Ritz": 1200, "Ibis": 89, "Hotel du Nord": 140}


class FakeClient:
    """The client side: it owns the tools and answers each batch of calls."""

    def run_tool(self, call: ToolCallRequest) -> tuple[Any, str | None]:
        """(result, error) for one call."""
        if call.name == "weather":
            return {"city": call.input["city"], "forecast": "sunny", "temp_c": 21}, None
        if call.name == "hotel_price":
            return {"hotel": call.input["hotel"], "price": HOTEL_PRICES[call.input["hotel"]]}, None
        if call.name == "book":
            if call.input["hotel"] == "Ritz":
                return None, "no rooms left at the Ritz"
            return {"confirmation": f"BK-{len(call.input['hotel']):04d}"}, None
        return None, f"unknown tool {call.name}"

    def answer(self, response: PendingResponse) -> ToolResults:
        results: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for call in response.calls:
            value, error = self.run_tool(call)
            if error is None:
                results[call.call_id] = value
            else:
                errors[call.call_id] = error
        return ToolResults(response.cell_id, response.generation, results, errors)


def _show(label: str, response: HostResponse) -> None:
    if isinstance(response, PendingResponse):
        print(f"<- {label}: paused at generation {response.generation}")
        for text in response.texts:
            print(f"     output: {text}")
        for call in response.calls:
            print(f"     call {call.call_id}: {call.name}({call.input})")
    else:
        status = (
            "failed"
            if response.error_text
            else "terminated"
            if response.terminated
            else "completed"
        )
        print(f"<- {label}: program {status}")
        for text in response.texts:
            print(f"     output: {text}")
        if response.error_text:
            print(f"     error: {response.error_text}")


def main() -> None:
    client = FakeClient()
    with RequestResponseHost() as host:
        print("-> request 1: new program (request_id trip-1)")
        response = host.handle(NewProgram(TRIP_PROGRAM, TRIP_TOOLS, request_id="trip-1"))
        _show("response 1", response)
        # The client's connection dropped; it sends the same request again.
        retry = host.handle(NewProgram(TRIP_PROGRAM, TRIP_TOOLS, request_id="trip-1"))
        print(f"-> request 1 again (a retry): same response: {retry == response}")

        n = 1
        stale: ToolResults | None = None
        while isinstance(response, PendingResponse):
            n += 1
            request = client.answer(response)
            answered = ", ".join([*request.results, *request.errors])
            print(f"-> request {n}: results for generation {request.generation} ({answered})")
            response = host.handle(request)
            _show(f"response {n}", response)
            duplicate = host.handle(request)
            print(f"-> request {n} again (a duplicate): same response: {duplicate == response}")
            if stale is not None:
                old = host.handle(stale)
                print(
                    f"-> a stale request for generation {stale.generation}: harmless, "
                    f"its recorded response is returned: {isinstance(old, PendingResponse)}"
                )
            stale = request
        print("the program is over; the client got every output line exactly once")


# --------------------------------------------------------------------------- durable mode


def request_to_json(request: ClientRequest) -> dict[str, Any]:
    """A client request as JSON (what an API server would receive)."""
    if isinstance(request, NewProgram):
        tools = [{"name": t.name, "description": t.description} for t in request.tools]
        return {"new": {"source": request.source, "tools": tools, "requestId": request.request_id}}
    return {
        "results": {
            "cellId": request.cell_id,
            "generation": request.generation,
            "results": dict(request.results),
            "errors": dict(request.errors),
        }
    }


def request_from_json(data: dict[str, Any]) -> ClientRequest:
    if "new" in data:
        new = data["new"]
        tools = tuple(ToolDefinition(t["name"], t.get("description", "")) for t in new["tools"])
        return NewProgram(new["source"], tools, new.get("requestId"))
    r = data["results"]
    return ToolResults(r["cellId"], r["generation"], r["results"], r["errors"])


def response_to_json(response: HostResponse) -> dict[str, Any]:
    texts = response.texts
    if isinstance(response, PendingResponse):
        calls = [{"callId": c.call_id, "name": c.name, "input": c.input} for c in response.calls]
        return {
            "pending": {
                "cellId": response.cell_id,
                "generation": response.generation,
                "texts": texts,
                "calls": calls,
            }
        }
    return {
        "final": {
            "cellId": response.cell_id,
            "texts": texts,
            "errorText": response.error_text,
            "terminated": response.terminated,
        }
    }


def response_from_json(data: dict[str, Any]) -> HostResponse:
    if "pending" in data:
        p = data["pending"]
        calls = tuple(ToolCallRequest(c["callId"], c["name"], c["input"]) for c in p["calls"])
        items = tuple(TextItem(t) for t in p["texts"])
        return PendingResponse(p["cellId"], p["generation"], items, calls)
    f = data["final"]
    items = tuple(TextItem(t) for t in f["texts"])
    return FinalResponse(f["cellId"], items, f["errorText"], f["terminated"])


def serve_requests(store: str, session_id: str, lease_seconds: float) -> None:
    """``--serve-requests``: a host process answering one JSON request per stdin line with one
    JSON response line on stdout (a stand-in for an API server's handler), until stdin closes;
    then it suspends the session for the next host process."""
    host = RequestResponseHost(store=store, session_id=session_id, lease_seconds=lease_seconds)
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                response: dict[str, Any] = response_to_json(
                    host.handle(request_from_json(json.loads(line)))
                )
            except (BadRequest, UnknownProgram) as exc:
                response = {"error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(response), flush=True)
    finally:
        host.suspend()


class HostProcess:
    """A host process (``--serve-requests``) on the durable session ``session_id`` of
    ``store``: :meth:`handle` sends it one request and returns its response; :meth:`kill` is a
    crash (SIGKILL)."""

    def __init__(self, store: str, session_id: str, lease_seconds: float = 2.0) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                os.path.abspath(__file__),
                "--serve-requests",
                "--store",
                store,
                "--session",
                session_id,
                "--lease-seconds",
                str(lease_seconds),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def handle(self, request: ClientRequest) -> HostResponse:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request_to_json(request)) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the host process exited with status {self.process.wait()}")
        data = json.loads(line)
        if "error" in data:
            raise RuntimeError(data["error"])
        return response_from_json(data)

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def close(self) -> int:
        """Close its stdin: it suspends the session and exits."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        return self.process.wait(timeout=60)


def new_session_id() -> str:
    """16 characters of the alphabet of cell ids (docs/cells.md)."""
    alphabet = "0123456789abcdefghjkmnpqrstvwxyz"
    return "".join(secrets.choice(alphabet) for _ in range(16))


def run_trip(
    handle: Any, between: Any = None, show: bool = False
) -> tuple[list[str], FinalResponse]:
    """The fake client's loop over ``handle`` (one request -> one response); ``between(n)`` runs
    after response ``n``. Returns every output line the client received, and the final
    response."""
    client = FakeClient()
    texts: list[str] = []
    response = handle(NewProgram(TRIP_PROGRAM, TRIP_TOOLS, request_id="trip-1"))
    n = 1
    while True:
        texts.extend(response.texts)
        if show:
            _show(f"response {n}", response)
        if isinstance(response, FinalResponse):
            return texts, response
        if between is not None:
            between(n)
        n += 1
        response = handle(client.answer(response))


def main_durable(store: str, kill_after: int = 2, lease_seconds: float = 2.0) -> list[str]:
    """The demo with each request served by a host process on ``store``; the process is killed
    (SIGKILL) after response ``kill_after`` and a new one carries on. Returns the client's
    output lines."""
    session_id = new_session_id()
    print(f"durable session {session_id} in {store}")
    hosts = [HostProcess(store, session_id, lease_seconds)]

    def between(n: int) -> None:
        if n == kill_after:
            old = hosts[-1]
            old.kill()
            hosts.append(HostProcess(store, session_id, lease_seconds))
            print(
                f"!! host process {old.pid} killed (SIGKILL); "
                f"host process {hosts[-1].pid} carries on"
            )

    try:
        texts, _final = run_trip(lambda r: hosts[-1].handle(r), between, show=True)
    finally:
        hosts[-1].close()
    print("the program is over; the client got every output line exactly once")
    return texts


def _cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--store", metavar="PATH", help="durable mode: the SQLite session store")
    parser.add_argument("--session", metavar="ID", help=argparse.SUPPRESS)
    parser.add_argument("--lease-seconds", type=float, default=2.0, help=argparse.SUPPRESS)
    parser.add_argument("--serve-requests", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_requests:
        serve_requests(args.store, args.session, args.lease_seconds)
    elif args.store is not None:
        main_durable(args.store, lease_seconds=args.lease_seconds)
    else:
        main()


if __name__ == "__main__":
    _cli()
