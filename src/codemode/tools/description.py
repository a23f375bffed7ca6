"""The model-facing descriptions and tool specs of ``exec`` and ``wait`` (docs/model-tools.md).

Everything here is pure: the same arguments always give the same text, so descriptions can be
golden-tested and cached by a host (prompt caching depends on byte-identical tool specs).

:func:`exec_description` is made of blank-line separated sections, in the spec's order:

1. with ``code_mode_only``, :data:`CODE_MODE_ONLY_TEXT`;
2. the rules, the globals of the cell (one line each, ``catalog`` included) and the per-cell
   limits read from the ``limits`` argument; when some tool is MCP-shaped, the rule about failing
   calls adds that such tools report their own failures as data (``isError: true``);
3. when any tool's output schema is MCP-shaped (:func:`~codemode.tools.typescript.is_mcp_shaped`),
   :data:`SHARED_MCP_TYPES`, whether or not tools are described, ending with the rule that such a
   tool resolves with ``isError: true`` rather than throwing, while a transport failure rejects;
4. with ``describe_tools``, the tool reference: a ``## {namespace}`` heading each time the namespace
   changes from one tool to the next (a change back to no namespace gets
   ``## {NO_NAMESPACE_HEADING}``), then per tool a ``### `{identifier}``` heading, followed by
   `` (`{raw name}`)`` when the two differ, its description (stripped; left out when empty) and its
   declaration in a ``ts`` code fence (:func:`tool_reference_blocks`). Without ``describe_tools``,
   :data:`ALL_TOOLS_TEXT` instead.

**Discovery (docs/model-tools.md).** When the reference would take more than
``reference_budget_tokens``
tokens (⌈UTF-8 bytes / 4⌉), it is replaced by a listing: the same namespace headings, then one
line per tool, ``- `{identifier}`: {first line}``, the first non-blank line of its description cut
to :data:`FIRST_LINE_MAX_CHARS` characters (an ellipsis marks a cut), followed by
:data:`DISCOVERY_TEXT`, which explains the cell's ``catalog`` global. ``catalog`` itself is always
there (a line among the globals says so), whatever the size of the reference.

The adapters re-key a spec for another API. The freeform (custom) ``exec`` tool only exists in the
OpenAI Responses API; :func:`to_openai_chat` and :func:`to_anthropic` turn it into a function tool
taking ``{code: string}``, which :meth:`CodeModeTools.call` accepts for ``exec`` (a mapping with a
string ``code``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, Final

from codemode.identifiers import tool_identifiers
from codemode.model import CellLimits, ToolDefinition
from codemode.tools.render import estimate_tokens
from codemode.tools.typescript import is_mcp_shaped, render_tool_declaration

__all__ = [
    "ALL_TOOLS_TEXT",
    "CODE_MODE_ONLY_TEXT",
    "DEFAULT_REFERENCE_BUDGET_TOKENS",
    "DISCOVERY_TEXT",
    "EXEC_TOOL_NAME",
    "FIRST_LINE_MAX_CHARS",
    "NO_NAMESPACE_HEADING",
    "SHARED_MCP_TYPES",
    "WAIT_TOOL_NAME",
    "exec_description",
    "exec_tool_spec_dict",
    "first_line",
    "to_anthropic",
    "to_openai_chat",
    "to_openai_responses",
    "tool_reference_blocks",
    "wait_description",
    "wait_tool_spec_dict",
]

EXEC_TOOL_NAME: Final = "exec"
WAIT_TOOL_NAME: Final = "wait"
NO_NAMESPACE_HEADING: Final = "Other tools"

DEFAULT_REFERENCE_BUDGET_TOKENS: Final = 8000
"""Above this many tokens the tool reference becomes a one-line-per-tool listing
(docs/model-tools.md)."""

FIRST_LINE_MAX_CHARS: Final = 160
"""The longest first description line of the discovery listing, in characters."""

CODE_MODE_ONLY_TEXT: Final = (
    "Only `exec` and `wait` can be called directly. Every other tool is reachable only from "
    "JavaScript inside `exec`, as `tools.<identifier>`; do not try to call those tools directly."
)

_RULES_TEXT: Final = """\
Run a JavaScript program (a "cell") that orchestrates tool calls, and see what it printed.
- The input is the body of an async JavaScript module (strict mode, top-level `await` allowed), \
run in a fresh sandbox. Cells share no variables; only values saved with `store` carry over to \
later `exec` calls.
- Nested tools are async functions on the global `tools` object, keyed by identifier (the tool \
name with every character not allowed in a JavaScript identifier replaced by `_`): \
`const hits = await tools.search({q: "x"});`. Independent calls can run in parallel with \
`Promise.all`.
- A function tool takes one JSON object (no argument sends `{}`); a freeform tool takes one \
string. Both resolve to a JSON value; a failing call rejects with an `Error`.
- There is no Node, filesystem, network, `require`, `fetch` or `import` of any kind: the outside \
world is reachable only through `tools`.
- Send raw JavaScript source only: not JSON, not a quoted string, not a markdown code fence.
- Optional first-line pragma: \
`// @exec: {"yield_time_ms": 10000, "max_output_tokens": 10000}`, with the code on the following \
lines. `yield_time_ms` (default 10000) is how long `exec` waits for the cell before returning what \
it printed so far; `max_output_tokens` (default 10000) is the token budget of the result, whose \
middle is cut out beyond it. Either field may be left out.
- The cell ends when its body finishes: un-awaited promises, pending timers and tool calls still \
outstanding are then discarded, so `await` all the work you need. Only the output counts, not the \
value of the last expression or of a top-level `return`.
- If the result starts with `Script running with cell ID {cell_id}`, the cell is still running: \
call `wait` with that `cell_id` for more output and the final result.
- An uncaught exception fails the cell: the result is `Script failed` with the output printed \
before it and the error."""

_GLOBALS_TEXT: Final = """\
Globals:
- `text(value)`: appends one text item to the output; strings, numbers, booleans, `null` and \
`undefined` as `String(value)`, anything else as JSON.
- `console.log(...values)` (likewise `info`, `warn`, `error`, `debug`): appends one text item, the \
values converted like `text` and joined by spaces.
- `notify(value)`: sends a non-empty progress message to the user at once, outside the output.
- `image(source, detail?)`: appends an image. `source` is a `data:` URL string (only `data:` URLs: \
remote http(s) URLs are rejected), an object `{image_url, detail?}`, or a raw MCP image block, \
e.g. `image(result.content[0])`. `detail` is `"auto"`, `"low"`, `"high"` (the default) or \
`"original"`.
- `store(key, value)`: saves the JSON form of `value` under a string key for later `exec` calls \
of this session; writes take effect when the cell ends (even by failing) and are dropped if it is \
terminated.
- `load(key)`: returns a fresh copy of a stored value, or `undefined` if there is none.
- `yield_control()`: returns the output printed so far to you now; the cell keeps running.
- `exit()`: ends the cell successfully at once, keeping its output.
- `setTimeout(callback, delayMs?)`: runs `callback` later and returns a timer id; a pending timer \
does not keep the cell alive, so sleep with `await new Promise(r => setTimeout(r, ms))`.
- `clearTimeout(id)`: cancels a timer created by `setTimeout`.
- `tools`: the nested tools, one async function per tool, keyed by identifier.
- `ALL_TOOLS`: an array of `{name, description}`, one per nested tool, `name` being its key on \
`tools`.
- `catalog`: finds and explains nested tools without calling any: \
`await catalog.search(query, {limit: 10})` returns the best matches as `[{name, description}]`, \
`await catalog.describe(name)` returns one tool's full description and TypeScript declaration as \
a string (it throws `unknown tool {name}` for a name that is not a tool)."""

