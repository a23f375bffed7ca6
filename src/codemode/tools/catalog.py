"""The data behind a cell's ``catalog`` global (SPEC 9.6): each tool's reference entry.

``catalog.describe(name)`` answers with the very entry the ``exec`` description would show for that
tool (:func:`codemode.tools.description.tool_reference_blocks`); ``catalog.search`` ranks the
identifiers and descriptions the cell already has. Both run inside the cell, on data given at boot,
so they cost no host round trip, no tool call and never create a pending frontier.

:func:`reference_json` renders the entries once per tool set: a session admits many cells with the
same tuple of tools (``CodeModeTools`` passes one tuple to every cell), so the JSON text is cached
by the identity of that tuple (:data:`CACHE_ENTRIES` tuples, least recently used dropped first).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Final

from codemode.model import ToolDefinition
from codemode.tools.description import tool_reference_blocks

__all__ = ["CACHE_ENTRIES", "reference_json"]

CACHE_ENTRIES: Final = 16
"""How many tool tuples keep their rendered entries."""

_cache: OrderedDict[int, tuple[tuple[ToolDefinition, ...], str]] = OrderedDict()
_lock = threading.Lock()


def _render(tools: Sequence[ToolDefinition]) -> str:
    return json.dumps(tool_reference_blocks(tools), ensure_ascii=False, separators=(",", ":"))


def reference_json(tools: tuple[ToolDefinition, ...]) -> str:
    """JSON text of an array with the reference entry of each tool of ``tools``, in order.

    Cached by the identity of ``tools`` (the tuple is kept alive by the cache, so an id is never
    reused for another tuple while it is cached)."""
    key = id(tools)
    with _lock:
        entry = _cache.get(key)
        if entry is not None and entry[0] is tools:
            _cache.move_to_end(key)
            return entry[1]
    text = _render(tools)
    with _lock:
        _cache[key] = (tools, text)
        _cache.move_to_end(key)
        while len(_cache) > CACHE_ENTRIES:
            _cache.popitem(last=False)
    return text
