"""The codemode wire protocol's messages, defined once (docs/protocol.md).

Every method, its parameters and its result is described here with the type builders of
:mod:`codemode.protocol.jsontypes` (``Obj``, ``Str``, ``Int``, ...). The same definitions

- validate what a peer sends (the server answers ``-32602`` with the first mismatch; the client
  raises :class:`~codemode.errors.ProtocolError` for a malformed result), and
- generate the published JSON Schema, ``schema.json`` next to this file.

Regenerate the schema after changing a definition, from the repository root::

    .venv/bin/python -m codemode.protocol.schemagen --write

(``--check`` exits 1 when the file is stale; a test does the same comparison.)

The values themselves (events, items, tools, limits, errors) are encoded and decoded by
:mod:`codemode.protocol.codec`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from codemode.model import CellLimits
from codemode.protocol.codec import CODEMODE_ERROR, ERROR_CLASSES, camel
from codemode.protocol.jsontypes import (  # the type builders
    DEFINITIONS,
    AnyJson,
    Arr,
    Bool,
    Const,
    Enum,
    Field,
    Int,
    Num,
    Obj,
    Str,
    Type,
    Union,
    as_int,
    define,
    nullable,
)

__all__ = [
    "CLIENT_METHODS",
    "CODEMODE_ERROR",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "MAX_FRAME_BYTES",
    "MAX_YIELD_AFTER_MS",
    "METHODS",
    "METHOD_NOT_FOUND",
    "NOT_INITIALIZED",
    "PARSE_ERROR",
    "PROTOCOL_VERSION",
    "REQUEST_CANCELLED",
    "SCHEMA_PATH",
    "SERVER_METHODS",
    "SUPPORTED_VERSIONS",
    "TOOL_ERROR",
    "MethodDef",
    "as_int",
    "codemode_version",
    "generate_schema",
    "schema_text",
]

PROTOCOL_VERSION: Final = 1
SUPPORTED_VERSIONS: Final = (1,)

MAX_FRAME_BYTES: Final = 64 * 1024 * 1024
"""The largest frame either side accepts: a longer stdio line, or a larger WebSocket message,
closes the connection (docs/protocol.md)."""

# JSON-RPC error codes (docs/protocol.md).
PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
NOT_INITIALIZED: Final = -32002
REQUEST_CANCELLED: Final = -32800
# CODEMODE_ERROR (-32000): a CodeModeError, with data = {"kind", its fields}; from the codec.
TOOL_ERROR: Final = -32001
"""A client's answer to ``tool/invoke`` when the tool failed; the message rejects the call."""

MAX_YIELD_AFTER_MS: Final = 1e15
"""The largest ``yieldAfterMs`` (about 31 700 years): any budget fits in a float."""

SCHEMA_PATH: Final = Path(__file__).resolve().parent / "schema.json"

# ---------------------------------------------------------------------------- shared values


SessionId = Str(
    description="A session id: chosen by the server and known until its connection ends; on a "
    "server with a store (serve --store), a durable session's id, which outlives connections and "
    "restarts and may be given to session/open to reattach."
)
CellId = Str(description="A cell id (16 characters, docs/safety.md).")
RequestId = define(
    "RequestId",
    Union(
        (Str(), Int()),
        description="A request id: unique among its sender's pending requests.",
    ),
)

Tool = define(
    "Tool",
    Obj(
        (
            Field(
                "name", Str(description="The raw tool name, e.g. mcp__github__search_issues."), True
            ),
            Field("description", Str(), False),
            Field("kind", Enum(("function", "freeform"), description="Default: function."), False),
            Field("namespace", nullable(Str()), False),
            Field("inputSchema", nullable(Obj()), False),
            Field("outputSchema", nullable(Obj()), False),
            Field(
                "needsApproval",
                Bool(description="Hold each call until the host approves it. Default: false."),
                False,
            ),
        ),
        description="A nested tool enabled in a cell (docs/sessions.md).",
    ),
)

ToolRef = define(
    "ToolRef",
    Obj(
        (
            Field("name", Str()),
            Field("namespace", nullable(Str())),
            Field("kind", Enum(("function", "freeform"))),
        ),
        description="The tool a nested call names.",
    ),
)

