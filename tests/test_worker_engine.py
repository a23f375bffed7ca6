"""The worker-process engine (WorkerEngine) and the in-process RSS watchdog (GuardedEngine).

Every test that runs hostile or crashing cells checks with a heartbeat that the host's event
loop never stalls for more than 50 ms, and the native-memory tests check that the host's own
resident memory stays flat while a worker grows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from codemode import (
    CellLimits,
    Completed,
    EngineError,
    Pending,
    SessionRuntime,
    Terminated,
    TextItem,
    ToolDefinition,
    Yielded,
)
from codemode.engine.base import CellBoot, OutputProduced, ToolCallRequested, ToolResultInput
from codemode.engine.watchdog import GuardedEngine, rss_error_text
from codemode.engine.worker import WorkerEngine, _Malformed, _raw_report
from conftest import RecordingDelegate, request, rss_bytes
from scenarios import Heartbeat, heartbeat

MiB = 1024 * 1024
HANG = 30.0
LOST = "exec runtime ended unexpectedly"
INTL_FLOOD = (
    'text("start"); const keep = [];'
    "for (let i = 0; ; i++) keep.push(new Intl.DateTimeFormat('en', "
    "{timeZone: 'UTC', hour: 'numeric', minute: String(i % 2 ? 'numeric' : '2-digit')}));"
)


def T(*texts: str) -> tuple[TextItem, ...]:
    return tuple(TextItem(t) for t in texts)


def strict_heartbeat(limit: float = 0.05) -> contextlib.AbstractAsyncContextManager[Heartbeat]:
    """The event loop never stalls for more than ``limit`` seconds inside the block, time spent
    waiting for a CPU aside (scenarios.heartbeat)."""
    return heartbeat(limit)


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def until(predicate: Any) -> None:
    async with asyncio.timeout(HANG):
        while not predicate():  # noqa: ASYNC110 - polling process state
            await asyncio.sleep(0.01)


@pytest.fixture
async def make_worker_runtime(
    delegate: RecordingDelegate,
) -> AsyncIterator[Any]:
    created: list[SessionRuntime] = []

    def make(limits: CellLimits | None = None, **engine_kw: Any) -> SessionRuntime:
        rt = SessionRuntime(delegate, limits=limits, engine=WorkerEngine(**engine_kw))
        created.append(rt)
        return rt

    try:
        yield make
    finally:
        for rt in created:
            await asyncio.wait_for(rt.shutdown(), HANG)


@pytest.fixture
async def wrt(make_worker_runtime: Any) -> SessionRuntime:
    rt: SessionRuntime = make_worker_runtime()
    return rt


def engine_of(rt: SessionRuntime) -> WorkerEngine:
    engine = rt._core.engine
    assert isinstance(engine, WorkerEngine)
    return engine


# ---------------------------------------------------------------------- the contract basics


async def test_continuing_cell_calls_tools_yields_and_stores(
    wrt: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cell = await wrt.create_cell(
        request(
            'text("a"); const r = await tools.echo({x: 1}); text(JSON.stringify(r));'
            'yield_control(); const u = await tools.upper("hi"); text(u); store("k", {v: [1, 2]});'
            'console.log("log", 2); notify("note");'
        )
    )
    assert await asyncio.wait_for(wrt.wait(cell, HANG), HANG) == Yielded(T("a", '{"x":1}'))
    assert await asyncio.wait_for(wrt.wait(cell, HANG), HANG) == Completed(T("HI", "log 2"))
    assert delegate.names() == ["echo", "upper"]
    assert delegate.calls[0].input == {"x": 1} and delegate.calls[1].input == "hi"
    await until(lambda: len(delegate.notifications) == 1)
    second = await wrt.create_cell(request('text(JSON.stringify(load("k")))'))
    assert await asyncio.wait_for(wrt.wait(second, HANG), HANG) == Completed(T('{"v":[1,2]}'))


async def test_errors_timers_and_limits_cross_the_pipe(make_worker_runtime: Any) -> None:
    rt = make_worker_runtime(CellLimits(max_tool_calls=2))
    cell = await rt.create_cell(
        request(
            "await new Promise(r => setTimeout(r, 20)); text('t');"
            "try { await tools.fail({message: 'nope'}) } catch (e) { text(String(e.message)) }"
            "await tools.echo({}); await tools.echo({});"
        )
    )
    event = await asyncio.wait_for(rt.wait(cell, HANG), HANG)
    assert event == Completed(T("t", "nope"), "exec cell exceeded max_tool_calls (2)")
    cell = await rt.create_cell(request("throw new TypeError('boom')"))
    event = await asyncio.wait_for(rt.wait(cell, HANG), HANG)
    assert isinstance(event, Completed) and "TypeError: boom" in (event.error_text or "")


async def test_pausable_cell_frontiers_and_resume(
    wrt: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cell = await wrt.create_pausable_cell(
        request(
            'text("p"); const [a, b] = await Promise.all([tools.echo({n: 1}), tools.echo({n: 2})]);'
            'text(String(a.n + b.n)); await tools.echo({n: 3}); text("end")'
        )
    )
    first = await asyncio.wait_for(wrt.wait_to_pending(cell), HANG)
    assert isinstance(first, Pending)
    assert first.frontier.items == T("p")
    assert first.frontier.pending_tool_call_ids == ("tool-1", "tool-2")
    await wrt.resume(cell, first.frontier.generation)
    second = await asyncio.wait_for(wrt.wait_to_pending(cell), HANG)
    assert isinstance(second, Pending)
    assert second.frontier.items == T("3")
    assert second.frontier.pending_tool_call_ids == ("tool-3",)
    await wrt.resume(cell, second.frontier.generation)
    last = await asyncio.wait_for(wrt.wait_to_pending(cell), HANG)
    assert last == Completed(T("end"))


async def test_one_worker_per_engine_started_lazily(make_worker_runtime: Any) -> None:
    rt = make_worker_runtime()
    engine = engine_of(rt)
    assert engine.worker_pids() == []
    cells = [await rt.create_cell(request(f"await tools.block({{}}); text('{n}')")) for n in "ab"]
    await until(lambda: len(engine.worker_pids()) == 1)
    assert len(engine.stats()) == 1 and engine.stats()[0]["cells"] == 2
    other = make_worker_runtime(cells_per_worker=1)
    two = [await other.create_cell(request("await tools.block({})")) for _ in range(2)]
    assert len(set(engine_of(other).worker_pids())) == 2
    for c in cells + two:
        await rt.terminate(c.cell_id) if c in cells else await other.terminate(c.cell_id)


async def test_the_worker_is_in_its_own_process_group_of_the_hosts_session(
    make_worker_runtime: Any,
) -> None:
    """A Ctrl-C at the terminal (its foreground process group) is the host's to handle, but the
    worker stays in the host's session: Linux schedules a session as one group (autogroup)."""
    rt = make_worker_runtime()
    cell = await rt.create_cell(request("text('x')"))
    await asyncio.wait_for(rt.wait(cell, HANG), HANG)
    [pid] = engine_of(rt).worker_pids()
    assert os.getpgid(pid) == pid != os.getpgid(0)
    assert os.getsid(pid) == os.getsid(0)


