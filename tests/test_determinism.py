"""A deterministic cell environment (docs/determinism.md): every read of the clock and the random
source is reported in order (``StepReport.reads``) and answered from ``CellBoot.replay_reads`` on a
replay, in the in-process V8 engine, the worker-process engine and the Python engine; what cannot
be recorded is removed; the time zone and locale are pinned."""

from __future__ import annotations

import array
import asyncio
import itertools
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from codemode import (
    CellLimits,
    Completed,
    Pending,
    PythonEngine,
    SessionRuntime,
    TextItem,
    ToolDefinition,
    Yielded,
)
from codemode.cell.authority import CellAuthority, refused_text
from codemode.engine.base import (
    CellBoot,
    Engine,
    EnvRead,
    OutputProduced,
    StepReport,
    ToolCallRequested,
    ToolResultInput,
)
from codemode.engine.determinism import (
    MAX_READS_PER_STEP,
    ReadPlayer,
    TooManyReads,
    check_reads,
    too_many_reads_text,
)
from codemode.engine.drain import RawReport, check_report
from codemode.engine.v8 import V8Engine
from codemode.engine.watchdog import GuardedEngine
from codemode.engine.worker import WorkerEngine, _raw_report
from codemode.engine.worker_main import raw_wire
from conftest import RecordingDelegate, request

ECHO = ToolDefinition("echo", "Returns its input.")
# 2001-09-09T01:46:40Z: a recorded clock value no live clock answers.
T0 = 1e12
CLOCK = EnvRead("clock", T0)
# A recorded seed of Math.random, and the first two numbers it gives (pinned: a journal
# recorded by one version of codemode replays on the next).
RANDOM = EnvRead("random", 0.125)
DRAWS = ["0.08156132301927999", "0.6290428525868546"]


def expand(reads: Sequence[EnvRead]) -> list[tuple[str, float]]:
    """One (source, value) per read: runs of equal reads written out."""
    return [(r.source, r.value) for r in reads for _ in range(r.count)]


@pytest.fixture(params=["v8", "worker"])
async def js_engine(request: pytest.FixtureRequest) -> AsyncIterator[Engine]:
    engine: Engine = V8Engine(pool_size=0) if request.param == "v8" else WorkerEngine()
    try:
        yield engine
    finally:
        await engine.aclose()


@pytest.fixture
async def py_engine() -> AsyncIterator[PythonEngine]:
    engine = PythonEngine()
    try:
        yield engine
    finally:
        await engine.aclose()


class Run:
    """What one cell did, command by command."""

    def __init__(self, reports: list[StepReport]) -> None:
        self.reports = reports

    @property
    def texts(self) -> list[str]:
        return [
            e.item.text
            for r in self.reports
            for e in r.events
            if isinstance(e, OutputProduced) and isinstance(e.item, TextItem)
        ]

    @property
    def reads(self) -> list[EnvRead]:
        return [read for r in self.reports for read in r.reads]

    @property
    def each_read(self) -> list[tuple[str, float]]:
        return expand(self.reads)

    @property
    def error(self) -> str | None:
        settlement = self.reports[-1].settlement
        assert settlement is not None
        return settlement.error_text


async def drive(
    engine: Engine, source: str, replay: Sequence[EnvRead] = (), *, pausable: bool = False
) -> Run:
    """Run a cell to its end, answering every tool call with its input, one step per call."""
    boot = CellBoot("c1", source, (ECHO,), {}, CellLimits(), pausable, replay_reads=tuple(replay))
    cell = await engine.open_cell(boot)
    try:
        reports = [await cell.run()]
        while reports[-1].settlement is None:
            calls = [e for e in reports[-1].events if isinstance(e, ToolCallRequested)]
            assert calls, reports[-1]
            inputs = [ToolResultInput(c.call_id, True, json.dumps(c.input)) for c in calls]
            reports.append(await cell.step(inputs))
        return Run(reports)
    finally:
        cell.close()


async def record_and_replay(engine: Engine, source: str) -> tuple[Run, Run]:
    live = await drive(engine, source)
    assert live.error is None, live.error
    replayed = await drive(engine, source, live.reads)
    assert replayed.texts == live.texts
    assert replayed.reads == live.reads
    return live, replayed


# ---------------------------------------------------------------------------- JavaScript


