"""SIGKILL fault injection: a durable session survives its process being killed at any instant.

A child process (fault_child.py) runs a fixed workload in a durable session
(``SessionRuntime(delegate, store=SqliteStore(path), session_id=FIXED)``): continuing cells
observed with ``wait`` and a 50 ms budget, pausable cells driven frontier by frontier with a
deterministic host-side answer policy, with ``Promise.all`` fans of up to 60 calls, timers, calls
that fail, clock and random reads, and stored values passed between three phases of cells. The
parent kills the child with SIGKILL at random instants (``CODEMODE_FAULT_KILLS``, default 50, in
all), starts a new child that reopens the session and drives everything to completion, and when
a workload finishes before the kills are used up it starts the workload again in a new session.
After each kill, once the child is dead, the parent reads the store (reads need no lease): which
cells it holds, open or closed, and each open cell's journal.

The random instants come from a seed, printed at the start and taken from
``CODEMODE_FAULT_SEED`` when set, so a failing run can be repeated (the machine's timing still
varies, so a repetition reproduces the kill plan, not every instant).

What is asserted, and why it is exact:

1. **Each cell's whole delivered output equals that of an uninterrupted run** (the same workload
   in one process, without a store). Each output item starts with its index in the cell's output,
   so the items logged by the drivers of all processes, in log order, must be exactly the
   reference's items 0, 1, 2, ...: a repeated item or one out of order fails at once. The terminal
   event (kind and error text) must be the reference's too.
2. **Nothing lost, nothing twice.** The one way an item may be missing from the log without being
   lost is the window every at-most-once delivery has: the runtime records an event as delivered
   before it returns it, and the process was killed after that and before the driver logged it.
   So a gap in the indices is allowed only where an observation of that cell was in flight in a
   killed process (its ``observe`` line has no ``event`` after it in that process), only one gap per
   such observation, and only at the boundary between that process's items and the next ones. If
   the lost event was the terminal one, the cell must be closed in the store after that kill (a
   cell closes once its terminal event is delivered) and the next process gets ``MissingCell``.
   Pausable frontiers are never lost this way: an unresumed frontier is observed again, with the
   same generation, items and pending calls (asserted). The store's delivered-event boundaries
   make this exact: after each kill, the items recorded as delivered are at least those the
   killed process logged, more only when an observation was in flight, and the next process
   delivers from exactly that point on.
3. **No call whose answer was recorded is asked again.** Every answer carries a unique token
   (``ans/<cell_id>/<call_id>/``), in the returned value or in the error text. A recorded answer is
   in the cell's journal (replay feeds it back from there), so after a kill the token is in the
   store exactly when the answer was recorded. A call (cell id, call id) invoked in process q is
   allowed only if, in the store read after every earlier process died, its token was absent and
   its cell was not closed: a call may repeat only if its earlier invocations were in killed
   processes that had not recorded its answer. A call is never invoked twice in one process, and
   every invocation of a call id has the same tool and input (a call issued again after a restart
   has its old id).
4. **A call issued but not answered is issued again**: every invocation in a killed process whose
   answer was not recorded, of a cell still open, is invoked again later (every cell of the
   workload awaits all its calls, so the answer is needed).
5. **Write-ahead admission**: every cell a killed process created (``create_cell`` returned) or
   whose calls reached the delegate is in the store after the kill.
6. **Recorded reads**: the ``clock`` cell prints ``Date.now()`` and ``Math.random()`` at its start
   and again after two calls and a timer (and sends the random value in a call: a replay reading
   another value would diverge); every logged copy of that line is identical
   (``test_clock_and_random_reads_survive_a_reopen`` checks the same on its own, quickly).

A child killed after it finished the workload (in its final ``shutdown``, which deletes the
session's cells from the store) ends its round. A child whose runtime lost its lease (a stalled
loop on a loaded machine; exit status 3) is restarted without counting as a kill.

The checker itself is tested on hand-made logs (duplicates, losses, a recorded call asked again).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import random
import re
import signal
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import fault_child

from codemode import CreateCellRequest, NestedToolCall, SessionRuntime, SqliteStore

CHILD = Path(__file__).parent / "fault_child.py"
ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
KILLS = int(os.environ.get("CODEMODE_FAULT_KILLS", "50"))
LEASE = float(os.environ.get("CODEMODE_FAULT_LEASE", "1.0"))
EARLY = 0.15  # share of kills at a random instant from the child's start (during open/replay)
MAX_DELAY = 0.5  # other kills: uniform in [0, MAX_DELAY] s after the session is open

Line = dict[str, Any]


@dataclass
class Snapshot:
    """The store after a process died: cell id -> state, and the journal text of open cells."""

    state: dict[str, str] = field(default_factory=dict)
    journal: dict[str, str] = field(default_factory=dict)
    deliveries: dict[str, list[int]] = field(default_factory=dict)  # items per delivered event


@dataclass
class Outcome:
    items: list[str]
    kind: str
    error: str | None


class FaultCheckError(AssertionError):
    pass


def _fail(msg: str) -> None:
    raise FaultCheckError(msg)


_CLOCK = re.compile(r"^clock \d+ [0-9.e-]+$")


def _normal(item: str) -> str:
    """An item without its index, the clock line's values replaced (they differ between runs)."""
    body = item.split(": ", 1)[1]
    return "clock T R" if _CLOCK.match(body) else body


