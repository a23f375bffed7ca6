"""The Python cell environment: the prelude every Python cell starts with, the tool identifiers
of Python cells, and the host-side checks behind the helpers (docs/python-cells.md).

The prelude runs inside the Monty sandbox as the cell's first feed. Its helpers convert values
to text in the sandbox and hand everything else to one host function, ``_cm(op, ...)``. That
function is reachable by the cell's own code too, so the host treats every argument it receives
as untrusted and checks it here.
"""

from __future__ import annotations

import io
import json
import keyword
import math
import re
import tokenize
from collections.abc import Iterable, Sequence
from typing import Any

from codemode.model import ImageDetail, ToolDefinition, ToolKind

__all__ = [
    "ALLOWED_IMPORTS",
    "HelperError",
    "build_prelude",
    "check_imports",
    "image_item_fields",
    "normalize_python_identifier",
    "python_tool_identifiers",
    "tool_input",
]

#: Modules a Python cell may import (what the Monty sandbox provides and codemode allows).
ALLOWED_IMPORTS = frozenset({"asyncio", "json", "math", "re", "datetime"})


class HelperError(Exception):
    """A helper was misused: raised inside the cell as ``TypeError(message)``."""


def normalize_python_identifier(name: str) -> str:
    """Map one raw tool name to a Python identifier: ASCII letters, ``_`` and (after the first
    position) ASCII digits are kept, every other character becomes ``_``; an empty name becomes
    ``_``; a Python keyword gets a trailing ``_`` (``class`` -> ``class_``)."""
    if not name:
        return "_"
    out = []
    for i, ch in enumerate(name):
        if ("a" <= ch <= "z") or ("A" <= ch <= "Z") or ch == "_" or (i > 0 and "0" <= ch <= "9"):
            out.append(ch)
        else:
            out.append("_")
    ident = "".join(out)
    if keyword.iskeyword(ident) or keyword.issoftkeyword(ident):
        ident += "_"
    return ident


def python_tool_identifiers(names: Iterable[str]) -> list[str]:
    """Identifiers of tools in request order (``tools.<identifier>`` in a Python cell); a later
    duplicate takes the first free ``_2``, ``_3``, ... suffix. Dunder-like names that would
    collide with the ``tools`` object's own attributes are prefixed with ``t``."""
    taken: set[str] = set()
    result: list[str] = []
    for name in names:
        base = normalize_python_identifier(name)
        if base.startswith("__"):
            base = "t" + base
        ident = base
        n = 2
        while ident in taken:
            ident = f"{base}_{n}"
            n += 1
        taken.add(ident)
        result.append(ident)
    return result


_PRELUDE_HEAD = """\
import asyncio
import json


def _cm_str(value):
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    return str(value)


def text(value):
    _cm("text", _cm_str(value))


def print(*args, sep=" ", end="\\n", file=None, flush=False):
    if sep is None:
        sep = " "
    _cm("text", sep.join([str(a) for a in args]))


def notify(value):
    _cm("notify", _cm_str(value))


def image(value, detail=None):
    _cm("image", value, detail)


def store(key, value):
    key = str(key)
    try:
        encoded = json.dumps(value)
    except TypeError:
        raise TypeError(
            "Unable to store " + json.dumps(key) + ". "
            + "Only plain serializable objects can be stored."
        )
    _cm("store", key, encoded)
    _cm_stored[key] = encoded


def load(key):
    encoded = _cm_stored.get(str(key))
    if encoded is None:
        return None
    return json.loads(encoded)


def yield_control():
    _cm("yield")


def exit():
    _cm("exit")


class _CodemodeTools:
    def __repr__(self):
        return "<tools>"
"""


def build_prelude(identifiers: Sequence[str]) -> str:
    """The prelude of a cell whose tools have ``identifiers`` (valid Python identifiers)."""
    lines = [_PRELUDE_HEAD]
    for index, ident in enumerate(identifiers):
        if not ident.isidentifier():  # pragma: no cover - guaranteed by python_tool_identifiers
            raise ValueError(f"not an identifier: {ident!r}")
        lines.append(
            f"    def {ident}(self, *args, **kwargs):\n"
            f'        return _cm("call", {index}, args, kwargs)\n'
        )
    lines.append("\n\ntools = _CodemodeTools()\n")
    return "\n".join(lines)


