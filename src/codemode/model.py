"""The plain data of codemode's public API (docs/sessions.md): requests, tools, events, limits.

Nothing here does I/O or knows about an engine; every type is a frozen dataclass or an enum so it
can be compared, hashed (where its fields allow), logged and sent over the wire as is.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "ApprovalRequest",
    "Cell",
    "CellEvent",
    "CellKind",
    "CellLimits",
    "Completed",
    "CreateCellRequest",
    "ImageDetail",
    "ImageItem",
    "NestedToolCall",
    "OutputItem",
    "PausableCell",
    "PausableCellEvent",
    "Pending",
    "PendingFrontier",
    "ResumeOutcome",
    "SessionDelegate",
    "Terminated",
    "TextItem",
    "ToolDefinition",
    "ToolKind",
    "Yielded",
]

MiB = 1024 * 1024


class ToolKind(enum.StrEnum):
    """How a nested tool takes its argument."""

    FUNCTION = "function"  # takes a JSON object (no argument means {})
    FREEFORM = "freeform"  # takes a string


@dataclass(frozen=True)
class ToolDefinition:
    """A nested tool the host offers to cells; reachable in a cell as ``tools.<identifier>``."""

    name: str
    description: str = ""
    kind: ToolKind = ToolKind.FUNCTION
    namespace: str | None = None
    input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None
    needs_approval: bool = False
    """Each call of this tool is held until the host approves it (see ``docs/approvals.md``)."""


@dataclass(frozen=True)
class CreateCellRequest:
    """Everything needed to start a cell: its program, its tools and its identity."""

    source: str
    tools: Sequence[ToolDefinition] = ()
    tool_call_id: str = ""
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class NestedToolCall:
    """One call a cell made to a nested tool, as handed to :meth:`SessionDelegate.invoke_tool`."""

    cell_id: str
    call_id: str
    tool: ToolDefinition
    input: Any


@runtime_checkable
class SessionDelegate(Protocol):
    """The host side of a session: runs nested tool calls and receives notifications."""

    async def invoke_tool(self, call: NestedToolCall) -> Any:
        """Run one nested call. The returned JSON value resolves the promise in the cell; an
        exception rejects it with ``str(exception)``. The coroutine is cancelled when the cell is
        terminated, completes without awaiting it, or the session shuts down."""
        ...

    async def notify(self, call_id: str, cell_id: str, text: str) -> None:
        """Receive an out-of-band progress message from ``notify(...)`` in a cell."""
        ...


ToolFunction = Callable[..., Awaitable[Any] | Any]
NotifyFunction = Callable[[str, str, str], Awaitable[None]]


@dataclass(frozen=True)
class TextItem:
    """A piece of text output."""

    text: str


class ImageDetail(enum.StrEnum):
    """The resolution hint of an image item."""

    AUTO = "auto"
    LOW = "low"
    HIGH = "high"
    ORIGINAL = "original"


@dataclass(frozen=True)
class ImageItem:
    """An image output, always a ``data:`` URL."""

    image_url: str
    detail: ImageDetail | None = None


OutputItem = TextItem | ImageItem


@dataclass(frozen=True)
class Yielded:
    """The observation budget ran out, or the cell called ``yield_control()``; it keeps running."""

    items: tuple[OutputItem, ...]


@dataclass(frozen=True)
class Completed:
    """The cell's body settled; ``error_text`` is set when it failed."""

    items: tuple[OutputItem, ...]
    error_text: str | None = None


@dataclass(frozen=True)
class Terminated:
    """The cell was terminated (by ``terminate`` or the session's shutdown)."""

    items: tuple[OutputItem, ...]


@dataclass(frozen=True)
class ApprovalRequest:
    """A nested call held until the host approves or rejects it (see ``docs/approvals.md``).

    ``call_id`` was assigned when the cell issued the call; ``input`` is what the delegate will
    receive if the call is approved.
    """

    cell_id: str
    call_id: str
    tool: ToolDefinition
    input: Any