TextItem = define(
    "TextItem",
    Obj((Field("type", Const("text")), Field("text", Str())), description="Text output."),
)
ImageItem = define(
    "ImageItem",
    Obj(
        (
            Field("type", Const("image")),
            Field("imageUrl", Str(description="Always a data: URL.")),
            Field("detail", nullable(Enum(("auto", "low", "high", "original")))),
        ),
        description="Image output.",
    ),
)
Item = define("Item", Union((TextItem, ImageItem), description="An output item."))
Items = Arr(Item)

ApprovalRequest = define(
    "ApprovalRequest",
    Obj(
        (
            Field("cellId", CellId),
            Field("callId", Str(description="The call's id, assigned at issue.")),
            Field("tool", ToolRef),
            Field("input", AnyJson(description="What the delegate receives if it is approved.")),
        ),
        description="A nested call held until the host approves or rejects it.",
    ),
)
AWAITING_APPROVAL = Field(
    "awaitingApproval",
    Arr(ApprovalRequest, description="Held calls, sorted by call id; absent when none."),
    False,
)
DELIVERY = Field(
    "delivery",
    Int(
        minimum=0,
        description="The event's delivery number, when the request sent delivered "
        "(docs/protocol.md, Re-delivery).",
    ),
    False,
)

YieldedEvent = define(
    "YieldedEvent",
    Obj(
        (
            Field("type", Const("yielded")),
            Field("items", Items),
            AWAITING_APPROVAL,
            DELIVERY,
        ),
        description="The budget ran out, the cell called yield_control() or a call became "
        "held; it keeps running. awaitingApproval: the cell's held calls when it was delivered.",
    ),
)
CompletedEvent = define(
    "CompletedEvent",
    Obj(
        (
            Field("type", Const("completed")),
            Field("items", Items),
            Field("errorText", nullable(Str())),
            DELIVERY,
        ),
        description="The cell's body settled; errorText is set when it failed.",
    ),
)
TerminatedEvent = define(
    "TerminatedEvent",
    Obj(
        (Field("type", Const("terminated")), Field("items", Items), DELIVERY),
        description="The cell was terminated (cell/terminate or the session's shutdown).",
    ),
)
PendingEvent = define(
    "PendingEvent",
    Obj(
        (
            Field("type", Const("pending")),
            Field("generation", Int(minimum=1)),
            Field("items", Items),
            Field("pendingToolCallIds", Arr(Str())),
            AWAITING_APPROVAL,
            DELIVERY,
        ),
        description="A pausable cell is paused at a frontier (docs/sessions.md); awaitingApproval: "
        "the held calls among the pending ones.",
    ),
)
CellEvent = define(
    "CellEvent",
    Union(
        (YieldedEvent, CompletedEvent, TerminatedEvent),
        description="The outcome of cell/wait.",
    ),
)
PausableCellEvent = define(
    "PausableCellEvent",
    Union(
        (PendingEvent, CompletedEvent, TerminatedEvent),
        description="The outcome of cell/waitToPending.",
    ),
)
TerminalEvent = define(
    "TerminalEvent",
    Union((CompletedEvent, TerminatedEvent), description="The outcome of cell/terminate."),
)


def _limit_fields() -> tuple[Field, ...]:
    out = []
    for f in dataclasses.fields(CellLimits):
        if f.type in (float, "float"):
            type_: Type = Num(exclusive_minimum=0)
        else:
            type_ = Int(minimum=1)
        out.append(Field(camel(f.name), type_, False))
    return tuple(out)


Limits = define(
    "Limits",
    Obj(
        _limit_fields(),
        closed=True,
        description="CellLimits fields in camelCase (docs/safety.md); a missing field takes the "
        "server's value.",
    ),
)

ErrorData = define(
    "CodeModeErrorData",
    Obj(
        (Field("kind", Str(description="The exception class name, e.g. MissingCell.")),),
        description="data of a -32000 error: the exception's kind and its fields in camelCase.",
    ),
)
ErrorObject = define(
    "ErrorObject",
    Obj(
        (Field("code", Int()), Field("message", Str()), Field("data", AnyJson(), False)),
        description="A JSON-RPC error.",
    ),
)

