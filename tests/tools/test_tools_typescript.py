"""Each rule of docs/model-tools.md "TypeScript from JSON Schema", pinned with hand-written expectations."""

from __future__ import annotations

from typing import Any

import pytest

from codemode.model import ToolDefinition, ToolKind
from codemode.tools.typescript import (
    OPEN_OBJECT,
    input_is_optional,
    input_type,
    is_mcp_shaped,
    output_type,
    property_name,
    render_tool_declaration,
    schema_to_typescript,
)

ts = schema_to_typescript


# --- trivial schemas -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        (None, "unknown"),
        (True, "unknown"),
        (False, "never"),
        ({}, "unknown"),
        ({"description": "anything"}, "unknown"),
        ("string", "unknown"),  # malformed: not a schema object
        ([{"type": "string"}], "unknown"),
    ],
)
def test_absent_true_false_and_malformed(schema: Any, expected: str) -> None:
    assert ts(schema) == expected


@pytest.mark.parametrize(
    ("type_", "expected"),
    [
        ("string", "string"),
        ("boolean", "boolean"),
        ("null", "null"),
        ("integer", "number"),
        ("number", "number"),
        ("bogus", "unknown"),
    ],
)
def test_primitive_types(type_: str, expected: str) -> None:
    assert ts({"type": type_}) == expected


# --- literals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("open", '"open"'),
        (3, "3"),
        (-1.5, "-1.5"),
        (True, "true"),
        (None, "null"),
        ('say "hi"', '"say \\"hi\\""'),
        ("é", '"é"'),
        ({"a": 1}, '{"a": 1}'),
        ([1, 2], "[1, 2]"),
    ],
)
def test_const_is_a_json_literal(value: Any, expected: str) -> None:
    assert ts({"const": value}) == expected


def test_const_wins_over_type_and_enum() -> None:
    assert ts({"type": "string", "const": "x", "enum": ["y"]}) == '"x"'


def test_enum_is_a_union_of_json_literals() -> None:
    assert ts({"enum": ["a", 1, None, False]}) == '"a" | 1 | null | false'
    assert ts({"type": "string", "enum": ["only"]}) == '"only"'


def test_empty_enum_is_ignored() -> None:
    assert ts({"type": "string", "enum": []}) == "string"


# --- combinators -------------------------------------------------------------------------------


def test_any_of_and_one_of_are_unions() -> None:
    assert ts({"anyOf": [{"type": "string"}, {"type": "null"}]}) == "string | null"
    assert ts({"oneOf": [{"type": "integer"}, {"const": "all"}]}) == 'number | "all"'


def test_any_of_is_tried_before_one_of() -> None:
    assert ts({"anyOf": [{"type": "string"}], "oneOf": [{"type": "number"}]}) == "string"


def test_all_of_is_an_intersection() -> None:
    schema = {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
            {"type": "object", "properties": {"b": {"type": "number"}}},
        ]
    }
    assert ts(schema) == "{ a: string; } & { b?: number; }"


def test_union_inside_intersection_is_parenthesised() -> None:
    schema = {
        "allOf": [
            {"anyOf": [{"type": "string"}, {"type": "number"}]},
            {"type": "object", "properties": {"a": {"type": "string"}}},
        ]
    }
    assert ts(schema) == "(string | number) & { a?: string; }"


def test_intersection_inside_union_needs_no_parentheses() -> None:
    schema = {
        "anyOf": [
            {"allOf": [{"type": "string"}, {"const": "x"}]},
            {"type": "null"},
        ]
    }
    assert ts(schema) == 'string & "x" | null'


def test_nested_unions_are_flat() -> None:
    schema = {"anyOf": [{"type": "string"}, {"anyOf": [{"type": "number"}, {"type": "null"}]}]}
    assert ts(schema) == "string | number | null"


def test_identical_members_render_once() -> None:
    assert ts({"anyOf": [{"type": "integer"}, {"type": "number"}]}) == "number"
    assert ts({"type": ["integer", "number", "null"]}) == "number | null"


def test_type_array_is_a_union() -> None:
    assert ts({"type": ["string", "null"]}) == "string | null"
    schema = {"type": ["array", "null"], "items": {"type": "string"}}
    assert ts(schema) == "Array<string> | null"
    schema = {"type": ["object", "null"], "properties": {"a": {"type": "string"}}}
    assert ts(schema) == "{ a?: string; } | null"