def reference_outcomes(lines: list[Line]) -> dict[str, Outcome]:
    """Each cell's output in an uninterrupted run (one process, every event logged)."""
    out: dict[str, Outcome] = {}
    seen_gen: dict[str, set[int]] = defaultdict(set)
    for line in lines:
        if line["ev"] != "event":
            continue
        name = line["name"]
        o = out.setdefault(name, Outcome([], "", None))
        if line["kind"] == "pending":
            if line["generation"] in seen_gen[name]:
                continue
            seen_gen[name].add(line["generation"])
        o.items.extend(line["items"])
        if line["kind"] in ("completed", "terminated"):
            o.kind, o.error = line["kind"], line["error"]
    for name, o in out.items():
        assert [int(i.split(":")[0]) for i in o.items] == list(range(len(o.items))), name
        assert o.kind, f"{name} did not end in the reference run"
    return out


def _window(
    name: str,
    lo: int,
    upto: int,
    inflight: dict[tuple[int, str], bool],
    used: set[int],
    *,
    last: bool = False,
) -> int:
    """The killed process in [lo, upto) whose observation of cell ``name`` was in flight when it
    died (an event the runtime recorded as delivered, which the driver never logged): each such
    observation explains one gap. ``last``: the latest such process (the one that received the
    terminal event: no process after it could observe the cell)."""
    for p in reversed(range(lo, upto)) if last else range(lo, upto):
        if p not in used and inflight.get((p, name)):
            used.add(p)
            return p
    _fail(f"{name}: output lost before process {upto} with no observation in flight")
    raise AssertionError  # unreachable


def _check_delivered(
    name: str,
    events: list[Line],
    snapshots: dict[int, Snapshot],
    inflight: dict[tuple[int, str], bool],
) -> None:
    """Against the delivered-event boundaries the store holds after each kill (the number of
    items recorded as delivered, D): every item the killed processes logged was recorded first
    (D >= logged), more was recorded only if an observation was in flight in a killed process
    since the last logged item (the window), and the next process delivers from exactly there
    on (the first item logged later is D, or the start of the last delivered frontier observed
    again: nothing recorded as delivered comes again, nothing between is skipped)."""
    indexed: list[tuple[int, int]] = []  # (process, item index), frontiers counted once
    firsts: list[Line] = []  # the events counted, in order
    generations: set[int] = set()
    for ev in events:
        if ev["ev"] != "event":
            continue
        if ev["kind"] == "pending":
            if ev["generation"] in generations:
                continue  # an unresumed frontier observed again: the same items
            generations.add(ev["generation"])
        firsts.append(ev)
        indexed.extend((ev["proc"], int(item.split(":")[0])) for item in ev["items"])
    cell_ids = {ev["cell_id"] for ev in events}
    last_proc = max((q for q, _ in indexed), default=0)
    for p, snap in snapshots.items():
        recorded = [snap.deliveries[c] for c in cell_ids if c in snap.deliveries]
        if not recorded:
            continue  # not admitted yet, or closed
        counts = recorded[0]
        delivered = sum(counts)
        logged = max((i + 1 for q, i in indexed if q <= p), default=0)
        later = [i for q, i in indexed if q > p]
        if delivered < logged:
            _fail(f"{name}: {logged} items logged by process {p}, {delivered} recorded delivered")
        since = max((q for q, _ in indexed if q <= p), default=0)
        if delivered > logged and not any(inflight.get((q, name)) for q in range(since, p + 1)):
            _fail(f"{name}: {delivered} items recorded delivered, {logged} logged, none in flight")
        start = delivered
        nxt = next((ev for ev in firsts if ev["proc"] > p), None)
        if nxt is not None and nxt["kind"] == "pending" and nxt["generation"] == len(counts):
            # A pausable cell's last delivered frontier (the n-th delivered event is generation
            # n), unresumed, is observed again with its items.
            start = delivered - counts[-1]
        if later and later[0] < start:
            _fail(f"{name}: item {later[0]} delivered again after process {p} recorded {delivered}")
        if (
            later
            and later[0] > start
            and not any(inflight.get((q, name)) for q in range(p + 1, last_proc + 1))
        ):
            _fail(f"{name}: items {start}..{later[0] - 1} skipped after process {p}")