SHARED_MCP_TYPES: Final = """\
Shared MCP types (the result of a tool declared as returning `CallToolResult<T>`):
```ts
type CallToolResult<T = unknown> = {
  content: ContentBlock[];
  structuredContent?: T;
  isError?: boolean;
  _meta?: { [key: string]: unknown; };
};
type ContentBlock = TextContent | ImageContent | AudioContent | ResourceLink | EmbeddedResource;
type Annotations = { audience?: Array<"user" | "assistant">; priority?: number; \
lastModified?: string; };
type TextContent = { type: "text"; text: string; annotations?: Annotations; \
_meta?: { [key: string]: unknown; }; };
type ImageContent = { type: "image"; data: string; mimeType: string; \
annotations?: Annotations; _meta?: { [key: string]: unknown; }; };
type AudioContent = { type: "audio"; data: string; mimeType: string; \
annotations?: Annotations; _meta?: { [key: string]: unknown; }; };
type ResourceLink = { type: "resource_link"; uri: string; name: string; title?: string; \
description?: string; mimeType?: string; size?: number; annotations?: Annotations; \
_meta?: { [key: string]: unknown; }; };
type EmbeddedResource = { type: "resource"; resource: { uri: string; mimeType?: string; \
text: string; } | { uri: string; mimeType?: string; blob: string; }; \
annotations?: Annotations; _meta?: { [key: string]: unknown; }; };
```
`data` and `blob` are base64. Forward an image block with `image(result.content[0])`.
A tool returning `CallToolResult` reports its own failure by resolving with `isError: true` (the \
reason is in `content`): check `result.isError`, it does not throw, so `try`/`catch` alone misses \
it. Only a transport failure (the server unreachable, crashed or timed out) rejects with an \
`Error`."""

