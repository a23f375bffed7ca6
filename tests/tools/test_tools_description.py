"""docs/model-tools.md tool specs and adapters, and the structure of the 9.5 descriptions (hand-written)."""

from __future__ import annotations

from typing import Any

import pytest

from codemode.model import CellLimits, ToolDefinition, ToolKind
from codemode.tools.description import (
    ALL_TOOLS_TEXT,
    CODE_MODE_ONLY_TEXT,
    SHARED_MCP_TYPES,
    exec_description,
    exec_tool_spec_dict,
    to_anthropic,
    to_openai_chat,
    to_openai_responses,
    wait_description,
    wait_tool_spec_dict,
)

LIMITS = CellLimits()
MCP_OUTPUT = {"type": "object", "properties": {"content": {"type": "array"}}}


def describe(tools: list[ToolDefinition], **kwargs: Any) -> str:
    options: dict[str, Any] = {"describe_tools": True, "code_mode_only": False, "limits": LIMITS}
    options.update(kwargs)
    return exec_description(tools, **options)


# --- tool specs (9.4) --------------------------------------------------------------------------


def test_exec_function_spec() -> None:
    assert exec_tool_spec_dict("D") == {
        "type": "function",
        "name": "exec",
        "description": "D",
        "strict": False,
        "parameters": {
            "type": "object",
            "properties": {"code": {"type": "string"}},
            "required": ["code"],
            "additionalProperties": False,
        },
    }


def test_exec_freeform_spec() -> None:
    assert exec_tool_spec_dict("D", freeform=True) == {
        "type": "custom",
        "name": "exec",
        "description": "D",
        "format": {"type": "text"},
    }


def test_wait_spec() -> None:
    assert wait_tool_spec_dict("W") == {
        "type": "function",
        "name": "wait",
        "description": "W",
        "strict": False,
        "parameters": {
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
        },
    }


def test_specs_are_fresh_dicts() -> None:
    first = exec_tool_spec_dict("D")
    first["parameters"]["properties"]["code"]["type"] = "number"
    assert exec_tool_spec_dict("D")["parameters"]["properties"]["code"] == {"type": "string"}
    spec = wait_tool_spec_dict("W")
    copy = to_openai_responses(spec)
    copy["parameters"]["required"].append("x")
    assert spec["parameters"]["required"] == ["cell_id"]


def test_openai_responses_adapter_is_identity() -> None:
    specs = (exec_tool_spec_dict("D"), exec_tool_spec_dict("D", True), wait_tool_spec_dict("W"))
    for spec in specs:
        assert to_openai_responses(spec) == spec


def test_openai_chat_adapter() -> None:
    assert to_openai_chat(wait_tool_spec_dict("W")) == {
        "type": "function",
        "function": {
            "name": "wait",
            "description": "W",
            "parameters": wait_tool_spec_dict("W")["parameters"],
            "strict": False,
        },
    }


def test_freeform_exec_becomes_a_code_function_for_chat_and_anthropic() -> None:
    freeform = exec_tool_spec_dict("D", freeform=True)
    function = exec_tool_spec_dict("D")
    assert to_openai_chat(freeform) == to_openai_chat(function)
    assert (
        to_anthropic(freeform)
        == to_anthropic(function)
        == {
            "name": "exec",
            "description": "D",
            "input_schema": function["parameters"],
        }
    )


def test_anthropic_adapter_for_wait() -> None:
    assert to_anthropic(wait_tool_spec_dict("W")) == {
        "name": "wait",
        "description": "W",
        "input_schema": wait_tool_spec_dict("W")["parameters"],
    }


def test_adapters_reject_unknown_spec_types() -> None:
    with pytest.raises(ValueError, match="unsupported tool spec type"):
        to_anthropic({"type": "web_search"})
    with pytest.raises(ValueError, match="unsupported tool spec type"):
        to_openai_chat({"name": "x"})


# --- exec description (9.5) --------------------------------------------------------------------


