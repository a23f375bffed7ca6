"""The recording path's format stays what earlier releases wrote (docs/durability.md).

A step entry carries each answered call's input digest, which replay compares with the input
the call is issued with again: a digest computed differently would make every journal recorded
before diverge. The values below were computed by the earlier implementation of
``input_digest`` (``json.JSONEncoder(sort_keys=True, ...).encode`` at every call), so a faster
implementation must reproduce them exactly, including the inputs JSON cannot hold (their
``repr``) and circular ones.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from codemode import Completed, SessionRuntime, SqliteStore
from codemode.cell.journal import input_digest
from conftest import RecordingDelegate, request


class _Opaque:
    def __repr__(self) -> str:
        return "T()"


def _circular() -> dict[str, Any]:
    value: dict[str, Any] = {"a": 1}
    value["self"] = value
    return value


def _deep() -> dict[str, Any]:
    root: dict[str, Any] = {}
    node = root
    for _ in range(200):
        node["n"] = {}
        node = node["n"]
    return root


# (input, the digest the earlier implementation recorded for it)
RECORDED: list[tuple[Any, str]] = [
    ({"i": 16, "v": 15}, "fa62718a810123b2"),
    ({"b": [1, 2.5, None, True, False], "a": {"z": "é✓", "y": -0.0}}, "5baa111ac5356a2a"),
    ('free text \u2028 with "quotes" and \\ slash', "2ef3996c11f07273"),
    (
        {
            "nan": math.nan,
            "inf": math.inf,
            "ninf": -math.inf,
            "big": 1e300,
            "small": 5e-324,
            "int": 2**70,
        },
        "082ab39c8daf0e69",
    ),
    ({"lone": "\ud800x", "ctrl": "\x00\x1f\x7f"}, "a05c31a87aaf8a4b"),
    ({}, "01e7b720ff566d53"),
    ([], "71857576257465c7"),
    ({"obj": _Opaque()}, "33c370a019e6df80"),  # not JSON: its repr
    ({1: "int key", "k": (1, 2)}, "6a999c65d15307c4"),  # keys that do not sort: its repr
    (_circular(), "9110b7c3fbcb63f1"),  # circular: its repr
    (_deep(), "d5f402fd691e51bb"),
]


@pytest.mark.parametrize("value,digest", RECORDED, ids=[str(i) for i in range(len(RECORDED))])
def test_input_digest_keeps_the_values_earlier_releases_recorded(value: Any, digest: str) -> None:
    assert input_digest(value) == digest


async def test_a_recorded_step_holds_the_earlier_digest_and_replays(tmp_path: Path) -> None:
    """End to end: the step entry of an answered call holds the digest an earlier release
    recorded for that input (keys given unsorted), and a new runtime replays it without
    asking the delegate again."""
    path = tmp_path / "s.db"
    first = RecordingDelegate()
    rt = SessionRuntime(first, store=SqliteStore(path))
    await rt.open()
    source = (
        "const a = await tools.block({v: 15, i: 16});"
        "const b = await tools.block({i: a.i + 1}); text(`${a.i} ${b.i}`);"
    )
    cell = await rt.create_cell(request(source))
    first.release("tool-1")
    await first.wait_calls(2)  # tool-1 answered and recorded before tool-2 left
    journal = await rt._store.read_journal(rt.session_id, cell.cell_id)  # type: ignore[union-attr]
    steps = [e.payload["i"] for e in journal if e.kind == "step"]
    assert steps == [[["r", "tool-1", True, '{"v": 15, "i": 16}', "block", "fa62718a810123b2"]]]
    await rt.suspend()

    second = RecordingDelegate()
    second.release()
    rt2 = SessionRuntime(second, store=SqliteStore(path), session_id=rt.session_id)
    await rt2.open()
    event = await rt2.wait(rt2.cell(cell.cell_id), 10)
    assert isinstance(event, Completed) and event.error_text is None, event
    assert [item.text for item in event.items] == ["16 17"]  # type: ignore[union-attr]
    assert [c.call_id for c in second.calls] == ["tool-2"]  # tool-1 was not asked again
    await rt2.shutdown()