OpenedCell = define(
    "OpenedCell",
    Obj(
        (
            Field("cellId", CellId),
            Field("kind", Enum(("continuing", "pausable"))),
            Field("tools", Arr(Tool, description="The tools the cell was created with."), False),
            Field(
                "completed",
                Bool(
                    description="true: the cell closed, its delivered completion not yet "
                    "released; listed only to a client that announced the redelivery "
                    "capability, which can get it again (docs/protocol.md, Re-delivery)."
                ),
                False,
            ),
        ),
        description="A live cell of a reattached durable session.",
    ),
)

EMPTY = Obj(description="An empty object.")

# ---------------------------------------------------------------------------- methods

CLIENT_TO_SERVER: Final = "client-to-server"
SERVER_TO_CLIENT: Final = "server-to-client"
BOTH: Final = "both"


@dataclass(frozen=True)
class MethodDef:
    """One protocol method.

    ``cancellable``: whether a ``$/cancelRequest`` stops a pending request of this method (the
    others run to completion and are answered normally, docs/protocol.md).
    """

    name: str
    direction: str
    params: Obj
    result: Type | None  # None: a notification (never answered)
    description: str
    cancellable: bool = False

    @property
    def def_name(self) -> str:
        """``cell/waitToPending`` -> ``CellWaitToPending``."""
        parts = re.split(r"[/$]+", self.name)
        return "".join(p[:1].upper() + p[1:] for p in parts if p)


def _session_cell(*more: Field) -> Obj:
    return Obj((Field("sessionId", SessionId), Field("cellId", CellId), *more))


OBSERVATION = Field(
    "observation",
    Int(minimum=0, description="The observation generation, numbered per cell from 0."),
)
DELIVERED = Field(
    "delivered",
    nullable(
        Int(
            minimum=0,
            description="Re-delivery (docs/protocol.md): the delivery number of the last event "
            "of this cell the client received (0: none; null: unknown). Sending it promises an "
            "observation/release of a terminal outcome; the answer then carries its delivery.",
        )
    ),
    False,
)

