"""A test upstream MCP server (official SDK, stdio) that leaves traces a test can check.

Tools:

- ``record {text}``: appends ``text`` and a newline to the file given by ``--log PATH``;
- ``sleep {seconds}``: sleeps, then answers ``{slept}``;
- ``family {}``: starts a grandchild (``sleep 600``) in this server's process group and answers
  ``{pid, child}`` (this server's pid and the grandchild's), so a test can check both are gone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from typing import Any

import anyio
import mcp.types as types
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.stdio import stdio_server

TOOLS = [
    types.Tool(
        name="record",
        description="Appends text to the log file.",
        input_schema={"type": "object", "properties": {"text": {"type": "string"}}},
    ),
    types.Tool(
        name="sleep",
        description="Sleeps for `seconds`.",
        input_schema={"type": "object", "properties": {"seconds": {"type": "number"}}},
    ),
    types.Tool(
        name="family",
        description="Starts a grandchild process; answers both pids.",
        input_schema={"type": "object"},
    ),
]

_options: dict[str, Any] = {}
_children: list[subprocess.Popen[bytes]] = []


def _record(text: str) -> None:
    with open(_options["log"], "a", encoding="utf-8") as log:
        log.write(f"{text}\n")


def _spawn_grandchild() -> subprocess.Popen[bytes]:
    child = subprocess.Popen(["sleep", "600"])
    _children.append(child)
    return child


def _result(value: dict[str, Any]) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(text=json.dumps(value))], structured_content=value
    )


async def list_tools(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    return types.ListToolsResult(tools=TOOLS)


async def call_tool(
    ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
) -> types.CallToolResult:
    args = params.arguments or {}
    if params.name == "record":
        _record(str(args.get("text", "")))
        return _result({"recorded": True})
    if params.name == "sleep":
        await anyio.sleep(float(args.get("seconds", 0)))
        return _result({"slept": args.get("seconds", 0)})
    if params.name == "family":
        child = _spawn_grandchild()
        return _result({"pid": os.getpid(), "child": child.pid})
    raise ValueError(f"unknown tool {params.name}")


async def main() -> None:
    server: Server[Any] = Server(
        "recording", version="1.0", on_list_tools=list_tools, on_call_tool=call_tool
    )
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", default=os.devnull)
    _options.update(vars(parser.parse_args()))
    anyio.run(main)
