"""The small things of the command line (issue 13 item 7), run as real subprocesses where it
matters: ``--version``, ``--yield-after`` bounds, ``| head``, the shared ``HOST:PORT`` forms and
logging of ``serve`` and ``mcp``, ``CODEMODE_MCP_CONFIG``, ``wait`` on a cell that is gone."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from codemode import __version__
from codemode.cli_common import parse_host_port
from codemode.mcp.server import parse_http_address
from codemode.protocol.server import parse_listen

FAKE_SERVER = Path(__file__).parent / "mcp" / "servers" / "fake_server.py"


def codemode(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "codemode", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_version() -> None:
    r = codemode("--version")
    assert (r.returncode, r.stdout.strip()) == (0, f"codemode {__version__}")


@pytest.mark.parametrize("value", ["0", "-1", "-0.5", "nan", "soon"])
def test_yield_after_must_be_positive(value: str) -> None:
    r = codemode("run", "--example", f"--yield-after={value}")
    assert r.returncode == 2
    assert "--yield-after" in r.stderr
    assert "yielded" not in r.stdout


def test_yield_after_positive_still_works() -> None:
    r = codemode("run", "--example", "--yield-after", "0.01")
    assert r.returncode == 0, r.stderr
    assert "--- yielded ---" in r.stdout


def test_a_closed_stdout_ends_quietly(tmp_path: Path) -> None:
    cell = tmp_path / "cell.js"
    cell.write_text(
        "for (let i = 0; i < 50000; i++) text('line ' + i);\n"
        "await tools.sleep({ms: 100});\n"
        "for (let i = 0; i < 50000; i++) text('more ' + i);\n"
    )
    for extra in ([], ["--yield-after", "0.01"]):
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "codemode",
                "run",
                str(cell),
                "--max-output-bytes=10000000",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None and process.stderr is not None
        assert process.stdout.readline()
        process.stdout.close()  # what `| head -1` does
        stderr = process.stderr.read()
        assert process.wait(timeout=60) == 1
        assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example.org:8080", ("example.org", 8080)),
        (":9000", ("127.0.0.1", 9000)),
        ("[::1]:9", ("::1", 9)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
    ],
)
def test_serve_and_mcp_take_the_same_host_port_forms(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == parse_http_address(text) == expected


@pytest.mark.parametrize("text", ["8080", "localhost", "host:", "host:x", ":70000", ":-1"])
def test_serve_and_mcp_refuse_the_same_bad_addresses(text: str) -> None:
    with pytest.raises(ValueError, match="--listen"):
        parse_listen(text)
    with pytest.raises(ValueError, match="--http"):
        parse_http_address(text)


def test_port_zero_picks_a_port_for_serve_only() -> None:
    assert parse_listen(":0") == ("127.0.0.1", 0)
    with pytest.raises(ValueError, match="--http port must be 1-65535"):
        parse_http_address(":0")
    with pytest.raises(ValueError, match="--x expects HOST:PORT or :PORT"):
        parse_host_port("nope", "--x")


def _log_line(module: str, level: str | None) -> str:
    code = (
        f"from {module} import _configure_logging; _configure_logging(); import logging; "
        "logging.getLogger('codemode.test').info('hello'); "
        "logging.getLogger('codemode.test').debug('detail'); "
        "logging.getLogger('other.library').info('not shown')"
    )
    env = {**os.environ}
    env.pop("CODEMODE_LOG_LEVEL", None)
    if level is not None:
        env["CODEMODE_LOG_LEVEL"] = level
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert r.returncode == 0, r.stderr
    return re.sub(r"^\S+ \S+ ", "TIME ", r.stderr, flags=re.MULTILINE)


def test_serve_and_mcp_log_alike() -> None:
    for level, expected in (
        (None, "TIME INFO codemode.test: hello\n"),
        ("DEBUG", "TIME INFO codemode.test: hello\nTIME DEBUG codemode.test: detail\n"),
        ("WARNING", ""),
    ):
        assert _log_line("codemode.protocol.server", level) == expected
        assert _log_line("codemode.mcp.server", level) == expected


def test_mcp_config_from_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "mcp.json"
    entry = {"command": sys.executable, "args": [str(FAKE_SERVER)]}
    config.write_text(json.dumps({"mcpServers": {"fake": entry}}))
    r = codemode("mcp", stdin="", env={"CODEMODE_MCP_CONFIG": str(config)})
    assert r.returncode == 0, r.stderr
    assert "MCP server `fake` started with 9 tools" in r.stderr
    missing = codemode("mcp", stdin="", env={"CODEMODE_MCP_CONFIG": ""})
    assert missing.returncode == 2
    assert "mcp needs --config PATH or the CODEMODE_MCP_CONFIG environment variable" in (
        missing.stderr
    )
    # --config wins over the environment.
    other = codemode("mcp", "--config", str(config), stdin="", env={"CODEMODE_MCP_CONFIG": "/x"})
    assert other.returncode == 0, other.stderr


async def test_wait_on_a_gone_cell_says_why() -> None:
    from codemode import CodeModeTools, SessionRuntime, tools_delegate

    async with SessionRuntime(tools_delegate({})) as session:
        tools = CodeModeTools(session, [])
        done = await tools.exec("text(1)", "c1")
        assert done.text.startswith("Script completed")
        for cell_id in ("never-was", done.cell_id or ""):
            result = await tools.wait(cell_id)
            assert result.is_error
            assert result.text.endswith(
                f"exec cell {cell_id} not found: it never existed or its final result was "
                "already returned (a cell closes once its final result has been returned)"
            )
