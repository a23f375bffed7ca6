"""The engines that run cells: :class:`V8Engine` (in-process, the library default),
:class:`WorkerEngine` (V8 in worker processes under OS limits, the default of ``codemode serve``
and ``codemode mcp``) and :class:`GuardedEngine` (an in-process RSS watchdog). See
``docs/engines.md``."""

from codemode.engine.base import Engine, EngineCell
from codemode.engine.choice import default_engine, engine_factory, set_default_engine
from codemode.engine.v8 import V8Engine
from codemode.engine.watchdog import GuardedEngine
from codemode.engine.worker import WorkerEngine

__all__ = [
    "Engine",
    "EngineCell",
    "GuardedEngine",
    "V8Engine",
    "WorkerEngine",
    "default_engine",
    "engine_factory",
    "set_default_engine",
]
