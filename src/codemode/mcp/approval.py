"""Approvals in ``codemode mcp``: which nested calls need one, and how the MCP client is asked.

The configuration file may carry, next to ``mcpServers``::

    "approval": {"tools": ["mcp__fs__write_*", "mcp__git__git_commit"], "destructive": true}

- ``tools``: glob patterns (``fnmatch``, case-sensitive: ``*``, ``?``, ``[...]``) over nested tool
  names ``mcp__{server}__{tool}``; a matching tool needs approval.
- ``destructive``: when ``true``, so does every tool whose upstream annotations say
  ``destructiveHint: true`` (an explicit ``true``; a tool without annotations is not assumed
  destructive, and ``readOnlyHint: true`` wins).

Each call of such a tool is held by the session until it is decided (its description in the
``exec`` tool says so, :data:`APPROVAL_NOTE`). The server decides it inside
the ``exec``/``wait`` request that meets it: when the MCP client declared the ``elicitation``
capability it is asked (a form with no fields: accept approves, decline or cancel rejects);
otherwise, or when asking fails, the call is rejected with :data:`UNAVAILABLE_REASON`, so the
cell's promise rejects with a message saying approval was unavailable. See ``docs/approvals.md``.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import mcp.types as mcp_types
from mcp.server.session import ServerSession

from codemode.mcp.config import ConfigError
from codemode.mcp.upstream import UpstreamSet, nested_tool_name
from codemode.model import ApprovalRequest, ToolDefinition
from codemode.textsafe import valid_text

__all__ = [
    "APPROVAL_NOTE",
    "DECLINED_REASON",
    "UNAVAILABLE_REASON",
    "ApprovalPolicy",
    "ask_by_elicitation",
    "load_approval_policy",
    "parse_approval_policy",
]

logger = logging.getLogger("codemode.mcp")

UNAVAILABLE_REASON: Final = (
    "approval was unavailable: this call needs the user's approval and the MCP client cannot "
    "ask for it (no elicitation support), so it was not run"
)
DECLINED_REASON: Final = "the user declined this call"
CANCELLED_REASON: Final = "the user dismissed the approval of this call"
APPROVAL_NOTE: Final = (
    "Each call of this tool waits for the user's approval; a refused call rejects with the "
    "user's reason."
)
_MAX_SHOWN_INPUT: Final = 2000


@dataclass(frozen=True)
class ApprovalPolicy:
    """Which nested tools need approval (see the module docstring). The default needs none."""

    tools: tuple[str, ...] = ()
    destructive: bool = False

    @property
    def active(self) -> bool:
        return bool(self.tools) or self.destructive

    def needs_approval(self, name: str, annotations: mcp_types.ToolAnnotations | None) -> bool:
        """Whether calls of the nested tool ``name`` with these upstream annotations are held."""
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in self.tools):
            return True
        if self.destructive and annotations is not None:
            return annotations.destructive_hint is True and annotations.read_only_hint is not True
        return False

    def mark(self, upstreams: UpstreamSet) -> tuple[ToolDefinition, ...]:
        """The upstream tools, those that need approval with ``needs_approval=True``."""
        tools = upstreams.tools
        if not self.active:
            return tools
        annotations: dict[str, mcp_types.ToolAnnotations | None] = {}
        for upstream in upstreams.upstreams:
            for tool in upstream.tools:
                annotations.setdefault(nested_tool_name(upstream.name, tool.name), tool.annotations)
        return tuple(
            _gated(t) if self.needs_approval(t.name, annotations.get(t.name)) else t for t in tools
        )


def _gated(tool: ToolDefinition) -> ToolDefinition:
    """``tool`` needing approval, its description saying so (the model then expects a wait
    and a possible refusal)."""
    description = f"{tool.description}\n\n{APPROVAL_NOTE}" if tool.description else APPROVAL_NOTE
    return replace(tool, needs_approval=True, description=description)


def parse_approval_policy(data: Any, source: str = "<config>") -> ApprovalPolicy:
    """The ``approval`` member of a parsed configuration (absent: no approvals).

    Raises :class:`~codemode.mcp.config.ConfigError` naming ``source`` when it is malformed.
    """
    if isinstance(data, dict) and "approve" in data and "approval" not in data:
        logger.warning(
            'MCP config %s: ignoring "approve"; write "approval": {"tools": [...]} to require '
            "approval of nested tools",
            source,
        )
    if not isinstance(data, dict) or "approval" not in data:
        return ApprovalPolicy()
    where = f'MCP config {source}: "approval"'
    value = data["approval"]
    if not isinstance(value, dict):
        raise ConfigError(f'{where} must be an object like {{"tools": ["mcp__fs__write_*"]}}')
    unknown = sorted(set(value) - {"tools", "destructive"})
    if unknown:
        raise ConfigError(f"{where}: unknown keys {', '.join(map(json.dumps, unknown))}")
    patterns = value.get("tools", [])
    if not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns):
        raise ConfigError(f'{where}: "tools" must be an array of non-empty glob patterns')
    destructive = value.get("destructive", False)
    if not isinstance(destructive, bool):
        raise ConfigError(f'{where}: "destructive" must be true or false')
    return ApprovalPolicy(tuple(patterns), destructive)


def load_approval_policy(path: str | Path) -> ApprovalPolicy:
    """The approval policy of the configuration file at ``path`` (read after
    :func:`~codemode.mcp.config.load_config` accepted it); raises ``ConfigError``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ConfigError(f"MCP config {path}: cannot read it: {error}") from None
    return parse_approval_policy(data, str(path))


def _shown_input(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) > _MAX_SHOWN_INPUT:
        text = text[:_MAX_SHOWN_INPUT] + "…"
    return text


def supports_elicitation(session: ServerSession) -> bool:
    """Whether the MCP client declared the ``elicitation`` capability."""
    wanted = mcp_types.ClientCapabilities(elicitation=mcp_types.ElicitationCapability())
    try:
        return session.check_client_capability(wanted)
    except Exception:  # no recorded capabilities (e.g. a sessionless request)
        return False


async def ask_by_elicitation(
    session: ServerSession,
    related_request_id: mcp_types.RequestId | None,
    request: ApprovalRequest,
) -> bool | str:
    """Ask the MCP client's user to approve ``request``: ``True`` when they accept, else the
    reason the call is rejected with (declined, dismissed, or approval unavailable)."""
    if not supports_elicitation(session):
        logger.info(
            "cell %s: %s of %s rejected: the client has no elicitation",
            request.cell_id,
            request.call_id,
            request.tool.name,
            extra={"cell_id": request.cell_id},
        )
        return UNAVAILABLE_REASON
    message = valid_text(  # a cell's input may hold lone surrogates (codemode.textsafe)
        f"Allow the tool call {request.tool.name}({_shown_input(request.input)})? "
        f"(code mode cell {request.cell_id}, call {request.call_id})"
    )
    try:
        result = await session.elicit_form(
            message, {"type": "object", "properties": {}}, related_request_id=related_request_id
        )
    except Exception as error:
        logger.warning(
            "cell %s: asking to approve %s failed: %s",
            request.cell_id,
            request.call_id,
            error,
            extra={"cell_id": request.cell_id},
        )
        return f"{UNAVAILABLE_REASON} (asking the client failed: {error})"
    if result.action == "accept":
        return True
    return DECLINED_REASON if result.action == "decline" else CANCELLED_REASON
