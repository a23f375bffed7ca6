"""codemode: run LLM-written JavaScript cells that call your tools, in a V8 sandbox.

The public API is the names below (SPEC section 1); everything else is internal.
"""

from codemode.engine.base import Engine
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
    ShuttingDown,
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
from codemode.session import SessionRuntime, tools_delegate

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
    "OutputItem",
    "PausableCell",
    "PausableCellEvent",
    "Pending",
    "PendingFrontier",
    "ResumeOutcome",
    "SessionDelegate",
    "SessionRuntime",
    "ShuttingDown",
    "Terminated",
    "TextItem",
    "ToolDefinition",
    "ToolKind",
    "WrongCellKind",
    "Yielded",
    "__version__",
    "tools_delegate",
]
