"""The JSON form of events and output items, as on the wire (SPEC 10.2, camelCase).

One definition used by the command line's ``--json`` output and by the protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from codemode.model import (
    ApprovalRequest,
    Completed,
    ImageDetail,
    ImageItem,
    OutputItem,
    Pending,
    PendingFrontier,
    Terminated,
    TextItem,
    ToolDefinition,
    ToolKind,
    Yielded,
)

__all__ = [
    "approval_from_wire",
    "approval_to_wire",
    "approvals_from_wire",
    "event_from_wire",
    "event_to_wire",
    "item_from_wire",
    "item_to_wire",
]

AnyEvent = Yielded | Completed | Terminated | Pending


def item_to_wire(item: OutputItem) -> dict[str, Any]:
    """``{"type": "text", text}`` or ``{"type": "image", imageUrl, detail}``."""
    if isinstance(item, TextItem):
        return {"type": "text", "text": item.text}
    detail = None if item.detail is None else str(item.detail)
    return {"type": "image", "imageUrl": item.image_url, "detail": detail}


def item_from_wire(data: dict[str, Any]) -> OutputItem:
    """The inverse of :func:`item_to_wire`; raises ``ValueError`` for anything else."""
    kind = data.get("type")
    if kind == "text" and isinstance(data.get("text"), str):
        return TextItem(data["text"])
    if kind == "image" and isinstance(data.get("imageUrl"), str):
        detail = data.get("detail")
        return ImageItem(data["imageUrl"], None if detail is None else ImageDetail(detail))
    raise ValueError(f"not an output item: {data!r}")


def approval_to_wire(request: ApprovalRequest) -> dict[str, Any]:
    """``{cellId, callId, tool: {name, namespace, kind}, input}``."""
    tool = request.tool
    return {
        "cellId": request.cell_id,
        "callId": request.call_id,
        "tool": {"name": tool.name, "namespace": tool.namespace, "kind": str(tool.kind)},
        "input": request.input,
    }


def approval_from_wire(data: dict[str, Any]) -> ApprovalRequest:
    """The inverse of :func:`approval_to_wire` (the tool rebuilt from its name, namespace and
    kind); raises ``ValueError`` for anything else."""
    try:
        tool = data["tool"]
        definition = ToolDefinition(
            str(tool["name"]),
            kind=ToolKind(tool.get("kind") or "function"),
            namespace=tool.get("namespace"),
            needs_approval=True,
        )
        return ApprovalRequest(str(data["cellId"]), str(data["callId"]), definition, data["input"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not an approval request: {data!r}") from exc


def approvals_from_wire(data: dict[str, Any]) -> tuple[ApprovalRequest, ...]:
    """The ``awaitingApproval`` member of an event (absent: none)."""
    return tuple(approval_from_wire(a) for a in data.get("awaitingApproval") or ())


def event_to_wire(
    event: AnyEvent, awaiting_approval: Sequence[ApprovalRequest] = ()
) -> dict[str, Any]:
    """The wire form of an event. A ``yielded`` event carries ``awaiting_approval`` (the cell's
    held calls when it was delivered) and a ``pending`` one its frontier's, as
    ``awaitingApproval``; the member is left out when there are none."""
    if isinstance(event, Yielded):
        data: dict[str, Any] = {"type": "yielded", "items": [item_to_wire(i) for i in event.items]}
        if awaiting_approval:
            data["awaitingApproval"] = [approval_to_wire(a) for a in awaiting_approval]
        return data
    if isinstance(event, Completed):
        return {
            "type": "completed",
            "items": [item_to_wire(i) for i in event.items],
            "errorText": event.error_text,
        }
    if isinstance(event, Terminated):
        return {"type": "terminated", "items": [item_to_wire(i) for i in event.items]}
    f = event.frontier
    pending = {
        "type": "pending",
        "generation": f.generation,
        "items": [item_to_wire(i) for i in f.items],
        "pendingToolCallIds": list(f.pending_tool_call_ids),
    }
    if f.awaiting_approval:
        pending["awaitingApproval"] = [approval_to_wire(a) for a in f.awaiting_approval]
    return pending


def event_from_wire(data: dict[str, Any]) -> AnyEvent:
    """The inverse of :func:`event_to_wire`; raises ``ValueError`` for anything else."""
    kind = data.get("type")
    items = tuple(item_from_wire(i) for i in data.get("items", []))
    if kind == "yielded":
        return Yielded(items)
    if kind == "completed":
        error = data.get("errorText")
        return Completed(items, None if error is None else str(error))
    if kind == "terminated":
        return Terminated(items)
    if kind == "pending":
        ids = tuple(str(i) for i in data.get("pendingToolCallIds", []))
        held = approvals_from_wire(data)
        return Pending(PendingFrontier(int(data["generation"]), items, ids, held))
    raise ValueError(f"not an event: {data!r}")
