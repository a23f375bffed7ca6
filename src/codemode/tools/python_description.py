"""The model-facing ``exec`` description for Python cells (docs/python-cells.md).

Same structure as :mod:`codemode.tools.description` (preface, rules, globals, limits, MCP types,
tool reference), for a session whose engine is :class:`codemode.PythonEngine`. The nested tools are
declared as a Python stub, typed from their JSON Schemas: an object becomes a ``TypedDict``, a
function tool a keyword-only ``async def`` on the ``tools`` object (or, when a property name is not
a Python identifier, one positional dict of its ``TypedDict`` type). :func:`python_stub_module`
renders the declarations of all tools as one module a type checker can read.

Everything here is pure: the same arguments always give the same text.
"""

from __future__ import annotations

import json
import keyword
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from codemode.engine.python_env import ALLOWED_IMPORTS, python_tool_identifiers
from codemode.model import CellLimits, ToolDefinition, ToolKind
from codemode.tools.description import CODE_MODE_ONLY_TEXT, NO_NAMESPACE_HEADING, format_bytes
from codemode.tools.typescript import is_mcp_shaped

__all__ = [
    "PYTHON_ALL_TOOLS_TEXT",
    "PYTHON_CODE_MODE_ONLY_TEXT",
    "is_python_session",
    "python_exec_description",
    "python_pragma_source",
    "python_stub_module",
    "python_tool_declaration",
    "python_usage_text",
]

PYTHON_CODE_MODE_ONLY_TEXT: Final = CODE_MODE_ONLY_TEXT.replace("JavaScript", "Python")

_IMPORTS: Final = ", ".join(f"`{m}`" for m in sorted(ALLOWED_IMPORTS))

_RULES_TEXT: Final = f"""\
Run a Python program (a "cell") that orchestrates tool calls, and see what it printed.
- The input is the body of an async function: top-level `await` works. It runs in a fresh \
sandbox (a subset of Python 3: functions, closures, comprehensions, `async`/`await`, \
`try`/`except`, classes without inheritance). Cells share no variables; only \
values saved with `store` carry over to later `exec` calls.
- Nested tools are async methods of the global `tools` object, keyed by identifier (the tool \
name with every character not allowed in a Python identifier replaced by `_`, a keyword \
followed by `_`): `hits = await tools.search(q="x")`. Run independent calls in parallel with \
`await asyncio.gather(tools.a(...), tools.b(...))` (`asyncio` offers `gather` and \
`sleep` only: no `create_task`, `wait_for` or timeouts).
- A function tool takes keyword arguments, or one `dict` (no argument sends `{{}}`); a freeform \
tool takes one `str`. Both return a JSON value (dicts, lists, str, int, float, bool, None); a \
failing tool raises `RuntimeError` with its message.
- There is no filesystem, network, subprocess or `import` beyond {_IMPORTS}: the outside world \
is reachable only through `tools`.
- Send raw Python source only: not JSON, not a quoted string, not a markdown code fence.
- Optional first-line pragma: \
`# @exec: {{"yield_time_ms": 10000, "max_output_tokens": 10000}}`, with the code on the following \
lines. `yield_time_ms` (default 10000) is how long `exec` waits for the cell before returning what \
it printed so far; `max_output_tokens` (default 10000) is the token budget of the result, whose \
middle is cut out beyond it. Either field may be left out.
- The cell ends when its body finishes: tool calls and sleeps still outstanding are then \
discarded, so `await` all the work you need. Only the output counts, not the value of the last \
expression.
- If the result starts with `Script running with cell ID {{cell_id}}`, the cell is still running: \
call `wait` with that `cell_id` for more output and the final result.
- An uncaught exception fails the cell: the result is `Script failed` with the output printed \
before it and the error (`ExceptionType: message` and the cell's line)."""

