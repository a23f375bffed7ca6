"""SessionCluster on a real two-node Ray cluster: hosts, placement, the delegate return path,
errors across the boundary (docs/cluster.md)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from codemode import (
    Completed,
    CreateCellRequest,
    MissingCell,
    Pending,
    SessionBusy,
    ToolDefinition,
    WrongCellKind,
    Yielded,
    tools_delegate,
)
from codemode.cluster import ClusterSession, SessionCluster

HANG = 60.0
ECHO = ToolDefinition("echo")
BLOCK = ToolDefinition("block")


class Tools:
    """Tools that record the process they ran in; ``block`` waits for ``release``."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, Any]] = []
        self.gate = asyncio.Event()

    def delegate(self) -> Any:
        async def echo(x: Any) -> Any:
            self.calls.append((os.getpid(), x))
            return x

        async def block(x: Any) -> Any:
            self.calls.append((os.getpid(), x))
            await self.gate.wait()
            return x

        return tools_delegate({"echo": echo, "block": block})


async def test_hosts_are_named_actors_spread_over_both_nodes(
    session_cluster: SessionCluster, ray_cluster: Any
) -> None:
    import ray

    hosts = await session_cluster.hosts()
    assert len(hosts) == 2
    assert all(h.alive for h in hosts)
    assert {h.node_id for h in hosts} == ray_cluster.node_ids()
    for info in hosts:
        handle = ray.get_actor(info.actor_name, namespace=info.namespace)
        assert await handle.ping.remote() == info.host_id


async def test_sessions_are_placed_by_load_on_both_nodes(session_cluster: SessionCluster) -> None:
    tools = Tools()
    first: ClusterSession = await session_cluster.session(tools.delegate())
    blocked = await first.create_cell(
        CreateCellRequest("text(await tools.block({n: 1}))", tools=[BLOCK])
    )
    second: ClusterSession = await session_cluster.session(tools.delegate())
    try:
        assert first.host_name != second.host_name
        hosts = {h.actor_name: h for h in await session_cluster.hosts()}
        assert hosts[first.host_name or ""].live_cells >= 1
        assert hosts[first.host_name or ""].node_id != hosts[second.host_name or ""].node_id
        tools.gate.set()
        event = await asyncio.wait_for(first.wait(blocked, HANG), HANG)
        assert event == Completed(event.items)
    finally:
        await first.shutdown()
        await second.shutdown()


async def test_tool_calls_come_back_to_the_calling_process(
    session_cluster: SessionCluster,
) -> None:
    tools = Tools()
    async with await session_cluster.session(tools.delegate()) as session:
        cell = await session.create_cell(
            CreateCellRequest(
                """
                const all = await Promise.all([1, 2, 3].map((i) => tools.echo({i})));
                let n = 0;
                for (let i = 0; i < 20; i++) n += (await tools.echo({i})).i;
                text(JSON.stringify(all) + " " + n);
                """,
                tools=[ECHO],
            )
        )
        event = await asyncio.wait_for(session.wait(cell, HANG), HANG)
        assert event == Completed(event.items)
        assert [i.text for i in event.items] == ['[{"i":1},{"i":2},{"i":3}] 190']  # type: ignore[union-attr]
    assert len(tools.calls) == 23
    assert {pid for pid, _ in tools.calls} == {os.getpid()}
    hosts = await session_cluster.hosts()
    assert all(h.sessions == 0 for h in hosts)


