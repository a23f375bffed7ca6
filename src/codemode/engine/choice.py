"""Engines by name, for the fronts' ``--engine`` flag (docs/python-cells.md).

``v8`` is the default JavaScript engine; ``python`` runs Python cells on Monty.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from codemode.engine.base import Engine

__all__ = ["ENGINE_CHOICES", "engine_factory"]

ENGINE_CHOICES: Final = ("v8", "python")


def engine_factory(name: str) -> Callable[[], Engine] | None:
    """A factory of fresh engines named ``name``; None for the default engine (``v8``).
    Raises ``ValueError`` for an unknown name."""
    if name == "v8":
        return None
    if name == "python":
        from codemode.engine.python import PythonEngine

        return PythonEngine
    raise ValueError(f"unknown engine {name!r}; choose one of {', '.join(ENGINE_CHOICES)}")