async def test_reads_are_reported_in_order_and_replayed(js_engine: Engine) -> None:
    source = (
        "text(Date.now()); text(Math.random()); await tools.echo({});"
        "text(new Date().getTime()); text(Math.random()); text(Date.now())"
    )
    live, replayed = await record_and_replay(js_engine, source)
    # the clock three times; the random source once: the seed of the cell's generator
    assert [s for s, _ in live.each_read] == ["clock", "random", "clock", "clock"]
    clock = [v for s, v in live.each_read if s == "clock"]
    assert clock == [float(t) for t in (live.texts[0], live.texts[2], live.texts[4])]
    # reported command by command: two reads in the run, two in the step after the call
    assert [len(expand(r.reads)) for r in live.reports] == [2, 2]
    assert [r.reads for r in replayed.reports] == [r.reads for r in live.reports]
    assert clock[0] > 1.7e12 and 0 <= live.each_read[1][1] < 1


async def test_a_large_report_keeps_its_reads(js_engine: Engine) -> None:
    """A report too large to check on the event loop still carries its reads (its checking
    thread gets a copy of them: a clock read and 100 KB of output in one step was refused)."""
    source = 'text(String(Date.now())); text("x".repeat(100000)); text(String(Math.random()))'
    live, replayed = await record_and_replay(js_engine, source)
    assert [s for s, _ in live.each_read] == ["clock", "random"]
    assert len(live.texts[1]) == 100000 and replayed.texts == live.texts


async def test_equal_reads_are_runs_and_a_polling_loop_replays_exactly(js_engine: Engine) -> None:
    source = (
        "const t = Date.now(); let n = 0; while (Date.now() - t < 20) n++;"
        "await tools.echo({}); text(n)"
    )
    live, replayed = await record_and_replay(js_engine, source)
    assert int(live.texts[0]) > 100
    reads = live.reports[0].reads
    assert sum(r.count for r in reads) == int(live.texts[0]) + 2
    assert len(reads) <= 40  # one run per millisecond, give or take
    assert all(a.value < b.value for a, b in itertools.pairwise(reads))
    assert replayed.texts == live.texts  # the loop ran exactly as often


async def test_math_random_is_a_good_generator_seeded_once(js_engine: Engine) -> None:
    source = (
        "const a = []; for (let i = 0; i < 100000; i++) a.push(Math.random());"
        "text(a.every((x) => x >= 0 && x < 1)); text(new Set(a).size);"
        "text(a.reduce((s, x) => s + x, 0) / a.length); text(a[0])"
    )
    one = await drive(js_engine, source)
    two = await drive(js_engine, source)
    assert one.texts[:2] == ["true", "100000"]
    assert 0.49 < float(one.texts[2]) < 0.51
    assert one.texts[3] != two.texts[3]  # each cell has its own seed
    assert [r.source for r in one.reads] == ["random"]


# One test per source: each reads through one recorded read, answered from the record.
JS_SOURCES = [
    ("text(Date.now())", [CLOCK], "1000000000000"),
    ("text(new Date().toISOString())", [CLOCK], "2001-09-09T01:46:40.000Z"),
    ("text(Date())", [CLOCK], "Sun Sep 09 2001 01:46:40 GMT+0000 (Coordinated Universal Time)"),
    (
        "text(Date(123, 4))",
        [CLOCK],
        "Sun Sep 09 2001 01:46:40 GMT+0000 (Coordinated Universal Time)",
    ),
    ("text(Math.random()); text(Math.random())", [RANDOM], "|".join(DRAWS)),
    ("text(new Date().getHours() + ':' + new Date().getMinutes())", [CLOCK, CLOCK], "1:46"),
    ("text(Reflect.construct(Date, []).getTime())", [CLOCK], "1000000000000"),
    ("text(new (new Date(0).constructor)().getTime())", [CLOCK], "1000000000000"),
    (
        "class D extends Date {}; const d = new D(); text(d instanceof D && d.getTime())",
        [CLOCK],
        "1000000000000",
    ),
    (
        "text(Intl.DateTimeFormat('en', {dateStyle: 'short', timeZone: 'UTC'}).format())",
        [CLOCK],
        "9/9/01",
    ),
    (
        "const f = new Intl.DateTimeFormat('en', {year: 'numeric'}); text(f.format === f.format); text(f.format())",
        [CLOCK],
        "true|2001",
    ),
    (
        "text(Intl.DateTimeFormat('en', {year: 'numeric'}).formatToParts()[0].value)",
        [CLOCK],
        "2001",
    ),
    ("text(new Date().toLocaleString())", [CLOCK], "9/9/2001, 1:46:40 AM"),
    ("text(Temporal.Now.instant().toString())", [CLOCK], "2001-09-09T01:46:40Z"),
    ("text(Temporal.Now.zonedDateTimeISO().toString())", [CLOCK], "2001-09-09T01:46:40+00:00[UTC]"),
    (
        "text(Temporal.Now.plainDateTimeISO('Asia/Tokyo').toString())",
        [CLOCK],
        "2001-09-09T10:46:40",
    ),
    ("text(Temporal.Now.plainDateISO().toString())", [CLOCK], "2001-09-09"),
    ("text(Temporal.Now.plainTimeISO().toString())", [CLOCK], "01:46:40"),
    ("text(Temporal.Now.timeZoneId())", [], "UTC"),
]