def check_imports(source: str) -> tuple[str, int] | None:
    """The first import of a module a cell may not import, as ``(module, line)``; None when every
    import is allowed or the source does not tokenize (the sandbox then reports the error).

    Statements are found with :mod:`tokenize` (CPython 3.11's AST conversion is not safe to use
    from a busy host: it raised ``SystemError: AST constructor recursion depth mismatch``)."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError, ValueError):
        return None
    starts = {tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT}
    significant = [t for t in tokens if t.type not in (tokenize.COMMENT, tokenize.NL)]
    previous: tokenize.TokenInfo | None = None
    for index, tok in enumerate(significant):
        at_start = previous is None or previous.type in starts or previous.string == ";"
        previous = tok
        if not at_start or tok.type != tokenize.NAME or tok.string not in ("import", "from"):
            continue
        if tok.string == "from":
            module = _dotted(significant, index + 1)
            if module and (module[0] == "." or module.split(".")[0] not in ALLOWED_IMPORTS):
                return module, tok.start[0]
            continue
        position = index + 1
        while position < len(significant):
            module = _dotted(significant, position)
            if module and module.split(".")[0] not in ALLOWED_IMPORTS:
                return module, tok.start[0]
            # skip to the next `,` of this statement (past an `as` alias), or stop
            while position < len(significant) and significant[position].string not in (",", ";"):
                if significant[position].type in (tokenize.NEWLINE, tokenize.ENDMARKER):
                    break
                position += 1
            if position < len(significant) and significant[position].string == ",":
                position += 1
                continue
            break
    return None


def _dotted(tokens: list[tokenize.TokenInfo], index: int) -> str:
    """The dotted module name starting at ``tokens[index]`` (leading dots kept)."""
    parts: list[str] = []
    while index < len(tokens):
        tok = tokens[index]
        if tok.type == tokenize.OP and tok.string in (".", "..."):
            parts.append(tok.string)
        elif tok.type == tokenize.NAME and tok.string not in ("import", "as"):
            if parts and parts[-1] not in (".", "..."):
                break
            parts.append(tok.string)
        else:
            break
        index += 1
    return "".join(parts)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=True, separators=(",", ":"))


def plain_json(value: Any) -> Any:
    """A fresh JSON value from a sandbox value: tuples become lists, NaN and infinities
    ``None``. Raises ``HelperError`` when ``value`` has no JSON form."""
    try:
        encoded = _dumps(value)
    except (TypeError, ValueError) as exc:
        raise HelperError(str(exc)) from None
    return json.loads(encoded, parse_constant=lambda _c: None)


def tool_input(tool: ToolDefinition, args: Any, kwargs: Any) -> Any:
    """The delegate's input for ``tools.<id>(*args, **kwargs)`` (docs/python-cells.md): a function
    tool takes keyword arguments or one dict (nothing, or ``None``, means ``{}``); a freeform
    tool takes one string. Raises ``HelperError`` with the message the cell sees."""
    if not isinstance(args, (tuple, list)) or not isinstance(kwargs, dict):
        raise HelperError("tools expect positional and keyword arguments")
    if tool.kind is ToolKind.FREEFORM:
        if len(args) == 1 and not kwargs and isinstance(args[0], str):
            return args[0]
        raise HelperError(f"tool `{tool.name}` expects a string input")
    if not args:
        value: Any = dict(kwargs)
    elif len(args) == 1 and not kwargs and (args[0] is None or isinstance(args[0], dict)):
        value = {} if args[0] is None else args[0]
    else:
        raise HelperError(f"tool `{tool.name}` expects a JSON object for arguments")
    result = plain_json(value)
    if not isinstance(result, dict):  # pragma: no cover - a dict stays a dict
        raise HelperError(f"tool `{tool.name}` expects a JSON object for arguments")
    return result


_IMAGE_EXPECTS = (
    "image expects a non-empty image URL string, an object with image_url and optional detail, "
    "or a raw MCP image block"
)
_DETAILS = ("auto", "low", "high", "original")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")


def image_item_fields(value: Any, detail: Any) -> tuple[str, ImageDetail]:
    """The URL and detail of ``image(value, detail)`` (docs/cells.md with Python values: a dict for
    an object, ``None`` for ``null``). Raises ``HelperError`` with the message the cell sees."""
    embedded: str | None = None
    if isinstance(value, str):
        url = value
    elif isinstance(value, dict):
        if value.get("image_url") is not None:
            if not isinstance(value["image_url"], str):
                raise HelperError(_IMAGE_EXPECTS)
            url = value["image_url"]
            d = value.get("detail")
            if d is not None and not isinstance(d, str):
                raise HelperError("image detail must be a string when provided")
            embedded = d
        else:
            block = plain_json(value)
            kind = block.get("type")
            if not isinstance(kind, str):
                raise HelperError(_IMAGE_EXPECTS)
            if kind != "image":
                raise HelperError(f'image only accepts MCP image blocks, got "{kind}"')
            data = block.get("data")
            if not isinstance(data, str) or data == "":
                raise HelperError("image expected MCP image data")
            if data[:5].lower() == "data:":
                url = data
            else:
                mime = "application/octet-stream"
                if isinstance(block.get("mimeType"), str):
                    mime = block["mimeType"]
                elif isinstance(block.get("mime_type"), str):
                    mime = block["mime_type"]
                url = f"data:{mime};base64,{data}"
            meta = block.get("_meta")
            meta_detail = meta.get("codex/imageDetail") if isinstance(meta, dict) else None
            if isinstance(meta_detail, str) and meta_detail in _DETAILS:
                embedded = meta_detail
    else:
        raise HelperError(_IMAGE_EXPECTS)
    if url == "":
        raise HelperError(_IMAGE_EXPECTS)
    scheme = _SCHEME.match(url)
    scheme_name = scheme.group(1).lower() if scheme else None
    if scheme_name != "data":
        if scheme_name in ("http", "https"):
            raise HelperError(
                "Tool call failed: remote image URLs are not supported in tool outputs. "
                "Pass a base64 data URI instead"
            )
        raise HelperError("Tool call failed: invalid image output. Pass a base64 data URI instead")
    chosen = embedded
    if detail is not None:
        if not isinstance(detail, str):
            raise HelperError("image detail must be a string when provided")
        chosen = detail
    final = "high"
    if chosen is not None:
        lower = chosen.lower()
        if lower not in _DETAILS:
            raise HelperError("image detail must be one of: auto, low, high, original")
        final = lower
    return url, ImageDetail(final)


def finite_json_text(encoded: str) -> Any:
    """Parse JSON text written by the sandbox, NaN and infinities as ``None`` (docs/sessions.md)."""
    value = json.loads(encoded, parse_constant=lambda _c: None)
    if isinstance(value, float) and not math.isfinite(value):  # pragma: no cover - defensive
        return None
    return value
