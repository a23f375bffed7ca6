"""codemode: run LLM-written JavaScript cells that call your tools, in a V8 sandbox.

The public API is the names below (SPEC section 1); everything else is internal.
"""

from codemode.engine.base import Engine
from codemode.engine.python import PythonEngine
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
    ObservationConflict,
    ProtocolError,
    SessionLost,
    ShuttingDown,
    UnknownSession,
    WrongCellKind,
)
from codemode.model import (
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
from codemode.protocol.client import RemoteSession
from codemode.session import SessionRuntime, tools_delegate
from codemode.tools import CodeModeTools, ToolResult

__version__ = "0.1.0"

__all__ = [
    "AlreadyTerminating",
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
    "ObservationConflict",
    "OutputItem",
    "PausableCell",
    "PausableCellEvent",
    "Pending",
    "PendingFrontier",
    "ProtocolError",
    "PythonEngine",
    "RemoteSession",
    "ResumeOutcome",
    "SessionDelegate",
    "SessionLost",
    "SessionRuntime",
    "ShuttingDown",
    "Terminated",
    "TextItem",
    "ToolDefinition",
    "ToolKind",
    "ToolResult",
    "UnknownSession",
    "WrongCellKind",
    "Yielded",
    "__version__",
    "tools_delegate",
]