ALL_TOOLS_TEXT: Final = (
    "The nested tools are not listed here. To find one, filter `ALL_TOOLS` by `name` and "
    "`description` (for example "
    '`ALL_TOOLS.filter(t => /issue/i.test(t.name + " " + t.description))`) and print only the '
    "few matches you need; do not print the whole `ALL_TOOLS` array. Before calling a tool, print "
    "`await catalog.describe(name)` for its argument and result types."
)

DISCOVERY_TEXT: Final = """\
Only the first line of each tool's description is listed above. Discover the rest inside `exec` \
with the global `catalog` (its answers come from the cell itself: they count as no tool call):
- `await catalog.search(query, {limit: 10})`: the tools whose identifier and description best \
match the words of `query`, best first, as `[{name, description}]` (`name` is the key on `tools`).
- `await catalog.describe(name)`: one tool's full description and TypeScript declaration, as a \
string; print it before calling a tool whose arguments you have not seen. It throws \
`unknown tool {name}` for a name that is not a tool.
For example: `text(await catalog.describe((await catalog.search("create issue"))[0].name));`"""


_FAILURE_RULE: Final = "a failing call rejects with an `Error`."
_FAILURE_RULE_MCP: Final = (
    "a failing call rejects with an `Error`, except that tools returning `CallToolResult` report "
    "their own failures as data (`isError: true`, see Shared MCP types below)."
)

_NO_TOOLS_TEXT: Final = "No nested tools are enabled: `tools` is empty."
_REFERENCE_INTRO: Final = "Nested tools (call each as `tools.<identifier>`):"
_LISTING_INTRO: Final = (
    "Nested tools ({count}), listed by identifier with the first line of their description "
    "(call each as `tools.<identifier>`):"
)

_MiB: Final = 1024 * 1024
_KiB: Final = 1024


def format_bytes(n: int) -> str:
    """``n`` bytes as a model reads them: ``64 MiB``, ``512 KiB`` or ``100 bytes``."""
    if n % _MiB == 0:
        return f"{n // _MiB} MiB"
    if n % _KiB == 0:
        return f"{n // _KiB} KiB"
    return f"{n} bytes"


def _limits_text(limits: CellLimits) -> str:
    return (
        f"Limits per cell: at most {limits.max_tool_calls} tool calls in all and "
        f"{limits.max_parallel_tool_calls} outstanding at once (more wait their turn), "
        f"{format_bytes(limits.max_output_bytes)} of output, "
        f"{format_bytes(limits.max_heap_bytes)} of memory and "
        f"{limits.max_cpu_seconds:g} seconds of JavaScript CPU time (waiting for tools or timers "
        "does not count). Exceeding one ends the cell with an error naming the limit, "
        "e.g. `exec cell exceeded max_tool_calls "
        f"({limits.max_tool_calls})`."
    )


def _tool_heading(identifier: str, name: str) -> str:
    if identifier == name:
        return f"### `{identifier}`"
    return f"### `{identifier}` (`{name}`)"


def _tool_block(tool: ToolDefinition, identifier: str) -> str:
    lines = [_tool_heading(identifier, tool.name)]
    description = tool.description.strip()
    if description:
        lines.append(description)
    lines.extend(["```ts", render_tool_declaration(tool, identifier), "```"])
    return "\n".join(lines)


def tool_reference_blocks(tools: Sequence[ToolDefinition]) -> list[str]:
    """Each tool's entry of the reference, in order: its ``### `identifier``` heading (with the
    raw name when it differs), its stripped description (left out when empty) and its declaration
    in a ``ts`` fence. ``catalog.describe`` in a cell answers with these very texts."""
    identifiers = tool_identifiers(t.name for t in tools)
    return [_tool_block(t, i) for t, i in zip(tools, identifiers, strict=True)]