@pytest.mark.parametrize(("source", "record", "expected"), JS_SOURCES)
async def test_every_js_source_is_recorded_and_replayed(
    js_engine: Engine, source: str, record: list[EnvRead], expected: str
) -> None:
    live, _ = await record_and_replay(js_engine, source)
    assert [s for s, _ in live.each_read] == [s for s, _ in expand(record)]
    fed = await drive(js_engine, source, record)
    assert "|".join(fed.texts) == expected
    assert fed.each_read == expand(record)


async def test_a_read_of_another_source_turns_the_replay_live(js_engine: Engine) -> None:
    # recorded: clock, clock; the cell reads clock, random (its seed), clock
    source = "text(Date.now()); text(Math.random()); text(Date.now())"
    run = await drive(js_engine, source, [CLOCK, EnvRead("clock", 2e12)])
    first, second, third = (float(t) for t in run.texts)
    assert first == T0  # matched the record
    assert 0 <= second < 1 and run.texts[1] != DRAWS[0]  # the record's next read is the clock
    assert third > 1.7e12 and third != 2e12  # live from there on, though the source matches again
    assert [s for s, _ in run.each_read] == ["clock", "random", "clock"]
    assert run.each_read[2] == ("clock", third)


async def test_reads_past_the_record_are_live(js_engine: Engine) -> None:
    run = await drive(js_engine, "text(Date.now()); text(Date.now())", [CLOCK])
    assert float(run.texts[0]) == T0
    assert float(run.texts[1]) > 1.7e12
    assert run.each_read == [("clock", float(t)) for t in run.texts]


async def test_a_recorded_run_answers_as_many_reads_as_its_count(js_engine: Engine) -> None:
    source = "for (let i = 0; i < 4; i++) text(Date.now())"
    run = await drive(js_engine, source, [EnvRead("clock", T0, 3), EnvRead("clock", 2e12)])
    assert run.texts == ["1000000000000"] * 3 + ["2000000000000"]
    assert run.reads == [EnvRead("clock", T0, 3), EnvRead("clock", 2e12)]


async def test_a_replay_with_an_unknown_source_turns_live_there(js_engine: Engine) -> None:
    run = await drive(js_engine, "text(Date.now())", [EnvRead("perf", 5.0)])
    assert float(run.texts[0]) > 1.7e12


async def test_a_cell_that_overrides_date_and_random_records_only_real_reads(
    js_engine: Engine,
) -> None:
    source = (
        "const RealDate = Date; const realNow = Date.now; const realRandom = Math.random;"
        "Date.now = () => 5; Math.random = () => 0.5; text(Date.now()); text(Math.random());"
        "globalThis.Date = function () { return 'fake' }; text(Date());"  # the cell's own
        "Object.defineProperty(Array.prototype, '0', {set() {}, get() { return 9 }, configurable: true});"
        "Array.prototype.toJSON = () => [0, 1]; String.prototype.concat = () => '';"
        "Number.prototype.toString = () => '7'; Object.prototype.toJSON = () => 1;"
        "Math.imul = () => 0; Float64Array.prototype[0] = 3; Uint32Array.prototype.fill = null;"
        "text(new RealDate().getTime()); text(realRandom.call(null)); text(realNow())"
    )
    live, _ = await record_and_replay(js_engine, source)
    assert live.texts[:3] == ["5", "0.5", "fake"]
    assert [s for s, _ in live.each_read] == ["clock", "random", "clock"]
    fed = await drive(js_engine, source, [CLOCK, RANDOM, EnvRead("clock", 2e12)])
    assert fed.texts[3:] == ["1000000000000", DRAWS[0], "2000000000000"]


