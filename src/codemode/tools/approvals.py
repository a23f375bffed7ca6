"""What the model is told about nested calls held for the host's approval (``docs/approvals.md``).

An ``exec``/``wait`` result of a running cell with held calls lists them after the output, one
line each, ``Awaiting approval: {call_id} {tool name} {input as JSON}``, so the model knows why its
cell waits; an input longer than :data:`MAX_INPUT_TOKENS` tokens is cut in the middle with the
``…N tokens truncated…`` marker of the results. Deciding is the host's business
(:meth:`CodeModeTools.approve` / ``.reject``), never a tool of the model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

from codemode.errors import CodeModeError
from codemode.model import ApprovalRequest, TextItem
from codemode.tools.render import middle_truncate

__all__ = ["AWAITING_APPROVAL_PREFIX", "MAX_INPUT_TOKENS", "awaiting_approval_item", "held_calls"]

AWAITING_APPROVAL_PREFIX: Final = "Awaiting approval: "
MAX_INPUT_TOKENS: Final = 500
"""The most (estimated) tokens of one held call's input shown to the model."""


def held_calls(session: Any, cell_id: str) -> tuple[ApprovalRequest, ...]:
    """The cell's held calls, or none when the session has no approvals or the cell is gone."""
    awaiting = getattr(session, "awaiting_approval", None)
    if awaiting is None:
        return ()
    try:
        held = awaiting(cell_id)
    except CodeModeError:
        return ()
    return tuple(held)


def _input_json(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        text = json.dumps(repr(value), ensure_ascii=False)
    return middle_truncate(text, MAX_INPUT_TOKENS)


def awaiting_approval_item(held: Sequence[ApprovalRequest]) -> TextItem | None:
    """One text item with a line per held call, or ``None`` when nothing is held."""
    if not held:
        return None
    return TextItem(
        "\n".join(
            f"{AWAITING_APPROVAL_PREFIX}{r.call_id} {r.tool.name} {_input_json(r.input)}"
            for r in held
        )
    )
