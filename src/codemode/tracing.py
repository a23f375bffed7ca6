"""OpenTelemetry tracing of cells and their nested tool calls (docs/integrations.md).

What is traced, when the program has imported OpenTelemetry (``opentelemetry.trace`` is in
``sys.modules``; a program that configured a tracer provider has):

- **A span per cell**, ``codemode.cell``, from admission until the cell closes, a child of the
  span current where the cell was created (for the ``exec`` tool of an agent framework: that
  framework's tool span). Attributes: ``codemode.cell.id``, ``codemode.cell.kind``
  (``continuing`` / ``pausable``), ``gen_ai.tool.call.id`` (the model's call that created the
  cell, when it has one), and when it closes ``codemode.cell.outcome`` (``completed``,
  ``failed`` or ``terminated``) and ``codemode.cell.output_bytes`` (UTF-8 bytes of its text
  output plus the length of its image URLs). A failed cell has status ``ERROR`` with its error
  text and ``error.type`` ``codemode.script_error``.
- **A child span per nested call**, following the OpenTelemetry GenAI semantic conventions for
  tool execution: name ``execute_tool {tool}``, kind ``INTERNAL``, ``gen_ai.operation.name`` =
  ``execute_tool``, ``gen_ai.tool.name``, ``gen_ai.tool.call.id`` (the runtime's call id,
  ``tool-1``...), ``gen_ai.tool.type`` = ``function``, ``gen_ai.tool.description`` when the tool
  has one, and ``codemode.cell.id``. The span lasts as long as the delegate's call (its duration
  is the call's); the delegate runs with it as the current span, so spans the tool itself makes
  are its children. With ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`` (the GenAI
  conventions' opt-in for content) it also records ``gen_ai.tool.call.arguments`` and
  ``gen_ai.tool.call.result`` as JSON. A call that raises gets status ``ERROR``, the exception
  recorded and ``error.type`` set to the exception's class name (``cancelled`` when it was
  cancelled).
- **Across ``codemode serve``**: :func:`inject` writes the current trace context (W3C
  ``traceparent`` / ``tracestate``) into a protocol message's ``_meta`` member, as MCP does, and
  :func:`extracted` makes it current on the other side, so the server's cell span is a child of
  the client's span and the client's tool spans are children of the server's nested call span.

Without OpenTelemetry imported nothing here imports it, and the cost per cell is one dictionary
lookup (:func:`cell_started` returns ``None`` and the hooks in the cell layer are skipped).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any, Final

from codemode.model import ImageItem, NestedToolCall, OutputItem, SessionDelegate, TextItem

__all__ = [
    "CAPTURE_CONTENT_ENV",
    "CELL_SPAN_NAME",
    "INSTRUMENTATION_NAME",
    "CellTrace",
    "cell_started",
    "extracted",
    "inject",
]

INSTRUMENTATION_NAME: Final = "codemode"
CAPTURE_CONTENT_ENV: Final = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
"""Set to ``true`` to record nested calls' arguments and results (they may hold sensitive data)."""
CELL_SPAN_NAME: Final = "codemode.cell"
_TRACE_MODULE: Final = "opentelemetry.trace"


def _otel() -> Any:
    """The ``opentelemetry.trace`` module if the program imported it, else ``None``."""
    return sys.modules.get(_TRACE_MODULE)


_tracer_cache: list[Any] = []  # [otel module, its tracer]: OpenTelemetry's proxy tracer follows
# a tracer provider set later, so one tracer serves the whole process.


def _tracer(otel: Any) -> Any:
    if not _tracer_cache or _tracer_cache[0] is not otel:
        _tracer_cache[:] = [otel, otel.get_tracer(INSTRUMENTATION_NAME)]
    return _tracer_cache[1]