_GLOBALS_TEXT: Final = """\
Globals:
- `print(*values, sep=" ")`: appends one text item, the values converted with `str` and joined \
by `sep`.
- `text(value)`: appends one text item; a `str` as is, a dict, list or tuple as JSON, anything \
else with `str`.
- `notify(value)`: sends a non-empty progress message to the user at once, outside the output.
- `image(source, detail=None)`: appends an image. `source` is a `data:` URL string (only `data:` \
URLs: remote http(s) URLs are rejected), a dict `{"image_url": ..., "detail": ...}`, or a raw MCP \
image block, e.g. `image(result["content"][0])`. `detail` is `"auto"`, `"low"`, `"high"` (the \
default) or `"original"`.
- `store(key, value)`: saves the JSON form of `value` under a string key for later `exec` calls \
of this session; writes take effect when the cell ends (even by failing) and are dropped if it is \
terminated.
- `load(key)`: returns a fresh copy of a stored value, or `None` if there is none.
- `yield_control()`: returns the output printed so far to you now; the cell keeps running.
- `exit()`: ends the cell successfully at once, keeping its output.
- `await asyncio.sleep(seconds)`: the timer; a sleep still pending when the body ends is dropped.
- `tools`: the nested tools, one async method per tool, keyed by identifier.
- `ALL_TOOLS`: a tuple of `{"name": ..., "description": ...}` dicts, one per nested tool, \
`name` being its attribute on `tools`."""

_SHARED_MCP_TYPES: Final = """\
Shared MCP types (the result of a tool declared as returning `CallToolResult`):
```python
class CallToolResult(TypedDict):
    content: list[dict[str, Any]]  # blocks: {"type": "text", "text": ...}, \
{"type": "image", "data": ..., "mimeType": ...}, ...
    structuredContent: NotRequired[Any]
    isError: NotRequired[bool]
```
Such a tool reports its own failure by returning `isError: True` (check it; it does not raise); \
a transport failure raises. Forward an image block with `image(result["content"][0])`."""

PYTHON_ALL_TOOLS_TEXT: Final = (
    "The nested tools are not listed here. To find one, filter `ALL_TOOLS` by `name` and "
    "`description` (for example "
    '`[t for t in ALL_TOOLS if "issue" in (t["name"] + t["description"]).lower()]`) and print '
    "only the few matches you need; do not print the whole `ALL_TOOLS` tuple."
)

_NO_TOOLS_TEXT: Final = "No nested tools are enabled: `tools` has no methods."
_REFERENCE_INTRO: Final = "Nested tools (call each as `await tools.<identifier>(...)`):"


def _limits_text(limits: CellLimits) -> str:
    return (
        f"Limits per cell: at most {limits.max_tool_calls} tool calls in all and "
        f"{limits.max_parallel_tool_calls} at the host at once (further calls wait), "
        f"{format_bytes(limits.max_output_bytes)} of output, "
        f"{format_bytes(limits.max_heap_bytes)} of memory and "
        f"{limits.max_cpu_seconds:g} seconds of Python CPU time (waiting for tools or sleeps "
        "does not count). Exceeding one ends the cell with an error naming the limit, "
        f"e.g. `exec cell exceeded max_tool_calls ({limits.max_tool_calls})`."
    )


# ---------------------------------------------------------------------------- JSON Schema -> Python


