"""``codemode mcp --http 127.0.0.1:PORT``: the SDK's streamable-HTTP client at ``/mcp``."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp_support import REPO, Recorder, fake_entry, free_port, output, running_cell_id, write_config


async def wait_for_port(port: int, process: asyncio.subprocess.Process) -> None:
    async with asyncio.timeout(120):
        while True:
            assert process.returncode is None, "codemode mcp --http exited early"
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return


async def test_streamable_http_serves_exec_and_wait(tmp_path: Path) -> None:
    config = write_config(tmp_path / "mcp.json", {"fake": fake_entry()})
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "codemode",
        "mcp",
        "--config",
        str(config),
        "--http",
        f"127.0.0.1:{port}",
        cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_for_port(port, process)
        recorder = Recorder()
        async with (
            streamable_http_client(f"http://127.0.0.1:{port}/mcp") as (read, write),
            ClientSession(read, write, logging_callback=recorder.on_log) as session,
        ):
            init = await session.initialize()
            assert init.server_info.name == "codemode"
            assert init.capabilities.tools is not None and init.capabilities.tools.list_changed
            listed = await session.list_tools()
            assert [tool.name for tool in listed.tools] == ["exec", "wait"]
            result = await session.call_tool(
                "exec",
                {
                    "code": '// @exec: {"yield_time_ms": 50}\n'
                    'const r = await tools.mcp__fake__echo({text: "over http"});'
                    'await tools.mcp__fake__sleep({seconds: 0.3}); notify("note");'
                    "text(r.structuredContent.text);"
                },
            )
            cell_id = running_cell_id(result)
            result = await session.call_tool("wait", {"cell_id": cell_id, "until": "completed"})
            assert output(result) == ["over http"]
            assert [log.data for log in recorder.logs] == ["note"]
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            returncode = await process.wait()
    assert returncode == 0
