"""``codemode run FILE --mcp-config PATH`` and ``codemode mcp``'s command line: real subprocesses
for the runs, in process for usage errors and the result conversion (docs/protocol.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mcp.types as mcp_types
import pytest
from mcp_support import REPO, fake_entry, time_entry, write_config

from codemode import ImageDetail, ImageItem, TextItem
from codemode.cli import main
from codemode.mcp.server import parse_http_address, to_call_tool_result
from codemode.tools import ToolResult


def codemode(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "codemode", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_run_with_mcp_config_uses_the_upstream_tools(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "mcp.json",
        {"fake": fake_entry(), "time": time_entry(), "broken": fake_entry("--fail-start")},
    )
    cell = tmp_path / "cell.js"
    cell.write_text(
        "const [sum, now] = await Promise.all([tools.mcp__fake__add({a: 2, b: 3}),"
        ' tools.mcp__time__get_current_time({timezone: "UTC"})]);'
        'notify("added"); text(sum.structuredContent.sum); text(now.structuredContent.timezone);'
        "text(typeof tools.echo);"
    )
    r = codemode("run", str(cell), "--mcp-config", str(config))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "5\nUTC\nundefined\n"
    assert "notify: added" in r.stderr
    assert "skipping MCP server `broken`" in r.stderr

    fake_only = write_config(tmp_path / "fake.json", {"fake": fake_entry()})
    r = codemode(
        "run",
        "-",
        "--mcp-config",
        str(fake_only),
        stdin='const r = await tools.mcp__fake__fail({message: "nope"});'
        "throw new Error(r.content[0].text);",
    )
    assert r.returncode == 1
    assert "Error: nope" in r.stderr


def test_bad_configs_and_addresses_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cell = tmp_path / "cell.js"
    cell.write_text("text(1)")
    missing = str(tmp_path / "missing.json")
    assert main(["run", str(cell), "--mcp-config", missing]) == 2
    assert f"codemode: MCP config {missing}: file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"mcpServers": {"x": {"url": "ftp://nope"}}}')
    assert main(["mcp", "--config", str(bad)]) == 2
    assert '"url" must be an http:// or https:// URL' in capsys.readouterr().err
    empty = write_config(tmp_path / "empty.json", {})
    for address in ("localhost", "h:0", "h:70000"):
        assert main(["mcp", "--config", str(empty), "--http", address]) == 2
        assert "codemode: --http " in capsys.readouterr().err


def test_http_addresses() -> None:
    assert parse_http_address(":8080") == ("127.0.0.1", 8080)
    assert parse_http_address("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_http_address("[::1]:9000") == ("::1", 9000)


def test_mcp_over_stdio_exits_0_when_stdin_closes(tmp_path: Path) -> None:
    # stdout carries protocol messages only; logs go to stderr.
    config = write_config(tmp_path / "mcp.json", {"fake": fake_entry()})
    r = codemode("mcp", "--config", str(config), stdin="")
    assert (r.returncode, r.stdout) == (0, ""), r.stderr
    assert "MCP server `fake` started with 9 tools" in r.stderr


def test_results_become_mcp_content() -> None:
    result = ToolResult(
        items=(
            TextItem("Script completed\nWall time 0.0 seconds\nOutput:\n"),
            ImageItem("data:image/png;base64,AAAA", ImageDetail.LOW),
            ImageItem("data:image/svg+xml,%3Csvg%3E"),
        ),
        is_error=True,
    )
    converted = to_call_tool_result(result)
    assert converted.is_error
    text, png, svg = converted.content
    assert isinstance(text, mcp_types.TextContent)
    assert isinstance(png, mcp_types.ImageContent) and isinstance(svg, mcp_types.ImageContent)
    assert (png.data, png.mime_type, png.meta) == (
        "AAAA",
        "image/png",
        {"codex/imageDetail": "low"},
    )
    assert (svg.data, svg.mime_type, svg.meta) == ("PHN2Zz4=", "image/svg+xml", None)
