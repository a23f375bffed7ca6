"""JSON Schema to TypeScript, for the nested-tool declarations of the ``exec`` description.

docs/model-tools.md ("TypeScript from JSON Schema"). Everything here is pure and deterministic: the
same schema always renders to the same text. Properties keep the schema's own order (the order
its author chose, which often carries meaning: ``source`` before ``destination``); they are never
sorted.

The rules, in the order they are tried on a schema object:

1. ``true`` or an absent schema is ``unknown``; ``false`` is ``never``; any other non-object value
   (a malformed schema) is ``unknown``.
2. ``$ref``: a local reference into ``#/$defs/...`` or ``#/definitions/...`` (a JSON pointer,
   ``~0``/``~1`` and percent escapes decoded) is replaced by its target, resolved against the root
   of the document being rendered. One reference is expanded at most twice along one path from the
   root (so a recursive ``Node`` shows two levels); a third occurrence, an unresolvable target and
   every other reference (remote, ``#``, anchors) are ``unknown``. Keywords beside ``$ref`` are
   ignored.
3. ``const``: the value as a JSON literal (``"open"``, ``3``, ``null``, ``{"a": 1}``).
4. ``enum`` (non-empty array): its values as JSON literals joined by `` | ``.
5. ``anyOf``, then ``oneOf`` (non-empty arrays): their members joined by `` | ``.
6. ``allOf`` (non-empty array): its members joined by `` & ``.
7. ``type`` as a string: ``string``, ``boolean``, ``null`` as such; ``integer`` and ``number`` are
   ``number``; ``array`` and ``object`` as below; an unknown name is ``unknown``. ``type`` as an
   array: the union of each named type rendered against the same schema.
8. No ``type``: ``properties``/``additionalProperties``/``required`` make it an object,
   ``items``/``prefixItems`` an array; anything else is ``unknown``.

Only the first rule that applies is used: sibling keywords are not combined (``{"type": "string",
"enum": ["a"]}`` is ``"a"``). Empty or non-array ``enum``/``anyOf``/``oneOf``/``allOf`` are ignored.
Identical members of one union or intersection are rendered once (``integer | number`` is
``number``).

Arrays: a non-empty ``prefixItems`` (or an array-valued ``items``, the tuple form of older
drafts) is a tuple ``[A, B]``; when ``items`` (``additionalItems`` for the old form) is also given
and is not ``false`` the tuple gets a rest element ``[A, B, ...Array<T>]``. Otherwise ``items`` is
``Array<T>`` and neither is ``unknown[]``.

Objects: properties in the schema's order, each ``name: T;`` or ``name?: T;`` when not
in ``required``; a name that is not an identifier (the mapping of :mod:`codemode.identifiers` would
change it) is JSON-quoted. ``additionalProperties`` as a schema adds ``[key: string]: T;``, ``true``
adds ``[key: string]: unknown;``, ``false`` adds nothing; absent, it adds
``[key: string]: unknown;`` only when there are no properties. No members at all is ``{}``.

Layout: an object is one line, ``{ a: string; b?: number; }``, unless one of its properties has a
comment (below) or one of its members spans several lines. Then it is written one member per
line: ``{`` on the opening line, each member on its own line indented by two spaces
(:data:`INDENT`) more than the line that opened the object, a property with a comment preceded by
its ``// `` lines, and ``}`` at the opening line's indentation. Nested multi-line objects are
indented one more step per level.

A property's comment (:func:`property_comment`) holds its non-blank ``description`` (one ``//``
line per non-blank line, stripped), followed on the last line by what the TypeScript type alone
loses, ``; ``-separated in this order: ``integer`` (``type`` is or includes ``"integer"``),
``format: {format}``, ``default: {JSON}``, ``min: {n}`` / ``> {n}`` (``minimum`` /
``exclusiveMinimum``, or draft-4 ``exclusiveMinimum: true``), ``max: {n}`` / ``< {n}``,
``minLength``/``maxLength``/``minItems``/``maxItems: {n}``, ``pattern: {regex}``; e.g.
``// Number of results; integer; default: 3; min: 1; max: 10``. The keywords are read from the
property's schema, or, for the ``anyOf``/``oneOf`` of one schema and ``null`` (an optional value
as pydantic writes it), from that one schema. Line terminators inside a comment are escaped
(``\n``), so a comment never ends early.

Precedence: unions bind loosest, then intersections; everything else (keywords, literals, objects,
tuples, ``Array<...>``) is atomic. A union inside an intersection, or before a ``[]`` suffix, is
parenthesised; nothing else is, since ``Array<...>``, tuples, property types and type arguments
delimit their contents.

Safety: a schema nested more than :data:`MAX_DEPTH` levels, or a rendering that would visit more
than :data:`MAX_NODES` schema nodes (expanded ``$ref`` fan-out can grow exponentially), renders the
excess parts as ``unknown``, so a hostile schema cannot exhaust the stack or memory.

MCP-shaped outputs (see :func:`is_mcp_shaped`) render as ``CallToolResult<S>``, declared by the
"Shared MCP types" block of the ``exec`` description.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote

from codemode.identifiers import normalize_identifier
from codemode.model import ToolDefinition, ToolKind

__all__ = [
    "INDENT",
    "MAX_DEPTH",
    "MAX_NODES",
    "MAX_REF_EXPANSIONS",
    "OPEN_OBJECT",
    "input_is_optional",
    "input_type",
    "is_mcp_shaped",
    "output_type",
    "property_comment",
    "property_name",
    "render_tool_declaration",
    "schema_to_typescript",
]

INDENT: Final = "  "
"""One level of indentation inside a multi-line object."""

OPEN_OBJECT: Final = "{ [key: string]: unknown; }"
"""The input type of a function tool without an input schema."""

MAX_REF_EXPANSIONS: Final = 2
"""How many times one ``$ref`` is expanded along one path before it becomes ``unknown``."""

MAX_DEPTH: Final = 64
"""Schema nesting deeper than this renders as ``unknown``."""

MAX_NODES: Final = 20_000
"""At most this many schema nodes are rendered per call; the rest render as ``unknown``."""

_LOCAL_REF_PREFIXES: Final = ("#/$defs/", "#/definitions/")
_MCP_EXTRA_PROPERTIES: Final = frozenset({"structuredContent", "isError", "_meta"})
_OBJECT_KEYWORDS: Final = ("properties", "additionalProperties", "required")
_ARRAY_KEYWORDS: Final = ("items", "prefixItems")
_MISSING: Final = object()


class _Prec(enum.IntEnum):
    UNION = 0
    INTERSECTION = 1
    ATOM = 2


@dataclass(frozen=True)
class _Type:
    text: str
    prec: _Prec = _Prec.ATOM

    def at_least(self, prec: _Prec) -> str:
        """The text, parenthesised when it binds looser than ``prec`` requires."""
        return f"({self.text})" if self.prec < prec else self.text


_UNKNOWN: Final = _Type("unknown")
_NEVER: Final = _Type("never")


def property_name(name: str) -> str:
    """``name`` as an object member name: as is when it is an identifier, else JSON-quoted."""
    if name and normalize_identifier(name) == name:
        return name
    return json.dumps(name, ensure_ascii=False)


def _literal(value: Any) -> _Type:
    try:
        return _Type(json.dumps(value, ensure_ascii=False, allow_nan=False))
    except (TypeError, ValueError):
        return _UNKNOWN


def _dedupe(members: Sequence[_Type]) -> list[_Type]:
    seen: dict[str, _Type] = {}
    for member in members:
        seen.setdefault(member.text, member)
    return list(seen.values())


def _union(members: Sequence[_Type]) -> _Type:
    unique = _dedupe(members)
    if len(unique) == 1:
        return unique[0]
    return _Type(" | ".join(m.at_least(_Prec.UNION) for m in unique), _Prec.UNION)


def _intersection(members: Sequence[_Type]) -> _Type:
    unique = _dedupe(members)
    if len(unique) == 1:
        return unique[0]
    return _Type(" & ".join(m.at_least(_Prec.INTERSECTION) for m in unique), _Prec.INTERSECTION)


# Every character Python or TypeScript treats as ending a line, escaped inside comments.
_LINE_BREAKS: Final = {
    "\n": "\\n",
    "\r": "\\r",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
    "\x0b": "\\x0b",
    "\x0c": "\\x0c",
    "\x1c": "\\x1c",
    "\x1d": "\\x1d",
    "\x1e": "\\x1e",
    "\x85": "\\x85",
}
_LINE_BREAK_TABLE: Final = str.maketrans(_LINE_BREAKS)


def _one_line(text: str) -> str:
    return text.translate(_LINE_BREAK_TABLE)


def _number_text(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:
        return None


def _constraint_source(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    """The schema whose keywords describe a property: itself, or the one non-null branch of an
    ``anyOf``/``oneOf`` of one schema and ``null`` when the property itself has no ``type``."""
    if "type" in schema:
        return schema
    for keyword in ("anyOf", "oneOf"):
        variants = schema.get(keyword)
        if isinstance(variants, list):
            others = [
                v for v in variants if not (isinstance(v, Mapping) and v.get("type") == "null")
            ]
            if len(others) == 1 and len(others) < len(variants) and isinstance(others[0], Mapping):
                merged = dict(others[0])
                for key, value in schema.items():
                    if key not in (keyword, "description"):
                        merged.setdefault(key, value)
                return merged
    return schema


def _constraints(schema: Mapping[str, Any]) -> list[str]:
    """What the TypeScript type of ``schema`` alone loses, in the order of the module docstring."""
    source = _constraint_source(schema)
    parts: list[str] = []
    type_ = source.get("type")
    if type_ == "integer" or (isinstance(type_, list) and "integer" in type_):
        parts.append("integer")
    format_ = source.get("format")
    if isinstance(format_, str) and format_:
        parts.append(f"format: {_one_line(format_)}")
    if "default" in source:
        try:
            default = json.dumps(source["default"], ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError):
            default = None
        if default is not None:
            parts.append(f"default: {_one_line(default)}")
    for inclusive, exclusive, name, strict in (
        ("minimum", "exclusiveMinimum", "min", ">"),
        ("maximum", "exclusiveMaximum", "max", "<"),
    ):
        bound = _number_text(source.get(inclusive))
        exclusive_value = source.get(exclusive)
        if bound is not None:
            # Draft 4 wrote an exclusive bound as `exclusiveMinimum: true` beside `minimum`.
            parts.append(f"{strict} {bound}" if exclusive_value is True else f"{name}: {bound}")
        exclusive_bound = _number_text(exclusive_value)
        if exclusive_bound is not None:
            parts.append(f"{strict} {exclusive_bound}")
    for keyword in ("minLength", "maxLength", "minItems", "maxItems"):
        count = _number_text(source.get(keyword))
        if count is not None:
            parts.append(f"{keyword}: {count}")
    pattern = source.get("pattern")
    if isinstance(pattern, str):
        parts.append(f"pattern: {_one_line(pattern)}")
    return parts


def property_comment(schema: Any) -> list[str]:
    """The ``//`` comment lines (without the ``// ``) that precede a property of this schema:
    its description's non-blank lines, the last one followed by what the type loses (see the
    module docstring), ``; ``-separated. Empty when there is nothing to say."""
    if not isinstance(schema, Mapping):
        return []
    description = schema.get("description")
    lines = (
        [line.strip() for line in description.splitlines() if line.strip()]
        if isinstance(description, str)
        else []
    )
    lines = [_one_line(line) for line in lines]
    constraints = _constraints(schema)
    if constraints:
        tail = "; ".join(constraints)
        if lines:
            lines[-1] = f"{lines[-1]}; {tail}"
        else:
            lines.append(tail)
    return lines


def _ref_tokens(ref: str) -> tuple[str, ...] | None:
    if not ref.startswith(_LOCAL_REF_PREFIXES):
        return None
    return tuple(
        unquote(token).replace("~1", "/").replace("~0", "~") for token in ref[2:].split("/")
    )


def _resolve(root: Any, tokens: tuple[str, ...]) -> Any:
    node = root
    for token in tokens:
        if isinstance(node, Mapping):
            if token not in node:
                return _MISSING
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return _MISSING
    return node


class _Renderer:
    """Renders the schemas of one document; ``root`` is where local ``$ref``s resolve."""

    def __init__(self, root: Any) -> None:
        self._root = root
        self._nodes = 0

    def render(self, schema: Any, refs: tuple[tuple[str, ...], ...] = (), depth: int = 0) -> _Type:
        self._nodes += 1
        if depth > MAX_DEPTH or self._nodes > MAX_NODES:
            return _UNKNOWN
        if schema is True:
            return _UNKNOWN
        if schema is False:
            return _NEVER
        if not isinstance(schema, Mapping):
            return _UNKNOWN
        depth += 1

        ref = schema.get("$ref")
        if isinstance(ref, str):
            tokens = _ref_tokens(ref)
            if tokens is None or refs.count(tokens) >= MAX_REF_EXPANSIONS:
                return _UNKNOWN
            target = _resolve(self._root, tokens)
            if target is _MISSING:
                return _UNKNOWN
            return self.render(target, (*refs, tokens), depth)

        if "const" in schema:
            return _literal(schema["const"])
        values = schema.get("enum")
        if isinstance(values, list) and values:
            return _union([_literal(v) for v in values])
        for keyword in ("anyOf", "oneOf"):
            variants = schema.get(keyword)
            if isinstance(variants, list) and variants:
                return _union([self.render(v, refs, depth) for v in variants])
        parts = schema.get("allOf")
        if isinstance(parts, list) and parts:
            return _intersection([self.render(p, refs, depth) for p in parts])

        type_ = schema.get("type")
        if isinstance(type_, str):
            return self._type_keyword(schema, type_, refs, depth)
        if isinstance(type_, list):
            names = [t for t in type_ if isinstance(t, str)]
            if names:
                return _union([self._type_keyword(schema, t, refs, depth) for t in names])
        if any(k in schema for k in _OBJECT_KEYWORDS):
            return self._object(schema, refs, depth)
        if any(k in schema for k in _ARRAY_KEYWORDS):
            return self._array(schema, refs, depth)
        return _UNKNOWN

    def _type_keyword(
        self, schema: Mapping[str, Any], type_: str, refs: tuple[tuple[str, ...], ...], depth: int
    ) -> _Type:
        if type_ in ("string", "boolean", "null"):
            return _Type(type_)
        if type_ in ("integer", "number"):
            return _Type("number")
        if type_ == "array":
            return self._array(schema, refs, depth)
        if type_ == "object":
            return self._object(schema, refs, depth)
        return _UNKNOWN

    def _array(
        self, schema: Mapping[str, Any], refs: tuple[tuple[str, ...], ...], depth: int
    ) -> _Type:
        prefix = schema.get("prefixItems")
        items = schema.get("items", _MISSING)
        if isinstance(items, list):  # the tuple form of drafts before 2020-12
            prefix, items = items, schema.get("additionalItems", _MISSING)
        if isinstance(prefix, list) and prefix:
            elements = [self.render(p, refs, depth).text for p in prefix]
            if items is not _MISSING and items is not False and items is not None:
                elements.append(f"...Array<{self.render(items, refs, depth).text}>")
            return _Type(f"[{', '.join(elements)}]")
        if items is not _MISSING and items is not None:
            return _Type(f"Array<{self.render(items, refs, depth).text}>")
        return _Type("unknown[]")

    def _object(
        self, schema: Mapping[str, Any], refs: tuple[tuple[str, ...], ...], depth: int
    ) -> _Type:
        properties = schema.get("properties")
        if not isinstance(properties, Mapping):
            properties = {}
        required_list = schema.get("required")
        required = (
            {r for r in required_list if isinstance(r, str)}
            if isinstance(required_list, list)
            else set()
        )
        names = [name for name in properties if isinstance(name, str)]

        members: list[tuple[list[str], str]] = []
        for name in names:
            sub = properties[name]
            optional = "" if name in required else "?"
            text = self.render(sub, refs, depth).text
            members.append((property_comment(sub), f"{property_name(name)}{optional}: {text};"))

        additional = schema.get("additionalProperties", _MISSING)
        index: str | None
        if additional is _MISSING:
            index = None if names else "unknown"
        elif additional is True:
            index = "unknown"
        elif additional is False:
            index = None
        else:
            index = self.render(additional, refs, depth).text
        if index is not None:
            members.append(([], f"[key: string]: {index};"))

        if not members:
            return _Type("{}")
        if not any(comments or "\n" in member for comments, member in members):
            return _Type("{ " + " ".join(member for _, member in members) + " }")
        lines = ["{"]
        for comments, member in members:
            lines.extend(f"{INDENT}// {comment}" for comment in comments)
            lines.append(INDENT + member.replace("\n", "\n" + INDENT))
        lines.append("}")
        return _Type("\n".join(lines))


def schema_to_typescript(schema: Any, *, root: Any = _MISSING) -> str:
    """Render a JSON Schema as a TypeScript type, by the rules of this module's docstring.

    ``root`` is the document local ``$ref``s resolve against; it defaults to ``schema`` itself.
    ``None`` (an absent schema) renders as ``unknown``. Never raises for any JSON value.
    """
    renderer = _Renderer(schema if root is _MISSING else root)
    return renderer.render(schema).text


def is_mcp_shaped(schema: Any) -> bool:
    """Whether an output schema describes an MCP ``CallToolResult``.

    True for an object schema (``type`` is ``"object"`` or absent) whose ``properties`` include
    ``content`` with ``type: "array"`` and otherwise only ``structuredContent``, ``isError`` and
    ``_meta``. The schemas of those other properties are not inspected.
    """
    if not isinstance(schema, Mapping):
        return False
    if schema.get("type", "object") != "object":
        return False
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return False
    content = properties.get("content")
    if not isinstance(content, Mapping) or content.get("type") != "array":
        return False
    return all(name == "content" or name in _MCP_EXTRA_PROPERTIES for name in properties)


def input_type(tool: ToolDefinition) -> str:
    """The TypeScript type of a tool's argument.

    A freeform tool takes ``string``; a function tool without an input schema takes
    ``{ [key: string]: unknown; }`` (:data:`OPEN_OBJECT`); otherwise its input schema rendered.
    """
    if tool.kind is ToolKind.FREEFORM:
        return "string"
    if tool.input_schema is None:
        return OPEN_OBJECT
    return schema_to_typescript(tool.input_schema)


def output_type(tool: ToolDefinition) -> str:
    """The TypeScript type a tool's promise resolves to.

    ``unknown`` without an output schema; ``CallToolResult<S>`` for an MCP-shaped one (``S`` is its
    ``structuredContent`` schema rendered against the whole output schema, ``unknown`` when absent);
    otherwise the output schema rendered.
    """
    schema = tool.output_schema
    if schema is None:
        return "unknown"
    if is_mcp_shaped(schema):
        structured = schema["properties"].get("structuredContent", True)
        return f"CallToolResult<{schema_to_typescript(structured, root=schema)}>"
    return schema_to_typescript(schema)


def _requires_input(schema: Any, root: Any, refs: tuple[tuple[str, ...], ...], depth: int) -> bool:
    if depth > MAX_DEPTH:
        return False
    if schema is False:
        return True
    if not isinstance(schema, Mapping):
        return False
    ref = schema.get("$ref")
    if isinstance(ref, str):
        tokens = _ref_tokens(ref)
        if tokens is None or refs.count(tokens) >= MAX_REF_EXPANSIONS:
            return False
        target = _resolve(root, tokens)
        return target is not _MISSING and _requires_input(target, root, (*refs, tokens), depth + 1)
    required = schema.get("required")
    if isinstance(required, list) and any(isinstance(r, str) for r in required):
        return True
    for keyword in ("anyOf", "oneOf"):
        variants = schema.get(keyword)
        if isinstance(variants, list) and variants:
            return all(_requires_input(v, root, refs, depth + 1) for v in variants)
    parts = schema.get("allOf")
    if isinstance(parts, list):
        return any(_requires_input(p, root, refs, depth + 1) for p in parts)
    return False


def input_is_optional(tool: ToolDefinition) -> bool:
    """Whether the declaration may say ``args?:``: a function tool none of whose properties is
    required (no input schema; or a schema with no non-empty ``required``, looking through a
    top-level ``$ref``, requiring every ``anyOf``/``oneOf`` branch or any ``allOf`` part to require
    one). A freeform tool's string is never optional; a ``false`` schema is not optional."""
    if tool.kind is ToolKind.FREEFORM:
        return False
    if tool.input_schema is None:
        return True
    return not _requires_input(tool.input_schema, tool.input_schema, (), 0)


def render_tool_declaration(tool: ToolDefinition, identifier: str) -> str:
    """The one-tool declaration shown in the ``exec`` description, e.g.
    ``declare const tools: { search(args: { limit?: number; q: string; }): Promise<unknown>; };``.

    ``identifier`` is the tool's key on ``tools`` (from
    :func:`codemode.identifiers.tool_identifiers`, which alone knows about duplicate names). The
    parameter is ``input: string`` for a freeform tool, ``args?:`` when :func:`input_is_optional`,
    else ``args:``. Multi-line input or output types are embedded as is (their lines are relative
    to the declaration's own line).
    """
    if tool.kind is ToolKind.FREEFORM:
        parameter = "input"
    elif input_is_optional(tool):
        parameter = "args?"
    else:
        parameter = "args"
    return (
        f"declare const tools: {{ {identifier}({parameter}: {input_type(tool)}): "
        f"Promise<{output_type(tool)}>; }};"
    )
