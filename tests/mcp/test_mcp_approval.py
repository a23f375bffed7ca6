"""Approvals in ``codemode mcp``: the ``approval`` config key, and the official MCP client asked by
elicitation (accepting, declining) or, without elicitation, the call rejected as unavailable."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import mcp.types as mcp_types
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_support import REPO, codemode_command, fake_entry, free_port, output, texts
from test_mcp_http import wait_for_port

from codemode.cli import RUN_APPROVAL_REASON
from codemode.mcp.approval import (
    APPROVAL_NOTE,
    DECLINED_REASON,
    UNAVAILABLE_REASON,
    ApprovalPolicy,
    parse_approval_policy,
)
from codemode.mcp.config import ConfigError

SOURCE = """
const sum = await tools.mcp__fake__add({a: 2, b: 3});
text(`sum ${sum.structuredContent.sum}`);
text((await tools.mcp__fake__echo({text: "not gated"})).structuredContent.text);
"""
GUARDED = """
try { await tools.mcp__fake__add({a: 1, b: 1}); text("ran") } catch (e) { text(e.message) }
"""


def write(path: Path, approval: Any) -> Path:
    path.write_text(
        json.dumps({"mcpServers": {"fake": fake_entry()}, "approval": approval}), encoding="utf-8"
    )
    return path


@asynccontextmanager
async def client(config: Path, elicitation: Any = None) -> AsyncIterator[ClientSession]:
    async with (
        stdio_client(codemode_command("mcp", "--config", str(config))) as (read, write_stream),
        ClientSession(read, write_stream, elicitation_callback=elicitation) as session,
    ):
        await session.initialize()
        yield session


# ---------------------------------------------------------------------- the policy


def test_policy_from_config() -> None:
    assert parse_approval_policy({"mcpServers": {}}) == ApprovalPolicy()
    policy = parse_approval_policy(
        {"approval": {"tools": ["mcp__fs__write_*"], "destructive": True}}
    )
    assert policy == ApprovalPolicy(("mcp__fs__write_*",), True)
    for bad, message in (
        ([], "must be an object"),
        ({"tools": "mcp__*"}, '"tools" must be an array'),
        ({"tools": [""]}, '"tools" must be an array'),
        ({"destructive": "yes"}, '"destructive" must be true or false'),
        ({"approve": []}, 'unknown keys "approve"'),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_approval_policy({"approval": bad}, "x.json")


def test_policy_marks_by_pattern_and_destructive_hint() -> None:
    policy = ApprovalPolicy(("mcp__fs__write_*", "mcp__git__git_commit"), destructive=True)
    hints = mcp_types.ToolAnnotations
    assert policy.needs_approval("mcp__fs__write_file", None)
    assert policy.needs_approval("mcp__git__git_commit", None)
    assert not policy.needs_approval("mcp__fs__read_file", None)
    assert not policy.needs_approval("mcp__FS__write_file", None)  # case-sensitive
    assert policy.needs_approval("mcp__x__drop", hints(destructive_hint=True))
    assert not policy.needs_approval("mcp__x__drop", hints(destructive_hint=False))
    assert not policy.needs_approval(
        "mcp__x__get", hints(read_only_hint=True, destructive_hint=True)
    )
    assert not policy.needs_approval("mcp__x__unknown", hints())
    only_patterns = ApprovalPolicy(("mcp__fs__*",))
    assert not only_patterns.needs_approval("mcp__x__drop", hints(destructive_hint=True))


def test_a_bad_approval_key_is_a_usage_error(tmp_path: Path) -> None:
    from codemode.mcp.server import mcp_main
    from codemode.model import CellLimits

    config = write(tmp_path / "mcp.json", {"tools": 3})
    assert mcp_main(str(config), None, CellLimits()) == 2


# ---------------------------------------------------------------------- end to end


async def test_an_elicitation_that_accepts_runs_the_call(tmp_path: Path) -> None:
    asked: list[mcp_types.ElicitRequestParams] = []

    async def accept(context: Any, params: mcp_types.ElicitRequestParams) -> mcp_types.ElicitResult:
        asked.append(params)
        return mcp_types.ElicitResult(action="accept", content={})

    config = write(tmp_path / "mcp.json", {"tools": ["mcp__fake__add"]})
    async with client(config, accept) as session:
        (exec_tool, _) = (await session.list_tools()).tools
        result = await session.call_tool("exec", {"code": SOURCE})
    assert texts(result)[0].startswith("Script completed"), texts(result)
    assert output(result) == ["sum 5", "not gated"]
    described = exec_tool.description or ""
    add_section = described[described.index("mcp__fake__add") :]
    assert APPROVAL_NOTE in add_section.split("mcp__fake__echo")[0]
    assert len(asked) == 1
    assert isinstance(asked[0], mcp_types.ElicitRequestFormParams)
    assert asked[0].message.startswith('Allow the tool call mcp__fake__add({"a":2,"b":3})?')


async def test_an_elicitation_that_declines_rejects_the_call(tmp_path: Path) -> None:
    async def decline(
        context: Any, params: mcp_types.ElicitRequestParams
    ) -> mcp_types.ElicitResult:
        return mcp_types.ElicitResult(action="decline")

    config = write(tmp_path / "mcp.json", {"tools": ["mcp__fake__a*"]})
    async with client(config, decline) as session:
        result = await session.call_tool("exec", {"code": GUARDED})
    assert texts(result)[0].startswith("Script completed"), texts(result)
    assert output(result) == [DECLINED_REASON]


async def test_a_client_without_elicitation_gets_the_call_rejected(tmp_path: Path) -> None:
    config = write(tmp_path / "mcp.json", {"tools": ["mcp__fake__add"]})
    async with client(config) as session:
        result = await session.call_tool("exec", {"code": GUARDED})
        again = await session.call_tool("exec", {"code": 'text("next cell fine")'})
    assert output(result) == [UNAVAILABLE_REASON]
    assert "approval was unavailable" in UNAVAILABLE_REASON
    assert output(again) == ["next cell fine"]


def test_codemode_run_rejects_held_calls(tmp_path: Path) -> None:
    config = write(tmp_path / "mcp.json", {"tools": ["mcp__fake__add"]})
    cell = tmp_path / "cell.js"
    cell.write_text(
        GUARDED + 'text((await tools.mcp__fake__echo({text: "ok"})).structuredContent.text)'
    )
    for extra in ([], ["--pausable"]):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "codemode",
                "run",
                str(cell),
                "--mcp-config",
                str(config),
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert RUN_APPROVAL_REASON in done.stdout, done.stdout
        assert done.stdout.rstrip().endswith("ok")
        assert "rejected tool-1 mcp__fake__add: no approval" in done.stderr


async def test_elicitation_over_streamable_http(tmp_path: Path) -> None:
    asked: list[str] = []

    async def accept(context: Any, params: mcp_types.ElicitRequestParams) -> mcp_types.ElicitResult:
        asked.append(params.message)
        return mcp_types.ElicitResult(action="accept", content={})

    config = write(tmp_path / "mcp.json", {"tools": ["mcp__fake__add"]})
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "codemode", "mcp", "--config", str(config), "--http", f"127.0.0.1:{port}"),
        cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_for_port(port, process)
        async with (
            streamable_http_client(f"http://127.0.0.1:{port}/mcp") as (read, write_stream),
            ClientSession(read, write_stream, elicitation_callback=accept) as session,
        ):
            await session.initialize()
            result = await session.call_tool("exec", {"code": SOURCE})
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            await process.wait()
    assert output(result) == ["sum 5", "not gated"], texts(result)
    assert len(asked) == 1 and "mcp__fake__add" in asked[0]
