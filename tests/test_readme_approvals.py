"""The README's "Approvals" snippet runs as written and prints what its comment says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_approvals_snippet_runs() -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("\n## Approvals\n") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    done = subprocess.run(
        [sys.executable, "-c", match.group(1)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['scratch-1', 'kept api: not a scratch repository']"