def test_sections_in_order() -> None:
    tools = [ToolDefinition("mcp_tool", output_schema=MCP_OUTPUT)]
    text = describe(tools, code_mode_only=True)
    positions = [
        text.index(CODE_MODE_ONLY_TEXT),
        text.index("async JavaScript module"),
        text.index("\nGlobals:\n"),
        text.index("Limits per cell:"),
        text.index(SHARED_MCP_TYPES),
        text.index("### `mcp_tool`"),
    ]
    assert positions == sorted(positions)
    assert text.startswith(CODE_MODE_ONLY_TEXT + "\n\n")


def test_code_mode_only_preface_only_when_asked() -> None:
    assert CODE_MODE_ONLY_TEXT not in describe([])
    assert "tools.<identifier>" in CODE_MODE_ONLY_TEXT


def test_rules_mention_every_required_point() -> None:
    text = describe([])
    for needle in [
        "async JavaScript module",
        "fresh sandbox",
        'await tools.search({q: "x"})',
        "function tool takes one JSON object",
        "freeform tool takes one string",
        "JSON value",
        "no Node, filesystem, network",
        "`import`",
        "not JSON, not a quoted string, not a markdown code fence",
        '`// @exec: {"yield_time_ms": 10000, "max_output_tokens": 10000}`',
        "`yield_time_ms` (default 10000)",
        "`max_output_tokens` (default 10000)",
        "un-awaited promises",
        "`Script running with cell ID",
        "`wait`",
    ]:
        assert needle in text, needle


GLOBALS = [
    "text",
    "console.log",
    "notify",
    "image",
    "store",
    "load",
    "yield_control",
    "exit",
    "setTimeout",
    "clearTimeout",
    "tools",
    "ALL_TOOLS",
    "catalog",
]


def test_one_line_per_global_of_section_2() -> None:
    text = describe([])
    block = text[text.index("\nGlobals:\n") :].split("\n\n")[0].strip().splitlines()[1:]
    names = [line.split("`")[1].split("(")[0] for line in block]
    assert names == GLOBALS
    image_line = next(line for line in block if line.startswith("- `image("))
    needles = ["`data:`", '"auto"', '"low"', '"high"', '"original"', "image(result.content[0])"]
    for needle in needles:
        assert needle in image_line


def test_limits_come_from_the_argument() -> None:
    limits = CellLimits(
        max_heap_bytes=3 * 1024 * 1024,
        max_tool_calls=7,
        max_parallel_tool_calls=3,
        max_output_bytes=1000,
        max_cpu_seconds=0.5,
    )
    text = describe([], limits=limits)
    line = next(line for line in text.splitlines() if line.startswith("Limits per cell:"))
    assert "7 tool calls" in line
    assert "3 outstanding at once" in line
    assert "1000 bytes of output" in line
    assert "3 MiB of memory" in line
    assert "0.5 seconds of JavaScript CPU time" in line
    assert "`exec cell exceeded max_tool_calls (7)`" in line


def test_shared_mcp_types_only_with_an_mcp_shaped_output() -> None:
    plain = [ToolDefinition("a", output_schema={"type": "object"})]
    assert SHARED_MCP_TYPES not in describe(plain)
    mcp = [*plain, ToolDefinition("b", output_schema=MCP_OUTPUT)]
    assert SHARED_MCP_TYPES in describe(mcp)
    assert SHARED_MCP_TYPES in describe(mcp, describe_tools=False)
    for name in [
        "type CallToolResult<T",
        "content: ContentBlock[];",
        "structuredContent?: T;",
        "isError?: boolean;",
        "type TextContent",
        "type ImageContent",
        "type AudioContent",
        "type ResourceLink",
        "type EmbeddedResource",
    ]:
        assert name in SHARED_MCP_TYPES


def test_without_describe_tools_the_all_tools_sentence_replaces_the_reference() -> None:
    tools = [ToolDefinition("search", description="Find things.")]
    text = describe(tools, describe_tools=False)
    assert text.endswith(ALL_TOOLS_TEXT)
    assert "### `search`" not in text
    assert "Find things." not in text
    assert "filter `ALL_TOOLS` by `name` and `description`" in ALL_TOOLS_TEXT
    assert ALL_TOOLS_TEXT not in describe(tools)


