"""Issue 12 point 6: memory a client can make ``codemode serve`` spend. A client that never reads
its answers (backpressure bounds the queued bytes), an oversize frame of empty objects (refused
before it is built), and the server-wide caps on sessions and live cells. Memory is measured as the
growth of the server child's peak RSS (``VmHWM``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

from protocol_support import HANG, SERVE, InProcessServer, WebSocketServer
from websockets.asyncio.client import connect

from codemode.protocol.policy import ServePolicy
from codemode.protocol.server import ProtocolServer

MB = 1024 * 1024


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


class Child:
    """``codemode serve`` on stdio, written to by the test, read only when the test wants."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.next_id = 0

    @classmethod
    async def start(cls, *args: str) -> Child:
        process = await asyncio.create_subprocess_exec(
            *SERVE,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            limit=2**27,
        )
        return cls(process)

    async def write(self, data: bytes, bound: float = HANG) -> bool:
        """Write ``data``; ``False`` when the server stopped reading for ``bound`` seconds."""
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        try:
            await asyncio.wait_for(self.process.stdin.drain(), bound)
        except TimeoutError:
            return False
        return True

    async def send(self, method: str, params: Any) -> int:
        self.next_id += 1
        message = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}
        assert await self.write(json.dumps(message).encode() + b"\n")
        return self.next_id

    async def answer(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        while True:
            line = await asyncio.wait_for(self.process.stdout.readline(), HANG)
            assert line, "the server closed its output"
            message: dict[str, Any] = json.loads(line)
            if "method" not in message:
                return message

    async def call(self, method: str, params: Any) -> Any:
        await self.send(method, params)
        answer = await self.answer()
        assert "result" in answer, answer
        return answer["result"]

    async def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        await self.process.wait()


async def test_a_client_that_does_not_read_is_not_read_either() -> None:
    child = await Child.start()
    try:
        await child.call("initialize", {"protocolVersion": 1, "clientInfo": {"name": "slow"}})
        session = (await child.call("session/open", {}))["sessionId"]
        cell = (
            await child.call(
                "cell/create",
                {
                    "sessionId": session,
                    "kind": "continuing",
                    "source": 'text("x".repeat(900000))',
                    "tools": [],
                    "toolCallId": "big",
                },
            )
        )["cellId"]
        wait = {"sessionId": session, "cellId": cell, "yieldAfterMs": 20000, "observation": 0}
        first = await child.call("cell/wait", wait)
        assert first["type"] == "completed"
        before = peak_rss(child.process.pid)
        # Replays of observation 0 answer the same ~0.9 MB event: 600 of them are ~540 MB of
        # answers. The server must stop reading (and answering) while they are not read.
        line = json.dumps({"jsonrpc": "2.0", "id": 0, "method": "cell/wait", "params": wait})
        for n in range(600):
            request = line.replace('"id": 0', f'"id": {n + 100}')
            assert await child.write(request.encode() + b"\n")
        await asyncio.sleep(3)  # the server answers what it can meanwhile
        grown = peak_rss(child.process.pid) - before
        assert grown < 150 * MB, f"peak RSS grew by {grown / MB:.0f} MB"
        # Nothing is lost: once the client reads, every request is answered.
        answered = set()
        for _ in range(600):
            answer = await child.answer()
            assert answer["result"] == first
            answered.add(answer["id"])
        assert answered == set(range(100, 700))
        print(f"slow reader: peak RSS +{grown / MB:.1f} MB")
    finally:
        await child.stop()


async def test_an_oversize_frame_of_empty_objects_is_refused_unbuilt() -> None:
    child = await Child.start()
    try:
        await child.write(b"nonsense\n")
        assert (await child.answer())["error"]["code"] == -32700
        before = peak_rss(child.process.pid)
        # 60 MB of [{},{},...] before initialize (a batch), then inside a request after it.
        body = b",".join([b"{}"] * (20 * MB))
        assert await child.write(b"[" + body + b"]\n")
        refused = await child.answer()
        assert refused["error"]["code"] == -32002
        assert refused["id"] is None
        await child.call("initialize", {"protocolVersion": 1, "clientInfo": {"name": "big"}})
        frame = b'{"jsonrpc":"2.0","id":9,"method":"session/open","params":{"x":[' + body + b"]}}\n"
        del body
        assert await child.write(frame)
        del frame
        refused = await child.answer()
        assert refused["error"]["code"] == -32600
        assert "JSON objects or arrays" in refused["error"]["message"]
        grown = peak_rss(child.process.pid) - before
        assert grown < 400 * MB, f"peak RSS grew by {grown / MB:.0f} MB"
        print(f"oversize frames: peak RSS +{grown / MB:.1f} MB")
        assert "sessionId" in await child.call("session/open", {})
    finally:
        await child.stop()


async def test_server_wide_caps() -> None:
    server = InProcessServer()
    server.server = ProtocolServer(policy=ServePolicy(max_sessions=2, max_live_cells_total=3))
    a, _ = server.connect()
    b, _ = server.connect()
    try:
        for client in (a, b):
            await client.call("initialize", {"protocolVersion": 1, "clientInfo": {"name": "c"}})
        s1 = (await a.call("session/open", {}))["sessionId"]
        s2 = (await b.call("session/open", {}))["sessionId"]
        refused = await b.request("session/open", {})
        assert refused["error"]["code"] == -32000
        assert refused["error"]["data"]["kind"] == "EngineError"
        assert "too many open sessions (2)" in refused["error"]["message"]
        assert "--max-sessions" in refused["error"]["message"]

        def create(session: str, key: str) -> dict[str, Any]:
            return {
                "sessionId": session,
                "kind": "continuing",
                "source": "await new Promise(r => setTimeout(r, 60000))",
                "tools": [],
                "toolCallId": key,
            }

        await a.call("cell/create", create(s1, "1"))
        await a.call("cell/create", create(s1, "2"))
        third = await b.call("cell/create", create(s2, "3"))
        refused = await b.request("cell/create", create(s2, "4"))
        assert "too many live cells (3)" in refused["error"]["message"]
        assert "--max-live-cells-total" in refused["error"]["message"]
        await b.call("cell/terminate", {"sessionId": s2, "cellId": third["cellId"]})
        await b.call("cell/create", create(s2, "5"))
        await a.call("session/shutdown", {"sessionId": s1})
        assert "sessionId" in await a.call("session/open", {})
    finally:
        await a.close()
        await b.close()
        await server.close()


async def test_a_websocket_client_that_does_not_read_is_not_read_either() -> None:
    server = WebSocketServer()
    try:
        async with connect(server.url, max_size=None, open_timeout=HANG) as ws:
            ids = iter(range(1, 10_000))

            async def call(method: str, params: Any) -> Any:
                request_id = next(ids)
                message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
                await ws.send(json.dumps(message))
                while True:
                    answer = json.loads(await asyncio.wait_for(ws.recv(), HANG))
                    if answer.get("id") == request_id:
                        assert "result" in answer, answer
                        return answer["result"]

            await call("initialize", {"protocolVersion": 1, "clientInfo": {"name": "slow-ws"}})
            session = (await call("session/open", {}))["sessionId"]
            create = {
                "sessionId": session,
                "kind": "continuing",
                "source": 'text("x".repeat(900000))',
                "tools": [],
                "toolCallId": "big",
            }
            cell = (await call("cell/create", create))["cellId"]
            wait = {"sessionId": session, "cellId": cell, "yieldAfterMs": 20000, "observation": 0}
            first = await call("cell/wait", wait)
            before = peak_rss(server.process.pid)
            for n in range(400):  # ~360 MB of answers if the server kept answering
                request = {"jsonrpc": "2.0", "id": 1000 + n, "method": "cell/wait", "params": wait}
                await asyncio.wait_for(ws.send(json.dumps(request)), HANG)
            await asyncio.sleep(3)
            grown = peak_rss(server.process.pid) - before
            assert grown < 150 * MB, f"peak RSS grew by {grown / MB:.0f} MB"
            print(f"slow WebSocket reader: peak RSS +{grown / MB:.1f} MB")
            answered = set()
            while len(answered) < 400:
                answer = json.loads(await asyncio.wait_for(ws.recv(), HANG))
                assert answer["result"] == first
                answered.add(answer["id"])
    finally:
        assert server.stop() == 0
