"""The cell's ``catalog`` global and the discovery listing of large catalogs (docs/model-tools.md), on V8."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from codemode import (
    CellLimits,
    CodeModeTools,
    Completed,
    CreateCellRequest,
    Pending,
    SessionRuntime,
    ToolDefinition,
    ToolKind,
)
from codemode.tools.catalog import reference_json
from codemode.tools.description import (
    DEFAULT_REFERENCE_BUDGET_TOKENS,
    DISCOVERY_TEXT,
    exec_description,
    first_line,
    tool_reference_blocks,
)
from codemode.tools.render import estimate_tokens
from conftest import ECHO, RecordingDelegate

TOOLS = (
    ToolDefinition(
        "mcp__github__search_issues",
        "Search issues and pull requests across repositories.\nUses GitHub search syntax.",
        namespace="github",
        input_schema={
            "type": "object",
            "properties": {"q": {"type": "string"}, "per_page": {"type": "integer"}},
            "required": ["q"],
        },
    ),
    ToolDefinition(
        "mcp__github__create_issue", "Create an issue in a repository.", namespace="github"
    ),
    ToolDefinition("slack-post-message", "Post a message to a Slack channel."),
    ToolDefinition("listChannels", "List the Slack channels the bot can see."),
    ToolDefinition("catalog", "A tool that happens to be named catalog."),
    ToolDefinition("search", "A tool named search."),
    ToolDefinition("upper", "Upper-cases text.", kind=ToolKind.FREEFORM),
)

SERVICES = ("github", "jira", "slack", "stripe", "notion", "sentry")
VERBS = ("create", "list", "delete", "archive", "export")
RESOURCES = ("issue", "invoice", "channel", "customer", "report", "alert", "webhook", "folder")


def generated() -> tuple[ToolDefinition, ...]:
    """240 tools that differ only in service, verb and resource."""
    return tuple(
        ToolDefinition(
            f"mcp__{s}__{v}_{r}",
            f"{v.capitalize()} a {r} in {s.capitalize()}. Results are JSON.",
            namespace=s,
            input_schema={"type": "object", "properties": {"id": {"type": "string"}}},
        )
        for s in SERVICES
        for v in VERBS
        for r in RESOURCES
    )


async def run(
    rt: SessionRuntime, source: str, tools: tuple[ToolDefinition, ...] = TOOLS
) -> list[str]:
    cell = await rt.create_cell(CreateCellRequest(source, tools))
    event = await rt.wait(cell, 30)
    assert isinstance(event, Completed), event
    assert event.error_text is None, event.error_text
    return [item.text for item in event.items]  # type: ignore[union-attr]


async def test_search_ranks_over_identifiers_and_descriptions(runtime: SessionRuntime) -> None:
    out = await run(
        runtime,
        """
        text(JSON.stringify(await catalog.search("create issue")));
        text(JSON.stringify((await catalog.search("slack channel")).map(t => t.name)));
        text(JSON.stringify((await catalog.search("channels", {limit: 1})).map(t => t.name)));
        text(JSON.stringify(await catalog.search("zebra")));
        text(JSON.stringify(await catalog.search("")));
        """,
    )
    first = json.loads(out[0])
    assert first[0] == {
        "name": "mcp__github__create_issue",
        "description": "Create an issue in a repository.",
    }
    assert first[1]["name"] == "mcp__github__search_issues"
    assert set(json.loads(out[1])[:2]) == {"slack_post_message", "listChannels"}
    assert json.loads(out[2]) == ["listChannels"]
    assert json.loads(out[3]) == []
    assert json.loads(out[4]) == []


async def test_describe_answers_the_reference_entry(runtime: SessionRuntime) -> None:
    out = await run(
        runtime,
        """
        text(await catalog.describe("mcp__github__search_issues"));
        text(await catalog.describe("slack_post_message"));
        text(await catalog.describe("slack-post-message"));
        for (const bad of ["nope", 42, undefined]) {
          try { await catalog.describe(bad); text("no error"); }
          catch (e) { text(e.constructor.name + ": " + e.message); }
        }
        """,
    )
    blocks = tool_reference_blocks(TOOLS)
    assert out[0] == blocks[0]
    assert "per_page?: number;" in out[0] and "// integer" in out[0]
    assert out[1] == out[2] == blocks[2]
    assert out[1].startswith("### `slack_post_message` (`slack-post-message`)")
    assert out[3:] == [
        "Error: unknown tool nope",
        "Error: unknown tool 42",
        "Error: unknown tool undefined",
    ]


async def test_catalog_is_not_shadowed_and_is_no_tool_call(
    make_runtime: Any, delegate: RecordingDelegate
) -> None:
    rt = make_runtime(CellLimits(max_tool_calls=1))
    out = await run(
        rt,
        """
        for (let i = 0; i < 20; i++) {
          await catalog.search("issue"); await catalog.describe("catalog");
        }
        console.log(typeof catalog.search, typeof tools.catalog, typeof tools.search);
        text(Object.keys(catalog).join(","));
        text(Object.isFrozen(catalog));
        text((await catalog.search("happens named")).map(t => t.name).join(","));
        """,
    )
    assert out == ["function function function", "search,describe", "true", "catalog,search"]
    assert delegate.calls == []


async def test_bad_arguments_reject_with_a_type_error(runtime: SessionRuntime) -> None:
    out = await run(
        runtime,
        """
        for (const args of [[1], [null], ["x", 3], ["x", {limit: 0}], ["x", {limit: 1.5}],
                            ["x", {limit: "2"}]]) {
          try { await catalog.search(...args); text("no error"); }
          catch (e) { text(e.constructor.name + ": " + e.message); }
        }
        """,
    )
    assert out == [
        "TypeError: catalog.search expects a query string",
        "TypeError: catalog.search expects a query string",
        "TypeError: catalog.search options must be an object like {limit: 10}",
        "TypeError: catalog.search limit must be a positive integer",
        "TypeError: catalog.search limit must be a positive integer",
        "TypeError: catalog.search limit must be a positive integer",
    ]


async def test_default_limit_is_ten_and_the_cell_cannot_break_ranking(
    runtime: SessionRuntime,
) -> None:
    tools = generated()
    out = await run(
        runtime,
        """
        String.prototype.toLowerCase = () => "x";
        Array.prototype.sort = function () { return this; };
        Map.prototype.get = () => 0; Set.prototype.has = () => false;
        const hits = await catalog.search("archive invoice stripe");
        console.log(hits.length, hits[0].name);
        text((await catalog.search("export", {limit: 100})).length);
        """,
        tools,
    )
    assert out == ["10 mcp__stripe__archive_invoice", "48"]


async def test_intent_queries_find_their_tool_first(runtime: SessionRuntime) -> None:
    tools = generated()
    queries = [
        (f"{v} {r} {s}", f"mcp__{s}__{v}_{r}") for s in SERVICES for v in VERBS for r in RESOURCES
    ][::7]
    out = await run(
        runtime,
        f"""
        let ok = 0;
        for (const [q, expected] of {json.dumps(queries)}) {{
          if ((await catalog.search(q))[0].name === expected) ok++;
        }}
        text(ok);
        """,
        tools,
    )
    assert int(out[0]) == len(queries)


async def test_pausable_cells_use_the_catalog_without_a_frontier(runtime: SessionRuntime) -> None:
    cell = await runtime.create_pausable_cell(
        CreateCellRequest(
            """
            const hits = await catalog.search("post message");
            text(hits[0].name);
            text((await catalog.describe(hits[0].name)).split("\\n")[0]);
            """,
            TOOLS,
        )
    )
    event = await runtime.wait_to_pending(cell)
    assert not isinstance(event, Pending)
    assert isinstance(event, Completed) and event.error_text is None, event
    assert [i.text for i in event.items] == [  # type: ignore[union-attr]
        "slack_post_message",
        "### `slack_post_message` (`slack-post-message`)",
    ]


async def test_a_cell_without_tools_has_an_empty_catalog(runtime: SessionRuntime) -> None:
    out = await run(
        runtime,
        """
        text(JSON.stringify(await catalog.search("anything")));
        try { await catalog.describe("echo"); } catch (e) { text(e.message); }
        """,
        (),
    )
    assert out == ["[]", "unknown tool echo"]


# --------------------------------------------------------------------- the description


def describe(tools: tuple[ToolDefinition, ...], budget: int | None) -> str:
    return exec_description(
        tools,
        describe_tools=True,
        code_mode_only=False,
        limits=CellLimits(),
        reference_budget_tokens=budget,
    )


def test_reference_within_budget_is_shown_whole() -> None:
    full = describe(TOOLS, None)
    assert describe(TOOLS, DEFAULT_REFERENCE_BUDGET_TOKENS) == full
    reference = full[full.index("Nested tools (call each") :]
    assert describe(TOOLS, estimate_tokens(reference)) == full
    assert describe(TOOLS, estimate_tokens(reference) - 1) != full


def test_above_the_budget_each_tool_gets_its_identifier_and_first_line() -> None:
    text = describe(TOOLS, 10)
    listing = text[text.index("Nested tools (7), listed by identifier") :]
    assert "```ts" not in listing
    assert (
        "## github\n\n- `mcp__github__search_issues`: Search issues and pull requests across "
        "repositories.\n- `mcp__github__create_issue`: Create an issue in a repository."
    ) in listing
    assert "Uses GitHub search syntax." not in listing
    assert "- `slack_post_message`: Post a message to a Slack channel." in listing
    assert listing.endswith(DISCOVERY_TEXT)
    assert "catalog.search(query, {limit: 10})" in DISCOVERY_TEXT
    assert "catalog.describe(name)" in DISCOVERY_TEXT


def test_first_line_is_cut_to_a_bounded_length() -> None:
    assert first_line("\n\n  Hello.  \nWorld") == "Hello."
    assert first_line("  \n ") == ""
    long = first_line("word " * 100)
    assert len(long) == 160 and long.endswith("…")


def test_code_mode_tools_apply_the_budget() -> None:
    class Session:
        limits = CellLimits()

    many = generated()
    small = CodeModeTools(Session(), TOOLS).exec_tool_spec()["description"]  # type: ignore[arg-type]
    assert "```ts\ndeclare const tools: { mcp__github__create_issue" in small
    big = CodeModeTools(Session(), many).exec_tool_spec()["description"]  # type: ignore[arg-type]
    assert "Nested tools (240), listed by identifier" in big
    assert "declare const tools" not in big
    whole = CodeModeTools(Session(), many, reference_budget_tokens=10**9)  # type: ignore[arg-type]
    assert "declare const tools" in whole.exec_tool_spec()["description"]
    for bad in (-1, 1.5, True, "8000"):
        with pytest.raises(ValueError, match="reference_budget_tokens"):
            CodeModeTools(Session(), TOOLS, reference_budget_tokens=bad)  # type: ignore[arg-type]


async def test_exec_discovers_and_calls_a_tool_of_a_large_catalog(
    runtime: SessionRuntime, delegate: RecordingDelegate
) -> None:
    tools = (*generated(), ECHO)
    exec_wait = CodeModeTools(runtime, tools)
    assert "Nested tools (241), listed by identifier" in exec_wait.exec_tool_spec()["description"]
    result = await exec_wait.exec(
        """
        const [hit] = await catalog.search("echo input", {limit: 1});
        text(await catalog.describe(hit.name));
        text(JSON.stringify(await tools[hit.name]({x: 1})));
        """,
        "call-1",
    )
    assert not result.is_error, result.text
    assert "### `echo`\nReturns its input.\n```ts\ndeclare const tools: { echo(" in result.text
    assert '{"x":1}' in result.text
    assert delegate.names() == ["echo"]


def test_reference_json_is_rendered_once_per_tool_tuple() -> None:
    tools = generated()
    first = reference_json(tools)
    assert reference_json(tools) is first
    assert json.loads(first) == tool_reference_blocks(tools)
    assert reference_json(tuple(tools)) is first  # tuple(t) is t
    # Equal tools arriving afresh (as over the wire) are found by content.
    copy = tuple(
        ToolDefinition(t.name, t.description, t.kind, t.namespace, dict(t.input_schema or {}))
        for t in tools
    )
    assert reference_json(copy) is first
    # The order of properties is content: it shows in the declarations.
    reordered = (
        ToolDefinition("t", input_schema={"type": "object", "properties": {"b": {}, "a": {}}}),
    )
    ordered = (
        ToolDefinition("t", input_schema={"type": "object", "properties": {"a": {}, "b": {}}}),
    )
    assert reference_json(reordered) != reference_json(ordered)


async def test_catalog_over_a_remote_session(delegate: RecordingDelegate) -> None:
    from codemode import RemoteSession

    async with await RemoteSession.spawn(delegate) as session:
        cell = await session.create_pausable_cell(
            CreateCellRequest(
                'text((await catalog.search("list channels", {limit: 1}))[0].name);'
                'text(await catalog.describe("listChannels"));',
                TOOLS,
            )
        )
        event = await session.wait_to_pending(cell)
    assert isinstance(event, Completed) and event.error_text is None, event
    texts = [item.text for item in event.items]  # type: ignore[union-attr]
    assert texts == ["listChannels", tool_reference_blocks(TOOLS)[3]]


async def test_real_tools_are_found_among_many_by_words_of_their_description(
    runtime: SessionRuntime,
) -> None:
    import random
    import re

    import mcp.types as mcp_types

    from codemode.mcp.upstream import nested_tool_definition, requires_task

    data = Path(__file__).parent / "data" / "mcp_servers"
    real = []
    for path in sorted(data.glob("*.json")):
        captured = json.loads(path.read_text("utf-8"))
        for raw in captured["tools"]:
            upstream = mcp_types.Tool.model_validate(raw)
            if not requires_task(upstream):
                real.append(nested_tool_definition(captured["server"].replace("-", "_"), upstream))
    tools = (*generated(), *real)
    rng = random.Random(3)
    queries = []
    for tool in real:
        words = re.findall(r"[A-Za-z]{4,}", tool.description.split("\n\nAnnotations:")[0])
        queries.append((" ".join(rng.sample(words, min(3, len(words)))), tool.name))
    out = await run(
        runtime,
        f"""
        const ranks = [];
        for (const [q, expected] of {json.dumps(queries)}) {{
          const hits = await catalog.search(q, {{limit: 5}});
          ranks.push(hits.findIndex(h => h.name === expected.replace(/[^A-Za-z0-9_$]/g, "_")) + 1);
        }}
        text(JSON.stringify(ranks));
        """,
        tools,
    )
    ranks = json.loads(out[0])
    assert len(ranks) == len(real) >= 45
    assert sum(1 for r in ranks if r == 1) / len(ranks) >= 0.8, ranks
    assert sum(1 for r in ranks if r > 0) / len(ranks) >= 0.95, ranks
