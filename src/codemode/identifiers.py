"""The mapping from raw tool names to JavaScript identifiers (docs/cells.md).

One definition, used by the engine (``tools.<identifier>``, ``ALL_TOOLS``) and by the model-facing
declarations (section 9), so the two can never disagree.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["normalize_identifier", "tool_identifiers"]


def _is_ascii_letter(ch: str) -> bool:
    return ("a" <= ch <= "z") or ("A" <= ch <= "Z")


def normalize_identifier(name: str) -> str:
    """Map one raw name to an identifier: ASCII letters, ``_`` and ``$`` are kept, ASCII digits
    after the first position; every other character becomes ``_``; an empty name becomes ``_``."""
    if not name:
        return "_"
    out = []
    for i, ch in enumerate(name):
        if _is_ascii_letter(ch) or ch in "_$" or (i > 0 and "0" <= ch <= "9"):
            out.append(ch)
        else:
            out.append("_")
    return "".join(out)


def tool_identifiers(names: Iterable[str]) -> list[str]:
    """Identifiers for tools in request order; a later duplicate takes the first free ``_2``,
    ``_3``, ... suffix."""
    taken: set[str] = set()
    result: list[str] = []
    for name in names:
        base = normalize_identifier(name)
        ident = base
        n = 2
        while ident in taken:
            ident = f"{base}_{n}"
            n += 1
        taken.add(ident)
        result.append(ident)
    return result
