"""The pausable-cell examples: the synchronous request/response host and the approval flow."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from codemode import TextItem, ToolDefinition

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    module_name = f"codemode_example_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


rr = load_example("request_response_host")
approval = load_example("approval")

LOOKUP = ToolDefinition("lookup", "Looks a key up.")

PROGRAM = """
text("start");
const a = await tools.lookup({k: "a"});
text("a=" + a);
const [b, c] = await Promise.all([tools.lookup({k: "b"}), tools.lookup({k: "c"})]);
text("bc=" + b + c);
text("done");
"""


def run_script(name: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture
def host() -> Any:
    h = rr.RequestResponseHost(wait_timeout=5.0)
    try:
        yield h
    finally:
        h.close()


def all_texts(responses: list[Any]) -> list[str]:
    return [t for r in responses for t in r.texts]


# ---------------------------------------------------------------------------- the scripts


def test_request_response_host_script_runs() -> None:
    out = run_script("request_response_host")
    assert "<- response 1: paused at generation 1" in out
    assert "call tool-1: weather({'city': 'Paris'})" in out
    assert "output: could not book the Ritz: no rooms left at the Ritz" in out
    assert "<- response 5: program completed" in out
    assert "output: booked Ibis: BK-0004" in out
    assert out.count("same response: True") == 5
    assert "same response: False" not in out
    assert "its recorded response is returned: True" in out
    assert "returned: False" not in out


def test_approval_script_runs() -> None:
    out = run_script("approval")
    assert "tool-3 delete_repo({'name': 'legacy-site'}) -> REJECTED" in out
    assert (
        "kept legacy-site: call to `delete_repo` was rejected by the approver: "
        "`legacy-site` is not a scratch repository; archive it instead"
    ) in out
    assert "deleted: scratch-2019, scratch-demo; archived: legacy-site" in out
    assert "program completed" in out


def test_request_response_main_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    rr.main()
    out = capsys.readouterr().out
    assert out.count("same response: True") == 5
    assert "False" not in out


# ---------------------------------------------------------------------------- the synchronous driver


def test_host_drives_a_program_to_its_end_with_duplicates_and_stale_requests(host: Any) -> None:
    r1 = host.handle(rr.NewProgram(PROGRAM, (LOOKUP,)))
    assert isinstance(r1, rr.PendingResponse)
    assert (r1.generation, r1.texts) == (1, ["start"])
    assert r1.calls == (rr.ToolCallRequest("tool-1", "lookup", {"k": "a"}),)

    req2 = rr.ToolResults(r1.cell_id, 1, {"tool-1": "A"})
    r2 = host.handle(req2)
    assert isinstance(r2, rr.PendingResponse)
    assert (r2.generation, r2.texts) == (2, ["a=A"])
    assert [c.call_id for c in r2.calls] == ["tool-2", "tool-3"]
    assert host.handle(req2) == r2  # a duplicate request: the same response
    assert host.submit(r1.cell_id, 1, {"tool-1": "other"}) == r2  # stale: the recorded one

    # A generation never handed out is the client's error.
    with pytest.raises(rr.BadRequest):
        host.submit(r1.cell_id, 7, {})
    with pytest.raises(rr.UnknownProgram):
        host.submit("0000000000000000", 1, {})

    r3 = host.submit(r1.cell_id, 2, {"tool-2": "B", "tool-3": "C"})
    assert isinstance(r3, rr.FinalResponse)
    assert (r3.texts, r3.error_text, r3.terminated) == (["bc=BC", "done"], None, False)
    # Retries after the end: the same final response, however stale.
    assert host.submit(r1.cell_id, 2, {"tool-2": "B", "tool-3": "C"}) == r3
    assert host.submit(r1.cell_id, 1, {"tool-1": "A"}) == r2
    assert all_texts([r1, r2, r3]) == ["start", "a=A", "bc=BC", "done"]


def test_partial_answers_are_handed_back_one_frontier_at_a_time(host: Any) -> None:
    r1 = host.start(
        "const r = await Promise.all([1, 2, 3].map(n => tools.lookup({n}))); text(r.join())",
        (LOOKUP,),
    )
    assert [c.call_id for c in r1.calls] == ["tool-1", "tool-2", "tool-3"]
    r2 = host.submit(r1.cell_id, r1.generation, {"tool-2": 20})
    assert isinstance(r2, rr.PendingResponse)
    assert [c.call_id for c in r2.calls] == ["tool-1", "tool-3"]
    assert r2.items == ()
    r3 = host.submit(r2.cell_id, r2.generation, {"tool-1": 10, "tool-3": 30})
    assert isinstance(r3, rr.FinalResponse) and r3.texts == ["10,20,30"]


def test_retried_new_program_with_a_request_id_runs_one_program(host: Any) -> None:
    first = host.handle(rr.NewProgram(PROGRAM, (LOOKUP,), request_id="req-1"))
    again = host.handle(rr.NewProgram(PROGRAM, (LOOKUP,), request_id="req-1"))
    assert again == first
    other = host.handle(rr.NewProgram(PROGRAM, (LOOKUP,)))
    assert other.cell_id != first.cell_id
    # Finishing the program does not break the retry.
    r2 = host.submit(first.cell_id, 1, {"tool-1": 1})
    host.submit(first.cell_id, r2.generation, {"tool-2": 2, "tool-3": 3})
    assert host.handle(rr.NewProgram(PROGRAM, (LOOKUP,), request_id="req-1")) == first


def test_concurrent_duplicate_requests_from_two_threads(host: Any) -> None:
    r1 = host.start(PROGRAM, (LOOKUP,))
    request = rr.ToolResults(r1.cell_id, 1, {"tool-1": "A"})
    with ThreadPoolExecutor(max_workers=4) as pool:
        responses = list(pool.map(host.handle, [request] * 4))
    assert all(r == responses[0] for r in responses)
    assert responses[0].texts == ["a=A"] and responses[0].generation == 2
    end = host.submit(r1.cell_id, 2, {"tool-2": "B", "tool-3": "C"})
    assert all_texts([r1, responses[0], end]) == ["start", "a=A", "bc=BC", "done"]


def test_a_client_that_gave_up_waiting_gets_the_response_on_retry(host: Any) -> None:
    source = "text('s'); const a = await tools.lookup({}); await new Promise(r => setTimeout(r, 300)); text('t'); await tools.lookup({}); text('end')"
    r1 = host.start(source, (LOOKUP,))
    request = rr.ToolResults(r1.cell_id, 1, {"tool-1": 1})
    with pytest.raises(TimeoutError):
        host.handle(request, timeout=0.02)  # the client stops waiting; the host does not
    r2 = host.handle(request)
    assert isinstance(r2, rr.PendingResponse)
    assert (r2.generation > 1, r2.texts, [c.call_id for c in r2.calls]) == (True, ["t"], ["tool-2"])
    r3 = host.submit(r2.cell_id, r2.generation, {"tool-2": 2})
    assert all_texts([r1, r2, r3]) == ["s", "t", "end"]


def test_errors_reject_the_call_in_the_program(host: Any) -> None:
    source = "try { await tools.lookup({}) } catch (e) { text('caught: ' + e.message) } await tools.lookup({})"
    r1 = host.start(source, (LOOKUP,))
    r2 = host.submit(r1.cell_id, 1, errors={"tool-1": "no such key"})
    assert isinstance(r2, rr.PendingResponse) and r2.texts == ["caught: no such key"]
    r3 = host.submit(r2.cell_id, r2.generation, errors={"tool-2": "boom"})
    assert isinstance(r3, rr.FinalResponse) and r3.error_text is not None
    assert "boom" in r3.error_text


def test_programs_that_need_no_client_answer(host: Any) -> None:
    # Synchronous, and waiting only on a timer: the first response is the end.
    sync = host.start("text('x')", (LOOKUP,))
    assert sync == rr.FinalResponse(sync.cell_id, (TextItem("x"),))
    timer = host.start("text('a'); await new Promise(r => setTimeout(r, 50)); text('b')", (LOOKUP,))
    assert isinstance(timer, rr.FinalResponse) and timer.texts == ["a", "b"]
    failing = host.start("text('a'); throw new Error('bad')", (LOOKUP,))
    assert isinstance(failing, rr.FinalResponse)
    assert (
        failing.texts == ["a"]
        and failing.error_text is not None
        and "Error: bad" in failing.error_text
    )


def test_program_waiting_on_nothing_is_terminated_after_the_wait_timeout() -> None:
    with rr.RequestResponseHost(wait_timeout=0.2) as h:
        started = time.monotonic()
        end = h.start("text('a'); await new Promise(() => {})", (LOOKUP,))
        assert time.monotonic() - started < 2
        assert isinstance(end, rr.FinalResponse)
        assert (end.texts, end.terminated) == (["a"], True)


# ---------------------------------------------------------------------------- approval


async def test_approval_demo_rejects_and_the_program_adapts() -> None:
    lines: list[str] = []
    run, github = await approval.run_demo(log=lines.append)
    assert run.error_text is None
    assert run.texts == [
        "acme has 4 repositories",
        "deleted scratch-2019",
        "kept legacy-site: call to `delete_repo` was rejected by the approver: `legacy-site` is not a scratch repository; archive it instead",
        "deleted scratch-demo",
        "archived legacy-site instead",
        "acme-api stays: call to `delete_repo` was rejected by the approver: `acme-api` is not a scratch repository; archive it instead",
        "done",
    ]
    decisions = [(e.call.call_id, e.call.tool, e.decision.approved) for e in run.audit]
    assert decisions == [
        ("tool-1", "list_repos", True),
        ("tool-2", "delete_repo", True),
        ("tool-3", "delete_repo", False),
        ("tool-4", "delete_repo", True),
        ("tool-5", "archive_repo", True),
        ("tool-6", "delete_repo", False),
    ]
    assert sorted(github.deleted) == ["scratch-2019", "scratch-demo"]  # rejected calls never ran
    assert github.archived == ["legacy-site"]
    assert "acme-api" in github.repos and "legacy-site" in github.repos
    assert any("REJECTED" in line for line in lines)


async def test_approval_uncaught_rejection_fails_the_program() -> None:
    tools = (ToolDefinition("drop_table"),)
    host = approval.ApprovalHost(
        tools,
        {"drop_table": lambda args: "dropped"},
        lambda call: approval.Decision.reject("no schema changes on Fridays"),
    )
    run = await host.run("text('before'); await tools.drop_table({name: 'users'}); text('after')")
    assert run.texts == ["before"]
    assert run.error_text is not None
    assert (
        "call to `drop_table` was rejected by the approver: no schema changes on Fridays"
        in run.error_text
    )


async def test_a_slow_approver_keeps_the_program_paused() -> None:
    executed: list[Any] = []
    decided_at: list[float] = []

    async def slow_human(call: Any) -> Any:
        await asyncio.sleep(0.1)  # the human takes their time; nothing runs meanwhile
        decided_at.append(time.monotonic())
        return approval.Decision.approve()

    def record(args: Any) -> Any:
        executed.append((time.monotonic(), args))
        return args["n"]

    host = approval.ApprovalHost((ToolDefinition("step"),), {"step": record}, slow_human)
    run = await host.run(
        "let s = 0; for (const n of [1, 2, 3]) s += await tools.step({n}); text(String(s))"
    )
    assert run.texts == ["6"] and run.frontiers == 3
    assert [args for _, args in executed] == [{"n": 1}, {"n": 2}, {"n": 3}]
    # Every call ran only after its approval.
    assert all(t_exec >= t_dec for (t_exec, _), t_dec in zip(executed, decided_at, strict=True))
