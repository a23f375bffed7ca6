"""What the model is told about nested calls held for the host's approval (``docs/approvals.md``).

An ``exec``/``wait`` result of a running cell with held calls lists them after the output, one
line each, ``Awaiting approval: {call_id} {tool name} {input as JSON}``, so the model knows why its
cell waits. Deciding is the host's business (:meth:`CodeModeTools.approve` / ``.reject``), never a
tool of the model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

from codemode.errors import CodeModeError
from codemode.model import ApprovalRequest, TextItem

__all__ = ["AWAITING_APPROVAL_PREFIX", "awaiting_approval_item", "held_calls"]

AWAITING_APPROVAL_PREFIX: Final = "Awaiting approval: "


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
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        return json.dumps(repr(value), ensure_ascii=False)


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
