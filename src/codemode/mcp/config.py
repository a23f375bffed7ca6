"""The upstream configuration of ``codemode mcp`` and ``codemode run --mcp-config``
(docs/protocol.md).

The file is the JSON that MCP clients already use::

    {"mcpServers": {
        "gh":   {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-github"],
                 "env": {"GITHUB_TOKEN": "..."}},
        "docs": {"url": "https://example.com/mcp", "headers": {"Authorization": "Bearer ..."}}
    }}

A ``command`` entry is a stdio server (``args``: list of strings, ``env``: string map added to the
SDK's minimal child environment, ``cwd``: optional working directory); a ``url`` entry is a
streamable HTTP server (``headers``: string map). Decided here, where the spec is silent:

- An entry must have exactly one of ``command`` and ``url``. An optional ``type`` must agree:
  ``"stdio"`` for ``command``; ``"http"``, ``"streamable-http"`` or ``"streamableHttp"`` for
  ``url``. ``"sse"`` (the superseded HTTP transport) is refused with a clear message.
- ``"disabled": true`` leaves the server out (as several MCP clients do).
- Two optional timeouts, in seconds, named as in codex's configuration:
  ``startup_timeout_sec`` (connect, initialize and list the tools; default
  :data:`DEFAULT_STARTUP_TIMEOUT`) and ``tool_timeout_sec`` (one ``tools/call``; default
  :data:`DEFAULT_TOOL_TIMEOUT`). Both must be positive finite numbers.
- Other keys (``alwaysAllow``, ``autoApprove``, ...) belong to other clients and are ignored.
- Server names must be non-empty; a nested tool is named ``mcp__{server}__{tool}``.

Every problem is a :class:`ConfigError` whose message names the file and the offending entry.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

__all__ = [
    "DEFAULT_STARTUP_TIMEOUT",
    "DEFAULT_TOOL_TIMEOUT",
    "ConfigError",
    "HttpServerConfig",
    "StdioServerConfig",
    "UpstreamConfig",
    "load_config",
    "parse_config",
]

logger = logging.getLogger("codemode.mcp")

DEFAULT_STARTUP_TIMEOUT: Final = 30.0
"""Seconds an upstream has to start, answer ``initialize`` and list its tools."""
DEFAULT_TOOL_TIMEOUT: Final = 60.0
"""Seconds one upstream ``tools/call`` may take before the nested call is rejected."""

_HTTP_TYPES: Final = frozenset({"http", "streamable-http", "streamableHttp", "streamable_http"})
_KNOWN_KEYS: Final = frozenset(
    {
        "command",
        "args",
        "env",
        "cwd",
        "url",
        "headers",
        "type",
        "disabled",
        "startup_timeout_sec",
        "tool_timeout_sec",
    }
)


class ConfigError(ValueError):
    """The upstream configuration file is missing, unreadable or malformed; ``str`` says why."""


@dataclass(frozen=True)
class StdioServerConfig:
    """An upstream MCP server run as a subprocess speaking MCP on its stdin/stdout."""

    name: str
    command: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT
    tool_timeout: float = DEFAULT_TOOL_TIMEOUT


@dataclass(frozen=True)
class HttpServerConfig:
    """An upstream MCP server reached over streamable HTTP."""

    name: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT
    tool_timeout: float = DEFAULT_TOOL_TIMEOUT


UpstreamConfig = StdioServerConfig | HttpServerConfig


def load_config(path: str | Path) -> tuple[UpstreamConfig, ...]:
    """Read and validate the ``{"mcpServers": {...}}`` file at ``path``.

    Returns the enabled servers in file order. Raises :class:`ConfigError` when the file cannot be
    read, is not JSON, or does not have the shape described in the module docstring.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"MCP config {source}: file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        detail = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise ConfigError(f"MCP config {source}: cannot read it: {detail}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"MCP config {source}: not valid JSON: {error.msg} "
            f"(line {error.lineno}, column {error.colno})"
        ) from None
    except RecursionError:
        raise ConfigError(f"MCP config {source}: not valid JSON: nested too deeply") from None
    return parse_config(data, source)