def check_round(
    lines: list[Line],
    snapshots: dict[int, Snapshot],
    reference: dict[str, Outcome],
    last_proc: int,
) -> dict[str, int]:
    """Asserts 1-6 of the module docstring on one round's log; returns counters for the report.

    ``snapshots[p]`` is the store read after process p died (every process but ``last_proc``,
    which finished the workload)."""
    assert set(snapshots) <= set(range(last_proc)), (sorted(snapshots), last_proc)
    stats = {"repeated_calls": 0, "lost_windows": 0, "invocations": 0}
    # In-flight observations at the death of each process: (proc, name) -> True.
    inflight: dict[tuple[int, str], bool] = {}
    for line in lines:
        if line["ev"] == "observe":
            inflight[(line["proc"], line["name"])] = True
        elif line["ev"] in ("event", "missing"):
            inflight[(line["proc"], line["name"])] = False

    # 1, 2, 6: outputs.
    by_name: dict[str, list[Line]] = defaultdict(list)
    for line in lines:
        if line["ev"] in ("event", "missing"):
            by_name[line["name"]].append(line)
    cell_ids: dict[str, set[str]] = defaultdict(set)
    for line in lines:
        if line["ev"] == "cell":
            cell_ids[line["name"]].add(line["cell_id"])
    for name, ids in cell_ids.items():
        if len(ids) != 1:
            _fail(f"{name}: its idempotency key gave several cells: {ids}")
    for name, ref in reference.items():
        events = by_name.get(name, [])
        if not events:
            _fail(f"{name}: never observed")
        pos = 0
        last_proc_of_item = 0  # the process that logged the last item (or first observed)
        frontiers: dict[int, Line] = {}
        used_windows: set[int] = set()
        clock_lines: set[str] = set()
        ended = False

        for ev in events:
            if ended:
                _fail(f"{name}: an event after the terminal one: {ev}")
            proc = ev["proc"]
            terminal = ev["ev"] == "missing" or ev["kind"] in ("completed", "terminated")
            if ev["ev"] == "event" and ev["kind"] == "pending":
                gen = ev["generation"]
                if gen in frontiers:
                    first = frontiers[gen]
                    if (first["items"], first["pending"]) != (ev["items"], ev["pending"]):
                        _fail(f"{name}: frontier {gen} observed differently: {first} vs {ev}")
                    continue
                if frontiers and gen != max(frontiers) + 1:
                    _fail(f"{name}: frontier {gen} after {max(frontiers)}")
                frontiers[gen] = ev
            items = ev.get("items", [])
            start = pos if not items and not terminal else len(ref.items)
            if items:
                start = int(items[0].split(":")[0])
            if start < pos:
                _fail(f"{name}: item {start} delivered twice ({ev})")
            if start > pos or ev["ev"] == "missing":
                # Delivered to a killed process in the window between the runtime recording the
                # delivery and the driver logging it.
                if proc == last_proc_of_item and ev["ev"] != "missing":
                    _fail(f"{name}: items {pos}..{start - 1} lost within process {proc}")
                missing = ev["ev"] == "missing"
                p = _window(name, last_proc_of_item, proc, inflight, used_windows, last=missing)
                if ev["ev"] == "missing":
                    snap = snapshots.get(p)
                    if snap is None or snap.state.get(ev["cell_id"], "absent") == "open":
                        _fail(
                            f"{name}: MissingCell in process {proc} but the cell was not "
                            f"closed in the store after process {p} died"
                        )
                stats["lost_windows"] += 1
                pos = start
            if ev["ev"] == "missing":
                ended = True
                continue
            for item in items:
                index = int(item.split(":")[0])
                if index != pos:
                    _fail(f"{name}: item {index} where {pos} was due ({ev})")
                if pos >= len(ref.items) or _normal(item) != _normal(ref.items[pos]):
                    want = ref.items[pos] if pos < len(ref.items) else "nothing"
                    _fail(f"{name}: item {pos} is {item!r}, the reference has {want!r}")
                if _CLOCK.match(item.split(": ", 1)[1]):
                    clock_lines.add(item.split(": ", 1)[1])
                pos += 1
            if items:
                last_proc_of_item = proc
            if terminal:
                if pos != len(ref.items):
                    _fail(f"{name}: ended at item {pos} of {len(ref.items)}")
                if (ev["kind"], ev["error"]) != (ref.kind, ref.error):
                    _fail(
                        f"{name}: ended {ev['kind']} {ev['error']!r}, not {ref.kind} {ref.error!r}"
                    )
                ended = True
        if not ended:
            _fail(f"{name}: never ended")
        _check_delivered(name, events, snapshots, inflight)
        if len(clock_lines) > 1:
            _fail(f"{name}: the clock and random reads changed across a restart: {clock_lines}")

    # 3, 4, 5: calls.
    invocations: dict[tuple[str, str], list[Line]] = defaultdict(list)
    for line in lines:
        if line["ev"] == "invoke":
            invocations[(line["cell_id"], line["call_id"])].append(line)
            stats["invocations"] += 1
    for (cell_id, call_id), calls in invocations.items():
        token = fault_child.token(cell_id, call_id)
        procs = [c["proc"] for c in calls]
        if len(set(procs)) != len(procs):
            _fail(f"{cell_id} {call_id} invoked twice in one process: {procs}")
        if any((c["tool"], c["input"]) != (calls[0]["tool"], calls[0]["input"]) for c in calls):
            _fail(f"{cell_id} {call_id} invoked with different inputs: {calls}")
        for c in calls:
            for p, snap in snapshots.items():
                if p >= c["proc"]:
                    continue
                if snap.state.get(cell_id) == "closed":
                    _fail(f"{cell_id} {call_id} invoked in process {c['proc']} though closed")
                if token in snap.journal.get(cell_id, ""):
                    _fail(
                        f"{cell_id} {call_id} asked again in process {c['proc']} though its "
                        f"answer was recorded before process {p} died"
                    )
        stats["repeated_calls"] += len(calls) - 1
        for c in calls:
            snap = snapshots.get(c["proc"])
            if snap is None:
                continue  # the last process
            if cell_id not in snap.state:
                _fail(
                    f"{cell_id} called the delegate in process {c['proc']} before it was recorded"
                )
            unanswered = token not in snap.journal.get(cell_id, "")
            reissued = any(d["proc"] > c["proc"] for d in calls)
            if snap.state[cell_id] == "open" and unanswered and not reissued:
                _fail(f"{cell_id} {call_id} unanswered at a kill and never issued again")
    for line in lines:
        recorded = snapshots.get(line["proc"], Snapshot({line.get("cell_id", ""): "open"})).state
        if line["ev"] == "cell" and line["cell_id"] not in recorded:
            _fail(f"{line['name']} ({line['cell_id']}) created but not in the store")
    return stats