def _namespaced(tools: Sequence[ToolDefinition], entries: Sequence[str], intro: str) -> str:
    blocks = [intro]
    current: str | None = None
    for tool, entry in zip(tools, entries, strict=True):
        if tool.namespace != current:
            heading = tool.namespace if tool.namespace is not None else NO_NAMESPACE_HEADING
            blocks.append(f"## {heading}")
            current = tool.namespace
        blocks.append(entry)
    return "\n\n".join(blocks)


def _reference(tools: Sequence[ToolDefinition]) -> str:
    return _namespaced(tools, tool_reference_blocks(tools), _REFERENCE_INTRO)


def first_line(description: str) -> str:
    """The first non-blank line of ``description``, stripped and cut to
    :data:`FIRST_LINE_MAX_CHARS` characters (``…`` ending a cut one); ``""`` when blank."""
    for line in description.splitlines():
        line = line.strip()
        if line:
            if len(line) > FIRST_LINE_MAX_CHARS:
                return line[: FIRST_LINE_MAX_CHARS - 1].rstrip() + "…"
            return line
    return ""


def _listing(tools: Sequence[ToolDefinition]) -> str:
    identifiers = tool_identifiers(t.name for t in tools)
    blocks: list[str] = [_LISTING_INTRO.format(count=len(tools))]
    current: str | None = None
    lines: list[str] = []
    for tool, identifier in zip(tools, identifiers, strict=True):
        if tool.namespace != current:
            if lines:
                blocks.append("\n".join(lines))
                lines = []
            heading = tool.namespace if tool.namespace is not None else NO_NAMESPACE_HEADING
            blocks.append(f"## {heading}")
            current = tool.namespace
        line = first_line(tool.description)
        lines.append(f"- `{identifier}`: {line}" if line else f"- `{identifier}`")
    if lines:
        blocks.append("\n".join(lines))
    blocks.append(DISCOVERY_TEXT)
    return "\n\n".join(blocks)


def exec_description(
    tools: Sequence[ToolDefinition],
    *,
    describe_tools: bool,
    code_mode_only: bool,
    limits: CellLimits,
    reference_budget_tokens: int | None = None,
) -> str:
    """The description of the ``exec`` tool for a session whose cells get ``tools``.

    Sections, in order, separated by blank lines: the code-mode-only preface (with
    ``code_mode_only``), the rules with one line per cell global and the per-cell limits of
    ``limits``, the Shared MCP types block (when some tool's output is MCP-shaped) and either the
    tool reference (``describe_tools``; tools in request order, identifiers from
    :func:`codemode.identifiers.tool_identifiers`) or the sentence about filtering ``ALL_TOOLS``.
    A reference of more than ``reference_budget_tokens`` tokens (``None``: no budget) becomes the
    discovery listing of the module docstring.
    """
    sections: list[str] = []
    if code_mode_only:
        sections.append(CODE_MODE_ONLY_TEXT)
    mcp_shaped = any(is_mcp_shaped(tool.output_schema) for tool in tools)
    rules = _RULES_TEXT.replace(_FAILURE_RULE, _FAILURE_RULE_MCP) if mcp_shaped else _RULES_TEXT
    sections.extend([rules, _GLOBALS_TEXT, _limits_text(limits)])
    if mcp_shaped:
        sections.append(SHARED_MCP_TYPES)
    if not describe_tools:
        sections.append(ALL_TOOLS_TEXT)
    elif tools:
        reference = _reference(tools)
        if reference_budget_tokens is not None and estimate_tokens(reference) > max(
            reference_budget_tokens, 0
        ):
            reference = _listing(tools)
        sections.append(reference)
    else:
        sections.append(_NO_TOOLS_TEXT)
    return "\n\n".join(sections)


