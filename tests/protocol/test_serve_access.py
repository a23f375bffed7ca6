"""Issue 12 point 5: who may use ``codemode serve --listen``. Raw WebSocket handshakes with and
without ``Origin``; the refusal of a non-loopback bind without a token; the token variable's
messages."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from protocol_support import HANG, SERVE, WebSocketServer
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from codemode.protocol.policy import is_loopback, origin_allowed

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": 1, "clientInfo": {"name": "raw"}},
}


async def _initialize(url: str, origin: str | None) -> dict[str, object]:
    headers = {"Origin": origin} if origin is not None else {}
    async with connect(url, additional_headers=headers, open_timeout=HANG) as ws:
        await ws.send(json.dumps(INITIALIZE))
        answer: dict[str, object] = json.loads(await ws.recv())
        return answer


async def _refused(url: str, origin: str) -> int:
    with pytest.raises(InvalidStatus) as info:
        await _initialize(url, origin)
    return info.value.response.status_code


async def test_origin_is_checked() -> None:
    server = WebSocketServer()
    try:
        assert "result" in await _initialize(server.url, None)  # a program: no Origin
        assert await _refused(server.url, "http://evil.example") == 403
        assert await _refused(server.url, "http://127.0.0.1:8000") == 403
    finally:
        assert server.stop() == 0
    assert any("Origin 'http://evil.example' is not allowed" in line for line in server.stderr)


async def test_allow_origin_list() -> None:
    server = WebSocketServer(
        "--allow-origin", "http://good.example", "--allow-origin", "https://app.example:8443"
    )
    try:
        assert "result" in await _initialize(server.url, "http://good.example")
        assert "result" in await _initialize(server.url, "HTTPS://APP.example:8443")
        assert "result" in await _initialize(server.url, None)
        assert await _refused(server.url, "http://evil.example") == 403
        assert await _refused(server.url, "http://good.example.evil.example") == 403
    finally:
        assert server.stop() == 0


def test_origin_and_loopback_rules() -> None:
    assert origin_allowed(None, ())
    assert not origin_allowed("null", ())
    assert origin_allowed("http://a.example/", ("http://A.example",))
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.0.1", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.0.2.1", "example.com"))


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SERVE, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=HANG,
        env={**os.environ, **(env or {})},
    )


def test_non_loopback_bind_needs_a_token_or_no_auth() -> None:
    refused = _serve("--listen", "0.0.0.0:0")
    assert refused.returncode == 2
    assert "refusing to listen on 0.0.0.0 (not a loopback address) without a token" in (
        refused.stderr
    )
    # With --no-auth the check passes and it tries to bind: 192.0.2.1 (TEST-NET-1) is not an
    # address of this machine, so it fails there, without ever listening.
    attempted = _serve("--listen", "192.0.2.1:0", "--no-auth")
    assert attempted.returncode == 1, attempted.stderr
    assert "cannot listen on 192.0.2.1:0" in attempted.stderr


def test_token_variable_empty_or_unset() -> None:
    env = {k: v for k, v in os.environ.items() if k != "CM_TEST_TOKEN"}
    unset = subprocess.run(
        [*SERVE, "--listen", ":0", "--token-env", "CM_TEST_TOKEN"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=HANG,
        env=env,
    )
    assert unset.returncode == 2
    assert "the environment variable CM_TEST_TOKEN is not set" in unset.stderr
    empty = _serve("--listen", ":0", "--token-env", "CM_TEST_TOKEN", env={"CM_TEST_TOKEN": ""})
    assert empty.returncode == 2
    assert "the environment variable CM_TEST_TOKEN is empty" in empty.stderr


def test_caps_must_be_positive() -> None:
    result = _serve("--max-sessions", "0")
    assert result.returncode == 2
    assert "--max-sessions must be at least 1" in result.stderr
