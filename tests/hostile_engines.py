"""The engines the hostile-cell suite (tests/test_hostile.py) attacks.

Each entry is a name (the pytest id) and a factory returning a fresh engine. Every engine listed
must hold every limit against every attack in the suite.
"""

from __future__ import annotations

from collections.abc import Callable

from codemode.engine.base import Engine
from codemode.engine.v8 import V8Engine
from codemode.engine.worker import WorkerEngine


def _in_process_v8() -> Engine:
    return V8Engine()


def _worker_process_v8() -> Engine:
    return WorkerEngine()


ENGINE_FACTORIES: list[tuple[str, Callable[[], Engine]]] = [
    ("v8-in-process", _in_process_v8),
    ("v8-worker-process", _worker_process_v8),
]