async def test_delegate_failures_and_notifications_cross_the_boundary(
    session_cluster: SessionCluster,
) -> None:
    notes: list[tuple[str, str, str]] = []

    async def fail(x: Any) -> Any:
        raise RuntimeError(f"no {x['what']}")

    async def nan(x: Any) -> Any:
        return float("nan")

    async def notify(call_id: str, cell_id: str, text: str) -> None:
        notes.append((call_id, cell_id, text))

    delegate = tools_delegate({"fail": fail, "nan": nan}, notify)
    async with await session_cluster.session(delegate) as session:
        cell = await session.create_cell(
            CreateCellRequest(
                """
                notify("hello");
                try { await tools.fail({what: "luck"}); } catch (e) { text(e.message); }
                try { await tools.nan({}); } catch (e) { text(e.message); }
                """,
                tools=[ToolDefinition("fail"), ToolDefinition("nan")],
                tool_call_id="call-7",
            )
        )
        event = await asyncio.wait_for(session.wait(cell, HANG), HANG)
    assert isinstance(event, Completed)
    assert [i.text for i in event.items] == [  # type: ignore[union-attr]
        "no luck",
        "tool `nan` returned a value that is not JSON",
    ]
    assert notes == [("call-7", cell.cell_id, "hello")]


async def test_errors_keep_their_class_and_fields(session_cluster: SessionCluster) -> None:
    async with await session_cluster.session(tools_delegate({})) as session:
        paused = await session.create_pausable_cell(
            CreateCellRequest("text('a'); await new Promise(() => {});")
        )
        with pytest.raises(WrongCellKind) as wrong:
            session.cell(paused.cell_id)
        assert (wrong.value.expected, wrong.value.actual) == ("continuing", "pausable")
        event = await asyncio.wait_for(session.wait_to_pending(paused), HANG)
        assert isinstance(event, Pending)
        assert event.frontier.generation == 1
        done = await session.terminate(paused)
        with pytest.raises(MissingCell) as missing:
            await session.resume(paused, 1)
        assert missing.value.cell_id == paused.cell_id
        assert done.items == () or isinstance(done, Completed)


async def test_yielded_output_is_delivered_once(session_cluster: SessionCluster) -> None:
    async with await session_cluster.session(tools_delegate({})) as session:
        cell = await session.create_cell(
            CreateCellRequest(
                """
                for (let i = 0; i < 3; i++) { text("t" + i); yield_control(); }
                await new Promise((r) => setTimeout(r, 200));
                text("end");
                """
            )
        )
        texts: list[str] = []
        while True:
            event = await asyncio.wait_for(session.wait(cell, 0.05), HANG)
            texts += [i.text for i in event.items]  # type: ignore[union-attr]
            if not isinstance(event, Yielded):
                break
        assert texts == ["t0", "t1", "t2", "end"]


async def test_a_second_caller_takes_the_session_over(session_cluster: SessionCluster) -> None:
    first_tools, second_tools = Tools(), Tools()
    first: ClusterSession = await session_cluster.session(first_tools.delegate())
    cell = await first.create_cell(
        CreateCellRequest("text('a'); text(String((await tools.block({n: 1})).n));", tools=[BLOCK])
    )
    event = await asyncio.wait_for(first.wait(cell, 0.5), HANG)
    assert [i.text for i in event.items] == ["a"]  # type: ignore[union-attr]
    second: ClusterSession = await session_cluster.session(
        second_tools.delegate(), session_id=first.session_id
    )
    try:
        assert second.host_name == first.host_name
        resumed = second.cell(cell.cell_id)
        second_tools.gate.set()  # the call left unanswered is asked again, of the new caller
        event = await asyncio.wait_for(second.wait(resumed, HANG), HANG)
        assert event == Completed(event.items)
        assert [i.text for i in event.items] == ["1"]  # type: ignore[union-attr]
        assert [x for _, x in second_tools.calls] == [{"n": 1}]
        await asyncio.sleep(0.5)
        with pytest.raises(SessionBusy):
            await first.create_cell(CreateCellRequest("text('x')"))
        await first.shutdown()  # leaves the session to its new caller
        assert second.is_alive
        again = await second.create_cell(CreateCellRequest("text('still here')"))
        assert (await asyncio.wait_for(second.wait(again, HANG), HANG)).items[
            0
        ].text == "still here"  # type: ignore[union-attr]
    finally:
        await second.shutdown()
