"""Upstream annotations and ``execution.taskSupport`` through ``codemode mcp`` (docs/model-tools.md).

Uses the tool lists captured from five real MCP servers (``tests/tools/data/mcp_servers``).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import mcp.types as mcp_types
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import stdio_client
from mcp_support import SERVERS, codemode_command, output, texts, write_config

from codemode.mcp.upstream import (
    annotations_line,
    exec_annotations,
    nested_tool_definition,
    requires_task,
)

DATA = Path(__file__).parents[1] / "tools" / "data" / "mcp_servers"
REPLAY = SERVERS / "replay_server.py"


def captured(server: str) -> list[mcp_types.Tool]:
    data = json.loads((DATA / f"{server}.json").read_text("utf-8"))
    return [mcp_types.Tool.model_validate(t) for t in data["tools"]]


def hints(annotations: mcp_types.ToolAnnotations) -> tuple[bool | None, ...]:
    return (
        annotations.read_only_hint,
        annotations.destructive_hint,
        annotations.idempotent_hint,
        annotations.open_world_hint,
    )


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        # (readOnly, destructive, idempotent, openWorld)
        ("mcp-server-time", (True, False, True, False)),
        ("mcp-server-git", (False, True, False, False)),  # git_reset is destructive
        ("server-memory", (False, True, False, False)),  # delete_* are destructive
        ("server-filesystem", (False, True, False, False)),  # write_file, edit_file, move_file
    ],
)
def test_exec_annotations_cover_every_enabled_tool(server: str, expected: tuple[bool, ...]) -> None:
    assert hints(exec_annotations(captured(server))) == expected


def test_exec_annotations_use_the_mcp_defaults_for_missing_hints() -> None:
    bare = mcp_types.Tool(name="t", input_schema={"type": "object"})
    # No hints: may be destructive, not idempotent, open world.
    assert hints(exec_annotations([bare])) == (False, True, False, True)
    read_only = bare.model_copy(
        update={"annotations": mcp_types.ToolAnnotations(read_only_hint=True)}
    )
    # Read-only is never destructive, whatever destructiveHint defaults to.
    assert hints(exec_annotations([read_only])) == (True, False, True, True)
    # No tools: a cell can only compute.
    assert hints(exec_annotations([])) == (True, False, True, False)


def test_annotations_are_carried_into_the_nested_description() -> None:
    tools = {t.name: t for t in captured("server-filesystem")}
    move = nested_tool_definition("fs", tools["move_file"])
    assert move.description.endswith(
        "\n\nAnnotations: readOnlyHint: false; destructiveHint: true; idempotentHint: false; "
        "openWorldHint: false"
    )
    assert move.description.startswith(tools["move_file"].description or "")
    read = nested_tool_definition("fs", tools["read_text_file"])
    assert read.description.endswith("\n\nAnnotations: readOnlyHint: true; openWorldHint: false")
    bare = mcp_types.Tool(name="t", description="Plain.", input_schema={"type": "object"})
    assert annotations_line(bare) is None
    assert nested_tool_definition("s", bare).description == "Plain."
    # The schema's property order is the upstream's: source before destination.
    assert list(move.input_schema["properties"]) == ["source", "destination"]  # type: ignore[index]


def test_task_only_tools_are_recognised() -> None:
    everything = {t.name: t for t in captured("server-everything")}
    assert requires_task(everything["simulate-research-query"])
    assert not requires_task(everything["echo"])
    assert not any(requires_task(t) for t in captured("mcp-server-time"))


async def test_codemode_mcp_leaves_task_only_tools_out_and_annotates_exec(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "mcp.json",
        {
            "everything": {
                "command": sys.executable,
                "args": [str(REPLAY), str(DATA / "server-everything.json")],
            }
        },
    )
    with tempfile.TemporaryFile("w+", encoding="utf-8") as errlog:
        async with (
            stdio_client(codemode_command("mcp", "--config", str(config)), errlog=errlog) as (r, w),
            ClientSession(r, w) as session,
        ):
            await session.initialize()
            listed = {t.name: t for t in (await session.list_tools()).tools}
            result = await session.call_tool(
                "exec",
                {
                    "code": "text(Object.keys(tools).join(',')); "
                    "text((await tools.mcp__everything__echo({message: 'x'})).content[0].text);"
                },
            )
        errlog.seek(0)
        log = errlog.read()
    exec_tool = listed["exec"]
    assert exec_tool.annotations is not None
    # gzip-file-as-resource may reach an open world; toggles are neither read-only nor idempotent.
    assert hints(exec_tool.annotations) == (False, False, False, True)
    assert listed["wait"].annotations is not None
    assert listed["wait"].annotations.destructive_hint is False
    description = exec_tool.description or ""
    assert "simulate-research-query" not in description
    assert "Annotations: readOnlyHint: true; destructiveHint: false;" in description
    assert not result.is_error, texts(result)
    names = output(result)[0].split(",")
    assert len(names) == 12 and "mcp__everything__simulate_research_query" not in names
    assert output(result)[1] == "called echo"
    assert "leaving out tool `simulate-research-query`" in log
    assert 'execution.taskSupport is "required"' in log
