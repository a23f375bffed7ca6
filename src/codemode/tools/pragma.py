"""The ``exec`` source and its optional first-line pragma (docs/model-tools.md, step 1).

``parse_exec_source`` either returns an :class:`ExecRequest` or raises :class:`PragmaError`, whose
``message`` (also ``str(error)``) is exactly one of the model-facing texts of the spec. The checks
run in the spec's order; the first that fails decides the message:

1. blank source (only whitespace, or empty): :data:`BLANK_SOURCE_MESSAGE`;
2. no pragma (the first line, after leading whitespace, does not start with ``// @exec:``): the
   whole source is the code, with the default budgets;
3. only whitespace after the first line: :data:`MISSING_CODE_MESSAGE`;
4. an empty directive (only whitespace after ``// @exec:``): :data:`NOT_OBJECT_MESSAGE`;
5. a directive that is not valid JSON: ``... must be valid JSON ...: {parser message}``, the parser
   message being that of Python's :mod:`json` (e.g. ``Expecting value: line 1 column 1 (char 0)``);
   ``NaN``/``Infinity`` and nesting deeper than the interpreter can parse count as invalid JSON;
6. JSON that is not an object: :data:`NOT_OBJECT_MESSAGE`;
7. a key other than ``yield_time_ms`` and ``max_output_tokens`` (the first in the object's order):
   ``... only supports ...; got `{key}```;
8. a field value that is not a non-negative integer (checked in the object's key order):
   ``... must be non-negative safe integers: {field}: expected a non-negative integer, got {value}``
   with the value as JSON. ``true``/``false`` and ``null`` are not integers. A float with an
   integral value (``5.0``, ``1e3``) is accepted as that integer, because JSON (and JavaScript) has
   a single number type and ``5.0`` *is* the integer 5 there;
9. a value above 2**53 - 1 (``yield_time_ms`` checked before ``max_output_tokens``):
   ``exec pragma field `{field}` must be a non-negative safe integer``.

The pragma line ends at the first ``\\n``; a ``\\r`` before it is whitespace of the directive.
The code is everything after that first newline, unchanged (it is not stripped).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "BLANK_SOURCE_MESSAGE",
    "DEFAULT_MAX_OUTPUT_TOKENS",
    "DEFAULT_YIELD_TIME_MS",
    "MAX_SAFE_INTEGER",
    "MISSING_CODE_MESSAGE",
    "NOT_OBJECT_MESSAGE",
    "PRAGMA_PREFIX",
    "ExecRequest",
    "PragmaError",
    "parse_exec_source",
]

PRAGMA_PREFIX: Final = "// @exec:"
DEFAULT_YIELD_TIME_MS: Final = 10_000
DEFAULT_MAX_OUTPUT_TOKENS: Final = 10_000
MAX_SAFE_INTEGER: Final = 2**53 - 1
_FIELDS: Final = ("yield_time_ms", "max_output_tokens")

BLANK_SOURCE_MESSAGE: Final = (
    "exec expects raw JavaScript source text (non-empty). Provide JS only, optionally with "
    'first-line `// @exec: {"yield_time_ms": 10000, "max_output_tokens": 1000}`.'
)
MISSING_CODE_MESSAGE: Final = (
    "exec pragma must be followed by JavaScript source on subsequent lines"
)
NOT_OBJECT_MESSAGE: Final = (
    "exec pragma must be a JSON object with supported fields `yield_time_ms` and "
    "`max_output_tokens`"
)
_INVALID_JSON_PREFIX: Final = (
    "exec pragma must be valid JSON with supported fields `yield_time_ms` and `max_output_tokens`: "
)
_NOT_INTEGER_PREFIX: Final = (
    "exec pragma fields `yield_time_ms` and `max_output_tokens` must be non-negative safe "
    "integers: "
)


class PragmaError(ValueError):
    """The ``exec`` source was rejected; ``message`` is the exact text to show the model."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class ExecRequest:
    """A parsed ``exec`` input.

    Attributes:
        code: the JavaScript source to run (the whole input when there is no pragma).
        yield_time_ms: how long ``exec`` observes the cell (default 10 000; the caller caps it).
        max_output_tokens: the token budget of the formatted result (default 10 000).
        has_pragma: whether the source started with a ``// @exec:`` pragma.
    """

    code: str
    yield_time_ms: int = DEFAULT_YIELD_TIME_MS
    max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS
    has_pragma: bool = False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON constant {name}")


def _as_non_negative_integer(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        integral = None
    elif isinstance(value, int):
        integral = value
    elif math.isfinite(value) and value.is_integer():
        integral = int(value)
    else:
        integral = None
    if integral is None or integral < 0:
        shown = json.dumps(value, ensure_ascii=False)
        raise PragmaError(
            f"{_NOT_INTEGER_PREFIX}{field}: expected a non-negative integer, got {shown}"
        )
    return integral


def parse_exec_source(source: str) -> ExecRequest:
    """Split an ``exec`` input into its code and budgets.

    Returns an :class:`ExecRequest` (defaults ``yield_time_ms=10000``, ``max_output_tokens=10000``
    for fields the pragma leaves out, or without a pragma). Raises :class:`PragmaError` with the
    exact docs/model-tools.md message, checked in the order given in this module's docstring.
    """
    if not source.strip():
        raise PragmaError(BLANK_SOURCE_MESSAGE)
    first_line, newline, rest = source.partition("\n")
    stripped = first_line.lstrip()
    if not stripped.startswith(PRAGMA_PREFIX):
        return ExecRequest(code=source)
    if not newline or not rest.strip():
        raise PragmaError(MISSING_CODE_MESSAGE)
    directive = stripped[len(PRAGMA_PREFIX) :].strip()
    if not directive:
        raise PragmaError(NOT_OBJECT_MESSAGE)
    try:
        value = json.loads(directive, parse_constant=_reject_constant)
    except RecursionError:
        raise PragmaError(f"{_INVALID_JSON_PREFIX}nesting too deep") from None
    except ValueError as error:  # json.JSONDecodeError included
        raise PragmaError(f"{_INVALID_JSON_PREFIX}{error}") from None
    if not isinstance(value, dict):
        raise PragmaError(NOT_OBJECT_MESSAGE)
    for key in value:
        if key not in _FIELDS:
            raise PragmaError(
                f"exec pragma only supports `yield_time_ms` and `max_output_tokens`; got `{key}`"
            )
    budgets = {key: _as_non_negative_integer(key, value[key]) for key in value}
    for field in _FIELDS:
        if budgets.get(field, 0) > MAX_SAFE_INTEGER:
            raise PragmaError(f"exec pragma field `{field}` must be a non-negative safe integer")
    return ExecRequest(
        code=rest,
        yield_time_ms=budgets.get("yield_time_ms", DEFAULT_YIELD_TIME_MS),
        max_output_tokens=budgets.get("max_output_tokens", DEFAULT_MAX_OUTPUT_TOKENS),
        has_pragma=True,
    )
