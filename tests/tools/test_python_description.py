"""The Python ``exec`` description (docs/python-cells.md): CodeModeTools over a Python session, and the tool
declarations rendered as Python and checked by a real type checker (mypy)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

from codemode import (
    CellLimits,
    CodeModeTools,
    PythonEngine,
    SessionRuntime,
    ToolDefinition,
    ToolKind,
)
from codemode.tools.python_description import (
    python_exec_description,
    python_stub_module,
    python_tool_declaration,
)
from conftest import RecordingDelegate

SEARCH = ToolDefinition(
    "search",
    "Search the docs.",
    input_schema={
        "type": "object",
        "properties": {
            "q": {"type": "string", "description": "The query."},
            "limit": {"type": "integer", "minimum": 1, "maximum": 10, "default": 3},
            "filter": {
                "type": "object",
                "properties": {
                    "lang": {"enum": ["en", "fr"]},
                    "tags": {"type": "array", "items": {"type": "string"}},
                },
                "required": ["lang"],
            },
            "mode": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
        "required": ["q"],
    },
    output_schema={
        "type": "object",
        "properties": {
            "hits": {
                "type": "array",
                "items": {"$ref": "#/$defs/hit"},
            }
        },
        "required": ["hits"],
        "$defs": {"hit": {"type": "object", "properties": {"title": {"type": "string"}}}},
    },
)
UPPER = ToolDefinition("upper", "Upper-cases a string.", kind=ToolKind.FREEFORM)
ISSUE = ToolDefinition(
    "mcp__gh__get-issue",
    "Get an issue.",
    namespace="gh",
    input_schema={
        "type": "object",
        "properties": {"issue-number": {"type": "integer"}, "repo": {"type": "string"}},
        "required": ["issue-number"],
    },
    output_schema={
        "type": "object",
        "properties": {
            "content": {"type": "array"},
            "structuredContent": {"type": "object"},
            "isError": {"type": "boolean"},
        },
    },
)
OPEN = ToolDefinition("echo", "Returns its input.")
TOOLS = (SEARCH, UPPER, ISSUE, OPEN)


def test_description_states_python_rules_globals_limits_and_declarations() -> None:
    text = python_exec_description(
        TOOLS, describe_tools=True, code_mode_only=True, limits=CellLimits(max_tool_calls=7)
    )
    assert text.startswith("Only `exec` and `wait` can be called directly.")
    assert "from Python inside `exec`" in text
    for needle in (
        "top-level `await` works",
        "asyncio.gather",
        "`asyncio`, `datetime`, `json`, `math`, `re`",
        "# @exec:",
        "- `print(",
        "- `text(value)`",
        "- `image(source, detail=None)`",
        "- `store(key, value)`",
        "- `load(key)`",
        "- `notify(value)`",
        "- `yield_control()`",
        "- `exit()`",
        "await asyncio.sleep(seconds)",
        "- `ALL_TOOLS`",
        "at most 7 tool calls",
        "class CallToolResult(TypedDict):",
        "## gh",
        "### `mcp__gh__get_issue` (`mcp__gh__get-issue`)",
        "    async def upper(self, input: str, /) -> Any:",
        "        # The query.\n        q: str,",
        "        # default: 3; min: 1; max: 10\n        limit: int = ...,",
        "-> SearchResult:",
        "class SearchArgsFilter(TypedDict):\n    lang: Literal['en', 'fr']",
        'McpGhGetIssueArgs = TypedDict("McpGhGetIssueArgs", {"issue-number": int, '
        '"repo": NotRequired[str]})',
        "async def mcp__gh__get_issue(self, args: McpGhGetIssueArgs, /) -> CallToolResult:",
    ):
        assert needle in text, needle
    assert "console.log" not in text and "Promise.all" not in text
    assert (
        python_exec_description(
            TOOLS, describe_tools=True, code_mode_only=True, limits=CellLimits(max_tool_calls=7)
        )
        == text
    )  # pure
    hidden = python_exec_description(
        TOOLS, describe_tools=False, code_mode_only=False, limits=CellLimits()
    )
    assert "ALL_TOOLS" in hidden and "### `search`" not in hidden


def test_one_declaration() -> None:
    assert python_tool_declaration(UPPER, "upper") == (
        "class tools:\n"
        "    async def upper(self, input: str, /) -> Any:\n"
        '        """Upper-cases a string."""'
    )


async def test_code_mode_tools_over_a_python_session(delegate: RecordingDelegate) -> None:
    async with SessionRuntime(delegate, engine=PythonEngine()) as session:
        tools = CodeModeTools(session, (OPEN,))
        spec = tools.exec_tool_spec()
        assert spec["description"].startswith("Run a Python program")
        result = await tools.exec(
            '# @exec: {"yield_time_ms": 5000}\nr = await tools.echo(a=1)\nprint("got", r["a"])',
            "call-1",
        )
        assert not result.is_error, result.text
        assert result.text.endswith("Output:\n\ngot 1")
        blank = await tools.exec("  \n", "call-3")
        assert blank.is_error
        assert blank.text.startswith("exec expects raw Python source text (non-empty).")
        assert "`# @exec: {" in blank.text
        lonely = await tools.exec('# @exec: {"yield_time_ms": 5}\n  ', "call-4")
        assert lonely.text == "exec pragma must be followed by Python source on subsequent lines"
        failed = await tools.exec("raise ValueError('no')", "call-2")
        assert failed.is_error and "ValueError: no\n    at cell.py:1:7" in failed.text
    async with SessionRuntime(delegate) as js_session:
        assert (
            CodeModeTools(js_session, (OPEN,))
            .exec_tool_spec()["description"]
            .startswith("Run a JavaScript program")
        )


_GOOD_CELL = """\
from cmtools import ALL_TOOLS, image, load, store, text, tools
import asyncio