METHOD_LIST: Final[tuple[MethodDef, ...]] = (
    MethodDef(
        "initialize",
        CLIENT_TO_SERVER,
        Obj(
            (
                Field("protocolVersion", Int()),
                Field("clientInfo", Obj(), False),
                Field(
                    "capabilities",
                    Obj(
                        (
                            Field(
                                "notify",
                                Bool(description="Whether the client wants cell/notify."),
                                False,
                            ),
                            Field(
                                "redelivery",
                                Bool(
                                    description="true: the client numbers its deliveries "
                                    "(docs/protocol.md, Re-delivery), so session/open lists "
                                    "the closed cells whose completion it may get again."
                                ),
                                False,
                            ),
                        )
                    ),
                    False,
                ),
            )
        ),
        Obj(
            (
                Field("protocolVersion", Const(PROTOCOL_VERSION)),
                Field("serverInfo", Obj((Field("name", Str()), Field("version", Str())))),
                Field(
                    "capabilities",
                    Obj(
                        (
                            Field("cellKinds", Arr(Enum(("continuing", "pausable")))),
                            Field("engines", Arr(Str())),
                            Field("observationReplay", Bool()),
                            Field("limits", Limits),
                        )
                    ),
                ),
            )
        ),
        "The client's first request. limits in the result are the server's ceilings.",
    ),
    MethodDef(
        "session/open",
        CLIENT_TO_SERVER,
        Obj(
            (
                Field("limits", Limits, False),
                Field("engine", Str(), False),
                Field(
                    "sessionId",
                    SessionId,
                    False,
                ),
            )
        ),
        Obj(
            (
                Field("sessionId", SessionId),
                Field(
                    "durable",
                    Bool(description="The session lives in the server's store. Default: false."),
                    False,
                ),
                Field(
                    "limits",
                    Limits,
                    False,
                ),
                Field(
                    "cells",
                    Arr(
                        OpenedCell,
                        description="A durable session's live cells (recovered ones included), "
                        "in no particular order; absent for a session without a store.",
                    ),
                    False,
                ),
            )
        ),
        'Open a session (a SessionRuntime). limits: at most the ceilings; engine: "v8"; '
        "sessionId (a server with a store only): reattach to that durable session, or create it "
        "with that id; SessionBusy if another connection or process holds it. A durable "
        "session's result has its limits: a reattached one keeps those it was created with.",
        cancellable=True,
    ),
    MethodDef(
        "session/shutdown",
        CLIENT_TO_SERVER,
        Obj((Field("sessionId", SessionId),)),
        EMPTY,
        "Shut the session down (docs/sessions.md). Idempotent.",
    ),
    MethodDef(
        "cell/create",
        CLIENT_TO_SERVER,
        Obj(
            (
                Field("sessionId", SessionId),
                Field("kind", Enum(("continuing", "pausable"))),
                Field("source", Str()),
                Field("tools", Arr(Tool), False),
                Field("toolCallId", Str(), False),
                Field("idempotencyKey", nullable(Str()), False),
            )
        ),
        Obj((Field("cellId", CellId),)),
        "Admit a cell (docs/sessions.md).",
        cancellable=True,
    ),
    MethodDef(
        "cell/wait",
        CLIENT_TO_SERVER,
        _session_cell(
            Field(
                "yieldAfterMs",
                Num(
                    maximum=MAX_YIELD_AFTER_MS,
                    description="The observation budget in milliseconds; negative counts as 0.",
                ),
            ),
            OBSERVATION,
            DELIVERED,
        ),
        CellEvent,
        "Observe a continuing cell (docs/sessions.md); replayable by observation generation "
        "(docs/protocol.md).",
        cancellable=True,
    ),
    MethodDef(
        "cell/waitToPending",
        CLIENT_TO_SERVER,
        _session_cell(OBSERVATION, DELIVERED),
        PausableCellEvent,
        "Observe a pausable cell to its frontier (docs/sessions.md); replayable like cell/wait.",
        cancellable=True,
    ),
    MethodDef(
        "cell/resume",
        CLIENT_TO_SERVER,
        _session_cell(Field("generation", Int())),
        Obj((Field("outcome", Enum(("resumed", "already_running"))),)),
        "Resume a pausable cell past a frontier (docs/sessions.md).",
    ),
    MethodDef(
        "cell/terminate",
        CLIENT_TO_SERVER,
        _session_cell(),
        TerminalEvent,
        "Terminate a cell (docs/sessions.md). Not replayable.",
    ),
    MethodDef(
        "cell/awaitingApproval",
        CLIENT_TO_SERVER,
        _session_cell(),
        Obj((Field("calls", Arr(ApprovalRequest)),)),
        "The cell's calls held for approval, sorted by call id.",
    ),
    MethodDef(
        "cell/approve",
        CLIENT_TO_SERVER,
        _session_cell(Field("callId", Str())),
        EMPTY,
        "Let a held call reach the delegate (NotAwaitingApproval if it is not held).",
    ),
    MethodDef(
        "cell/reject",
        CLIENT_TO_SERVER,
        _session_cell(
            Field("callId", Str()),
            Field(
                "reason",
                Str(description='Default: "the host rejected this call".'),
                False,
            ),
        ),
        EMPTY,
        "Reject a held call: its promise rejects with an Error whose message is reason.",
    ),
    MethodDef(
        "observation/release",
        CLIENT_TO_SERVER,
        _session_cell(OBSERVATION),
        EMPTY,
        "Drop the payload of a terminal observation outcome (docs/protocol.md).",
    ),
    MethodDef(
        "tool/invoke",
        SERVER_TO_CLIENT,
        _session_cell(
            Field("callId", Str(description="tool-1, tool-2, ... within the cell.")),
            Field("tool", ToolRef),
            Field(
                "input",
                AnyJson(description="An object for function tools, a string for freeform tools."),
            ),
        ),
        Obj((Field("output", AnyJson()),)),
        "Run a nested tool call; an error response rejects the call with its message.",
        cancellable=True,
    ),
    MethodDef(
        "cell/notify",
        SERVER_TO_CLIENT,
        _session_cell(
            Field("callId", Str(description="The toolCallId of the cell's create.")),
            Field("text", Str()),
        ),
        EMPTY,
        "An out-of-band progress message from notify(...) in a cell; errors are only logged.",
        cancellable=True,
    ),
    MethodDef(
        "$/cancelRequest",
        BOTH,
        Obj((Field("id", RequestId),)),
        None,
        "A notification: stop the peer's pending request of that id (docs/protocol.md).",
    ),
)

