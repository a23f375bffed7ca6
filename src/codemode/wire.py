"""The JSON form of events and output items, as on the wire (SPEC 10.2, camelCase).

One definition used by the command line's ``--json`` output and by the protocol.
"""

from __future__ import annotations

from typing import Any

from codemode.model import (
    Completed,
    ImageDetail,
    ImageItem,
    OutputItem,
    Pending,
    PendingFrontier,
    Terminated,
    TextItem,
    Yielded,
)

__all__ = ["event_from_wire", "event_to_wire", "item_from_wire", "item_to_wire"]

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


def event_to_wire(event: AnyEvent) -> dict[str, Any]:
    """The wire form of an event."""
    if isinstance(event, Yielded):
        return {"type": "yielded", "items": [item_to_wire(i) for i in event.items]}
    if isinstance(event, Completed):
        return {
            "type": "completed",
            "items": [item_to_wire(i) for i in event.items],
            "errorText": event.error_text,
        }
    if isinstance(event, Terminated):
        return {"type": "terminated", "items": [item_to_wire(i) for i in event.items]}
    f = event.frontier
    return {
        "type": "pending",
        "generation": f.generation,
        "items": [item_to_wire(i) for i in f.items],
        "pendingToolCallIds": list(f.pending_tool_call_ids),
    }


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
        return Pending(PendingFrontier(int(data["generation"]), items, ids))
    raise ValueError(f"not an event: {data!r}")
