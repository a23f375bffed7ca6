"""The durable-session snippets of the README and docs/durability.md run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _snippet(path: Path, heading: str) -> str:
    text = path.read_text(encoding="utf-8")
    section = text[text.index(heading) :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


def _run(code: str, cwd: Path) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=cwd
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()


def test_the_readme_snippet_runs(tmp_path: Path) -> None:
    lines = _run(_snippet(ROOT / "README.md", "\n## Durable sessions\n"), tmp_path)
    assert len(lines) == 3
    assert "generation=1" in lines[0] and "items=()" in lines[0]
    assert "generation=2" in lines[1] and "TextItem(text='7')" in lines[1]
    assert lines[2] == "Completed(items=(TextItem(text='5'),), error_text=None)"


def test_the_docs_snippet_runs(tmp_path: Path) -> None:
    lines = _run(_snippet(ROOT / "docs" / "durability.md", "# Durable sessions"), tmp_path)
    assert len(lines) == 2
    assert "generation=1" in lines[0]
    assert "generation=2" in lines[1] and "TextItem(text='7')" in lines[1]