async def test_a_worker_without_an_rss_budget_keeps_serving_completed_cells(
    make_worker_runtime: Any,
) -> None:
    """With the watchdog off, a cell that completes without error is not a watchdog stop: the
    worker keeps serving the session (it used to be retired after every completed cell)."""
    rt = make_worker_runtime(rss_budget_bytes=None)
    engine = engine_of(rt)
    pids = []
    for n in range(3):
        cell = await rt.create_cell(request(f"text('{n}')"))
        assert await asyncio.wait_for(rt.wait(cell, HANG), HANG) == Completed(T(str(n)))
        pids.append(engine.worker_pids())
    assert len(pids[0]) == 1 and pids == [pids[0]] * 3


async def test_results_cross_the_pipe_as_json_text_intact() -> None:
    """A result's value goes to the worker as its JSON text in a string (docs/engines.md):
    newlines, quotes, backslashes, characters outside the BMP, lone surrogates, nesting, many
    results in one step and failed calls all arrive as the delegate gave them."""
    from codemode import CreateCellRequest, tools_delegate

    async def echo(value: Any) -> Any:
        return value

    async def fail(value: Any) -> Any:
        raise ValueError('no "luck"\nat all')

    limits = CellLimits(max_parallel_tool_calls=300, max_tool_calls=1000)
    delegate = tools_delegate({"echo": echo, "fail": fail})
    async with SessionRuntime(delegate, limits=limits, engine=WorkerEngine()) as rt:
        source = (
            "const odd = 'a\\nb\\\\\"c\\u2028\\u{1F600}\\ud800\\n';"
            "const r = await Promise.all(Array.from({length: 200},"
            " (_, i) => tools.echo({i, s: i % 50 ? 'y' : odd, deep: [[{x: [i]}]]})));"
            "let err; try { await tools.fail({}) } catch (e) { err = e.message }"
            "text(String(r.reduce((a, x) => a + x.i + x.deep[0][0].x[0], 0)));"
            "text(String(r.filter(x => x.s === odd).length)); text(err)"
        )
        tools = (ToolDefinition("echo"), ToolDefinition("fail"))
        cell = await rt.create_cell(CreateCellRequest(source, tools))
        event = await asyncio.wait_for(rt.wait(cell, HANG), HANG)
    assert isinstance(event, Completed) and event.error_text is None, event
    assert event.items[:2] == T(str(2 * sum(range(200))), "4")
    assert isinstance(event.items[2], TextItem) and 'no "luck"\nat all' in event.items[2].text


# ---------------------------------------------------------------------- what the OS boundary buys