async def _snapshot(store: SqliteStore, sid: str) -> Snapshot:
    snap = Snapshot()
    if await store.get_session(sid) is None:
        return snap
    for cell in await store.list_cells(sid):
        snap.state[cell.cell_id] = cell.state
        if cell.state == "open":
            journal = await store.read_journal(sid, cell.cell_id)
            snap.journal[cell.cell_id] = json.dumps([[e.kind, e.payload] for e in journal])
            snap.deliveries[cell.cell_id] = await store.deliveries(sid, cell.cell_id)
    return snap


async def _run_child(
    log: Path, proc: int, store: str, sid: str, err: Path, skip: str = ""
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        str(log),
        str(proc),
        store,
        sid,
        str(LEASE),
        stdout=asyncio.subprocess.PIPE,
        stderr=err.open("w"),
        env={**os.environ, "PYTHONUNBUFFERED": "1", "CODEMODE_FAULT_SKIP": skip},
    )


async def _reference(tmp: Path, skip: str) -> dict[str, Outcome]:
    log = tmp / "reference.log"
    child = await _run_child(log, 0, "none", "reference", tmp / "reference.err", skip)
    rc = await asyncio.wait_for(child.wait(), 600)  # a hang guard: ~40 s at a load of 25
    assert rc == 0, (tmp / "reference.err").read_text()
    return reference_outcomes(fault_child.read_log(str(log)))


