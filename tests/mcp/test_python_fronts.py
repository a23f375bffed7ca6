"""Python cells on every front: ``codemode run`` with ``--python`` or a ``.py`` file,
``codemode serve --engine python`` through ``RemoteSession``, ``codemode mcp --engine python``
through the MCP SDK's client (docs/python-cells.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mcp import ClientSession
from mcp.client.stdio import stdio_client
from mcp_support import REPO, codemode_command, fake_entry, output, texts, write_config

from codemode import Completed, RemoteSession, TextItem
from conftest import RecordingDelegate, request


def codemode(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "codemode", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_run_a_py_file_and_python_stdin(tmp_path: Path) -> None:
    cell = tmp_path / "cell.py"
    cell.write_text(
        "r = await asyncio.gather(tools.echo(a=1), tools.sleep(ms=10), tools.upper('hi'))\n"
        "print(r[0]['a'], r[1]['slept'], r[2])\n"
        "notify('working')\n"
    )
    r = codemode("run", str(cell))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "1 10 HI\n"
    assert "notify: working" in r.stderr
    r = codemode("run", "--python", "-", stdin="text('a')\nawait tools.fail(message='nope')")
    assert r.returncode == 1
    assert r.stdout == "a\n"
    assert "RuntimeError: nope\n    at cell.py:2:1" in r.stderr
    r = codemode("run", "--python", "--pausable", "-", stdin="await tools.echo()\nprint('done')")
    assert r.returncode == 0, r.stderr
    assert "--- frontier 1: pending tool-1 ---" in r.stderr
    assert r.stdout == "done\n"


async def test_serve_engine_python_through_remote_session() -> None:
    delegate = RecordingDelegate()
    command = [sys.executable, "-m", "codemode", "serve", "--engine", "python"]
    session = await RemoteSession.spawn(delegate, command=command)
    try:
        cell = await session.create_cell(
            request("r = await tools.echo(x=2)\nprint('x is', r['x'])")
        )
        assert await session.wait(cell, 20) == Completed((TextItem("x is 2"),))
        pcell = await session.create_pausable_cell(request("await tools.echo()\ntext('p')"))
        event = await session.wait_to_pending(pcell)
        assert not isinstance(event, Completed)
        await session.resume(pcell, 1)
        assert await session.wait_to_pending(pcell) == Completed((TextItem("p"),))
    finally:
        await session.shutdown()
    assert [c.input for c in delegate.calls] == [{"x": 2}, {}]


async def test_mcp_engine_python(tmp_path: Path) -> None:
    config = write_config(tmp_path / "mcp.json", {"fake": fake_entry()})
    params = codemode_command("mcp", "--config", str(config), "--engine", "python")
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        listed = await session.list_tools()
        exec_tool = listed.tools[0]
        description = exec_tool.description or ""
        assert "from Python inside `exec`" in description
        assert "async def mcp__fake__echo(" in description
        result = await session.call_tool(
            "exec", {"code": "r = await tools.mcp__fake__echo(text='hello')\ntext(r['content'])"}
        )
    assert not result.is_error, texts(result)
    assert output(result) == ['[{"type": "text", "text": "hello"}]']


def test_engine_flag_rejects_unknown_names() -> None:
    r = codemode("serve", "--engine", "lua")
    assert r.returncode == 2
    assert "invalid choice: 'lua'" in r.stderr


def test_bundled_python_example() -> None:
    r = codemode("run", "--example", "--python")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == 'echo   -> {"greeting": "hello from a cell"}'
    assert "--- yielded ---" in lines
    assert lines[-1] == "done"
    assert "notify: calling echo, sleep and upper in parallel" in r.stderr
