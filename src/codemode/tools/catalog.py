"""The data behind a cell's ``catalog`` global (docs/model-tools.md): each tool's reference entry.

``catalog.describe(name)`` answers with the very entry the ``exec`` description would show for that
tool (:func:`codemode.tools.description.tool_reference_blocks`); ``catalog.search`` ranks the
identifiers and descriptions the cell already has. Both run inside the cell, on data given at boot,
so they cost no host round trip, no tool call and never create a pending frontier.

:func:`reference_json` renders the entries once per tool set: a session admits many cells with the
same tuple of tools (``CodeModeTools`` passes one tuple to every cell), so the JSON text is cached
by the identity of that tuple; tools that arrive afresh with each cell (over the wire) are found
by a digest of their content instead (name, description, kind, namespace and schemas, in their
own key order, since the order of properties shows). Each cache keeps :data:`CACHE_ENTRIES`
entries, the least recently used dropped first. Rendering 5,000 tools takes about 0.3 s, the
digest about a sixth of it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Final

from codemode.model import ToolDefinition
from codemode.tools.description import tool_reference_blocks

__all__ = ["CACHE_ENTRIES", "reference_json"]

CACHE_ENTRIES: Final = 16
"""How many tool tuples keep their rendered entries."""

_cache: OrderedDict[int, tuple[tuple[ToolDefinition, ...], str]] = OrderedDict()
_by_content: OrderedDict[bytes, str] = OrderedDict()
_lock = threading.Lock()


def _render(tools: Sequence[ToolDefinition]) -> str:
    return json.dumps(tool_reference_blocks(tools), ensure_ascii=False, separators=(",", ":"))


def _digest(tools: Sequence[ToolDefinition]) -> bytes | None:
    content = [
        (t.name, t.description, str(t.kind), t.namespace, t.input_schema, t.output_schema)
        for t in tools
    ]
    try:
        text = json.dumps(content, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return None  # not plain JSON: rendered without the content cache
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=20).digest()


def _remember(cache: OrderedDict[Any, Any], key: Any, value: Any) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > CACHE_ENTRIES:
        cache.popitem(last=False)


def reference_json(tools: tuple[ToolDefinition, ...]) -> str:
    """JSON text of an array with the reference entry of each tool of ``tools``, in order.

    Cached by the identity of ``tools`` (the tuple is kept alive by the cache, so an id is never
    reused for another tuple while it is cached), then by a digest of its content."""
    key = id(tools)
    with _lock:
        entry = _cache.get(key)
        if entry is not None and entry[0] is tools:
            _cache.move_to_end(key)
            return entry[1]
    digest = _digest(tools)
    text = None
    if digest is not None:
        with _lock:
            text = _by_content.get(digest)
            if text is not None:
                _by_content.move_to_end(digest)
    if text is None:
        text = _render(tools)
    with _lock:
        _remember(_cache, key, (tools, text))
        if digest is not None:
            _remember(_by_content, digest, text)
    return text