def test_tool_reference() -> None:
    tools = [
        ToolDefinition(
            "search",
            description="  Find things.  ",
            input_schema={
                "type": "object",
                "properties": {"limit": {"type": "number"}, "q": {"type": "string"}},
                "required": ["q"],
            },
        ),
        ToolDefinition("hidden-dynamic-tool", kind=ToolKind.FREEFORM),
    ]
    text = describe(tools)
    assert text.endswith(
        "### `search`\n"
        "Find things.\n"
        "```ts\n"
        "declare const tools: { search(args: { limit?: number; q: string; }): "
        "Promise<unknown>; };\n"
        "```\n"
        "\n"
        "### `hidden_dynamic_tool` (`hidden-dynamic-tool`)\n"
        "```ts\n"
        "declare const tools: { hidden_dynamic_tool(input: string): Promise<unknown>; };\n"
        "```"
    )


def test_duplicate_identifiers_use_the_shared_mapping() -> None:
    text = describe([ToolDefinition("a-b"), ToolDefinition("a_b"), ToolDefinition("a.b")])
    assert "### `a_b` (`a-b`)" in text
    assert "### `a_b_2` (`a_b`)" in text
    assert "### `a_b_3` (`a.b`)" in text
    assert "{ a_b_3(args?: " in text


def test_namespace_headings_whenever_the_namespace_changes() -> None:
    tools = [
        ToolDefinition("plain"),
        ToolDefinition("one", namespace="github"),
        ToolDefinition("two", namespace="github"),
        ToolDefinition("three", namespace="slack"),
        ToolDefinition("four"),
        ToolDefinition("five", namespace="github"),
    ]
    text = describe(tools)
    headings = [line for line in text.splitlines() if line.startswith(("## ", "### "))]
    assert headings == [
        "### `plain`",
        "## github",
        "### `one`",
        "### `two`",
        "## slack",
        "### `three`",
        "## Other tools",
        "### `four`",
        "## github",
        "### `five`",
    ]


def test_no_tools() -> None:
    assert describe([]).endswith("No nested tools are enabled: `tools` is empty.")


def test_description_is_deterministic() -> None:
    tools = [ToolDefinition("a", input_schema={"properties": {"b": {}, "a": {}}})]
    assert describe(tools) == describe(list(tools))


# --- wait description (9.5) --------------------------------------------------------------------


def test_wait_description() -> None:
    text = wait_description(123_456)
    for needle in [
        "`Script running with cell ID",
        "`cell_id` (string, required)",
        "`yield_time_ms` (number, default 10000)",
        "capped at 123456",
        "`max_tokens` (number, default 10000)",
        "`terminate` (boolean, default false)",
        '`until` (`"yield"` or `"completed"`, default `"yield"`)',
        "else 123456",
        "only the output printed since the previous result",
        "closes the cell",
        'prefer one `wait` with `until: "completed"` over repeated polling',
    ]:
        assert needle in text, needle


def test_failure_rule_tells_the_truth_for_mcp_shaped_tools() -> None:
    plain = [ToolDefinition("a")]
    mcp = [*plain, ToolDefinition("b", output_schema=MCP_OUTPUT)]
    plain_text, mcp_text = describe(plain), describe(mcp)
    assert "Both resolve to a JSON value; a failing call rejects with an `Error`.\n" in plain_text
    assert "isError" not in plain_text
    assert (
        "a failing call rejects with an `Error`, except that tools returning `CallToolResult` "
        "report their own failures as data (`isError: true`, see Shared MCP types below)."
    ) in mcp_text
    rule = mcp_text[mcp_text.index(SHARED_MCP_TYPES) :]
    assert "reports its own failure by resolving with `isError: true`" in rule
    assert "check `result.isError`, it does not throw" in rule
    assert "Only a transport failure" in rule and "rejects with an `Error`" in rule
