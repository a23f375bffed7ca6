"""The published schema (``src/codemode/protocol/schema.json``) and the one-definition rule.

The schema is generated from :mod:`codemode.protocol.messages`; regenerate it with::

    .venv/bin/python -m codemode.protocol.schemagen --write

The same definitions validate the server's params, so the tests check that the generated schema
and the definitions' own checker agree on random inputs, that real messages of a session are
valid, and that every error class survives the trip through its wire form.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protocol_support import InProcessServer, values_for

from codemode import errors
from codemode.protocol import codec
from codemode.protocol.codec import ERROR_CLASSES, error_from_wire, error_to_wire
from codemode.protocol.messages import (
    METHOD_LIST,
    SCHEMA_PATH,
    generate_schema,
    schema_text,
)

jsonschema = pytest.importorskip("jsonschema")

SCHEMA = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def validator(ref: str | None = None) -> Any:
    schema = SCHEMA if ref is None else {"$ref": f"#/$defs/{ref}", "$defs": SCHEMA["$defs"]}
    return jsonschema.Draft202012Validator(schema)


def test_the_published_schema_is_generated_from_the_definitions() -> None:
    assert SCHEMA_PATH.read_text(encoding="utf-8") == schema_text(), (
        "schema.json is stale: run `.venv/bin/python -m codemode.protocol.schemagen --write`"
    )
    assert generate_schema() == SCHEMA
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert set(SCHEMA["x-methods"]) == {m.name for m in METHOD_LIST}
    assert SCHEMA["x-errorKinds"] == sorted(ERROR_CLASSES)


def test_the_schema_ships_with_the_package() -> None:
    import importlib.resources

    text = importlib.resources.files("codemode.protocol").joinpath("schema.json").read_text("utf-8")
    assert json.loads(text)["x-protocolVersion"] == 1
    pyproject = (SCHEMA_PATH.parents[3] / "pyproject.toml").read_text(encoding="utf-8")
    assert '"protocol/*.json"' in pyproject


EXAMPLE = [
    '{"jsonrpc":"2.0","id":7,"method":"cell/create","params":{"sessionId":"s1","kind":"continuing","source":"text(await tools.echo({a: 1}))","tools":[{"name":"echo","kind":"function"}],"toolCallId":"call_1","idempotencyKey":"call_1"}}',
    '{"jsonrpc":"2.0","id":7,"result":{"cellId":"k3v9q0m2x7d1r8tz"}}',
    '{"jsonrpc":"2.0","id":"s-1","method":"tool/invoke","params":{"sessionId":"s1","cellId":"k3v9q0m2x7d1r8tz","callId":"tool-1","tool":{"name":"echo","namespace":null,"kind":"function"},"input":{"a":1}}}',
    '{"jsonrpc":"2.0","id":"s-1","result":{"output":{"a":1}}}',
    '{"jsonrpc":"2.0","id":8,"method":"cell/wait","params":{"sessionId":"s1","cellId":"k3v9q0m2x7d1r8tz","yieldAfterMs":10000,"observation":0}}',
    '{"jsonrpc":"2.0","id":8,"result":{"type":"completed","items":[{"type":"text","text":"{\\"a\\":1}"}],"errorText":null}}',
]


def test_the_example_of_the_spec_is_valid() -> None:
    root = validator()
    for line in EXAMPLE:
        root.validate(json.loads(line))
    validator("CellCreateResult").validate({"cellId": "k3v9q0m2x7d1r8tz"})
    validator("CellWaitResult").validate(json.loads(EXAMPLE[-1])["result"])


@pytest.mark.parametrize(
    "message",
    [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "cell/create",
            "params": {"sessionId": "s", "kind": "x", "source": ""},
        },
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "cell/wait",
            "params": {"sessionId": "s", "cellId": "c", "observation": 0},
        },
        {"jsonrpc": "2.0", "method": "cell/create", "params": {}},
        {"jsonrpc": "2.0", "id": 1, "method": "no/such"},
        {"jsonrpc": "2.0", "id": 1, "result": 1, "error": {"code": 1, "message": "x"}},
        {"jsonrpc": "1.0", "id": 1, "result": 1},
    ],
)
def test_invalid_messages_are_rejected(message: dict[str, Any]) -> None:
    assert not validator().is_valid(message)


async def test_every_message_of_a_real_session_is_valid() -> None:
    server = InProcessServer()
    client, _ = server.connect()
    sent: list[dict[str, Any]] = []
    original = client.send

    async def recording_send(message: Any) -> None:
        if isinstance(message, dict):
            sent.append(message)
        await original(message)

    client.send = recording_send  # type: ignore[method-assign]
    try:
        await client.initialize()
        sid = await client.open_session(limits={"maxToolCalls": 10})
        block = {
            "name": "block",
            "description": "d",
            "kind": "function",
            "namespace": "n",
            "inputSchema": {"type": "object"},
            "outputSchema": None,
        }
        cell = (
            await client.call(
                "cell/create",
                {
                    "sessionId": sid,
                    "kind": "pausable",
                    "source": 'notify("n"); text("a"); image("data:image/png;base64,AAAA"); await tools.block({})',
                    "tools": [block],
                    "toolCallId": "t",
                },
            )
        )["cellId"]
        notify = await client.server_message("cell/notify")
        await client.respond(notify["id"], {})
        invoke = await client.server_message("tool/invoke")
        pending = await client.call(
            "cell/waitToPending", {"sessionId": sid, "cellId": cell, "observation": 0}
        )
        validator("PausableCellEvent").validate(pending)
        assert pending["items"][1] == {
            "type": "image",
            "imageUrl": "data:image/png;base64,AAAA",
            "detail": "high",
        }
        await client.respond(invoke["id"], {"output": 1})
        assert await client.call(
            "cell/resume", {"sessionId": sid, "cellId": cell, "generation": 1}
        ) == {"outcome": "resumed"}
        done = await client.call(
            "cell/waitToPending", {"sessionId": sid, "cellId": cell, "observation": 1}
        )
        validator("CellWaitToPendingResult").validate(done)
        await client.call(
            "observation/release", {"sessionId": sid, "cellId": cell, "observation": 1}
        )
        other = (
            await client.call(
                "cell/create",
                {"sessionId": sid, "kind": "continuing", "source": "await new Promise(() => {})"},
            )
        )["cellId"]
        validator("CellTerminateResult").validate(
            await client.call("cell/terminate", {"sessionId": sid, "cellId": other})
        )
        response = await client.request(
            "cell/resume", {"sessionId": sid, "cellId": other, "generation": 1}
        )
        assert response["error"]["data"]["kind"] == "MissingCell"
        await client.call("session/shutdown", {"sessionId": sid})
        root = validator()
        for message in [*sent, *client.all]:
            root.validate(message)
        for name, method in ((m.def_name, m) for m in METHOD_LIST if m.result is not None):
            assert f"{name}Result" in SCHEMA["$defs"], method.name
    finally:
        await server.close()


@pytest.mark.parametrize("method", [m for m in METHOD_LIST], ids=[m.name for m in METHOD_LIST])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_checker_agrees_with_the_generated_schema(method: Any, data: st.DataObject) -> None:
    params_validator = validator(f"{method.def_name}Params")
    value = data.draw(values_for(method.params))
    mine = method.params.check(value, "")
    assert (mine is None) == params_validator.is_valid(value), (value, mine)
    if method.result is not None:
        result = data.draw(values_for(method.result))
        mine = method.result.check(result, "result")
        assert (mine is None) == validator(f"{method.def_name}Result").is_valid(result), (
            result,
            mine,
        )


def sample_error(name: str) -> errors.CodeModeError:
    samples: dict[str, errors.CodeModeError] = {
        "ShuttingDown": errors.ShuttingDown(),
        "MissingCell": errors.MissingCell("c1"),
        "BusyObserver": errors.BusyObserver("c1"),
        "AlreadyTerminating": errors.AlreadyTerminating("c1"),
        "ClosedCell": errors.ClosedCell("c1"),
        "WrongCellKind": errors.WrongCellKind("c1", "pausable", "continuing"),
        "InvalidGeneration": errors.InvalidGeneration("c1", 3, None),
        "IdempotencyConflict": errors.IdempotencyConflict("k"),
        "ForeignHandle": errors.ForeignHandle("c1"),
        "NotAwaitingApproval": errors.NotAwaitingApproval("c1", "tool-3"),
        "EngineError": errors.EngineError("engine broke"),
        "UnknownSession": errors.UnknownSession("s9"),
        "ObservationConflict": errors.ObservationConflict("c1", 4, "observation generation 4 ..."),
        "SessionLost": errors.SessionLost("gone"),
        "ProtocolError": errors.ProtocolError("bad peer", -32602),
        "SessionBusy": errors.SessionBusy("s9"),
        "StoreError": errors.StoreError("the SQLite store x.db is read-only"),
    }
    return samples[name]


@pytest.mark.parametrize("name", sorted(set(ERROR_CLASSES) - {"CodeModeError"}))
def test_every_error_is_rebuilt_as_the_same_class_with_the_same_fields(name: str) -> None:
    original = sample_error(name)
    wire = error_to_wire(original)
    assert wire["code"] == -32000 and wire["message"] == str(original)
    assert wire["data"]["kind"] == name
    assert all("_" not in key for key in wire["data"])  # camelCase
    validator("ErrorObject").validate(wire)
    rebuilt = error_from_wire(wire["message"], json.loads(json.dumps(wire["data"])))
    assert type(rebuilt) is type(original)
    assert rebuilt.fields() == original.fields()
    assert str(rebuilt) == str(original)


def test_camel_and_snake() -> None:
    assert codec.camel("max_heap_bytes") == "maxHeapBytes"
    assert codec.snake("maxHeapBytes") == "max_heap_bytes"
    assert codec.snake("cellId") == "cell_id"


def test_limits_round_trip_and_ceilings() -> None:
    from codemode import CellLimits

    limits = CellLimits(max_tool_calls=3, max_cpu_seconds=0.25)
    wire = codec.limits_to_wire(limits)
    assert wire["maxToolCalls"] == 3 and wire["maxCpuSeconds"] == 0.25
    assert codec.limits_from_wire(wire) == limits
    assert codec.limits_from_wire({"maxToolCalls": 2.0}, CellLimits()).max_tool_calls == 2
    with pytest.raises(ValueError, match="ceiling"):
        codec.limits_from_wire({"maxToolCalls": 5}, limits)


def test_the_schema_command(capsys: pytest.CaptureFixture[str]) -> None:
    from codemode.protocol import schemagen

    assert schemagen.main(["--check"]) == 0
    assert schemagen.main([]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1]) == SCHEMA
    assert schemagen.main(["--bogus"]) == 2
