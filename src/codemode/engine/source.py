"""Source as models write it: what happens to a cell's source before V8 runs it, and to the
positions in its errors after (the cell-environment reference, ``docs/cells.md``).

One entry point runs host-side before any JavaScript engine sees the source,
:func:`prepare_source` (or :func:`prepare_source_async`, which keeps a long source off the event
loop). In order:

1. **One markdown fence is unwrapped.** When the first non-blank line is a fence (three or more
   backticks or tildes, an optional info string such as ``js`` or ``ts``) and the last non-blank
   line closes it, the code is what lies between; its first line is line 1.
2. **A JSON string literal is refused**: :data:`JSON_STRING_MESSAGE`.
3. **TypeScript is stripped** (:mod:`.source_ts`): type syntax becomes whitespace, so lines and
   columns do not move; TypeScript that needs code generation is refused with a ``SyntaxError``
   naming the construct and its place. Plain JavaScript is left byte-identical: a source in which
   the TypeScript grammar finds nothing is returned as is, and one it would change is kept as
   written when the engine compiles it as JavaScript (:attr:`PreparedSource.as_written`), so
   JavaScript's reading always wins.

Positions: lines are 1-based and counted with JavaScript's line terminators; columns are 1-based
in UTF-16 code units, as V8 counts them. :func:`syntax_error_from` gives a syntax error found by
the engine's own compile check (the prelude compiles the body alone before running it) its
``cell.js:{line}:{column}``; :func:`clean_error_text` rewrites the frames of a
runtime error so that each reads ``cell.js:{line}:{column}`` in the source as written and no
frame of the runtime's own code (prelude, wrappers, evals, built-ins) remains.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Final

from codemode.engine.jsscan import _tokens
from codemode.engine.source_ts import TypeScriptRefused, strip

__all__ = [
    "CELL_FILE",
    "JSON_STRING_MESSAGE",
    "PreparedSource",
    "clean_error_text",
    "position",
    "prepare_source",
    "prepare_source_async",
    "syntax_error_from",
    "syntax_error_text",
    "unwrap_fence",
]

CELL_FILE: Final = "cell.js"
JSON_STRING_MESSAGE: Final = (
    "exec expects raw JavaScript, not a JSON string: remove the surrounding quotes"
)

# The prelude compiles the body as `(async function () {"use strict";` + source + ...: the
# wrapper shares the cell's first line, so V8 reports columns of line 1 this much too far right.
_LINE1_WRAPPER_COLUMNS: Final = len('(async function () {"use strict";')

# Sources at least this long are prepared on a worker thread: parsing 100 KB takes milliseconds.
OFF_LOOP_CHARS: Final = 8192


@dataclass(frozen=True)
class PreparedSource:
    """The JavaScript to run, or the ``error_text`` the cell fails with before it runs.

    ``as_written`` is set when TypeScript was found (stripped or refused): the source before
    stripping. A few sources are valid JavaScript that TypeScript reads otherwise (``a < b >
    (c)``: two comparisons, or a generic call); the engine asks whether ``as_written`` compiles
    as JavaScript and, if it does, runs it unchanged instead (:meth:`as_javascript`)."""

    code: str
    error_text: str | None = None
    as_written: str | None = None

    def as_javascript(self) -> PreparedSource:
        """The source as written, run as the plain JavaScript it is."""
        return PreparedSource(self.as_written if self.as_written is not None else self.code)


_FENCE_OPEN = re.compile(r"[ \t]*(`{3,}|~{3,})[ \t]*[A-Za-z0-9_+#.\-]*[ \t]*\r?")
_FENCE_CLOSE = re.compile(r"[ \t]*(`{3,}|~{3,})[ \t]*\r?")


def unwrap_fence(source: str) -> str:
    """The code inside one markdown fence around the whole source, else ``source`` itself."""
    lines = source.split("\n")
    filled = [i for i, line in enumerate(lines) if line.strip()]
    if len(filled) < 2:
        return source
    first, last = filled[0], filled[-1]
    opening = _FENCE_OPEN.fullmatch(lines[first])
    closing = _FENCE_CLOSE.fullmatch(lines[last])
    if opening is None or closing is None:
        return source
    fence, close = opening.group(1), closing.group(1)
    if close[0] != fence[0] or len(close) < len(fence):
        return source
    return "\n".join(lines[first + 1 : last])


def _is_json_string(source: str) -> bool:
    text = source.strip()
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return False
    try:
        return isinstance(json.loads(text), str)
    except ValueError:
        return False


def prepare_source(source: str) -> PreparedSource:
    """Fence, JSON string, TypeScript (module docstring), in that order. Never raises."""
    code = unwrap_fence(source)
    if _is_json_string(code):
        return PreparedSource(code, JSON_STRING_MESSAGE)
    try:
        stripped = strip(code)
    except TypeScriptRefused as refused:
        line, column = position(code, refused.offset)
        return PreparedSource(code, syntax_error_text(refused.message, line, column), code)
    except RecursionError:  # absurdly nested namespaces: V8 judges the source as written
        return PreparedSource(code)
    if stripped.code is code:
        return PreparedSource(code)
    return PreparedSource(stripped.code, None, code if stripped.maybe_javascript else None)


async def prepare_source_async(source: str) -> PreparedSource:
    """:func:`prepare_source`, on a worker thread for a long source so the loop stays free."""
    if len(source) < OFF_LOOP_CHARS:
        return prepare_source(source)
    return await asyncio.to_thread(prepare_source, source)


def syntax_error_text(message: str, line: int, column: int) -> str:
    """``SyntaxError: {message}`` with its place in the cell."""
    return f"SyntaxError: {message}\n    at {CELL_FILE}:{line}:{column}"


_LINE_BREAK = re.compile(r"\r\n|[\n\r\u2028\u2029]")


def _utf16_len(text: str) -> int:
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def position(code: str, index: int) -> tuple[int, int]:
    """The 1-based line and UTF-16 column of ``code[index]``."""
    line = 1
    line_start = 0
    for match in _LINE_BREAK.finditer(code, 0, index):
        line += 1
        line_start = match.end()
    return line, _utf16_len(code[line_start:index]) + 1


def _lines(code: str) -> list[str]:
    return _LINE_BREAK.split(code)


# --------------------------------------------------------------------------- syntax errors

# The prelude's compile check (`start` in prelude.js) hands the function constructor
# `"use strict";\n` + source; V8's dynamic-function header, `(async function anonymous(\n) {\n`,
# and that directive put the cell's first line on line 4 of what the constructor compiles.
_CHECK_LINES_BEFORE: Final = 3


_V8_MESSAGE = re.compile(r"[^\n]*?:(\d+): ((?:[A-Za-z]*Error)(?:: [^\n]*)?)\n")
_CARET = re.compile(r"( *)\^")


def syntax_error_from(engine_message: str, code: str) -> str | None:
    """The ``error_text`` of a source the prelude's compile check refused, from the message
    mini-racer gives for it (``undefined:{line}: SyntaxError: ...``, the source line, a caret
    line); ``None`` when the message is not that of the check."""
    if "at new AsyncFunction (<anonymous>)" not in engine_message:
        return None
    head = _V8_MESSAGE.match(engine_message)
    if head is None:
        return None
    lines = _lines(code)
    line = int(head.group(1)) - _CHECK_LINES_BEFORE
    # After the head: the offending source line, then spaces and carets under the error.
    _, _, after_line = engine_message[head.end() :].partition("\n")
    caret = _CARET.match(after_line)
    column = len(caret.group(1)) + 1 if caret is not None else 1
    name, _, message = head.group(2).partition(": ")
    stray = _stray_closing_brace(code)
    stray_at = position(code, stray) if stray is not None else None
    if stray_at is not None and (line, column) >= stray_at:
        # The source closed the function around it early: V8 stumbles after that brace.
        line, column = stray_at
        name, message = "SyntaxError", "Unexpected token '}'"
    elif line > len(lines):  # the source ended inside a block, a call, a string...
        while len(lines) > 1 and not lines[-1].strip():
            lines.pop()
        line, column = len(lines), _utf16_len(lines[-1]) + 1
        if message in ("Unexpected token '}'", "Unexpected token ')'"):
            message = "Unexpected end of input"
    line = max(line, 1)
    text = f"{name}: {message}" if message else name
    return f"{text}\n    at {CELL_FILE}:{line}:{column}"


def _stray_closing_brace(code: str) -> int | None:
    """The index of the first ``}`` that closes more braces than the source opened."""
    depth = 0
    for token in _tokens(code):
        if token.kind == "punct" and token.text == "{":
            depth += 1
        elif token.kind == "punct" and token.text == "}":
            depth -= 1
            if depth < 0:
                return token.start
    return None


# --------------------------------------------------------------------------- runtime frames

_FRAME = re.compile(r"(?P<indent>\s+)at (?P<rest>.*)")
_CALL = re.compile(r"(?P<prefix>(?:async )?)(?:(?P<name>.*?) \((?P<loc>[^()]*)\)|(?P<bare>.*))")
_CELL_LOCATION = re.compile(re.escape(CELL_FILE) + r":(\d+):(\d+)")
# Names V8 gives the cell's anonymous top level and arrow functions inside it.
_ANONYMOUS_NAMES = frozenset({"eval", "Object.eval"})


def _cell_frame(indent: str, rest: str) -> str | None:
    call = _CALL.fullmatch(rest)
    if call is None:
        return None
    location = call.group("loc") if call.group("loc") is not None else call.group("bare")
    place = _CELL_LOCATION.fullmatch(location or "")
    if place is None:
        return None
    line, column = int(place.group(1)), int(place.group(2))
    if line == 1 and column > _LINE1_WRAPPER_COLUMNS:
        column -= _LINE1_WRAPPER_COLUMNS
    where = f"{CELL_FILE}:{line}:{column}"
    name = call.group("name")
    if name is None or name in _ANONYMOUS_NAMES:
        return f"{indent}at {call.group('prefix')}{where}"
    return f"{indent}at {call.group('prefix')}{name} ({where})"


def clean_error_text(text: str) -> str:
    """``text`` (a V8 ``stack``) with its trailing frames rewritten: frames in the cell read
    ``cell.js:{line}:{column}`` in the source as written; every other frame is dropped. Text
    without frames is returned as is."""
    lines = text.split("\n")
    first_frame = len(lines)
    while first_frame > 0 and _FRAME.fullmatch(lines[first_frame - 1]):
        first_frame -= 1
    if first_frame == len(lines):
        return text
    kept = lines[:first_frame]
    for line in lines[first_frame:]:
        frame = _FRAME.fullmatch(line)
        assert frame is not None
        cleaned = _cell_frame(frame.group("indent"), frame.group("rest"))
        if cleaned is not None:
            kept.append(cleaned)
    return "\n".join(kept)