@dataclass
class _Renderer:
    """Turns schemas into Python type expressions, collecting the TypedDicts they need."""

    root: Mapping[str, Any]
    classes: list[str] = field(default_factory=list)
    names: set[str] = field(default_factory=set)

    def class_name(self, base: str) -> str:
        name = base
        n = 2
        while name in self.names:
            name = f"{base}{n}"
            n += 1
        self.names.add(name)
        return name

    def type_of(self, schema: Any, name: str, refs: tuple[str, ...] = ()) -> str:
        if schema is True or schema is None:
            return "Any"
        if schema is False:
            return "NoReturn"
        if not isinstance(schema, Mapping):
            return "Any"
        ref = schema.get("$ref")
        if isinstance(ref, str):
            target = self._resolve(ref)
            if target is None or refs.count(ref) >= 2:
                return "Any"
            return self.type_of(target, name, (*refs, ref))
        if "const" in schema:
            return self._literals([schema["const"]])
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return self._literals(schema["enum"])
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                return _union(self.type_of(o, name, refs) for o in options)
        all_of = schema.get("allOf")
        if isinstance(all_of, list) and len(all_of) == 1:
            return self.type_of(all_of[0], name, refs)
        if isinstance(all_of, list) and all_of:
            return "Any"  # Python has no intersection types
        kind = schema.get("type")
        if isinstance(kind, list):
            return _union(self._typed({**schema, "type": k}, name, refs) for k in kind)
        return self._typed(schema, name, refs)

    def _typed(self, schema: Mapping[str, Any], name: str, refs: tuple[str, ...]) -> str:
        kind = schema.get("type")
        if kind == "string":
            return "str"
        if kind == "integer":
            return "int"
        if kind == "number":
            return "float"
        if kind == "boolean":
            return "bool"
        if kind == "null":
            return "None"
        if kind == "array" or (kind is None and ("items" in schema or "prefixItems" in schema)):
            prefix = schema.get("prefixItems")
            if isinstance(prefix, list) and prefix:
                return "tuple[" + ", ".join(self.type_of(p, name, refs) for p in prefix) + "]"
            if "items" in schema and isinstance(schema["items"], (Mapping, bool)):
                return f"list[{self.type_of(schema['items'], name + 'Item', refs)}]"
            return "list[Any]"
        if kind == "object" or (kind is None and "properties" in schema):
            return self.object_type(schema, name, refs)
        return "Any"

    def object_type(self, schema: Mapping[str, Any], name: str, refs: tuple[str, ...] = ()) -> str:
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        if not isinstance(properties, Mapping) or not properties:
            if isinstance(extra, Mapping):
                return f"dict[str, {self.type_of(extra, name + 'Value', refs)}]"
            return "dict[str, Any]"
        cls = self.class_name(name)
        required = set(schema.get("required") or ())
        fields: list[tuple[str, str, str]] = []  # key, type, comment
        for key, sub in properties.items():
            sub_type = self.type_of(sub, cls + _camel(str(key)), refs)
            if key not in required:
                sub_type = f"NotRequired[{sub_type}]"
            fields.append((str(key), sub_type, _comment(sub)))
        if all(_is_name(k) for k, _, _ in fields):
            lines = [f"class {cls}(TypedDict):"]
            for key, sub_type, comment in fields:
                if comment:
                    lines.append(f"    # {comment}")
                lines.append(f"    {key}: {sub_type}")
        else:
            body = ", ".join(f"{json.dumps(k)}: {t}" for k, t, _ in fields)
            lines = [f"{cls} = TypedDict({json.dumps(cls)}, {{{body}}})"]
        self.classes.append("\n".join(lines))
        return cls

    def _resolve(self, ref: str) -> Any:
        for prefix in ("#/$defs/", "#/definitions/"):
            if ref.startswith(prefix):
                table = self.root.get(prefix[2:-1])
                if isinstance(table, Mapping):
                    return table.get(ref[len(prefix) :])
        return None

    @staticmethod
    def _literals(values: Sequence[Any]) -> str:
        parts: list[str] = []
        extra: list[str] = []
        for v in values:
            if v is None:
                parts.append("None")
            elif isinstance(v, (bool, int, str)):
                parts.append(repr(v))
            elif isinstance(v, float):
                extra.append("float")
            else:
                extra.append("Any")
        result = [f"Literal[{', '.join(parts)}]"] if parts else []
        return _union([*result, *extra])


def _union(types: Any) -> str:
    seen: list[str] = []
    for t in types:
        if t == "Any":
            return "Any"
        if t not in seen:
            seen.append(t)
    return " | ".join(seen) if seen else "NoReturn"


def _is_name(key: str) -> bool:
    return key.isidentifier() and not keyword.iskeyword(key) and key.isascii()


def _camel(text: str) -> str:
    out = "".join(part[:1].upper() + part[1:] for part in _split(text))
    return out or "Field"


def _split(text: str) -> list[str]:
    cleaned = "".join(ch if (ch.isascii() and ch.isalnum()) else " " for ch in text)
    return cleaned.split()


def _comment(schema: Any) -> str:
    """The description and what the type alone loses, like the TypeScript declarations."""
    if not isinstance(schema, Mapping):
        return ""
    parts: list[str] = []
    description = schema.get("description")
    if isinstance(description, str) and description.strip():
        parts.append(" ".join(description.split()))
    if isinstance(schema.get("format"), str):
        parts.append(f"format: {schema['format']}")
    if "default" in schema:
        parts.append(f"default: {json.dumps(schema['default'])}")
    for key, label in (("minimum", "min"), ("maximum", "max")):
        if isinstance(schema.get(key), (int, float)):
            parts.append(f"{label}: {schema[key]}")
    if isinstance(schema.get("exclusiveMinimum"), (int, float)):
        parts.append(f"> {schema['exclusiveMinimum']}")
    if isinstance(schema.get("exclusiveMaximum"), (int, float)):
        parts.append(f"< {schema['exclusiveMaximum']}")
    for key in ("minLength", "maxLength", "minItems", "maxItems"):
        if isinstance(schema.get(key), int):
            parts.append(f"{key}: {schema[key]}")
    if isinstance(schema.get("pattern"), str):
        parts.append(f"pattern: {schema['pattern']}")
    return "; ".join(parts)


