"""Issue 12 point 2 on ``codemode mcp``: a cell printing (or notifying) a lone surrogate no longer
kills the stdio server or fails the HTTP call; the official MCP client receives U+FFFD."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp_support import REPO, Recorder, codemode_mcp_session, free_port, output, write_config
from test_mcp_http import wait_for_port

CODE = r'text("a\ud800"); notify("n\udc00"); text("\ud83d\ude00");'
EXPECTED = ["a\ufffd", "\U0001f600"]


async def test_stdio_lone_surrogate(tmp_path: Path) -> None:
    config = write_config(tmp_path / "mcp.json", {})
    recorder = Recorder()
    async with codemode_mcp_session(config, recorder) as session:
        result = await session.call_tool("exec", {"code": CODE})
        assert output(result) == EXPECTED
        assert [log.data for log in recorder.logs] == ["n\ufffd"]
        again = await session.call_tool("exec", {"code": 'text("still alive")'})
        assert output(again) == ["still alive"]


async def test_http_lone_surrogate(tmp_path: Path) -> None:
    config = write_config(tmp_path / "mcp.json", {})
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "codemode",
        "mcp",
        "--config",
        str(config),
        "--http",
        f"127.0.0.1:{port}",
        cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_for_port(port, process)
        recorder = Recorder()
        async with (
            streamable_http_client(f"http://127.0.0.1:{port}/mcp") as (read, write),
            ClientSession(read, write, logging_callback=recorder.on_log) as session,
        ):
            await session.initialize()
            result = await session.call_tool("exec", {"code": CODE})
            assert output(result) == EXPECTED
            assert [log.data for log in recorder.logs] == ["n\ufffd"]
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await process.wait() == 0