# What a cell can see of Temporal: the same in codemode as in V8's own (raw mini-racer).
TEMPORAL_SHAPE = r"""(() => {
  const d = (o, n) => {
    const x = Object.getOwnPropertyDescriptor(o, n);
    return (typeof x.value) + (x.writable ? "W" : "") + (x.enumerable ? "E" : "") + (x.configurable ? "C" : "");
  };
  const names = (o) => Object.getOwnPropertyNames(o).map((n) => n + ":" + d(o, n) + ":" + (o[n].length ?? "")).join(",");
  const t = typeof Temporal;
  return [
    t, Object.prototype.toString.call(Temporal), Object.prototype.toString.call(Temporal.Now),
    names(Temporal), names(Temporal.Now), d(globalThis, "Temporal"), Object.keys(globalThis).includes("Temporal"),
    Object.getPrototypeOf(Temporal) === Object.prototype, Object.getPrototypeOf(Temporal.Now) === Object.prototype,
    new Date(5).toTemporalInstant() instanceof Temporal.Instant,
    Temporal.PlainDate.from("2020-01-31").add({ months: 1 }).toString(),
    Temporal.Duration.from({ hours: 2 }).toString(), Temporal.PlainYearMonth.from("2020-05").toString(),
    Temporal.PlainMonthDay.from("05-04").toString(), Temporal.PlainTime.from("01:02").toString(),
    Temporal.PlainDateTime.from("2020-01-01T01:02").toString(),
    Temporal.ZonedDateTime.from("2020-01-01T00:00[UTC]").toString(),
    Temporal.Now.timeZoneId(), Temporal.Now.plainDateISO() instanceof Temporal.PlainDate,
    Temporal.Now.zonedDateTimeISO("Asia/Tokyo") instanceof Temporal.ZonedDateTime,
  ].join(" | ");
})()"""


async def test_temporal_looks_to_a_cell_as_v8s_own(js_engine: Engine) -> None:
    from py_mini_racer import MiniRacer

    mr = MiniRacer()
    try:
        expected = mr.eval(TEMPORAL_SHAPE)
    finally:
        mr.close()
    run = await drive(js_engine, f"text({TEMPORAL_SHAPE})")
    assert run.error is None
    assert run.texts == [expected]


@pytest.mark.parametrize(
    "source",
    [
        "text(globalThis['Tem' + 'poral'].Now.instant().toString())",
        "text(Reflect.get(globalThis, 'Temporal').Now.instant().toString())",
        "const {Now} = Object.getOwnPropertyDescriptor(globalThis, 'Temporal').get();"
        " text(Now.instant().toString())",
        # a cell that rewired the constructors first changes only its own calls
        "const I = new Date(0).toTemporalInstant().constructor; I.fromEpochMilliseconds = () => 1;"
        " text(Temporal.Now.instant()); text(Date.now())",
        "Object.defineProperty(Object.prototype, 'get', {value: () => 1, configurable: true});"
        " Array.prototype[Symbol.iterator] = null; Function.prototype.bind = null;"
        " text(Temporal.Now.instant().toString())",
    ],
)
async def test_every_way_to_temporal_now_reads_through_the_record(
    js_engine: Engine, source: str
) -> None:
    live, _ = await record_and_replay(js_engine, source)
    assert live.error is None
    fed = await drive(js_engine, source, [CLOCK, EnvRead("clock", 2e12)])
    assert fed.error is None
    assert fed.each_read == [("clock", T0)] + ([("clock", 2e12)] if "Date.now" in source else [])
    if "fromEpochMilliseconds" in source:  # (what its own replacement gives back is its own)
        assert fed.texts[1:] == ["2000000000000"]
    else:
        assert fed.texts == ["2001-09-09T01:46:40Z"]