@dataclass(frozen=True)
class _Declaration:
    classes: tuple[str, ...]
    method: str  # the `async def` line(s) of the tools class, indented by four spaces


def _declare(
    tool: ToolDefinition, identifier: str, taken: set[str], *, docstring: bool = True
) -> _Declaration:
    schema = tool.input_schema if isinstance(tool.input_schema, Mapping) else {}
    renderer = _Renderer(schema, names=taken)
    output = _output_type(tool, identifier, renderer)
    base = _camel(identifier)
    params: list[tuple[str, str]]
    if tool.kind is ToolKind.FREEFORM:
        params = [("input: str", ""), ("/", "")]
    elif tool.input_schema is None:
        params = [("args: dict[str, Any] | None = None", ""), ("/", ""), ("**kwargs: Any", "")]
    else:
        params = _params(schema, base + "Args", renderer)
    if any(comment for _, comment in params):
        lines = [f"    async def {identifier}(", "        self,"]
        for text, comment in params:
            if comment:
                lines.append(f"        # {comment}")
            lines.append(f"        {text},")
        lines.append(f"    ) -> {output}:")
    else:
        joined = ", ".join(["self", *(text for text, _ in params)])
        lines = [f"    async def {identifier}({joined}) -> {output}:"]
    description = tool.description.strip()
    if description and docstring:
        lines.append("        " + _docstring(description))
    else:
        lines.append("        ...")
    return _Declaration(tuple(renderer.classes), "\n".join(lines))


def _params(
    schema: Mapping[str, Any], args_name: str, renderer: _Renderer
) -> list[tuple[str, str]]:
    """The parameters after ``self``, each with its comment."""
    properties = schema.get("properties")
    kind = schema.get("type", "object")
    if kind != "object" or (properties is not None and not isinstance(properties, Mapping)):
        return [(f"args: {renderer.type_of(schema, args_name)}", ""), ("/", "")]
    props: Mapping[str, Any] = properties or {}
    extra = schema.get("additionalProperties")
    if props and not all(_is_name(str(k)) for k in props):
        # Not every name can be a keyword argument: one dict, typed.
        typed = renderer.object_type(schema, args_name)
        optional = " | None = None" if not schema.get("required") else ""
        return [(f"args: {typed}{optional}", ""), ("/", "")]
    required = set(schema.get("required") or ())
    params: list[tuple[str, str]] = [("*", "")]
    for key, sub in props.items():
        sub_type = renderer.type_of(sub, args_name + _camel(str(key)))
        default = "" if key in required else " = ..."
        comment = _comment(sub)
        params.append((f"{key}: {sub_type}{default}", comment))
    if extra is True or (extra is None and not props):
        params.append(("**kwargs: Any", ""))
    elif isinstance(extra, Mapping):
        params.append((f"**kwargs: {renderer.type_of(extra, args_name + 'Value')}", ""))
    if len(params) == 1:
        return [("/", "")]  # the tool takes no arguments
    return params


def _output_type(tool: ToolDefinition, identifier: str, renderer: _Renderer) -> str:
    schema = tool.output_schema
    if schema is None:
        return "Any"
    if is_mcp_shaped(schema):
        return "CallToolResult"
    out = _Renderer(schema, names=renderer.names)
    result = out.type_of(schema, _camel(identifier) + "Result")
    renderer.classes.extend(out.classes)
    return result


