"""A test upstream MCP server written with the official SDK's low-level ``Server``, over stdio.

Tools (``tools/list`` is paginated, :data:`PAGE_SIZE` tools per page):

- ``echo {text}``: the text as text content, ``structuredContent`` ``{text}`` (with an output schema);
- ``add {a, b}``: ``structuredContent`` ``{sum}`` (with an output schema);
- ``image {}``: one PNG image block (:data:`PNG_BASE64`);
- ``fail {message}``: a result with ``isError: true`` and the message as text;
- ``sleep {seconds}``: sleeps, then ``structuredContent`` ``{slept}``;
- ``crash {}``: the process exits at once (code 3) without answering;
- ``pid {}``: ``structuredContent`` ``{pid}`` of this process;
- ``enable_extra {}``: adds the tool ``extra`` and sends ``notifications/tools/list_changed``;
- ``headers {}``: over HTTP, ``structuredContent`` ``{headers}`` of the request (lower-cased names).

Options: ``--http PORT`` serves streamable HTTP at ``http://127.0.0.1:PORT/mcp`` instead of
stdio; ``--fail-start`` exits with status 3 before serving (an upstream that fails to start);
``--once PATH`` serves only if ``PATH`` does not exist yet, creating it (so a restart fails).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import anyio
import mcp.types as types
from mcp.server import NotificationOptions, Server
from mcp.server.context import ServerRequestContext
from mcp.server.stdio import stdio_server

PAGE_SIZE = 3
# A 1x1 red PNG.
PNG_BASE64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="

_TEXT_SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}

BASE_TOOLS = [
    types.Tool(
        name="echo",
        description="Echoes its text.",
        input_schema={
            "type": "object",
            "properties": {"text": {"type": "string", "description": "what to echo"}},
            "required": ["text"],
        },
        output_schema=_TEXT_SCHEMA,
    ),
    types.Tool(
        name="add",
        description="Adds two numbers.",
        input_schema={
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"],
        },
        output_schema={
            "type": "object",
            "properties": {"sum": {"type": "number"}},
            "required": ["sum"],
        },
    ),
    types.Tool(name="image", description="Returns a 1x1 PNG.", input_schema={"type": "object"}),
    types.Tool(
        name="fail",
        description="Returns an error result.",
        input_schema={"type": "object", "properties": {"message": {"type": "string"}}},
    ),
    types.Tool(
        name="sleep",
        description="Sleeps for `seconds`.",
        input_schema={
            "type": "object",
            "properties": {"seconds": {"type": "number"}},
            "required": ["seconds"],
        },
        output_schema={"type": "object", "properties": {"slept": {"type": "number"}}},
    ),
    types.Tool(name="crash", description="Kills this server.", input_schema={"type": "object"}),
    types.Tool(
        name="pid",
        description="The process id of this server.",
        input_schema={"type": "object"},
        output_schema={"type": "object", "properties": {"pid": {"type": "integer"}}},
    ),
    types.Tool(
        name="headers", description="The HTTP request headers.", input_schema={"type": "object"}
    ),
    types.Tool(
        name="enable_extra",
        description="Adds the tool `extra` and announces the change.",
        input_schema={"type": "object"},
    ),
]
EXTRA_TOOL = types.Tool(
    name="extra",
    description="Appears after enable_extra.",
    input_schema={"type": "object"},
    output_schema={"type": "object", "properties": {"extra": {"type": "boolean"}}},
)

_state: dict[str, bool] = {"extra": False}


def _tools() -> list[types.Tool]:
    return [*BASE_TOOLS, EXTRA_TOOL] if _state["extra"] else list(BASE_TOOLS)


async def list_tools(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    tools = _tools()
    start = int(params.cursor) if params is not None and params.cursor else 0
    page = tools[start : start + PAGE_SIZE]
    more = start + PAGE_SIZE < len(tools)
    return types.ListToolsResult(tools=page, next_cursor=str(start + PAGE_SIZE) if more else None)


def _structured(value: dict[str, Any], text: str | None = None) -> types.CallToolResult:
    import json

    return types.CallToolResult(
        content=[types.TextContent(text=text if text is not None else json.dumps(value))],
        structured_content=value,
    )


async def call_tool(
    ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
) -> types.CallToolResult:
    args = params.arguments or {}
    name = params.name
    if name == "echo":
        return _structured({"text": args.get("text", "")}, text=str(args.get("text", "")))
    if name == "add":
        return _structured({"sum": args["a"] + args["b"]})
    if name == "image":
        return types.CallToolResult(
            content=[types.ImageContent(data=PNG_BASE64, mime_type="image/png")]
        )
    if name == "fail":
        message = str(args.get("message", "failed"))
        return types.CallToolResult(content=[types.TextContent(text=message)], is_error=True)
    if name == "sleep":
        await anyio.sleep(float(args["seconds"]))
        return _structured({"slept": args["seconds"]})
    if name == "crash":
        sys.stderr.flush()
        os._exit(3)
    if name == "pid":
        return _structured({"pid": os.getpid()})
    if name == "enable_extra":
        _state["extra"] = True
        await ctx.session.send_tool_list_changed()
        return _structured({"enabled": True})
    if name == "headers":
        request = ctx.request
        headers = dict(request.headers) if request is not None else {}
        return _structured({"headers": headers})
    if name == "extra" and _state["extra"]:
        return _structured({"extra": True})
    raise ValueError(f"unknown tool {name}")


async def main(http_port: int | None) -> None:
    server: Server[Any] = Server(
        "fake", version="1.0", on_list_tools=list_tools, on_call_tool=call_tool
    )
    if http_port is not None:
        import uvicorn

        app = server.streamable_http_app()
        config = uvicorn.Config(app, host="127.0.0.1", port=http_port, log_level="warning")
        await uvicorn.Server(config).serve()
        return
    options = server.create_initialization_options(NotificationOptions(tools_changed=True))
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, options)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--fail-start", action="store_true")
    parser.add_argument("--once", metavar="PATH")
    parser.add_argument("--http", type=int, metavar="PORT")
    options = parser.parse_args()
    if options.once is not None:
        if os.path.exists(options.once):
            options.fail_start = True
        else:
            open(options.once, "w").close()
    if options.fail_start:
        print("fake server: refusing to start", file=sys.stderr)
        sys.exit(3)
    anyio.run(main, options.http)
