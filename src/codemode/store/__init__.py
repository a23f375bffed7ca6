"""Session stores: where durable sessions live (docs/durability.md).

``SessionStore`` is the interface; ``SqliteStore`` (one file, several processes of one machine)
and ``PostgresStore`` (shared by several machines; needs the ``postgres`` extra) implement it.
"""

from typing import TYPE_CHECKING

from codemode.store.base import (
    Batch,
    CellJournal,
    CellRecord,
    Delivery,
    Entry,
    JournalEntry,
    KeyRecord,
    Lease,
    NewCell,
    OpenedSession,
    SessionRecord,
    SessionStore,
)
from codemode.store.lease import LeaseKeeper
from codemode.store.postgres import PostgresStore
from codemode.store.sqlite import SqliteStore

if TYPE_CHECKING:  # mypy checks that both stores implement the protocol
    _sqlite: SessionStore = SqliteStore("")
    _postgres: SessionStore = PostgresStore("")

__all__ = [
    "Batch",
    "CellJournal",
    "CellRecord",
    "Delivery",
    "Entry",
    "JournalEntry",
    "KeyRecord",
    "Lease",
    "LeaseKeeper",
    "NewCell",
    "OpenedSession",
    "PostgresStore",
    "SessionRecord",
    "SessionStore",
    "SqliteStore",
]
