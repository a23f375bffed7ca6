"""Discovery for large catalogs (docs/model-tools.md): description size and search quality.

Generates catalogs of 50 and 5,000 tools (services x verbs x resources, each with a schema and a
two-sentence description) and measures:

- the size of the ``exec`` description (tokens = UTF-8 bytes / 4) with the full reference
  ("before": no budget), with the default 8,000-token reference budget ("after") and with the
  one-line-per-tool listing forced (budget 0, "listed");
- the per-cell cost of carrying the catalog (create-to-completion of a trivial cell);
- search quality on the 5,000-tool catalog, in real V8: for sampled tools, a query built from
  words of the tool's own description, and the rank of that tool in ``catalog.search``'s answer
  (top-1 / top-5 / top-10 hit rate). Two query sets: *intent* ("{verb} {resource} {service}", as
  a model looking for a tool would write) and *words* (3 random non-stopwords of the description,
  harder: they often do not name the service). A naive baseline ranks by how many query words
  occur as substrings of name + description (what a model writes with ``ALL_TOOLS.filter``).
  ``random_among_matching`` is the rate of a random pick among the tools holding every query word.
- the same on *real* descriptions: the 49 tools captured from five real MCP servers
  (tests/tools/data/mcp_servers) hidden among 4,951 generated ones, each looked for with 5
  queries of 3 random non-stopwords of its own description.

Prints a table and writes benchmarks/results/discovery.json. Run:
    .venv/bin/python benchmarks/discovery.py [--queries N] [--seed S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import re
import statistics
import time
from pathlib import Path
from typing import Any

from codemode import (
    CellLimits,
    CodeModeTools,
    Completed,
    CreateCellRequest,
    SessionRuntime,
    ToolDefinition,
    tools_delegate,
)
from codemode.identifiers import tool_identifiers
from codemode.tools.render import estimate_tokens

SERVICES = (
    "github",
    "gitlab",
    "jira",
    "linear",
    "slack",
    "discord",
    "teams",
    "zoom",
    "gmail",
    "outlook",
    "calendar",
    "drive",
    "dropbox",
    "box",
    "notion",
    "confluence",
    "asana",
    "trello",
    "stripe",
    "paypal",
    "shopify",
    "salesforce",
    "hubspot",
    "zendesk",
    "intercom",
    "twilio",
    "sendgrid",
    "mailchimp",
    "datadog",
    "sentry",
    "pagerduty",
    "grafana",
    "aws",
    "gcp",
    "azure",
    "kubernetes",
    "docker",
    "postgres",
    "mysql",
    "redis",
    "mongodb",
    "snowflake",
    "bigquery",
    "airtable",
    "figma",
    "miro",
    "spotify",
    "youtube",
    "twitter",
    "reddit",
)
VERBS = {
    "create": "Create a new {r} in {S}",
    "get": "Get one {r} from {S} by its id",
    "list": "List the {r}s of {S}, newest first",
    "update": "Update the fields of an existing {r} in {S}",
    "delete": "Delete a {r} from {S} permanently",
    "search": "Search {S} {r}s by text query and filters",
    "archive": "Archive a {r} in {S} so it no longer shows in lists",
    "export": "Export {r}s from {S} as CSV or JSON",
    "assign": "Assign a {r} in {S} to a user or team",
    "comment": "Add a comment to a {r} in {S}",
}
RESOURCES = (
    "issue",
    "project",
    "message",
    "channel",
    "invoice",
    "customer",
    "order",
    "ticket",
    "document",
    "folder",
    "event",
    "user",
    "report",
    "dashboard",
    "alert",
    "deployment",
    "secret",
    "record",
    "table",
    "webhook",
)
EXTRAS = (
    "Requires write access.",
    "Results are paginated with a cursor.",
    "Rate limited to 100 requests per minute.",
    "Returns the full object as JSON.",
    "Fails if the caller lacks permission.",
    "Times are ISO 8601 in UTC.",
    "Supports dry runs.",
    "Idempotent when given the same request id.",
)
STOPWORDS = frozenset(
    (
        "a",
        "an",
        "the",
        "in",
        "of",
        "to",
        "by",
        "as",
        "or",
        "and",
        "its",
        "it",
        "from",
        "for",
        "so",
        "no",
        "is",
        "are",
        "be",
        "with",
        "when",
        "same",
        "one",
        "new",
        "first",
    )
)


def generate(count: int, seed: int = 7) -> tuple[ToolDefinition, ...]:
    """``count`` distinct tools, namespaced by service, in a shuffled but seeded order."""
    rng = random.Random(seed)
    combos = [(s, v, r) for s in SERVICES for v in VERBS for r in RESOURCES]
    rng.shuffle(combos)
    tools = []
    for service, verb, resource in sorted(combos[:count]):
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {
                "id": {"type": "string", "description": f"The {resource} id."},
                "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                "fields": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["id"] if verb in ("get", "update", "delete", "archive") else [],
        }
        description = (
            VERBS[verb].format(r=resource, S=service.capitalize()) + ". " + rng.choice(EXTRAS)
        )
        tools.append(
            ToolDefinition(
                f"mcp__{service}__{verb}_{resource}",
                description,
                namespace=service,
                input_schema=schema,
            )
        )
    return tuple(tools)


def description_tokens(tools: tuple[ToolDefinition, ...], budget: int | None) -> int:
    class _NoSession:
        limits = CellLimits()

    kwargs: dict[str, Any] = {"code_mode_only": True}
    kwargs["reference_budget_tokens"] = budget if budget is not None else 10**12
    spec = CodeModeTools(_NoSession(), tools, **kwargs).exec_tool_spec()  # type: ignore[arg-type]
    return estimate_tokens(spec["description"])


def intent_query(tool: ToolDefinition) -> str:
    _, service, rest = tool.name.split("__")
    verb, resource = rest.split("_", 1)
    return f"{verb} {resource} {service}"


def words_query(tool: ToolDefinition, rng: random.Random) -> str:
    words = [w for w in re.findall(r"[A-Za-z]+", tool.description) if w.lower() not in STOPWORDS]
    return " ".join(rng.sample(words, min(3, len(words))))


def _norm(word: str) -> str:
    w = word.lower()
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
        return w[:-1]
    return w


def _word_set(text: str) -> set[str]:
    return {_norm(w) for w in re.findall(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])", text)}


def matching_rates(
    tools: tuple[ToolDefinition, ...], queries: list[tuple[str, str]]
) -> dict[str, float]:
    """The hit rate of picking at random among the tools that contain every word of the query:
    with ``k`` such tools, 1/k (top-n: min(1, n/k)). A ranking that only counts words cannot do
    better; one that weighs where a word occurs (identifier or description) can."""
    sets = [_word_set(t.name + " " + t.description) for t in tools]
    ks = [sum(1 for ws in sets if _word_set(q) <= ws) for q, _ in queries]
    return {f"top{n}": round(statistics.mean(min(1.0, n / k) for k in ks), 3) for n in (1, 5, 10)}


def baseline_rank(tools: tuple[ToolDefinition, ...], query: str, target: int) -> int:
    terms = [w.lower() for w in query.split()]
    scores = []
    for i, tool in enumerate(tools):
        hay = (tool.name + " " + tool.description).lower()
        scores.append((-sum(term in hay for term in terms), i))
    scores.sort()
    return [i for _, i in scores].index(target) + 1


async def ranks_in_v8(
    rt: SessionRuntime, tools: tuple[ToolDefinition, ...], queries: list[tuple[str, str]]
) -> tuple[list[int], float]:
    """The rank of each expected identifier (0 when not in the top 10), and ms per search."""
    source = f"""
