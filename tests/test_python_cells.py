"""Python cells on Monty (docs/python-cells.md): the Python twins of the scenarios of the contract suite
(``tests/contract``) and of test_pausable, test_lifecycle and test_limits, the Python cell
environment, and dumping a paused cell into another process. Scenarios whose cell source is the
same in both languages (28, 32, 36, 46) run on Python cells in the contract suite itself."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from codemode import (
    BusyObserver,
    CellLimits,
    Completed,
    CreateCellRequest,
    IdempotencyConflict,
    ImageDetail,
    ImageItem,
    InvalidGeneration,
    MissingCell,
    PendingFrontier,
    PythonEngine,
    ResumeOutcome,
    SessionRuntime,
    Terminated,
    TextItem,
    ToolDefinition,
    Yielded,
)
from codemode.engine.base import CellBoot, EngineLost, ToolResultInput
from codemode.engine.python_env import check_imports, python_tool_identifiers
from conftest import RecordingDelegate, request
from scenarios import (
    T,
    completion_of,
    drain_pausable,
    frontier_of,
    heartbeat,
    still_pending,
    texts,
)

RESUMED = ResumeOutcome.RESUMED
ALREADY = ResumeOutcome.ALREADY_RUNNING


@pytest.fixture
async def make_py(delegate: RecordingDelegate) -> AsyncIterator[Any]:
    created: list[SessionRuntime] = []

    def make(limits: CellLimits | None = None, d: Any = None) -> SessionRuntime:
        rt = SessionRuntime(d or delegate, limits=limits, engine=PythonEngine())
        created.append(rt)
        return rt

    try:
        yield make
    finally:
        for rt in created:
            await asyncio.wait_for(rt.shutdown(), 10)


@pytest.fixture
async def py(make_py: Any) -> SessionRuntime:
    rt: SessionRuntime = make_py()
    return rt


async def finish(rt: SessionRuntime, source: str, *tools: ToolDefinition) -> Completed:
    cell = await rt.create_cell(request(source, *tools))
    event = await asyncio.wait_for(rt.wait(cell, 20), 25)
    assert isinstance(event, Completed), event
    return event


# ---------------------------------------------------------------------------- environment


async def test_helpers_text_print_image_notify(
    py: SessionRuntime, delegate: RecordingDelegate
) -> None:
    ev = await finish(
        py,
        'text("hi")\n'
        'text({"a": [1, 2]})\n'
        "text(3)\n"
        'print("a", 1, None, sep="-")\n'
        "print()\n"
        'notify("step 1")\n'
        'image("data:image/png;base64,AAAA")\n'
        'image({"type": "image", "data": "QUJD", "mimeType": "image/png"}, "LOW")\n'
        'image({"image_url": "data:x;base64,", "detail": "auto"})\n'
        "text(len(ALL_TOOLS))\n"
        'text(ALL_TOOLS[3]["name"])\n',
    )
    assert ev == Completed(
        (
            TextItem("hi"),
            TextItem('{"a": [1, 2]}'),
            TextItem("3"),
            TextItem("a-1-None"),
            TextItem(""),
            ImageItem("data:image/png;base64,AAAA", ImageDetail.HIGH),
            ImageItem("data:image/png;base64,QUJD", ImageDetail.LOW),
            ImageItem("data:x;base64,", ImageDetail.AUTO),
            TextItem("4"),
            TextItem("upper"),
        )
    )
    assert [n[2] for n in delegate.notifications] == ["step 1"]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ('notify("  ")', "TypeError: notify expects non-empty text"),
        ('image("https://x/y.png")', "remote image URLs are not supported"),
        ('image("")', "image expects a non-empty image URL string"),
        ('image({"type": "text", "text": "x"})', 'image only accepts MCP image blocks, got "text"'),
        (
            'image("data:x;base64,", "huge")',
            "image detail must be one of: auto, low, high, original",
        ),
        ("await tools.echo(1)", "TypeError: tool `echo` expects a JSON object for arguments"),
        ('await tools.echo({"a": 1}, b=2)', "tool `echo` expects a JSON object for arguments"),
        ('await tools.upper({"a": 1})', "TypeError: tool `upper` expects a string input"),
        ("await tools.upper()", "tool `upper` expects a string input"),
        ("await tools.echo(x={1, 2})", "TypeError"),
        (
            'store("k", {1, 2})',
            'Unable to store "k". Only plain serializable objects can be stored.',
        ),
        ("tools.nope()", "AttributeError"),
        ("undefined_name", "NameError"),
    ],
)
async def test_helper_misuse_raises_in_the_cell(
    py: SessionRuntime, delegate: RecordingDelegate, source: str, message: str
) -> None:
    ev = await finish(py, f'text("before")\n{source}\ntext("after")')
    assert ev.items == T("before")
    assert ev.error_text is not None and message in ev.error_text
    assert delegate.calls == []  # a rejected call is not issued


async def test_helper_errors_are_catchable(py: SessionRuntime, delegate: RecordingDelegate) -> None:
    ev = await finish(
        py,
        "try:\n    await tools.echo(1)\nexcept TypeError as e:\n    text(str(e))\n"
        'r = await tools.echo({"n": 1})\ntext(r["n"])\n',
    )
    assert ev == Completed(T("tool `echo` expects a JSON object for arguments", "1"))
    assert [c.call_id for c in delegate.calls] == ["tool-1"]  # the rejected one took no id


async def test_tools_take_keywords_one_dict_or_nothing_and_freeform_a_string(
    py: SessionRuntime, delegate: RecordingDelegate
) -> None:
    ev = await finish(
        py,
        "a = await tools.echo(q='x', n=2)\n"
        "b = await tools.echo({'q': 'y', 't': (1, 2)})\n"
        "c = await tools.echo()\n"
        "d = await tools.upper('abc')\n"
        "text([a, b, c, d])\n",
    )
    assert ev == Completed(T('[{"q": "x", "n": 2}, {"q": "y", "t": [1, 2]}, {}, "ABC"]'))
    assert [c.input for c in delegate.calls] == [
        {"q": "x", "n": 2},
        {"q": "y", "t": [1, 2]},
        {},
        "abc",
    ]
    assert [c.call_id for c in delegate.calls] == ["tool-1", "tool-2", "tool-3", "tool-4"]


async def test_gather_runs_calls_in_parallel(
    py: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cell = await py.create_cell(
        request(
            "r = await asyncio.gather(tools.block(n=1), tools.block(n=2))\ntext([x['n'] for x in r])"
        )
    )
    await delegate.wait_calls(2)  # both at the delegate before either returned
    delegate.release()
    assert await py.wait(cell, 10) == Completed(T("[1, 2]"))


async def test_tool_failure_is_a_runtime_error_in_the_cell(py: SessionRuntime) -> None:
    ev = await finish(
        py,
        "try:\n    await tools.fail(message='boom')\nexcept RuntimeError as e:\n    text('caught ' + str(e))\n"
        "await tools.fail(message='again')\n",
    )
    assert ev.items == T("caught boom")
    assert ev.error_text == "RuntimeError: again\n    at cell.py:5:1"


async def test_uncaught_exception_names_type_message_and_cell_line(py: SessionRuntime) -> None:
    ev = await finish(py, "def f(x):\n    return x / 0\n\ntext('a')\nf(1)\n")
    assert ev.items == T("a")
    assert ev.error_text == (
        "ZeroDivisionError: division by zero\n    at f (cell.py:2:12)\n    at cell.py:5:1"
    )
    ev = await finish(py, "x = 1 +\n")
    assert ev.error_text is not None and ev.error_text.startswith("SyntaxError: ")
    assert "cell.py:1" in ev.error_text
    ev = await finish(py, "raise ValueError('bad value')")
    assert ev.error_text == "ValueError: bad value\n    at cell.py:1:7"


async def test_imports_only_of_allowed_modules(py: SessionRuntime) -> None:
    ev = await finish(
        py,
        "import asyncio, json, math, re, datetime\n"
        "text(json.dumps({'pi': round(math.pi, 2)}))\n"
        "text(re.sub('a', 'b', 'aa'))\n"
        "text(datetime.date(2025, 1, 2).isoformat())\n",
    )
    assert ev == Completed(T('{"pi": 3.14}', "bb", "2025-01-02"))
    for module in ("os", "sys", "random", "subprocess", "pathlib"):
        ev = await finish(py, f"text('never')\nimport {module}")
        assert ev.items == ()  # nothing runs
        assert (
            ev.error_text == f"ImportError: Unsupported import in exec: {module}\n    at cell.py:2"
        )
    ev = await finish(py, "from os import path")
    assert ev.error_text is not None and "Unsupported import in exec: os" in ev.error_text


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("import json, os", ("os", 1)),
        ("import json as j, math", None),
        ("from json import dumps", None),
        ("from . import x", (".", 1)),
        ("x = 1; import sys", ("sys", 1)),
        ("def f():\n    import random\n", ("random", 2)),
        ('text("import os")', None),
        ("# import os\nimport re", None),
        ("from datetime import (date,\n  time)", None),
        ("import os.path", ("os.path", 1)),
        ("if True:\n    from asyncio import gather\n    import subprocess", ("subprocess", 3)),
    ],
)
def test_import_scan(source: str, found: tuple[str, int] | None) -> None:
    assert check_imports(source) == found


async def test_no_filesystem_or_network(py: SessionRuntime) -> None:
    ev = await finish(py, "open('/etc/passwd').read()")
    assert ev.error_text is not None and ev.error_text.split(":")[0] in (
        "PermissionError",
        "NameError",
        "OSError",
        "FileNotFoundError",
    )
    assert "root:" not in ev.error_text


async def test_exit_ends_the_cell_successfully_and_keeps_earlier_writes(
    py: SessionRuntime, delegate: RecordingDelegate
) -> None:
    ev = await finish(py, "store('k', 1)\ntext('a')\nexit()\ntext('never')\nawait tools.echo()")
    assert ev == Completed(T("a"))
    assert delegate.calls == []
    ev = await finish(py, "text(load('k'))")
    assert ev == Completed(T("1"))


async def test_top_level_return_ends_the_cell(py: SessionRuntime) -> None:
    ev = await finish(py, "text('a')\nif True:\n    return\ntext('never')")
    assert ev == Completed(T("a"))


async def test_store_and_load_follow_section_3(py: SessionRuntime) -> None:
    ev = await finish(
        py,
        "text(load('absent'))\n"
        "v = {'a': [1, (2, 3)], 'n': float('nan')}\n"
        "store('k', v)\n"
        "v['a'].append(9)\n"
        "w = load('k')\n"
        "w['a'].append(10)\n"
        "text(load('k'))\n",
    )
    assert ev == Completed(T("None", '{"a": [1, [2, 3]], "n": NaN}'))
    ev = await finish(py, "text(load('k'))")
    assert ev == Completed(T('{"a": [1, [2, 3]], "n": null}'))  # committed as JSON
    # A cell sees the values of its admission, never later commits.
    cell = await py.create_cell(request("await tools.block()\ntext(load('x'))"))
    assert await finish(py, "store('x', 'new')") == Completed(())
    assert await finish(py, "text(load('x'))") == Completed(T("new"))
    _ = cell
    # Terminated cells commit nothing.
    cell = await py.create_cell(request("store('y', 1)\nawait tools.block()"))
    await asyncio.sleep(0.1)
    await py.terminate(cell)
    assert await finish(py, "text(load('y'))") == Completed(T("None"))


async def test_keyword_and_odd_tool_names_get_python_identifiers(
    py: SessionRuntime, delegate: RecordingDelegate
) -> None:
    assert python_tool_identifiers(["class", "a-b", "a_b", "$x", "9n", "", "__init__"]) == [
        "class_",
        "a_b",
        "a_b_2",
        "_x",
        "_n",
        "_",
        "t__init__",
    ]
    tools = (ToolDefinition("class"), ToolDefinition("mcp__gh__search-issues"))
    ev = await finish(
        py,
        "a = await tools.class_(x=1)\nb = await tools.mcp__gh__search_issues(q='z')\n"
        "text([t['name'] for t in ALL_TOOLS])",
        *tools,
    )
    assert ev == Completed(T('["class_", "mcp__gh__search_issues"]'))
    assert [c.tool.name for c in delegate.calls] == ["class", "mcp__gh__search-issues"]


# ---------------------------------------------------------------------------- continuing cells


async def test_27_cell_runs_before_any_observation(
    py: SessionRuntime, delegate: RecordingDelegate
) -> None:
    first, second = ToolDefinition("first"), ToolDefinition("second")
    cell = await py.create_cell(
        request("await tools.first()\nawait tools.second()\ntext('done')", first, second)
    )
    await delegate.wait_calls(1)
    delegate.release("tool-1")
    await delegate.wait_calls(2)
    assert delegate.names() == ["first", "second"]
    delegate.release("tool-2")
    assert await py.wait(cell, 10) == Completed(T("done"))


async def test_29_initial_yield_then_blocking_tool(
    py: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cell = await py.create_cell(
        request("text('before')\nyield_control()\nawait tools.block()\ntext('after')")
    )
    await delegate.wait_calls(1)
    assert await py.wait(cell, 60) == Yielded(T("before"))
    waiter = asyncio.ensure_future(py.wait(cell, 60))
    await still_pending(waiter, 0.05)
    delegate.release()
    assert await asyncio.wait_for(waiter, 5) == Completed(T("after"))


async def test_31_budget_runs_out_and_the_cell_keeps_running(
    py: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cell = await py.create_cell(request("await tools.block()\ntext('after')"))
    await delegate.wait_calls(1)
    assert await py.wait(cell, 0.05) == Yielded(())
    delegate.release()
    assert await py.wait(cell, 10) == Completed(T("after"))


async def test_32_completion_is_buffered_and_33_second_observer_is_busy(
    py: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cell = await py.create_cell(request("text('done')"))
    await asyncio.sleep(0.1)
    assert await asyncio.wait_for(py.wait(cell, 60), 2) == Completed(T("done"))
    cell = await py.create_cell(request("await tools.block()"))
    first = asyncio.ensure_future(py.wait(cell, 60))
    await asyncio.sleep(0.02)
    with pytest.raises(BusyObserver):
        await py.wait(cell, 1)
    delegate.release()
    assert await asyncio.wait_for(first, 5) == Completed(())


async def test_35_three_yields_deliver_everything_once(py: SessionRuntime) -> None:
    cell = await py.create_cell(
        request(
            "for i in range(3):\n    text(i)\n    yield_control()\n    await asyncio.sleep(0.01)\ntext('end')"
        )
    )
    items: list[Any] = []
    for _ in range(10):
        event = await asyncio.wait_for(py.wait(cell, 10), 15)
        items.extend(event.items)
        if isinstance(event, Completed):
            break
    assert texts(items) == ["0", "1", "2", "end"]


async def test_unawaited_calls_are_cancelled_when_the_body_ends(
    py: SessionRuntime, delegate: RecordingDelegate
) -> None:
    ev = await finish(py, "tools.block(n=1)\nawait asyncio.sleep(0.02)\ntext('done')")
    assert ev == Completed(T("done"))
    assert delegate.cancelled == ["tool-1"]


# ---------------------------------------------------------------------------- pausable cells


TWO_SEQUENTIAL_PY = "await tools.block(n=1)\nawait tools.block(n=2)\ntext('done')"


async def test_39_40_41_frontiers_generations_and_resume_table(
    py: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cell = await py.create_pausable_cell(request(TWO_SEQUENTIAL_PY))
    f1 = await frontier_of(py, cell)
    assert f1 == PendingFrontier(1, (), ("tool-1",))
    assert await frontier_of(py, cell) == f1  # repeatable
    with pytest.raises(InvalidGeneration):
        await py.resume(cell, 2)
    outcomes = await asyncio.gather(py.resume(cell, 1), py.resume(cell, 1))
    assert sorted(o.value for o in outcomes) == ["already_running", "resumed"]
    delegate.release("tool-1")
    await delegate.wait_calls(2)
    f2 = await frontier_of(py, cell)
    assert f2 == PendingFrontier(2, (), ("tool-2",))
    assert await py.resume(cell, 1) is ALREADY
    delegate.release("tool-2")
    assert await py.resume(cell, 2) is RESUMED
    assert await completion_of(py, cell) == Completed(T("done"))


async def test_42_parallel_calls_answered_one_per_frontier(
    py: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cell = await py.create_pausable_cell(
        request(
            "a = tools.block(n=1)\nb = tools.block(n=2)\ntext('issued')\n"
            "r = await asyncio.gather(a, b)\ntext([x['n'] for x in r])"
        )
    )
    f1 = await frontier_of(py, cell)
    assert f1 == PendingFrontier(1, T("issued"), ("tool-1", "tool-2"))
    delegate.release("tool-1")
    await asyncio.sleep(0.05)
    assert await py.resume(cell, 1) is RESUMED
    f2 = await frontier_of(py, cell)
    assert f2 == PendingFrontier(2, (), ("tool-2",))
    delegate.release("tool-2")
    assert await py.resume(cell, 2) is RESUMED
    assert await completion_of(py, cell) == Completed(T("[1, 2]"))


async def test_45_awaiting_only_a_timer_gives_an_empty_frontier(py: SessionRuntime) -> None:
    cell = await py.create_pausable_cell(request("text('before')\nawait asyncio.sleep(3600)"))
    f1 = await frontier_of(py, cell)
    assert f1 == PendingFrontier(1, T("before"), ())
    assert await asyncio.wait_for(py.terminate(cell), 5) == Terminated(())


async def test_47_timer_adds_a_call_in_a_later_frontier(
    py: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cell = await py.create_pausable_cell(
        request(
            "async def third():\n    await asyncio.sleep(0.3)\n    return await tools.block(n=3)\n"
            "r = await asyncio.gather(tools.block(n=1), tools.block(n=2), third())\n"
            "text(','.join([str(x['n']) for x in r]))"
        )
    )
    f1 = await frontier_of(py, cell)
    assert f1.pending_tool_call_ids == ("tool-1", "tool-2")
    assert await py.resume(cell, 1) is RESUMED
    f2 = await frontier_of(py, cell)  # after the timer fired
    assert (f2.generation, f2.items, f2.pending_tool_call_ids) == (
        2,
        (),
        ("tool-1", "tool-2", "tool-3"),
    )
    delegate.release()
    assert await py.resume(cell, 2) is RESUMED
    _, end = await drain_pausable(py, cell)
    assert isinstance(end, Completed) and texts(end.items) == ["1,2,3"]


async def test_48_paused_cell_consumes_no_result_and_fires_no_timer(
    py: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cell = await py.create_pausable_cell(
        request(
            "async def tick():\n    await asyncio.sleep(0.02)\n    text('tick')\n"
            "t = tick()\nv = await tools.block(n=1)\nawait t\ntext('got ' + str(v['n']))"
        )
    )
    f1 = await frontier_of(py, cell)
    assert f1 == PendingFrontier(1, (), ("tool-1",))
    delegate.release("tool-1")
    await asyncio.sleep(0.15)
    assert await frontier_of(py, cell) == f1
    assert await py.resume(cell, 1) is RESUMED
    frontiers, end = await drain_pausable(py, cell)
    assert isinstance(end, Completed)
    assert texts([i for f in frontiers for i in f.items] + list(end.items)) == ["tick", "got 1"]


async def test_pausable_writes_commit_at_completion_and_are_lost_when_terminated_paused(
    py: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cell = await py.create_pausable_cell(request("store('p', 1)\nawait tools.block()"))
    await frontier_of(py, cell)
    assert await finish(py, "text(load('p'))") == Completed(T("None"))
    assert await py.terminate(cell) == Terminated(())
    assert await finish(py, "text(load('p'))") == Completed(T("None"))
    cell = await py.create_pausable_cell(
        request("store('q', 2)\nyield_control()\nawait tools.block()")
    )
    await frontier_of(py, cell)
    delegate.release()
    assert await py.resume(cell, 1) is RESUMED
    assert await completion_of(py, cell) == Completed(())
    assert await finish(py, "text(load('q'))") == Completed(T("2"))


# ---------------------------------------------------------------------------- creation and lifecycle


async def test_idempotent_creation(py: SessionRuntime) -> None:
    req = CreateCellRequest("text('once')", (), tool_call_id="c1", idempotency_key="k1")
    cells = await asyncio.gather(*(py.create_cell(req) for _ in range(3)))
    assert len(set(cells)) == 1
    assert await py.wait(cells[0], 10) == Completed(T("once"))
    with pytest.raises(IdempotencyConflict):
        await py.create_cell(CreateCellRequest("text('other')", (), idempotency_key="k1"))
    assert await py.create_cell(req) == cells[0]


@pytest.mark.parametrize(
    "source",
    [
        "while True:\n    pass",
        "await tools.echo()\nwhile True:\n    pass",
        "async def spin():\n    while True:\n        pass\nawait asyncio.gather(spin(), tools.echo())",
    ],
)
async def test_59_runaway_loop_is_observed_and_terminated(py: SessionRuntime, source: str) -> None:
    async with heartbeat() as hb:
        cell = await py.create_cell(request(source))
        await asyncio.sleep(0.1)
        assert await asyncio.wait_for(py.wait(cell, 0.001), 1) == Yielded(())
        started = time.monotonic()
        assert await asyncio.wait_for(py.terminate(cell), 1) == Terminated(())
        assert time.monotonic() - started < 1.0
    assert hb.ticks > 5
    assert await finish(py, "text('next')") == Completed(T("next"))


async def test_late_answer_into_a_spinning_cell(
    py: SessionRuntime, delegate: RecordingDelegate
) -> None:
    async with heartbeat():
        cell = await py.create_cell(
            request("b = tools.block()\nawait tools.echo()\nwhile True:\n    pass")
        )
        await delegate.wait_calls(2)
        delegate.release()
        await asyncio.sleep(0.05)
        assert await asyncio.wait_for(py.terminate(cell), 1) == Terminated(())


async def test_60_shutdown_interrupts_cpu_bound_cells(make_py: Any) -> None:
    rt = make_py()
    async with heartbeat():
        for _ in range(3):
            await rt.create_cell(request("while True:\n    pass"))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await asyncio.wait_for(rt.shutdown(), 3)
        assert time.monotonic() - started < 1.5
    assert rt.is_alive is False


async def test_terminate_returns_unobserved_output(
    py: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cell = await py.create_cell(request("text('a')\nawait tools.block()"))
    await delegate.wait_calls(1)
    assert await py.terminate(cell) == Terminated(T("a"))
    assert delegate.cancelled == ["tool-1"]
    with pytest.raises(MissingCell):
        await py.wait(cell, 1)


def _worker_cpu_ticks() -> dict[int, int]:
    """CPU ticks of each live Monty worker process that is a child of this process."""
    out: dict[int, int] = {}
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv0 = fh.read().split(b"\0", 1)[0]
        except OSError:
            continue
        if int(fields[1]) == me and argv0.endswith(b"/monty") and fields[0] != b"Z":
            out[int(entry)] = int(fields[11]) + int(fields[12])
    return out


def spinning_workers() -> int:
    """Monty workers of this process that burnt CPU (20 ms or more) during the last 0.5 s; an
    idle worker burns none, a spinning one all it gets even on a loaded machine."""
    before = _worker_cpu_ticks()
    time.sleep(0.5)
    after = _worker_cpu_ticks()
    return sum(1 for pid, t in after.items() if t - before.get(pid, t) >= 2)


async def test_65_garbage_collected_runtime_stops_its_python_cells() -> None:
    rt = SessionRuntime(RecordingDelegate(), engine=PythonEngine())
    alive = weakref.ref(rt)
    await rt.create_cell(request("while True:\n    pass"))
    await asyncio.sleep(0.1)
    assert spinning_workers() == 1
    del rt
    gc.collect()
    assert alive() is None, "the runtime is still referenced"
    await asyncio.sleep(0.1)
    assert spinning_workers() == 0


def test_loop_closing_without_shutdown_stops_python_cells() -> None:
    kept: list[SessionRuntime] = []

    async def leave_spinning() -> None:
        rt = SessionRuntime(RecordingDelegate(), engine=PythonEngine())
        kept.append(rt)
        await rt.create_cell(request("while True:\n    pass"))
        await rt.create_cell(request("await tools.block()"))
        await asyncio.sleep(0.1)
        assert spinning_workers() == 1

    asyncio.run(leave_spinning())
    assert spinning_workers() == 0
    assert kept[0].is_alive is False


async def test_34_cancelled_wait_loses_nothing(
    py: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cell = await py.create_cell(
        request("text('a')\nawait tools.block()\ntext('b')\nawait tools.block()\ntext('c')")
    )
    await delegate.wait_calls(1)
    waiter = asyncio.ensure_future(py.wait(cell, 60))
    await asyncio.sleep(0.02)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    delegate.release("tool-1")
    await delegate.wait_calls(2)
    delegate.release("tool-2")
    await asyncio.sleep(0.05)
    assert await py.wait(cell, 5) == Completed(T("a", "b", "c"))


async def test_49_resume_before_the_first_frontier_is_invalid_generation_none(
    py: SessionRuntime,
) -> None:
    busy = await py.create_pausable_cell(
        request("x = 0\nfor i in range(3000000):\n    x += i\nawait tools.block()")
    )
    with pytest.raises(InvalidGeneration) as exc:
        await py.resume(busy, 1)
    assert (exc.value.requested, exc.value.latest) == (1, None)
    await py.terminate(busy)


async def test_50_terminate_returns_an_unobserved_frontier(
    py: SessionRuntime, delegate: RecordingDelegate
) -> None:
    cell = await py.create_pausable_cell(
        request("text('x')\nawait tools.block(n=1)\ntext('y')\nawait tools.block(n=2)")
    )
    g1 = await frontier_of(py, cell)
    assert texts(g1.items) == ["x"]
    assert await py.resume(cell, 1) is RESUMED
    delegate.release("tool-1")
    await delegate.wait_calls(2)  # its second frontier is taken, unobserved
    await asyncio.sleep(0.05)
    assert await asyncio.wait_for(py.terminate(cell), 5) == Terminated(T("y"))


async def test_61_concurrent_and_cancelled_shutdowns(
    make_py: Any, delegate: RecordingDelegate
) -> None:
    rt = make_py()
    cell = await rt.create_cell(request("await tools.block()"))
    await delegate.wait_calls(1)
    s1 = asyncio.ensure_future(rt.shutdown())
    s2 = asyncio.ensure_future(rt.shutdown())
    await asyncio.wait_for(asyncio.gather(s1, s2), 3)
    with pytest.raises(MissingCell):
        await rt.wait(cell, 0)
    rt2 = make_py()
    await rt2.create_cell(request("while True:\n    pass"))
    s3 = asyncio.ensure_future(rt2.shutdown())
    await asyncio.sleep(0)
    s3.cancel()
    with pytest.raises(asyncio.CancelledError):
        await s3
    assert rt2.is_alive is False
    await asyncio.wait_for(rt2.shutdown(), 3)


async def test_63_termination_beats_a_completion_waiting_to_commit(make_py: Any) -> None:
    d = RecordingDelegate()
    d.notify_gate = asyncio.Event()
    rt = make_py(d=d)
    cell = await rt.create_cell(request("store('k', 1)\nnotify('n')\ntext('done')"))
    await asyncio.wait_for(d.notify_started.wait(), 5)
    assert await rt.terminate(cell) == Terminated(T("done"))
    assert await finish(rt, "text(load('k'))") == Completed(T("None"))


async def test_a_cell_beyond_max_workers_fails_its_create_after_the_checkout_timeout(
    delegate: RecordingDelegate,
) -> None:
    from codemode import EngineError

    engine = PythonEngine(max_workers=1, checkout_timeout=0.3)
    async with SessionRuntime(delegate, engine=engine) as rt:
        first = await rt.create_cell(request("await tools.block()\ntext('one')"))
        await delegate.wait_calls(1)
        with pytest.raises(EngineError) as info:
            await asyncio.wait_for(rt.create_cell(request("text('two')")), 10)
        assert "could not start a Monty worker" in str(info.value)
        delegate.release()
        assert await rt.wait(first, 10) == Completed(T("one"))
        await asyncio.sleep(0.1)  # the worker goes back to the pool
        assert await finish(rt, "text('three')") == Completed(T("three"))


# ---------------------------------------------------------------------------- limits


async def test_66_tool_call_limit_is_uncatchable(make_py: Any) -> None:
    rt = make_py(CellLimits(max_tool_calls=5))
    ev = await finish(
        rt,
        "text('before')\nfor i in range(5):\n    await tools.echo(i=i)\n"
        "try:\n    await tools.echo()\nexcept BaseException:\n    text('caught')\n",
    )
    assert ev == Completed(T("before"), "exec cell exceeded max_tool_calls (5)")
    assert await finish(rt, "text('next')") == Completed(T("next"))


async def test_67_parallel_calls_queue_and_output_limit(
    make_py: Any, delegate: RecordingDelegate
) -> None:
    rt = make_py(CellLimits(max_parallel_tool_calls=3, max_output_bytes=1000))
    cell = await rt.create_cell(
        request("r = await asyncio.gather(*[tools.block(n=i) for i in range(5)])\ntext(len(r))")
    )
    await delegate.wait_calls(3)
    await asyncio.sleep(0.1)
    assert len(delegate.calls) == 3  # the bound is a queue, not a failure
    delegate.release()
    assert await rt.wait(cell, 10) == Completed(T("5"))
    assert len(delegate.calls) == 5
    ev = await finish(rt, "text('a')\nwhile True:\n    text('x' * 300)")
    assert ev.error_text == "exec cell exceeded max_output_bytes (1000)"
    assert texts(ev.items) == ["a"] + ["x" * 300] * 3
    ev = await finish(rt, "while True:\n    notify('n' * 300)")
    assert ev.error_text == "exec cell exceeded max_output_bytes (1000)"


async def test_pausable_frontier_lists_calls_waiting_for_a_slot(
    make_py: Any, delegate: RecordingDelegate
) -> None:
    rt = make_py(CellLimits(max_parallel_tool_calls=1))
    cell = await rt.create_pausable_cell(
        request("r = await asyncio.gather(tools.block(n=1), tools.block(n=2))\ntext(len(r))")
    )
    f1 = await frontier_of(rt, cell)
    assert f1.pending_tool_call_ids == ("tool-1", "tool-2")
    assert [c.call_id for c in delegate.calls] == ["tool-1"]
    delegate.release()
    assert await rt.resume(cell, 1) is RESUMED
    _, end = await drain_pausable(rt, cell)
    assert end == Completed(T("2"))
    assert [c.call_id for c in delegate.calls] == ["tool-1", "tool-2"]


async def test_68_cpu_limit_counts_only_running_time(
    make_py: Any, delegate: RecordingDelegate
) -> None:
    rt = make_py(CellLimits(max_cpu_seconds=0.5))
    async with heartbeat():
        started = time.monotonic()
        ev = await finish(rt, "text('spin')\nwhile True:\n    pass")
        elapsed = time.monotonic() - started
    assert ev == Completed(T("spin"), "exec cell exceeded max_cpu_seconds (0.5)")
    assert 0.4 < elapsed < 3.0
    cell = await rt.create_cell(request("await tools.block()\ntext('waited')"))
    await asyncio.sleep(0.7)  # waiting for a tool is not running
    delegate.release()
    assert await rt.wait(cell, 10) == Completed(T("waited"))


async def test_69_heap_limit_is_uncatchable(make_py: Any) -> None:
    rt = make_py(CellLimits(max_heap_bytes=16 * 1024 * 1024))
    async with heartbeat():
        ev = await finish(
            rt,
            "text('a')\nx = []\ntry:\n    while True:\n        x.append('y' * 100000)\n"
            "except MemoryError:\n    text('caught')\n",
        )
    assert ev == Completed(T("a"), "exec cell exceeded max_heap_bytes (16777216)")
    assert await finish(rt, "text('next')") == Completed(T("next"))


async def test_70_deep_recursion_is_a_catchable_error(py: SessionRuntime) -> None:
    ev = await finish(
        py,
        "def f(n):\n    return f(n + 1)\ntry:\n    f(0)\nexcept RecursionError:\n    text('caught')\nf(0)",
    )
    assert ev.items == T("caught")
    assert ev.error_text is not None and ev.error_text.startswith("RecursionError:")


async def test_heartbeat_never_stalls_more_than_50ms(
    py: SessionRuntime, delegate: RecordingDelegate
) -> None:
    """A spinning Python cell, a chatty one and large tool results never block the host loop
    for more than 50 ms. On a loaded 2-core machine the scheduler alone can starve the loop now
    and then, so the workload runs up to three times: a call that blocked the loop would stall
    every run, scheduling noise does not."""
    gaps = []
    for _ in range(3):
        async with heartbeat() as hb:  # fails on any stall of 0.5 s
            spinner = await py.create_cell(request("while True:\n    pass"))
            chatty = await py.create_cell(
                request(
                    "for i in range(200):\n    text(i)\n"
                    "    await tools.echo(i=i, pad='x' * 20000)\n"
                    "    await asyncio.sleep(0)"
                )
            )
            assert isinstance(await asyncio.wait_for(py.wait(chatty, 30), 35), Completed)
            await py.terminate(spinner)
        gaps.append(hb.max_stall)
        if hb.max_stall < 0.05:
            break
    assert min(gaps) < 0.05, f"event loop stalled for {[round(g, 3) for g in gaps]} s"


async def test_engine_loss_ends_the_cell_and_the_host_goes_on(
    py: SessionRuntime, delegate: RecordingDelegate
) -> None:
    engine = PythonEngine()
    boot = CellBoot(
        "c3",
        "await tools.echo()\ntext('after')",
        (ToolDefinition("echo"),),
        {},
        CellLimits(),
        False,
    )
    try:
        cell = await engine.open_cell(boot)
        report = await cell.run()
        assert report.settlement is None
        pid = cell.worker_pid  # type: ignore[attr-defined]
        assert isinstance(pid, int)
        os.kill(pid, signal.SIGKILL)  # the worker this test's engine started
        with pytest.raises(EngineLost):
            await cell.step([ToolResultInput("tool-1", True, "{}")])
        cell.close()
        again = await engine.open_cell(boot)  # the pool replaced the worker
        assert (await again.run()).settlement is None
        again.close()
    finally:
        await engine.aclose()
    # Through a session: the cell completes with the fixed text and keeps its output.
    cell_handle = await py.create_cell(request("text('a')\nawait tools.block()\ntext('b')"))
    await delegate.wait_calls(1)
    actor = py._core.cells[cell_handle.cell_id]  # the engine cell, to kill its worker
    pid = actor._engine.worker_pid  # type: ignore[attr-defined]
    os.kill(pid, signal.SIGKILL)
    delegate.release()
    assert await asyncio.wait_for(py.wait(cell_handle, 10), 15) == Completed(
        T("a"), "exec runtime ended unexpectedly"
    )
    assert await finish(py, "text('next')") == Completed(T("next"))


async def test_worker_death_between_commands_is_reported() -> None:
    engine = PythonEngine()
    boot = CellBoot("c4", "await tools.echo()", (ToolDefinition("echo"),), {}, CellLimits(), True)
    try:
        cell = await engine.open_cell(boot)
        assert (await cell.run()).settlement is None
        lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        cell.watch_loss(lost.set_result)  # type: ignore[attr-defined]
        pid = cell.worker_pid  # type: ignore[attr-defined]
        os.kill(pid, signal.SIGKILL)
        assert "worker process ended" in await asyncio.wait_for(lost, 5)
        cell.close()
    finally:
        await engine.aclose()


# ---------------------------------------------------------------------------- dump and load


_LOAD_SCRIPT = """
import asyncio, json, sys
from codemode import PythonEngine
from codemode.engine.base import CellBoot, ToolResultInput, TimerFired, OutputProduced
from codemode.model import CellLimits, ToolDefinition

