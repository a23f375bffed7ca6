"""TypeScript in cells: type syntax removed with a real parser (tree-sitter), never with patterns.

The promise (the cell-environment reference, ``docs/cells.md``, "TypeScript"):

- A source in which the TypeScript grammar finds no TypeScript construct is returned unchanged:
  the very same ``str``. (Where a source is valid JavaScript and TypeScript reads it otherwise,
  as ``a < b > (c)``, the caller keeps the source as written: see :mod:`.source`.)
- Otherwise every type-only piece (type annotations, ``interface`` and ``type`` declarations,
  ``as``/``satisfies`` with their type, non-null ``!``, type arguments and parameters, ``declare``
  statements and fields, ``implements``, overload signatures, ``abstract``, access modifiers on
  class members, ``this`` parameters) is replaced by spaces, one per UTF-16 code unit, line
  breaks kept: every remaining token stays at the line and column where it was written. A
  removed statement keeps a ``;`` at its first column, so that automatic semicolon insertion
  cannot join the statements around it.
- TypeScript that needs code generation is refused with :class:`TypeScriptRefused`, which names
  the construct and its place: ``enum``, a ``namespace`` or ``module`` holding values, decorators,
  parameter properties (``constructor(private x)``).
- Pieces inside a region the TypeScript grammar could not parse are left as written: V8 then
  reports the syntax error where it is.

Grammar: ``tree-sitter`` 0.26.1 with ``tree-sitter-typescript`` 0.23.2 (pinned: the node names
used here are the grammar's internals).
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass

import tree_sitter
import tree_sitter_typescript

__all__ = ["Stripped", "TypeScriptRefused", "strip", "strip_types"]

_TS = tree_sitter.Language(tree_sitter_typescript.language_typescript())

# Nodes removed whole.
_BLANK_NODES = (
    "type_annotation",
    "type_predicate_annotation",
    "asserts_annotation",
    "opting_type_annotation",
    "omitting_type_annotation",
    "adding_type_annotation",
    "type_arguments",
    "type_parameters",
    "interface_declaration",
    "type_alias_declaration",
    "ambient_declaration",
    "implements_clause",
    "function_signature",
    "method_signature",
    "abstract_method_signature",
    "index_signature",
)

_QUERY_SOURCE = "\n".join(
    [f"({name}) @blank" for name in _BLANK_NODES]
    + [
        "(as_expression) @cast",
        "(satisfies_expression) @cast",
        "(non_null_expression) @nonnull",
        '(optional_parameter "?" @blank)',
        '(method_definition "?" @blank)',
        '(public_field_definition "?" @blank)',
        '(public_field_definition "!" @blank)',
        '(variable_declarator "!" @blank)',
        '(public_field_definition "readonly" @blank)',
        '(method_definition "readonly" @blank)',
        '(public_field_definition "declare") @blank',
        '(public_field_definition "abstract") @blank',
        '(abstract_class_declaration "abstract" @blank)',
        "(accessibility_modifier) @modifier",
        "(override_modifier) @modifier",
        '(required_parameter "readonly" @paramprop)',
        '(optional_parameter "readonly" @paramprop)',
        "(required_parameter pattern: (this)) @thisparam",
        "(enum_declaration) @enum",
        "(decorator) @decorator",
        "(internal_module) @namespace",
        "(module) @namespace",
    ]
)
_QUERY = tree_sitter.Query(_TS, _QUERY_SOURCE)

_PARAMETERS = ("required_parameter", "optional_parameter")
# Statements a type-only namespace may hold (it then vanishes like an interface).
_TYPE_ONLY_STATEMENTS = (
    "interface_declaration",
    "type_alias_declaration",
    "ambient_declaration",
    "function_signature",
)

_REFUSALS = {
    "enum": "TypeScript enum is not supported in exec; use a plain object",
    "namespace": ("TypeScript namespace with values is not supported in exec; use a plain object"),
    "decorator": "TypeScript decorators are not supported in exec; call the function directly",
    "paramprop": (
        "TypeScript parameter properties are not supported in exec; assign the field in the "
        "constructor body"
    ),
}


class TypeScriptRefused(Exception):
    """TypeScript that needs code generation; ``message`` says which construct and what to do,
    ``offset`` is the construct's index in the source (a ``str`` index)."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


_local = threading.local()


def _parser() -> tree_sitter.Parser:
    """One parser per thread (a tree-sitter parser is not safe to share)."""
    parser: tree_sitter.Parser | None = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = tree_sitter.Parser(_TS)
    return parser


