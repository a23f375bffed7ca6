"""``CodeModeTools``: the model-facing ``exec`` and ``wait`` tools over a session
(docs/model-tools.md).

This module is a thin front over the session layer. The rules it applies live once, elsewhere:
the pragma in :mod:`.pragma`, the result format and truncation in :mod:`.render`, the tool specs
and descriptions in :mod:`.description`, observation and termination in the session. What is
decided here, beyond the spec's text:

- **Usage errors** (a bad pragma, bad ``wait`` arguments, an unknown tool, and every
  :class:`~codemode.errors.CodeModeError` other than ``MissingCell``) are returned, never raised:
  one :class:`~codemode.model.TextItem` with the message and ``is_error=True``. Exceptions that
  are not ``CodeModeError`` (bugs, cancellation) propagate.
- **Retried ``exec``** (docs/model-tools.md step 2, scenario 78). The cell is created with
  ``idempotency_key=call_id``, so a retry never starts a second cell. On top of that, the result
  of each ``exec`` that observed its cell is remembered per ``call_id`` (the last
  :data:`RETRY_CACHE_ENTRIES` results, at most :data:`RETRY_CACHE_BYTES` of output in all, the
  oldest dropped first), and a retry with the same
  ``call_id`` and the same source returns that very result, whether the cell has since yielded
  more, completed or closed: a retry is the same tool call, so it gets the same answer, and the
  output it carried is not lost with the first answer. A retry while the first ``exec`` of that
  ``call_id`` is still running waits for it and returns its result. When there is nothing to
  return (the first ``exec`` was cancelled or failed before observing, or its result was evicted),
  the retry observes the same cell afresh: it gets the output not yet delivered (cancelling an
  observation loses nothing, docs/sessions.md), or, if the cell has closed, the not-found failure of
  ``wait``. A retry with another source under the same ``call_id`` reaches the session, which
  answers ``IdempotencyConflict`` (a usage error) when the code differs; when only the pragma
  differs it is the same cell, observed afresh with the new budgets. An empty ``call_id`` gives
  the call no identity: no idempotency key and no remembered result.
- **Nothing new.** A ``wait`` whose result is ``Script running ...`` with no output (in either
  ``until`` mode) has, after its header, the single item :data:`NO_NEW_OUTPUT_TEXT`. ``exec``
  results are never given that note (the model has not seen any output yet).
- **``until="completed"``** observes repeatedly until the cell ends or the cap passes. Output it
  has gathered is never dropped: if the call is cancelled, or an error other than ``MissingCell``
  stops it (e.g. a concurrent ``terminate`` made the cell ``ClosedCell``), the gathered items are
  kept and put in front of the next result for that cell; if the cell is gone (``MissingCell``),
  they are returned with the not-found failure.
- **One observer per cell through these tools.** A ``wait`` (or ``exec``) on a cell that another
  call of this object is observing answers ``BusyObserver``'s message at once; ``terminate=True``
  is always allowed (the observer then reports ``Script terminated``).
- **Argument leniency.** In :meth:`CodeModeTools.call`, ``null`` for an optional ``wait`` argument
  means "absent"; numbers may be fractional (``yield_time_ms`` rounds up, ``max_tokens`` down) and
  negative ones count as 0; ``NaN``/``Infinity``, booleans, strings and unknown keys are rejected.
- **Limits in the description.** ``exec``'s description states the session's per-cell limits,
  read from a ``limits`` attribute of the session when it has one (``SessionRuntime`` does), else
  the defaults of :class:`~codemode.model.CellLimits`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from codemode.cell.observers import refuse_second_observer
from codemode.contract import Session
from codemode.errors import BusyObserver, CodeModeError, MissingCell
from codemode.model import (
    ApprovalRequest,
    CellEvent,
    CellLimits,
    Completed,
    CreateCellRequest,
    ImageItem,
    OutputItem,
    Terminated,
    TextItem,
    ToolDefinition,
    Yielded,
)
from codemode.tools.approvals import awaiting_approval_item, held_calls
from codemode.tools.catalog import reference_json
from codemode.tools.description import (
    DEFAULT_REFERENCE_BUDGET_TOKENS,
    EXEC_TOOL_NAME,
    WAIT_TOOL_NAME,
    exec_description,
    exec_tool_spec_dict,
    wait_description,
    wait_tool_spec_dict,
)
from codemode.tools.pragma import (
    DEFAULT_MAX_OUTPUT_TOKENS,
    DEFAULT_YIELD_TIME_MS,
    ExecRequest,
    PragmaError,
    parse_exec_source,
)
from codemode.tools.python_description import (
    is_python_session,
    python_exec_description,
    python_pragma_source,
    python_usage_text,
)
from codemode.tools.render import format_result, header_text, status_line
from codemode.tools.result import ToolResult

__all__ = [
    "DEFAULT_MAX_WAIT_MS",
    "NO_NEW_OUTPUT_TEXT",
    "RETRY_CACHE_BYTES",
    "RETRY_CACHE_ENTRIES",
    "Approver",
    "CodeModeSession",
    "CodeModeTools",
    "missing_cell_text",
]

logger = logging.getLogger("codemode.tools")

DEFAULT_MAX_WAIT_MS: Final = 600_000
NO_NEW_OUTPUT_TEXT: Final = "(no new output)"
"""The single item after the header of a ``wait`` that found the cell running with no new output."""

RETRY_CACHE_ENTRIES: Final = 64
"""How many ``exec`` results are remembered for retries; the oldest is dropped first."""
RETRY_CACHE_BYTES: Final = 16 * 1024 * 1024
"""The most output (UTF-8 bytes of text and image URLs) the remembered results hold in all."""

_UNTIL_VALUES: Final = ("yield", "completed")
_WAIT_FIELDS: Final = ("cell_id", "yield_time_ms", "max_tokens", "terminate", "until")
_PARSE_PREFIX: Final = "failed to parse function arguments: "

Approver = Callable[[ApprovalRequest], Awaitable[bool | str]]
"""Decides a held call for the host: ``True`` approves it, ``False`` rejects it with the default
reason, a string rejects it with that reason (see ``docs/approvals.md``)."""

_Observation = Callable[[list[OutputItem]], Awaitable[CellEvent]]
"""One observation of a cell: appends the items of intermediate events to its argument and returns
the event that ends it."""


CodeModeSession = Session
"""What :class:`CodeModeTools` takes: any :class:`~codemode.contract.Session` (the one contract of
every kind of session; this name is kept for code written before it existed)."""


@dataclass(frozen=True)
class _WaitArguments:
    cell_id: str
    yield_time_ms: int | None = None
    max_tokens: int | None = None
    terminate: bool = False
    until: str = "yield"


class _ArgumentError(ValueError):
    """Raw tool arguments that do not match the tool's schema; ``str`` is the detail."""


