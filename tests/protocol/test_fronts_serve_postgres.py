"""``codemode serve --store DSN``: durable sessions in a real PostgreSQL server, shared by several
server processes (as on several machines). A client reattaches by ``sessionId`` through a second
server process once the first one, which held the session, is killed with SIGKILL
(docs/durability.md, "Fronts")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "store"))

from pgserver import PostgresServer
from protocol_support import RawError, ServeProcess
from store_support import postgres_server_fixture  # noqa: F401  (the fixture)
from test_fronts_serve import (
    DEFAULT_LIMITS,
    LOOKUP_WIRE,
    PROGRAM,
    TOOLS,
    UNINTERRUPTED,
    answer_invokes,
    reattach,
    texts,
    wait_to_pending,
)

from codemode.cli_common import is_postgres_dsn, open_store
from codemode.store import PostgresStore, SqliteStore

LEASE = "2"  # seconds: a killed server's sessions are busy until its lease runs out
RUN = [sys.executable, "-m", "codemode", "run"]
YIELDED = "--- yielded ---"
RUN_SOURCE = """
text("first");
yield_control();
const r = await tools.sleep({ms: 1500});
text("second " + r.slept);
"""


def url_dsn(server: PostgresServer) -> str:
    """A ``postgresql://`` URL of a fresh schema of ``server`` (the form an operator writes)."""
    options = quote(f"-c search_path={server.new_schema()}", safe="")
    return f"postgresql://{server.user}@127.0.0.1:{server.port}/postgres?options={options}"


def test_store_flag_names_a_sqlite_file_or_a_postgres_dsn(tmp_path: Path) -> None:
    for dsn in (
        "postgresql://u@db1:5432/codemode",
        "postgres://db1/codemode",
        "host=db1 dbname=codemode",
        " postgresql://db1/x ",
    ):
        assert is_postgres_dsn(dsn), dsn
        assert isinstance(open_store(dsn), PostgresStore)
    for path in ("sessions.db", str(tmp_path / "s.db"), "./dir/sessions.db", "/a=b/s.db"):
        assert not is_postgres_dsn(path), path
        assert isinstance(open_store(path), SqliteStore)
    store = open_store("postgres://db1/x", lease_seconds=3.5)
    assert store.lease_seconds == 3.5


async def test_two_servers_share_a_postgres_store_and_one_carries_on_after_the_other_is_killed(
    postgres_server: PostgresServer,
) -> None:
    args = ("--store", url_dsn(postgres_server), "--lease-seconds", LEASE)
    first = await ServeProcess.start(*args)
    second = await ServeProcess.start(*args)
    try:
        client = first.client
        await client.initialize()
        await second.client.initialize()
        opened = await client.call("session/open", {})
        session_id = opened["sessionId"]
        assert opened["durable"] is True
        created = await client.call(
            "cell/create",
            {
                "sessionId": session_id,
                "kind": "pausable",
                "source": PROGRAM,
                "tools": TOOLS,
                "toolCallId": "call_1",
            },
        )
        cell_id = created["cellId"]
        event = await wait_to_pending(client, session_id, cell_id, 0)
        assert (event["type"], event["generation"]) == ("pending", 1)
        seen = texts(event)
        invoke = await client.server_message("tool/invoke")
        assert invoke["params"]["callId"] == "tool-1"

        # While the first server lives, the second cannot take the session.
        try:
            await second.client.call("session/open", {"sessionId": session_id})
            raise AssertionError("the session was opened by two servers at once")
        except RawError as exc:
            assert exc.code == -32000
            assert exc.data == {"kind": "SessionBusy", "sessionId": session_id}
        # The second server serves sessions of its own meanwhile.
        other = await second.client.call("session/open", {})
        assert other["sessionId"] != session_id and other["durable"] is True

        first.process.kill()  # before the client answered tool-1
        assert await first.wait_exit() < 0

        client = second.client
        opened = await reattach(client, session_id)
        assert opened == {
            "sessionId": session_id,
            "durable": True,
            "limits": DEFAULT_LIMITS,
            "cells": [{"cellId": cell_id, "kind": "pausable", "tools": [LOOKUP_WIRE]}],
        }
        invoke = await client.server_message("tool/invoke")
        assert invoke["params"]["cellId"] == cell_id
        assert invoke["params"]["callId"] == "tool-1"
        await client.respond(invoke["id"], {"output": "A"})
        event = await wait_to_pending(client, session_id, cell_id, 0)
        assert (event["type"], event["generation"]) == ("pending", 1)
        assert texts(event) == seen == ["start"]
        await client.call(
            "cell/resume", {"sessionId": session_id, "cellId": cell_id, "generation": 1}
        )
        event = await wait_to_pending(client, session_id, cell_id, 1)
        assert (event["type"], event["generation"]) == ("pending", 2)
        seen += texts(event)
        assert await answer_invokes(client, 2, cell_id) == ["tool-2", "tool-3"]
        await client.call(
            "cell/resume", {"sessionId": session_id, "cellId": cell_id, "generation": 2}
        )
        event = await wait_to_pending(client, session_id, cell_id, 2)
        assert event["type"] == "completed" and event["errorText"] is None
        seen += texts(event)
        assert seen == UNINTERRUPTED
        await client.call("session/shutdown", {"sessionId": session_id})
        await second.close_stdin()
        assert await second.wait_exit() == 0
    finally:
        await first.stop()
        await second.stop()


async def test_serve_with_an_unreachable_postgres_store_fails_at_its_start() -> None:
    # Port 1 on loopback: nothing listens there, the connection is refused at once.
    served = await ServeProcess.start("--store", "postgresql://nobody@127.0.0.1:1/codemode")
    try:
        assert await served.wait_exit() == 1
    finally:
        await served.stop()
    stderr = "".join(served.stderr)
    assert "codemode serve: cannot start: the PostgreSQL store is unreachable" in stderr, stderr


def test_a_killed_run_is_recovered_from_a_postgres_store(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """``codemode run --store DSN --session ID FILE``: the run killed mid-cell is recovered by the
    same command (in another process, as on another machine), which prints only the rest."""
    cell = tmp_path / "cell.js"
    cell.write_text(RUN_SOURCE)
    session = "p4v9q0m2x7d1r8tz"
    args = ["--store", url_dsn(postgres_server), "--session", session, "--lease-seconds", "1"]
    args += ["--yield-after", "0.05", str(cell)]
    first = subprocess.Popen([*RUN, *args], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout is not None
        assert first.stdout.readline() == "first\n"
        assert first.stdout.readline() == YIELDED + "\n"
    finally:
        first.kill()  # while tools.sleep runs: the call is issued, not answered
        first.wait()
    second = subprocess.run([*RUN, *args], capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert [line for line in second.stdout.splitlines() if line != YIELDED] == ["second 1500"]
    third = subprocess.run([*RUN, *args], capture_output=True, text=True, timeout=120)
    assert third.returncode == 0, third.stderr
    assert "already ran to its end in session " + session in third.stderr
