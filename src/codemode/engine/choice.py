"""Which engine a ``SessionRuntime`` gets when none is passed, and the engines by name.

The library default is the in-process :class:`V8Engine`. ``codemode serve`` and ``codemode mcp``
switch the process default to :class:`WorkerEngine` (``--engine worker``, their default), so
every session they open gets its own worker process. See ``docs/engines.md``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

from codemode.engine.base import Engine

__all__ = [
    "ENGINE_NAMES",
    "default_engine",
    "engine_factory",
    "set_default_engine",
    "using_default_engine",
]

ENGINE_NAMES = ("v8", "worker")

_default: Callable[[], Engine] | None = None


def engine_factory(
    name: str,
    *,
    rss_budget_bytes: int | None = None,
    memory_limit_bytes: int | None = None,
) -> Callable[[], Engine]:
    """A factory of fresh engines of kind ``name`` (``"v8"`` or ``"worker"``).

    ``rss_budget_bytes``: for ``"worker"``, the RSS budget of each worker process (``None``: the
    worker default); for ``"v8"``, a process-wide budget enforced by :class:`GuardedEngine`
    (``None``: no watchdog). ``memory_limit_bytes``: ``RLIMIT_DATA`` of each worker (``None``:
    the default); ignored for ``"v8"``.
    """
    if name == "v8":
        from codemode.engine.v8 import V8Engine

        if rss_budget_bytes is None:
            return V8Engine
        budget = rss_budget_bytes

        def guarded() -> Engine:
            from codemode.engine.watchdog import GuardedEngine

            return GuardedEngine(V8Engine(), rss_budget_bytes=budget)

        return guarded
    if name == "worker":
        from codemode.engine.worker import DEFAULT_MEMORY_LIMIT, DEFAULT_RSS_BUDGET, WorkerEngine

        rss = DEFAULT_RSS_BUDGET if rss_budget_bytes is None else rss_budget_bytes
        data = DEFAULT_MEMORY_LIMIT if memory_limit_bytes is None else memory_limit_bytes

        def worker() -> Engine:
            return WorkerEngine(memory_limit_bytes=data, rss_budget_bytes=rss)

        return worker
    raise ValueError(f"unknown engine {name!r}; choose one of {', '.join(ENGINE_NAMES)}")


def set_default_engine(factory: Callable[[], Engine] | None) -> None:
    """Make ``factory`` build the engine of every ``SessionRuntime`` created without one
    (``None``: back to the in-process :class:`V8Engine`)."""
    global _default
    _default = factory


@contextlib.contextmanager
def using_default_engine(factory: Callable[[], Engine] | None) -> Iterator[None]:
    """:func:`set_default_engine` for the block, then the previous default again."""
    previous = _default
    set_default_engine(factory)
    try:
        yield
    finally:
        set_default_engine(previous)


def default_engine() -> Engine:
    """A fresh engine for a session created without one: the one set by
    :func:`set_default_engine`, else the one named by the environment variable
    ``CODEMODE_ENGINE`` (``v8`` or ``worker``), else the in-process :class:`V8Engine`."""
    if _default is not None:
        return _default()
    name = os.environ.get("CODEMODE_ENGINE")
    if name:
        return engine_factory(name)()
    from codemode.engine.v8 import V8Engine

    return V8Engine()