def missing_cell_text(cell_id: str) -> str:
    """The error of a ``wait`` (or retried ``exec``) on a cell that is unknown or closed: the
    session's ``exec cell {cell_id} not found``, followed by the two reasons it can have, so the
    model does not take it for a failure of its script."""
    return (
        f"{MissingCell(cell_id)}: it never existed or its final result was already "
        "returned (a cell closes once its final result has been returned)"
    )


def _usage_error(message: str, cell_id: str | None = None) -> ToolResult:
    return ToolResult(items=(TextItem(message),), is_error=True, cell_id=cell_id)


def _output_bytes(result: ToolResult) -> int:
    total = 0
    for item in result.items:
        if isinstance(item, TextItem):
            total += len(item.text.encode("utf-8", "surrogatepass"))
        elif isinstance(item, ImageItem):
            total += len(item.image_url)
    return total


class _RetryCache:
    """Finished ``exec`` results by ``call_id``, bounded in entries and bytes (oldest evicted)."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[str, ToolResult, int]] = OrderedDict()
        self._bytes = 0

    def get(self, call_id: str, source: str) -> ToolResult | None:
        entry = self._entries.get(call_id)
        if entry is None or entry[0] != source:
            return None
        return entry[1]

    def put(self, call_id: str, source: str, result: ToolResult) -> None:
        size = _output_bytes(result) + len(source.encode("utf-8", "surrogatepass"))
        old = self._entries.pop(call_id, None)
        if old is not None:
            self._bytes -= old[2]
        if size > self._max_bytes:
            return
        self._entries[call_id] = (source, result, size)
        self._bytes += size
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            _, (_, _, evicted) = self._entries.popitem(last=False)
            self._bytes -= evicted


class CodeModeTools:
    """The ``exec`` and ``wait`` tools of one session, and their model-facing definitions.

    Every call returns a :class:`ToolResult`; usage errors are results with ``is_error=True``, never
    exceptions. Cells are created with the nested ``tools`` given here; the session's delegate runs
    them. All coroutines must run on the session's event loop.
    """

    def __init__(
        self,
        session: Session,
        tools: Sequence[ToolDefinition],
        *,
        describe_tools: bool = True,
        code_mode_only: bool = False,
        max_wait_ms: int = DEFAULT_MAX_WAIT_MS,
        reference_budget_tokens: int = DEFAULT_REFERENCE_BUDGET_TOKENS,
        approver: Approver | None = None,
    ) -> None:
        """Bind the tools to ``session``.

        ``reference_budget_tokens``: when the tool reference of the ``exec`` description would
        take more tokens than this, the description lists each tool by identifier with the first
        line of its description only and explains the cell's ``catalog`` (search and describe)
        instead (docs/model-tools.md).

        ``approver``, when given, decides every held call an ``exec`` or ``wait`` observation
        meets (a tool with ``needs_approval``): the observation then goes on, with a fresh
        budget, instead of returning ``Awaiting approval`` lines to the model. An approver that
        raises rejects the call with its message. Without one the host decides with
        :meth:`approve` / :meth:`reject`.

        Raises ``ValueError`` when a nested tool is named ``exec`` or ``wait`` or when
        ``max_wait_ms`` is not a positive integer or ``reference_budget_tokens`` a negative one,
        and ``TypeError`` for a tool that is not a :class:`ToolDefinition`.
        """
        tool_tuple = tuple(tools)
        for tool in tool_tuple:
            if not isinstance(tool, ToolDefinition):
                raise TypeError(f"tools must be ToolDefinition objects, got {type(tool).__name__}")
            if tool.name in (EXEC_TOOL_NAME, WAIT_TOOL_NAME):
                raise ValueError(
                    f"a nested tool cannot be named `{tool.name}`: that name is the code mode "
                    "tool itself"
                )
        if isinstance(max_wait_ms, bool) or not isinstance(max_wait_ms, int) or max_wait_ms <= 0:
            raise ValueError(f"max_wait_ms must be a positive integer, got {max_wait_ms!r}")
        if (
            isinstance(reference_budget_tokens, bool)
            or not isinstance(reference_budget_tokens, int)
            or reference_budget_tokens < 0
        ):
            raise ValueError(
                "reference_budget_tokens must be a non-negative integer, "
                f"got {reference_budget_tokens!r}"
            )
        self._session = session
        self._tools = tool_tuple
        self._max_wait_ms = max_wait_ms
        limits = getattr(session, "limits", None)
        self._python = is_python_session(session)
        cell_limits = limits if isinstance(limits, CellLimits) else CellLimits()
        if self._python:
            # Python cells have no `catalog` global: their description always declares every tool.
            self._exec_description = python_exec_description(
                tool_tuple,
                describe_tools=describe_tools,
                code_mode_only=code_mode_only,
                limits=cell_limits,
            )
        else:
            self._exec_description = exec_description(
                tool_tuple,
                describe_tools=describe_tools,
                code_mode_only=code_mode_only,
                limits=cell_limits,
                reference_budget_tokens=reference_budget_tokens,
            )
        self._wait_description = wait_description(max_wait_ms)
        reference_json(tool_tuple)  # rendered now, not when the session admits the first cell
        self._retry_cache = _RetryCache(RETRY_CACHE_ENTRIES, RETRY_CACHE_BYTES)
        self._exec_in_flight: dict[str, asyncio.Future[None]] = {}
        # Items delivered by the session but not yet to the model (see the module docstring).
        self._carried: dict[str, list[OutputItem]] = {}
        self._observing: set[str] = set()
        self._approver = approver

    # ------------------------------------------------------------------ definitions

    @property
    def tools(self) -> tuple[ToolDefinition, ...]:
        """The nested tools enabled in every cell."""
        return self._tools

    @property
    def max_wait_ms(self) -> int:
        """The longest a single ``exec`` or ``wait`` observes a cell, in milliseconds."""
        return self._max_wait_ms

    def exec_tool_spec(self, *, freeform: bool = False) -> dict[str, Any]:
        """The ``exec`` tool as an OpenAI Responses tool (docs/model-tools.md): a function tool
        taking
        ``{code}``, or with ``freeform`` a custom tool. A fresh dict, byte-identical each call."""
        return exec_tool_spec_dict(self._exec_description, freeform=freeform)

    def wait_tool_spec(self) -> dict[str, Any]:
        """The ``wait`` tool as an OpenAI Responses function tool (docs/model-tools.md); a fresh
        dict."""
        return wait_tool_spec_dict(self._wait_description)

    # ------------------------------------------------------------------ dispatch

    async def call(self, name: str, arguments: str | Mapping[str, Any], call_id: str) -> ToolResult:
        """Run one raw model tool call (docs/model-tools.md).

        ``exec``: a mapping, or a string holding a JSON object, with a string ``code`` gives the
        source; any other string is the source itself (a freeform call). ``wait``: a mapping or
        JSON-object string matching the wait schema. Mismatches give the usage error
        ``failed to parse function arguments: {detail}``; another name gives
        ``unknown code mode tool {name}``.
        """
        if name == EXEC_TOOL_NAME:
            try:
                source = _exec_source(arguments)
            except _ArgumentError as error:
                return _usage_error(f"{_PARSE_PREFIX}{error}")
            return await self.exec(source, call_id)
        if name == WAIT_TOOL_NAME:
            try:
                args = _wait_arguments(arguments)
            except _ArgumentError as error:
                return _usage_error(f"{_PARSE_PREFIX}{error}")
            return await self.wait(
                args.cell_id,
                yield_time_ms=args.yield_time_ms,
                max_tokens=args.max_tokens,
                terminate=args.terminate,
                until=args.until,
            )
        logger.info("call %s: unknown code mode tool %r", call_id, name)
        return _usage_error(f"unknown code mode tool {name}")

    # ------------------------------------------------------------------ exec

    async def exec(self, source: str, call_id: str) -> ToolResult:
        """Run ``source`` as a new continuing cell and observe it once (docs/model-tools.md).

        The pragma sets the observation time (default 10 000 ms, capped at ``max_wait_ms``) and the
        token budget (default 10 000). The result has the header of docs/model-tools.md with the
        wall time of
        this call; ``is_error`` is ``True`` for ``Script failed`` and usage errors. A retry with the
        same ``call_id`` never starts a second cell and returns the first result when it is known
        (see the module docstring).
        """
        started = time.monotonic()
        if self._python:
            source = python_pragma_source(source)
        try:
            parsed = parse_exec_source(source)
        except PragmaError as error:
            logger.info("exec call %s: rejected source: %s", call_id, error.message)
            message = python_usage_text(error.message) if self._python else error.message
            return _usage_error(message)
        if not call_id:
            result, _ = await self._run_exec(parsed, call_id, started)
            return result
        while True:
            cached = self._retry_cache.get(call_id, source)
            if cached is not None:
                logger.info(
                    "exec call %s: retry answered with the result for cell %s",
                    call_id,
                    cached.cell_id,
                    extra={"cell_id": cached.cell_id},
                )
                return cached
            in_flight = self._exec_in_flight.get(call_id)
            if in_flight is None:
                break
            await asyncio.shield(in_flight)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._exec_in_flight[call_id] = done
        try:
            result, observed = await self._run_exec(parsed, call_id, started)
            if observed:
                self._retry_cache.put(call_id, source, result)
            return result
        finally:
            del self._exec_in_flight[call_id]
            done.set_result(None)

    async def _run_exec(
        self, parsed: ExecRequest, call_id: str, started: float
    ) -> tuple[ToolResult, bool]:
        """Create and observe the cell; also say whether the result came from an observation."""
        request = CreateCellRequest(
            # The pragma line stays as an empty line: error positions count it (docs/cells.md).
            source="\n" + parsed.code if parsed.has_pragma else parsed.code,
            tools=self._tools,
            tool_call_id=call_id,
            idempotency_key=call_id or None,
        )
        try:
            cell = await self._session.create_cell(request)
        except CodeModeError as error:
            logger.warning("exec call %s: cell not created: %s", call_id, error)
            return _usage_error(str(error)), False
        cell_id = cell.cell_id
        logger.info("exec call %s: cell %s admitted", call_id, cell_id, extra={"cell_id": cell_id})
        budget_s = min(parsed.yield_time_ms, self._max_wait_ms) / 1000

        async def observe(gathered: list[OutputItem]) -> CellEvent:
            return await self._session.wait(cell, budget_s)

        outcome = await self._observe(cell_id, observe)
        if isinstance(outcome, ToolResult):
            return outcome, False
        return self._format(outcome, cell_id, started, parsed.max_output_tokens, False), True

    # ------------------------------------------------------------------ wait

    async def wait(
        self,
        cell_id: str,
        yield_time_ms: int | None = None,
        max_tokens: int | None = None,
        terminate: bool = False,
        until: str = "yield",
    ) -> ToolResult:
        """Observe or terminate a cell that ``exec`` left running (docs/model-tools.md).

        - ``terminate=True``: terminates it; ``Script terminated``, or the cell's ``Completed``
          when it had already completed.
        - ``until="yield"``: observes once for ``yield_time_ms`` (default 10 000, capped at
          ``max_wait_ms``); returns new output, or the final result (which closes the cell).
        - ``until="completed"``: observes until the cell completes or is terminated, gathering
          the output of every intermediate yield into one result; after ``yield_time_ms`` (if
          given, else ``max_wait_ms``; capped at ``max_wait_ms``) it reports the running status
          with everything gathered.

        An unknown or closed cell gives ``Script failed`` with the error
        :func:`missing_cell_text` (``exec cell {cell_id} not found: ...``); other session errors
        are usage errors with the exception's message. A running status with no output gets
        :data:`NO_NEW_OUTPUT_TEXT`. ``max_tokens`` (default 10 000) is the budget of the returned
        output.
        """
        started = time.monotonic()
        budget = DEFAULT_MAX_OUTPUT_TOKENS if max_tokens is None else max_tokens
        if until not in _UNTIL_VALUES:
            return _usage_error(
                f'wait `until` must be "yield" or "completed", got {json.dumps(until)}', cell_id
            )
        if terminate:
            outcome = await self._terminate(cell_id)
        else:
            if until == "completed":
                cap_ms = self._max_wait_ms if yield_time_ms is None else yield_time_ms
            else:
                cap_ms = DEFAULT_YIELD_TIME_MS if yield_time_ms is None else yield_time_ms
            cap_s = max(min(cap_ms, self._max_wait_ms), 0) / 1000
            observe = self._wait_completed if until == "completed" else self._wait_once
            outcome = await self._observe(
                cell_id, lambda gathered: observe(cell_id, cap_s, gathered)
            )
        if isinstance(outcome, ToolResult):
            return outcome
        return self._format(outcome, cell_id, started, budget, True)

    async def _wait_once(self, cell_id: str, cap_s: float, gathered: list[OutputItem]) -> CellEvent:
        return await self._session.wait(self._session.cell(cell_id), cap_s)

    async def _wait_completed(
        self, cell_id: str, cap_s: float, gathered: list[OutputItem]
    ) -> CellEvent:
        """Observe until a terminal event or the cap; the items of the intermediate ``Yielded``
        events are appended to ``gathered`` as they arrive, and the last event is returned."""
        cell = self._session.cell(cell_id)
        deadline = time.monotonic() + cap_s
        while True:
            event = await self._session.wait(cell, max(deadline - time.monotonic(), 0.0))
            if not isinstance(event, Yielded) or time.monotonic() >= deadline:
                return event
            if held_calls(self._session, cell_id):
                return event  # it waits for the host's decision: report now
            gathered.extend(event.items)
            logger.debug(
                "wait: cell %s yielded; observing on until it completes",
                cell_id,
                extra={"cell_id": cell_id},
            )

    async def _terminate(self, cell_id: str) -> CellEvent | ToolResult:
        carried = self._carried.pop(cell_id, [])
        try:
            event = await self._session.terminate(self._session.cell(cell_id))
        except BaseException as error:
            return self._after_failure(cell_id, carried, error)
        logger.info("wait: cell %s terminated", cell_id, extra={"cell_id": cell_id})
        return _prepend(carried, event)

    async def _observe(self, cell_id: str, observe: _Observation) -> CellEvent | ToolResult:
        """Run one observation of ``cell_id`` with the items carried over from an interrupted one
        in front. Returns the event to report (a not-found failure included), or a usage error."""
        try:
            refuse_second_observer(cell_id, cell_id in self._observing)
        except BusyObserver as busy:
            return _usage_error(str(busy), cell_id)
        self._observing.add(cell_id)
        gathered = self._carried.pop(cell_id, [])
        try:
            event = await self._observe_deciding(cell_id, observe, gathered)
        except BaseException as error:
            return self._after_failure(cell_id, gathered, error)
        finally:
            self._observing.discard(cell_id)
        logger.debug(
            "cell %s observed: %s", cell_id, type(event).__name__, extra={"cell_id": cell_id}
        )
        return _prepend(gathered, event)

    async def _observe_deciding(
        self, cell_id: str, observe: _Observation, gathered: list[OutputItem]
    ) -> CellEvent:
        """``observe``; with an approver, each time it ends on new held calls, have them
        decided and observe again (the output so far is kept in ``gathered``)."""
        asked: set[str] = set()
        while True:
            event = await observe(gathered)
            if self._approver is None or not isinstance(event, Yielded):
                return event
            fresh = [r for r in held_calls(self._session, cell_id) if r.call_id not in asked]
            if not fresh:
                return event
            gathered.extend(event.items)
            for request in fresh:
                asked.add(request.call_id)
                await self._decide(request)

    async def _decide(self, request: ApprovalRequest) -> None:
        assert self._approver is not None
        try:
            decision = await self._approver(request)
        except Exception as error:
            logger.warning(
                "cell %s: the approver failed on %s: %s",
                request.cell_id,
                request.call_id,
                error,
                extra={"cell_id": request.cell_id},
            )
            decision = str(error) or type(error).__name__
        try:
            if decision is True:
                await self._session.approve(request.cell_id, request.call_id)
            elif decision is False:
                await self._session.reject(
                    request.cell_id, request.call_id, "the host rejected this call"
                )
            else:
                await self._session.reject(request.cell_id, request.call_id, str(decision))
        except CodeModeError as error:  # the cell ended meanwhile: nothing to decide
            logger.info(
                "cell %s: decision on %s not applied: %s",
                request.cell_id,
                request.call_id,
                error,
                extra={"cell_id": request.cell_id},
            )

    def _after_failure(
        self, cell_id: str, undelivered: list[OutputItem], error: BaseException
    ) -> Completed | ToolResult:
        """Map a failed session operation, keeping the ``undelivered`` items: a gone cell
        (``MissingCell``) gives the not-found failure as a ``Completed`` carrying them; otherwise
        they wait for the cell's next result, and a :class:`CodeModeError` gives a usage error
        while anything else (cancellation included) is re-raised."""
        if isinstance(error, MissingCell):
            logger.info("cell %s not found", cell_id, extra={"cell_id": cell_id})
            return Completed(tuple(undelivered), error_text=missing_cell_text(cell_id))
        if undelivered:
            self._carried[cell_id] = undelivered + self._carried.get(cell_id, [])
        if isinstance(error, CodeModeError):
            logger.info("cell %s: usage error: %s", cell_id, error, extra={"cell_id": cell_id})
            return _usage_error(str(error), cell_id)
        raise error

    def _format(
        self,
        event: CellEvent,
        cell_id: str,
        started: float,
        max_output_tokens: int,
        note_nothing_new: bool,
    ) -> ToolResult:
        wall = time.monotonic() - started
        held = awaiting_approval_item(held_calls(self._session, cell_id))
        after = () if held is None or not isinstance(event, Yielded) else (held,)
        if note_nothing_new and isinstance(event, Yielded) and not event.items:
            header = TextItem(header_text(status_line(event, cell_id), wall))
            return ToolResult(
                items=(header, TextItem(NO_NEW_OUTPUT_TEXT), *after),
                is_error=False,
                cell_id=cell_id,
            )
        items, failed = format_result(event, cell_id, wall, max_output_tokens)
        return ToolResult(items=(*items, *after), is_error=failed, cell_id=cell_id)

    # ------------------------------------------------------------------ approvals (the host's)

    async def approve(self, cell_id: str, call_id: str) -> None:
        """Let the held call ``call_id`` of cell ``cell_id`` run (the session's ``approve``).
        For the host, never a tool of the model; raises the session's errors
        (``MissingCell``, ``NotAwaitingApproval``)."""
        await self._session.approve(cell_id, call_id)

    async def reject(
        self, cell_id: str, call_id: str, reason: str = "the host rejected this call"
    ) -> None:
        """Reject the held call ``call_id``: its promise in the cell rejects with ``reason``
        (the session's ``reject``). For the host; raises as :meth:`approve`."""
        await self._session.reject(cell_id, call_id, reason)


def _prepend(items: list[OutputItem], event: CellEvent) -> CellEvent:
    if not items:
        return event
    combined = (*items, *event.items)
    if isinstance(event, Yielded):
        return Yielded(combined)
    if isinstance(event, Terminated):
        return Terminated(combined)
    return Completed(combined, event.error_text)


# ---------------------------------------------------------------------- raw arguments


def _exec_source(arguments: str | Mapping[str, Any]) -> str:
    if isinstance(arguments, str):
        try:
            value = json.loads(arguments)
        except (ValueError, RecursionError):
            return arguments
        if isinstance(value, dict) and isinstance(value.get("code"), str):
            code: str = value["code"]
            return code
        return arguments
    if not isinstance(arguments, Mapping):
        raise _ArgumentError(f"expected a JSON object or a string, got {type(arguments).__name__}")
    if "code" not in arguments:
        raise _ArgumentError("missing field `code`")
    code_value = arguments["code"]
    if not isinstance(code_value, str):
        raise _ArgumentError(
            f"invalid type for `code`: expected a string, got {_shown(code_value)}"
        )
    return code_value


def _shown(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=True)
    except (TypeError, ValueError):
        return type(value).__name__


def _number(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _ArgumentError(f"invalid type for `{field}`: expected a number, got {_shown(value)}")
    return max(float(value), 0.0)


def _wait_arguments(arguments: str | Mapping[str, Any]) -> _WaitArguments:
    value: Any
    if isinstance(arguments, str):
        try:
            value = json.loads(arguments, parse_constant=_reject_constant)
        except RecursionError:
            raise _ArgumentError("nesting too deep") from None
        except ValueError as error:
            raise _ArgumentError(str(error)) from None
    else:
        value = arguments
    if not isinstance(value, Mapping):
        raise _ArgumentError(f"expected a JSON object, got {_shown(value)}")
    for key in value:
        if key not in _WAIT_FIELDS:
            raise _ArgumentError(f"unknown field `{key}`")
    cell_id = value.get("cell_id")
    if cell_id is None:
        raise _ArgumentError("missing field `cell_id`")
    if not isinstance(cell_id, str):
        raise _ArgumentError(
            f"invalid type for `cell_id`: expected a string, got {_shown(cell_id)}"
        )
    yield_time_ms: int | None = None
    if value.get("yield_time_ms") is not None:
        yield_time_ms = math.ceil(_number("yield_time_ms", value["yield_time_ms"]))
    max_tokens: int | None = None
    if value.get("max_tokens") is not None:
        max_tokens = math.floor(_number("max_tokens", value["max_tokens"]))
    terminate = value.get("terminate")
    if terminate is None:
        terminate = False
    elif not isinstance(terminate, bool):
        raise _ArgumentError(
            f"invalid type for `terminate`: expected a boolean, got {_shown(terminate)}"
        )
    until = value.get("until")
    if until is None:
        until = "yield"
    elif until not in _UNTIL_VALUES:
        raise _ArgumentError(
            f'invalid value for `until`: expected "yield" or "completed", got {_shown(until)}'
        )
    return _WaitArguments(cell_id, yield_time_ms, max_tokens, terminate, str(until))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON constant {name}")
