"""codemode: run LLM-written JavaScript cells that call your tools, in a V8 sandbox.

The public API is the names below (docs/sessions.md); everything else is internal.
``RemoteSession`` is imported on first use, so ``import codemode`` (and ``codemode.model``) does
not load the WebSocket client library.
"""

from typing import TYPE_CHECKING, Any

from codemode.contract import Session
from codemode.engine.base import Engine
from codemode.engine.python import PythonEngine
from codemode.engine.worker import WorkerEngine
from codemode.errors import (
    AlreadyTerminating,
    BusyObserver,
    ClosedCell,
    CodeModeError,
    EngineError,
    ForeignHandle,
    IdempotencyConflict,
    InvalidGeneration,
    MissingCell,
    NotAwaitingApproval,
    ObservationConflict,
    ProtocolError,
    SessionBusy,
    SessionLost,
    ShuttingDown,
    StoreError,
    UnknownSession,
    WrongCellKind,
)
from codemode.model import (
    ApprovalRequest,
    Cell,
    CellEvent,
    CellKind,
    CellLimits,
    Completed,
    CreateCellRequest,
    ImageDetail,
    ImageItem,
    NestedToolCall,
    OutputItem,
    PausableCell,
    PausableCellEvent,
    Pending,
    PendingFrontier,
    ResumeOutcome,
    SessionDelegate,
    Terminated,
    TextItem,
    ToolDefinition,
    ToolKind,
    Yielded,
)
from codemode.session import SessionRuntime, tools_delegate
from codemode.store import PostgresStore, SessionStore, SqliteStore
from codemode.tools import CodeModeTools, ToolResult

if TYPE_CHECKING:
    from codemode.protocol.client import RemoteSession

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "RemoteSession":
        from codemode.protocol.client import RemoteSession

        globals()["RemoteSession"] = RemoteSession
        return RemoteSession
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AlreadyTerminating",
    "ApprovalRequest",
    "BusyObserver",
    "Cell",
    "CellEvent",
    "CellKind",
    "CellLimits",
    "ClosedCell",
    "CodeModeError",
    "CodeModeTools",
    "Completed",
    "CreateCellRequest",
    "Engine",
    "EngineError",
    "ForeignHandle",
    "IdempotencyConflict",
    "ImageDetail",
    "ImageItem",
    "InvalidGeneration",
    "MissingCell",
    "NestedToolCall",
    "NotAwaitingApproval",
    "ObservationConflict",
    "OutputItem",
    "PausableCell",
    "PausableCellEvent",
    "Pending",
    "PendingFrontier",
    "PostgresStore",
    "ProtocolError",
    "PythonEngine",
    "RemoteSession",
    "ResumeOutcome",
    "Session",
    "SessionBusy",
    "SessionDelegate",
    "SessionLost",
    "SessionRuntime",
    "SessionStore",
    "ShuttingDown",
    "SqliteStore",
    "StoreError",
    "Terminated",
    "TextItem",
    "ToolDefinition",
    "ToolKind",
    "ToolResult",
    "UnknownSession",
    "WorkerEngine",
    "WrongCellKind",
    "Yielded",
    "__version__",
    "tools_delegate",
]