def _encode(source: str) -> bytes:
    return source.encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class Stripped:
    """What :func:`strip` made of a source.

    ``code`` is the source with TypeScript's type syntax blanked (the same object when there was
    none). ``maybe_javascript`` is False when the source is TypeScript whatever else it may be:
    a call with type arguments that JavaScript would read as comparisons against type names
    (``Promise.all<any>(xs)``, ``new Array<number>(3)``). When it is True and the source was
    changed, the caller keeps the source as written if it compiles as JavaScript."""

    code: str
    maybe_javascript: bool = True


def strip_types(source: str) -> str:
    """:attr:`Stripped.code` of :func:`strip`."""
    return strip(source).code


def strip(source: str) -> Stripped:
    """Blank TypeScript's type syntax in ``source``. Raises :class:`TypeScriptRefused` for
    TypeScript needing code generation; never raises anything else for any input string."""
    data = _encode(source)
    root = _parser().parse(data).root_node
    captures = tree_sitter.QueryCursor(_QUERY).captures(root)
    if not captures:
        return Stripped(source)
    _refuse(captures, data, root)
    ranges: list[tuple[int, int, tree_sitter.Node]] = []
    for node in captures.get("blank", []):
        ranges.append((node.start_byte, node.end_byte, node))
    for node in captures.get("modifier", []):
        parent = node.parent
        if parent is not None and parent.type in _PARAMETERS:
            raise TypeScriptRefused(_REFUSALS["paramprop"], _offset(data, node.start_byte))
        ranges.append((node.start_byte, node.end_byte, node))
    for node in captures.get("cast", []):
        for child in node.children:
            if child.type in ("as", "satisfies"):
                ranges.append((child.start_byte, node.end_byte, node))
                break
    for node in captures.get("nonnull", []):
        last = node.child(node.child_count - 1)
        if last is not None and last.type == "!":
            ranges.append((last.start_byte, last.end_byte, node))
    for node in captures.get("thisparam", []):
        end = node.end_byte
        following = node.next_sibling
        if following is not None and following.type == ",":
            end = following.end_byte
        ranges.append((node.start_byte, end, node))
    for node in captures.get("namespace", []):
        start, end = _statement_range(node)
        ranges.append((start, end, node))
    kept = [r for r in ranges if not r[2].has_error and not _in_error(root, (r[0], r[1]))]
    if not kept:
        return Stripped(source)
    certain = any(_typescript_only_call(r[2]) for r in kept)
    # A removed statement leaves an empty statement (`;`) where it began, so that JavaScript's
    # automatic semicolon insertion cannot glue the statements around it together.
    marks = {r[0]: ";" for r in kept if _is_statement(r[2])}
    spans = [(r[0], r[1]) for r in kept]
    for node in captures.get("blank", []):
        arrow = _arrow_after_broken_return_type(node)
        if arrow is not None and not node.has_error:
            # JavaScript allows no line break before `=>`: move it up to where the type began.
            spans.append((node.start_byte, arrow.end_byte))
            marks[node.start_byte] = "=>"
    return Stripped(_blank(data, spans, marks), not certain)


_LINE_BREAK_BYTES = (b"\n", b"\r", "\u2028".encode(), "\u2029".encode())


def _arrow_after_broken_return_type(node: tree_sitter.Node) -> tree_sitter.Node | None:
    """The `=>` of an arrow function whose return type, about to be blanked, spans lines."""
    parent = node.parent
    if parent is None or parent.type != "arrow_function" or not node.type.endswith("annotation"):
        return None
    arrow = node.next_sibling
    if arrow is None or arrow.type != "=>":
        return None
    text = node.text or b""
    return arrow if any(brk in text for brk in _LINE_BREAK_BYTES) else None


_STATEMENTS = (
    "interface_declaration",
    "type_alias_declaration",
    "ambient_declaration",
    "function_signature",
    "internal_module",
    "module",
)


def _is_statement(node: tree_sitter.Node) -> bool:
    parent = node.parent
    if parent is not None and parent.type == "expression_statement":
        node, parent = parent, parent.parent  # a namespace held by an expression statement
    return node.type in (*_STATEMENTS, "expression_statement") and (
        parent is None or parent.type in ("program", "statement_block")
    )


_CALLS = ("call_expression", "new_expression", "instantiation_expression")