async def _until_events(
    child: asyncio.subprocess.Process, log: Path, proc: int, count: int
) -> None:
    """Until process ``proc`` logged ``count`` events (or ended; at most two minutes)."""
    for _ in range(12_000):
        lines = fault_child.read_log(str(log))
        if child.returncode is not None or count <= sum(
            x["ev"] == "event" and x["proc"] == proc for x in lines
        ):
            return
        await asyncio.sleep(0.01)


async def run_fault_injection(
    tmp: Path,
    store: str,
    kills_wanted: int,
    seed: int,
    *,
    early: float = EARLY,
    delays: tuple[float, float] = (0.0, MAX_DELAY),
    kill_at_event: int | None = None,
) -> str:
    """Rounds of the workload in ``store`` (a SQLite path, or ``none``: a runtime that keeps
    nothing, which the checker must catch), SIGKILLing the child ``kills_wanted`` times in all;
    checks every round against the uninterrupted reference run. Returns a summary line."""
    rng = random.Random(seed)
    skip = os.environ.get("CODEMODE_FAULT_SKIP", "")  # cells to leave out, when debugging
    reference = await _reference(tmp, skip)
    assert set(reference) == set(fault_child.CELLS) - set(skip.split(","))
    # The checker on the uninterrupted run itself (one process, nothing lost).
    check_round(fault_child.read_log(str(tmp / "reference.log")), {}, reference, 0)
    reader = SqliteStore(store) if store != "none" else None
    kills = 0
    rounds = 0
    totals: dict[str, int] = defaultdict(int)
    started = time.monotonic()
    try:
        while rounds == 0 or kills < kills_wanted:
            sid = "".join(rng.choice(ALPHABET) for _ in range(16))
            log = tmp / f"round-{rounds}.log"
            snapshots: dict[int, Snapshot] = {}
            proc = 0
            while True:
                err = tmp / f"round-{rounds}-{proc}.err"
                child = await _run_child(log, proc, store, sid, err, skip)
                assert child.stdout is not None
                killed = False
                if kills < kills_wanted:
                    if rng.random() < early:
                        delay = rng.uniform(0.0, 0.6)
                    else:
                        line = await asyncio.wait_for(child.stdout.readline(), 120)
                        if line.strip() != b"opened":
                            await child.wait()
                            raise AssertionError(err.read_text())
                        delay = rng.uniform(*delays)
                    if kill_at_event is not None:  # instead: once it logged that many events
                        await _until_events(child, log, proc, kill_at_event)
                        delay = 0.0
                    try:
                        await asyncio.wait_for(asyncio.shield(child.wait()), delay)
                    except TimeoutError:
                        try:
                            child.send_signal(signal.SIGKILL)
                        except ProcessLookupError:
                            pass  # it exited on its own as the delay ran out: not a kill
                        else:
                            killed = True
                            kills += 1
                rc = await asyncio.wait_for(child.wait(), 180)
                await child.stdout.read()
                fault_child.drop_torn_tail(str(log))
                if killed and rc != -signal.SIGKILL:
                    killed = False  # it exited on its own just before the signal
                    kills -= 1
                finished = any(
                    x["ev"] == "done" and x["proc"] == proc for x in fault_child.read_log(str(log))
                )
                if finished:  # killed, if at all, in the final shutdown (which deletes the cells)
                    assert rc in (0, -signal.SIGKILL), (rc, err.read_text())
                    break
                if killed:
                    pass
                elif rc == 3:
                    totals["lease_lost"] += 1  # the child lost its lease: restart it
                else:
                    assert rc == 0, err.read_text()
                    break
                snapshots[proc] = await _snapshot(reader, sid) if reader else Snapshot()
                proc += 1
            stats = check_round(fault_child.read_log(str(log)), snapshots, reference, proc)
            for k, v in stats.items():
                totals[k] += v
            totals["processes"] += proc + 1
            rounds += 1
    finally:
        if reader is not None:
            await reader.close()
    assert kills == kills_wanted
    return (
        f"{kills} kills over {rounds} rounds in {time.monotonic() - started:.0f} s; {dict(totals)}"
    )


