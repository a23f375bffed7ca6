"""Helpers of the ``codemode mcp`` tests: upstream configurations and MCP client sessions.

Every server here is real: the SDK test server of ``servers/fake_server.py`` and the third-party
``mcp-server-time`` (installed from PyPI; offline with ``--local-timezone``), run over stdio.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp.types as mcp_types
from mcp.client.session import ClientSession, IncomingMessage
from mcp.client.stdio import StdioServerParameters, stdio_client

SERVERS = Path(__file__).parent / "servers"
FAKE_SERVER = SERVERS / "fake_server.py"
REPO = Path(__file__).resolve().parents[2]
PNG_BASE64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="


def fake_entry(*extra_args: str, **options: Any) -> dict[str, Any]:
    """A ``command`` entry running the SDK test server."""
    return {"command": sys.executable, "args": [str(FAKE_SERVER), *extra_args], **options}


def time_entry() -> dict[str, Any]:
    """A ``command`` entry running the third-party ``mcp-server-time`` (offline, UTC)."""
    return {"command": sys.executable, "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]}


def write_config(path: Path, servers: dict[str, Any]) -> Path:
    """Write ``{"mcpServers": servers}`` to ``path``."""
    path.write_text(json.dumps({"mcpServers": servers}), encoding="utf-8")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def codemode_command(*args: str) -> StdioServerParameters:
    """``python -m codemode ...`` as an MCP stdio server (its logs go to this process's stderr)."""
    env = {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else None
    return StdioServerParameters(
        command=sys.executable, args=["-m", "codemode", *args], env=env, cwd=str(REPO)
    )


class Recorder:
    """What an MCP client session received besides responses."""

    def __init__(self) -> None:
        self.logs: list[mcp_types.LoggingMessageNotificationParams] = []
        self.notifications: list[Any] = []
        self.tools_changed = anyio.Event()

    async def on_log(self, params: mcp_types.LoggingMessageNotificationParams) -> None:
        self.logs.append(params)

    async def on_message(self, message: IncomingMessage) -> None:
        self.notifications.append(message)
        if isinstance(message, mcp_types.ToolListChangedNotification):
            self.tools_changed.set()


@asynccontextmanager
async def codemode_mcp_session(
    config: Path, recorder: Recorder | None = None
) -> AsyncIterator[ClientSession]:
    """An initialized SDK ``ClientSession`` over stdio to ``python -m codemode mcp --config``."""
    rec = recorder if recorder is not None else Recorder()
    async with (
        stdio_client(codemode_command("mcp", "--config", str(config))) as (read, write),
        ClientSession(
            read, write, logging_callback=rec.on_log, message_handler=rec.on_message
        ) as session,
    ):
        await session.initialize()
        yield session


def texts(result: mcp_types.CallToolResult) -> list[str]:
    """The text blocks of a result."""
    return [block.text for block in result.content if isinstance(block, mcp_types.TextContent)]


def output(result: mcp_types.CallToolResult) -> list[str]:
    """The text blocks after the ``Script ...`` header."""
    return texts(result)[1:]


def running_cell_id(result: mcp_types.CallToolResult) -> str:
    """The cell id of a ``Script running with cell ID ...`` result."""
    header = texts(result)[0]
    assert header.startswith("Script running with cell ID "), header
    return header.split("cell ID ", 1)[1].split("\n", 1)[0]
