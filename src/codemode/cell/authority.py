"""The host's authority over what a cell's sandbox reports (docs/safety.md; docs/safety.md).

Everything an engine reads back from a cell (its *drain report*) is untrusted input: a hostile
cell may have broken the JavaScript bridge and written the report itself. :class:`CellAuthority`
checks every report against the cell's own record, kept on the host, before anything in it
reaches the cell layer:

- nested calls: ids unique and in sequence (``tool-1``, ``tool-2``, ...), a valid tool index,
  an input of the tool's kind (an object for function tools, a string for freeform tools),
  finite JSON only (``NaN``/``Infinity`` refused), at most ``max_tool_calls`` in the cell's life;
- output: text items, image URLs (``data:`` only, a known detail) and notifications cost their
  UTF-8 bytes and at least :data:`MIN_ITEM_BYTES` each (their framing), held to
  ``max_output_bytes``, so a flood of empty items ends the cell too;
- timers: ids increasing, at most :data:`MAX_LIVE_TIMERS` live at once, a clear only for a live
  timer (cleared and fired timers leave the record), finite non-negative delays;
- ``yield_control()``: consecutive yields are coalesced into one;
- stored values: a key string and a JSON text nested at most :data:`MAX_STORED_DEPTH` deep;
  the cell's view (its snapshot plus its own writes) held to ``max_stored_bytes``;
- pending ids: only calls issued and not yet answered; the settlement: one of the known shapes;
- reads of the clock and the random source: known sources, finite values in range, at most
  :data:`~codemode.engine.determinism.MAX_READS_PER_STEP` per report (docs/determinism.md).

A report that breaks a rule ends the cell: the events before the offending one are kept, the
rest is dropped, and the report's settlement becomes the limit's error text (a limit) or
``exec cell sent a report the host refused: ...`` (anything else). The authority never raises
for a bad report, so the host survives whatever the cell writes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

from codemode.cell.stored import StoredSnapshot, entry_bytes
from codemode.engine.base import (
    EngineEvent,
    EnvRead,
    NotifyRequested,
    OutputProduced,
    Settlement,
    StepInput,
    StepReport,
    StoresWritten,
    TimerCleared,
    TimerFired,
    TimerSet,
    ToolCallRequested,
    ToolResultInput,
    YieldRequested,
    limit_error_text,
)
from codemode.engine.determinism import check_reads, decode_read_runs
from codemode.model import CellLimits, ImageDetail, ImageItem, TextItem, ToolDefinition, ToolKind

__all__ = [
    "MAX_LIVE_TIMERS",
    "MAX_STORED_DEPTH",
    "MIN_ITEM_BYTES",
    "CellAuthority",
    "ReportRefused",
    "depth_at_most",
    "json_loads_finite",
    "refused_text",
]

# Every output item costs at least this many bytes of max_output_bytes (its framing).
MIN_ITEM_BYTES = 16
# Timers one cell may have set and neither fired nor cleared.
MAX_LIVE_TIMERS = 10_000
# Nesting depth of one stored value (arrays and objects).
MAX_STORED_DEPTH = 128

_LIMIT_FIELDS = frozenset(f.name for f in fields(CellLimits))
_DETAILS = frozenset(d.value for d in ImageDetail)


def refused_text(reason: str) -> str:
    """The ``error_text`` of a cell whose report broke a rule that is not a limit."""
    return f"exec cell sent a report the host refused: {reason}"


class ReportRefused(Exception):
    """A rule was broken; ``error_text`` is the cell's settlement."""

    def __init__(self, error_text: str) -> None:
        super().__init__(error_text)
        self.error_text = error_text


def _refuse(reason: str) -> ReportRefused:
    return ReportRefused(refused_text(reason))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


_decoder = json.JSONDecoder(parse_constant=_reject_constant)
_scan_once: Any = getattr(_decoder, "scan_once")  # noqa: B009 - set in __init__, not in typeshed


def _scan_exact(text: str) -> Any:
    """``text`` decoded by the same C scanner as :func:`json_loads_finite`, without its
    Python wrapper, when it is exactly one JSON value with nothing around it; else None."""
    try:
        value, end = _scan_once(text, 0)
    except (StopIteration, ValueError, RecursionError):
        return None
    return value if end == len(text) else None


