"""OpenTelemetry tracing of cells and nested calls (docs/integrations.md), with the SDK's
in-memory exporter: in-process, and across ``codemode serve`` (the trace context carried in the
protocol's ``_meta``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from codemode import (
    Completed,
    CreateCellRequest,
    NestedToolCall,
    SessionRuntime,
    Terminated,
    ToolDefinition,
)
from codemode.model import CellLimits
from codemode.protocol.client import RemoteSession
from codemode.protocol.server import serve_websocket

LOOKUP = ToolDefinition("lookup", "Looks a key up.")
BREAK = ToolDefinition("break", "Always fails.")
SLOW = ToolDefinition("slow", "Never returns.")
TOOLS = (LOOKUP, BREAK, SLOW)

_EXPORTER = InMemorySpanExporter()
_RECORDING: list[bool] = [False]


class _WhileRecording(SimpleSpanProcessor):
    """Exports only while a test of this module records: the provider is process-wide and
    outlives these tests, and the rest of the suite should not fill the exporter."""

    def on_end(self, span: ReadableSpan) -> None:
        if _RECORDING[0]:
            super().on_end(span)


TRACER = trace.get_tracer("tests")  # a proxy: it follows the provider set below


def _install_provider() -> None:
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(_WhileRecording(_EXPORTER))
        trace.set_tracer_provider(provider)


class Tools:
    """The delegate: records the span current in each call (the tool's own spans join it)."""

    def __init__(self) -> None:
        self.parents: dict[str, int] = {}
        self.called = asyncio.Event()

    async def invoke_tool(self, call: NestedToolCall) -> Any:
        self.parents[call.call_id] = trace.get_current_span().get_span_context().span_id
        self.called.set()
        with TRACER.start_as_current_span(f"inner {call.tool.name}"):
            if call.tool.name == "break":
                raise ValueError("broken on purpose")
            if call.tool.name == "slow":
                await asyncio.Event().wait()
            return {"value": call.input["key"].upper()}

    async def notify(self, call_id: str, cell_id: str, text: str) -> None:
        return None


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    _install_provider()
    _EXPORTER.clear()
    _RECORDING[0] = True
    try:
        yield _EXPORTER
    finally:
        _RECORDING[0] = False
        _EXPORTER.clear()


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    context = span.context
    assert context is not None
    return context.span_id


CELL = """
const [a, b] = await Promise.all([tools.lookup({key: "x"}), tools.lookup({key: "yz"})]);
let failure = "";
try { await tools.break({}); } catch (e) { failure = String(e.message ?? e); }
text(a.value + b.value + " " + failure);
"""


async def run_cell(session: Any, source: str, call_id: str = "call_1") -> Any:
    with TRACER.start_as_current_span("agent step"):
        cell = await session.create_cell(CreateCellRequest(source, TOOLS, tool_call_id=call_id))
    return await session.wait(cell, 30.0)


def check_cell_trace(
    exported: tuple[ReadableSpan, ...], tools: Tools, error_type: str = "ValueError"
) -> None:
    (agent,) = by_name(exported, "agent step")
    (cell,) = by_name(exported, "codemode.cell")
    assert parent_id(cell) == span_id(agent)
    assert cell.context is not None and agent.context is not None
    assert cell.context.trace_id == agent.context.trace_id
    attrs = dict(cell.attributes or {})
    assert attrs["codemode.cell.kind"] == "continuing"
    assert attrs["gen_ai.tool.call.id"] == "call_1"
    assert attrs["codemode.cell.outcome"] == "completed"
    assert attrs["codemode.cell.output_bytes"] == len("XYZ broken on purpose")
    assert isinstance(attrs["codemode.cell.id"], str) and len(attrs["codemode.cell.id"]) == 16
    assert cell.status.status_code is StatusCode.UNSET

    lookups = by_name(exported, "execute_tool lookup")
    assert len(lookups) == 2
    assert sorted(str(dict(s.attributes or {})["gen_ai.tool.call.id"]) for s in lookups) == [
        "tool-1",
        "tool-2",
    ]
    for span in lookups:
        a = dict(span.attributes or {})
        assert a["gen_ai.operation.name"] == "execute_tool"
        assert a["gen_ai.tool.name"] == "lookup"
        assert a["gen_ai.tool.type"] == "function"
        assert a["gen_ai.tool.description"] == "Looks a key up."
        assert a["codemode.cell.id"] == attrs["codemode.cell.id"]
        assert parent_id(span) == span_id(cell)
        assert span.status.status_code is StatusCode.UNSET
        assert span.end_time is not None and span.start_time is not None
        assert span.end_time >= span.start_time
    (broken,) = by_name(exported, "execute_tool break")
    assert parent_id(broken) == span_id(cell)
    assert broken.status.status_code is StatusCode.ERROR
    assert broken.status.description == "broken on purpose"
    assert dict(broken.attributes or {})["error.type"] == error_type
    assert [e.name for e in broken.events] == ["exception"]
    # Each tool's own span is a child of its execute_tool span: the delegate ran inside it.
    nested = {dict(s.attributes or {})["gen_ai.tool.call.id"]: s for s in (*lookups, broken)}
    for call_id, parent in tools.parents.items():
        assert parent == span_id(nested[call_id])
    for inner in by_name(exported, "inner lookup") + by_name(exported, "inner break"):
        assert parent_id(inner) in {span_id(s) for s in nested.values()}


async def test_cell_and_nested_call_spans(spans: InMemorySpanExporter) -> None:
    tools = Tools()
    async with SessionRuntime(tools) as session:
        event = await run_cell(session, CELL)
    assert event == Completed((TextItemOf("XYZ broken on purpose"),))
    check_cell_trace(spans.get_finished_spans(), tools)


def TextItemOf(text: str) -> Any:
    from codemode import TextItem

    return TextItem(text)


async def test_failed_and_terminated_cells(spans: InMemorySpanExporter) -> None:
    tools = Tools()
    async with SessionRuntime(tools) as session:
        event = await run_cell(session, 'text("a"); throw new Error("nope");', "call_f")
        assert isinstance(event, Completed) and event.error_text
        with TRACER.start_as_current_span("agent step"):
            cell = await session.create_cell(
                CreateCellRequest('text("bb"); await tools.slow({});', TOOLS)
            )
        await asyncio.wait_for(tools.called.wait(), 30)  # the slow call has started
        assert isinstance(await session.terminate(cell), Terminated)
    cells = by_name(spans.get_finished_spans(), "codemode.cell")
    failed = next(
        s for s in cells if dict(s.attributes or {}).get("gen_ai.tool.call.id") == "call_f"
    )
    attrs = dict(failed.attributes or {})
    assert attrs["codemode.cell.outcome"] == "failed"
    assert attrs["codemode.cell.output_bytes"] == 1
    assert attrs["error.type"] == "codemode.script_error"
    assert failed.status.status_code is StatusCode.ERROR
    assert "nope" in (failed.status.description or "")
    terminated = next(s for s in cells if s is not failed)
    attrs = dict(terminated.attributes or {})
    assert attrs["codemode.cell.outcome"] == "terminated"
    assert "gen_ai.tool.call.id" not in attrs
    assert attrs["codemode.cell.output_bytes"] == 2
    assert terminated.status.status_code is StatusCode.UNSET
    (slow,) = by_name(spans.get_finished_spans(), "execute_tool slow")
    assert parent_id(slow) == span_id(terminated)
    assert slow.status.status_code is StatusCode.ERROR
    assert dict(slow.attributes or {})["error.type"] == "cancelled"


async def test_content_is_recorded_only_when_opted_in(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = 'text((await tools.lookup({key: "q"})).value)'
    async with SessionRuntime(Tools()) as session:
        await run_cell(session, source)
        (plain,) = by_name(spans.get_finished_spans(), "execute_tool lookup")
        assert "gen_ai.tool.call.arguments" not in dict(plain.attributes or {})
        spans.clear()
        monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
        await run_cell(session, source, "call_2")
    (captured,) = by_name(spans.get_finished_spans(), "execute_tool lookup")
    attrs = dict(captured.attributes or {})
    assert attrs["gen_ai.tool.call.arguments"] == '{"key": "q"}'
    assert attrs["gen_ai.tool.call.result"] == '{"value": "Q"}'


@contextlib.asynccontextmanager
async def listening_server() -> AsyncIterator[str]:
    """``codemode serve --listen`` in this process (so its spans reach the same exporter),
    started outside any span: only the protocol's ``_meta`` can join the traces."""
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    token = trace.context_api.attach(trace.context_api.Context())
    try:
        task = asyncio.create_task(
            serve_websocket("127.0.0.1", 0, CellLimits(), ready=ready.set_result, stop=stop)
        )
    finally:
        trace.context_api.detach(token)
    try:
        yield await asyncio.wait_for(ready, 30)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_trace_context_crosses_codemode_serve(spans: InMemorySpanExporter) -> None:
    tools = Tools()
    async with listening_server() as url:
        session = await RemoteSession.connect(url, tools)
        async with session:
            event = await run_cell(session, CELL)
    assert event == Completed((TextItemOf("XYZ broken on purpose"),))
    # The server sees the client's failure as a rejection; the client's own span has the cause.
    check_cell_trace(spans.get_finished_spans(), tools, error_type="ToolCallRejected")
    (inner,) = by_name(spans.get_finished_spans(), "inner break")
    assert inner.status.status_code is StatusCode.ERROR


SERVER_WITH_EXPORTER = r"""
import json, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

class FileExporter(SpanExporter):
    def export(self, spans):
        with open(sys.argv[1], "a") as out:
            for s in spans:
                out.write(json.dumps({
                    "name": s.name,
                    "trace_id": s.context.trace_id,
                    "span_id": s.context.span_id,
                    "parent_id": s.parent.span_id if s.parent else None,
                    "remote_parent": bool(s.parent and s.parent.is_remote),
                    "attributes": dict(s.attributes or {}),
                }) + "\n")
        return SpanExportResult.SUCCESS

provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
trace.set_tracer_provider(provider)
from codemode.cli import main
sys.exit(main(["serve"]))
"""


async def test_trace_context_crosses_a_codemode_serve_child_process(
    spans: InMemorySpanExporter, tmp_path: Any
) -> None:
    """A real ``codemode serve`` child with its own exporter: its spans join the caller's trace."""
    server_spans = tmp_path / "server-spans.jsonl"
    tools = Tools()
    command = [sys.executable, "-c", SERVER_WITH_EXPORTER, str(server_spans)]
    async with await RemoteSession.spawn(tools, command=command) as session:
        event = await run_cell(session, CELL)
    assert event == Completed((TextItemOf("XYZ broken on purpose"),))
    exported = spans.get_finished_spans()
    (agent,) = by_name(exported, "agent step")
    assert agent.context is not None
    remote = [json.loads(line) for line in server_spans.read_text().splitlines()]
    (cell,) = [s for s in remote if s["name"] == "codemode.cell"]
    assert cell["trace_id"] == agent.context.trace_id
    assert cell["parent_id"] == span_id(agent) and cell["remote_parent"]
    assert cell["attributes"]["codemode.cell.outcome"] == "completed"
    nested = {
        s["attributes"]["gen_ai.tool.call.id"]: s
        for s in remote
        if s["name"].startswith("execute_tool")
    }
    assert sorted(nested) == ["tool-1", "tool-2", "tool-3"]
    assert all(s["parent_id"] == cell["span_id"] for s in nested.values())
    # The client's tools ran under the server's nested call spans.
    for call_id, parent in tools.parents.items():
        assert parent == nested[call_id]["span_id"]
    inner = by_name(exported, "inner lookup") + by_name(exported, "inner break")
    assert len(inner) == 3
    assert all(
        s.context is not None and s.context.trace_id == agent.context.trace_id for s in inner
    )


def test_importing_codemode_imports_no_framework_and_no_opentelemetry() -> None:
    code = (
        "import sys, codemode, codemode.tracing, codemode.integrations\n"
        "heavy = ('opentelemetry', 'pydantic_ai', 'agents', 'langchain_core', 'langchain',"
        " 'langgraph', 'openai')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"


async def test_spans_nest_inside_an_instrumented_pydantic_ai_agent(
    spans: InMemorySpanExporter,
) -> None:
    """pydantic-ai's span for ``exec`` > the cell > codemode's span per nested call >
    pydantic-ai's own span for the wrapped tool: one trace."""
    from pydantic_ai import Agent
    from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart
    from pydantic_ai.models.function import FunctionModel
    from pydantic_ai.toolsets import FunctionToolset

    from codemode.integrations.pydantic_ai import CodeModeToolset

    toolset: FunctionToolset[None] = FunctionToolset()

    @toolset.tool_plain
    def shout(word: str) -> str:
        """Upper-cases a word."""
        return word.upper()

    def model(messages: list[Any], info: Any) -> ModelResponse:
        if len(messages) == 1:
            code = 'text((await Promise.all([tools.shout({word: "a"}), tools.shout({word: "b"})])).join(""))'
            return ModelResponse(
                parts=[ToolCallPart("exec", {"code": code}, tool_call_id="call_9")]
            )
        return ModelResponse(parts=[TextPart("done")])

    from pydantic_ai.capabilities import Instrumentation

    agent = Agent(
        FunctionModel(model),
        toolsets=[CodeModeToolset(toolset)],
        capabilities=[Instrumentation()],
    )
    await agent.run("go")
    exported = spans.get_finished_spans()
    (cell,) = by_name(exported, "codemode.cell")
    parent = next(s for s in exported if span_id(s) == parent_id(cell))
    assert dict(parent.attributes or {}).get("gen_ai.tool.name") == "exec"  # pydantic-ai's span
    ours = [s for s in by_name(exported, "execute_tool shout") if parent_id(s) == span_id(cell)]
    assert len(ours) == 2
    theirs = [s for s in by_name(exported, "execute_tool shout") if s not in ours]
    assert sorted(parent_id(s) or 0 for s in theirs) == sorted(span_id(s) for s in ours)
    assert {s.context.trace_id for s in exported if s.context} == {cell.context.trace_id}  # type: ignore[union-attr]