async def test_native_memory_flood_ends_with_a_clear_error_and_host_rss_stays_flat(
    make_worker_runtime: Any,
) -> None:
    rt = make_worker_runtime(CellLimits(max_cpu_seconds=60), rss_budget_bytes=400 * MiB)
    warm = await rt.create_cell(request("text(new Intl.DateTimeFormat('en').format(0))"))
    await asyncio.wait_for(rt.wait(warm, HANG), HANG)
    pid = engine_of(rt).worker_pids()[0]
    host_before = rss_bytes()
    async with strict_heartbeat():
        cell = await rt.create_cell(request(INTL_FLOOD))
        event = await asyncio.wait_for(rt.wait(cell, HANG), HANG)
    assert event == Completed(T("start"), rss_error_text(400 * MiB))
    assert rss_bytes() - host_before < 30 * MiB, "the host grew: the memory was not the worker's"
    # The grown worker takes no new cells and ends; the session goes on in a fresh one.
    after = await rt.create_cell(request("text('fresh')"))
    assert await asyncio.wait_for(rt.wait(after, HANG), HANG) == Completed(T("fresh"))
    assert pid not in engine_of(rt).worker_pids()
    await until(lambda: not alive(pid))


async def test_os_memory_limit_kills_only_the_worker(make_worker_runtime: Any) -> None:
    # No watchdog: the worker's RLIMIT_DATA is the last line (V8 itself commits ~0.6 GiB).
    rt = make_worker_runtime(
        CellLimits(max_cpu_seconds=60), rss_budget_bytes=None, memory_limit_bytes=1280 * MiB
    )
    host_before = rss_bytes()
    async with strict_heartbeat():
        cell = await rt.create_cell(request(INTL_FLOOD))
        event = await asyncio.wait_for(rt.wait(cell, HANG), HANG)
    assert event == Completed((), LOST)
    assert rss_bytes() - host_before < 30 * MiB
    again = await rt.create_cell(request("text('alive')"))
    assert await asyncio.wait_for(rt.wait(again, HANG), HANG) == Completed(T("alive"))


async def test_deep_json_parse_is_bounded(make_worker_runtime: Any) -> None:
    rt = make_worker_runtime(
        CellLimits(max_cpu_seconds=60, max_heap_bytes=512 * MiB), rss_budget_bytes=300 * MiB
    )
    host_before = rss_bytes()
    async with strict_heartbeat():
        cell = await rt.create_cell(
            request('const s = "[".repeat(3e7) + "]".repeat(3e7); JSON.parse(s); text("parsed")')
        )
        event = await asyncio.wait_for(rt.wait(cell, HANG), HANG)
    assert isinstance(event, Completed)
    assert event.error_text in (rss_error_text(300 * MiB), LOST) or "RangeError" in str(
        event.error_text
    ), event
    assert rss_bytes() - host_before < 30 * MiB
    again = await rt.create_cell(request("text('alive')"))
    assert await asyncio.wait_for(rt.wait(again, HANG), HANG) == Completed(T("alive"))


async def test_sigkill_of_the_worker_mid_call_ends_its_cells_and_the_session_goes_on(
    wrt: SessionRuntime, delegate: RecordingDelegate, caplog: pytest.LogCaptureFixture
) -> None:
    engine = engine_of(wrt)
    one = await wrt.create_cell(request('text("one"); await tools.block({}); text("never")'))
    two = await wrt.create_pausable_cell(request('text("two"); await tools.echo({})'))
    frontier = await asyncio.wait_for(wrt.wait_to_pending(two), HANG)
    assert isinstance(frontier, Pending)
    await delegate.wait_calls(1)
    [pid] = engine.worker_pids()
    async with strict_heartbeat():
        os.kill(pid, signal.SIGKILL)
        assert await asyncio.wait_for(wrt.wait(one, HANG), HANG) == Completed(T("one"), LOST)
        assert await asyncio.wait_for(wrt.wait_to_pending(two), HANG) == Completed((), LOST)
    assert delegate.cancelled == ["tool-1"]
    assert any(f"worker process {pid} was killed by SIGKILL" in r.message for r in caplog.records)
    later = await wrt.create_cell(request("text(String(await tools.echo({n: 5}).then(r => r.n)))"))
    assert await asyncio.wait_for(wrt.wait(later, HANG), HANG) == Completed(T("5"))
    assert engine.worker_pids() and pid not in engine.worker_pids()


async def test_a_dead_worker_ends_only_its_own_sessions_cells(
    make_worker_runtime: Any, delegate: RecordingDelegate
) -> None:
    a, b = make_worker_runtime(), make_worker_runtime()
    cell_a = await a.create_cell(request("await tools.block({}); text('a')"))
    cell_b = await b.create_cell(request("await tools.block({}); text('b')"))
    await delegate.wait_calls(2)
    os.kill(engine_of(a).worker_pids()[0], signal.SIGKILL)
    assert await asyncio.wait_for(a.wait(cell_a, HANG), HANG) == Completed((), LOST)
    delegate.release()
    assert await asyncio.wait_for(b.wait(cell_b, HANG), HANG) == Completed(T("b"))


