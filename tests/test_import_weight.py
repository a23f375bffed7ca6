"""Importing the model layer (or the package) stays light: no WebSocket library, no server."""

from __future__ import annotations

import subprocess
import sys

import pytest


def modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return set(out.stdout.split())


@pytest.mark.parametrize("statement", ["import codemode.model", "import codemode"])
def test_importing_codemode_does_not_load_websockets(statement: str) -> None:
    loaded = modules_after(statement)
    assert "codemode.model" in loaded
    assert "websockets" not in loaded
    assert "codemode.protocol.client" not in loaded


def test_remote_session_is_loaded_on_first_use() -> None:
    loaded = modules_after("from codemode import RemoteSession")
    assert "codemode.protocol.client" in loaded and "websockets" in loaded