class CellTrace:
    """The span of one cell and the spans of its nested calls. Made by :func:`cell_started`."""

    __slots__ = ("_capture", "_otel", "_span", "output_bytes")

    def __init__(self, otel: Any, span: Any, capture: bool = False) -> None:
        self._otel = otel
        self._span = span
        self._capture = capture
        self.output_bytes = 0

    def output(self, item: OutputItem) -> None:
        """Count one output item of the cell."""
        if isinstance(item, TextItem):
            self.output_bytes += len(item.text.encode("utf-8", "surrogatepass"))
        elif isinstance(item, ImageItem):
            self.output_bytes += len(item.image_url)

    async def invoke(self, delegate: SessionDelegate, call: NestedToolCall) -> Any:
        """Run ``delegate.invoke_tool(call)`` inside an ``execute_tool`` span, child of the
        cell's span and current while the delegate runs; the result or exception passes
        through unchanged."""
        otel = self._otel
        tool = call.tool
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": tool.name,
            "gen_ai.tool.call.id": call.call_id,
            "gen_ai.tool.type": "function",
            "codemode.cell.id": call.cell_id,
        }
        if tool.description:
            attributes["gen_ai.tool.description"] = tool.description
        if self._capture:
            attributes["gen_ai.tool.call.arguments"] = _json(call.input)
        parent = otel.set_span_in_context(self._span)
        span = _tracer(otel).start_span(
            f"execute_tool {tool.name}",
            context=parent,
            kind=otel.SpanKind.INTERNAL,
            attributes=attributes,
        )
        # use_span makes it current (so the tool's own spans are its children), records an
        # exception with status ERROR and ends the span.
        with otel.use_span(
            span, end_on_exit=True, record_exception=False, set_status_on_exception=False
        ):
            try:
                result = await delegate.invoke_tool(call)
                if self._capture:
                    span.set_attribute("gen_ai.tool.call.result", _json(result))
                return result
            except BaseException as error:
                cancelled = not isinstance(error, Exception)
                error_type = "cancelled" if cancelled else type(error).__qualname__
                span.set_attribute("error.type", error_type)
                if not cancelled:
                    span.record_exception(error)
                span.set_status(otel.Status(otel.StatusCode.ERROR, str(error) or error_type))
                raise

    def closed(self, outcome: str, error_text: str | None) -> None:
        """End the cell's span with its outcome: ``completed``, ``failed`` or ``terminated``."""
        span = self._span
        span.set_attribute("codemode.cell.outcome", outcome)
        span.set_attribute("codemode.cell.output_bytes", self.output_bytes)
        if outcome == "failed":
            span.set_attribute("error.type", "codemode.script_error")
            span.set_status(self._otel.Status(self._otel.StatusCode.ERROR, error_text or ""))
        span.end()


def cell_started(cell_id: str, kind: str, tool_call_id: str) -> CellTrace | None:
    """Start the span of a cell being admitted, a child of the current span; ``None`` when
    OpenTelemetry is not imported (then nothing is traced)."""
    otel = _otel()
    if otel is None:
        return None
    attributes: dict[str, Any] = {"codemode.cell.id": cell_id, "codemode.cell.kind": kind}
    if tool_call_id:
        attributes["gen_ai.tool.call.id"] = tool_call_id
    span = _tracer(otel).start_span(
        CELL_SPAN_NAME, kind=otel.SpanKind.INTERNAL, attributes=attributes
    )
    capture = os.environ.get(CAPTURE_CONTENT_ENV, "").strip().lower() == "true"
    return CellTrace(otel, span, capture)


def _json(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def inject(meta: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The current trace context added to a protocol message's ``_meta`` (``traceparent``,
    ``tracestate``). Returns ``meta`` (a new dict if it was ``None`` and there is a context to
    carry); unchanged, possibly ``None``, without OpenTelemetry or without a current span."""
    if _otel() is None:
        return meta
    import opentelemetry.propagate as propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    if not carrier:
        return meta
    if meta is None:
        meta = {}
    meta.update(carrier)
    return meta


@contextlib.contextmanager
def extracted(meta: Any) -> Iterator[None]:
    """Make the trace context carried in a protocol message's ``_meta`` current for the block
    (asyncio tasks started in it inherit it). Does nothing without OpenTelemetry or without a
    ``traceparent`` in ``meta``; a malformed one is ignored."""
    if _otel() is None or not isinstance(meta, Mapping) or "traceparent" not in meta:
        yield
        return
    import opentelemetry.context as otel_context
    import opentelemetry.propagate as propagate

    carrier = {k: v for k, v in meta.items() if isinstance(k, str) and isinstance(v, str)}
    token = otel_context.attach(propagate.extract(carrier))
    try:
        yield
    finally:
        otel_context.detach(token)