def test_single_member_combinators_are_not_wrapped() -> None:
    assert ts({"anyOf": [{"type": "string"}]}) == "string"
    assert ts({"allOf": [{"anyOf": [{"type": "string"}, {"type": "null"}]}]}) == "string | null"


# --- arrays ------------------------------------------------------------------------------------


def test_items_gives_array_of_t() -> None:
    assert ts({"type": "array", "items": {"type": "string"}}) == "Array<string>"


def test_union_inside_array_needs_no_parentheses() -> None:
    schema = {"type": "array", "items": {"type": ["string", "number"]}}
    assert ts(schema) == "Array<string | number>"


def test_array_without_items_is_unknown_array() -> None:
    assert ts({"type": "array"}) == "unknown[]"


def test_prefix_items_give_a_tuple() -> None:
    schema = {"type": "array", "prefixItems": [{"type": "string"}, {"type": "number"}]}
    assert ts(schema) == "[string, number]"


def test_prefix_items_with_items_false_is_a_closed_tuple() -> None:
    schema = {"type": "array", "prefixItems": [{"type": "string"}], "items": False}
    assert ts(schema) == "[string]"


def test_prefix_items_with_items_schema_get_a_rest_element() -> None:
    schema = {"type": "array", "prefixItems": [{"type": "string"}], "items": {"type": "number"}}
    assert ts(schema) == "[string, ...Array<number>]"


def test_array_valued_items_is_the_old_tuple_form() -> None:
    schema = {"type": "array", "items": [{"type": "string"}, {"type": "boolean"}]}
    assert ts(schema) == "[string, boolean]"


def test_array_is_inferred_without_type() -> None:
    assert ts({"items": {"type": "null"}}) == "Array<null>"
    assert ts({"prefixItems": [{"type": "null"}]}) == "[null]"


# --- objects -----------------------------------------------------------------------------------


def test_properties_keep_schema_order_optional_unless_required() -> None:
    schema = {
        "type": "object",
        "properties": {"q": {"type": "string"}, "limit": {"type": "number"}},
        "required": ["q", "missing"],
    }
    assert ts(schema) == "{ q: string; limit?: number; }"


def test_properties_are_never_sorted() -> None:
    # move_file(source, destination): the upstream's order carries its meaning.
    properties = {"source": {"type": "string"}, "destination": {"type": "string"}}
    schema = {"type": "object", "properties": properties, "required": ["source", "destination"]}
    assert ts(schema) == "{ source: string; destination: string; }"
    reverse = {**schema, "properties": dict(reversed(list(properties.items())))}
    assert ts(reverse) == "{ destination: string; source: string; }"


def test_comment_holds_description_then_what_the_type_loses_in_order() -> None:
    schema = {
        "type": "object",
        "properties": {
            "n": {
                "pattern": "^[0-9]+$",
                "maxLength": 9,
                "minLength": 1,
                "maximum": 10,
                "minimum": 1,
                "default": 3,
                "format": "int32",
                "type": "integer",
                "description": "Number of results",
            },
            "s": {"type": "string", "format": "uri", "maxLength": 5, "pattern": "^a"},
            "xs": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 4},
            "ex": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1.5},
            "old": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 9},
            "d": {"type": "object", "default": {"a": [1, "x"]}},
            "plain": {"type": "string"},
        },
    }
    assert ts(schema) == (
        "{\n"
        "  // Number of results; integer; format: int32; default: 3; min: 1; max: 10; "
        "minLength: 1; maxLength: 9; pattern: ^[0-9]+$\n"
        "  n?: number;\n"
        "  // format: uri; maxLength: 5; pattern: ^a\n"
        "  s?: string;\n"
        "  // minItems: 1; maxItems: 4\n"
        "  xs?: Array<string>;\n"
        "  // > 0; < 1.5\n"
        "  ex?: number;\n"
        "  // > 0; max: 9\n"
        "  old?: number;\n"
        '  // default: {"a": [1, "x"]}\n'
        "  d?: { [key: string]: unknown; };\n"
        "  plain?: string;\n"
        "}"
    )


def test_the_spec_example_comment() -> None:
    schema = {
        "type": "object",
        "properties": {
            "limit": {
                "type": "integer",
                "description": "Number of results",
                "default": 3,
                "minimum": 1,
                "maximum": 10,
            }
        },
    }
    assert ts(schema) == (
        "{\n  // Number of results; integer; default: 3; min: 1; max: 10\n  limit?: number;\n}"
    )


