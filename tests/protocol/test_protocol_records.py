"""The observation records of docs/protocol.md under their bounds, on an in-process server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from protocol_support import InProcessServer, RawClient, RawError

import codemode.protocol.observations as observations_module


@pytest.fixture
async def connection() -> AsyncIterator[tuple[RawClient, str, InProcessServer]]:
    server = InProcessServer()
    client, _ = server.connect()
    await client.initialize()
    sid = await client.open_session()
    try:
        yield client, sid, server
    finally:
        await server.close()


async def finished_cell(client: RawClient, sid: str, source: str = 'text("x")') -> str:
    cell = (
        await client.call("cell/create", {"sessionId": sid, "kind": "continuing", "source": source})
    )["cellId"]
    event = await client.call(
        "cell/wait", {"sessionId": sid, "cellId": cell, "yieldAfterMs": 10_000, "observation": 0}
    )
    assert event["type"] == "completed"
    return str(cell)


async def test_the_oldest_unreleased_terminal_records_are_dropped(
    connection: tuple[RawClient, str, InProcessServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(observations_module, "MAX_TERMINAL_RECORDS", 3)
    client, sid, _ = connection
    cells = [await finished_cell(client, sid) for _ in range(5)]
    params = {"sessionId": sid, "yieldAfterMs": 10_000, "observation": 0}
    for dropped in cells[:2]:  # beyond the bound: answers like a released record
        with pytest.raises(RawError) as info:
            await client.call("cell/wait", {**params, "cellId": dropped})
        assert info.value.message == f"observation generation 0 for cell {dropped} was released"
    for kept in cells[2:]:  # still replayable
        assert (await client.call("cell/wait", {**params, "cellId": kept}))["type"] == "completed"
    # Releasing frees a place: the next terminal record does not push a kept one out.
    await client.call(
        "observation/release", {"sessionId": sid, "cellId": cells[2], "observation": 0}
    )
    await finished_cell(client, sid)
    assert (await client.call("cell/wait", {**params, "cellId": cells[3]}))["type"] == "completed"


async def test_records_of_closed_cells_are_pruned_beyond_the_bound(
    connection: tuple[RawClient, str, InProcessServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(observations_module, "MAX_RECORDS", 4)
    client, sid, _ = connection
    live = (
        await client.call(
            "cell/create",
            {
                "sessionId": sid,
                "kind": "continuing",
                "source": 'text("a"); yield_control(); await new Promise(() => {})',
            },
        )
    )["cellId"]
    first = await client.call(
        "cell/wait", {"sessionId": sid, "cellId": live, "yieldAfterMs": 10_000, "observation": 0}
    )
    assert first["type"] == "yielded"
    closed = [await finished_cell(client, sid) for _ in range(6)]
    # The live cell's record survived (its next generation is still 1), closed ones went.
    with pytest.raises(RawError) as info:
        await client.call(
            "cell/wait", {"sessionId": sid, "cellId": live, "yieldAfterMs": 1, "observation": 5}
        )
    assert info.value.message == f"expected observation generation 1 for cell {live}, got 5"
    with pytest.raises(RawError) as info:
        await client.call(
            "cell/wait",
            {"sessionId": sid, "cellId": closed[0], "yieldAfterMs": 1, "observation": 1},
        )
    assert info.value.message == f"first observation for cell {closed[0]} must use generation 0"
    await client.call("cell/terminate", {"sessionId": sid, "cellId": live})


async def test_a_replay_with_an_integral_float_is_the_same_request(
    connection: tuple[RawClient, str, InProcessServer],
) -> None:
    client, sid, _ = connection
    cell = await finished_cell(client, sid)
    again = await client.call(
        "cell/wait",
        {"sessionId": sid, "cellId": cell, "yieldAfterMs": 10_000.0, "observation": 0.0},
    )
    assert again["type"] == "completed"
    with pytest.raises(RawError) as info:
        await client.call(
            "cell/wait", {"sessionId": sid, "cellId": cell, "yieldAfterMs": 1e300, "observation": 1}
        )
    assert info.value.code == -32602