async def test_runaway_cells_are_terminated_within_milliseconds(wrt: SessionRuntime) -> None:
    async with strict_heartbeat():
        for source in (
            'text("spin"); while (true) {}',
            'text("a"); await new Promise(r => setTimeout(r, 1)); while (true) {}',
            "await tools.echo({}); for (;;) {}",
        ):
            cell = await wrt.create_cell(request(source))
            await asyncio.sleep(0.2)
            started = time.monotonic()
            event = await asyncio.wait_for(wrt.terminate(cell), HANG)
            assert time.monotonic() - started < 2.0  # typically milliseconds; a loaded CI
            assert isinstance(event, Terminated)
    cell = await wrt.create_cell(request('text("ok")'))
    assert await asyncio.wait_for(wrt.wait(cell, HANG), HANG) == Completed(T("ok"))


async def test_cpu_budget_is_enforced_in_the_worker(make_worker_runtime: Any) -> None:
    rt = make_worker_runtime(CellLimits(max_cpu_seconds=0.3))
    warm = await rt.create_cell(request('text("warm")'))
    await asyncio.wait_for(rt.wait(warm, HANG), HANG)
    [before] = engine_of(rt).stats()
    async with strict_heartbeat():
        cell = await rt.create_cell(request('text("x"); while (true) {}'))
        event = await asyncio.wait_for(rt.wait(cell, HANG), HANG)
    assert event == Completed(T("x"), "exec cell exceeded max_cpu_seconds (0.3)")
    [after] = engine_of(rt).stats()
    assert after["pid"] == before["pid"]
    assert after["cpu_seconds"] > before["cpu_seconds"]  # the spin is the worker's CPU time


async def test_no_worker_outlives_shutdown(delegate: RecordingDelegate) -> None:
    pids: list[int] = []
    for _ in range(2):
        engine = WorkerEngine()
        rt = SessionRuntime(delegate, engine=engine)
        await rt.create_cell(request("await tools.block({})"))
        await rt.create_cell(request("while (true) {}"))
        await until(lambda engine=engine: len(engine.worker_pids()) == 1)  # type: ignore[misc]
        pids += engine.worker_pids()
        await asyncio.wait_for(rt.shutdown(), HANG)
        assert engine.worker_pids() == []
    for pid in pids:
        assert not alive(pid), f"worker {pid} outlived its session"


def test_workers_die_with_their_host(tmp_path: Path) -> None:
    """A host killed outright (no cleanup at all) takes its workers with it."""
    script = tmp_path / "host.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, sys
            from codemode import SessionRuntime, CreateCellRequest, tools_delegate
            from codemode.engine.worker import WorkerEngine

            async def main():
                engine = WorkerEngine()
                rt = SessionRuntime(tools_delegate({}), engine=engine)
                await rt.create_cell(CreateCellRequest("while (true) {}"))
                while not engine.worker_pids():
                    await asyncio.sleep(0.01)
                print(engine.worker_pids()[0], flush=True)
                await asyncio.sleep(3600)

            asyncio.run(main())
            """
        )
    )
    host = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert host.stdout is not None
        pid = int(host.stdout.readline())
        assert alive(pid)
    finally:
        host.kill()
        host.wait()
    deadline = time.monotonic() + HANG
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(pid), "the worker outlived its host"


# ---------------------------------------------------------------------- the host trusts nothing


FAKE_WORKER = """
import json, os, sys
out = os.fdopen(1, "w")
print(json.dumps({"ready": os.getpid()}), file=out, flush=True)
MODE = %r
# What a worker whose V8 was subverted could send: drain reports written by hand.
DRAINS = {
    "forged": '{"ev":[["call","tool-1",7,{}]],"pending":["tool-1"],"settled":null}',
    "over_limit": '{"ev":[' + ",".join(
        '["call","tool-%%d",0,{}]' %% n for n in range(1, 4)) + '],"pending":null,"settled":null}',
    "out_of_sequence": '{"ev":[["call","tool-5",0,{}]],"pending":["tool-5"],"settled":null}',
    "unknown_pending": '{"ev":[["text","a"]],"pending":["tool-9"],"settled":null}',
    "flood": '{"ev":[' + ",".join(['["text","' + "x" * 100 + '"]'] * 20)
        + '],"pending":null,"settled":null}',
    "mute": '{"ev":[["text","hi"],["call","tool-1",0,{}]],"pending":["tool-1"],"settled":null}',
}
for line in sys.stdin:
    msg = json.loads(line.split("\t")[0])  # a step's line: its command, a tab, its inputs
    if msg.get("op") == "open":
        print(json.dumps({"i": msg["i"]}), file=out, flush=True)
    elif msg.get("op") == "run":
        if MODE == "garbage":
            print("not json at all", file=out, flush=True)
        elif MODE == "huge":
            report = {"raw": "x" * 3000000, "cpu": 0}
            print(json.dumps({"i": msg["i"], "r": report}), file=out, flush=True)
        elif MODE == "envelope":  # a report whose envelope breaks the protocol
            report = {"raw": None, "cpu": -1}
            print(json.dumps({"i": msg["i"], "r": report}), file=out, flush=True)
        else:
            report = {"raw": DRAINS[MODE], "cpu": 0}
            print(json.dumps({"i": msg["i"], "r": report}), file=out, flush=True)
        # "mute": one valid report, then never another answer