def test_integer_alone_makes_a_comment() -> None:
    schema = {"type": "object", "properties": {"n": {"type": ["integer", "null"]}}}
    assert ts(schema) == "{\n  // integer\n  n?: number | null;\n}"


def test_optional_value_as_pydantic_writes_it_keeps_its_constraints() -> None:
    schema = {
        "type": "object",
        "properties": {
            "n": {
                "anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}],
                "default": None,
                "description": "Page size.",
            }
        },
    }
    assert ts(schema) == (
        "{\n  // Page size.; integer; default: null; min: 1\n  n?: number | null;\n}"
    )


def test_multi_line_description_gets_constraints_on_its_last_line() -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "description": "First.\n\n  Second.  "}},
    }
    assert ts(schema) == "{\n  // First.\n  // Second.; integer\n  n?: number;\n}"


@pytest.mark.parametrize("brk", ["\n", "\r", "\u2028", "\u2029"])
def test_line_terminators_never_end_a_comment_early(brk: str) -> None:
    schema = {
        "type": "object",
        "properties": {"p": {"type": "string", "pattern": f"a{brk}b", "default": f"x{brk}y"}},
    }
    rendered = ts(schema)
    lines = rendered.split("\n")
    assert len(lines) == 4
    assert lines[1].startswith("  // default: ")
    assert brk not in lines[1]
    assert lines[1].endswith("b")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("plain_name", "plain_name"),
        ("$id", "$id"),
        ("_private", "_private"),
        ("camelCase9", "camelCase9"),
        ("kebab-case", '"kebab-case"'),
        ("2fa", '"2fa"'),
        ("with space", '"with space"'),
        ("", '""'),
        ("é", '"é"'),
        ('quo"te', '"quo\\"te"'),
    ],
)
def test_property_names_quoted_when_not_identifiers(name: str, expected: str) -> None:
    assert property_name(name) == expected
    schema = {"type": "object", "properties": {name: {"type": "string"}}, "required": [name]}
    assert ts(schema) == f"{{ {expected}: string; }}"


def test_additional_properties_schema_gives_index_signature() -> None:
    schema = {"type": "object", "additionalProperties": {"type": "number"}}
    assert ts(schema) == "{ [key: string]: number; }"


def test_additional_properties_true_gives_unknown_index_signature() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "additionalProperties": True,
    }
    assert ts(schema) == "{ a?: string; [key: string]: unknown; }"


def test_absent_additional_properties_without_properties_is_open() -> None:
    assert ts({"type": "object"}) == "{ [key: string]: unknown; }"
    assert ts({"type": "object", "properties": {}}) == "{ [key: string]: unknown; }"


def test_absent_additional_properties_with_properties_is_closed() -> None:
    assert ts({"type": "object", "properties": {"a": {"type": "null"}}}) == "{ a?: null; }"


def test_additional_properties_false_adds_nothing() -> None:
    assert ts({"type": "object", "additionalProperties": False}) == "{}"
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "additionalProperties": False,
    }
    assert ts(schema) == "{ a?: string; }"


def test_union_index_signature_needs_no_parentheses() -> None:
    schema = {"type": "object", "additionalProperties": {"type": ["string", "null"]}}
    assert ts(schema) == "{ [key: string]: string | null; }"


def test_object_is_inferred_without_type() -> None:
    assert ts({"properties": {"a": {"type": "string"}}}) == "{ a?: string; }"
    assert ts({"required": ["a"]}) == "{ [key: string]: unknown; }"


def test_property_descriptions_put_one_property_per_line() -> None:
    schema = {
        "type": "object",
        "properties": {
            "q": {"type": "string", "description": "The query."},
            "limit": {"type": "number"},
        },
        "required": ["q"],
        "additionalProperties": {"type": "string"},
    }
    assert ts(schema) == (
        "{\n  // The query.\n  q: string;\n  limit?: number;\n  [key: string]: string;\n}"
    )


def test_multi_line_description_gives_one_comment_per_non_blank_line() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string", "description": "  First.\n\n  Second.  "}},
    }
    assert ts(schema) == "{\n  // First.\n  // Second.\n  a?: string;\n}"


def test_blank_or_non_string_description_keeps_one_line() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string", "description": "  "}, "b": {"description": 5}},
    }
    assert ts(schema) == "{ a?: string; b?: unknown; }"


