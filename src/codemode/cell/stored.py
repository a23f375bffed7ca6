"""A session's stored values, kept as JSON text (docs/sessions.md ``max_stored_bytes``).

The session map is never held as Python objects: each entry is kept as the JSON text the cell
produced (``"key":value``), so giving a cell its snapshot costs one string join (done once per
commit, and never a deep copy on the event loop), the cell parses that text itself, and the
budget is counted in exact UTF-8 bytes of the map's JSON.

A :class:`StoredSnapshot` is immutable: a commit builds a new one, so a cell admitted earlier keeps
seeing the snapshot it was given.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["StoredBudgetExceeded", "StoredSnapshot", "entry_bytes", "key_json"]

_key_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def key_json(key: str) -> str:
    """The JSON text of a stored key."""
    return _key_encoder.encode(key)


def entry_bytes(key: str, value_json: str) -> int:
    """What one entry costs against ``max_stored_bytes``: the UTF-8 bytes it adds to the JSON
    of the whole map (``"key":value`` and its separating comma)."""
    return len(key_json(key).encode("utf-8", "surrogatepass")) + 2 + _utf8(value_json)


def _utf8(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


class StoredBudgetExceeded(Exception):
    """Merging writes would pass the session's ``max_stored_bytes``."""


def _bulk_bytes(writes: Mapping[str, str]) -> int:
    """What ``writes`` cost as entries, counted with C-speed joins (no per-key Python work)."""
    n = len(writes)
    if n == 0:
        return 0
    keys = _utf8(_key_encoder.encode(list(writes))) - 2 - (n - 1)
    values = _utf8(",".join(writes.values())) - (n - 1)
    return keys + values + 2 * n


class StoredSnapshot(Mapping[str, Any]):
    """One immutable version of a session's stored values.

    As a ``Mapping`` it decodes a value on each lookup (a fresh copy every time); engines use
    :meth:`json_text` and :meth:`value_json` instead.
    """

    __slots__ = ("_entries", "_json", "total_bytes")

    def __init__(self, entries: dict[str, str] | None = None, total_bytes: int = 0) -> None:
        self._entries: dict[str, str] = entries if entries is not None else {}  # key -> JSON
        self.total_bytes = total_bytes
        self._json: str | None = None

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> StoredSnapshot:
        """Build a snapshot from plain JSON values (for engines given an ordinary mapping)."""
        if isinstance(values, StoredSnapshot):
            return values
        encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        entries = {key: encoder.encode(value) for key, value in values.items()}
        return cls(entries, _bulk_bytes(entries))

    # ------------------------------------------------------------------ Mapping

    def __getitem__(self, key: str) -> Any:
        return json.loads(self._entries[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    # ------------------------------------------------------------------ JSON views

    def value_json(self, key: str) -> str:
        """The JSON text of one value; ``KeyError`` if absent."""
        return self._entries[key]

    def size_of(self, key: str) -> int:
        """What ``key`` costs now against the budget (0 when absent)."""
        value = self._entries.get(key)
        return 0 if value is None else entry_bytes(key, value)

    def json_text(self) -> str:
        """The whole map as one JSON object text (built once per snapshot; a large one is best
        built on a worker thread)."""
        if self._json is None:
            body = ",".join(f"{key_json(k)}:{v}" for k, v in self._entries.items())
            self._json = "{" + body + "}"
        return self._json

    @property
    def json_ready(self) -> bool:
        return self._json is not None

    def total_after(self, writes: Mapping[str, str]) -> int:
        """What the map would cost with ``writes`` (key -> JSON text) applied."""
        replaced = self._entries.keys() & writes.keys()
        return self.total_bytes - sum(self.size_of(k) for k in replaced) + _bulk_bytes(writes)

    def merged(self, writes: Mapping[str, str], max_bytes: int) -> StoredSnapshot:
        """A new snapshot with ``writes`` (key -> JSON text) applied, atomically.

        Raises :class:`StoredBudgetExceeded` (and changes nothing) when the result would pass
        ``max_bytes``. Costs C-speed copies plus Python work per overwritten key only.
        """
        total = self.total_after(writes)
        if total > max_bytes:
            raise StoredBudgetExceeded(total)
        entries = dict(self._entries)
        entries.update(writes)
        return StoredSnapshot(entries, total)