async def main():
    blob = open(sys.argv[1], "rb").read()
    source = open(sys.argv[2]).read()
    boot = CellBoot("c1", source, (ToolDefinition("echo"),), {}, CellLimits(), True)
    engine = PythonEngine()
    try:
        cell = await engine.load_cell(boot, blob)
        out = {"pending": list(cell.pending_call_ids), "timers": list(cell.pending_timer_ids)}
        inputs = [ToolResultInput(c, True, json.dumps({"c": c})) for c in cell.pending_call_ids]
        inputs += [TimerFired(t) for t in cell.pending_timer_ids]
        report = await cell.step(inputs)
        out["texts"] = [e.item.text for e in report.events if isinstance(e, OutputProduced)]
        out["settled"] = report.settlement is not None
        out["error"] = report.settlement.error_text if report.settlement else None
        print(json.dumps(out))
    finally:
        await engine.aclose()

asyncio.run(main())
"""


async def test_paused_cell_dumps_to_bytes_and_continues_in_another_process(tmp_path: Path) -> None:
    source = (
        "text('before')\nstore('k', 1)\nn = 41\n"
        "r = await asyncio.gather(tools.echo(a=1), tools.echo(a=2), asyncio.sleep(60))\n"
        "text([x['c'] for x in r[:2]])\ntext(n + 1)\ntext(load('k'))\n"
    )
    boot = CellBoot("c1", source, (ToolDefinition("echo"),), {}, CellLimits(), True)
    engine = PythonEngine()
    try:
        cell = await engine.open_cell(boot)
        report = await cell.run()
        assert report.settlement is None
        assert report.pending_call_ids == ("tool-1", "tool-2")
        blob = await cell.dump()
        assert len(blob) < 64 * 1024
        cell.close()
        # Loading into a fresh engine checks the boot.
        other = CellBoot("c1", source + "\n", boot.tools, {}, CellLimits(), True)
        from codemode import EngineError

        with pytest.raises(EngineError):
            await engine.load_cell(other, blob)
    finally:
        await engine.aclose()
    (tmp_path / "cell.bin").write_bytes(blob)
    (tmp_path / "cell.py").write_text(source)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _LOAD_SCRIPT,
        str(tmp_path / "cell.bin"),
        str(tmp_path / "cell.py"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["pending"] == ["tool-1", "tool-2"]
    assert len(result["timers"]) == 1
    assert result["texts"] == ['["tool-1", "tool-2"]', "42", "1"]
    assert result["settled"] is True and result["error"] is None


async def test_dump_needs_a_frontier() -> None:
    boot = CellBoot("c2", "text(1)", (), {}, CellLimits(), True)
    engine = PythonEngine()
    try:
        cell = await engine.open_cell(boot)
        report = await cell.run()
        assert report.settlement is not None
        from codemode import EngineError

        with pytest.raises(EngineError):
            await cell.dump()
    finally:
        await engine.aclose()