async def test_the_prelude_leaves_temporal_to_be_built_at_a_cells_first_use() -> None:
    """V8 builds its Temporal namespace (~90 KiB of heap) on the first read of the global; the
    prelude never reads it, so an idle cell's isolate does not hold it (docs/determinism.md)."""
    from codemode.engine import v8

    def heap_growth(source: str) -> int:
        isolate = v8._create_isolate(loop)
        try:
            context, bridge = isolate.context, isolate.bridge
            assert context is not None and bridge is not None
            used = lambda: json.loads(context.heap_stats())["used_heap_size"]  # noqa: E731
            before = used()
            config = {"pausable": False, "limits": {"maxToolCalls": 1, "maxParallel": 1,
                      "maxOutputBytes": 4096, "maxExternalBytes": 4096, "maxStoredBytes": 4096},
                      "storedBytes": 2, "tools": []}  # fmt: skip
            bridge.call_sync(bridge.start, json.dumps(config), "{}", source)
            report = bridge.call_sync(bridge.drain)
            assert '"ok":true' in report, report
            return int(used() - before)
        finally:
            isolate.free()

    loop = asyncio.get_running_loop()
    growth = await asyncio.to_thread(
        lambda: [
            (heap_growth("text(typeof Date.now)"), heap_growth("text(typeof Temporal.Now)"))
            for _ in range(3)
        ]
    )
    # Each pair in fresh isolates: reading Temporal builds it now, so the heap grows by V8's
    # namespace on top of what an equal cell reading Date costs.
    assert sorted(t - d for d, t in growth)[1] > 48 * 1024, growth


REMOVED = ["WeakRef", "FinalizationRegistry", "Atomics", "SharedArrayBuffer", "WebAssembly",
           "performance", "crypto", "navigator", "gc"]  # fmt: skip


async def test_what_cannot_be_recorded_is_removed(js_engine: Engine) -> None:
    source = f"for (const n of {json.dumps(REMOVED)}) text(n + ' ' + typeof globalThis[n])"
    run = await drive(js_engine, source)
    assert run.texts == [f"{n} undefined" for n in REMOVED]
    assert run.reads == []


async def test_a_cell_that_reads_nothing_reports_no_reads(js_engine: Engine) -> None:
    run = await drive(js_engine, "text(new Date(0).getTime()); await tools.echo({}); text(1)")
    assert run.texts == ["0", "1"]
    assert all(r.reads == () for r in run.reports)


async def test_too_many_distinct_reads_in_one_step_end_the_cell_clearly(
    js_engine: Engine,
) -> None:
    # A live clock cannot change that often within the CPU limit; a record can.
    record = [EnvRead("clock", float(i)) for i in range(MAX_READS_PER_STEP + 1)]
    source = f"for (let i = 0; i <= {MAX_READS_PER_STEP}; i++) Date.now()"
    run = await drive(js_engine, source, record)
    assert run.error is not None
    assert run.error.startswith(f"RangeError: {too_many_reads_text()}"), run.error
    assert run.reads == record[:MAX_READS_PER_STEP]


async def test_the_bound_is_per_step(js_engine: Engine) -> None:
    half = MAX_READS_PER_STEP // 2 + 1
    record = [EnvRead("clock", float(i)) for i in range(2 * half)]
    source = (
        f"for (let i = 0; i < {half}; i++) Date.now(); await tools.echo({{}});"
        f"for (let i = 0; i < {half}; i++) Date.now(); text('done')"
    )
    run = await drive(js_engine, source, record)
    assert run.error is None and run.texts == ["done"]
    assert [len(r.reads) for r in run.reports] == [half, half]
    assert run.reads == record


