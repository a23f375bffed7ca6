"""A test upstream MCP server (stdio) that lists the tools captured from a real server.

``replay_server.py PATH`` serves the ``tools`` of the JSON file at ``PATH`` (one of
``tests/tools/data/mcp_servers/*.json``) exactly as captured, annotations and ``execution``
included. ``tools/call`` answers every listed tool with one text block ``called {name}``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.stdio import stdio_server

TOOLS = [
    types.Tool.model_validate(t) for t in json.loads(Path(sys.argv[1]).read_text("utf-8"))["tools"]
]


async def list_tools(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    return types.ListToolsResult(tools=TOOLS)


async def call_tool(
    ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
) -> types.CallToolResult:
    if params.name not in {t.name for t in TOOLS}:
        raise ValueError(f"unknown tool {params.name}")
    return types.CallToolResult(content=[types.TextContent(text=f"called {params.name}")])


async def main() -> None:
    server: Server[Any] = Server(
        "replay", version="1.0", on_list_tools=list_tools, on_call_tool=call_tool
    )
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
