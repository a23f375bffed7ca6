"""``examples/request_response_host.py`` in durable mode (docs/durability.md "Fronts"): the host
process of the pausable host loop is killed with SIGKILL between two requests and a new process
carries on; the client's output equals that of an uninterrupted run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "request_response_host.py"


def run_example(*args: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def outputs(lines: list[str]) -> list[str]:
    """What the client received: each response's status line and output lines."""
    return [line.strip() for line in lines if line.startswith(("<- ", "     output:"))]


def test_a_host_process_killed_between_two_requests(tmp_path: Path) -> None:
    uninterrupted = outputs(run_example())
    lines = run_example("--store", str(tmp_path / "trips.db"))
    killed = [line for line in lines if line.startswith("!! host process")]
    assert len(killed) == 1 and "killed (SIGKILL)" in killed[0], lines
    # The kill happened between response 2 and request 3, mid-program.
    assert lines.index(killed[0]) > lines.index("<- response 2: paused at generation 2")
    assert outputs(lines) == uninterrupted
    assert uninterrupted[-1] == "output: booked Ibis: BK-0004"
