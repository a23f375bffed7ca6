"""Property-based test of pausable cells on real V8 (docs/sessions.md).

Each example drives one pausable cell with a random sequence of host operations (answer an
outstanding call, resume a current, stale or future generation, observe, duplicate concurrent
resumes, let time pass), then finishes the program, and checks the invariants of docs/sessions.md:

- repeated observations of one generation are identical; distinct frontiers have strictly
  increasing generations;
- the items of the distinct frontiers plus the terminal event are the cell's whole output, once,
  in order;
- every generation reached is resumed exactly once (exactly one ``RESUMED`` per generation);
- ``InvalidGeneration`` is raised only for generations never reached, and its ``latest`` is the
  latest generation reached at that moment.

Each example runs in its own event loop (``asyncio.run``) with its own runtime.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from codemode import (
    Completed,
    CreateCellRequest,
    InvalidGeneration,
    NestedToolCall,
    OutputItem,
    Pending,
    PendingFrontier,
    ResumeOutcome,
    SessionRuntime,
    TextItem,
    ToolDefinition,
)

T = ToolDefinition("t", "Returns {n} when the host answers.")

SOURCE = """
text("start");
const [a, b] = await Promise.all([tools.t({n: 1}), tools.t({n: 2})]);
text("ab " + a.n + b.n);
const c = await tools.t({n: 3});
text("c " + c.n);
const [d, e, f] = await Promise.all([
  tools.t({n: 4}).then(v => { text("d " + v.n); return v; }),
  tools.t({n: 5}),
  tools.t({n: 6}).then(v => { text("f " + v.n); return v; }),
]);
text("def " + (d.n + e.n + f.n));
text("done");
"""


def expected_output(answers: dict[int, int]) -> list[str]:
    """The whole output given the order in which calls 4 and 6 were answered."""
    d_f = ["d 4", "f 6"] if answers[4] < answers[6] else ["f 6", "d 4"]
    return ["start", "ab 12", "c 3", *d_f, "def 15", "done"]


def call_number(call_id: str) -> int:
    return int(call_id.removeprefix("tool-"))


class ParkingDelegate:
    """Each call parks a future until the test answers it (docs/sessions.md step 1)."""

    def __init__(self) -> None:
        self.futures: dict[str, asyncio.Future[Any]] = {}
        self.inputs: dict[str, Any] = {}
        self.answer_order: dict[int, int] = {}

    async def invoke_tool(self, call: NestedToolCall) -> Any:
        future = asyncio.get_running_loop().create_future()
        self.futures[call.call_id] = future
        self.inputs[call.call_id] = call.input
        return await future

    def outstanding(self) -> list[str]:
        return sorted((k for k, f in self.futures.items() if not f.done()), key=call_number)

    def answer(self, call_id: str) -> None:
        future = self.futures[call_id]
        if not future.done():
            n = self.inputs[call_id]["n"]
            self.answer_order[n] = len(self.answer_order)
            future.set_result({"n": n})

    async def notify(self, call_id: str, cell_id: str, text: str) -> None:
        return None


@dataclass
class Log:
    frontiers: dict[int, PendingFrontier] = field(default_factory=dict)
    observed_order: list[int] = field(default_factory=list)  # distinct generations, in order
    resumed: list[int] = field(default_factory=list)  # generations that got RESUMED
    invalid: list[tuple[int, int | None]] = field(default_factory=list)

    def known_max(self) -> int:
        """A lower bound of the latest generation the cell has reached."""
        return max([0, *self.frontiers, *self.resumed])

    def record_frontier(self, frontier: PendingFrontier, invoked: set[str]) -> None:
        seen = self.frontiers.get(frontier.generation)
        if seen is not None:
            assert frontier == seen, "observing a frontier again must repeat it"
            return
        if self.observed_order:
            assert frontier.generation > self.observed_order[-1], "generations must increase"
        ids = frontier.pending_tool_call_ids
        assert list(ids) == sorted(ids, key=call_number), ids
        assert set(ids) <= invoked, (ids, invoked)
        self.frontiers[frontier.generation] = frontier
        self.observed_order.append(frontier.generation)

    def record_outcomes(self, generation: int, outcomes: list[Any]) -> None:
        """Check the outcomes of one or more concurrent ``resume(generation)`` calls."""
        before = self.known_max()
        n_resumed = sum(1 for o in outcomes if o is ResumeOutcome.RESUMED)
        assert n_resumed <= 1, outcomes
        if n_resumed:
            assert generation not in self.resumed, f"gen {generation} RESUMED twice"
            assert generation >= before, (generation, before)
            self.resumed.append(generation)
        for outcome in outcomes:
            if isinstance(outcome, InvalidGeneration):
                latest = outcome.latest
                # Only for a generation never reached; `latest` is the latest one reached.
                assert latest is None or generation > latest, (generation, latest)
                assert (latest or 0) >= before, (latest, before)
                assert n_resumed == 0
                self.invalid.append((generation, latest))
            elif outcome is ResumeOutcome.ALREADY_RUNNING:
                # A stale or repeated resume: that generation was already resumed.
                assert 1 <= generation <= max(self.resumed, default=0), (generation, self.resumed)
            elif outcome is not ResumeOutcome.RESUMED:
                raise AssertionError(f"unexpected resume outcome {outcome!r}")


async def resume_all(rt: SessionRuntime, cell: Any, generation: int, copies: int) -> list[Any]:
    async def one() -> Any:
        try:
            return await rt.resume(cell, generation)
        except InvalidGeneration as exc:
            assert exc.requested == generation and exc.cell_id == cell.cell_id
            return exc

    return list(await asyncio.gather(*(one() for _ in range(copies))))


OPS = ("answer", "resume", "observe", "duplicate", "sleep")
BUDGETS = (0.005, 0.03)
SLEEPS = (0.0, 0.001, 0.01)

# One host operation: its kind and two selectors, interpreted against the state at run time.
# Everything is drawn before the run, so data generation never depends on timing.
operations = st.lists(
    st.tuples(st.sampled_from(OPS), st.integers(0, 1000), st.integers(0, 1000)),
    max_size=60,
)


async def scenario(ops: list[tuple[str, int, int]], finish_seed: int) -> None:
    delegate = ParkingDelegate()
    log = Log()
    finisher = random.Random(finish_seed)
    async with SessionRuntime(delegate) as rt:
        cell = await rt.create_pausable_cell(CreateCellRequest(SOURCE, (T,)))
        terminal: Completed | None = None

        async def observe(budget: float) -> PendingFrontier | None:
            nonlocal terminal
            try:
                event = await asyncio.wait_for(rt.wait_to_pending(cell), budget)
            except TimeoutError:
                return None  # cancelled: docs/sessions.md says it loses nothing
            if isinstance(event, Pending):
                log.record_frontier(event.frontier, set(delegate.futures))
                return event.frontier
            assert isinstance(event, Completed), event
            terminal = event
            return None

        for op, x, y in ops:
            if terminal is not None:
                break
            if op == "answer":
                outstanding = delegate.outstanding()
                if outstanding:
                    delegate.answer(outstanding[x % len(outstanding)])
            elif op in ("resume", "duplicate"):
                known = log.known_max()
                which = ("current", "stale", "future")[x % 3]
                if which == "stale" and known > 1:
                    generation = 1 + y % (known - 1)
                elif which == "future":
                    generation = known + 1 + y % 2
                else:
                    generation = max(known, 1)
                copies = 2 if op == "duplicate" else 1
                log.record_outcomes(generation, await resume_all(rt, cell, generation, copies))
            elif op == "observe":
                await observe(BUDGETS[x % len(BUDGETS)])
            else:
                await asyncio.sleep(SLEEPS[x % len(SLEEPS)])

        # Finish the program: answer some calls (at least one), observe, resume the frontier.
        for _ in range(50):
            if terminal is not None:
                break
            outstanding = delegate.outstanding()
            if outstanding:
                count = finisher.randint(1, len(outstanding))
                for call_id in finisher.sample(outstanding, count):
                    delegate.answer(call_id)
            frontier = await observe(5.0)
            if terminal is None:
                assert frontier is not None, "a frontier or the end must come within 5 s"
                generation = frontier.generation
                log.record_outcomes(generation, await resume_all(rt, cell, generation, 1))
        assert terminal is not None, "the cell did not complete"
        assert terminal.error_text is None, terminal.error_text

    event(f"distinct frontiers: {len(log.frontiers)}")
    event(f"generations reached: {max(log.resumed, default=0)}")
    event(f"InvalidGeneration raised: {bool(log.invalid)}")

    # Whole output, once, in order.
    items: list[OutputItem] = [i for g in log.observed_order for i in log.frontiers[g].items]
    items.extend(terminal.items)
    assert all(isinstance(i, TextItem) for i in items)
    texts = [i.text for i in items if isinstance(i, TextItem)]
    assert texts == expected_output(delegate.answer_order)

    # Exactly one RESUMED per generation reached, and every generation reached was resumed.
    counts = Counter(log.resumed)
    assert all(n == 1 for n in counts.values()), counts
    top = max(counts, default=0)
    assert set(counts) == set(range(1, top + 1)), sorted(counts)
    assert set(log.frontiers) <= set(counts)
    # Consecutive distinct frontiers differ: a resume never reproduces the frontier it consumed.
    for g1, g2 in zip(log.observed_order, log.observed_order[1:], strict=False):
        f1, f2 = log.frontiers[g1], log.frontiers[g2]
        assert (f1.items, f1.pending_tool_call_ids) != (f2.items, f2.pending_tool_call_ids)
    # InvalidGeneration only named generations beyond the latest reached then.
    for requested, latest in log.invalid:
        assert latest is None or (requested > latest and latest in counts)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(ops=operations, finish_seed=st.integers(0, 2**32 - 1))
def test_random_host_operations_keep_the_frontier_invariants(
    ops: list[tuple[str, int, int]], finish_seed: int
) -> None:
    asyncio.run(scenario(ops, finish_seed))
