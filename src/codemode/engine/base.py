"""The engine boundary: the sandbox that runs one cell's JavaScript (docs/cells.md).

An :class:`Engine` opens one :class:`EngineCell` per cell. The cell layer drives an engine cell
with a few commands (run the body, apply tool results and fire timers, close) and reads back what
the cell did as plain data (:class:`StepReport`). JavaScript only runs inside those commands, so
between two commands the cell is quiescent and the report's ``pending_call_ids`` are exact.

A second engine (for example one running Python cells) implements these two classes; nothing
above this layer changes.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from codemode.errors import EngineError
from codemode.model import CellLimits, OutputItem, ToolDefinition

__all__ = [
    "CellBoot",
    "Engine",
    "EngineCell",
    "EngineEvent",
    "EngineLost",
    "EnvRead",
    "NotifyRequested",
    "OutputProduced",
    "Settlement",
    "StepInput",
    "StepReport",
    "StoreWritten",
    "StoresWritten",
    "TimerCleared",
    "TimerFired",
    "TimerSet",
    "ToolCallRequested",
    "ToolResultInput",
    "YieldRequested",
    "limit_error_text",
]


def limit_error_text(limits: CellLimits, field_name: str) -> str:
    """The fixed ``error_text`` of a cell that exceeded one of its limits (docs/safety.md)."""
    return f"exec cell exceeded {field_name} ({getattr(limits, field_name)!r})"


@dataclass(frozen=True)
class EnvRead:
    """``count`` consecutive reads a cell made of one of its environment's nondeterministic
    sources, that all answered ``value`` (a loop polling the clock makes one per millisecond).

    ``source`` names what was read: ``"clock"`` (``Date.now()``, ``new Date()``, ``Date()``,
    ``datetime.now()``, ...: the value in milliseconds since the Unix epoch) or ``"random"`` (the
    seed of the cell's ``Math.random()`` generator, read at its first call, in [0, 1)). Durable
    sessions record every read and feed the values back when a cell is replayed
    (docs/determinism.md)."""

    source: str
    value: float
    count: int = 1


@dataclass(frozen=True)
class CellBoot:
    """Everything an engine needs to start one cell."""

    cell_id: str
    source: str
    tools: Sequence[ToolDefinition]
    stored: Mapping[str, Any]
    limits: CellLimits
    pausable: bool
    # JSON text of an array holding each tool's reference entry (its heading, description and
    # TypeScript declaration), in ``tools`` order: what the cell's ``catalog.describe`` answers
    # (docs/model-tools.md). None: ``catalog.describe`` gives the description alone.
    tool_reference: str | None = None
    # Recorded reads to answer first, in order, when a cell is replayed (docs/determinism.md):
    # each entry answers its ``count`` next reads of its source; a read of another source, and
    # every read after the record or after such a mismatch, answers a live value.
    replay_reads: Sequence[EnvRead] = ()


# ---------------------------------------------------------------------------- what a cell did


@dataclass(frozen=True, slots=True)
class ToolCallRequested:
    """The cell issued a nested call (already validated and counted against the limits)."""

    call_id: str
    tool_index: int
    input: Any


@dataclass(frozen=True, slots=True)
class OutputProduced:
    item: OutputItem


@dataclass(frozen=True, slots=True)
class NotifyRequested:
    text: str


@dataclass(frozen=True, slots=True)
class YieldRequested:
    """``yield_control()`` in a continuing cell."""


@dataclass(frozen=True, slots=True)
class TimerSet:
    timer_id: int
    delay: float  # seconds


@dataclass(frozen=True, slots=True)
class TimerCleared:
    timer_id: int


@dataclass(frozen=True, slots=True)
class StoreWritten:
    """One stored-value write: the value as its JSON text (finite JSON, as the session keeps
    it)."""

    key: str
    value: str


@dataclass(frozen=True, slots=True)
class StoresWritten:
    """Many stored-value writes at once: key -> the value's JSON text (last write per key)."""

    writes: Mapping[str, str]


EngineEvent = (
    ToolCallRequested
    | OutputProduced
    | NotifyRequested
    | YieldRequested
    | TimerSet
    | TimerCleared
    | StoreWritten
    | StoresWritten
)


@dataclass(frozen=True, slots=True)
class Settlement:
    """The body settled (or ``exit()`` was called, or a limit ended the cell)."""

    error_text: str | None  # None: success


@dataclass(frozen=True, slots=True)
class StepReport:
    """What one command made the cell do, in order, and where it now stands."""

    events: tuple[EngineEvent, ...]
    pending_call_ids: tuple[str, ...]
    settlement: Settlement | None
    cpu_seconds: float = 0.0  # JavaScript time this command took
    # Every read of the clock or the random source the cell made during this command, in order,
    # replayed ones included, as runs of equal reads (the host compares them with the record to
    # detect divergence; docs/determinism.md).
    reads: tuple[EnvRead, ...] = ()


# ---------------------------------------------------------------------------- what it is given


@dataclass(frozen=True, slots=True)
class ToolResultInput:
    """The delegate's answer to one call: a JSON value (as JSON text), or an error message."""

    call_id: str
    ok: bool
    value_json: str = "null"
    message: str = ""


@dataclass(frozen=True, slots=True)
class TimerFired:
    timer_id: int


StepInput = ToolResultInput | TimerFired


class EngineLost(Exception):
    """The engine ended without reporting a settlement (docs/sessions.md)."""


class EngineCell(abc.ABC):
    """One cell's sandbox. Commands are issued one at a time; ``close`` may come at any moment."""

    @abc.abstractmethod
    async def run(self) -> StepReport:
        """Start the body and run it until it first waits; report what it did."""

    @abc.abstractmethod
    async def step(self, inputs: Sequence[StepInput]) -> StepReport:
        """Apply tool results and fire timers in the given order, run to quiescence, report."""

    async def stop(self) -> tuple[EngineEvent, ...]:
        """Stop the JavaScript now, close, and return what the cell had produced but not yet
        reported (so a termination loses no output). The default salvages nothing."""
        self.close()
        return ()

    @abc.abstractmethod
    def close(self) -> None:
        """Stop the cell's JavaScript at once and release its resources. Idempotent, never
        blocks for long; a command in flight ends with :class:`EngineLost`."""

    def watch_loss(self, callback: Callable[[str], None]) -> None:  # noqa: B027 - optional
        """Ask to be told (``callback(reason)``, on the event loop) when the engine is lost
        while no command is in flight, e.g. a worker process died while the cell waited for
        a tool or was paused. Engines that cannot lose a cell that way ignore it."""

    @property
    @abc.abstractmethod
    def closed(self) -> bool:
        """True once the engine cell can run no more JavaScript."""

    async def dump(self) -> bytes:
        """The cell at its current frontier as bytes that :meth:`Engine.load_cell` of the same
        kind of engine (in any process) continues from, without replay. Engines that cannot
        snapshot a cell raise ``EngineError`` (the default)."""
        raise EngineError("this engine cannot dump a cell")


class Engine(abc.ABC):
    """A kind of sandbox. Opens one :class:`EngineCell` per cell."""

    name: str = "engine"
    language: str = "javascript"  # the language of the cells it runs

    @abc.abstractmethod
    async def open_cell(self, boot: CellBoot) -> EngineCell:
        """Create a sandbox for ``boot`` without running the body; raise ``EngineError``
        (from :mod:`codemode.errors`) when that is impossible."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release engine-wide resources (pools). Cells already open stay usable."""

    async def aclose(self) -> None:
        """Close, and wait until the resources of every closed cell are released."""
        self.close()

    async def load_cell(self, boot: CellBoot, state: bytes) -> EngineCell:
        """Restore a cell from :meth:`EngineCell.dump`; its next command is ``step``. Engines
        that cannot raise ``EngineError`` (the default)."""
        raise EngineError(f"the {self.name} engine cannot load a dumped cell")
