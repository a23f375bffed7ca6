"""docs/model-tools.md step 1 (scenario 72): every pragma message exactly, in the order of checking."""

from __future__ import annotations

import pytest

from codemode.tools.pragma import (
    BLANK_SOURCE_MESSAGE,
    ExecRequest,
    PragmaError,
    parse_exec_source,
)

NOT_OBJECT = (
    "exec pragma must be a JSON object with supported fields `yield_time_ms` and "
    "`max_output_tokens`"
)
INVALID_JSON = (
    "exec pragma must be valid JSON with supported fields `yield_time_ms` and `max_output_tokens`: "
)
NOT_INTEGER = (
    "exec pragma fields `yield_time_ms` and `max_output_tokens` must be non-negative safe "
    "integers: "
)


def error_of(source: str) -> str:
    with pytest.raises(PragmaError) as info:
        parse_exec_source(source)
    assert isinstance(info.value, ValueError)
    assert str(info.value) == info.value.message
    return info.value.message


@pytest.mark.parametrize("source", ["", "   ", "\n\t \n", "\r\n"])
def test_blank_source(source: str) -> None:
    assert error_of(source) == (
        "exec expects raw JavaScript source text (non-empty). Provide JS only, optionally with "
        'first-line `// @exec: {"yield_time_ms": 10000, "max_output_tokens": 1000}`.'
    )
    assert error_of(source) == BLANK_SOURCE_MESSAGE


def test_no_pragma_keeps_the_whole_source_and_defaults() -> None:
    source = '  text("hi")\n// @exec: {"yield_time_ms": 5}\n'
    assert parse_exec_source(source) == ExecRequest(
        code=source, yield_time_ms=10_000, max_output_tokens=10_000, has_pragma=False
    )


def test_comment_that_is_not_the_pragma_is_code() -> None:
    source = '// @exe: {"yield_time_ms": 5}\ntext(1)'
    assert parse_exec_source(source).code == source


def test_valid_pragma_sets_budgets_and_code_is_the_rest() -> None:
    request = parse_exec_source(
        '  // @exec: {"yield_time_ms": 250, "max_output_tokens": 5}  \ntext("a")\ntext("b")\n'
    )
    assert request == ExecRequest(
        code='text("a")\ntext("b")\n', yield_time_ms=250, max_output_tokens=5, has_pragma=True
    )


def test_pragma_fields_are_each_optional() -> None:
    assert parse_exec_source('// @exec: {"max_output_tokens": 0}\nx').yield_time_ms == 10_000
    assert parse_exec_source('// @exec: {"yield_time_ms": 0}\nx').max_output_tokens == 10_000
    assert parse_exec_source("// @exec: {}\nx") == ExecRequest(code="x", has_pragma=True)


def test_crlf_pragma_line() -> None:
    request = parse_exec_source('// @exec: {"yield_time_ms": 7}\r\ntext(1)\r\n')
    assert request.yield_time_ms == 7
    assert request.code == "text(1)\r\n"


def test_integral_floats_are_integers() -> None:
    request = parse_exec_source('// @exec: {"yield_time_ms": 5.0, "max_output_tokens": 1e3}\nx')
    assert (request.yield_time_ms, request.max_output_tokens) == (5, 1000)
    assert isinstance(request.yield_time_ms, int)


def test_largest_safe_integer_is_accepted() -> None:
    request = parse_exec_source('// @exec: {"yield_time_ms": 9007199254740991}\nx')
    assert request.yield_time_ms == 2**53 - 1


@pytest.mark.parametrize("rest", ["", "\n", "\n   \n\t"])
def test_pragma_without_code(rest: str) -> None:
    assert error_of('// @exec: {"yield_time_ms": 10}' + rest) == (
        "exec pragma must be followed by JavaScript source on subsequent lines"
    )


def test_missing_code_is_checked_before_the_directive() -> None:
    assert error_of("// @exec: not json\n  ") == (
        "exec pragma must be followed by JavaScript source on subsequent lines"
    )


@pytest.mark.parametrize("directive", ["", "   "])
def test_empty_directive(directive: str) -> None:
    assert error_of(f"// @exec:{directive}\ntext(1)") == NOT_OBJECT


@pytest.mark.parametrize("directive", ["[]", "1", '"x"', "null", "true", '[{"yield_time_ms": 1}]'])
def test_directive_not_an_object(directive: str) -> None:
    assert error_of(f"// @exec: {directive}\ntext(1)") == NOT_OBJECT


@pytest.mark.parametrize(
    ("directive", "parser_message"),
    [
        ("{", "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
        ("yield", "Expecting value: line 1 column 1 (char 0)"),
        (
            "{'yield_time_ms': 1}",
            ("Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
        ),
        ('{"yield_time_ms": 1} x', "Extra data: line 1 column 22 (char 21)"),
        ('{"yield_time_ms": NaN}', "invalid JSON constant NaN"),
    ],
)
def test_invalid_json(directive: str, parser_message: str) -> None:
    assert error_of(f"// @exec: {directive}\ntext(1)") == INVALID_JSON + parser_message


def test_unsupported_key() -> None:
    assert error_of('// @exec: {"yield_time_ms": 1, "timeout": 5}\ntext(1)') == (
        "exec pragma only supports `yield_time_ms` and `max_output_tokens`; got `timeout`"
    )


def test_unsupported_key_is_checked_before_values() -> None:
    assert error_of('// @exec: {"yield_time_ms": -1, "x": 5}\ntext(1)') == (
        "exec pragma only supports `yield_time_ms` and `max_output_tokens`; got `x`"
    )


@pytest.mark.parametrize(
    ("field", "raw", "shown"),
    [
        ("yield_time_ms", "-1", "-1"),
        ("yield_time_ms", "1.5", "1.5"),
        ("yield_time_ms", '"100"', '"100"'),
        ("yield_time_ms", "true", "true"),
        ("yield_time_ms", "null", "null"),
        ("max_output_tokens", "[]", "[]"),
        ("max_output_tokens", "{}", "{}"),
        ("max_output_tokens", "-0.5", "-0.5"),
        ("max_output_tokens", "1e999", "Infinity"),
    ],
)
def test_not_a_non_negative_integer(field: str, raw: str, shown: str) -> None:
    assert error_of(f'// @exec: {{"{field}": {raw}}}\ntext(1)') == (
        f"{NOT_INTEGER}{field}: expected a non-negative integer, got {shown}"
    )


def test_type_errors_come_before_range_errors() -> None:
    source = '// @exec: {"yield_time_ms": 9007199254740992, "max_output_tokens": -1}\nx'
    assert error_of(source) == (
        f"{NOT_INTEGER}max_output_tokens: expected a non-negative integer, got -1"
    )


@pytest.mark.parametrize("field", ["yield_time_ms", "max_output_tokens"])
@pytest.mark.parametrize("raw", ["9007199254740992", "1e20"])
def test_above_max_safe_integer(field: str, raw: str) -> None:
    assert error_of(f'// @exec: {{"{field}": {raw}}}\ntext(1)') == (
        f"exec pragma field `{field}` must be a non-negative safe integer"
    )


def test_yield_time_range_is_checked_before_max_output_tokens() -> None:
    source = (
        '// @exec: {"max_output_tokens": 9007199254740992, "yield_time_ms": 9007199254740992}\nx'
    )
    assert error_of(source) == (
        "exec pragma field `yield_time_ms` must be a non-negative safe integer"
    )
