"""Formatting a cell event for the model, with token-budget truncation (docs/model-tools.md).

Token counts are estimates: ⌈UTF-8 bytes / 4⌉ (:func:`estimate_tokens`). A lone surrogate (which a
JavaScript string may hold) counts as its three-byte WTF-8 form and survives truncation unchanged.
A negative budget is treated as 0, so model-supplied budgets never raise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from codemode.model import Completed, ImageItem, OutputItem, Terminated, TextItem, Yielded

__all__ = [
    "estimate_tokens",
    "format_result",
    "header_text",
    "middle_truncate",
    "status_line",
    "truncate_items",
]

_BYTES_PER_TOKEN: Final = 4


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _from_utf8(data: bytes) -> str:
    return data.decode("utf-8", "surrogatepass")


def _is_continuation(byte: int) -> bool:
    return byte & 0xC0 == 0x80


def _tokens_for_bytes(n: int) -> int:
    return -(-n // _BYTES_PER_TOKEN)


def estimate_tokens(text: str) -> int:
    """The estimated token count of ``text``: ⌈UTF-8 bytes / 4⌉ (0 for ``""``)."""
    return _tokens_for_bytes(len(_utf8(text)))


def middle_truncate(text: str, budget_tokens: int) -> str:
    """Cut the middle out of ``text`` so that it fits ``budget_tokens`` tokens (plus the marker).

    ``text`` is returned unchanged when it fits (:func:`estimate_tokens` ≤ the budget). Otherwise,
    with ``B`` bytes = 4 × budget, the result is the first ⌊B/2⌋ bytes, shrunk back to the
    start of the character they would split, then ``…{n} tokens truncated…``, then the last
    B − ⌊B/2⌋ bytes, shrunk forward to the next character boundary; ``n`` = ⌈removed bytes / 4⌉.
    A budget of 0 (or less) leaves only the marker.
    """
    budget = max(budget_tokens, 0)
    data = _utf8(text)
    max_bytes = budget * _BYTES_PER_TOKEN
    if len(data) <= max_bytes:
        return text
    head_end = max_bytes // 2
    while head_end > 0 and _is_continuation(data[head_end]):
        head_end -= 1
    tail_start = len(data) - (max_bytes - max_bytes // 2)
    while tail_start < len(data) and _is_continuation(data[tail_start]):
        tail_start += 1
    removed = tail_start - head_end
    marker = f"…{_tokens_for_bytes(removed)} tokens truncated…"
    return _from_utf8(data[:head_end]) + marker + _from_utf8(data[tail_start:])


def truncate_items(items: Sequence[OutputItem], budget: int) -> tuple[OutputItem, ...]:
    """Fit a cell's output items into ``budget`` tokens.

    - All items text (or none): if their texts joined by ``"\\n"`` fit, the items are returned
      unchanged; otherwise they become one :class:`TextItem` holding that joined text
      middle-truncated to the budget.
    - Otherwise images are kept, in place and at no cost, and text items are taken in order: one
      that fits the remaining budget is kept as is and uses its tokens; one that does not is
      middle-truncated to what is left and uses all of it, so any later text item that is not
      empty is reduced to the marker alone.
    """
    budget = max(budget, 0)
    if all(isinstance(item, TextItem) for item in items):
        texts = [item.text for item in items if isinstance(item, TextItem)]
        joined = "\n".join(texts)
        if estimate_tokens(joined) <= budget:
            return tuple(items)
        return (TextItem(middle_truncate(joined, budget)),)
    remaining = budget
    result: list[OutputItem] = []
    for item in items:
        if isinstance(item, ImageItem):
            result.append(item)
            continue
        cost = estimate_tokens(item.text)
        if cost <= remaining:
            result.append(item)
            remaining -= cost
        else:
            result.append(TextItem(middle_truncate(item.text, remaining)))
            remaining = 0
    return tuple(result)


def status_line(event: Yielded | Completed | Terminated, cell_id: str) -> str:
    """``Script running with cell ID {cell_id}`` (Yielded), ``Script completed``, ``Script failed``
    (Completed with an ``error_text``, even an empty one) or ``Script terminated``."""
    if isinstance(event, Yielded):
        return f"Script running with cell ID {cell_id}"
    if isinstance(event, Terminated):
        return "Script terminated"
    return "Script completed" if event.error_text is None else "Script failed"


def header_text(status: str, wall_seconds: float) -> str:
    """The header item's text: ``"{status}\\nWall time {seconds:.1f} seconds\\nOutput:\\n"``
    (a negative wall time shows as 0.0)."""
    return f"{status}\nWall time {max(wall_seconds, 0.0):.1f} seconds\nOutput:\n"


def format_result(
    event: Yielded | Completed | Terminated,
    cell_id: str,
    wall_seconds: float,
    max_output_tokens: int,
) -> tuple[tuple[OutputItem, ...], bool]:
    """The items the model sees for one observed event, and whether it is an error.

    The items are the header (:func:`header_text` of :func:`status_line`), then the event's items
    through :func:`truncate_items` with ``max_output_tokens``, then, for a failed completion, a last
    ``"Script error:\\n{error_text}"`` item whose error text is middle-truncated separately to the
    same budget. The flag is ``True`` only for ``Script failed``. The header is not counted against
    the budget.
    """
    items: list[OutputItem] = [TextItem(header_text(status_line(event, cell_id), wall_seconds))]
    items.extend(truncate_items(event.items, max_output_tokens))
    failed = isinstance(event, Completed) and event.error_text is not None
    if isinstance(event, Completed) and event.error_text is not None:
        error = middle_truncate(event.error_text, max_output_tokens)
        items.append(TextItem(f"Script error:\n{error}"))
    return tuple(items), failed