def parse_config(data: Any, source: str = "<config>") -> tuple[UpstreamConfig, ...]:
    """Validate an already-parsed configuration object; ``source`` names it in error messages.

    Returns the enabled servers in the object's order; raises :class:`ConfigError`.
    """
    if not isinstance(data, dict):
        raise ConfigError(
            f'MCP config {source}: expected a JSON object with "mcpServers", got {_json_type(data)}'
        )
    servers = data.get("mcpServers")
    if servers is None:
        raise ConfigError(f'MCP config {source}: missing the "mcpServers" object')
    if not isinstance(servers, dict):
        raise ConfigError(
            f'MCP config {source}: "mcpServers" must be an object mapping server names to '
            f"server entries, got {_json_type(servers)}"
        )
    result: list[UpstreamConfig] = []
    for name, entry in servers.items():
        parsed = _parse_entry(source, name, entry)
        if parsed is not None:
            result.append(parsed)
    return tuple(result)


def _parse_entry(source: str, name: str, entry: Any) -> UpstreamConfig | None:
    where = f"MCP config {source}: server {json.dumps(name)}"
    if not name:
        raise ConfigError(f"MCP config {source}: a server name is empty")
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected an object, got {_json_type(entry)}")
    disabled = entry.get("disabled", False)
    if not isinstance(disabled, bool):
        raise ConfigError(f'{where}: "disabled" must be true or false')
    for key in entry:
        if key not in _KNOWN_KEYS:
            logger.debug("%s: ignoring the key %r", where, key)
    has_command = "command" in entry
    has_url = "url" in entry
    if has_command == has_url:
        raise ConfigError(
            f'{where}: needs exactly one of "command" (a stdio server) and "url" '
            "(a streamable HTTP server)"
        )
    kind = entry.get("type")
    if kind is not None and not isinstance(kind, str):
        raise ConfigError(f'{where}: "type" must be a string')
    if kind == "sse":
        raise ConfigError(
            f'{where}: "type": "sse" (the HTTP+SSE transport) is not supported; '
            "use a streamable HTTP endpoint"
        )
    startup_timeout = _timeout(where, entry, "startup_timeout_sec", DEFAULT_STARTUP_TIMEOUT)
    tool_timeout = _timeout(where, entry, "tool_timeout_sec", DEFAULT_TOOL_TIMEOUT)
    if has_command:
        if kind is not None and kind != "stdio":
            raise ConfigError(f'{where}: "type" {json.dumps(kind)} does not fit a "command" entry')
        for key in ("url", "headers"):
            if key in entry:
                raise ConfigError(f'{where}: "{key}" does not fit a "command" entry')
        command = entry["command"]
        if not isinstance(command, str) or not command.strip():
            raise ConfigError(f'{where}: "command" must be a non-empty string')
        args = entry.get("args", [])
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ConfigError(f'{where}: "args" must be an array of strings')
        env = _string_map(where, entry, "env")
        cwd = entry.get("cwd")
        if cwd is not None and (not isinstance(cwd, str) or not cwd):
            raise ConfigError(f'{where}: "cwd" must be a non-empty string')
        config: UpstreamConfig = StdioServerConfig(
            name=name,
            command=command,
            args=tuple(args),
            env=env,
            cwd=cwd,
            startup_timeout=startup_timeout,
            tool_timeout=tool_timeout,
        )
    else:
        if kind is not None and kind not in _HTTP_TYPES:
            raise ConfigError(f'{where}: "type" {json.dumps(kind)} does not fit a "url" entry')
        for key in ("command", "args", "env", "cwd"):
            if key in entry:
                raise ConfigError(f'{where}: "{key}" does not fit a "url" entry')
        url = entry["url"]
        if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
            raise ConfigError(f'{where}: "url" must be an http:// or https:// URL')
        config = HttpServerConfig(
            name=name,
            url=url,
            headers=_string_map(where, entry, "headers"),
            startup_timeout=startup_timeout,
            tool_timeout=tool_timeout,
        )
    if disabled:
        logger.info("%s is disabled; skipping it", where)
        return None
    return config


def _string_map(where: str, entry: dict[str, Any], key: str) -> dict[str, str]:
    value = entry.get(key, {})
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ConfigError(f'{where}: "{key}" must be an object of string values')
    return dict(value)


def _timeout(where: str, entry: dict[str, Any], key: str, default: float) -> float:
    value = entry.get(key)
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(f'{where}: "{key}" must be a positive number of seconds')
    return float(value)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