@dataclass(frozen=True)
class PendingFrontier:
    """A pausable cell's quiescent point: it waits only on tool calls or timers."""

    generation: int
    items: tuple[OutputItem, ...]
    pending_tool_call_ids: tuple[str, ...]
    awaiting_approval: tuple[ApprovalRequest, ...] = ()
    """The held calls among the pending ones, sorted by call id (see ``docs/approvals.md``)."""


@dataclass(frozen=True)
class Pending:
    """A pausable cell is paused at ``frontier`` until it is resumed with its generation."""

    frontier: PendingFrontier


CellEvent = Yielded | Completed | Terminated
PausableCellEvent = Pending | Completed | Terminated


class ResumeOutcome(enum.Enum):
    """What a ``resume`` did."""

    RESUMED = "resumed"
    ALREADY_RUNNING = "already_running"


class CellKind(enum.StrEnum):
    """The execution capability of a cell; the single source of its execution policy."""

    CONTINUING = "continuing"
    PAUSABLE = "pausable"


@dataclass(frozen=True)
class _Handle:
    cell_id: str
    # Identity of the runtime that minted the handle; two handles are equal only when they name
    # the same cell of the same runtime.
    _owner: object = field(repr=False)


@dataclass(frozen=True)
class Cell(_Handle):
    """A handle on a continuing cell. Only a runtime creates one; it stays bound to it."""

    @property
    def kind(self) -> CellKind:
        return CellKind.CONTINUING


@dataclass(frozen=True)
class PausableCell(_Handle):
    """A handle on a pausable cell. Only a runtime creates one; it stays bound to it."""

    @property
    def kind(self) -> CellKind:
        return CellKind.PAUSABLE


@dataclass(frozen=True)
class CellLimits:
    """Per-cell and per-session limits (docs/safety.md). Every field must be positive.

    Attributes:
        max_heap_bytes: memory of one cell's JavaScript; V8's heap and the contents of
            ``ArrayBuffer``s and typed arrays are each held to this many bytes.
        max_tool_calls: nested tool calls one cell may issue in its life.
        max_parallel_tool_calls: calls of one cell at the delegate at one time; further calls
            wait, in issue order, until an earlier one settles (they are not an error).
        max_output_bytes: UTF-8 bytes of one cell's text items, image URLs and notifications.
        max_cpu_seconds: time one cell's JavaScript may run; waiting for tools or timers and
            pauses do not count.
        max_live_cells: cells of one session admitted and not yet closed.
        max_idempotency_keys: idempotency keys one session retains; at least ``max_live_cells``.
        max_stored_bytes: UTF-8 bytes of the JSON of one session's stored values; a ``store``
            or a commit that would pass it ends the cell with this limit's error.
    """

    max_heap_bytes: int = 64 * MiB
    max_tool_calls: int = 1000
    max_parallel_tool_calls: int = 100
    max_output_bytes: int = 1 * MiB
    max_cpu_seconds: float = 30.0
    max_live_cells: int = 256
    max_idempotency_keys: int = 10_000
    max_stored_bytes: int = 16 * MiB

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"CellLimits.{f.name} must be a number, got {value!r}")
            if f.name != "max_cpu_seconds" and not isinstance(value, int):
                raise ValueError(f"CellLimits.{f.name} must be an integer, got {value!r}")
            if not value > 0 or value != value or value == float("inf"):
                raise ValueError(f"CellLimits.{f.name} must be positive and finite, got {value!r}")
        if self.max_idempotency_keys < self.max_live_cells:
            raise ValueError(
                "CellLimits.max_idempotency_keys must be at least max_live_cells "
                f"({self.max_idempotency_keys} < {self.max_live_cells})"
            )


def limits_from_mapping(values: Mapping[str, Any]) -> CellLimits:
    """Build limits from a mapping of field names, rejecting unknown names with ``ValueError``."""
    known = {f.name for f in fields(CellLimits)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown CellLimits fields: {', '.join(unknown)}")
    return CellLimits(**dict(values))
