"""Helpers of the store tests: the backend under test and ids."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgserver import PostgresServer

from codemode.store.base import SessionStore

CHILD = Path(__file__).parent / "store_child.py"


@dataclass
class Backend:
    """One store backend of a test: ``make()`` opens another store on the same database (as
    another process would), ``location`` is what a child process needs to do the same."""

    name: str
    location: str
    make_store: Callable[..., SessionStore]
    stores: list[SessionStore] = field(default_factory=list)
    server: PostgresServer | None = None
    schema: str | None = None

    def make(self, *, lease_seconds: float = 10.0) -> Any:
        store = self.make_store(self.location, lease_seconds=lease_seconds)
        self.stores.append(store)
        return store

    def child(self, *args: str) -> subprocess.Popen[str]:
        """A child process running tests/store/store_child.py against this backend."""
        return subprocess.Popen(
            [sys.executable, str(CHILD), self.name, self.location, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def new_id() -> str:
    return uuid.uuid4().hex[:16]