def json_loads_finite(text: str) -> Any:
    """Strict JSON: no NaN/Infinity; too deep a nesting is a ValueError, not a crash."""
    try:
        return _decoder.decode(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


_HEAD = '{"ev":['
_DRAIN_KEYS = frozenset({"pending", "settled"})
_DRAIN_KEYS_READS = _DRAIN_KEYS | {"reads"}
_WHOLE_KEYS = frozenset({"ev", "pending", "settled"})
_WHOLE_KEYS_READS = _WHOLE_KEYS | {"reads"}
# Reports up to this long are decoded in one piece (longer ones event by event).
_WHOLE_DECODE_CHARS = 64 * 1024


def _raw_decode(text: str, index: int) -> tuple[Any, int]:
    try:
        return _decoder.raw_decode(text, index)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _utf8(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def depth_at_most(value: Any, bound: int) -> bool:
    """True when ``value`` nests arrays/objects at most ``bound`` deep (iterative)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > bound:
            return False
        stack.extend((child, depth + 1) for child in children)
    return True


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class CellAuthority:
    """The host's record of one cell, and the checks every drain report goes through.

    Not thread-safe; an engine uses one authority per cell and calls it one report at a time
    (possibly on a worker thread, for large reports).
    """

    def __init__(
        self,
        tools: Sequence[ToolDefinition],
        limits: CellLimits,
        *,
        pausable: bool,
        stored: Mapping[str, Any] | None = None,
    ) -> None:
        self._tools = tuple(tools)
        self._limits = limits
        self._pausable = pausable
        self._snapshot = StoredSnapshot.from_values(stored if stored is not None else {})
        self._stored_bytes = self._snapshot.total_bytes
        self._writes: dict[str, int] = {}  # key -> size of the cell's own latest write
        self._calls_issued = 0
        self._outstanding: set[str] = set()
        self._output_bytes = 0
        self._live_timers: set[int] = set()
        self._last_timer = 0
        self._ended = False
        self._batch: dict[str, str] = {}  # store writes of the report being checked

    # ------------------------------------------------------------------ what the host gave

    @property
    def ended(self) -> bool:
        """A report broke a rule or settled the cell: nothing more is accepted."""
        return self._ended

    @property
    def live_timers(self) -> int:
        return len(self._live_timers)

    def inputs(self, inputs: Sequence[StepInput]) -> None:
        """The host is about to deliver these tool results and timer firings."""
        for item in inputs:
            if isinstance(item, ToolResultInput):
                self._outstanding.discard(item.call_id)
            elif isinstance(item, TimerFired):
                self._live_timers.discard(item.timer_id)

    # ------------------------------------------------------------------ reports

    def accept_raw(
        self, raw: Any, cpu_seconds: float = 0.0, reads_memory: Any = None
    ) -> StepReport:
        """Decode and check one drain report, the JSON text
        ``{"ev": [...], "pending": [...] | null, "settled": {...} | null}``, with ``"reads": N``
        when the cell read its environment N times: the reads are then the first N float64
        pairs of ``reads_memory`` (the cell's read buffer, docs/determinism.md)."""
        if self._ended:
            return StepReport((), (), Settlement(refused_text("a report after the cell ended")))
        if not isinstance(raw, str):
            return self._end((), refused_text("the report is not text"), cpu_seconds)
        try:
            events_raw, pending, settled, reads = self._decode(raw)
            if reads is not None and not isinstance(reads, list):
                try:
                    reads = decode_read_runs(reads_memory, reads)
                except ValueError as exc:
                    raise _refuse(str(exc)) from None
        except ReportRefused as exc:
            return self._end((), exc.error_text, cpu_seconds)
        return self.accept(events_raw, pending, settled, cpu_seconds, reads)

    def accept(
        self,
        events_raw: Any,
        pending: Any,
        settled: Any,
        cpu_seconds: float = 0.0,
        reads_raw: Any = None,
    ) -> StepReport:
        """Check an already decoded report (events as JSON arrays; the reads, if any, as
        ``[code, value, ...]``)."""
        if self._ended:
            return StepReport((), (), Settlement(refused_text("a report after the cell ended")))
        events: list[EngineEvent] = []
        self._batch = {}
        try:
            if not isinstance(events_raw, list):
                raise _refuse("the events are not a list")
            previous_yield = False
            for ev in events_raw:
                event = self._event(ev)
                if event is None:
                    continue  # a store: batched
                if isinstance(event, YieldRequested):
                    if previous_yield:
                        continue  # consecutive yields are one
                    previous_yield = True
                else:
                    previous_yield = False
                events.append(event)
            pending_ids = self._pending(pending)
            settlement = self._settlement(settled)
            reads = () if reads_raw is None else self._reads(reads_raw)
        except ReportRefused as exc:
            self._flush_batch(events)  # writes before the offending event count
            return self._end(tuple(events), exc.error_text, cpu_seconds)
        self._flush_batch(events)
        if settlement is not None:
            self._ended = True
        return StepReport(tuple(events), pending_ids, settlement, cpu_seconds, reads)

    def salvage(self, items: Sequence[tuple[int, str]]) -> tuple[EngineEvent, ...]:
        """Output read from a stopped cell's journal (kind 1: text; kind 2: ``detail url``),
        checked like reported output; stops at the first item that breaks a rule."""
        events: list[EngineEvent] = []
        try:
            for kind, text in items:
                if kind == 1:
                    event = self._event(["text", text])
                elif kind == 2:
                    detail, _, url = text.partition(" ")
                    event = self._event(["image", url, detail])
                else:
                    break
                if event is not None:
                    events.append(event)
        except ReportRefused:
            pass
        return tuple(events)

    def _flush_batch(self, events: list[EngineEvent]) -> None:
        if self._batch:
            events.append(StoresWritten(self._batch))
            self._batch = {}

    def _end(self, events: tuple[EngineEvent, ...], text: str, cpu: float) -> StepReport:
        self._ended = True
        return StepReport(events, (), Settlement(text), cpu)

    @staticmethod
    def _decode(raw: str) -> tuple[Any, Any, Any, Any]:
        """Decode ``{"ev":[...],"pending":...,"settled":...[,"reads":[...]]}``: in one piece when
        small (one call into the C decoder, the common case of a step), else event by event (so a
        worker thread decoding a large report gives the GIL back between events)."""
        if len(raw) <= _WHOLE_DECODE_CHARS and raw.startswith(_HEAD):
            doc = _scan_exact(raw)  # the drain's own text: exactly one JSON value
            if doc is None:  # anything else decodes as before, or is refused as before
                try:
                    doc = json_loads_finite(raw)
                except ValueError as exc:
                    raise _refuse(f"malformed JSON ({str(exc)[:80]})") from None
            if type(doc) is not dict:
                raise _refuse("not a drain object")
            keys = doc.keys()
            if keys == _WHOLE_KEYS:
                return doc["ev"], doc["pending"], doc["settled"], None
            if keys == _WHOLE_KEYS_READS:
                return doc["ev"], doc["pending"], doc["settled"], doc["reads"]
            raise _refuse("not a drain object")
        try:
            if not raw.startswith(_HEAD):
                raise ValueError("not a drain object")
            events: list[Any] = []
            i = len(_HEAD)
            if raw.startswith("]", i):
                i += 1
            else:
                while True:
                    event, i = _raw_decode(raw, i)
                    events.append(event)
                    sep = raw[i : i + 1]
                    i += 1
                    if sep == "]":
                        break
                    if sep != ",":
                        raise ValueError("events not separated by commas")
            if not raw.startswith(",", i):
                raise ValueError("not a drain object")
            rest = json_loads_finite("{" + raw[i + 1 :])
        except ValueError as exc:
            raise _refuse(f"malformed JSON ({str(exc)[:80]})") from None
        if not isinstance(rest, dict) or not _DRAIN_KEYS <= set(rest) <= _DRAIN_KEYS_READS:
            raise _refuse("not a drain object")
        return events, rest["pending"], rest["settled"], rest.get("reads")

    # ------------------------------------------------------------------ one event

    def _event(self, ev: Any) -> EngineEvent | None:
        if not isinstance(ev, list) or not ev or not isinstance(ev[0], str):
            raise _refuse("an event is not a tagged array")
        tag = ev[0]
        n = len(ev)
        if tag == "call" and n == 4:  # the most frequent event first
            return self._call(ev[1], ev[2], ev[3])
        if tag == "text" and n == 2 and isinstance(ev[1], str):
            self._charge(ev[1])
            return OutputProduced(TextItem(ev[1]))
        if tag == "image" and n == 3 and isinstance(ev[1], str) and ev[2] in _DETAILS:
            if ev[1][:5].lower() != "data:":
                raise _refuse("an image that is not a data: URL")
            self._charge(ev[1])
            return OutputProduced(ImageItem(ev[1], ImageDetail(ev[2])))
        if tag == "notify" and n == 2 and isinstance(ev[1], str):
            if not ev[1].strip():
                raise _refuse("an empty notification")
            self._charge(ev[1])
            return NotifyRequested(ev[1])
        if tag == "yield" and n == 1:
            return YieldRequested()
        if tag == "timer" and n == 3:
            return self._timer(ev[1], ev[2])
        if tag == "clear" and n == 2:
            timer_id = ev[1]
            if not _is_int(timer_id) or timer_id not in self._live_timers:
                raise _refuse(f"a clear of a timer that is not live ({timer_id!r})")
            self._live_timers.discard(timer_id)
            return TimerCleared(timer_id)
        if tag == "store" and n == 3:
            self._store(ev[1], ev[2])
            return None
        raise _refuse(f"an unknown or malformed event {tag[:40]!r}")

    def _charge(self, text: str) -> None:
        cost = max(_utf8(text), MIN_ITEM_BYTES)
        if self._output_bytes + cost > self._limits.max_output_bytes:
            raise ReportRefused(limit_error_text(self._limits, "max_output_bytes"))
        self._output_bytes += cost

    def _call(self, call_id: Any, index: Any, value: Any) -> ToolCallRequested:
        expected = f"tool-{self._calls_issued + 1}"
        if call_id != expected:
            raise _refuse(f"call id {str(call_id)[:40]!r} where {expected!r} was due")
        if not _is_int(index) or not 0 <= index < len(self._tools):
            raise _refuse(f"call {expected} names no tool ({str(index)[:40]})")
        tool = self._tools[index]
        if tool.kind is ToolKind.FREEFORM:
            if not isinstance(value, str):
                raise _refuse(f"call {expected} gives freeform tool `{tool.name}` a non-string")
        elif not isinstance(value, dict):
            raise _refuse(f"call {expected} gives function tool `{tool.name}` a non-object")
        if self._calls_issued + 1 > self._limits.max_tool_calls:
            raise ReportRefused(limit_error_text(self._limits, "max_tool_calls"))
        self._calls_issued += 1
        self._outstanding.add(call_id)
        return ToolCallRequested(call_id, index, value)

    def _timer(self, timer_id: Any, delay_ms: Any) -> TimerSet:
        if not _is_int(timer_id) or timer_id <= self._last_timer:
            raise _refuse(f"timer id {str(timer_id)[:40]} out of sequence")
        if (
            isinstance(delay_ms, bool)
            or not isinstance(delay_ms, int | float)
            or not math.isfinite(delay_ms)
            or delay_ms < 0
        ):
            raise _refuse("a timer delay that is not a finite non-negative number")
        if len(self._live_timers) >= MAX_LIVE_TIMERS:
            raise _refuse(f"more than {MAX_LIVE_TIMERS} live timers")
        self._last_timer = timer_id
        self._live_timers.add(timer_id)
        return TimerSet(timer_id, float(delay_ms) / 1000.0)

    def _store(self, key: Any, value_json: Any) -> None:
        if not isinstance(key, str) or not isinstance(value_json, str):
            raise _refuse("a store that is not a key and a JSON text")
        try:
            value = json_loads_finite(value_json)
        except ValueError as exc:
            raise _refuse(f"stored value {key[:40]!r} is not finite JSON ({exc})") from None
        if value_json[:1] in "[{" and not depth_at_most(value, MAX_STORED_DEPTH):
            raise _refuse(f"stored value {key[:40]!r} nests deeper than {MAX_STORED_DEPTH}")
        size = entry_bytes(key, value_json)
        before = self._writes.get(key)
        if before is None:
            before = self._snapshot.size_of(key)
        total = self._stored_bytes - before + size
        if total > self._limits.max_stored_bytes:
            raise ReportRefused(limit_error_text(self._limits, "max_stored_bytes"))
        self._stored_bytes = total
        self._writes[key] = size
        self._batch[key] = value_json

    # ------------------------------------------------------------------ the rest

    @staticmethod
    def _reads(raw: Any) -> tuple[EnvRead, ...]:
        try:
            return check_reads(raw)
        except ValueError as exc:
            raise _refuse(str(exc)) from None

    def _pending(self, pending: Any) -> tuple[str, ...]:
        if pending is None:
            return ()
        if not isinstance(pending, list):
            raise _refuse("pending is not a list")
        seen: set[str] = set()
        for call_id in pending:
            if not isinstance(call_id, str) or call_id not in self._outstanding:
                raise _refuse(f"pending names no outstanding call ({str(call_id)[:40]!r})")
            if call_id in seen:
                raise _refuse(f"pending names {call_id!r} twice")
            seen.add(call_id)
        return tuple(sorted(seen, key=lambda c: int(c[5:])))

    def _settlement(self, settled: Any) -> Settlement | None:
        if settled is None:
            return None
        if not isinstance(settled, dict):
            raise _refuse("a settlement that is not an object")
        ok = settled.get("ok")
        if ok is True and len(settled) == 1:
            return Settlement(None)
        if ok is False and len(settled) == 2:
            limit = settled.get("limit")
            if isinstance(limit, str):
                if limit not in _LIMIT_FIELDS:
                    raise _refuse(f"unknown limit {limit[:40]!r}")
                return Settlement(limit_error_text(self._limits, limit))
            error = settled.get("error")
            if isinstance(error, str):
                return Settlement(error)
        raise _refuse("a malformed settlement")
