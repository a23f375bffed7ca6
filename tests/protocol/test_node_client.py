"""Cross-language contract check: ``tests/protocol/node/client.mjs``, a JSON-RPC client written
from docs/protocol.md with Node's standard library only, runs a continuing and a pausable cell
through a ``codemode serve`` child. Skipped (loudly) only when ``node`` is not installed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

CLIENT = Path(__file__).parent / "node" / "client.mjs"
NODE = shutil.which("node")


def _node() -> str:
    if NODE is None:
        message = (
            "NODE.JS IS MISSING: the cross-language protocol check (tests/protocol/node) did not "
            "run; install nodejs to run it"
        )
        warnings.warn(message, stacklevel=1)
        pytest.skip(message)
    return NODE


def test_node_client_runs_both_cell_kinds() -> None:
    _check_client([])


def test_node_client_on_a_server_with_a_store(tmp_path: Path) -> None:
    seen = _check_client(["--store", str(tmp_path / "sessions.db")])
    durable = seen["durable"]
    assert durable["idLength"] == 16
    assert durable["cells"] == []
    assert durable["busy"]["code"] == -32000
    assert durable["busy"]["kind"] == "SessionBusy"
    assert durable["busy"]["message"].endswith("is open elsewhere")
    assert durable["reopened"] == {"sessionId": True, "cells": []}


def _check_client(serve_args: list[str]) -> Any:
    result = subprocess.run(
        [_node(), str(CLIENT), sys.executable, *serve_args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["protocolVersion"] == 1
    yielded, completed, replay = seen["continuing"]
    assert yielded == {
        "type": "yielded",
        "texts": ["sums 3 7", "caught no such city: Atlantis"],
        "errorText": None,
    }
    assert completed == {"type": "completed", "texts": ["DONE"], "errorText": None}
    assert replay["replay"]["code"] == -32000
    assert replay["replay"]["message"].endswith("was released")
    assert seen["notes"] == ["halfway"]
    frontiers = seen["pausable"]["frontiers"]
    assert [(f["generation"], f["calls"]) for f in frontiers] == [(1, 1), (2, 2)]
    assert all(f["outcomes"] == ["resumed", "already_running"] for f in frontiers)
    assert seen["pausable"]["final"] == {
        "type": "completed",
        "texts": ["then 2 P"],
        "errorText": None,
    }
    assert frontiers[1]["texts"] == ["first 15"]
    assert sorted(seen["invoked"]) == sorted(["add", "add", "fail", "upper", "add", "add", "upper"])
    if not serve_args:
        assert seen["durable"] is None
    return seen
