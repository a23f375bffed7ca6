"""``codemode mcp`` end to end: the SDK's ``ClientSession`` over stdio to ``python -m codemode mcp``,
which runs real upstream MCP servers over stdio (docs/protocol.md; scenario 86, second half)."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import mcp.types as mcp_types
import pytest
from mcp.shared.exceptions import MCPError
from mcp_support import (
    PNG_BASE64,
    Recorder,
    codemode_mcp_session,
    fake_entry,
    output,
    running_cell_id,
    texts,
    time_entry,
    write_config,
)

from codemode.tools.description import CODE_MODE_ONLY_TEXT
from codemode.tools.exec_wait import missing_cell_text


async def test_scenario_86_fake_upstream_lists_only_exec_and_wait(tmp_path: Path) -> None:
    config = write_config(tmp_path / "mcp.json", {"fake": fake_entry()})
    async with codemode_mcp_session(config) as session:
        listed = await session.list_tools()
        assert [tool.name for tool in listed.tools] == ["exec", "wait"]
        result = await session.call_tool(
            "exec", {"code": 'text(JSON.stringify(await tools.mcp__fake__echo({text: "hello"})))'}
        )
    assert not result.is_error
    assert texts(result)[0].startswith("Script completed\n")
    assert json.loads(output(result)[0]) == {
        "content": [{"type": "text", "text": "hello"}],
        "structuredContent": {"text": "hello"},
        "isError": False,
    }


async def test_exec_and_wait_over_two_upstreams(tmp_path: Path) -> None:
    config = write_config(tmp_path / "mcp.json", {"fake": fake_entry(), "time": time_entry()})
    recorder = Recorder()
    progressed: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        progressed.append((progress, total, message))

    async with codemode_mcp_session(config, recorder) as session:
        listed = await session.list_tools()
        exec_tool, wait_tool = listed.tools
        assert (exec_tool.name, wait_tool.name) == ("exec", "wait")
        assert exec_tool.input_schema["required"] == ["code"]
        assert wait_tool.input_schema["required"] == ["cell_id"]
        description = exec_tool.description or ""
        assert description.startswith(CODE_MODE_ONLY_TEXT)
        assert "declare const tools: { mcp__fake__echo(args: {" in description
        assert "}): Promise<CallToolResult<{ text: string; }>>; };" in description
        assert "mcp__time__get_current_time(args: {" in description
        assert "`wait`" in (wait_tool.description or "")

        # One Promise.all over both upstreams; notify with a progress token is progress.
        result = await session.call_tool(
            "exec",
            {
                "code": """
                const [echo, now] = await Promise.all([
                  tools.mcp__fake__echo({text: "hi"}),
                  tools.mcp__time__get_current_time({timezone: "UTC"}),
                ]);
                notify("fetched both");
                text(echo.structuredContent.text);
                text(now.structuredContent.timezone);
                image((await tools.mcp__fake__image()).content[0]);
                """
            },
            progress_callback=on_progress,
        )
        assert not result.is_error
        assert output(result) == ["hi", "UTC"]
        image = result.content[-1]
        assert isinstance(image, mcp_types.ImageContent)
        assert (image.data, image.mime_type) == (PNG_BASE64, "image/png")
        assert image.meta == {"codex/imageDetail": "high"}
        assert progressed == [(1.0, None, "fetched both")]
        assert recorder.logs == []

        # A cell still running after exec's budget (again over both upstreams), then wait;
        # notify without a progress token is a log message.
        result = await session.call_tool(
            "exec",
            {
                "code": '// @exec: {"yield_time_ms": 100}\n'
                'text("started");'
                "const [slept, now] = await Promise.all(["
                "  tools.mcp__fake__sleep({seconds: 0.5}),"
                '  tools.mcp__time__get_current_time({timezone: "UTC"}),'
                "]);"
                'notify("slept");'
                "text(`${slept.structuredContent.slept} ${now.structuredContent.timezone}`);"
            },
        )
        cell_id = running_cell_id(result)
        first = output(result)
        result = await session.call_tool("wait", {"cell_id": cell_id, "until": "completed"})
        assert texts(result)[0].startswith("Script completed\n")
        assert first + output(result) == ["started", "0.5 UTC"]
        assert [(log.level, log.logger, log.data) for log in recorder.logs] == [
            ("info", "codemode", "slept")
        ]
        result = await session.call_tool("wait", {"cell_id": cell_id})
        assert result.is_error
        assert texts(result)[-1] == f"Script error:\n{missing_cell_text(cell_id)}"

        # A failing cell and an upstream error result.
        result = await session.call_tool(
            "exec",
            {
                "code": 'const r = await tools.mcp__fake__fail({message: "bad"});'
                "text(r.isError); throw new Error(r.content[0].text);"
            },
        )
        assert result.is_error
        assert texts(result)[0].startswith("Script failed\n")
        assert texts(result)[1] == "true"
        assert texts(result)[-1].startswith("Script error:\nError: bad")

        # Usage errors are results; an unknown tool is a protocol error.
        result = await session.call_tool("exec", {"code": "  "})
        assert result.is_error and texts(result)[0].startswith("exec expects raw JavaScript")
        with pytest.raises(MCPError, match="Unknown tool: mcp__fake__echo"):
            await session.call_tool("mcp__fake__echo", {"text": "x"})

        # An upstream's tools/list_changed reaches later cells and this client.
        result = await session.call_tool("exec", {"code": "await tools.mcp__fake__enable_extra()"})
        assert not result.is_error
        with anyio.fail_after(10):
            await recorder.tools_changed.wait()
        listed = await session.list_tools()
        assert "mcp__fake__extra" in (listed.tools[0].description or "")
        result = await session.call_tool(
            "exec", {"code": "text((await tools.mcp__fake__extra()).structuredContent.extra)"}
        )
        assert output(result) == ["true"]
