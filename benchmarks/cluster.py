"""Sessions on Ray next to sessions in process: opening, nested calls, failover.

One run measures, side by side:

- **in process**: ``SessionRuntime`` in this process, plain and durable (``SqliteStore``);
- **cluster, 1/2/4 hosts**: ``SessionCluster`` on a real two-node Ray cluster started on this
  machine (``ray.cluster_utils.Cluster``: a head and one worker node, 1 CPU each, loopback only),
  sharing a ``SqliteStore`` file; the delegate runs in this process, so every nested call crosses
  from a host actor back here and its answer crosses back.

Figures per configuration:

- sessions opened per second (``--sessions`` opened concurrently), and shut down per second
  (all at once, each with a finished cell);
- nested calls per second: ``--sessions`` sessions, one cell each making ``--calls`` sequential
  ``echo`` calls, all at once;
- per-call latency: one cell making ``--calls`` sequential calls alone (median of 3), and its
  overhead over the in-process runtime;
- failover (cluster only, 2 hosts): a cell making calls while its host actor is killed
  (``ray.kill``), then while its whole node is removed (the raylet and every worker on it): the
  longest pause in its calls from the last one before the kill on, and whether the
  cell's output came out whole (every call once, nothing repeated).

Prints a table and writes benchmarks/results/cluster.json. Run:
``.venv/bin/python benchmarks/cluster.py`` (``--hosts 1 2 4``, ``--sessions 20``, ``--calls 200``,
``--no-failover``, ``--lease-seconds 2``). The machine is shared (2 cores): expect 20-40 % noise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from codemode import (
    Completed,
    CreateCellRequest,
    SessionRuntime,
    SqliteStore,
    TextItem,
    ToolDefinition,
    tools_delegate,
)

ROOT = Path(__file__).resolve().parent.parent
ECHO = ToolDefinition("echo", input_schema={"type": "object"})
MiB = 1024 * 1024
PER_CALL = "ms per call (one cell)"

Opener = Callable[[Any], Awaitable[Any]]  # delegate -> an open Session


def progress(text: str) -> None:
    """A progress line on stderr (the table goes to stdout at the end)."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def calls_source(n: int) -> str:
    return f"for (let i = 0; i < {n}; i++) {{ await tools.echo({{i}}); }}\ntext('done');"


def echo_delegate(seen: list[tuple[str, str]] | None = None, pause: float = 0.0) -> Any:
    async def echo(value: Any) -> Any:
        if pause:
            await asyncio.sleep(pause)
        return value

    delegate = tools_delegate({"echo": echo})
    if seen is None:
        return delegate

    class Recording:
        async def invoke_tool(self, call: Any) -> Any:
            seen.append((call.cell_id, call.call_id))
            return await delegate.invoke_tool(call)

        async def notify(self, call_id: str, cell_id: str, text: str) -> None:
            return None

    return Recording()


async def run_cell(session: Any, calls: int) -> Completed:
    cell = await session.create_cell(CreateCellRequest(calls_source(calls), (ECHO,)))
    while True:
        event = await session.wait(cell, 30.0)
        if isinstance(event, Completed):
            assert event.error_text is None, event.error_text
            return event


PHASE_TIMEOUT = 180.0
"""Seconds one phase may take: a phase that hangs is reported (and the run goes on)."""


async def measure(open_session: Opener, sessions: int, calls: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    try:
        async with asyncio.timeout(PHASE_TIMEOUT * 3):
            await _measure(open_session, sessions, calls, figures)
    except TimeoutError:
        progress(f"TIMED OUT after {figures}")
        figures["timed out (1 = yes)"] = 1.0
    return figures


async def _measure(
    open_session: Opener, sessions: int, calls: int, figures: dict[str, float]
) -> None:
    progress(f"opening {sessions} sessions")
    # Sessions opened per second.
    start = time.perf_counter()
    opened = await asyncio.gather(*(open_session(echo_delegate()) for _ in range(sessions)))
    figures["sessions opened/s"] = sessions / (time.perf_counter() - start)
    progress(f"{sessions} cells of {calls} calls at once")
    # Nested calls per second, every session at once.
    start = time.perf_counter()
    await asyncio.gather(*(run_cell(s, calls) for s in opened))
    figures["nested calls/s (all sessions)"] = sessions * calls / (time.perf_counter() - start)
    progress("one cell alone, 3 times")
    # Per-call latency, one cell alone.
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        await run_cell(opened[0], calls)
        runs.append((time.perf_counter() - start) / calls)
    figures[PER_CALL] = statistics.median(runs) * 1000
    progress(f"shutting {sessions} sessions down at once")
    start = time.perf_counter()
    await asyncio.gather(*(s.shutdown() for s in opened))
    figures["sessions shut down/s"] = sessions / (time.perf_counter() - start)


# ---------------------------------------------------------------------------- in process


async def in_process(args: argparse.Namespace, tmp: Path) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}

    async def plain(delegate: Any) -> Any:
        return SessionRuntime(delegate)

    progress("in process")
    results["in process"] = await measure(plain, args.sessions, args.calls)
    store = SqliteStore(tmp / "inprocess.db", lease_seconds=args.lease_seconds)
    if hasattr(SessionRuntime, "open"):  # durable sessions (docs/durability.md)

        async def durable(delegate: Any) -> Any:
            runtime = SessionRuntime(delegate, store=store)  # type: ignore[call-arg]
            return await runtime.open()

        try:
            results["in process, durable"] = await measure(durable, args.sessions, args.calls)
        finally:
            await store.close()
    return results


