"""Human approval of every tool call of a program, with codemode's approval gate.

A program written by a model wants to call tools, some of them dangerous. The host marks its tools
``needs_approval=True`` and runs the program as a *pausable* cell. At each pending frontier the
program is stopped and ``frontier.awaiting_approval`` lists the calls held for a decision; the host
shows each to an approver (a human; here a policy function stands in) before anything happens:

- ``runtime.approve(cell, call_id)``: the call reaches the delegate, which runs the tool, and its
  result resolves the promise in the program;
- ``runtime.reject(cell, call_id, reason)``: the call never runs; its promise rejects with an
  ``Error`` whose message is the reason (here ``call to `delete_repo` was rejected by the
  approver: <reason>``), which the program can catch (``try``/``catch``,
  ``Promise.allSettled``) to change course.

Then the host resumes the frontier, and the program runs to its next frontier or to its end.
Deciding never advances a paused cell, so the approver can take its time (a real one could answer
a web form minutes later). See ``docs/approvals.md``.

Run ``python examples/approval.py`` for a demo.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from codemode import (
    Completed,
    CreateCellRequest,
    OutputItem,
    Pending,
    SessionRuntime,
    TextItem,
    ToolDefinition,
    tools_delegate,
)

__all__ = [
    "ApprovalHost",
    "ApprovalRun",
    "AuditEntry",
    "Decision",
    "ProposedCall",
    "demo_policy",
    "main",
    "rejection_message",
]


@dataclass(frozen=True)
class ProposedCall:
    """A call the program is waiting on, as the approver sees it."""

    call_id: str
    tool: str
    input: Any


@dataclass(frozen=True)
class Decision:
    approved: bool
    reason: str = ""

    @classmethod
    def approve(cls, reason: str = "") -> Decision:
        return cls(True, reason)

    @classmethod
    def reject(cls, reason: str) -> Decision:
        return cls(False, reason)


Approver = Callable[[ProposedCall], Decision | Awaitable[Decision]]
ToolImpl = Callable[[Any], Any]  # sync or async; called with the call's input


@dataclass(frozen=True)
class AuditEntry:
    generation: int  # the frontier at which the call was decided
    call: ProposedCall
    decision: Decision


@dataclass
class ApprovalRun:
    """The outcome of one program: all its output, every decision, and how it ended."""

    items: list[OutputItem] = field(default_factory=list)
    audit: list[AuditEntry] = field(default_factory=list)
    frontiers: int = 0
    error_text: str | None = None

    @property
    def texts(self) -> list[str]:
        return [i.text for i in self.items if isinstance(i, TextItem)]


def rejection_message(call: ProposedCall, reason: str) -> str:
    return f"call to `{call.tool}` was rejected by the approver: {reason}"


class ApprovalHost:
    """Runs programs whose every tool call needs the approver's consent first."""

    def __init__(
        self,
        definitions: Sequence[ToolDefinition],
        implementations: Mapping[str, ToolImpl],
        approver: Approver,
        *,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self._definitions = tuple(definitions)
        self._implementations = dict(implementations)
        self._approver = approver
        self._log = log or (lambda _line: None)

    async def run(self, source: str) -> ApprovalRun:
        """Run one program to its end, deciding each call at the frontier where it appears."""
        run = ApprovalRun()
        gated = tuple(replace(d, needs_approval=True) for d in self._definitions)
        async with SessionRuntime(tools_delegate(self._implementations)) as runtime:
            cell = await runtime.create_pausable_cell(CreateCellRequest(source, gated))
            while True:
                event = await runtime.wait_to_pending(cell)
                if not isinstance(event, Pending):
                    break
                frontier = event.frontier
                run.frontiers += 1
                run.items.extend(frontier.items)
                for item in frontier.items:
                    if isinstance(item, TextItem):
                        self._log(f"  program: {item.text}")
                self._log(
                    f"frontier {frontier.generation}: waiting on "
                    f"{', '.join(frontier.pending_tool_call_ids) or 'nothing'}"
                    f" ({len(frontier.awaiting_approval)} awaiting approval)"
                )
                for request in frontier.awaiting_approval:
                    proposed = ProposedCall(request.call_id, request.tool.name, request.input)
                    decision = await self._decide(proposed)
                    run.audit.append(AuditEntry(frontier.generation, proposed, decision))
                    verdict = "APPROVED" if decision.approved else "REJECTED"
                    self._log(
                        f"  {request.call_id} {proposed.tool}({proposed.input}) -> {verdict}"
                        + (f": {decision.reason}" if decision.reason else "")
                    )
                    if decision.approved:
                        await runtime.approve(cell, request.call_id)
                    else:
                        reason = rejection_message(proposed, decision.reason)
                        await runtime.reject(cell, request.call_id, reason)
                # Deciding does not advance the cell: resume it. It first waits for the results
                # of approved calls still running, then goes on to its next frontier.
                await runtime.resume(cell, frontier.generation)
            assert isinstance(event, Completed), event
            run.items.extend(event.items)
            for item in event.items:
                if isinstance(item, TextItem):
                    self._log(f"  program: {item.text}")
            run.error_text = event.error_text
        return run

    async def _decide(self, call: ProposedCall) -> Decision:
        decision = self._approver(call)
        if inspect.isawaitable(decision):
            decision = await decision
        assert isinstance(decision, Decision)
        return decision


# --------------------------------------------------------------------------- demo

REPO_TOOLS = (
    ToolDefinition("list_repos", "Lists an owner's repositories: {owner} -> [{name, stale}]."),
    ToolDefinition("archive_repo", "Archives a repository: {name} -> {name, archived}."),
    ToolDefinition("delete_repo", "Deletes a repository for good: {name} -> {name, deleted}."),
)

CLEANUP_PROGRAM = """
const repos = await tools.list_repos({owner: "acme"});
text(`acme has ${repos.length} repositories`);
const stale = repos.filter(r => r.stale);
const outcomes = await Promise.allSettled(stale.map(r => tools.delete_repo({name: r.name})));
const kept = [];
outcomes.forEach((o, i) => {
  if (o.status === "fulfilled") text(`deleted ${stale[i].name}`);
  else { text(`kept ${stale[i].name}: ${o.reason.message}`); kept.push(stale[i].name); }
});
for (const name of kept) {
  const r = await tools.archive_repo({name});
  text(`archived ${r.name} instead`);
}
try {
  await tools.delete_repo({name: "acme-api"});
  text("deleted acme-api");
} catch (e) {
  text(`acme-api stays: ${e.message}`);
}
text("done");
"""


class FakeGitHub:
    """The host's real tools (in memory)."""

    def __init__(self) -> None:
        self.repos: dict[str, bool] = {
            "acme-api": False,
            "scratch-2019": True,
            "legacy-site": True,
            "scratch-demo": True,
        }
        self.deleted: list[str] = []
        self.archived: list[str] = []

    def implementations(self) -> dict[str, ToolImpl]:
        return {
            "list_repos": self.list_repos,
            "archive_repo": self.archive_repo,
            "delete_repo": self.delete_repo,
        }

    def list_repos(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"name": n, "stale": s} for n, s in self.repos.items()]

    async def archive_repo(self, args: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0.01)  # a real API call
        self.archived.append(args["name"])
        return {"name": args["name"], "archived": True}

    async def delete_repo(self, args: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0.01)
        self.repos.pop(args["name"])
        self.deleted.append(args["name"])
        return {"name": args["name"], "deleted": True}


