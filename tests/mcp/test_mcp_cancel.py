"""Issue 12 point 1: the official MCP client cancelling an ``exec`` (a caller that gives up on the
call, which sends ``notifications/cancelled``, as a client-side timeout does) terminates its cell:
its later nested calls never reach the upstream server and its stored writes are discarded, as
for termination."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp_support import REPO, SERVERS, codemode_mcp_session, free_port, output, write_config
from test_mcp_http import wait_for_port

RECORDING_SERVER = SERVERS / "recording_server.py"
# The cell's late call comes this long after its early one, unless the cancellation stopped it:
# time enough for the cancellation to land on a loaded machine.
LATE_AFTER = 3.0

CELL = (
    '// @exec: {"yield_time_ms": 20000}\n'
    'await tools.mcp__rec__record({text: "early"});\n'
    'store("k", "written by a cancelled exec");\n'
    f"await new Promise(r => setTimeout(r, {int(LATE_AFTER * 1000)}));\n"
    'await tools.mcp__rec__record({text: "late"});\n'
    'text("done");'
)


def _config(tmp_path: Path) -> tuple[Path, Path]:
    log = tmp_path / "calls.log"
    entry = {"command": sys.executable, "args": [str(RECORDING_SERVER), "--log", str(log)]}
    return write_config(tmp_path / "mcp.json", {"rec": entry}), log


@asynccontextmanager
async def http_session(config: Path) -> AsyncIterator[ClientSession]:
    """The official client over streamable HTTP to ``codemode mcp --http``."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "codemode", "mcp", "--config", str(config)),
        *("--http", f"127.0.0.1:{port}"),
        cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_for_port(port, process)
        async with (
            streamable_http_client(f"http://127.0.0.1:{port}/mcp") as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            yield session
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            await process.wait()


async def _recorded(log: Path, expected: list[str]) -> None:
    """Wait (hang guard 60 s) until the upstream server recorded ``expected``; polled: the
    record is a file another process writes."""
    async with asyncio.timeout(60):
        while _lines(log) != expected:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


def _lines(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def _session(transport: str, config: Path) -> AbstractAsyncContextManager[ClientSession]:
    return codemode_mcp_session(config) if transport == "stdio" else http_session(config)


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_cancelled_exec_terminates_its_cell(tmp_path: Path, transport: str) -> None:
    config, log = _config(tmp_path)
    async with _session(transport, config) as session:
        call = asyncio.ensure_future(session.call_tool("exec", {"code": CELL}))
        await _recorded(log, ["early"])  # cancel only once the cell made its early call
        call.cancel()  # the client sends notifications/cancelled for it
        with pytest.raises(asyncio.CancelledError):
            await call
        await asyncio.sleep(LATE_AFTER + 1.5)  # the cell would have made its late call by now
        assert log.read_text().split() == ["early"]
        loaded = await session.call_tool("exec", {"code": 'text(String(load("k")))'})
        assert output(loaded) == ["undefined"]
        # The connection and the upstream still serve.
        later = await session.call_tool(
            "exec", {"code": 'await tools.mcp__rec__record({text: "after"}); text("ok")'}
        )
        assert output(later) == ["ok"]
    assert log.read_text().split() == ["early", "after"]
