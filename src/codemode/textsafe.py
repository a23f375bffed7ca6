"""Valid Unicode for everything codemode sends to a client.

A JavaScript string may hold a *lone surrogate* (``"\\ud800"``): a UTF-16 code unit that is not
half of a pair. Python keeps it in a ``str``, but it has no UTF-8 encoding, strict JSON parsers
and the MCP SDK refuse it, and a client cannot show it. Every front makes the strings it sends
valid at one boundary, with the helpers of this module: each lone surrogate becomes U+FFFD
(``"\\ufffd"``, the replacement character); everything else, properly paired surrogates included,
is kept as is.

- the wire protocol (``codemode serve``, stdio and WebSocket): :func:`codemode.protocol.rpc.encode`,
  through which every message is encoded;
- ``exec`` / ``wait`` results (:class:`~codemode.tools.ToolResult`): built with valid items;
- ``codemode mcp``: its results are ``ToolResult``\\ s; a cell's ``notify`` text is made valid where
  it becomes an MCP notification.
"""

from __future__ import annotations

import re
from typing import Any, Final

__all__ = ["REPLACEMENT", "valid_json", "valid_text"]

REPLACEMENT: Final = "\ufffd"
"""What a lone surrogate becomes."""

_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD (paired ones are combined)."""
    if _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def valid_json(value: Any) -> Any:
    """A JSON value (dicts, lists, tuples, strings, numbers, ...) with every string, keys
    included, made valid by :func:`valid_text`; returns ``value`` itself when nothing changes."""
    if isinstance(value, str):
        return valid_text(value)
    if isinstance(value, dict):
        changed = False
        out: dict[Any, Any] = {}
        for key, item in value.items():
            new_key = valid_text(key) if isinstance(key, str) else key
            new_item = valid_json(item)
            changed = changed or new_key is not key or new_item is not item
            out[new_key] = new_item
        return out if changed else value
    if isinstance(value, list | tuple):
        items = [valid_json(item) for item in value]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        return items if isinstance(value, list) else tuple(items)
    return value
