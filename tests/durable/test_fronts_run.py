"""``codemode run --store PATH --session ID FILE`` (docs/durability.md "Fronts"): a run killed
with SIGKILL mid-cell is recovered by running the same command again, which prints only what the
first run had not printed; a third run finds the cell ended."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

RUN = [sys.executable, "-m", "codemode", "run"]
SESSION = "k3v9q0m2x7d1r8tz"
SOURCE = """
text("first");
yield_control();
const r = await tools.sleep({ms: 1500});
text("second " + r.slept);
"""
YIELDED = "--- yielded ---"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RUN, *args], capture_output=True, text=True, timeout=120, check=False)


def test_a_killed_run_is_recovered_by_the_same_command(tmp_path: Path) -> None:
    cell = tmp_path / "cell.js"
    cell.write_text(SOURCE)
    args = [
        "--store",
        str(tmp_path / "sessions.db"),
        "--session",
        SESSION,
        "--lease-seconds",
        "1",
        "--yield-after",
        "0.05",
        str(cell),
    ]
    first = subprocess.Popen([*RUN, *args], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout is not None
        assert first.stdout.readline() == "first\n"
        assert first.stdout.readline() == YIELDED + "\n"
    finally:
        first.kill()  # while tools.sleep runs: the call is issued, not answered
        first.wait()
    assert first.returncode < 0

    # The lease of the killed run runs out within a second; the second run waits for it.
    second = run(*args)
    assert second.returncode == 0, second.stderr
    lines = [line for line in second.stdout.splitlines() if line != YIELDED]
    assert lines == ["second 1500"]  # "first" was printed by the first run: not again

    third = run(*args)
    assert third.returncode == 0, third.stderr
    assert third.stdout == ""
    assert "already ran to its end in session " + SESSION in third.stderr

    # Another source in the same session is a new cell.
    other = tmp_path / "other.js"
    other.write_text('text("other")')
    fourth = run(*args[:-1], str(other))
    assert (fourth.returncode, fourth.stdout) == (0, "other\n"), fourth.stderr


def test_a_run_with_a_store_and_no_session_prints_its_new_session(tmp_path: Path) -> None:
    cell = tmp_path / "cell.js"
    cell.write_text('text("x")')
    result = run("--store", str(tmp_path / "sessions.db"), str(cell))
    assert (result.returncode, result.stdout) == (0, "x\n"), result.stderr
    match = re.search(r"^codemode run: session (\S+)$", result.stderr, re.MULTILINE)
    assert match is not None, result.stderr
    assert len(match.group(1)) == 16


def test_session_needs_store(tmp_path: Path) -> None:
    cell = tmp_path / "cell.js"
    cell.write_text('text("x")')
    result = run("--session", SESSION, str(cell))
    assert result.returncode == 2
    assert "--session needs --store PATH" in result.stderr
    result = run("--store", str(tmp_path / "s.db"), "--session", "", str(cell))
    assert result.returncode == 2
    assert "--session must have 1 to 128 characters" in result.stderr
