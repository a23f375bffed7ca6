"""Upstream MCP servers as nested tools, in process, over real stdio (docs/protocol.md).

The upstreams are the SDK test server (``servers/fake_server.py``) and the third-party
``mcp-server-time``; cells run in a real ``SessionRuntime`` behind ``CodeModeTools`` with
``code_mode_only``, as ``codemode mcp`` runs them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp_support import FAKE_SERVER, PNG_BASE64, fake_entry, free_port, time_entry

from codemode import SessionRuntime, TextItem
from codemode.mcp.config import parse_config
from codemode.mcp.upstream import UpstreamError, UpstreamSet, mcp_output_schema
from codemode.tools import CodeModeTools
from codemode.tools.description import CODE_MODE_ONLY_TEXT
from codemode.tools.typescript import is_mcp_shaped, output_type

FAKE_TOOLS = ["echo", "add", "image", "fail", "sleep", "crash", "pid", "headers", "enable_extra"]


@asynccontextmanager
async def upstream_set(servers: dict[str, Any]) -> AsyncIterator[UpstreamSet]:
    async with UpstreamSet(parse_config({"mcpServers": servers})) as upstreams:
        yield upstreams


@asynccontextmanager
async def session_for(upstreams: UpstreamSet) -> AsyncIterator[SessionRuntime]:
    """A session whose nested calls go to ``upstreams``."""
    runtime = SessionRuntime(upstreams.delegate())
    try:
        yield runtime
    finally:
        await asyncio.wait_for(runtime.shutdown(), 10)


@asynccontextmanager
async def code_mode(upstreams: UpstreamSet) -> AsyncIterator[CodeModeTools]:
    """``exec``/``wait`` (``code_mode_only``) over a session whose delegate is ``upstreams``."""
    async with session_for(upstreams) as runtime:
        yield CodeModeTools(runtime, upstreams.tools, code_mode_only=True)


async def run(tools: CodeModeTools, source: str) -> list[str]:
    """Run a cell to completion; its text output, one entry per item (header dropped)."""
    result = await tools.exec(source, "")
    assert result.text.startswith("Script completed"), result.text
    return [item.text for item in result.items[1:] if isinstance(item, TextItem)]


async def until(condition: Any, within: float = 60.0) -> None:
    """Poll ``condition()`` until it is true (at most ``within`` seconds)."""
    for _ in range(int(within / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


async def test_every_page_of_tools_becomes_a_typed_nested_tool() -> None:
    async with upstream_set({"fake": fake_entry(), "time": time_entry()}) as upstreams:
        names = [t.name for t in upstreams.tools]
        assert names == [f"mcp__fake__{n}" for n in FAKE_TOOLS] + [
            "mcp__time__get_current_time",
            "mcp__time__convert_time",
        ]
        by_name = {t.name: t for t in upstreams.tools}
        echo = by_name["mcp__fake__echo"]
        upstream_echo = upstreams.upstream("fake").tools[0]  # type: ignore[union-attr]
        assert (echo.namespace, echo.description) == ("fake", "Echoes its text.")
        assert echo.input_schema == upstream_echo.input_schema
        assert is_mcp_shaped(echo.output_schema)
        assert echo.output_schema == mcp_output_schema(upstream_echo.output_schema)
        assert output_type(echo) == "CallToolResult<{ text: string; }>"
        assert output_type(by_name["mcp__fake__image"]) == "CallToolResult<unknown>"
        # mcp-server-time's output schema uses local $refs; they still resolve.
        convert = output_type(by_name["mcp__time__convert_time"])
        assert "target: { timezone: string; datetime: string; day_of_week: string;" in convert

        async with code_mode(upstreams) as tools:
            description = tools.exec_tool_spec()["description"]
        assert description.startswith(CODE_MODE_ONLY_TEXT)
        assert "## fake" in description and "## time" in description
        assert "declare const tools: { mcp__fake__add(args: { a: number; b: number; }): " in (
            description
        )
        assert "Promise<CallToolResult<{ sum: number; }>>" in description
        assert "type CallToolResult<T" in description


async def test_nested_calls_resolve_with_the_call_tool_result() -> None:
    async with (
        upstream_set({"fake": fake_entry(), "time": time_entry()}) as upstreams,
        code_mode(upstreams) as tools,
    ):
        out = await run(
            tools,
            """
            const [echo, now, img, failed] = await Promise.all([
              tools.mcp__fake__echo({text: "hi"}),
              tools.mcp__time__get_current_time({timezone: "UTC"}),
              tools.mcp__fake__image(),
              tools.mcp__fake__fail({message: "no such issue"}),
            ]);
            text(JSON.stringify(echo));
            text(now.structuredContent.timezone);
            text(JSON.stringify(img.content[0]));
            text(JSON.stringify(failed));
            """,
        )
    assert json.loads(out[0]) == {
        "content": [{"type": "text", "text": "hi"}],
        "structuredContent": {"text": "hi"},
        "isError": False,
    }
    assert out[1] == "UTC"
    assert json.loads(out[2]) == {"type": "image", "data": PNG_BASE64, "mimeType": "image/png"}
    # isError: true is data the cell reads, not a rejected promise.
    assert json.loads(out[3]) == {
        "content": [{"type": "text", "text": "no such issue"}],
        "isError": True,
    }


async def test_start_failures_are_skipped_and_the_others_work(tmp_path: Path) -> None:
    servers = {
        "broken": fake_entry("--fail-start"),
        "missing": {"command": str(tmp_path / "no-such-server")},
        # Never answers `initialize`; exits when its stdin closes.
        "silent": {
            "command": sys.executable,
            "args": ["-c", "import sys; sys.stdin.read()"],
            "startup_timeout_sec": 0.5,
        },
        "time": time_entry(),
    }
    async with upstream_set(servers) as upstreams:
        assert [u.name for u in upstreams.upstreams] == ["time"]
        assert set(upstreams.failed) == {"broken", "missing", "silent"}
        assert upstreams.failed["broken"].startswith("MCP server `broken` failed to start")
        assert "no-such-server" in upstreams.failed["missing"]
        assert upstreams.failed["silent"] == "MCP server `silent` did not start within 0.5 seconds"
        assert all(t.namespace == "time" for t in upstreams.tools)
        async with code_mode(upstreams) as tools:
            out = await run(
                tools,
                'const r = await tools.mcp__time__get_current_time({timezone: "UTC"});'
                "text(r.structuredContent.timezone);"
                "text(typeof tools.mcp__broken__echo);",
            )
    assert out == ["UTC", "undefined"]


async def test_timeout_and_crash_reject_clearly_and_the_server_restarts() -> None:
    servers = {"fake": fake_entry(tool_timeout_sec=0.5), "time": time_entry()}
    async with upstream_set(servers) as upstreams, code_mode(upstreams) as tools:
        fake = upstreams.upstream("fake")
        assert fake is not None
        out = await run(
            tools,
            """
            const before = (await tools.mcp__fake__pid()).structuredContent.pid;
            const [slow, crash, now] = await Promise.allSettled([
              tools.mcp__fake__sleep({seconds: 5}),
              new Promise(r => setTimeout(r, 100)).then(() => tools.mcp__fake__crash()),
              tools.mcp__time__get_current_time({timezone: "UTC"}),
            ]);
            text(slow.status + ": " + slow.reason.message);
            text(crash.status + ": " + crash.reason.message);
            text(now.value.structuredContent.timezone);
            const after = (await tools.mcp__fake__pid()).structuredContent.pid;
            text(after !== before);
            """,
        )
        assert out[0] in (
            "rejected: MCP server `fake` did not answer tool `sleep` within 0.5 seconds",
            # The crash may come first and take the sleeping call down with it.
            "rejected: MCP server `fake` closed the connection during tool `sleep` (the server "
            "exited?); it will be restarted on next use",
        )
        assert out[1] == (
            "rejected: MCP server `fake` closed the connection during tool `crash` "
            "(the server exited?); it will be restarted on next use"
        )
        assert out[2:] == ["UTC", "true"]
        assert fake.restarts == 1

        # A timeout alone leaves the connection up.
        out = await run(
            tools,
            "try { await tools.mcp__fake__sleep({seconds: 3}); } catch (e) { text(e.message); }"
            'text((await tools.mcp__fake__echo({text: "still here"})).structuredContent.text);',
        )
        assert out == [
            "MCP server `fake` did not answer tool `sleep` within 0.5 seconds",
            "still here",
        ]
        assert fake.restarts == 1

        # A server that died between calls is started again on next use; the call goes through.
        pid = (await upstreams.call("mcp__fake__pid", {}))["structuredContent"]["pid"]
        os.kill(pid, signal.SIGKILL)
        await until(lambda: not fake.alive)
        result = await upstreams.call("mcp__fake__echo", {"text": "back"})
        assert result["structuredContent"] == {"text": "back"}
        assert fake.restarts == 2


async def test_a_restart_that_fails_rejects_the_call(tmp_path: Path) -> None:
    servers = {"fake": fake_entry("--once", str(tmp_path / "started"))}
    async with upstream_set(servers) as upstreams, code_mode(upstreams) as tools:
        out = await run(
            tools,
            "try { await tools.mcp__fake__crash(); } catch (e) { text(e.message); }"
            "try { await tools.mcp__fake__pid(); } catch (e) { text(e.message); }",
        )
    assert out[0].startswith("MCP server `fake` closed the connection during tool `crash`")
    assert out[1].startswith(
        "MCP server `fake` is not running and could not be restarted for tool `pid`: "
        "MCP server `fake` failed to start"
    )


async def test_list_changed_refreshes_the_tools_of_later_cells() -> None:
    async with upstream_set({"fake": fake_entry()}) as upstreams:
        changes: list[int] = []
        upstreams.add_listener(lambda: changes.append(upstreams.generation))
        first = upstreams.generation
        async with session_for(upstreams) as runtime:
            old_tools = CodeModeTools(runtime, upstreams.tools, code_mode_only=True)
            out = await run(
                old_tools,
                "await tools.mcp__fake__enable_extra(); text(typeof tools.mcp__fake__extra);",
            )
            assert out == ["undefined"]
            await until(lambda: upstreams.generation > first)
            assert changes == [first + 1]
            assert upstreams.tools[-1].name == "mcp__fake__extra"
            new_tools = CodeModeTools(runtime, upstreams.tools, code_mode_only=True)
            assert "mcp__fake__extra" in new_tools.exec_tool_spec()["description"]
            out = await run(
                new_tools,
                "text(JSON.stringify((await tools.mcp__fake__extra()).structuredContent));",
            )
            assert out == ['{"extra":true}']


async def test_unknown_nested_name_and_shutdown_reject() -> None:
    upstreams = UpstreamSet(parse_config({"mcpServers": {"fake": fake_entry()}}))
    await upstreams.start()
    try:
        with pytest.raises(UpstreamError, match=r"^no MCP server offers the tool `mcp__nope__x`$"):
            await upstreams.call("mcp__nope__x", {})
    finally:
        await upstreams.aclose()
    with pytest.raises(UpstreamError, match=r"^MCP server `fake` is shut down$"):
        await upstreams.call("mcp__fake__echo", {"text": "x"})


async def start_http_fake(port: int) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(FAKE_SERVER), "--http", str(port)
    )
    for _ in range(300):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return process
    raise AssertionError("the HTTP test server did not start")


async def test_streamable_http_upstream_with_headers_and_reconnect() -> None:
    port = free_port()
    entry = {"url": f"http://127.0.0.1:{port}/mcp", "headers": {"X-Token": "secret"}}
    process = await start_http_fake(port)
    try:
        async with upstream_set({"web": entry}) as upstreams:
            assert [t.name for t in upstreams.tools] == [f"mcp__web__{n}" for n in FAKE_TOOLS]
            result = await upstreams.call("mcp__web__headers", {})
            assert result["structuredContent"]["headers"]["x-token"] == "secret"
            process.kill()
            await process.wait()
            with pytest.raises(UpstreamError, match=r"^MCP server `web` "):
                await upstreams.call("mcp__web__echo", {"text": "x"})
            process = await start_http_fake(port)
            result = await upstreams.call("mcp__web__echo", {"text": "again"})
            assert result["structuredContent"] == {"text": "again"}
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
