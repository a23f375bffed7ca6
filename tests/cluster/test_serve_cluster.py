"""``codemode serve --cluster``: a real ``codemode serve`` process, the front door to a real
multi-node Ray cluster, opens every session on the cluster's session hosts; the cells' nested
calls come back through the server to the client, in Python (``RemoteSession``) and in Node.js
(tests/protocol/node/client.mjs, the cross-language client)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from codemode import (
    CellLimits,
    Completed,
    CreateCellRequest,
    NestedToolCall,
    Pending,
    RemoteSession,
    SqliteStore,
    TextItem,
    ToolDefinition,
)

ray = pytest.importorskip("ray")
from codemode.cluster.cluster import NAMESPACE  # noqa: E402
from codemode.cluster.spec import StoreSpec  # noqa: E402

pytestmark = [pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
NODE_CLIENT = ROOT / "tests" / "protocol" / "node" / "client.mjs"
ADD = ToolDefinition("add", "Adds a and b.")


def serve_args(address: str, store: Path) -> list[str]:
    return ["--cluster", address, "--store", str(store), "--hosts", "2"]


def serve_command(address: str, store: Path) -> list[str]:
    return [sys.executable, "-m", "codemode", "serve", *serve_args(address, store)]


class Adder:
    """The client's delegate: ``add`` runs here, in the test process."""

    def __init__(self) -> None:
        self.calls: list[NestedToolCall] = []

    async def invoke_tool(self, call: NestedToolCall) -> Any:
        self.calls.append(call)
        return {"sum": call.input["a"] + call.input["b"]}

    async def notify(self, call_id: str, cell_id: str, text: str) -> None:
        return None


async def hosted_cells(store: Path) -> int:
    """The live cells of the session hosts a ``serve --cluster --store store`` started."""
    label = StoreSpec.of(SqliteStore(store)).label()
    total = 0
    for i in range(2):
        host = ray.get_actor(f"codemode-host-{label}-{i}", namespace=NAMESPACE)
        total += (await host.info.remote())["live_cells"]
    return total


def texts(items: Any) -> list[str]:
    return [i.text for i in items if isinstance(i, TextItem)]


async def test_remote_session_runs_cells_on_the_cluster(ray_cluster: Any, tmp_path: Path) -> None:
    delegate = Adder()
    store = tmp_path / "sessions.db"
    session = await RemoteSession.spawn(delegate, command=serve_command(ray_cluster.address, store))
    try:
        source = """
            const [a, b] = await Promise.all([tools.add({a: 1, b: 2}), tools.add({a: 3, b: 4})]);
            text(`sums ${a.sum} ${b.sum}`);
            for (let i = 0; i < 5; i++) text(`step ${(await tools.add({a: i, b: 10})).sum}`);
        """
        cell = await session.create_cell(CreateCellRequest(source, (ADD,), idempotency_key="k1"))
        out: list[str] = []
        while True:
            event = await asyncio.wait_for(session.wait(cell, 10.0), 60)
            out += texts(event.items)
            if isinstance(event, Completed):
                assert event.error_text is None
                break
        assert out == ["sums 3 7"] + [f"step {i + 10}" for i in range(5)]
        # Every nested call came back to this process, once.
        assert sorted((c.input["a"], c.input["b"]) for c in delegate.calls) == sorted(
            [(1, 2), (3, 4)] + [(i, 10) for i in range(5)]
        )
        assert len({c.call_id for c in delegate.calls}) == 7
        assert {c.cell_id for c in delegate.calls} == {cell.cell_id}

        # A pausable cell, frontier by frontier.
        pcell = await session.create_pausable_cell(
            CreateCellRequest("text(`p ${(await tools.add({a: 20, b: 1})).sum}`);", (ADD,))
        )
        first = await asyncio.wait_for(session.wait_to_pending(pcell), 60)
        assert isinstance(first, Pending) and len(first.frontier.pending_tool_call_ids) == 1
        # The cell lives on one of the server's session hosts (Ray actors), not in the server.
        assert await hosted_cells(store) == 1
        await session.resume(pcell, first.frontier.generation)
        final = await asyncio.wait_for(session.wait_to_pending(pcell), 60)
        assert isinstance(final, Completed) and texts(final.items) == ["p 21"]
    finally:
        await session.shutdown()


async def test_the_clients_limits_apply_on_the_cluster(ray_cluster: Any, tmp_path: Path) -> None:
    """``session/open`` limits reach the host: a cell past ``max_tool_calls`` fails there."""
    session = await RemoteSession.spawn(
        Adder(),
        limits=CellLimits(max_tool_calls=2),
        command=serve_command(ray_cluster.address, tmp_path / "sessions.db"),
    )
    try:
        source = "for (let i = 0; i < 3; i++) await tools.add({a: i, b: 0});"
        cell = await session.create_cell(CreateCellRequest(source, (ADD,)))
        event = await asyncio.wait_for(session.wait(cell, 30.0), 60)
        assert isinstance(event, Completed)
        assert event.error_text is not None and "max_tool_calls" in event.error_text
    finally:
        await session.shutdown()


def test_serve_cluster_without_a_store_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "codemode", "serve", "--cluster", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2
    assert "--cluster needs --store" in result.stderr


def test_node_client_reaches_cluster_sessions(ray_cluster: Any, tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        message = "NODE.JS IS MISSING: the Node.js client did not run against serve --cluster"
        warnings.warn(message, stacklevel=1)
        pytest.skip(message)
    result = subprocess.run(
        [
            node,
            str(NODE_CLIENT),
            sys.executable,
            *serve_args(ray_cluster.address, tmp_path / "s.db"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    seen = json.loads(result.stdout)
    yielded, completed, replay = seen["continuing"]
    assert yielded == {
        "type": "yielded",
        "texts": ["sums 3 7", "caught no such city: Atlantis"],
        "errorText": None,
    }
    assert completed == {"type": "completed", "texts": ["DONE"], "errorText": None}
    assert replay["replay"]["message"].endswith("was released")
    assert seen["notes"] == ["halfway"]
    frontiers = seen["pausable"]["frontiers"]
    assert [(f["generation"], f["calls"]) for f in frontiers] == [(1, 1), (2, 2)]
    assert seen["pausable"]["final"] == {
        "type": "completed",
        "texts": ["then 2 P"],
        "errorText": None,
    }
    assert sorted(seen["invoked"]) == sorted(["add", "add", "fail", "upper", "add", "add", "upper"])
