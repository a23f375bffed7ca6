"""The one delegate boundary (``codemode.cell.delegate``), without V8."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from codemode.cell.delegate import call_delegate
from codemode.model import NestedToolCall, ToolDefinition

CALL = NestedToolCall("c1", "call_1", ToolDefinition("lookup"), {"q": 1})


def _returning(value: Any) -> Any:
    async def invoke(call: NestedToolCall) -> Any:
        assert call is CALL
        return value

    return invoke


def _raising(exc: BaseException) -> Any:
    async def invoke(call: NestedToolCall) -> Any:
        raise exc

    return invoke


async def test_result_is_json_text() -> None:
    result = await call_delegate(_returning({"a": [1, "x"]}), CALL, cancel_requested=lambda: False)
    assert result.ok and result.call_id == "call_1"
    assert result.value_json == '{"a": [1, "x"]}'


async def test_exception_becomes_its_text_or_type_name() -> None:
    result = await call_delegate(
        _raising(ValueError("no such row")), CALL, cancel_requested=lambda: False
    )
    assert (result.ok, result.message) == (False, "no such row")
    result = await call_delegate(_raising(KeyError()), CALL, cancel_requested=lambda: False)
    assert (result.ok, result.message) == (False, "KeyError")


async def test_delegates_own_cancellation_is_a_rejection() -> None:
    result = await call_delegate(
        _raising(asyncio.CancelledError()), CALL, cancel_requested=lambda: False
    )
    assert (result.ok, result.message) == (False, "tool `lookup` was cancelled")


async def test_requested_cancellation_propagates() -> None:
    with pytest.raises(asyncio.CancelledError):
        await call_delegate(_raising(asyncio.CancelledError()), CALL, cancel_requested=lambda: True)


@pytest.mark.parametrize("value", [object(), math.nan, {1j: 2}])
async def test_value_that_is_not_json_is_rejected(value: Any) -> None:
    result = await call_delegate(_returning(value), CALL, cancel_requested=lambda: False)
    assert (result.ok, result.message) == (False, "tool `lookup` returned a value that is not JSON")


async def test_cycle_is_not_json() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    result = await call_delegate(_returning(cycle), CALL, cancel_requested=lambda: False)
    assert result.message == "tool `lookup` returned a value that is not JSON"


@pytest.mark.parametrize("value", ["x" * 200, ["y" * 10] * 2000, "z" * 300_000])
async def test_cap_rejects_long_results(value: Any) -> None:
    result = await call_delegate(
        _returning(value), CALL, cancel_requested=lambda: False, max_bytes=100
    )
    assert (result.ok, result.message) == (
        False,
        "tool `lookup` returned more JSON than the cell's max_heap_bytes (100)",
    )


async def test_large_result_under_the_cap_is_encoded_whole() -> None:
    value = ["v" * 1000] * 400  # probed as large: encoded on a worker thread
    result = await call_delegate(
        _returning(value), CALL, cancel_requested=lambda: False, max_bytes=10_000_000
    )
    assert result.ok and result.value_json.count("v" * 1000) == 400


async def test_custom_encoder_is_used() -> None:
    result = await call_delegate(
        _returning({"a": 1}), CALL, cancel_requested=lambda: False, encode=lambda v: "[42]"
    )
    assert result.value_json == "[42]"