METHODS: Final[Mapping[str, MethodDef]] = {m.name: m for m in METHOD_LIST}
SERVER_METHODS: Final[Mapping[str, MethodDef]] = {
    m.name: m for m in METHOD_LIST if m.direction in (CLIENT_TO_SERVER, BOTH)
}
"""Methods a server answers."""
CLIENT_METHODS: Final[Mapping[str, MethodDef]] = {
    m.name: m for m in METHOD_LIST if m.direction in (SERVER_TO_CLIENT, BOTH)
}
"""Methods a client answers."""

# ---------------------------------------------------------------------------- version


def codemode_version() -> str:
    """The package version (read lazily: this module is imported while ``codemode`` loads)."""
    import codemode

    return str(codemode.__version__)


# ---------------------------------------------------------------------------- the schema


def _envelope(method: MethodDef) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "jsonrpc": {"const": "2.0"},
        "method": {"const": method.name},
        "params": {"$ref": f"#/$defs/{method.def_name}Params"},
    }
    required = ["jsonrpc", "method"]
    if method.result is not None:
        properties["id"] = {"$ref": "#/$defs/RequestId"}
        required.append("id")
    if any(f.required for f in method.params.fields):
        required.append("params")
    return {"type": "object", "properties": properties, "required": required}


def generate_schema() -> dict[str, Any]:
    """The JSON Schema of the protocol (draft 2020-12), built from the definitions above.

    ``$defs`` holds every shared value type and, per method, ``<Name>Params`` and
    ``<Name>Result``; ``x-methods`` lists each method's direction and cancellation; the root
    accepts any one message (a request or notification of a known method, or a response).
    """
    defs: dict[str, Any] = {name: t.schema() for name, t in sorted(DEFINITIONS.items())}
    requests: list[dict[str, Any]] = []
    methods: dict[str, Any] = {}
    for m in METHOD_LIST:
        defs[f"{m.def_name}Params"] = m.params.schema()
        entry: dict[str, Any] = {
            "direction": m.direction,
            "description": m.description,
            "params": {"$ref": f"#/$defs/{m.def_name}Params"},
        }
        if m.result is not None:
            defs[f"{m.def_name}Result"] = m.result.schema()
            entry["result"] = {"$ref": f"#/$defs/{m.def_name}Result"}
            entry["cancellable"] = m.cancellable
        else:
            entry["notification"] = True
        defs[f"{m.def_name}Message"] = _envelope(m)
        requests.append({"$ref": f"#/$defs/{m.def_name}Message"})
        methods[m.name] = entry
    defs["Response"] = {
        "type": "object",
        "properties": {
            "jsonrpc": {"const": "2.0"},
            "id": {"anyOf": [{"$ref": "#/$defs/RequestId"}, {"type": "null"}]},
            "result": {},
            "error": {"$ref": "#/$defs/ErrorObject"},
        },
        "required": ["jsonrpc", "id"],
        "oneOf": [{"required": ["result"]}, {"required": ["error"]}],
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:codemode:protocol:1",
        "title": "codemode wire protocol, version 1",
        "description": "JSON-RPC 2.0 messages of `codemode serve` (docs/protocol.md). Generated by "
        "`python -m codemode.protocol.schemagen --write` from codemode/protocol/messages.py; "
        "do not edit by hand.",
        "anyOf": [*requests, {"$ref": "#/$defs/Response"}],
        "x-protocolVersion": PROTOCOL_VERSION,
        "x-errorCodes": {
            "parseError": PARSE_ERROR,
            "invalidRequest": INVALID_REQUEST,
            "methodNotFound": METHOD_NOT_FOUND,
            "invalidParams": INVALID_PARAMS,
            "internalError": INTERNAL_ERROR,
            "notInitialized": NOT_INITIALIZED,
            "requestCancelled": REQUEST_CANCELLED,
            "codemodeError": CODEMODE_ERROR,
            "toolError": TOOL_ERROR,
        },
        "x-errorKinds": sorted(ERROR_CLASSES),
        "x-methods": methods,
        "$defs": defs,
    }


def schema_text() -> str:
    """The exact text of ``schema.json``."""
    return json.dumps(generate_schema(), indent=2, ensure_ascii=False) + "\n"