def test_nested_multi_line_objects_indent_two_spaces_per_level() -> None:
    schema = {
        "type": "object",
        "properties": {
            "outer": {
                "type": "object",
                "description": "Outer.",
                "properties": {"inner": {"type": "string", "description": "Inner."}},
            },
            "list": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"x": {"type": "number", "description": "X."}},
                },
            },
        },
    }
    assert ts(schema) == (
        "{\n"
        "  // Outer.\n"
        "  outer?: {\n"
        "    // Inner.\n"
        "    inner?: string;\n"
        "  };\n"
        "  list?: Array<{\n"
        "    // X.\n"
        "    x?: number;\n"
        "  }>;\n"
        "}"
    )


# --- $ref --------------------------------------------------------------------------------------


def test_local_refs_into_defs_and_definitions_are_expanded() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/A"}, "b": {"$ref": "#/definitions/B"}},
        "$defs": {"A": {"type": "string"}},
        "definitions": {"B": {"enum": [1, 2]}},
    }
    assert ts(schema) == "{ a?: string; b?: 1 | 2; }"


def test_recursive_ref_is_expanded_twice_along_one_path_then_unknown() -> None:
    schema = {
        "$ref": "#/$defs/Node",
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
                },
                "required": ["name"],
            }
        },
    }
    assert ts(schema) == (
        "{ name: string; children?: Array<{ name: string; children?: Array<unknown>; }>; }"
    )


def test_one_ref_on_separate_paths_is_expanded_on_each() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/X"}, "b": {"$ref": "#/$defs/X"}},
        "$defs": {"X": {"type": "number"}},
    }
    assert ts(schema) == "{ a?: number; b?: number; }"


def test_mutually_recursive_refs() -> None:
    schema = {
        "$ref": "#/$defs/A",
        "$defs": {
            "A": {"type": "object", "properties": {"b": {"$ref": "#/$defs/B"}}},
            "B": {"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}},
        },
    }
    assert ts(schema) == "{ b?: { a?: { b?: { a?: unknown; }; }; }; }"


@pytest.mark.parametrize(
    "ref",
    [
        "#/$defs/Missing",
        "#",
        "#/properties/a",
        "https://example.com/schema.json",
        "other.json#/$defs/A",
        "#anchor",
    ],
)
def test_other_or_unresolvable_refs_are_unknown(ref: str) -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}, "r": {"$ref": ref}},
        "$defs": {"A": {"type": "string"}},
    }
    assert ts(schema) == "{ a?: string; r?: unknown; }"


def test_ref_pointer_escapes_are_decoded() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/a~1b"}, "b": {"$ref": "#/$defs/with%20space"}},
        "$defs": {"a/b": {"type": "boolean"}, "with space": {"type": "null"}},
    }
    assert ts(schema) == "{ a?: boolean; b?: null; }"


def test_refs_resolve_against_the_given_root() -> None:
    root = {"$defs": {"S": {"type": "string"}}}
    assert ts({"$ref": "#/$defs/S"}, root=root) == "string"


# --- robustness --------------------------------------------------------------------------------


def test_very_deep_schema_does_not_raise() -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(5000):
        schema = {"type": "array", "items": schema}
    rendered = ts(schema)
    assert rendered.startswith("Array<Array<")
    assert "unknown" in rendered


def test_exponential_ref_fan_out_is_bounded() -> None:
    defs: dict[str, Any] = {"D0": {"type": "string"}}
    for i in range(1, 40):
        ref = {"$ref": f"#/$defs/D{i - 1}"}
        defs[f"D{i}"] = {"type": "object", "properties": {"a": ref, "b": ref}}
    rendered = ts({"$ref": "#/$defs/D39", "$defs": defs})
    assert len(rendered) < 2_000_000


# --- MCP-shaped outputs ------------------------------------------------------------------------


def _mcp(**properties: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"content": {"type": "array", "items": {"type": "object"}}, **properties},
    }


def test_mcp_shape_detection() -> None:
    assert is_mcp_shaped(_mcp())
    assert is_mcp_shaped(
        _mcp(structuredContent={"type": "object"}, isError={"type": "boolean"}, _meta={})
    )
    assert is_mcp_shaped({"properties": {"content": {"type": "array"}}})
    assert not is_mcp_shaped(_mcp(other={"type": "string"}))
    assert not is_mcp_shaped({"type": "object", "properties": {"content": {"type": "string"}}})
    assert not is_mcp_shaped({"type": "object", "properties": {"isError": {"type": "boolean"}}})
    assert not is_mcp_shaped({"type": "array", "properties": {"content": {"type": "array"}}})
    assert not is_mcp_shaped(None)
    assert not is_mcp_shaped(True)