def test_the_time_zone_and_locale_are_pinned_whatever_the_machines() -> None:
    script = textwrap.dedent(
        """
        import asyncio, json, time
        from codemode.engine.base import CellBoot
        from codemode.engine.v8 import V8Engine
        from codemode.engine.worker import WorkerEngine
        from codemode.model import CellLimits

        SOURCE = (
            "text(new Date(0).getHours()); text(new Date(0).toString());"
            "text(new Date(0).toLocaleString()); text((1234.5).toLocaleString());"
            "text(Intl.DateTimeFormat().resolvedOptions().timeZone);"
            "text(new Intl.DateTimeFormat().resolvedOptions().locale);"
            "text(new Date(2020, 0, 1).getTime())"
        )

        async def main():
            out = {}
            for name, engine in (("v8", V8Engine(pool_size=0)), ("worker", WorkerEngine())):
                cell = await engine.open_cell(CellBoot("c", SOURCE, (), {}, CellLimits(), False))
                report = await cell.run()
                out[name] = [e.item.text for e in report.events]
                await engine.aclose()
            out["host_hour"] = time.localtime(0).tm_hour
            print(json.dumps(out))

        asyncio.run(main())
        """
    )
    env = {**os.environ, "TZ": "America/New_York", "LC_ALL": "de_DE.UTF-8", "LANG": "de_DE.UTF-8"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    expected = [
        "0",
        "Thu Jan 01 1970 00:00:00 GMT+0000 (Coordinated Universal Time)",
        "1/1/1970, 12:00:00 AM",
        "1,234.5",
        "UTC",
        "en-US",
        "1577836800000",
    ]
    assert out["v8"] == expected
    assert out["worker"] == expected
    assert out["host_hour"] == 19  # the host's own local time is left alone


async def test_the_guarded_engine_passes_reads_through() -> None:
    engine = GuardedEngine(V8Engine(pool_size=0), rss_budget_bytes=1 << 40)
    try:
        live, _ = await record_and_replay(engine, "text(Date.now()); text(Math.random())")
        fed = await drive(engine, "text(Date.now()); text(Math.random())", [CLOCK, RANDOM])
    finally:
        await engine.aclose()
    assert [s for s, _ in live.each_read] == ["clock", "random"]
    assert fed.texts == ["1000000000000", DRAWS[0]]


# ---------------------------------------------------------------------------- the host's checks


def _authority() -> CellAuthority:
    return CellAuthority((ECHO,), CellLimits(), pausable=False)


def _memory(*numbers: float) -> memoryview:
    return memoryview(array.array("d", numbers).tobytes())


def test_the_host_accepts_well_formed_reads() -> None:
    head = '{"ev":[],"pending":null,"settled":null,"reads":'
    report = _authority().accept_raw(head + "2}", 0.0, _memory(0, T0, 3, 1, 0.125, 1, 9, 9, 9))
    assert report.settlement is None
    assert report.reads == (EnvRead("clock", T0, 3), RANDOM)
    listed = _authority().accept_raw(head + "[0,1000000000000,3,1,0.125,1]}")
    assert listed.reads == (EnvRead("clock", T0, 3), RANDOM)
    assert _authority().accept_raw('{"ev":[],"pending":null,"settled":null}').reads == ()


@pytest.mark.parametrize(
    ("reads", "memory", "reason"),
    [
        ("0", (0, T0, 1), "a count of reads that is not 1 to 100000"),
        ("-1", (0, T0, 1), "a count of reads that is not 1 to 100000"),
        ("1.0", (0, T0, 1), "a count of reads that is not 1 to 100000"),
        ("true", (0, T0, 1), "a count of reads that is not 1 to 100000"),
        ("100001", (0, T0, 1), "a count of reads that is not 1 to 100000"),
        ("2", (0, T0, 1), "the reads are not in the cell's read buffer"),
        ("1", (7, T0, 1), "a read of an unknown source (7.0)"),
        ("1", (0.5, T0, 1), "a read of an unknown source (0.5)"),
        ("1", (1, 1.5, 1), "a random read that is not a finite value in range"),
        ("1", (1, float("nan"), 1), "a random read that is not a finite value in range"),
        ("1", (0, float("inf"), 1), "a clock read that is not a finite value in range"),
        ("1", (0, 1e300, 1), "a clock read that is not a finite value in range"),
        ("1", (0, T0, 0), "a clock read whose count is not a positive integer"),
        ("1", (0, T0, 2.5), "a clock read whose count is not a positive integer"),
        ("[0,1]", (), "the reads are not a list of source, value and count triples"),
        ('{"0": 1}', (), "a count of reads that is not 1 to 100000"),
        ("[true,1,1]", (), "a read of an unknown source (True)"),
        ('["clock",1,1]', (), "a read of an unknown source (clock)"),
        ('[0,"1",1]', (), "a clock read that is not a finite value in range"),
        ("[0,null,1]", (), "a clock read that is not a finite value in range"),
        ("[1,-0.1,1]", (), "a random read that is not a finite value in range"),
        ("[0,1,true]", (), "a clock read whose count is not a positive integer"),
        (
            "[" + ",".join(["0,1,1"] * (MAX_READS_PER_STEP + 1)) + "]",
            (),
            f"more than {MAX_READS_PER_STEP} reads in one step",
        ),
    ],
)
def test_the_host_refuses_forged_reads(reads: str, memory: tuple[float, ...], reason: str) -> None:
    raw = '{"ev":[["text","a"]],"pending":null,"settled":null,"reads":' + reads + "}"
    report = _authority().accept_raw(raw, 0.0, _memory(*memory))
    assert report.settlement is not None
    assert report.settlement.error_text == refused_text(reason)
    assert report.reads == ()


def test_the_host_refuses_reads_without_memory_and_unknown_members() -> None:
    for raw in (
        '{"ev":[],"pending":null,"settled":null,"reads":1}',
        '{"ev":[],"pending":null,"settled":null,"reads":[0,NaN,1]}',
        '{"ev":[],"pending":null,"settled":null,"reads":[],"more":1}',
    ):
        settlement = _authority().accept_raw(raw).settlement
        assert settlement is not None and settlement.error_text is not None
        assert settlement.error_text.startswith("exec cell sent a report the host refused")


def test_a_worker_sends_the_reads_unchecked_and_the_host_checks_them() -> None:
    """The reads cross the pipe as the cell's bytes (base64) and are checked on the host, by
    the cell's authority, as in process."""
    drain = '{"ev":[],"pending":null,"settled":null,"reads":2}'
    good = bytes(_memory(0, T0, 2, 1, 0.125, 1))

    def host_view(reads: bytes) -> Any:
        wire = json.loads(json.dumps(raw_wire(RawReport(drain, 0.0, reads))))
        return check_report(_authority(), CellLimits(), _raw_report(wire))

    assert host_view(good).reads == (EnvRead("clock", T0, 2), RANDOM)
    for bad in (
        (0, 1, 0, 1, 0.5, 1),
        (2, 1, 1, 1, 0.5, 1),
        (0, 1, 1, 1, 1.5, 1),
        (0, float("nan"), 1, 1, 0.5, 1),
    ):
        settlement = host_view(bytes(_memory(*bad))).settlement
        assert settlement is not None and settlement.error_text is not None
        assert settlement.error_text.startswith("exec cell sent a report the host refused")
    settlement = host_view(good[:24]).settlement  # fewer bytes than the report says
    assert settlement is not None and settlement.error_text is not None


def test_check_reads_and_the_read_player() -> None:
    assert check_reads([]) == ()
    assert check_reads([0, 5, 2, 1, 0, 1]) == (EnvRead("clock", 5.0, 2), EnvRead("random", 0.0))
    player = ReadPlayer([EnvRead("clock", T0, 2), RANDOM])
    assert player.read("clock", lambda: 1.0) == T0
    assert player.read("clock", lambda: 1.0) == T0
    assert player.read("clock", lambda: 2.0) == 2.0  # the record's next read is random: live
    assert player.read("random", lambda: 0.75) == 0.75  # and live from then on
    assert player.read("random", lambda: 0.75) == 0.75
    assert player.take() == (
        EnvRead("clock", T0, 2),
        EnvRead("clock", 2.0),
        EnvRead("random", 0.75, 2),
    )
    assert player.take() == ()
    busy = ReadPlayer()
    for i in range(MAX_READS_PER_STEP):
        busy.read("clock", lambda i=i: float(i))  # type: ignore[misc]
    busy.read("clock", lambda: float(MAX_READS_PER_STEP - 1))  # the same value: the same run
    with pytest.raises(TooManyReads):
        busy.read("clock", lambda: -1.0)
    assert len(busy.take()) == MAX_READS_PER_STEP
    busy.read("clock", lambda: 1.0)  # the bound is per command


# ---------------------------------------------------------------------------- Python cells


PY_SOURCES = [
    ("import datetime\nprint(datetime.datetime.now())", [CLOCK], "2001-09-09 01:46:40"),
    ("import datetime\nprint(datetime.datetime.now().hour)", [CLOCK], "1"),
    (
        "import datetime\nprint(datetime.datetime.now(datetime.timezone.utc).isoformat())",
        [CLOCK],
        "2001-09-09T01:46:40+00:00",
    ),
    (
        "import datetime\n"
        "print(datetime.datetime.now(datetime.timezone(datetime.timedelta(hours=9))).isoformat())",
        [CLOCK],
        "2001-09-09T10:46:40+09:00",
    ),
    ("import datetime\nprint(datetime.date.today())", [CLOCK], "2001-09-09"),
    (
        "import datetime\nprint(datetime.datetime.now().astimezone())",
        [CLOCK],
        "2001-09-09 01:46:40+00:00",
    ),
]


@pytest.mark.parametrize(("source", "record", "expected"), PY_SOURCES)
async def test_every_python_source_is_recorded_and_replayed(
    py_engine: PythonEngine, source: str, record: list[EnvRead], expected: str
) -> None:
    live, _ = await record_and_replay(py_engine, source)
    assert [s for s, _ in live.each_read] == [s for s, _ in expand(record)]
    assert live.reads[0].value > 1.7e12
    fed = await drive(py_engine, source, record)
    assert "|".join(fed.texts) == expected
    assert fed.each_read == expand(record)


async def test_python_reads_are_reported_per_step_and_replayed(py_engine: PythonEngine) -> None:
    source = (
        "import datetime\n"
        "print(datetime.datetime.now().isoformat())\n"
        "await tools.echo()\n"
        "print(datetime.datetime.now().isoformat())\n"
        "print(datetime.date.today())\n"
    )
    live, replayed = await record_and_replay(py_engine, source)
    assert [len(r.reads) for r in live.reports] == [1, 2]
    assert [len(r.reads) for r in replayed.reports] == [1, 2]
    mixed = await drive(py_engine, source, [CLOCK, RANDOM])
    assert mixed.texts[0] == "2001-09-09T01:46:40"
    assert not mixed.texts[1].startswith("2001")  # the record's next read is random: live


async def test_a_dumped_python_cell_continues_its_replay_where_it_stood() -> None:
    source = (
        "import datetime\n"
        "print(datetime.datetime.now().year)\n"
        "await tools.echo()\n"
        "print(datetime.datetime.now().year)\n"
        "print(datetime.datetime.now().year)\n"
    )
    record = (EnvRead("clock", T0, 2), EnvRead("clock", 2e12))
    boot = CellBoot("c1", source, (ECHO,), {}, CellLimits(), True, replay_reads=record)
    first, second = PythonEngine(), PythonEngine()
    try:
        cell = await first.open_cell(boot)
        report = await cell.run()
        assert [e.item.text for e in report.events if isinstance(e, OutputProduced)] == ["2001"]
        state = await cell.dump()
        cell.close()
        moved = await second.load_cell(boot, state)
        report = await moved.step([ToolResultInput("tool-1", True, "{}")])
        moved.close()
    finally:
        await first.aclose()
        await second.aclose()
    texts = [e.item.text for e in report.events if isinstance(e, OutputProduced)]
    assert texts == ["2001", "2033"]  # the second read of the first run, then the next run
    assert report.reads == (CLOCK, EnvRead("clock", 2e12))  # the run's second read, then one


@pytest.mark.parametrize("module", ["random", "time", "os", "secrets", "uuid"])
async def test_python_cells_cannot_import_other_sources(
    py_engine: PythonEngine, module: str
) -> None:
    run = await drive(py_engine, f"import {module}\nprint(1)")
    assert run.error == f"ImportError: Unsupported import in exec: {module}\n    at cell.py:1"
    assert run.reads == []


# ---------------------------------------------------------------------------- a session


async def test_a_session_without_a_store_ignores_reads(delegate: RecordingDelegate) -> None:
    source = (
        "text(typeof Date.now()); text(Math.random() < 1); await tools.echo({});"
        "text(new Date().getFullYear() > 2000)"
    )
    rt = SessionRuntime(delegate, engine=V8Engine(pool_size=1))
    try:
        async with asyncio.timeout(30):
            cell = await rt.create_cell(request(source))
            items: list[Any] = []
            event: Any = await rt.wait(cell, 10)
            while isinstance(event, Yielded):
                items += event.items
                event = await rt.wait(cell, 10)
            assert isinstance(event, Completed) and event.error_text is None
            items += event.items
            paused = await rt.create_pausable_cell(request(source))
            event = await rt.wait_to_pending(paused)
            while isinstance(event, Pending):
                items += event.frontier.items
                await rt.resume(paused, event.frontier.generation)
                event = await rt.wait_to_pending(paused)
            assert isinstance(event, Completed) and event.error_text is None
            items += event.items
    finally:
        await rt.shutdown()
    assert items == [TextItem("number"), TextItem("true"), TextItem("true")] * 2