def _docstring(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    body = "\n        ".join(escaped.splitlines())
    return f'"""{body}"""'


def python_tool_declaration(tool: ToolDefinition, identifier: str) -> str:
    """The Python declaration of one tool: the TypedDicts it needs, then its method on the
    ``tools`` class (indented), as shown in the ``exec`` description."""
    decl = _declare(tool, identifier, set())
    return "\n\n".join([*decl.classes, "class tools:", decl.method]).replace(
        "class tools:\n\n", "class tools:\n"
    )


def python_stub_module(tools: Sequence[ToolDefinition]) -> str:
    """All declarations as one importable stub module: ``tools``, ``ALL_TOOLS`` and the helpers
    with their types, for a type checker (the tests run mypy over it)."""
    taken: set[str] = {"CallToolResult", "Tools"}
    classes: list[str] = []
    methods: list[str] = []
    for tool, ident in zip(tools, python_tool_identifiers(t.name for t in tools), strict=True):
        decl = _declare(tool, ident, taken)
        classes.extend(decl.classes)
        methods.append(decl.method)
    head = (
        "from typing import Any, Literal, NoReturn, NotRequired, TypedDict\n\n\n"
        "class CallToolResult(TypedDict):\n"
        "    content: list[dict[str, Any]]\n"
        "    structuredContent: NotRequired[Any]\n"
        "    isError: NotRequired[bool]\n"
    )
    body = "\n\n\n".join(classes)
    tools_class = "class Tools:\n" + ("\n\n".join(methods) if methods else "    pass")
    helpers = (
        "tools: Tools\n"
        "ALL_TOOLS: tuple[dict[str, str], ...]\n\n\n"
        "def text(value: object) -> None: ...\n"
        "def notify(value: object) -> None: ...\n"
        "def image(source: str | dict[str, Any], detail: str | None = None) -> None: ...\n"
        "def store(key: str, value: object) -> None: ...\n"
        "def load(key: str) -> Any: ...\n"
        "def yield_control() -> None: ...\n"
        "def exit() -> NoReturn: ...\n"
    )
    return "\n\n\n".join(p for p in (head, body, tools_class, helpers) if p) + "\n"


def _reference(tools: Sequence[ToolDefinition]) -> str:
    blocks = [_REFERENCE_INTRO]
    current: str | None = None
    taken: set[str] = {"CallToolResult"}
    for tool, identifier in zip(tools, python_tool_identifiers(t.name for t in tools), strict=True):
        if tool.namespace != current:
            heading = tool.namespace if tool.namespace is not None else NO_NAMESPACE_HEADING
            blocks.append(f"## {heading}")
            current = tool.namespace
        heading = f"### `{identifier}`"
        if identifier != tool.name:
            heading += f" (`{tool.name}`)"
        lines = [heading]
        description = tool.description.strip()
        if description:
            lines.append(description)
        decl = _declare(tool, identifier, taken, docstring=False)
        code = "\n\n".join([*decl.classes, "class tools:\n" + decl.method])
        lines.extend(["```python", code, "```"])
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def python_exec_description(
    tools: Sequence[ToolDefinition],
    *,
    describe_tools: bool,
    code_mode_only: bool,
    limits: CellLimits,
) -> str:
    """The ``exec`` description for Python cells: the sections of
    :func:`codemode.tools.description.exec_description`, with Python rules, globals and
    declarations."""
    sections: list[str] = []
    if code_mode_only:
        sections.append(PYTHON_CODE_MODE_ONLY_TEXT)
    sections.extend([_RULES_TEXT, _GLOBALS_TEXT, _limits_text(limits)])
    if any(is_mcp_shaped(tool.output_schema) for tool in tools):
        sections.append(_SHARED_MCP_TYPES)
    if not describe_tools:
        sections.append(PYTHON_ALL_TOOLS_TEXT)
    elif tools:
        sections.append(_reference(tools))
    else:
        sections.append(_NO_TOOLS_TEXT)
    return "\n\n".join(sections)


def is_python_session(session: object) -> bool:
    """Whether ``session`` runs Python cells: its ``language`` (a :class:`codemode.SessionRuntime`
    on a :class:`codemode.PythonEngine`, or a session forwarding to one) is ``"python"``."""
    return getattr(session, "language", "javascript") == "python"


def python_pragma_source(source: str) -> str:
    """Python cells write the ``exec`` pragma as a comment, ``# @exec: {...}``: give it the
    form the pragma parser reads (``// @exec:``); any other source is returned unchanged."""
    stripped = source.lstrip()
    if stripped.startswith("# @exec:"):
        indent = source[: len(source) - len(stripped)]
        return indent + "//" + stripped[1:]
    return source


def python_usage_text(message: str) -> str:
    """A pragma usage error of ``exec`` worded for Python cells (``# @exec:``, Python source)."""
    return (
        message.replace("raw JavaScript source text", "raw Python source text")
        .replace("Provide JS only", "Provide Python only")
        .replace("followed by JavaScript source", "followed by Python source")
        .replace("`// @exec:", "`# @exec:")
    )