def wait_description(max_wait_ms: int) -> str:
    """The description of the ``wait`` tool: when to use it, each argument with its default (the
    wait caps being ``max_wait_ms``), what it returns, and that ``until: "completed"`` beats
    polling."""
    return f"""\
Wait for more output from a cell that `exec` left running, or stop it. Use it only after a result \
starting with `Script running with cell ID {{cell_id}}`.
- `cell_id` (string, required): the id from that line.
- `yield_time_ms` (number, default 10000): how long to wait before returning what the cell printed \
so far; capped at {max_wait_ms}.
- `max_tokens` (number, default 10000): the token budget of the returned output; the middle of \
longer output is cut out.
- `terminate` (boolean, default false): stop the cell instead of waiting; the result is \
`Script terminated` (or the final result, if the cell had already ended).
- `until` (`"yield"` or `"completed"`, default `"yield"`): `"yield"` returns when `yield_time_ms` \
runs out or the cell calls `yield_control()`; `"completed"` keeps waiting, gathering all output, \
until the cell ends or `yield_time_ms` (if given, else {max_wait_ms}) milliseconds have passed.
- Each call returns only the output printed since the previous result for this cell, or the final \
result (`Script completed`, `Script failed` or `Script terminated`), which closes the cell: its id \
is then no longer valid.
- If the result is again `Script running with cell ID ...`, the cell is still running; call `wait` \
again with the same `cell_id`.
- To wait for a slow cell to finish, prefer one `wait` with `until: "completed"` over repeated \
polling."""


_EXEC_PARAMETERS: Final[Mapping[str, Any]] = {
    "type": "object",
    "properties": {"code": {"type": "string"}},
    "required": ["code"],
    "additionalProperties": False,
}

_WAIT_PARAMETERS: Final[Mapping[str, Any]] = {
    "type": "object",
    "properties": {
        "cell_id": {"type": "string"},
        "yield_time_ms": {"type": "number"},
        "max_tokens": {"type": "number"},
        "terminate": {"type": "boolean"},
        "until": {"type": "string", "enum": ["yield", "completed"]},
    },
    "required": ["cell_id"],
    "additionalProperties": False,
}


def exec_tool_spec_dict(description: str, freeform: bool = False) -> dict[str, Any]:
    """The ``exec`` tool as an OpenAI Responses tool (docs/model-tools.md), a fresh dict on each
    call.

    A function tool ``{"type": "function", "name": "exec", "description", "strict": False,
    "parameters": {code: string, required, no additional properties}}``, or with ``freeform`` a
    custom tool ``{"type": "custom", "name": "exec", "description", "format": {"type": "text"}}``.
    """
    if freeform:
        return {
            "type": "custom",
            "name": EXEC_TOOL_NAME,
            "description": description,
            "format": {"type": "text"},
        }
    return {
        "type": "function",
        "name": EXEC_TOOL_NAME,
        "description": description,
        "strict": False,
        "parameters": copy.deepcopy(dict(_EXEC_PARAMETERS)),
    }


def wait_tool_spec_dict(description: str) -> dict[str, Any]:
    """The ``wait`` tool as an OpenAI Responses function tool (docs/model-tools.md), a fresh dict
    on each call:
    ``cell_id`` (string, required), ``yield_time_ms`` and ``max_tokens`` (numbers), ``terminate``
    (boolean), ``until`` (enum ``yield``/``completed``), no other properties, ``strict`` false."""
    return {
        "type": "function",
        "name": WAIT_TOOL_NAME,
        "description": description,
        "strict": False,
        "parameters": copy.deepcopy(dict(_WAIT_PARAMETERS)),
    }


def _as_function(spec: Mapping[str, Any]) -> dict[str, Any]:
    kind = spec.get("type")
    if kind == "function":
        return copy.deepcopy(dict(spec))
    if kind == "custom":
        return {
            "type": "function",
            "name": spec["name"],
            "description": spec.get("description", ""),
            "strict": False,
            "parameters": copy.deepcopy(dict(_EXEC_PARAMETERS)),
        }
    raise ValueError(f"unsupported tool spec type {kind!r}")


def to_openai_responses(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A spec for the OpenAI Responses API: the specs are already in that form; a deep copy."""
    return copy.deepcopy(dict(spec))


def to_openai_chat(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A spec for OpenAI Chat Completions: ``{"type": "function", "function": {name, description,
    parameters, strict}}``. A custom (freeform) tool becomes a function tool taking
    ``{code: string}``. Raises ``ValueError`` for another spec type."""
    function = _as_function(spec)
    inner: dict[str, Any] = {
        "name": function["name"],
        "description": function.get("description", ""),
        "parameters": function["parameters"],
    }
    if "strict" in function:
        inner["strict"] = function["strict"]
    return {"type": "function", "function": inner}


def to_anthropic(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A spec for the Anthropic Messages API: ``{name, description, input_schema}``. A custom
    (freeform) tool becomes a tool taking ``{code: string}``. Raises ``ValueError`` for another
    spec type."""
    function = _as_function(spec)
    return {
        "name": function["name"],
        "description": function.get("description", ""),
        "input_schema": function["parameters"],
    }