const queries = {json.dumps(queries)};
const ranks = [];
const t0 = Date.now();
for (const [q, expected] of queries) {{
  const hits = await catalog.search(q, {{limit: 10}});
  ranks.push(hits.findIndex(h => h.name === expected) + 1);
}}
text(JSON.stringify({{ranks, ms: Date.now() - t0}}));
"""
    cell = await rt.create_cell(CreateCellRequest(source, tools))
    event = await rt.wait(cell, 300)
    assert isinstance(event, Completed) and event.error_text is None, event
    data = json.loads(event.items[0].text)  # type: ignore[union-attr]
    return data["ranks"], data["ms"] / max(len(queries), 1)


def rates(ranks: list[int]) -> dict[str, float]:
    n = len(ranks)
    return {f"top{k}": round(sum(1 for r in ranks if 0 < r <= k) / n, 3) for k in (1, 5, 10)}


async def cell_ms(rt: SessionRuntime, tools: tuple[ToolDefinition, ...], runs: int = 15) -> float:
    times = []
    for _ in range(runs + 3):
        t = time.perf_counter()
        cell = await rt.create_cell(CreateCellRequest('text("hi")', tools))
        event = await rt.wait(cell, 60)
        assert isinstance(event, Completed) and event.error_text is None, event
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times[3:])


async def first_search_ms(rt: SessionRuntime, tools: tuple[ToolDefinition, ...]) -> float:
    source = """