def test_mcp_output_renders_call_tool_result_of_structured_content() -> None:
    tool = ToolDefinition(
        name="t",
        output_schema=_mcp(
            structuredContent={"$ref": "#/$defs/R"},
            isError={"type": "boolean"},
            **{"_meta": {"type": "object"}},
        )
        | {"$defs": {"R": {"type": "object", "properties": {"n": {"type": "number"}}}}},
    )
    assert output_type(tool) == "CallToolResult<{ n?: number; }>"


def test_mcp_output_without_structured_content_is_call_tool_result_unknown() -> None:
    assert output_type(ToolDefinition(name="t", output_schema=_mcp())) == (
        "CallToolResult<unknown>"
    )


# --- tool inputs, outputs and declarations -----------------------------------------------------


def test_absent_input_schema_is_an_open_object_and_absent_output_unknown() -> None:
    tool = ToolDefinition(name="t")
    assert input_type(tool) == OPEN_OBJECT == "{ [key: string]: unknown; }"
    assert output_type(tool) == "unknown"


def test_freeform_input_is_a_string() -> None:
    tool = ToolDefinition(name="t", kind=ToolKind.FREEFORM, input_schema={"type": "object"})
    assert input_type(tool) == "string"


def test_declaration_of_the_spec_example() -> None:
    tool = ToolDefinition(
        name="search",
        input_schema={
            "type": "object",
            "properties": {"limit": {"type": "number"}, "q": {"type": "string"}},
            "required": ["q"],
        },
    )
    assert render_tool_declaration(tool, "search") == (
        "declare const tools: { search(args: { limit?: number; q: string; }): Promise<unknown>; };"
    )


def test_declaration_args_optional_when_nothing_is_required() -> None:
    tool = ToolDefinition(
        name="list", input_schema={"type": "object", "properties": {"n": {"type": "number"}}}
    )
    assert render_tool_declaration(tool, "list") == (
        "declare const tools: { list(args?: { n?: number; }): Promise<unknown>; };"
    )
    assert render_tool_declaration(ToolDefinition(name="x"), "x") == (
        "declare const tools: { x(args?: { [key: string]: unknown; }): Promise<unknown>; };"
    )


def test_declaration_of_a_freeform_tool() -> None:
    tool = ToolDefinition(
        name="apply-patch", kind=ToolKind.FREEFORM, output_schema={"type": "string"}
    )
    assert render_tool_declaration(tool, "apply_patch") == (
        "declare const tools: { apply_patch(input: string): Promise<string>; };"
    )


def test_declaration_uses_the_given_identifier() -> None:
    assert render_tool_declaration(ToolDefinition(name="a-b"), "a_b_2").startswith(
        "declare const tools: { a_b_2(args?: "
    )


def test_declaration_of_mcp_output() -> None:
    tool = ToolDefinition(
        name="m",
        input_schema={"type": "object", "properties": {}, "additionalProperties": False},
        output_schema=_mcp(structuredContent={"type": "object", "properties": {}}),
    )
    assert render_tool_declaration(tool, "m") == (
        "declare const tools: { m(args?: {}): "
        "Promise<CallToolResult<{ [key: string]: unknown; }>>; };"
    )


@pytest.mark.parametrize(
    ("schema", "optional"),
    [
        ({"type": "object"}, True),
        ({"type": "object", "required": []}, True),
        ({"type": "object", "required": ["a"]}, False),
        ({"anyOf": [{"required": ["a"]}, {"required": ["b"]}]}, False),
        ({"anyOf": [{"required": ["a"]}, {"type": "object"}]}, True),
        ({"allOf": [{"type": "object"}, {"required": ["a"]}]}, False),
        ({"$ref": "#/$defs/A", "$defs": {"A": {"required": ["a"]}}}, False),
        ({"$ref": "#/$defs/A", "$defs": {"A": {"type": "object"}}}, True),
        (False, False),
    ],
)
def test_input_is_optional(schema: Any, optional: bool) -> None:
    assert input_is_optional(ToolDefinition(name="t", input_schema=schema)) is optional


def test_multi_line_declaration() -> None:
    tool = ToolDefinition(
        name="weather",
        input_schema={
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name."}},
            "required": ["city"],
        },
        output_schema={"type": "object", "properties": {"ok": {"type": "boolean"}}},
    )
    assert render_tool_declaration(tool, "weather") == (
        "declare const tools: { weather(args: {\n"
        "  // City name.\n"
        "  city: string;\n"
        "}): Promise<{ ok?: boolean; }>; };"
    )
