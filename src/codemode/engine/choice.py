"""Engines by name, for the fronts' ``--engine`` flag, and the default engine of a session.

``worker`` runs JavaScript cells on V8 in worker processes (docs/engines.md), ``v8`` runs them on
V8 in this process, ``python`` runs Python cells on Monty (docs/python-cells.md). On the wire
both V8 engines are ``v8``: they run the same cells.

The library default is the in-process :class:`V8Engine`. ``codemode serve`` and ``codemode mcp``
default to ``worker``, so every session they open gets its own worker process.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Final

from codemode.engine.base import Engine

__all__ = [
    "ENGINE_CHOICES",
    "ENGINE_NAMES",
    "default_engine",
    "engine_factory",
    "engine_options",
    "set_default_engine",
    "using_default_engine",
    "wire_engine_name",
]

ENGINE_CHOICES: Final = ("worker", "v8", "python")
ENGINE_NAMES: Final = ENGINE_CHOICES

_default: Callable[[], Engine] | None = None
# Set by the command line (--rss-budget-bytes, --worker-memory-limit-bytes) for the factories
# the fronts build by name.
_options: dict[str, int | None] = {"rss_budget_bytes": None, "memory_limit_bytes": None}


def engine_factory(
    name: str,
    *,
    rss_budget_bytes: int | None = None,
    memory_limit_bytes: int | None = None,
) -> Callable[[], Engine]:
    """A factory of fresh engines named ``name`` (``worker``, ``v8`` or ``python``); raises
    ``ValueError`` for an unknown name.

    ``rss_budget_bytes``: for ``worker``, the RSS budget of each worker process (``None``: the
    worker default); for ``v8``, a process-wide budget enforced by :class:`GuardedEngine`
    (``None``: no watchdog). ``memory_limit_bytes``: ``RLIMIT_DATA`` of each worker (``None``:
    the default). Options not given come from :func:`engine_options`.
    """
    if rss_budget_bytes is None:
        rss_budget_bytes = _options["rss_budget_bytes"]
    if memory_limit_bytes is None:
        memory_limit_bytes = _options["memory_limit_bytes"]
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
    if name == "python":
        from codemode.engine.python import PythonEngine

        return PythonEngine
    raise ValueError(f"unknown engine {name!r}; choose one of {', '.join(ENGINE_CHOICES)}")


def wire_engine_name(name: str) -> str:
    """The protocol's name of the engine ``name`` (``session/open``'s ``engine``): ``v8`` for
    both V8 engines."""
    return "v8" if name in ("v8", "worker") else name


@contextlib.contextmanager
def engine_options(
    *, rss_budget_bytes: int | None = None, memory_limit_bytes: int | None = None
) -> Iterator[None]:
    """Defaults for :func:`engine_factory` inside the block (the command line's flags)."""
    previous = dict(_options)
    _options.update(rss_budget_bytes=rss_budget_bytes, memory_limit_bytes=memory_limit_bytes)
    try:
        yield
    finally:
        _options.update(previous)


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
    ``CODEMODE_ENGINE`` (``worker``, ``v8`` or ``python``), else the in-process
    :class:`V8Engine`."""
    if _default is not None:
        return _default()
    name = os.environ.get("CODEMODE_ENGINE")
    if name:
        return engine_factory(name)()
    from codemode.engine.v8 import V8Engine

    return V8Engine()
