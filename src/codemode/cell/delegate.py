"""The one boundary between a cell and its delegate (see ``docs/design.md``).

:func:`call_delegate` invokes the delegate for one nested call and turns whatever happens into
the :class:`~codemode.engine.base.ToolResultInput` the cell sees: the JSON text of the result, or
a rejection with a clear message. The cell actor uses it for every nested call of an in-process
session; the remote client uses it for every call a server forwards (``tool/invoke``), so a
delegate behaves the same wherever the session runs.

The rules, in one place:

- a delegate's exception becomes a rejection whose message is ``str(exc)`` (or the exception's
  type name when that is empty);
- a ``CancelledError`` the delegate raises on its own (the caller did not cancel the call) is a
  rejection ``tool `NAME` was cancelled``; a cancellation the caller asked for propagates;
- a result that is not JSON (a non-JSON type, ``NaN``, a cycle) is a rejection ``tool `NAME`
  returned a value that is not JSON``;
- under a size cap, a result whose JSON text is longer than the cap is a rejection naming the cap,
  decided before encoding when a bounded probe already proves it; a large result is encoded on a
  worker thread, in pieces, so the event loop never stalls on it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from codemode.engine.base import ToolResultInput
from codemode.model import NestedToolCall

__all__ = ["call_delegate"]

# Results whose probed size passes this are JSON-encoded on a worker thread.
_OFFLOAD_BYTES = 256 * 1024
_PROBE_NODES = 1000

_ENCODER = json.JSONEncoder(ensure_ascii=True, allow_nan=False)
_dumps = _ENCODER.encode  # one encoder for every result, not one per json.dumps call


def _small_encoder() -> Callable[[Any], str]:
    """The same text as ``_dumps`` for the flat values :func:`_is_small` admits, from one C
    encoder made once (``JSONEncoder.encode`` makes one per call). It skips the cycle check: a
    flat value holds no container that could contain itself."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - an interpreter without the C accelerator
        return _dumps
    encode = make(
        None, _ENCODER.default, json.encoder.encode_basestring_ascii, None, ": ", ", ",
        False, False, False,
    )  # fmt: skip
    return lambda value: "".join(encode(value, 0))


_dumps_small = _small_encoder()


def _dumps_incrementally(value: Any) -> str:
    """JSON-encode in small pieces so a worker thread gives the GIL back between them."""
    encoder = json.JSONEncoder(ensure_ascii=True, allow_nan=False)
    return "".join(encoder.iterencode(value))


def _probe_size(value: Any) -> tuple[bool, int]:
    """A bounded look at a result (at most ``_PROBE_NODES`` steps, whatever the value).

    Returns whether encoding it may take long (many nodes or long strings), and a lower bound
    of its JSON size in bytes.
    """
    stack = [value]
    nodes = 0
    size = 0
    large = False
    while stack:
        item = stack.pop()
        nodes += 1
        if nodes > _PROBE_NODES:
            return True, size
        if isinstance(item, str):
            size += len(item) + 2
        elif isinstance(item, dict):
            if len(item) > _PROBE_NODES:
                return True, size + 2 * len(item)
            stack.extend(item.values())
            size += sum(len(k) + 3 for k in item if isinstance(k, str))
        elif isinstance(item, list | tuple):
            if len(item) > _PROBE_NODES:
                return True, size + len(item)
            stack.extend(item)
        if size > _OFFLOAD_BYTES:
            large = True
    return large, size


async def call_delegate(
    invoke: Callable[[NestedToolCall], Awaitable[Any]],
    call: NestedToolCall,
    *,
    cancel_requested: Callable[[], bool],
    max_bytes: int | None = None,
    encode: Callable[[Any], str] | None = None,
) -> ToolResultInput:
    """Run ``invoke(call)`` (the delegate, maybe wrapped in a tracing span) and return the
    cell's view of its outcome: a result with its JSON text, or a rejection with its message.

    ``cancel_requested`` says whether the caller cancelled the call: then a ``CancelledError``
    propagates; otherwise it is the delegate's own and becomes a rejection. ``max_bytes``, when
    given, caps the result's JSON text (the cell's heap). ``encode`` replaces the default encoder
    (ASCII JSON without ``NaN``) for callers with their own boundary, such as the wire;
    it must raise ``TypeError``/``ValueError``/``RecursionError`` on a value that is not JSON.
    """
    name = call.tool.name
    try:
        value = await invoke(call)
    except asyncio.CancelledError:
        if cancel_requested():
            raise
        return ToolResultInput(call.call_id, False, message=f"tool `{name}` was cancelled")
    except Exception as exc:
        return ToolResultInput(call.call_id, False, message=str(exc) or type(exc).__name__)
    if max_bytes is not None and _is_small(value):
        # The common case, without another coroutine or the probe: a small result is encoded
        # on the loop whatever the cap, and checked against it after.
        return _encoded(call.call_id, name, value, max_bytes, encode or _dumps_small)
    return await _encode_result(call.call_id, name, value, max_bytes, encode)


# Scalars a small result may hold.
_SCALARS = (int, float, bool, type(None))


def _is_small(value: Any) -> bool:
    """A result that is cheap to encode whatever it holds: a scalar, a short string, or a dict
    or list of at most 16 such items (no probe needed to keep the loop responsive)."""
    kind = type(value)
    if kind is dict:
        if len(value) > 16:
            return False
        items = value.values()
    elif kind is list:
        if len(value) > 16:
            return False
        items = value
    else:
        return kind in _SCALARS or (kind is str and len(value) <= 4096)
    for item in items:
        kind = type(item)
        if not (kind in _SCALARS or (kind is str and len(item) <= 4096)):
            return False
    return True


def _encoded(
    call_id: str, name: str, value: Any, limit: int, encode: Callable[[Any], str]
) -> ToolResultInput:
    try:
        value_json = encode(value)
    except (TypeError, ValueError, RecursionError):
        return ToolResultInput(
            call_id, False, message=f"tool `{name}` returned a value that is not JSON"
        )
    if len(value_json) > limit:
        return _too_big(call_id, name, limit)
    return ToolResultInput(call_id, True, value_json=value_json)


async def _encode_result(
    call_id: str,
    name: str,
    value: Any,
    limit: int | None,
    encode: Callable[[Any], str] | None,
) -> ToolResultInput:
    """The JSON text of a delegate's result, without stalling the event loop on big ones.

    A result that cannot fit under ``limit`` is rejected with a clear message before it is
    encoded when a bounded probe proves it; a large one is encoded on a worker thread.
    """
    try:
        if limit is None:
            value_json = (encode or _dumps)(value)
        else:
            large, lower_bound = _probe_size(value)
            if lower_bound > limit:
                return _too_big(call_id, name, limit)
            if large:
                whole = encode or _dumps_incrementally
                value_json = await asyncio.to_thread(whole, value)
            else:
                value_json = (encode or _dumps)(value)
    except (TypeError, ValueError, RecursionError):
        return ToolResultInput(
            call_id, False, message=f"tool `{name}` returned a value that is not JSON"
        )
    if limit is not None and len(value_json) > limit:
        return _too_big(call_id, name, limit)
    return ToolResultInput(call_id, True, value_json=value_json)


def _too_big(call_id: str, name: str, limit: int) -> ToolResultInput:
    return ToolResultInput(
        call_id,
        False,
        message=f"tool `{name}` returned more JSON than the cell's max_heap_bytes ({limit})",
    )
