"""V8's flags are process-wide and fixed by whoever initialises mini-racer first: tests and
applications that touch mini-racer directly must not take codemode's flags away unnoticed
(docs/safety.md). Each check runs in a fresh interpreter, where V8 is not initialised yet."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Dropped typed arrays far above the cap: the prelude reclaims them only with `gc` exposed.
FLOOD = (
    "let sum = 0; for (let i = 0; i < 40; i++) {"
    "  const b = new Uint8Array(8 << 20); b[0] = 1; sum += b[0]; await tools.echo({}) }"
    "text(sum)"
)

SCRIPT = """
import asyncio, logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(name)s: %(message)s")
if sys.argv[1] == "mini-racer-first":
    from py_mini_racer import _dll
    _dll.init_mini_racer(ignore_duplicate_init=True)
from codemode import CellLimits, CreateCellRequest, SessionRuntime, ToolDefinition
from codemode import tools_delegate
from codemode.engine.v8 import V8Engine

async def echo(value):
    return value

async def main():
    for _ in range(2):  # a second engine finds V8 initialised by the first: nothing to say
        limits = CellLimits(max_heap_bytes=64 << 20)
        delegate = tools_delegate({"echo": echo})
        async with SessionRuntime(delegate, limits=limits, engine=V8Engine()) as rt:
            cell = await rt.create_cell(CreateCellRequest(sys.argv[2], (ToolDefinition("echo"),)))
            print("RESULT", await rt.wait(cell, 60))

asyncio.run(main())
"""


def run_fresh(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_codemode_first_reclaims_dropped_typed_arrays_and_warns_nothing() -> None:
    out = run_fresh("codemode-first", FLOOD)
    assert out.count("RESULT Completed(items=(TextItem(text='40'),)") == 2, out
    assert "initialised before codemode" not in out


def test_mini_racer_initialised_first_is_named_once() -> None:
    out = run_fresh("mini-racer-first", "text('ok')")
    assert out.count("RESULT Completed(items=(TextItem(text='ok'),)") == 2, out
    assert out.count("codemode.engine.v8: mini-racer was initialised before codemode") == 1, out


def test_the_call_path_counts_leave_the_typed_array_accounting_alone() -> None:
    """The order that once failed: tests/test_call_path.py's counting test first in a process
    (it reaches into mini-racer's library), then the typed-array flood in the same process."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_call_path.py::test_sequential_calls_wait_for_the_isolate_once_per_step",
            "tests/test_limits.py::test_typed_arrays_that_are_dropped_are_reclaimed",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert "2 passed" in done.stdout