async def cell() -> None:
    found = await tools.search(q="x", limit=2, filter={"lang": "en", "tags": ["a"]})
    for hit in found["hits"]:
        text(hit.get("title"))
    shout: str = await tools.upper("abc")
    issue = await tools.mcp__gh__get_issue({"issue-number": 3})
    if issue.get("isError"):
        text(issue["content"])
    both = await asyncio.gather(tools.echo(a=1), tools.echo({"b": 2}))
    store("k", both)
    text(load("k"))
    text(shout + ALL_TOOLS[0]["name"])
    image("data:image/png;base64,AAAA", "low")
"""

_BAD_CELL = """\
from cmtools import tools


async def cell() -> None:
    await tools.search(q=1)
    await tools.search(limit=2)
    await tools.search(q="x", filter={"lang": "de"})
    await tools.upper(3)
    await tools.nope()
    found = await tools.search(q="x")
    found["hots"]
"""


def _mypy(directory: Path, module: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(directory / ".mypy_cache"),
            module,
        ],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_rendered_stubs_type_check_with_mypy(tmp_path: Path) -> None:
    (tmp_path / "cmtools.pyi").write_text(python_stub_module(TOOLS))
    (tmp_path / "good.py").write_text(_GOOD_CELL)
    (tmp_path / "bad.py").write_text(_BAD_CELL)
    good = _mypy(tmp_path, "good.py")
    assert good.returncode == 0, good.stdout + good.stderr
    bad = _mypy(tmp_path, "bad.py")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    lines = {int(line.split(":")[1]) for line in bad.stdout.splitlines() if ": error:" in line}
    assert lines == {5, 6, 7, 8, 9, 11}, bad.stdout


def test_stub_module_of_no_tools_still_checks(tmp_path: Path) -> None:
    (tmp_path / "cmtools.pyi").write_text(python_stub_module(()))
    (tmp_path / "good.py").write_text("from cmtools import text\n\ntext(1)\n")
    result = _mypy(tmp_path, "good.py")
    assert result.returncode == 0, result.stdout


async def test_description_is_selected_per_session(delegate: RecordingDelegate) -> None:
    engine: Any = PythonEngine()
    session = SessionRuntime(delegate, engine=engine)
    try:
        text = CodeModeTools(session, TOOLS, code_mode_only=True).exec_tool_spec()["description"]
        assert "from Python inside `exec`" in text
    finally:
        await asyncio.wait_for(session.shutdown(), 10)
