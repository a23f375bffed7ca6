"""A small JavaScript lexer for the two source checks V8 cannot do for us (docs/cells.md).

A cell body is compiled as the body of an async function, where V8 rejects every ``import``
statement with a generic syntax error and answers a dynamic ``import(...)`` with ``Not
supported``. The spec asks for ``Unsupported import in exec: {specifier}`` for the first static
import (``export ... from`` included) and for dynamic imports to reject with ``unsupported import
in exec``. This lexer walks the source once, skipping strings, template literals, comments and
regular-expression literals, finds the first static import and rewrites each dynamic ``import(``
into a call of the prelude's ``__codemode_import(``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ScanResult", "scan_source"]

_ID_START = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_$\\")
_ID_PART = _ID_START | set("0123456789")
# After these keywords a `/` starts a regular expression, not a division.
_REGEX_AFTER_KEYWORDS = {
    "return", "typeof", "instanceof", "in", "of", "new", "delete", "void", "throw", "case", "do",
    "else", "yield", "await",
}  # fmt: skip


@dataclass(frozen=True)
class ScanResult:
    """What the scan found: the first static import's specifier, and the rewritten source."""

    static_import: str | None
    source: str


@dataclass
class _Token:
    kind: str  # "id", "str", "punct", "num", "tmpl", "regex"
    text: str
    start: int
    end: int


def _is_id_char(ch: str, first: bool) -> bool:
    if ch in (_ID_START if first else _ID_PART):
        return True
    return ord(ch) > 0x7F and (ch.isidentifier() if first else ("a" + ch).isidentifier())


def _tokens(src: str) -> list[_Token]:
    """Tokenise leniently: never raises; unterminated constructs run to the end of the source."""
    out: list[_Token] = []
    i = 0
    n = len(src)
    brace_stack: list[str] = []  # "{" for a block or object, "${" for a template substitution

    def regex_allowed() -> bool:
        for tok in reversed(out):
            if tok.kind in ("num", "str", "regex", "tmpl"):
                return False
            if tok.kind == "id":
                return tok.text in _REGEX_AFTER_KEYWORDS
            return tok.text not in (")", "]")
        return True

    def read_template(pos: int) -> int:
        # pos is just after a "`" or a "}" closing a substitution; returns the index after the
        # closing "`", or after "${" (pushing it on the brace stack).
        while pos < n:
            ch = src[pos]
            if ch == "\\":
                pos += 2
            elif ch == "`":
                return pos + 1
            elif ch == "$" and pos + 1 < n and src[pos + 1] == "{":
                brace_stack.append("${")
                return pos + 2
            else:
                pos += 1
        return n

    while i < n:
        ch = src[i]
        if ch in " \t\r\n\v\f\u00a0\ufeff\u2028\u2029":
            i += 1
        elif src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif ch in "'\"":
            j = i + 1
            while j < n and src[j] != ch and src[j] != "\n":
                j += 2 if src[j] == "\\" else 1
            out.append(_Token("str", src[i + 1 : j], i, min(j + 1, n)))
            i = j + 1
        elif ch == "`":
            j = read_template(i + 1)
            out.append(_Token("tmpl", "", i, j))
            i = j
        elif ch == "}" and brace_stack and brace_stack[-1] == "${":
            brace_stack.pop()
            j = read_template(i + 1)
            out.append(_Token("tmpl", "", i, j))
            i = j
        elif ch == "/" and regex_allowed():
            j = i + 1
            in_class = False
            while j < n and src[j] != "\n":
                c = src[j]
                if c == "\\":
                    j += 2
                    continue
                if c == "[":
                    in_class = True
                elif c == "]":
                    in_class = False
                elif c == "/" and not in_class:
                    break
                j += 1
            j += 1
            while j < n and _is_id_char(src[j], False):
                j += 1
            out.append(_Token("regex", src[i:j], i, j))
            i = j
        elif ch.isdigit() or (ch == "." and i + 1 < n and src[i + 1].isdigit()):
            j = i + 1
            while j < n and (src[j].isalnum() or src[j] in "._"):
                j += 1
            out.append(_Token("num", src[i:j], i, j))
            i = j
        elif _is_id_char(ch, True):
            j = i + 1
            while j < n and _is_id_char(src[j], False):
                j += 1
            out.append(_Token("id", src[i:j], i, j))
            i = j
        else:
            if ch == "{":
                brace_stack.append("{")
            elif ch == "}" and brace_stack:
                brace_stack.pop()
            if src.startswith("?.", i) and not (i + 2 < n and src[i + 2].isdigit()):
                out.append(_Token("punct", "?.", i, i + 2))
                i += 2
            else:
                out.append(_Token("punct", ch, i, i + 1))
                i += 1
    return out


def _specifier_after(tokens: list[_Token], k: int, *, is_export: bool) -> str | None:
    """The module specifier of the import/export statement whose keyword is tokens[k]."""
    j = k + 1
    if not is_export and j < len(tokens) and tokens[j].kind == "str":
        return tokens[j].text  # import "x"
    while j < len(tokens):
        tok = tokens[j]
        if tok.kind == "punct" and tok.text == ";":
            return None
        if tok.kind == "id" and tok.text == "from" and j + 1 < len(tokens):
            nxt = tokens[j + 1]
            if nxt.kind == "str":
                return nxt.text
        if is_export and tok.kind == "id" and tok.text in (
            "function", "class", "const", "let", "var", "default", "async",
        ):  # fmt: skip
            return None
        j += 1
    return None


def scan_source(src: str) -> ScanResult:
    """Find the first static import and rewrite dynamic imports; never raises."""
    tokens = _tokens(src)
    static_import: str | None = None
    rewrites: list[int] = []  # start offsets of dynamic `import` keywords
    for k, tok in enumerate(tokens):
        if tok.kind != "id" or tok.text not in ("import", "export"):
            continue
        prev = tokens[k - 1] if k > 0 else None
        if prev is not None and prev.kind == "punct" and prev.text in (".", "?."):
            continue  # a property named import/export
        nxt = tokens[k + 1] if k + 1 < len(tokens) else None
        if tok.text == "import":
            if nxt is not None and nxt.kind == "punct" and nxt.text == "(":
                rewrites.append(tok.start)
                continue
            if nxt is not None and nxt.kind == "punct" and nxt.text == ".":
                continue  # import.meta: left for V8 to reject as a syntax error
            spec = _specifier_after(tokens, k, is_export=False)
        else:
            spec = _specifier_after(tokens, k, is_export=True)
        if spec is not None and static_import is None:
            static_import = spec
    if not rewrites:
        return ScanResult(static_import, src)
    parts: list[str] = []
    last = 0
    for start in rewrites:
        parts.append(src[last:start])
        parts.append("__codemode_import")
        last = start + len("import")
    parts.append(src[last:])
    return ScanResult(static_import, "".join(parts))