class _Parked:
    """A delegate that records each call's input and never answers."""

    def __init__(self) -> None:
        self.inputs: list[Any] = []
        self.called = asyncio.Event()

    async def invoke_tool(self, call: NestedToolCall) -> Any:
        self.inputs.append(call.input)
        self.called.set()
        await asyncio.Event().wait()

    async def notify(self, call_id: str, cell_id: str, text: str) -> None:
        pass


async def reads_survive_a_reopen(tmp: Path) -> bool:
    """Whether a cell that read ``Date.now()`` and ``Math.random()`` and sent them in a call
    issues that call with the same values after its session is suspended and reopened."""
    db, sid = tmp / "reads.db", "readsprobe000000"
    source = "await tools.step({t: Date.now(), r: Math.random()});"
    inputs = []
    for _ in range(2):
        delegate = _Parked()
        rt = SessionRuntime(delegate, store=SqliteStore(db), session_id=sid)
        await rt.open()
        await rt.create_cell(
            CreateCellRequest(source, (fault_child.STEP,), idempotency_key="probe")
        )
        await asyncio.wait_for(delegate.called.wait(), 60)
        inputs.append(delegate.inputs[0])
        await rt.suspend()
    return bool(inputs[0] == inputs[1])


def _seed() -> int:
    seed = int(os.environ.get("CODEMODE_FAULT_SEED") or random.randrange(2**32))
    print(f"\nfault injection: CODEMODE_FAULT_SEED={seed} CODEMODE_FAULT_KILLS={KILLS}")
    return seed


DURABLE = "store" in inspect.signature(SessionRuntime.__init__).parameters


@pytest.mark.skipif(
    not DURABLE, reason="durable sessions (SessionRuntime(store=...)) not built yet"
)
@pytest.mark.timeout(900)
async def test_sigkill_at_random_instants_loses_nothing_and_repeats_nothing(
    tmp_path: Path,
) -> None:
    summary = await run_fault_injection(tmp_path, str(tmp_path / "sessions.db"), KILLS, _seed())
    print(f"fault injection: {summary}")


@pytest.mark.skipif(
    not DURABLE, reason="durable sessions (SessionRuntime(store=...)) not built yet"
)
async def test_clock_and_random_reads_survive_a_reopen(tmp_path: Path) -> None:
    assert await reads_survive_a_reopen(tmp_path)


@pytest.mark.timeout(900)  # a reference run and a killed round: ~110 s at a load of 25
async def test_the_harness_catches_a_runtime_that_forgets_its_cells(tmp_path: Path) -> None:
    """The same harness against a runtime without a store (each new process starts the session
    afresh): one kill in the middle of the workload must be caught."""
    with pytest.raises(FaultCheckError, match="several cells"):
        await run_fault_injection(tmp_path, "none", 1, 1, early=0.0, kill_at_event=3)


# ----------------------------------------------------------------- the checker, on made-up logs


def _ref() -> dict[str, Outcome]:
    return {"a": Outcome(["0: x", "1: y", "2: z"], "completed", None)}


def _ev(proc: int, items: list[str], kind: str = "yielded", cell: str = "c1") -> Line:
    line: Line = {"ev": "event", "proc": proc, "name": "a", "cell_id": cell, "kind": kind}
    line.update(items=items, error=None)
    return line