const t0 = Date.now(); await catalog.search("create issue"); const t1 = Date.now();
await catalog.describe(ALL_TOOLS[ALL_TOOLS.length - 1].name); const t2 = Date.now();
text(JSON.stringify([t1 - t0, t2 - t1]));
"""
    cell = await rt.create_cell(CreateCellRequest(source, tools))
    event = await rt.wait(cell, 60)
    assert isinstance(event, Completed) and event.error_text is None, event
    return json.loads(event.items[0].text)  # type: ignore[union-attr,no-any-return]


DATA = Path(__file__).resolve().parents[1] / "tests" / "tools" / "data" / "mcp_servers"


def real_tools() -> list[ToolDefinition]:
    """The tools of five real MCP servers, as ``codemode mcp`` maps them."""
    import mcp.types as mcp_types

    from codemode.mcp.upstream import nested_tool_definition, requires_task

    tools = []
    for path in sorted(DATA.glob("*.json")):
        data = json.loads(path.read_text("utf-8"))
        server = data["server"].replace("-", "_")
        for raw in data["tools"]:
            tool = mcp_types.Tool.model_validate(raw)
            if not requires_task(tool):
                tools.append(nested_tool_definition(server, tool))
    return tools


def description_words(tool: ToolDefinition) -> list[str]:
    text = tool.description.split("\n\nAnnotations:")[0]
    return [w for w in re.findall(r"[A-Za-z]{3,}", text) if w.lower() not in STOPWORDS]


async def main(queries: int, seed: int) -> dict[str, Any]:
    small, large = generate(50, seed), generate(5000, seed)
    sizes = {
        str(len(tools)): {
            "before_tokens": description_tokens(tools, None),
            "after_tokens": description_tokens(tools, 8000),
            "listed_tokens": description_tokens(tools, 0),  # the listing, whatever the size
        }
        for tools in (small, large)
    }
    rng = random.Random(seed)
    sample = rng.sample(range(len(large)), queries)
    idents = tool_identifiers(t.name for t in large)
    intent = [(intent_query(large[i]), idents[i]) for i in sample]
    words = [(words_query(large[i], rng), idents[i]) for i in sample]
    limits = CellLimits(max_cpu_seconds=300, max_heap_bytes=256 * 1024 * 1024)
    async with SessionRuntime(tools_delegate({}), limits=limits) as rt:
        boot = {
            "0": await cell_ms(rt, ()),
            "50": await cell_ms(rt, small),
            "5000": await cell_ms(rt, large),
        }
        first = await first_search_ms(rt, large)
        intent_ranks, intent_ms = await ranks_in_v8(rt, large, intent)
        words_ranks, words_ms = await ranks_in_v8(rt, large, words)
        real = real_tools()
        mixed = tuple(list(large[: len(large) - len(real)]) + real)
        mixed_idents = tool_identifiers(t.name for t in mixed)
        offset = len(mixed) - len(real)
        real_queries = []
        for i, tool in enumerate(real):
            pool = description_words(tool)
            for _ in range(5):
                picked = rng.sample(pool, min(3, len(pool)))
                real_queries.append((" ".join(picked), mixed_idents[offset + i]))
        real_ranks, _ = await ranks_in_v8(rt, mixed, real_queries)
    baseline = {
        "intent": rates([baseline_rank(large, q, idents.index(e)) for q, e in intent]),
        "words": rates([baseline_rank(large, q, idents.index(e)) for q, e in words]),
    }
    ideal = {"intent": matching_rates(large, intent), "words": matching_rates(large, words)}
    return {
        "machine": platform.platform(),
        "description_tokens": sizes,
        "cell_create_to_complete_ms": boot,
        "first_search_ms_5000": first[0],
        "first_describe_ms_5000": first[1],
        "search_ms_per_query_5000": round((intent_ms + words_ms) / 2, 2),
        "queries": queries,
        "catalog_search": {
            "intent": rates(intent_ranks),
            "words": rates(words_ranks),
            "real_descriptions_among_5000": rates(real_ranks),
        },
        "substring_baseline": {
            **baseline,
            "real_descriptions_among_5000": rates(
                [baseline_rank(mixed, q, mixed_idents.index(e)) for q, e in real_queries]
            ),
        },
        "random_among_matching": ideal,
        "example_queries": {"intent": intent[:3], "words": words[:3], "real": real_queries[:5]},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    result = asyncio.run(main(args.queries, args.seed))
    print(json.dumps(result, indent=2))
    out = Path(__file__).parent / "results" / "discovery.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