"""


@pytest.fixture
def fake_python(tmp_path: Path) -> Iterator[Any]:
    def make(mode: str) -> str:
        stub = tmp_path / f"stub_{mode}.py"
        stub.write_text(FAKE_WORKER % mode)
        launcher = tmp_path / f"python_{mode}"
        launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{stub}"\n')
        launcher.chmod(0o755)
        return str(launcher)

    yield make


@pytest.mark.parametrize("mode", ["garbage", "huge", "envelope"])
async def test_a_worker_that_breaks_the_protocol_is_killed(
    make_worker_runtime: Any,
    delegate: RecordingDelegate,
    fake_python: Any,
    mode: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rt = make_worker_runtime(python=fake_python(mode), max_message_bytes=1 << 20)
    cell = await rt.create_cell(request("text('x')"))
    event = await asyncio.wait_for(rt.wait(cell, HANG), HANG)
    assert event == Completed((), LOST)
    assert delegate.calls == []
    assert any("malformed answer" in r.message for r in caplog.records)
    assert engine_of(rt).worker_pids() == []


REFUSED = "exec cell sent a report the host refused: "


@pytest.mark.parametrize(
    ("mode", "error", "output", "calls"),
    [
        ("forged", REFUSED + "call tool-1 names no tool (7)", (), 0),
        ("out_of_sequence", REFUSED + "call id 'tool-5' where 'tool-1' was due", (), 0),
        ("unknown_pending", REFUSED + "pending names no outstanding call ('tool-9')", ("a",), 0),
        ("over_limit", "exec cell exceeded max_tool_calls (2)", (), 2),
        ("flood", "exec cell exceeded max_output_bytes (1000)", ("x" * 100,) * 10, 0),
    ],
)
async def test_the_host_checks_what_a_subverted_worker_reports(
    make_worker_runtime: Any,
    delegate: RecordingDelegate,
    fake_python: Any,
    mode: str,
    error: str,
    output: tuple[str, ...],
    calls: int,
) -> None:
    """A worker checks nothing: its host checks every drain against its own record of the
    cell (ids in sequence, known tools, outstanding calls, the cell's limits), so a worker
    that lies gets no further than a hostile cell in process."""
    limits = CellLimits(max_tool_calls=2, max_output_bytes=1000)
    rt = make_worker_runtime(limits=limits, python=fake_python(mode))
    cell = await rt.create_cell(request("text('x')"))
    event = await asyncio.wait_for(rt.wait(cell, HANG), HANG)
    assert event == Completed(T(*output), error)
    assert len(delegate.calls) <= calls  # the calls before the offending one may start
    assert len(engine_of(rt).worker_pids()) == 1  # a refused report is the cell's, not the worker's


async def test_an_unresponsive_worker_is_killed_by_terminate(
    make_worker_runtime: Any, delegate: RecordingDelegate, fake_python: Any
) -> None:
    rt = make_worker_runtime(python=fake_python("mute"))
    cell = await rt.create_cell(request("text('hi'); await tools.echo({})"))
    await delegate.wait_calls(1)
    [pid] = engine_of(rt).worker_pids()
    await asyncio.sleep(0.05)  # the echo result went to the worker, which never answers
    async with strict_heartbeat():
        started = time.monotonic()
        event = await asyncio.wait_for(rt.terminate(cell), HANG)
    assert time.monotonic() - started < 3.0
    assert isinstance(event, Terminated)
    await until(lambda: not alive(pid))


async def test_a_worker_that_cannot_start_raises_engine_error(
    make_worker_runtime: Any, tmp_path: Path
) -> None:
    broken = tmp_path / "python_broken"
    broken.write_text("#!/bin/sh\necho 'no python here' >&2\nexit 3\n")
    broken.chmod(0o755)
    rt = make_worker_runtime(python=str(broken))
    with pytest.raises(EngineError, match="worker process"):
        await asyncio.wait_for(rt.create_cell(request("text('x')")), HANG)


@pytest.mark.parametrize(
    "report",
    [
        [],
        {"cpu": 0},
        {"raw": "x"},
        {"raw": 5, "cpu": 0},
        {"raw": ["x"], "cpu": 0},
        {"raw": "x", "cpu": -1},
        {"raw": "x", "cpu": "1"},
        {"raw": "x", "cpu": float("nan")},
        {"raw": "x", "cpu": 0, "rd": "not base64!"},
        {"raw": "x", "cpu": 0, "rd": 5},
        {"raw": "x", "cpu": 0, "j": "x"},
        {"raw": "x", "cpu": 0, "j": [[1]]},
        {"raw": "x", "cpu": 0, "j": [["1", "a"]]},
        {"raw": "x", "cpu": 0, "j": [[1, 2]]},
        {"raw": "x", "cpu": 0, "lim": "max_nothing"},
        {"raw": "x", "cpu": 0, "end": 5},
    ],
)
def test_malformed_envelopes_are_rejected(report: Any) -> None:
    with pytest.raises((_Malformed, KeyError)):
        _raw_report(report)


def test_valid_envelopes_are_decoded() -> None:
    raw = _raw_report(
        {
            "raw": '{"ev":[],"pending":null,"settled":null}',
            "cpu": 0.25,
            "rd": "AAAAAAAA8D8=",
            "j": [[1, "a"], [2, "auto data:,"]],
            "lim": "max_cpu_seconds",
            "end": "stopped",
        }
    )
    assert raw.cpu_seconds == 0.25 and raw.reads == b"\x00" * 6 + b"\xf0?"
    assert raw.journal == ((1, "a"), (2, "auto data:,"))
    assert (raw.limit, raw.ending) == ("max_cpu_seconds", "stopped")
    assert _raw_report({"raw": None, "cpu": 0}).raw is None
    assert _raw_report({"raw": 0, "cpu": 0}).raw == 0  # a drain that was not text: refused later


def test_worker_engine_takes_no_required_arguments() -> None:
    engine = WorkerEngine()
    assert engine.name == "worker"
    with pytest.raises(ValueError):
        WorkerEngine(memory_limit_bytes=0)
    with pytest.raises(ValueError):
        GuardedEngine(rss_budget_bytes=0)


def test_the_wire_carries_only_json() -> None:
    """The worker module never unpickles anything the child sends."""
    source = Path(__file__).parents[1] / "src/codemode/engine/worker.py"
    text = source.read_text()
    assert "pickle" not in text and "marshal" not in text
    assert json.loads('{"a": 1}') == {"a": 1}


async def test_a_step_cancelled_while_its_line_is_still_being_sent_is_abandoned() -> None:
    """A step with 2 MiB of tool results waits for the pipe to the worker to take its line;
    ``terminate`` cancelling it then must abandon the command it already sent, as it does one
    cancelled while awaiting its answer: the worker is told to stop it, and an answer it sends
    anyway is kept for the stop (here the worker is stopped with SIGSTOP so that the host's
    write buffer fills). Before the fix nothing was abandoned: the worker ran the step to its
    end and its answer was dropped."""
    engine = WorkerEngine()
    try:
        source = "text('a'); const r = await tools.echo({}); text('b' + r.length);"
        boot = CellBoot("c", source, (ToolDefinition("echo"),), {}, CellLimits(), False)
        cell: Any = await engine.open_cell(boot)
        report = await cell.run()
        (call,) = [e for e in report.events if isinstance(e, ToolCallRequested)]
        (pid,) = engine.worker_pids()
        big = ToolResultInput(call.call_id, True, value_json=json.dumps("x" * (2 << 20)))
        os.kill(pid, signal.SIGSTOP)
        try:
            task = asyncio.create_task(cell.step([big]))
            await asyncio.sleep(0.3)  # the line fills the pipe and the host's buffer
            assert not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert cell._late is not None, "the command sent was not abandoned"
        finally:
            os.kill(pid, signal.SIGCONT)
        events = await asyncio.wait_for(cell.stop(), HANG)
        texts = [e.item for e in events if isinstance(e, OutputProduced)]
        # Stopped before or after it wrote: either way nothing twice, and nothing after it.
        assert texts in ([], [TextItem(f"b{2 << 20}")])
        assert not cell._child.pending and not cell._child.unclaimed
    finally:
        await engine.aclose()


async def test_a_step_cancelled_while_its_big_answer_is_decoded_keeps_that_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An answer over 1 MiB is decoded on a thread; a ``terminate`` that cancels the step
    meanwhile must not lose it: the worker already emptied the cell into that answer, so the
    stop gives its output, once."""
    import threading

    from codemode.engine import worker as worker_mod

    decoding, release = threading.Event(), threading.Event()
    loads = worker_mod._loads

    def held_loads(line: bytes) -> Any:
        if len(line) > worker_mod._BIG_MESSAGE:
            decoding.set()
            release.wait(HANG)
        return loads(line)

    monkeypatch.setattr(worker_mod, "_loads", held_loads)
    engine = WorkerEngine()
    try:
        source = "text('a'); await tools.echo({}); text('y'.repeat(1500000)); text('z');"
        limits = CellLimits(max_output_bytes=4 << 20)
        boot = CellBoot("c", source, (ToolDefinition("echo"),), {}, limits, False)
        cell: Any = await engine.open_cell(boot)
        report = await cell.run()
        (call,) = [e for e in report.events if isinstance(e, ToolCallRequested)]
        task = asyncio.create_task(cell.step([ToolResultInput(call.call_id, True, "{}")]))
        assert await asyncio.to_thread(decoding.wait, HANG), "no big answer came"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cell._late is not None, "the abandoned command's answer has no place"
        release.set()
        events = await asyncio.wait_for(cell.stop(), HANG)
        texts = [e.item for e in events if isinstance(e, OutputProduced)]
        assert texts == [TextItem("y" * 1500000), TextItem("z")]
        assert not cell._child.pending and not cell._child.unclaimed
    finally:
        release.set()
        await engine.aclose()


# ---------------------------------------------------------------------- in-process watchdog


async def test_in_process_watchdog_stops_the_cell_that_grew_the_process(
    delegate: RecordingDelegate,
) -> None:
    budget = rss_bytes() + 300 * MiB
    engine = GuardedEngine(rss_budget_bytes=budget)
    async with SessionRuntime(delegate, engine=engine, limits=CellLimits(max_cpu_seconds=60)) as rt:
        bystander = await rt.create_cell(request("await tools.block({}); text('calm')"))
        async with strict_heartbeat():
            cell = await rt.create_cell(request(INTL_FLOOD))
            event = await asyncio.wait_for(rt.wait(cell, HANG), HANG)
        assert event == Completed(T("start"), rss_error_text(budget))
        delegate.release()
        assert await asyncio.wait_for(rt.wait(bystander, HANG), HANG) == Completed(T("calm"))


def test_rss_samples_follow_the_process_across_a_fork() -> None:
    """The watchdog keeps /proc/self/statm open; a forked child must sample itself, not the
    parent it was forked from."""
    script = textwrap.dedent(
        """
        import os
        from codemode.engine.watchdog import rss_bytes
        before = rss_bytes()
        assert before > 0
        pid = os.fork()
        if pid == 0:
            grown = bytearray(80_000_000)
            grown[::4096] = b"1" * len(grown[::4096])
            os._exit(0 if rss_bytes() > before + 50_000_000 else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the child sampled its parent"
        assert rss_bytes() < before + 50_000_000
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=HANG)


async def test_watchdog_leaves_cells_under_budget_alone(delegate: RecordingDelegate) -> None:
    engine = GuardedEngine(rss_budget_bytes=rss_bytes() + 2048 * MiB)
    async with SessionRuntime(delegate, engine=engine) as rt:
        cell = await rt.create_cell(
            request(
                "const a = []; for (let i = 0; i < 2000; i++) a.push(new Intl.Collator('de'));"
                "await tools.echo({}); text(String(a.length))"
            )
        )
        assert await asyncio.wait_for(rt.wait(cell, HANG), HANG) == Completed(T("2000"))


def test_boot_survives_the_wire() -> None:
    from codemode.engine.worker_main import _boot, boot_to_json

    tool = ToolDefinition("t", "d", namespace="ns", input_schema={"type": "object"})
    boot = CellBoot("c1", "text(1)", (tool,), {"k": [1]}, CellLimits(max_tool_calls=3), True)
    assert _boot(json.loads(json.dumps(boot_to_json(boot)))) == boot


async def test_a_step_line_carries_any_result_json_text_as_is() -> None:
    """A step's inputs cross the pipe as their step text after a tab: a result's JSON text
    with tabs and line breaks between its tokens, and strings holding them, arrive intact."""
    from codemode.engine.base import OutputProduced, ToolCallRequested, ToolResultInput

    engine = WorkerEngine()
    try:
        source = "const r = await tools.echo({}); text(JSON.stringify(r))"
        boot = CellBoot("c1", source, (ToolDefinition("echo"),), {}, CellLimits(), False)
        cell = await engine.open_cell(boot)
        report = await asyncio.wait_for(cell.run(), HANG)
        [call] = [e for e in report.events if isinstance(e, ToolCallRequested)]
        pretty = '{\n\t"a":\t[1,\n 2],\r\n "s": "tab\\there\\nline"\n}'
        result = ToolResultInput(call.call_id, True, value_json=pretty)
        report = await asyncio.wait_for(cell.step([result]), HANG)
        [out] = [e.item for e in report.events if isinstance(e, OutputProduced)]
        assert json.loads(out.text) == {"a": [1, 2], "s": "tab\there\nline"}
        assert report.settlement is not None and report.settlement.error_text is None
    finally:
        await engine.aclose()


async def test_a_garbage_collected_runtime_ends_its_worker(delegate: RecordingDelegate) -> None:
    import gc
    import weakref

    engine = WorkerEngine()
    rt = SessionRuntime(delegate, engine=engine)
    ref = weakref.ref(rt)
    await rt.create_cell(request("while (true) {}"))
    await until(lambda: len(engine.worker_pids()) == 1)
    [pid] = engine.worker_pids()
    del rt
    gc.collect()
    assert ref() is None
    await until(lambda: not alive(pid))


def test_default_engine_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    from codemode.engine import V8Engine, default_engine, engine_factory, set_default_engine
    from codemode.engine.choice import using_default_engine

    monkeypatch.delenv("CODEMODE_ENGINE", raising=False)
    assert isinstance(default_engine(), V8Engine)  # the library default stays in-process
    monkeypatch.setenv("CODEMODE_ENGINE", "worker")
    assert isinstance(default_engine(), WorkerEngine)
    with using_default_engine(engine_factory("v8", rss_budget_bytes=8 * 1024 * MiB)):
        assert isinstance(default_engine(), GuardedEngine)
    assert isinstance(default_engine(), WorkerEngine)
    set_default_engine(None)
    with pytest.raises(ValueError):
        engine_factory("quickjs")


def test_serve_and_mcp_default_to_the_worker_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    from codemode.cli import build_parser, engine_from_args

    monkeypatch.delenv("CODEMODE_ENGINE", raising=False)
    parser = build_parser()

    def engine(*argv: str) -> Any:
        return engine_from_args(parser.parse_args(list(argv)))()

    assert isinstance(engine("serve"), WorkerEngine)
    assert isinstance(engine("mcp", "--config", "x.json"), WorkerEngine)
    assert not isinstance(engine("run", "--example"), WorkerEngine | GuardedEngine)
    assert not isinstance(engine("serve", "--engine", "v8"), WorkerEngine)
    assert isinstance(engine("serve", "--engine", "v8", "--rss-budget-bytes", "9"), GuardedEngine)
    monkeypatch.setenv("CODEMODE_ENGINE", "v8")
    assert not isinstance(engine("serve"), WorkerEngine)
    assert isinstance(engine("run", "--example", "--engine", "worker"), WorkerEngine)


async def test_big_tool_results_cross_the_pipe_without_stalling_the_loop(
    make_worker_runtime: Any, delegate: RecordingDelegate
) -> None:
    rt = make_worker_runtime(CellLimits(max_heap_bytes=256 * MiB))
    big = "x" * (2 * MiB)
    cell = await rt.create_cell(
        request("const r = await tools.block({}); text(String(r.s.length)); store('k', r.s.length)")
    )
    await delegate.wait_calls(1)
    async with strict_heartbeat():
        delegate.release("tool-1", {"s": big})
        event = await asyncio.wait_for(rt.wait(cell, HANG), HANG)
    assert event == Completed(T(str(len(big))))


async def test_a_grown_worker_finishes_its_other_cells_before_it_ends(
    make_worker_runtime: Any, delegate: RecordingDelegate
) -> None:
    rt = make_worker_runtime(CellLimits(max_cpu_seconds=60), rss_budget_bytes=400 * MiB)
    bystander = await rt.create_cell(request("await tools.block({}); text('calm')"))
    await delegate.wait_calls(1)
    [pid] = engine_of(rt).worker_pids()
    flood = await rt.create_cell(request(INTL_FLOOD))
    event = await asyncio.wait_for(rt.wait(flood, HANG), HANG)
    assert event == Completed(T("start"), rss_error_text(400 * MiB))
    fresh = await rt.create_cell(request("text('fresh')"))  # goes to a new worker
    assert await asyncio.wait_for(rt.wait(fresh, HANG), HANG) == Completed(T("fresh"))
    assert alive(pid)  # still serving the bystander
    delegate.release()
    assert await asyncio.wait_for(rt.wait(bystander, HANG), HANG) == Completed(T("calm"))
    await until(lambda: not alive(pid))
    assert len(engine_of(rt).worker_pids()) == 1


# ---------------------------------------------------------------------- the default of `serve`


def worker_children(pid: int) -> list[int]:
    """Live worker processes whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z" and b"worker_main" in cmdline:
            found.append(int(entry))
    return found


async def test_codemode_serve_runs_each_session_in_a_worker(delegate: RecordingDelegate) -> None:
    from codemode import RemoteSession

    remote = await RemoteSession.spawn(delegate)
    try:
        serve_pid = remote._process.pid  # type: ignore[union-attr]
        cell = await remote.create_cell(request("text('w'); await tools.block({})"))
        await delegate.wait_calls(1)
        [worker] = worker_children(serve_pid)
        os.kill(worker, signal.SIGKILL)
        assert await asyncio.wait_for(remote.wait(cell, HANG), HANG) == Completed(T("w"), LOST)
        again = await remote.create_cell(request("text('again')"))
        assert await asyncio.wait_for(remote.wait(again, HANG), HANG) == Completed(T("again"))
        [second] = worker_children(serve_pid)
    finally:
        await asyncio.wait_for(remote.shutdown(), HANG)
    await until(lambda: not alive(second))

    in_process = await RemoteSession.spawn(
        delegate, command=[sys.executable, "-m", "codemode", "serve", "--engine", "v8"]
    )
    try:
        cell = await in_process.create_cell(request("text('v8')"))
        assert await asyncio.wait_for(in_process.wait(cell, HANG), HANG) == Completed(T("v8"))
        assert worker_children(in_process._process.pid) == []  # type: ignore[union-attr]
    finally:
        await asyncio.wait_for(in_process.shutdown(), HANG)


_KEPT: list[Any] = []


def test_a_loop_closed_without_shutdown_ends_its_workers() -> None:
    """`asyncio.run` returning with a live session (no shutdown, runtime still referenced)."""
    from codemode import CreateCellRequest, tools_delegate

    pids: list[int] = []

    async def main() -> None:
        engine = WorkerEngine()
        rt = SessionRuntime(tools_delegate({}), engine=engine)
        _KEPT.append(rt)
        await rt.create_cell(CreateCellRequest("while (true) {}"))
        await until(lambda: len(engine.worker_pids()) == 1)
        pids.extend(engine.worker_pids())

    try:
        asyncio.run(main())
        deadline = time.monotonic() + HANG
        while alive(pids[0]) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not alive(pids[0]), "the worker outlived its event loop"
    finally:
        _KEPT.clear()
