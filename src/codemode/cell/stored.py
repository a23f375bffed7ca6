"""A session's stored values, kept as JSON text (SPEC 3, 8.1 ``max_stored_bytes``).

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

_key_encoder = json.JSONEncoder(ensure_ascii=False)


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


class StoredSnapshot(Mapping[str, Any]):
    """One immutable version of a session's stored values.

    As a ``Mapping`` it decodes a value on each lookup (a fresh copy every time); engines use
    :meth:`json_text` and :meth:`value_json` instead.
    """

    __slots__ = ("_entries", "_json", "total_bytes")

    def __init__(self, entries: dict[str, str] | None = None, total_bytes: int = 0) -> None:
        # key -> the entry's JSON text, '"key":value'
        self._entries: dict[str, str] = entries if entries is not None else {}
        self.total_bytes = total_bytes
        self._json: str | None = None

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> StoredSnapshot:
        """Build a snapshot from plain JSON values (for engines given an ordinary mapping)."""
        if isinstance(values, StoredSnapshot):
            return values
        encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        entries: dict[str, str] = {}
        total = 0
        for key, value in values.items():
            text = encoder.encode(value)
            entries[key] = f"{key_json(key)}:{text}"
            total += entry_bytes(key, text)
        return cls(entries, total)

    # ------------------------------------------------------------------ Mapping

    def __getitem__(self, key: str) -> Any:
        return json.loads(self.value_json(key))

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    # ------------------------------------------------------------------ JSON views

    def value_json(self, key: str) -> str:
        """The JSON text of one value; ``KeyError`` if absent."""
        entry = self._entries[key]
        return entry[len(key_json(key)) + 1 :]

    def size_of(self, key: str) -> int:
        """What ``key`` costs now against the budget (0 when absent)."""
        entry = self._entries.get(key)
        return 0 if entry is None else _utf8(entry) + 1

    def json_text(self) -> str:
        """The whole map as one JSON object text (built once per snapshot)."""
        if self._json is None:
            self._json = "{" + ",".join(self._entries.values()) + "}"
        return self._json

    @property
    def json_ready(self) -> bool:
        return self._json is not None

    def total_after(self, writes: Mapping[str, str]) -> int:
        """What the map would cost with ``writes`` (key -> JSON text) applied."""
        total = self.total_bytes
        for key, text in writes.items():
            total += entry_bytes(key, text) - self.size_of(key)
        return total

    def merged(self, writes: Mapping[str, str], max_bytes: int) -> StoredSnapshot:
        """A new snapshot with ``writes`` (key -> JSON text) applied, atomically.

        Raises :class:`StoredBudgetExceeded` (and changes nothing) when the result would pass
        ``max_bytes``.
        """
        total = self.total_bytes
        fresh: dict[str, str] = {}
        for key, text in writes.items():
            total -= self.size_of(key)
            entry = f"{key_json(key)}:{text}"
            fresh[key] = entry
            total += _utf8(entry) + 1
        if total > max_bytes:
            raise StoredBudgetExceeded(total)
        entries = dict(self._entries)
        entries.update(fresh)
        return StoredSnapshot(entries, total)
