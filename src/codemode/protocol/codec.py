"""The JSON form of every value on the wire, in both directions (``docs/protocol.md``).

One codec, used by the server, :class:`~codemode.protocol.client.RemoteSession` and the command
line's ``--json`` output; :mod:`codemode.protocol.messages` is the table of methods that says
where each value goes. Member names are camelCase.

- output items: ``{"type": "text", text}`` / ``{"type": "image", imageUrl, detail}``;
- events: ``yielded`` / ``completed`` / ``terminated`` / ``pending``, with ``awaitingApproval``;
- approval requests and the tool a nested call names (``{name, namespace, kind}``);
- tool definitions and ``CellLimits``;
- errors: a :class:`~codemode.errors.CodeModeError` is ``-32000`` with
  ``data = {"kind": <class name>, <fields in camelCase>}``, rebuilt as the same class.

Every ``*_from_wire`` raises ``ValueError`` for what it cannot read (``error_from_wire`` answers
``ProtocolError`` instead).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from codemode import errors as _errors
from codemode.errors import CodeModeError, ProtocolError
from codemode.model import (
    ApprovalRequest,
    CellLimits,
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
from codemode.protocol.jsontypes import is_int

__all__ = [
    "CODEMODE_ERROR",
    "ERROR_CLASSES",
    "AnyEvent",
    "approval_from_wire",
    "approval_to_wire",
    "approvals_from_wire",
    "camel",
    "error_from_wire",
    "error_to_wire",
    "event_from_wire",
    "event_to_wire",
    "item_from_wire",
    "item_to_wire",
    "limits_from_wire",
    "limits_to_wire",
    "snake",
    "tool_from_wire",
    "tool_ref_to_wire",
    "tool_to_wire",
]

AnyEvent = Yielded | Completed | Terminated | Pending

CODEMODE_ERROR: Final = -32000
"""The JSON-RPC error code of an encoded :class:`CodeModeError` (one row of the protocol's error
codes, :mod:`codemode.protocol.messages`)."""


def camel(name: str) -> str:
    """``max_heap_bytes`` -> ``maxHeapBytes``."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def snake(name: str) -> str:
    """``maxHeapBytes`` -> ``max_heap_bytes``."""
    return re.sub(r"(?<!^)([A-Z])", lambda m: "_" + m.group(1).lower(), name)


# ---------------------------------------------------------------------------- items and events


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


def tool_ref_to_wire(tool: ToolDefinition) -> dict[str, Any]:
    """The tool a nested call names: ``{name, namespace, kind}``."""
    return {"name": tool.name, "namespace": tool.namespace, "kind": str(tool.kind)}


def approval_to_wire(request: ApprovalRequest) -> dict[str, Any]:
    """``{cellId, callId, tool: {name, namespace, kind}, input}``."""
    return {
        "cellId": request.cell_id,
        "callId": request.call_id,
        "tool": tool_ref_to_wire(request.tool),
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


# ---------------------------------------------------------------------------- tools and limits


def tool_to_wire(tool: ToolDefinition) -> dict[str, Any]:
    """The wire form of a tool definition (every member written; ``needsApproval`` only when
    true, so peers that predate approvals see the same messages)."""
    wire: dict[str, Any] = {
        "name": tool.name,
        "description": tool.description,
        "kind": str(tool.kind),
        "namespace": tool.namespace,
        "inputSchema": tool.input_schema,
        "outputSchema": tool.output_schema,
    }
    if tool.needs_approval:
        wire["needsApproval"] = True
    return wire


def tool_from_wire(data: Mapping[str, Any]) -> ToolDefinition:
    """A tool definition from its (validated) wire form; missing members take their defaults."""
    return ToolDefinition(
        name=data["name"],
        description=data.get("description") or "",
        kind=ToolKind(data.get("kind") or "function"),
        namespace=data.get("namespace"),
        input_schema=data.get("inputSchema"),
        output_schema=data.get("outputSchema"),
        needs_approval=bool(data.get("needsApproval", False)),
    )


def limits_to_wire(limits: CellLimits) -> dict[str, Any]:
    """Every field of ``limits`` in camelCase."""
    return {camel(f.name): getattr(limits, f.name) for f in dataclasses.fields(CellLimits)}


def limits_from_wire(data: Mapping[str, Any], ceilings: CellLimits | None = None) -> CellLimits:
    """Limits from camelCase fields. With ``ceilings`` (the server's side): missing fields take the
    ceilings' values and a field above its ceiling raises ``ValueError``; without, missing fields
    take the defaults. An invalid combination raises ``ValueError`` too."""
    base = ceilings or CellLimits()
    values: dict[str, Any] = {}
    for f in dataclasses.fields(CellLimits):
        default = getattr(base, f.name)
        key = camel(f.name)
        if key not in data:
            values[f.name] = default
            continue
        value = data[key]
        if isinstance(default, int) and is_int(value):
            value = int(value)
        if ceilings is not None and value > default:
            raise ValueError(f"limits.{key} ({value}) exceeds the server's ceiling ({default})")
        values[f.name] = value
    return CellLimits(**values)


# ---------------------------------------------------------------------------- errors


def _error_classes() -> dict[str, type[CodeModeError]]:
    classes: dict[str, type[CodeModeError]] = {}
    for name in _errors.__all__:
        cls = getattr(_errors, name)
        if isinstance(cls, type) and issubclass(cls, CodeModeError):
            classes[name] = cls
    return classes


ERROR_CLASSES: Final[Mapping[str, type[CodeModeError]]] = _error_classes()
"""Every exported :class:`CodeModeError` class by name: the values of ``data.kind``."""


def error_to_wire(exc: CodeModeError) -> dict[str, Any]:
    """The JSON-RPC error object of a :class:`CodeModeError` (docs/protocol.md)."""
    data: dict[str, Any] = {"kind": type(exc).__name__}
    for name, value in exc.fields().items():
        data[camel(name)] = value
    return {"code": CODEMODE_ERROR, "message": str(exc), "data": data}


def error_from_wire(message: str, data: Any) -> CodeModeError:
    """Rebuild the exception a ``-32000`` error names: the same class with the same fields.

    Each class is rebuilt through its constructor, with its fields as keyword arguments (and the
    wire ``message`` for a class whose constructor takes one, like ``ObservationConflict``). An
    unknown kind or unusable fields give :class:`ProtocolError` with the message.
    """
    if not isinstance(data, dict) or not isinstance(data.get("kind"), str):
        return ProtocolError(message, CODEMODE_ERROR)
    cls = ERROR_CLASSES.get(data["kind"])
    if cls is None or cls is CodeModeError:
        return ProtocolError(message, CODEMODE_ERROR)
    fields = {snake(k): v for k, v in data.items() if k != "kind"}
    try:
        parameters = inspect.signature(cls.__init__).parameters
        kwargs: dict[str, Any] = {}
        for name in list(parameters)[1:]:
            if name == "message" and name not in fields:
                kwargs[name] = message
            elif name in fields:
                kwargs[name] = fields[name]
            elif parameters[name].default is inspect.Parameter.empty:
                return ProtocolError(message, CODEMODE_ERROR)
        return cls(**kwargs)
    except (TypeError, ValueError):
        return ProtocolError(message, CODEMODE_ERROR)
