"""The corpus of cells as models write them (tests/data/model_cells_*.txt) and the tools they call."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codemode import SessionDelegate, ToolDefinition, tools_delegate

DATA = Path(__file__).parent / "data"
_HEADER = re.compile(r"### (?P<name>\S+) \| (?P<expect>\w+)(?: (?P<line>\d+):(?P<column>\d+))?")


@dataclass(frozen=True)
class CorpusCell:
    name: str
    expect: str  # ok | refused | json | import | syntax | runtime
    source: str
    place: tuple[int, int] | None  # the expected cell.js line and column of an error


def load_corpus() -> list[CorpusCell]:
    cells: list[CorpusCell] = []
    for path in sorted(DATA.glob("model_cells_*.txt")):
        chunks = re.split(r"^(?=### )", path.read_text("utf-8"), flags=re.MULTILINE)
        for chunk in chunks:
            header_line, _, body = chunk.partition("\n")
            header = _HEADER.fullmatch(header_line)
            if header is None:
                continue  # the file's leading comment
            place = None
            if header.group("line") is not None:
                place = (int(header.group("line")), int(header.group("column")))
            cells.append(
                CorpusCell(
                    name=header.group("name"),
                    expect=header.group("expect"),
                    source=body.strip("\n") + "\n",
                    place=place,
                )
            )
    return cells


async def _search(args: dict[str, Any]) -> dict[str, Any]:
    q = str(args.get("q", ""))
    return {
        "hits": [
            {"id": str(i), "title": f"{q} result {i}", "score": 1.0 - i / 4} for i in range(1, 4)
        ]
    }


async def _get_item(args: dict[str, Any]) -> dict[str, Any]:
    item_id = str(args.get("id", ""))
    return {
        "id": item_id,
        "title": f"item {item_id}",
        "tags": ["t" + item_id, "common"],
        "price": 7 * len(item_id) + 5,
    }


async def _list_files(args: dict[str, Any]) -> dict[str, Any]:
    return {"files": ["a.ts", "b.js", "c.ts"]}


async def _read_file(args: dict[str, Any]) -> dict[str, Any]:
    path = str(args.get("path", ""))
    if "missing" in path:
        raise FileNotFoundError(f"no such file: {path}")
    return {"content": f"contents of {path}"}


async def _echo(args: Any) -> Any:
    return args


CORPUS_TOOLS = (
    ToolDefinition("search", "Search."),
    ToolDefinition("get_item", "Get an item."),
    ToolDefinition("list_files", "List files."),
    ToolDefinition("read_file", "Read a file."),
    ToolDefinition("echo", "Echo."),
)


def corpus_delegate() -> SessionDelegate:
    return tools_delegate(
        {
            "search": _search,
            "get_item": _get_item,
            "list_files": _list_files,
            "read_file": _read_file,
            "echo": _echo,
        }
    )
