"""The exception hierarchy of codemode (docs/sessions.md).

Every error the public API raises is a :class:`CodeModeError`. Each subclass carries the fields its
message names, so a caller (or the wire protocol, which rebuilds errors from their ``kind`` and
fields) can act on it without parsing text.
"""

from __future__ import annotations

__all__ = [
    "AlreadyTerminating",
    "BusyObserver",
    "ClosedCell",
    "CodeModeError",
    "EngineError",
    "ForeignHandle",
    "IdempotencyConflict",
    "InvalidGeneration",
    "MissingCell",
    "NotAwaitingApproval",
    "ObservationConflict",
    "ProtocolError",
    "SessionBusy",
    "SessionLost",
    "ShuttingDown",
    "StoreError",
    "UnknownSession",
    "WrongCellKind",
]


class CodeModeError(Exception):
    """Base class of every error raised by codemode's public API."""

    def fields(self) -> dict[str, object]:
        """The structured fields of this error (snake_case names), for the wire protocol."""
        return {}


class ShuttingDown(CodeModeError):
    """The session has begun shutting down; no new cell can be created."""

    def __init__(self) -> None:
        super().__init__("code mode session is shutting down")


class _CellError(CodeModeError):
    def __init__(self, cell_id: str, message: str) -> None:
        super().__init__(message)
        self.cell_id = cell_id

    def fields(self) -> dict[str, object]:
        return {"cell_id": self.cell_id}


class MissingCell(_CellError):
    """The cell id is unknown to this session, or the cell has closed."""

    def __init__(self, cell_id: str) -> None:
        super().__init__(cell_id, f"exec cell {cell_id} not found")


class BusyObserver(_CellError):
    """Another observation of the cell is in progress; it keeps its place."""

    def __init__(self, cell_id: str) -> None:
        super().__init__(cell_id, f"exec cell {cell_id} already has an active observer")


class AlreadyTerminating(_CellError):
    """A termination of the cell is already in progress."""

    def __init__(self, cell_id: str) -> None:
        super().__init__(cell_id, f"exec cell {cell_id} is already terminating")


class ClosedCell(_CellError):
    """The cell is being terminated, so it can no longer be observed or resumed."""

    def __init__(self, cell_id: str) -> None:
        super().__init__(cell_id, f"exec cell {cell_id} closed unexpectedly")


class ForeignHandle(_CellError):
    """The handle was created by another runtime than the one it was passed to."""

    def __init__(self, cell_id: str) -> None:
        super().__init__(cell_id, f"exec cell {cell_id} belongs to another session")


class WrongCellKind(_CellError):
    """The cell is of the other kind (continuing or pausable) than the operation expects."""

    def __init__(self, cell_id: str, expected: str, actual: str) -> None:
        super().__init__(cell_id, f"exec cell {cell_id} is {actual}, expected {expected}")
        self.expected = str(expected)
        self.actual = str(actual)

    def fields(self) -> dict[str, object]:
        return {"cell_id": self.cell_id, "expected": self.expected, "actual": self.actual}


class InvalidGeneration(_CellError):
    """A resume named a generation the cell has not reached."""

    def __init__(self, cell_id: str, requested: int, latest: int | None) -> None:
        latest_text = "none" if latest is None else str(latest)
        super().__init__(
            cell_id,
            f"exec cell {cell_id} cannot resume generation {requested}; "
            f"latest generation is {latest_text}",
        )
        self.requested = requested
        self.latest = latest

    def fields(self) -> dict[str, object]:
        return {"cell_id": self.cell_id, "requested": self.requested, "latest": self.latest}


class NotAwaitingApproval(_CellError):
    """``approve`` or ``reject`` named a call that is not held for approval in that cell."""

    def __init__(self, cell_id: str, call_id: str) -> None:
        super().__init__(cell_id, f"exec cell {cell_id} has no call {call_id} awaiting approval")
        self.call_id = call_id

    def fields(self) -> dict[str, object]:
        return {"cell_id": self.cell_id, "call_id": self.call_id}


class IdempotencyConflict(CodeModeError):
    """An idempotency key was reused for a request that differs from the recorded one."""

    def __init__(self, key: str) -> None:
        super().__init__(f"idempotency key {key} was reused for a different request")
        self.key = key

    def fields(self) -> dict[str, object]:
        return {"key": self.key}


class EngineError(CodeModeError):
    """The engine could not start a cell (or the session refused to admit one)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def fields(self) -> dict[str, object]:
        return {"text": self.text}


# ------------------------------------------------------------ the wire (docs/protocol.md)


class UnknownSession(CodeModeError):
    """The protocol server knows no session of that id (or its connection has ended)."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"code mode session {session_id} not found")
        self.session_id = session_id

    def fields(self) -> dict[str, object]:
        return {"session_id": self.session_id}


class ObservationConflict(_CellError):
    """A ``cell/wait``, ``cell/waitToPending`` or ``observation/release`` named an observation
    generation that does not fit the cell's record (docs/protocol.md); the message says how."""

    def __init__(self, cell_id: str, generation: int, message: str) -> None:
        super().__init__(cell_id, message)
        self.generation = generation

    def fields(self) -> dict[str, object]:
        return {"cell_id": self.cell_id, "generation": self.generation}


class SessionLost(CodeModeError):
    """Client side: the connection to the protocol server ended; the session is gone."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"code mode session lost: {reason}")
        self.reason = reason

    def fields(self) -> dict[str, object]:
        return {"reason": self.reason}


class ProtocolError(CodeModeError):
    """Client side: the peer broke the protocol or answered with a standard JSON-RPC error."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def fields(self) -> dict[str, object]:
        return {"message": self.message, "code": self.code}


# -------------------------------------------------- durable sessions (docs/durability.md)


class SessionBusy(CodeModeError):
    """The session is open in another runtime (its store lease is held elsewhere), or this
    runtime lost its lease to another one (docs/durability.md)."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"code mode session {session_id} is open elsewhere")
        self.session_id = session_id

    def fields(self) -> dict[str, object]:
        return {"session_id": self.session_id}


class StoreError(CodeModeError):
    """The session store failed: unreachable, corrupt, read-only, full, or of a newer schema.
    The message is the store's text."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def fields(self) -> dict[str, object]:
        return {"text": self.text}