def _typescript_only_call(node: tree_sitter.Node) -> bool:
    """Type arguments of a call that JavaScript could only read as comparisons against type
    names: anything but lower-case names that are not TypeScript's predefined types."""
    if node.type != "type_arguments" or node.parent is None or node.parent.type not in _CALLS:
        return False
    return not all(
        child.type == "type_identifier" and child.text is not None and child.text[:1].islower()
        for child in node.named_children
    )


def _refuse(
    captures: dict[str, list[tree_sitter.Node]], data: bytes, root: tree_sitter.Node
) -> None:
    """Raise for the first construct (in source order) that needs code generation."""
    found: list[tuple[int, str]] = []
    for kind in ("enum", "decorator", "paramprop"):
        found.extend(
            (node.start_byte, kind)
            for node in captures.get(kind, [])
            if not _in_ambient(node) and not _in_error(root, (node.start_byte, node.end_byte))
        )
    for node in captures.get("namespace", []):
        if _type_only_namespace(node) or _in_ambient(node):
            continue
        if not _in_error(root, (node.start_byte, node.end_byte)):
            found.append((node.start_byte, "namespace"))
    if found:
        start, kind = min(found)
        raise TypeScriptRefused(_REFUSALS[kind], _offset(data, start))


def _in_ambient(node: tree_sitter.Node) -> bool:
    """Whether the node is part of a ``declare`` statement (types only, blanked whole)."""
    parent = node.parent
    while parent is not None:
        if parent.type == "ambient_declaration":
            return True
        parent = parent.parent
    return False


def _type_only_namespace(node: tree_sitter.Node) -> bool:
    body = node.child_by_field_name("body")
    if body is None:
        return True
    for statement in body.named_children:
        inner = statement
        if inner.type == "export_statement":
            declaration = inner.child_by_field_name("declaration")
            if declaration is None:
                return False
            inner = declaration
        if inner.type == "expression_statement" and inner.named_child_count == 1:
            nested = inner.named_children[0]
            if nested.type in ("internal_module", "module") and _type_only_namespace(nested):
                continue
            return False
        if inner.type not in _TYPE_ONLY_STATEMENTS and inner.type != "comment":
            return False
    return True


def _statement_range(node: tree_sitter.Node) -> tuple[int, int]:
    """A type-only namespace is blanked with the statement that holds it."""
    parent = node.parent
    if parent is not None and parent.type == "expression_statement":
        return (parent.start_byte, parent.end_byte)
    return (node.start_byte, node.end_byte)


def _in_error(root: tree_sitter.Node, span: tuple[int, int]) -> bool:
    """Whether the span lies inside a region the grammar could not parse."""
    if not root.has_error:
        return False
    node: tree_sitter.Node | None = root.descendant_for_byte_range(span[0], span[1])
    while node is not None:
        if node.is_error or node.is_missing:
            return True
        node = node.parent
    return False


def _offset(data: bytes, byte_offset: int) -> int:
    return len(data[:byte_offset].decode("utf-8", "surrogatepass"))


_LINE_BREAKS = frozenset("\n\r\u2028\u2029")


def _spaces(text: str) -> str:
    """Whitespace taking the place of ``text``: line breaks kept, one space per UTF-16 unit."""
    out = []
    for ch in text:
        if ch in _LINE_BREAKS:
            out.append(ch)
        else:
            out.append("  " if ord(ch) > 0xFFFF else " ")
    return "".join(out)


def _blank(data: bytes, ranges: list[tuple[int, int]], marks: dict[int, str]) -> str:
    """``data`` with the byte ranges replaced by :func:`_spaces`, then each mark (ASCII text
    at a byte offset inside a range) written over those spaces, unless a line break is there."""
    ranges.sort()
    merged: list[list[int]] = []
    for start, end in ranges:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    offsets = sorted(marks)
    parts: list[str] = []
    last = 0
    for start, end in merged:
        parts.append(data[last:start].decode("utf-8", "surrogatepass"))
        blank = _spaces(data[start:end].decode("utf-8", "surrogatepass"))
        for offset in offsets[
            bisect.bisect_left(offsets, start) : bisect.bisect_left(offsets, end)
        ]:
            mark = marks[offset]
            at = len(_spaces(data[start:offset].decode("utf-8", "surrogatepass")))
            if blank[at : at + len(mark)] == " " * len(mark):
                blank = blank[:at] + mark + blank[at + len(mark) :]
        parts.append(blank)
        last = end
    parts.append(data[last:].decode("utf-8", "surrogatepass"))
    return "".join(parts)
