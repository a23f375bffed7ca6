"""The host-side authority over drain reports (codemode.cell.authority), with no engine.

Every rule is attacked with a forged report; a property test feeds random forged reports and
checks that the authority never raises and never lets anything past a rule.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codemode.cell.authority import (
    MAX_LIVE_TIMERS,
    MAX_STORED_DEPTH,
    MIN_ITEM_BYTES,
    CellAuthority,
)
from codemode.cell.stored import StoredSnapshot, entry_bytes
from codemode.engine.base import (
    NotifyRequested,
    OutputProduced,
    StepReport,
    StoresWritten,
    TimerCleared,
    TimerFired,
    TimerSet,
    ToolCallRequested,
    ToolResultInput,
    YieldRequested,
)
from codemode.model import CellLimits, Completed, TextItem, ToolDefinition, ToolKind

FN = ToolDefinition("fn")
FREE = ToolDefinition("free", kind=ToolKind.FREEFORM)
REFUSED = "exec cell sent a report the host refused: "


def auth(limits: CellLimits | None = None, pausable: bool = True, stored: Any = None) -> Any:
    return CellAuthority((FN, FREE), limits or CellLimits(), pausable=pausable, stored=stored)


def drain(events: list[Any], pending: Any = None, settled: Any = None) -> str:
    return json.dumps({"ev": events, "pending": pending, "settled": settled}, separators=(",", ":"))


def refused(report: StepReport) -> str:
    assert report.settlement is not None and report.settlement.error_text is not None
    return report.settlement.error_text


def test_a_valid_report_passes_through() -> None:
    a = auth()
    r = a.accept_raw(
        drain(
            [
                ["text", "hi"],
                ["call", "tool-1", 0, {"x": 1}],
                ["call", "tool-2", 1, "go"],
                ["timer", 1, 5],
                ["notify", "n"],
                ["store", "k", '{"a":[1]}'],
            ],
            ["tool-2", "tool-1"],
        )
    )
    assert r.settlement is None
    assert r.pending_call_ids == ("tool-1", "tool-2")
    assert [type(e) for e in r.events] == [
        OutputProduced,
        ToolCallRequested,
        ToolCallRequested,
        TimerSet,
        NotifyRequested,
        StoresWritten,
    ]
    assert r.events[3] == TimerSet(1, 0.005)
    assert r.events[5] == StoresWritten({"k": '{"a":[1]}'})


def test_call_ids_must_be_unique_and_in_sequence() -> None:
    a = auth()
    r = a.accept_raw(drain([["call", "tool-1", 0, {}], ["call", "tool-1", 0, {}]]))
    assert len(r.events) == 1  # the events before the offending one are kept
    assert refused(r).startswith(REFUSED) and "'tool-2' was due" in refused(r)
    assert a.ended
    assert auth().accept_raw(drain([["call", "tool-7", 0, {}]])).settlement is not None
    assert auth().accept_raw(drain([["call", 'tool-1"]', 0, {}]])).settlement is not None


def test_tool_index_and_kind() -> None:
    for bad in (2, -1, True, 0.0, "0", None):
        assert REFUSED in refused(auth().accept_raw(drain([["call", "tool-1", bad, {}]])))
    assert "non-string" in refused(auth().accept_raw(drain([["call", "tool-1", 1, {"a": 1}]])))
    assert "non-object" in refused(auth().accept_raw(drain([["call", "tool-1", 0, "str"]])))
    assert "non-object" in refused(auth().accept_raw(drain([["call", "tool-1", 0, [1]]])))


def test_non_finite_json_is_refused() -> None:
    for literal in ("NaN", "Infinity", "-Infinity"):
        raw = '{"ev":[["call","tool-1",0,{"x":' + literal + '}]],"pending":null,"settled":null}'
        assert "non-finite" in refused(auth().accept_raw(raw))


def test_call_count_limit() -> None:
    a = auth(CellLimits(max_tool_calls=3))
    events = [["call", f"tool-{i}", 0, {}] for i in range(1, 6)]
    r = a.accept_raw(drain(events))
    assert len(r.events) == 3
    assert refused(r) == "exec cell exceeded max_tool_calls (3)"


def test_output_bytes_count_every_item_at_least_its_framing() -> None:
    limits = CellLimits(max_output_bytes=1024)
    r = auth(limits).accept_raw(drain([["text", ""]] * 1000))
    assert refused(r) == "exec cell exceeded max_output_bytes (1024)"
    assert len(r.events) == 1024 // MIN_ITEM_BYTES
    r = auth(limits).accept_raw(drain([["text", "é" * 512]]))  # 1024 UTF-8 bytes: fits
    assert r.settlement is None
    r = auth(limits).accept_raw(drain([["text", "é" * 512], ["notify", "x"]]))
    assert refused(r) == "exec cell exceeded max_output_bytes (1024)"
    r = auth(limits).accept_raw(drain([["image", "data:" + "a" * 2000, "high"]]))
    assert refused(r) == "exec cell exceeded max_output_bytes (1024)"


def test_images_and_notifications() -> None:
    assert "data: URL" in refused(auth().accept_raw(drain([["image", "https://x/y.png", "high"]])))
    assert REFUSED in refused(auth().accept_raw(drain([["image", "data:,", "huge"]])))
    assert "empty notification" in refused(auth().accept_raw(drain([["notify", "  "]])))


def test_timers_bounded_and_cleared_ones_leave_the_record() -> None:
    a = auth()
    r = a.accept_raw(drain([["timer", 1, 10], ["timer", 2, 10], ["clear", 1]]))
    assert r.events[2] == TimerCleared(1)
    assert a.live_timers == 1
    a.inputs([TimerFired(2)])
    assert a.live_timers == 0
    assert "not live" in refused(a.accept_raw(drain([["clear", 2]])))
    b = auth()
    events = [["timer", i, 1] for i in range(1, MAX_LIVE_TIMERS + 2)]
    assert "live timers" in refused(b.accept_raw(drain(events)))
    for bad in ([["timer", 1, -1]], [["timer", 0, 1]], [["timer", 1, 1], ["timer", 1, 1]]):
        assert REFUSED in refused(auth().accept_raw(drain(bad)))
    raw = '{"ev":[["timer",1,Infinity]],"pending":null,"settled":null}'
    assert REFUSED in refused(auth().accept_raw(raw))


def test_yields_coalesce() -> None:
    r = auth().accept_raw(drain([["yield"]] * 1000 + [["text", "a"], ["yield"], ["yield"]]))
    assert [type(e) for e in r.events] == [YieldRequested, OutputProduced, YieldRequested]


def test_pending_only_outstanding_calls() -> None:
    a = auth()
    a.accept_raw(
        drain([["call", "tool-1", 0, {}], ["call", "tool-2", 0, {}]], ["tool-1", "tool-2"])
    )
    a.inputs([ToolResultInput("tool-1", True, "1")])
    assert a.accept_raw(drain([], ["tool-2"])).pending_call_ids == ("tool-2",)
    assert "outstanding" in refused(auth().accept_raw(drain([], ["tool-1"])))
    b = auth()
    b.accept_raw(drain([["call", "tool-1", 0, {}]], ["tool-1"]))
    assert "twice" in refused(b.accept_raw(drain([], ["tool-1", "tool-1"])))


def test_settlements() -> None:
    assert auth().accept_raw(drain([], None, {"ok": True})).settlement is not None
    r = auth(CellLimits(max_cpu_seconds=0.5)).accept_raw(
        drain([], None, {"ok": False, "limit": "max_cpu_seconds"})
    )
    assert refused(r) == "exec cell exceeded max_cpu_seconds (0.5)"
    assert "unknown limit" in refused(
        auth().accept_raw(drain([], None, {"ok": False, "limit": "__class__"}))
    )
    for bad in ({"ok": 1}, [], {"ok": False}, {"ok": True, "x": 1}, "ok"):
        assert REFUSED in refused(auth().accept_raw(drain([], None, bad)))


def test_stored_values_budget_depth_and_json() -> None:
    snapshot = StoredSnapshot.from_values({"big": "x" * 100})
    limits = CellLimits(max_stored_bytes=snapshot.total_bytes + 20)
    a = auth(limits, stored=snapshot)
    # overwriting a key frees what it held
    assert a.accept_raw(drain([["store", "big", '"small"']])).settlement is None
    b = auth(limits, stored=snapshot)
    r = b.accept_raw(drain([["store", "other", '"' + "y" * 30 + '"']]))
    assert refused(r) == f"exec cell exceeded max_stored_bytes ({limits.max_stored_bytes})"
    deep = "[" * (MAX_STORED_DEPTH + 1) + "]" * (MAX_STORED_DEPTH + 1)
    assert "deeper" in refused(auth().accept_raw(drain([["store", "k", deep]])))
    very_deep = "[" * 100_000 + "]" * 100_000
    assert REFUSED in refused(auth().accept_raw(drain([["store", "k", very_deep]])))
    assert REFUSED in refused(auth().accept_raw(drain([["store", "k", "{"]])))
    assert REFUSED in refused(auth().accept_raw(drain([["store", "k", "NaN"]])))
    assert REFUSED in refused(auth().accept_raw(drain([["store", 1, "1"]])))
    assert entry_bytes("k", "1") == len('"k":1,')


def test_malformed_reports_end_the_cell_never_the_host() -> None:
    for raw in (
        None,
        42,
        "",
        "{",
        "[]",
        '{"ev":[],"pending":null}',
        '{"ev":[["text","a"]"x"],"pending":null,"settled":null}',
        '{"ev":[],"pending":null,"settled":null,"x":1}',
        '{"ev":[' + "[" * 100_000,
        '{"ev":[["nope"]],"pending":null,"settled":null}',
        '{"ev":[[]],"pending":null,"settled":null}',
        '{"ev":[["text"]],"pending":null,"settled":null}',
        '{"ev":[["text",1]],"pending":null,"settled":null}',
    ):
        r = auth().accept_raw(raw)
        assert REFUSED in refused(r), raw


def test_nothing_is_accepted_after_the_cell_ended() -> None:
    a = auth()
    a.accept_raw(drain([], None, {"ok": True}))
    assert REFUSED in refused(a.accept_raw(drain([["text", "late"]])))


# ---------------------------------------------------------------------------- property test

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.floats(allow_nan=False)
    | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)
_tags = st.sampled_from(
    ["text", "image", "notify", "call", "yield", "timer", "clear", "store", "x"]
)
_ids = st.one_of(st.integers(0, 6).map(lambda n: f"tool-{n}"), _json)
_event = st.one_of(
    st.tuples(_tags).map(list),
    st.tuples(_tags, _json).map(list),
    st.tuples(st.just("call"), _ids, st.integers(-1, 2) | _json, _json).map(list),
    st.tuples(st.just("timer"), st.integers(-1, 8), st.floats() | _json).map(list),
    st.tuples(st.just("clear"), st.integers(0, 8)).map(list),
    st.tuples(st.just("store"), st.text(max_size=3), _json.map(json.dumps) | st.text()).map(list),
    st.tuples(st.just("image"), st.text(max_size=8).map(lambda t: "data:" + t), _json).map(list),
    _json,
)
_pending = st.none() | st.lists(_ids, max_size=4) | _json
_settled = (
    st.none()
    | st.just({"ok": True})
    | st.fixed_dictionaries({"ok": st.just(False), "limit": st.text(max_size=20)})
    | st.fixed_dictionaries({"ok": st.just(False), "error": st.text(max_size=5)})
    | _json
)
_report = st.tuples(st.lists(_event, max_size=12), _pending, _settled)
_mangle = st.sampled_from(["none", "nan", "cut", "junk"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_report, _mangle), min_size=1, max_size=6), st.integers(1, 4))
def test_forged_reports_never_break_a_rule(
    reports: list[tuple[tuple[Any, Any, Any], str]], max_calls: int
) -> None:
    limits = CellLimits(max_tool_calls=max_calls, max_output_bytes=64, max_stored_bytes=64)
    a = CellAuthority((FN, FREE), limits, pausable=True)
    issued: list[str] = []
    live_timers: set[int] = set()
    output = 0
    for (events, pending, settled), mangle in reports:
        raw = json.dumps({"ev": events, "pending": pending, "settled": settled})
        if mangle == "nan":
            raw = raw.replace("null", "NaN", 1)
        elif mangle == "cut":
            raw = raw[: len(raw) // 2]
        elif mangle == "junk":
            raw = raw + "]"
        was_ended = a.ended
        report = a.accept_raw(raw)  # never raises
        if was_ended:
            assert report.events == () and report.settlement is not None
        for ev in report.events:
            if isinstance(ev, ToolCallRequested):
                issued.append(ev.call_id)
                assert ev.call_id == f"tool-{len(issued)}"
                tool = (FN, FREE)[ev.tool_index]
                assert isinstance(ev.input, str if tool.kind is ToolKind.FREEFORM else dict)
                json.dumps(ev.input, allow_nan=False)  # finite JSON only
            elif isinstance(ev, OutputProduced | NotifyRequested):
                text = (
                    ev.text if isinstance(ev, NotifyRequested) else getattr(ev.item, "text", None)
                )
                url = getattr(getattr(ev, "item", None), "image_url", None)
                content = text if text is not None else url
                assert isinstance(content, str)
                output += max(len(content.encode("utf-8", "surrogatepass")), MIN_ITEM_BYTES)
            elif isinstance(ev, TimerSet):
                assert ev.timer_id not in live_timers and ev.delay >= 0
                live_timers.add(ev.timer_id)
            elif isinstance(ev, TimerCleared):
                assert ev.timer_id in live_timers
                live_timers.discard(ev.timer_id)
            elif isinstance(ev, StoresWritten):
                for text in ev.writes.values():
                    json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
        assert len(issued) <= max_calls
        assert output <= limits.max_output_bytes
        assert set(report.pending_call_ids) <= set(issued)
        assert len(set(report.pending_call_ids)) == len(report.pending_call_ids)
        if report.settlement is not None:
            assert a.ended


# ---------------------------------------------------------------------------- wired in V8


def _forge(monkeypatch: pytest.MonkeyPatch, forged: str) -> list[str]:
    """Make the V8 engine read ``forged`` as the first drain after the body started."""
    from codemode.engine import v8

    original = v8._V8Cell._eval
    seen: list[str] = []

    async def _eval(self: Any, fn: Any, *args: str, drain: bool = False) -> Any:
        result = await original(self, fn, *args, drain=drain)
        if (drain or fn is self._bridge.drain) and not seen:
            seen.append(result)
            return forged
        return result

    monkeypatch.setattr(v8._V8Cell, "_eval", _eval)
    return seen


@pytest.mark.parametrize(
    ("forged", "expected"),
    [
        (
            drain([["call", f"tool-{i}", 0, {}] for i in range(1, 5001)]),
            "exec cell exceeded max_tool_calls (10)",
        ),
        (drain([["call", "tool-1", 0, "str"]]), REFUSED),
        (drain([["call", "tool-1", 3, {"a": 1}]]), REFUSED),  # upper is freeform
        ('{"ev":[["call","tool-1",0,{"x":NaN}]],"pending":null,"settled":null}', REFUSED),
        (drain([["call", "tool-1", 0, {}], ["call", "tool-1", 0, {}]]), REFUSED),
        (drain([["text", ""]] * 100_000), "exec cell exceeded max_output_bytes (1048576)"),
        ("not json at all", REFUSED),
    ],
)
async def test_the_engine_ends_a_cell_whose_report_breaks_a_rule(
    monkeypatch: pytest.MonkeyPatch, forged: str, expected: str
) -> None:
    from codemode import SessionRuntime
    from conftest import RecordingDelegate, request

    _forge(monkeypatch, forged)
    delegate = RecordingDelegate()
    rt = SessionRuntime(delegate, limits=CellLimits(max_tool_calls=10))
    try:
        cell = await rt.create_cell(request("await tools.block({})"))
        ev = await asyncio.wait_for(rt.wait(cell, 20), 25)
        assert isinstance(ev, Completed), ev
        assert ev.error_text is not None and ev.error_text.startswith(expected), ev.error_text
        assert len(delegate.calls) <= 10  # only calls within every rule reach it
        assert all(isinstance(c.input, dict) for c in delegate.calls)
        delegate.release()
        nxt = await rt.create_cell(request("text(1)"))
        assert await asyncio.wait_for(rt.wait(nxt, 20), 25) == Completed((TextItem("1"),))
    finally:
        await asyncio.wait_for(rt.shutdown(), 10)