# ---------------------------------------------------------------------------- on Ray


@contextlib.contextmanager
def local_ray_cluster() -> Any:
    """A head and one worker node on this machine (1 CPU each, loopback only), torn down after."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    from ray.cluster_utils import Cluster

    node_args = {"num_cpus": 1, "object_store_memory": 80 * MiB}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={**node_args, "include_dashboard": False, "node_ip_address": "127.0.0.1"},
    )
    try:
        worker = cluster.add_node(**node_args)
        cluster.wait_for_nodes()
        yield cluster, worker
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        cluster.shutdown()


@contextlib.asynccontextmanager
async def session_cluster(address: str, store: Any, hosts: int) -> AsyncIterator[Any]:
    from codemode.cluster import SessionCluster

    cluster = await SessionCluster.start(store=store, hosts=hosts, address=address)
    try:
        yield cluster
    finally:
        try:
            async with asyncio.timeout(PHASE_TIMEOUT):
                await cluster.close()
        except TimeoutError:
            progress("TIMED OUT closing the cluster")


async def on_ray(args: argparse.Namespace, tmp: Path) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    with local_ray_cluster() as (ray_cluster, worker):
        for hosts in args.hosts:
            store = SqliteStore(tmp / f"cluster{hosts}.db", lease_seconds=args.lease_seconds)
            progress(f"cluster of {hosts} hosts")
            async with session_cluster(ray_cluster.address, store, hosts) as cluster:
                figures = await measure(cluster.session, args.sessions, args.calls)
                results[f"cluster, {hosts} host{'s' if hosts > 1 else ''}"] = figures
                if hosts == 1:
                    progress("host memory")
                    async with asyncio.timeout(PHASE_TIMEOUT):
                        results["memory, 1 host"] = await host_memory(cluster, args.memory_sessions)
            await store.close()
        if not args.no_failover:
            store = SqliteStore(tmp / "failover.db", lease_seconds=args.lease_seconds)
            async with session_cluster(ray_cluster.address, store, 2) as cluster:
                progress("failover: host actor killed")
                async with asyncio.timeout(PHASE_TIMEOUT):
                    results["failover, host actor killed"] = await failover(cluster, None)
                progress("failover: node removed")
                async with asyncio.timeout(PHASE_TIMEOUT):
                    results["failover, node removed"] = await failover(
                        cluster, (ray_cluster, worker)
                    )
            await store.close()
    return results


class Timed:
    """A delegate whose ``echo`` takes 20 ms; it stamps every call it receives."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.stamps: list[float] = []
        self.going = asyncio.Event()

    async def invoke_tool(self, call: Any) -> Any:
        self.seen.append(call.call_id)
        self.stamps.append(time.perf_counter())
        if len(self.stamps) >= 10:
            self.going.set()
        await asyncio.sleep(0.02)
        return call.input

    async def notify(self, call_id: str, cell_id: str, text: str) -> None:
        return None