def demo_policy(call: ProposedCall) -> Decision:
    """Stands in for the human: reads are fine, deletions only of scratch repositories."""
    if call.tool == "list_repos":
        return Decision.approve("read-only")
    if call.tool == "archive_repo":
        return Decision.approve("archiving is reversible")
    if call.tool == "delete_repo":
        name = str(call.input.get("name", ""))
        if name.startswith("scratch-"):
            return Decision.approve("scratch repositories may go")
        return Decision.reject(f"`{name}` is not a scratch repository; archive it instead")
    return Decision.reject("unknown tool")


async def run_demo(log: Callable[[str], None] = print) -> tuple[ApprovalRun, FakeGitHub]:
    github = FakeGitHub()
    host = ApprovalHost(REPO_TOOLS, github.implementations(), demo_policy, log=log)
    run = await host.run(CLEANUP_PROGRAM)
    return run, github


def main() -> None:
    run, github = asyncio.run(run_demo())
    approved = sum(1 for e in run.audit if e.decision.approved)
    print()
    print(
        f"{len(run.audit)} calls decided at {run.frontiers} frontiers: {approved} approved, "
        f"{len(run.audit) - approved} rejected"
    )
    print(f"deleted: {', '.join(github.deleted)}; archived: {', '.join(github.archived)}")
    print(f"program {'failed: ' + run.error_text if run.error_text else 'completed'}")


if __name__ == "__main__":
    main()
