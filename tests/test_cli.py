"""The command line, run as a real subprocess (docs/protocol.md; scenario 86, first half)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def codemode(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "codemode", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_example_runs_the_demo_and_exits_0() -> None:
    r = codemode("run", "--example")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == 'echo   -> {"greeting":"hello from a cell"}'
    assert "--- yielded ---" in lines
    assert lines[-1] == "done"
    assert "notify: calling echo, sleep and upper in parallel" in r.stderr


def test_example_pausable_prints_frontiers() -> None:
    r = codemode("run", "--example", "--pausable")
    assert r.returncode == 0, r.stderr
    assert "--- frontier 1: pending tool-1, tool-2, tool-3 ---" in r.stderr
    assert r.stdout.splitlines()[-1] == "done"


def test_file_success_failure_and_stdin(tmp_path: Path) -> None:
    ok = tmp_path / "ok.js"
    ok.write_text('text(await tools.echo({a: 1})); text(await tools.upper("x"))')
    r = codemode("run", str(ok))
    assert (r.returncode, r.stdout) == (0, '{"a":1}\nX\n')
    bad = tmp_path / "bad.js"
    bad.write_text('text("before"); await tools.fail({message: "nope"})')
    r = codemode("run", str(bad))
    assert r.returncode == 1
    assert r.stdout == "before\n"
    assert "Error: nope" in r.stderr
    r = codemode("run", "-", stdin='text("from stdin")')
    assert (r.returncode, r.stdout) == (0, "from stdin\n")


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert codemode("run").returncode == 2
    assert codemode("run", str(tmp_path / "missing.js")).returncode == 2
    assert codemode("run", "--example", "--max-tool-calls", "0").returncode == 2
    assert codemode("bogus").returncode == 2


def test_json_and_yield_after(tmp_path: Path) -> None:
    src = tmp_path / "c.js"
    src.write_text(
        'text("a"); await tools.sleep({ms: 300}); text("b");'
        'image("data:image/png;base64,iVBORw0KGgo=", "low")'
    )
    r = codemode("run", str(src), "--json", "--yield-after", "0.05")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert events[0] == {"type": "yielded", "items": [{"type": "text", "text": "a"}]}
    assert events[-1] == {
        "type": "completed",
        "items": [
            {"type": "text", "text": "b"},
            {"type": "image", "imageUrl": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"},
        ],
        "errorText": None,
    }
    assert all(e["type"] == "yielded" for e in events[:-1])
    r = codemode("run", str(src))
    assert r.stdout == "a\nb\n[image low, 8 bytes]\n"


@pytest.mark.parametrize("flag", ["--max-cpu-seconds", "--max-output-bytes"])
def test_limit_flags_apply(tmp_path: Path, flag: str) -> None:
    src = tmp_path / "spin.js"
    cpu = flag == "--max-cpu-seconds"
    src.write_text("for (;;) {}" if cpu else 'for (;;) text("x".repeat(1000))')
    value = "0.3" if cpu else "5000"
    r = codemode("run", str(src), flag, value)
    assert r.returncode == 1
    field = flag[2:].replace("-", "_")
    assert f"exec cell exceeded {field}" in r.stderr


def test_sigint_terminates_the_cell(tmp_path: Path) -> None:
    """Ctrl-C terminates the running cell: what it produced is printed, then "terminated"
    (exit 3). The signal is sent once the cell has produced output (its handler is installed
    by then, whatever the machine's load), and the process never outlives the test."""
    import signal
    import threading

    src = tmp_path / "forever.js"
    src.write_text('text("started"); await new Promise(() => {})')
    proc = subprocess.Popen(
        [sys.executable, "-m", "codemode", "run", str(src), "--yield-after", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    guard = threading.Timer(120, proc.kill)  # a hang guard: readline below blocks
    guard.start()
    try:
        assert proc.stdout is not None
        seen = [proc.stdout.readline()]
        while seen[-1] and "started" not in seen[-1]:
            seen.append(proc.stdout.readline())
        assert "started" in seen[-1], seen
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    finally:
        guard.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 3, err
    assert "terminated" in err