async def failover(cluster: Any, node: tuple[Any, Any] | None) -> dict[str, float]:
    """Kill the host (or remove the node) of a session whose cell is making calls; time the gap
    in its calls and check its output came out whole."""
    import ray

    calls = 80
    opened = []
    for _ in range(2):  # placement by load: the second session goes to the other host
        delegate = Timed()
        session = await cluster.session(delegate)
        cell = await session.create_cell(CreateCellRequest(calls_source(calls), (ECHO,)))
        opened.append((delegate, session, cell))
    await asyncio.gather(*(d.going.wait() for d, _, _ in opened))
    where = {h.actor_name: h for h in await cluster.hosts()}
    if node is None:
        delegate, session, cell = opened[0]
        victim = where[session.host_name]
        killed_at = time.perf_counter()
        ray.kill(ray.get_actor(victim.actor_name, namespace=victim.namespace), no_restart=False)
    else:
        ray_cluster, worker = node
        on_worker = [o for o in opened if where[o[1].host_name].node_id == worker.node_id]
        assert on_worker, "no session was placed on the worker node"
        delegate, session, cell = on_worker[0]
        killed_at = time.perf_counter()
        ray_cluster.remove_node(worker)
    events = await asyncio.gather(*(run_events(s, c) for _, s, c in opened))
    before = [t for t in delegate.stamps if t < killed_at]
    # The longest pause in the cell's calls from its last call before the kill on: the old host
    # may still answer a call or two after `killed_at` (a kill takes effect a moment later).
    stamps = sorted(delegate.stamps)[max(len(before) - 1, 0) :]
    gap = max((b - a for a, b in itertools.pairwise(stamps)), default=float("nan"))
    whole = all(
        len(set(d.seen)) == calls and e.error_text is None and e.items[-1] == TextItem("done")
        for (d, _, _), e in zip(opened, events, strict=True)
    )
    for _, s, _ in opened:
        await s.shutdown()
    return {
        "failover s (gap in calls)": gap if before else float("nan"),
        "calls before the kill": float(len(before)),
        "calls asked again": float(len(delegate.seen) - len(set(delegate.seen))),
        "output whole (1 = yes)": 1.0 if whole else 0.0,
    }


async def host_memory(cluster: Any, sessions: int) -> dict[str, float]:
    """RSS of the one host: idle, per open session, per idle live cell (same machine: /proc)."""
    import ray

    (info,) = await cluster.hosts()
    pid = (await ray.get_actor(info.actor_name, namespace=info.namespace).info.remote())["pid"]

    def rss() -> float:
        with open(f"/proc/{pid}/status") as status:
            line = next(x for x in status if x.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024

    idle = rss()
    opened = [await cluster.session(echo_delegate()) for _ in range(sessions)]
    with_sessions = rss()
    forever = CreateCellRequest("await tools.echo({}); await new Promise(() => {});", (ECHO,))
    for session in opened:
        await session.create_cell(forever)
    await asyncio.sleep(2.0)
    with_cells = rss()
    await asyncio.gather(*(s.shutdown() for s in opened))
    return {
        "host RSS MiB (sessions closed)": idle,
        "MiB per open session": (with_sessions - idle) / sessions,
        "MiB per idle live cell": (with_cells - with_sessions) / sessions,
    }


async def run_events(session: Any, cell: Any) -> Completed:
    while True:
        event = await session.wait(cell, 60.0)
        if isinstance(event, Completed):
            return event


# ---------------------------------------------------------------------------- main


def table(results: dict[str, dict[str, float]]) -> str:
    """One table per set of figures (throughput, memory, failover): configurations as rows."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for config, figures in results.items():
        groups.setdefault(tuple(figures), []).append(config)
    out: list[str] = []
    for names, configs in groups.items():
        width = max(len(c) for c in configs)
        cols = [max(len(n), 10) for n in names]
        out.append(
            f"{'':{width}}  " + "  ".join(f"{n:>{w}}" for n, w in zip(names, cols, strict=True))
        )
        for config in configs:
            cells = (f"{results[config][n]:>{w},.2f}" for n, w in zip(names, cols, strict=True))
            out.append(f"{config:{width}}  " + "  ".join(cells))
        out.append("")
    return "\n".join(out)


def add_overhead(results: dict[str, dict[str, float]]) -> None:
    """Each configuration's per-call overhead over the plain in-process runtime, in ms."""
    base = results.get("in process", {}).get(PER_CALL)
    if base is None:
        return
    for figures in results.values():
        if PER_CALL in figures:
            figures["ms per call over in process"] = figures[PER_CALL] - base


def dump_tasks() -> None:
    """SIGUSR1: print the stack of every asyncio task on stderr (to see where a run waits)."""
    for task in asyncio.all_tasks():
        task.print_stack(file=sys.stderr)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--lease-seconds", type=float, default=2.0)
    parser.add_argument("--memory-sessions", type=int, default=100)
    parser.add_argument("--no-failover", action="store_true")
    parser.add_argument("--no-ray", action="store_true", help="in-process figures only")
    return parser.parse_args()


async def main(args: argparse.Namespace) -> None:
    with contextlib.suppress(NotImplementedError, RuntimeError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump_tasks)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        results = await in_process(args, tmp)
        if not args.no_ray:
            results.update(await on_ray(args, tmp))
    add_overhead(results)
    print(table(results))
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "cluster.json").write_text(
        json.dumps(
            {"machine": platform.platform(), "args": vars(args), "results": results}, indent=2
        )
    )


if __name__ == "__main__":
    arguments = parse_args()  # before the loop: --help and usage errors exit without a traceback
    try:
        asyncio.run(main(arguments))
    except BaseException:
        import traceback

        traceback.print_exc()  # before Ray's exit handlers run
        sys.stderr.flush()
        raise
