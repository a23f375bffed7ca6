"""Every rendered declaration type-checks with the real TypeScript compiler (docs/model-tools.md).

The declarations come from the ~20 sample tools of the goldens, from the captured tool lists of
five real MCP servers (``tests/tools/data/mcp_servers/``, mapped exactly as ``codemode mcp`` maps
them) and from hostile schemas. Each ``ts`` block of the rendered ``exec`` description goes into a
file of its own (a module, so every block may declare its own ``tools``), the Shared MCP types
block into a global declaration file, and one ``tsc --noEmit --strict`` run checks them all.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

import mcp.types as mcp_types
from test_tools_golden import TOOLS as GOLDEN_TOOLS
from tsc_support import typescript_compiler

from codemode.mcp.upstream import nested_tool_definition, requires_task
from codemode.model import CellLimits, ToolDefinition, ToolKind
from codemode.tools.description import exec_description

DATA = Path(__file__).parent / "data" / "mcp_servers"
SERVERS = (
    "server-everything",
    "server-memory",
    "server-filesystem",
    "mcp-server-time",
    "mcp-server-git",
)
_FENCE = re.compile(r"```ts\n(.*?)\n```", re.DOTALL)


def captured_tools(server: str) -> list[mcp_types.Tool]:
    data = json.loads((DATA / f"{server}.json").read_text("utf-8"))
    return [mcp_types.Tool.model_validate(tool) for tool in data["tools"]]


def server_definitions() -> list[ToolDefinition]:
    definitions = []
    for server in SERVERS:
        for tool in captured_tools(server):
            if not requires_task(tool):
                definitions.append(nested_tool_definition(server.replace("-", "_"), tool))
    return definitions


HOSTILE_TOOLS: tuple[ToolDefinition, ...] = (
    ToolDefinition(
        "hostile",
        "Names and comments that must not break the declaration.",
        input_schema={
            "type": "object",
            "properties": {
                "with space": {"type": "string", "description": "a */ b /* c"},
                'quote"s': {"type": "integer", "default": "x\u2028y", "pattern": "a\nb\u2029c"},
                "ünïcode": {"type": "number", "exclusiveMinimum": 0, "description": "line\rbreak"},
                "123": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
                "nested": {
                    "type": "object",
                    "properties": {"deep": {"$ref": "#/$defs/Node"}},
                },
                "tuple": {"prefixItems": [{"type": "string"}, {"const": 1}], "items": True},
                "never": False,
            },
            "required": ["with space"],
            "$defs": {
                "Node": {
                    "type": "object",
                    "description": "Recursive.",
                    "properties": {"next": {"$ref": "#/$defs/Node"}, "v": {"enum": [1, "a", None]}},
                }
            },
        },
        output_schema={"anyOf": [{"type": "string"}, {"allOf": [{"type": "object"}, {}]}]},
    ),
    ToolDefinition("freeform-tool", "Takes text.", kind=ToolKind.FREEFORM),
    ToolDefinition("no_schema"),
)


def type_check(tsc: Path, tmp_path: Path, description: str) -> subprocess.CompletedProcess[str]:
    """Write every ``ts`` block of ``description`` to a file of its own and run ``tsc`` once."""
    blocks = _FENCE.findall(description)
    assert blocks, "no ts blocks rendered"
    files = []
    for index, block in enumerate(blocks):
        if "type CallToolResult" in block:
            path = tmp_path / "shared-mcp-types.d.ts"
            path.write_text(block + "\n", "utf-8")
        else:
            path = tmp_path / f"block_{index:04d}.ts"
            path.write_text("export {};\n" + block + "\n", "utf-8")
        files.append(str(path))
    return subprocess.run(
        [
            "node",
            str(tsc),
            "--noEmit",
            "--strict",
            "--target",
            "es2022",
            "--pretty",
            "false",
            *files,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def describe(tools: Sequence[ToolDefinition]) -> str:
    return exec_description(tools, describe_tools=True, code_mode_only=True, limits=CellLimits())


def test_captured_servers_are_all_there() -> None:
    definitions = server_definitions()
    assert len(definitions) >= 45
    names = {d.name for d in definitions}
    assert "mcp__server_filesystem__move_file" in names
    assert "mcp__mcp_server_git__git_status" in names
    # server-everything's task-only tool is left out, as `codemode mcp` leaves it out.
    assert "mcp__server_everything__simulate-research-query" not in names


def test_every_rendered_declaration_type_checks(tmp_path: Path) -> None:
    tools = [*GOLDEN_TOOLS, *server_definitions(), *HOSTILE_TOOLS]
    description = describe(tools)
    blocks = _FENCE.findall(description)
    assert len(blocks) == len(tools) + 1  # one per tool and the Shared MCP types
    result = type_check(typescript_compiler(), tmp_path, description)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compiler_check_can_fail(tmp_path: Path) -> None:
    broken = "```ts\ndeclare const tools: { x(args: { a: }): Promise<Missing>; };\n```"
    result = type_check(typescript_compiler(), tmp_path, broken)
    assert result.returncode != 0
    assert "error TS" in result.stdout
