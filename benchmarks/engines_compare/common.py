"""The workloads, the expected outputs, the host tools, process accounting and the
:class:`Adapter` every engine peer implements."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.metadata
import importlib.util
import os
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent  # benchmarks/
ROOT = HERE.parent
COMPARE_VENV = HERE / ".venv-compare"
RESULTS = HERE / "results" / "engines_compare.json"
REEXEC_GUARD = "CODEMODE_ENGINES_COMPARE_REEXEC"

ENGINES = (
    "codemode",
    "codemode-worker",
    "mini-racer",
    "quickjs-ng",
    "monty",
    "deno-worker",
    "deno-process",
)
MiB = 1024 * 1024
DEADLINE = 0.050  # the runaway cell's host-side deadline, seconds after its start
COMPUTE_N = 1_000_000
PAYLOAD = 1 << 20
# A stopped runaway burns ~0 CPU afterwards; a spinning thread ~1 core (~0.5 on a loaded 2-core
# machine). Above this fraction of a core the stop did not really stop it.
BUSY = 0.2


# ---------------------------------------------------------------------------------------------
# Cells: the same programs in JavaScript and in Monty's Python subset, with their expected output


def js_cells(calls: int) -> dict[str, str]:
    return {
        "fresh": 'text("hi")',
        "seq": (
            f"let n = 0; for (let i = 0; i < {calls}; i++) n += (await tools.echo({{i}})).i;"
            " text(String(n))"
        ),
        "par": (
            f"const r = await Promise.all(Array.from({{length: {calls}}},"
            " (_, i) => tools.echo({i})));"
            " text(String(r.reduce((a, x) => a + x.i, 0)))"
        ),
        "payload": (
            f'const r = await tools.echo({{s: "x".repeat({PAYLOAD})}}); text(String(r.s.length))'
        ),
        "compute": (
            f"let s = 0; for (let i = 0; i < {COMPUTE_N}; i++) s = (s + i * i) % 1000003;"
            " text(String(s))"
        ),
        "idle": "await tools.hang({})",
        "runaway": "while (true) {}",
    }


def py_cells(calls: int) -> dict[str, str]:
    return {
        "fresh": 'print("hi")',
        "seq": f"n = 0\nfor i in range({calls}):\n    n += (await echo({{'i': i}}))['i']\nprint(n)",
        "par": (
            "import asyncio\n"
            f"r = await asyncio.gather(*[echo({{'i': i}}) for i in range({calls})])\n"
            "print(sum([x['i'] for x in r]))"
        ),
        "payload": f"r = await echo({{'s': 'x' * {PAYLOAD}}})\nprint(len(r['s']))",
        "compute": (
            f"s = 0\nfor i in range({COMPUTE_N}):\n    s = (s + i * i) % 1000003\nprint(s)"
        ),
        "idle": "await hang({})",
        "runaway": "while True:\n    pass",
    }


def expected_outputs(calls: int) -> dict[str, list[str]]:
    s = 0
    for i in range(COMPUTE_N):
        s = (s + i * i) % 1000003
    total = str(calls * (calls - 1) // 2)
    return {
        "fresh": ["hi"],
        "seq": [total],
        "par": [total],
        "payload": [str(PAYLOAD)],
        "compute": [str(s)],
    }


class NotPossible(Exception):
    """The engine cannot do this workload; the message says why."""


# The host tools every engine calls: an async Python function that echoes its input, and one
# that never answers (for idle cells).
class Tools:
    def __init__(self) -> None:
        self.hanging = 0
        self.hang_event = asyncio.Event()
        self._never: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def echo(self, value: Any) -> Any:
        return value

    async def hang(self, value: Any) -> Any:
        self.hanging += 1
        self.hang_event.set()
        return await asyncio.shield(self._never)

    def call(self, name: str, value: Any) -> Any:
        return self.echo(value) if name == "echo" else self.hang(value)

    async def until_hanging(self, n: int) -> None:
        deadline = time.monotonic() + 60.0
        while self.hanging < n:
            self.hang_event.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"only {self.hanging} of {n} idle cells reached their call")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.hang_event.wait(), left)


# ---------------------------------------------------------------------------------------------
# Process measurements (Linux /proc)


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def process_tree(root: int | None = None) -> list[int]:
    root = os.getpid() if root is None else root
    kids = _children()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, ()))
    return out


def _rollup(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes of one process."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, pss


def tree_memory() -> dict[str, int]:
    pids = process_tree()
    rss = pss = threads = 0
    for pid in pids:
        r, p = _rollup(pid)
        rss += r
        pss += p
        with contextlib.suppress(OSError):
            threads += len(os.listdir(f"/proc/{pid}/task"))
    return {"rss": rss, "pss": pss, "threads": threads, "processes": len(pids)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def busy_after_stop(pids: list[int], window: float = 0.3) -> float:
    """Fraction of one core the given processes burn over ``window`` seconds after a stop: about
    0 when the runaway really stopped, about 1 when a thread still spins."""
    before = sum(cpu_seconds(p) for p in pids)
    await asyncio.sleep(window)
    return (sum(cpu_seconds(p) for p in pids) - before) / window


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def settle_memory() -> None:
    gc.collect()
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


# ---------------------------------------------------------------------------------------------
# Adapters. Each runs one cell per call of ``run``: create (or take the one made ahead),
# bridge, run, read the output, dispose.


class Adapter:
    name = ""
    runaway_method = ""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def before_cell(self) -> None:
        """Untimed housekeeping before each timed cell."""

    async def prepare_idle(self, n: int) -> None:
        """Untimed set-up before the idle-memory baseline is taken."""

    async def make_ahead(self) -> Any:
        """Create a sandbox ahead of time (not timed); ``None`` when the engine has its own pool
        of sandboxes created ahead."""
        return None

    async def run(self, key: str, ahead: Any = None) -> list[str]:
        raise NotImplementedError

    async def run_cold(self, key: str) -> list[str]:
        return await self.run(key)

    async def runaway(self) -> tuple[float, float]:
        """Start ``while(true){}``, stop it from the host at the deadline: (ms from the deadline
        until stopped, fraction of a core still burnt afterwards)."""
        raise NotPossible("not implemented")

    async def open_idle(self, n: int) -> None:
        raise NotPossible("not implemented")

    async def close_idle(self) -> None: ...

    def versions(self) -> dict[str, str]:
        return {}

    def installed_bytes(self) -> int | None:
        return None


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def _dist_bytes(dist: str) -> int | None:
    """Installed size of a distribution: the files its RECORD lists."""
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    total = 0
    for f in files:
        with contextlib.suppress(OSError):
            total += f.locate().stat().st_size
    return total


# --- codemode ----------------------------------------------------------------------------------