def _obs(proc: int) -> Line:
    return {"ev": "observe", "proc": proc, "name": "a", "cell_id": "c1"}


def _call(proc: int, ev: str = "invoke", call_id: str = "tool-1", data: Any = 1) -> Line:
    return {
        "ev": ev,
        "proc": proc,
        "cell_id": "c1",
        "call_id": call_id,
        "tool": "step",
        "input": data,
    }


OPEN = Snapshot({"c1": "open"}, {"c1": ""})


def test_the_checker_accepts_a_clean_restart() -> None:
    lines = [
        _call(0),
        _obs(0),
        _ev(0, ["0: x"]),
        _obs(0),  # in flight at the kill: its event was recorded, not logged
        _call(1),
        _obs(1),
        _ev(1, ["2: z"], "completed"),
    ]
    stats = check_round(lines, {0: OPEN}, _ref(), 1)
    assert stats == {"repeated_calls": 1, "lost_windows": 1, "invocations": 2}


def test_the_checker_accepts_a_frontier_delivered_to_a_killed_process_and_observed_again() -> None:
    def frontier(proc: int, generation: int, items: list[str]) -> Line:
        line = _ev(proc, items, "pending")
        line.update(generation=generation, pending=["tool-1"])
        return line

    lines = [
        frontier(0, 1, ["0: x"]),
        _obs(0),  # frontier 2 reached, recorded delivered, then the kill: never logged
        frontier(1, 2, ["1: y"]),  # observed again after the reopen
        frontier(1, 2, ["1: y"]),
        _ev(1, ["2: z"], "completed"),
    ]
    snapshot = Snapshot({"c1": "open"}, {"c1": ""}, {"c1": [1, 1]})
    assert check_round(lines, {0: snapshot}, _ref(), 1)["lost_windows"] == 0


@pytest.mark.parametrize(
    ("lines", "snapshots", "message"),
    [
        ([_ev(0, ["0: x", "1: y"]), _ev(1, ["1: y", "2: z"], "completed")], {0: OPEN}, "twice"),
        ([_ev(0, ["0: x"]), _ev(1, ["2: z"], "completed")], {0: OPEN}, "lost"),
        ([_ev(0, ["0: x"]), _ev(0, ["2: z"], "completed")], {}, "lost within"),
        ([_ev(0, ["0: x", "1: q", "2: z"], "completed")], {}, "reference has"),
        ([_ev(0, ["0: x", "1: y", "2: z"], "completed"), _call(0), _call(0)], {}, "twice in one"),
        (
            [_ev(1, ["0: x", "1: y", "2: z"], "completed"), _call(0), _call(1)],
            {0: Snapshot({"c1": "open"}, {"c1": '["ans/c1/tool-1/"]'})},
            "asked again",
        ),
        (
            [_ev(1, ["0: x", "1: y", "2: z"], "completed"), _call(0), _call(1, data=2)],
            {0: OPEN},
            "different inputs",
        ),
        ([_ev(1, ["0: x", "1: y", "2: z"], "completed"), _call(0)], {0: OPEN}, "never issued"),
        ([_ev(1, ["0: x", "1: y", "2: z"], "completed"), _call(0)], {0: Snapshot()}, "before it"),
        (
            [_ev(0, ["0: x", "1: y"]), _ev(1, ["2: z"], "completed")],
            {0: Snapshot({"c1": "open"}, {"c1": ""}, {"c1": [1]})},
            "2 items logged by process 0, 1 recorded",
        ),
        (
            [_ev(0, ["0: x"]), _obs(0), _ev(1, ["1: y", "2: z"], "completed")],
            {0: Snapshot({"c1": "open"}, {"c1": ""}, {"c1": [1, 1]})},
            "delivered again",
        ),
        (
            [_obs(0), {"ev": "missing", "proc": 1, "name": "a", "cell_id": "c1"}],
            {0: OPEN},
            "not closed",
        ),
    ],
)
def test_the_checker_catches(
    lines: list[Line], snapshots: dict[int, Snapshot], message: str
) -> None:
    with pytest.raises(FaultCheckError, match=message):
        check_round(lines, snapshots, _ref(), max(line["proc"] for line in lines))
