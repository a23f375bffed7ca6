"""The ``{"mcpServers": {...}}`` configuration of ``codemode mcp`` (docs/protocol.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from codemode.mcp.config import (
    DEFAULT_STARTUP_TIMEOUT,
    DEFAULT_TOOL_TIMEOUT,
    ConfigError,
    HttpServerConfig,
    StdioServerConfig,
    load_config,
    parse_config,
)


def test_command_and_url_entries_in_file_order(tmp_path: Path) -> None:
    path = tmp_path / "mcp.json"
    path.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "gh": {
                        "command": "npx",
                        "args": ["-y", "server-github"],
                        "env": {"GITHUB_TOKEN": "t"},
                        "alwaysAllow": ["x"],
                    },
                    "docs": {
                        "type": "http",
                        "url": "https://example.com/mcp",
                        "headers": {"Authorization": "Bearer x"},
                        "tool_timeout_sec": 5,
                    },
                    "off": {"command": "x", "disabled": True},
                }
            }
        )
    )
    gh, docs = load_config(path)
    assert gh == StdioServerConfig(
        name="gh",
        command="npx",
        args=("-y", "server-github"),
        env={"GITHUB_TOKEN": "t"},
        startup_timeout=DEFAULT_STARTUP_TIMEOUT,
        tool_timeout=DEFAULT_TOOL_TIMEOUT,
    )
    assert docs == HttpServerConfig(
        name="docs",
        url="https://example.com/mcp",
        headers={"Authorization": "Bearer x"},
        tool_timeout=5.0,
    )


def test_defaults_of_a_bare_command() -> None:
    (entry,) = parse_config({"mcpServers": {"t": {"command": "srv"}}})
    assert isinstance(entry, StdioServerConfig)
    assert (entry.args, dict(entry.env), entry.cwd) == ((), {}, None)
    assert parse_config({"mcpServers": {}}) == ()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], 'expected a JSON object with "mcpServers", got an array'),
        ({}, 'missing the "mcpServers" object'),
        ({"mcpServers": [1]}, '"mcpServers" must be an object'),
        ({"mcpServers": {"a": "npx"}}, 'server "a": expected an object, got a string'),
        ({"mcpServers": {"": {"command": "x"}}}, "a server name is empty"),
        ({"mcpServers": {"a": {}}}, 'needs exactly one of "command"'),
        ({"mcpServers": {"a": {"command": "x", "url": "http://h"}}}, "needs exactly one of"),
        ({"mcpServers": {"a": {"command": ""}}}, '"command" must be a non-empty string'),
        ({"mcpServers": {"a": {"command": "x", "args": "y"}}}, '"args" must be an array'),
        ({"mcpServers": {"a": {"command": "x", "args": [1]}}}, '"args" must be an array'),
        ({"mcpServers": {"a": {"command": "x", "env": {"K": 1}}}}, '"env" must be an object'),
        ({"mcpServers": {"a": {"command": "x", "headers": {}}}}, '"headers" does not fit'),
        ({"mcpServers": {"a": {"url": "ftp://h"}}}, '"url" must be an http:// or https:// URL'),
        ({"mcpServers": {"a": {"url": "http://h", "args": []}}}, '"args" does not fit'),
        ({"mcpServers": {"a": {"url": "http://h", "type": "sse"}}}, "is not supported"),
        ({"mcpServers": {"a": {"url": "http://h", "type": "stdio"}}}, 'does not fit a "url"'),
        ({"mcpServers": {"a": {"command": "x", "type": "http"}}}, 'does not fit a "command"'),
        ({"mcpServers": {"a": {"command": "x", "disabled": "no"}}}, '"disabled" must be true'),
        (
            {"mcpServers": {"a": {"command": "x", "tool_timeout_sec": 0}}},
            '"tool_timeout_sec" must be a positive number',
        ),
        (
            {"mcpServers": {"a": {"command": "x", "startup_timeout_sec": True}}},
            '"startup_timeout_sec" must be a positive number',
        ),
    ],
)
def test_bad_configurations_name_the_problem(data: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "cfg.json")
    assert message in str(info.value)
    assert str(info.value).startswith("MCP config cfg.json")


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"mcpServers": {')
    with pytest.raises(ConfigError, match=r"not valid JSON: .* \(line 1, column 17\)"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read it"):
        load_config(tmp_path)
