"""Golden-file tests of the ``exec``/``wait`` descriptions and the nested-tool declarations.

The expected texts live in ``tests/tools/golden/``. After an intended change of the rendering,
regenerate them with

    CODEMODE_UPDATE_GOLDEN=1 .venv/bin/pytest tests/tools/test_tools_golden.py

and review the diff by eye against docs/model-tools.md before committing: a golden test only pins
what was approved. The rules themselves are pinned by hand-written expectations in
``test_tools_typescript.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from codemode.identifiers import tool_identifiers
from codemode.model import CellLimits, ToolDefinition, ToolKind
from codemode.tools.description import exec_description, wait_description
from codemode.tools.typescript import render_tool_declaration

GOLDEN_DIR = Path(__file__).parent / "golden"
UPDATE = os.environ.get("CODEMODE_UPDATE_GOLDEN") == "1"


def _mcp_result(structured: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "content": {"type": "array", "items": {"type": "object"}},
        "isError": {"type": "boolean"},
        "_meta": {"type": "object"},
    }
    if structured is not None:
        properties["structuredContent"] = structured
    return {"type": "object", "properties": properties, "required": ["content"], **extra}


_ISSUE_LABEL = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "color": {"type": "string"}},
    "required": ["name"],
}

TOOLS: tuple[ToolDefinition, ...] = (
    # --- namespace "github": MCP-shaped outputs, enums, nested objects, a non-identifier name.
    ToolDefinition(
        name="mcp__github__search_issues",
        description="Search issues and pull requests across GitHub repositories.",
        namespace="github",
        input_schema={
            "type": "object",
            "properties": {
                "q": {
                    "type": "string",
                    "description": "GitHub search syntax, e.g. `repo:o/r is:open`",
                },
                "state": {"type": "string", "enum": ["open", "closed", "all"]},
                "labels": {"type": "array", "items": {"type": "string"}},
                "sort": {"enum": ["created", "updated", "comments"]},
                "per_page": {"type": "integer", "minimum": 1, "maximum": 100},
                "page": {"type": "integer"},
            },
            "required": ["q"],
            "additionalProperties": False,
        },
        output_schema=_mcp_result(
            {
                "type": "object",
                "properties": {
                    "total_count": {"type": "integer"},
                    "incomplete_results": {"type": "boolean"},
                    "items": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "number": {"type": "integer"},
                                "title": {"type": "string"},
                                "state": {"enum": ["open", "closed"]},
                                "labels": {"type": "array", "items": _ISSUE_LABEL},
                            },
                            "required": ["number", "title", "state"],
                        },
                    },
                },
                "required": ["total_count", "items"],
            }
        ),
    ),
    ToolDefinition(
        name="mcp__github__create_issue",
        description="Create an issue.\nReturns the created issue as MCP content.",
        namespace="github",
        input_schema={
            "type": "object",
            "properties": {
                "owner": {"type": "string"},
                "repo": {"type": "string"},
                "title": {"type": "string"},
                "body": {"type": "string"},
                "assignees": {"type": "array", "items": {"type": "string"}},
                "labels": {"type": "array", "items": {"type": "string"}},
                "milestone": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            },
            "required": ["owner", "repo", "title"],
        },
        output_schema=_mcp_result(),
    ),
    ToolDefinition(
        name="mcp__github__get-pull-request",
        description="Get one pull request.",
        namespace="github",
        input_schema={
            "type": "object",
            "properties": {
                "owner": {"type": "string"},
                "repo": {"type": "string"},
                "pull_number": {"type": "integer"},
            },
            "required": ["owner", "repo", "pull_number"],
        },
        output_schema={
            "type": "object",
            "$defs": {
                "Ref": {
                    "type": "object",
                    "properties": {"ref": {"type": "string"}, "sha": {"type": "string"}},
                    "required": ["ref", "sha"],
                }
            },
            "properties": {
                "number": {"type": "integer"},
                "merged": {"type": "boolean"},
                "head": {"$ref": "#/$defs/Ref"},
                "base": {"$ref": "#/$defs/Ref"},
                "mergeable_state": {"type": ["string", "null"]},
            },
            "required": ["number", "head", "base"],
        },
    ),
    # --- namespace "filesystem": arrays, type arrays, a `content` that is not MCP-shaped.
    ToolDefinition(
        name="read_file",
        description="Read a text or binary file.",
        namespace="filesystem",
        input_schema={
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "encoding": {"type": "string", "enum": ["utf-8", "base64"], "default": "utf-8"},
                "offset": {"type": "integer"},
                "limit": {"type": "integer"},
            },
            "required": ["path"],
        },
        output_schema={
            "type": "object",
            "properties": {
                "content": {"type": "string"},
                "size": {"type": "integer"},
                "truncated": {"type": "boolean"},
            },
            "required": ["content", "size", "truncated"],
        },
    ),
    ToolDefinition(
        name="write_file",
        description="Write a file, replacing it or appending to it.",
        namespace="filesystem",
        input_schema={
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "content": {"type": "string"},
                "mode": {"enum": ["overwrite", "append", "create_new"]},
                "create_dirs": {"type": "boolean"},
            },
            "required": ["path", "content"],
        },
        output_schema={
            "type": "object",
            "properties": {"bytes_written": {"type": "integer"}},
            "required": ["bytes_written"],
        },
    ),
    ToolDefinition(
        name="list_directory",
        description="List a directory.",
        namespace="filesystem",
        input_schema={
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "recursive": {"type": "boolean"},
                "globs": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["path"],
        },
        output_schema={
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "kind": {"enum": ["file", "dir", "symlink"]},
                    "size": {"type": ["integer", "null"]},
                },
                "required": ["name", "kind"],
            },
        },
    ),
    # --- no namespace: anyOf/oneOf, additionalProperties, recursion, tuples, quoting, freeform.
    ToolDefinition(
        name="web_search",
        description="Search the web.",
        input_schema={
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "recency": {
                    "anyOf": [
                        {"const": "day"},
                        {"const": "week"},
                        {"type": "integer", "minimum": 1},
                    ]
                },
                "domains": {
                    "oneOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string"}]
                },
                "safe": {"type": "boolean", "default": True},
            },
            "required": ["query"],
        },
        output_schema={
            "type": "object",
            "properties": {
                "results": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "title": {"type": "string"},
                            "url": {"type": "string", "format": "uri"},
                            "snippet": {"type": "string"},
                        },
                        "required": ["title", "url"],
                    },
                }
            },
            "required": ["results"],
        },
    ),
    ToolDefinition(
        name="fetch_url",
        description="Fetch a URL over HTTP.",
        input_schema={
            "type": "object",
            "properties": {
                "url": {"type": "string"},
                "method": {"enum": ["GET", "POST", "PUT", "DELETE"]},
                "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                "body": {"type": ["string", "null"]},
            },
            "required": ["url"],
        },
        output_schema={
            "oneOf": [
                {
                    "type": "object",
                    "properties": {
                        "ok": {"const": True},
                        "status": {"type": "integer"},
                        "body": {"type": "string"},
                    },
                    "required": ["ok", "status", "body"],
                },
                {
                    "type": "object",
                    "properties": {"ok": {"const": False}, "error": {"type": "string"}},
                    "required": ["ok", "error"],
                },
            ]
        },
    ),
    ToolDefinition(
        name="get_tree",
        description="The directory tree under a path.",
        input_schema={
            "type": "object",
            "properties": {"root": {"type": "string"}, "depth": {"type": "integer"}},
        },
        output_schema={
            "$ref": "#/$defs/Node",
            "$defs": {
                "Node": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
                    },
                    "required": ["name"],
                }
            },
        },
    ),
    ToolDefinition(
        name="geo_route",
        description="Route through waypoints given as [lat, lng] pairs.",
        input_schema={
            "type": "object",
            "properties": {
                "waypoints": {
                    "type": "array",
                    "items": {
                        "type": "array",
                        "prefixItems": [{"type": "number"}, {"type": "number"}],
                        "items": False,
                    },
                },
                "profile": {"enum": ["driving", "walking", "cycling"]},
            },
            "required": ["waypoints"],
        },
        output_schema={
            "type": "object",
            "properties": {
                "distance_m": {"type": "number"},
                "bbox": {
                    "type": "array",
                    "prefixItems": [
                        {"type": "number"},
                        {"type": "number"},
                        {"type": "number"},
                        {"type": "number"},
                    ],
                },
                "legs": {
                    "type": "array",
                    "items": {
                        "type": "array",
                        "prefixItems": [{"type": "string"}, {"type": "number"}],
                        "items": {"type": "string"},
                    },
                },
            },
            "required": ["distance_m", "legs"],
        },
    ),
    ToolDefinition(
        name="http_request_headers",
        description="Send a request with explicit headers.",
        input_schema={
            "type": "object",
            "properties": {
                "Content-Type": {"type": "string"},
                "x-api-key": {"type": "string"},
                "if-none-match": {"type": "string"},
                "@context": {"type": "string"},
                "2fa_code": {"type": "string"},
                "$id": {"type": "string"},
                "valid_name": {"type": "string"},
                "état": {"type": "string"},
            },
            "required": ["Content-Type", "valid_name"],
        },
    ),
    ToolDefinition(
        name="update_metadata",
        description="Update labels and attributes of a resource.",
        input_schema={
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "attributes": {
                    "type": "object",
                    "additionalProperties": {
                        "anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]
                    },
                },
                "extra": {"type": "object", "additionalProperties": True},
                "owner": {
                    "type": "object",
                    "properties": {"team": {"type": "string"}},
                    "additionalProperties": False,
                },
                "anything": {"type": "object"},
            },
            "required": ["id"],
        },
        output_schema={"type": "object", "additionalProperties": False},
    ),
    ToolDefinition(
        name="apply_patch",
        description="Apply a patch in the apply_patch format to the workspace.",
        kind=ToolKind.FREEFORM,
    ),
    ToolDefinition(
        name="run_sql",
        description="Run one read-only SQL query.",
        kind=ToolKind.FREEFORM,
        output_schema={
            "type": "object",
            "properties": {
                "columns": {"type": "array", "items": {"type": "string"}},
                "rows": {"type": "array", "items": {"type": "array"}},
            },
            "required": ["columns", "rows"],
        },
    ),
    # --- namespace "slack": MCP-shaped outputs, one with `definitions` refs, one without input.
    ToolDefinition(
        name="mcp__slack__post_message",
        description="Post a message to a channel.",
        namespace="slack",
        input_schema={
            "type": "object",
            "properties": {
                "channel": {"type": "string"},
                "text": {"type": "string"},
                "thread_ts": {"type": "string"},
                "blocks": {"type": "array", "items": {"type": "object"}},
            },
            "required": ["channel", "text"],
        },
        output_schema=_mcp_result(
            {
                "type": "object",
                "properties": {"ok": {"type": "boolean"}, "ts": {"type": "string"}},
                "required": ["ok"],
            }
        ),
    ),
    ToolDefinition(
        name="mcp__slack__list_channels",
        description="List the channels the bot can see.",
        namespace="slack",
        output_schema=_mcp_result(
            {
                "type": "object",
                "properties": {
                    "channels": {"type": "array", "items": {"$ref": "#/definitions/Channel"}},
                    "next_cursor": {"$ref": "https://example.com/schemas/cursor.json"},
                },
            },
            definitions={
                "Channel": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "name": {"type": "string"},
                        "is_private": {"type": "boolean"},
                    },
                    "required": ["id", "name"],
                }
            },
        ),
    ),
    # --- namespace "calendar": allOf with a union member, a dotted name.
    ToolDefinition(
        name="calendar.create_event",
        description="Create a calendar event.",
        namespace="calendar",
        input_schema={
            "allOf": [
                {
                    "anyOf": [
                        {
                            "type": "object",
                            "properties": {"all_day": {"const": True}, "date": {"type": "string"}},
                            "required": ["all_day", "date"],
                        },
                        {
                            "type": "object",
                            "properties": {"start": {"type": "string"}, "end": {"type": "string"}},
                            "required": ["start", "end"],
                        },
                    ]
                },
                {
                    "type": "object",
                    "properties": {
                        "title": {"type": "string"},
                        "attendees": {"type": "array", "items": {"$ref": "#/$defs/Attendee"}},
                    },
                    "required": ["title"],
                },
            ],
            "$defs": {
                "Attendee": {
                    "type": "object",
                    "properties": {"email": {"type": "string"}, "optional": {"type": "boolean"}},
                    "required": ["email"],
                }
            },
        },
        output_schema={
            "type": "object",
            "properties": {"id": {"type": "string"}, "html_link": {"type": "string"}},
            "required": ["id"],
        },
    ),
    # --- back to no namespace: property descriptions, an empty input, mixed literals, duplicates.
    ToolDefinition(
        name="describe_image",
        description="Describe an image.",
        input_schema={
            "type": "object",
            "properties": {
                "image": {
                    "description": "The image: a data: URL,\nor an inline base64 block.",
                    "anyOf": [
                        {"type": "string"},
                        {
                            "type": "object",
                            "properties": {
                                "data": {"type": "string", "description": "Base64 bytes."},
                                "mimeType": {"type": "string"},
                            },
                            "required": ["data", "mimeType"],
                        },
                    ],
                },
                "detail": {"enum": ["low", "high"], "description": "How closely to look."},
                "prompt": {"type": "string"},
            },
            "required": ["image"],
        },
        output_schema={
            "type": "object",
            "properties": {
                "caption": {"type": "string", "description": "One sentence."},
                "objects": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["caption"],
        },
    ),
    ToolDefinition(
        name="ping",
        input_schema={"type": "object", "properties": {}, "additionalProperties": False},
        output_schema={"const": "pong"},
    ),
    ToolDefinition(
        name="search_logs",
        description="Search service logs.",
        input_schema={
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "level": {
                    "type": ["string", "null"],
                    "enum": ["debug", "info", "warn", "error", None],
                },
                "limit": {"type": ["integer", "number", "null"]},
                "since": {"type": "string", "format": "date-time"},
                "filters": {
                    "type": ["object", "null"],
                    "properties": {"service": {"type": "string"}, "host": {"type": "string"}},
                },
                "sample": {"enum": [1, "all", None, True, 0.5]},
            },
        },
        output_schema={
            "type": "object",
            "properties": {
                "lines": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "ts": {"type": "string"},
                            "level": {"type": "string"},
                            "message": {"type": "string"},
                            "fields": {"type": "object", "additionalProperties": True},
                        },
                        "required": ["ts", "message"],
                    },
                },
                "truncated": {"type": "boolean"},
            },
            "required": ["lines"],
        },
    ),
    ToolDefinition(name="hidden-dynamic-tool", description="A tool registered at run time."),
    ToolDefinition(
        name="hidden_dynamic_tool",
        description="Another tool whose identifier collides with the previous one.",
        input_schema={
            "type": "object",
            "properties": {"value": {"type": "string"}},
            "required": ["value"],
        },
    ),
)

CUSTOM_LIMITS = CellLimits(
    max_heap_bytes=128 * 1024 * 1024,
    max_tool_calls=50,
    max_parallel_tool_calls=8,
    max_output_bytes=256 * 1024,
    max_cpu_seconds=2.5,
)


def _declarations() -> str:
    blocks = []
    for tool, identifier in zip(TOOLS, tool_identifiers(t.name for t in TOOLS), strict=True):
        blocks.append(f"# {tool.name}\n{render_tool_declaration(tool, identifier)}\n")
    return "\n".join(blocks)


CASES: dict[str, Any] = {
    "declarations.ts": _declarations,
    "exec_description_full.md": lambda: exec_description(
        TOOLS, describe_tools=True, code_mode_only=True, limits=CellLimits()
    ),
    "exec_description_no_reference.md": lambda: exec_description(
        TOOLS, describe_tools=False, code_mode_only=False, limits=CUSTOM_LIMITS
    ),
    "exec_description_no_tools.md": lambda: exec_description(
        (), describe_tools=True, code_mode_only=False, limits=CellLimits()
    ),
    # The same tools with a reference budget they exceed: the discovery listing (docs/model-tools.md).
    "exec_description_discovery.md": lambda: exec_description(
        TOOLS,
        describe_tools=True,
        code_mode_only=True,
        limits=CellLimits(),
        reference_budget_tokens=1000,
    ),
    "wait_description.md": lambda: wait_description(600_000),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    actual = CASES[name]()
    if not actual.endswith("\n"):
        actual += "\n"
    path = GOLDEN_DIR / name
    if UPDATE:
        GOLDEN_DIR.mkdir(exist_ok=True)
        path.write_text(actual, encoding="utf-8")
    assert path.exists(), f"missing golden file {path}; run with CODEMODE_UPDATE_GOLDEN=1"
    assert actual == path.read_text(encoding="utf-8")


def test_there_are_about_twenty_tools() -> None:
    assert len(TOOLS) >= 20
