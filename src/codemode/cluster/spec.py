"""What crosses between a cluster's caller and its session hosts (docs/cluster.md).

Plain, picklable values: the description a host builds its own store from, the messages of the
delegate return path (a nested call, a notification, a cancellation), and the tagged replies of
the host's methods. Errors travel as the wire protocol's error objects (class name and fields) and
are rebuilt as the same class on the caller's side: a ``CodeModeError`` does not survive pickling
with its fields, its wire form does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

from codemode.errors import CodeModeError
from codemode.model import ToolDefinition
from codemode.protocol.messages import error_from_wire, error_to_wire
from codemode.store.base import SessionStore

__all__ = [
    "CallMessage",
    "CancelMessage",
    "Reply",
    "StoreSpec",
    "error_reply",
    "ok_reply",
    "unwrap",
]


@dataclass(frozen=True)
class StoreSpec:
    """A picklable description of a store: each host builds its own store from it.

    ``kind`` is ``"sqlite"`` (``where`` is the file's path; hosts must share that file system)
    or ``"postgres"`` (``where`` is the DSN).
    """

    kind: Literal["sqlite", "postgres"]
    where: str
    lease_seconds: float

    @classmethod
    def of(cls, store: SessionStore) -> StoreSpec:
        """The description of ``store`` (a ``SqliteStore`` or a ``PostgresStore``); a
        ``TypeError`` for any other store, whose hosts could not rebuild it."""
        from codemode.store.postgres import PostgresStore
        from codemode.store.sqlite import SqliteStore

        if isinstance(store, SqliteStore):
            return cls("sqlite", os.fspath(store.path.resolve()), store.lease_seconds)
        if isinstance(store, PostgresStore):
            # The DSN is the store's own setting; it has no public accessor.
            return cls("postgres", str(store._dsn), store.lease_seconds)
        raise TypeError(
            f"a SessionCluster needs a SqliteStore or a PostgresStore, got {type(store).__name__}"
        )

    def build(self) -> SessionStore:
        """A new store object of this description (one per host process)."""
        if self.kind == "sqlite":
            from codemode.store.sqlite import SqliteStore

            return SqliteStore(self.where, lease_seconds=self.lease_seconds)
        from codemode.store.postgres import PostgresStore

        return PostgresStore(self.where, lease_seconds=self.lease_seconds)

    def label(self) -> str:
        """A short stable digest naming this store (hosts of different stores differ by it)."""
        import hashlib

        text = f"{self.kind}:{self.where}"
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]


@dataclass(frozen=True)
class CallMessage:
    """Host to caller: run the delegate for one nested call (``notify`` false) or deliver one
    notification (``notify`` true: ``tool`` is ``None``, ``input`` the text). ``number`` names
    the request on this host; the answer quotes it."""

    number: int
    cell_id: str
    call_id: str
    tool: ToolDefinition | None
    input: Any
    notify: bool = False


@dataclass(frozen=True)
class CancelMessage:
    """Host to caller: the runtime cancelled request ``number`` (its cell ended)."""

    number: int


# A host method's reply: ("ok", value), ("error", wire error object) or ("moved", None) when
# the session is not open on that host (it restarted, or the session lives elsewhere now).
Reply = tuple[str, Any]


def ok_reply(value: Any) -> Reply:
    return ("ok", value)


def error_reply(exc: CodeModeError) -> Reply:
    return ("error", error_to_wire(exc))


MOVED: Reply = ("moved", None)


class SessionMoved(Exception):
    """The host answered that the session is not open there: reattach it."""


def unwrap(reply: Reply) -> Any:
    """The value of a reply, or raise its error (the same class with the same fields), or
    :class:`SessionMoved`."""
    tag, value = reply
    if tag == "ok":
        return value
    if tag == "error":
        raise error_from_wire(value["message"], value.get("data"))
    raise SessionMoved()
