"""Issue 12 point 3: ``codemode mcp`` never leaves an upstream process behind. With a nested call
in flight it exits within about a second of stdin closing (before the official client would kill
it) or of SIGTERM, and on every exit path, SIGKILL of codemode itself included, the upstream
server, its guardian and a grandchild the server started are all gone."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_support import REPO, SERVERS, free_port, output, texts, write_config
from test_mcp_http import wait_for_port

RECORDING_SERVER = SERVERS / "recording_server.py"
EXIT_RECORDER = SERVERS / "exit_recorder.py"
IN_FLIGHT = (
    '// @exec: {"yield_time_ms": 300}\nawait tools.mcp__rec__sleep({seconds: 60}); text("never")'
)


def _config(tmp_path: Path) -> Path:
    entry = {"command": sys.executable, "args": [str(RECORDING_SERVER)]}
    return write_config(tmp_path / "mcp.json", {"rec": entry})


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended


async def _all_gone(pids: list[int], bound: float = 60.0) -> list[int]:
    deadline = time.monotonic() + bound
    while True:
        alive = [p for p in pids if _alive(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        await asyncio.sleep(0.05)


async def _family(session: ClientSession) -> dict[str, int]:
    result = await session.call_tool(
        "exec", {"code": "text(JSON.stringify(await tools.mcp__rec__family({})))"}
    )
    info = json.loads(output(result)[0])["structuredContent"]
    server, child = int(info["pid"]), int(info["child"])
    guardian = _parent(server)
    assert _parent(child) == server
    assert os.getpgid(server) == os.getpgid(child) == guardian  # the guardian leads the group
    return {"server": server, "child": child, "guardian": guardian, "codemode": _parent(guardian)}


def _command(config: Path, record: Path) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=[
            str(EXIT_RECORDER),
            str(record),
            sys.executable,
            "-m",
            "codemode",
            "mcp",
            "--config",
            str(config),
        ],
        cwd=str(REPO),
    )


async def test_stdin_eof_with_a_call_in_flight(tmp_path: Path) -> None:
    record = tmp_path / "exit.json"
    async with (
        stdio_client(_command(_config(tmp_path), record)) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        pids = await _family(session)
        running = await session.call_tool("exec", {"code": IN_FLIGHT})
        assert texts(running)[0].startswith("Script running")
        closing = time.monotonic()
    exit_info = json.loads(record.read_text())
    took = exit_info["exited"] - closing
    print(f"codemode mcp exited {took:.2f} s after its stdin closed")
    assert exit_info["returncode"] == 0  # it ended by itself: the client did not kill it
    assert took < 1.9  # the official client kills a server still running after 2 s
    assert await _all_gone(list(pids.values())) == []


async def test_sigkill_of_codemode_kills_the_upstream_group(tmp_path: Path) -> None:
    record = tmp_path / "exit.json"
    async with (
        stdio_client(_command(_config(tmp_path), record)) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        pids = await _family(session)
        await session.call_tool("exec", {"code": IN_FLIGHT})
        os.kill(pids["codemode"], signal.SIGKILL)
        gone = await _all_gone([pids["server"], pids["child"], pids["guardian"]])
        assert gone == [], f"left running after SIGKILL of codemode: {gone}"
    assert json.loads(record.read_text())["returncode"] == -signal.SIGKILL


async def test_sigterm_over_http(tmp_path: Path) -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "codemode", "mcp", "--config", str(_config(tmp_path))),
        *("--http", f"127.0.0.1:{port}"),
        cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_for_port(port, process)
        async with (
            streamable_http_client(f"http://127.0.0.1:{port}/mcp") as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            pids = await _family(session)
            assert pids["codemode"] == process.pid
            await session.call_tool("exec", {"code": IN_FLIGHT})
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                returncode = await process.wait()
            took = time.monotonic() - signalled
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    print(f"codemode mcp --http exited {took:.2f} s after SIGTERM")
    assert returncode == 0
    assert took < 1.9
    assert await _all_gone(list(pids.values())) == []


async def test_sigterm_over_stdio(tmp_path: Path) -> None:
    record = tmp_path / "exit.json"
    async with (
        stdio_client(_command(_config(tmp_path), record)) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        pids = await _family(session)
        await session.call_tool("exec", {"code": IN_FLIGHT})
        signalled = time.monotonic()
        os.kill(pids["codemode"], signal.SIGTERM)
        assert await _all_gone(list(pids.values())) == []
    exit_info = json.loads(record.read_text())
    took = exit_info["exited"] - signalled
    print(f"codemode mcp exited {took:.2f} s after SIGTERM")
    assert exit_info["returncode"] == 0
    assert took < 1.9
