"""Upstream stdio servers that never outlive ``codemode`` (issue 12 point 3).

:func:`guarded_stdio_client` is the MCP stdio transport of :mod:`codemode.mcp.upstream` (Linux and
other POSIX systems with ``prctl``): the same newline-delimited JSON-RPC as the SDK's
``stdio_client``, with a different process life:

- **Its own process group.** The server runs in a new session and process group (``setsid``),
  under a small *guardian* (a Python process, the group's leader) that starts the server as its
  child with the same stdin/stdout and waits for it.
- **Parent death.** The guardian asks the kernel for a parent-death signal
  (``prctl(PR_SET_PDEATHSIG)``): when ``codemode`` ends in any way, SIGKILL included, the
  guardian is signalled and kills its whole process group (the server and anything the server
  started that stayed in its group) with SIGKILL.
- **Bounded shutdown.** Closing the transport closes the server's stdin, gives it
  :data:`STOP_GRACE` seconds to exit, then kills the group with SIGKILL (always: a grandchild left
  behind dies too). The whole shutdown takes well under a second, so ``codemode mcp`` exits
  within one second of its stdin closing or SIGTERM even with a call in flight.

A command that cannot be found raises :class:`FileNotFoundError` before anything starts. Linux
sends the parent-death signal when the *thread* that started the guardian ends, so start upstream
servers from a thread that lives as long as they should (the event loop's thread does).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Final

import anyio
import mcp.types as types
from anyio.abc import Process
from mcp.client.stdio import get_default_environment
from mcp.shared.message import SessionMessage

__all__ = ["GUARDIAN_SOURCE", "STOP_GRACE", "guarded_stdio_client"]

logger = logging.getLogger("codemode.mcp")

STOP_GRACE: Final = 0.3
"""Seconds an upstream server has to exit after its stdin closes before its group is killed."""
_REAP_TIMEOUT: Final = 1.0

GUARDIAN_SOURCE: Final = r"""
import ctypes, os, signal, sys
parent = int(sys.argv[1])
def kill_group(*_):
    try:
        os.killpg(0, signal.SIGKILL)
    finally:
        os._exit(137)
signal.signal(signal.SIGTERM, kill_group)
signal.signal(signal.SIGHUP, kill_group)
try:
    if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
        sys.stderr.write("codemode guardian: prctl(PR_SET_PDEATHSIG) failed\n")
except AttributeError:  # not Linux: no parent-death signal; shutdown still kills the group
    pass
if os.getppid() != parent:  # codemode died before the request took effect
    kill_group()
pid = os.fork()
if pid == 0:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    except OSError as error:
        sys.stderr.write(f"codemode guardian: cannot run {sys.argv[2]}: {error}\n")
        os._exit(127)
os.close(0)
os.close(1)
while True:
    _, status = os.waitpid(pid, 0)
    if os.WIFEXITED(status) or os.WIFSIGNALED(status):
        break
os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
"""


def _resolve(command: str, env: Mapping[str, str], cwd: str | None) -> str:
    if os.sep in command:
        path = command if cwd is None else os.path.join(cwd, command)
        if os.path.exists(path):
            return command
    elif shutil.which(command, path=env.get("PATH", os.defpath)) is not None:
        return command
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), command)


def _parse_line(line: bytes) -> SessionMessage | Exception:
    try:
        message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
    except ValueError as exc:
        logger.warning("an upstream MCP server wrote a line that is not JSON-RPC: %s", exc)
        return exc
    return SessionMessage(message)


def kill_group(pgid: int) -> None:
    """SIGKILL every process of the group ``pgid`` (nothing if it is gone)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def _stop(process: Process, pgid: int) -> None:
    """Close stdin, give the server :data:`STOP_GRACE` seconds, then kill its whole group."""
    assert process.stdin is not None and process.stdout is not None
    with contextlib.suppress(Exception):
        await process.stdin.aclose()
    with anyio.move_on_after(STOP_GRACE):
        await process.wait()
    kill_group(pgid)  # always: the server's own children may have stayed in its group
    with anyio.move_on_after(_REAP_TIMEOUT):
        await process.wait()
    if process.returncode is None:
        logger.warning("upstream MCP server process %d survived SIGKILL; abandoning it", pgid)
    with contextlib.suppress(Exception):
        await process.stdout.aclose()
    with contextlib.suppress(Exception):
        await process.aclose()


@contextlib.asynccontextmanager
async def guarded_stdio_client(
    command: str,
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> AsyncIterator[tuple[Any, Any]]:
    """Start ``command args`` as a guarded upstream server (see the module docstring) and yield
    the SDK's ``(read_stream, write_stream)`` pair for a ``ClientSession``."""
    full_env = get_default_environment() | dict(env or {})
    _resolve(command, full_env, cwd)
    process = await anyio.open_process(
        [sys.executable, "-c", GUARDIAN_SOURCE, str(os.getpid()), command, *args],
        env=full_env,
        cwd=cwd,
        stderr=sys.stderr,
        start_new_session=True,
    )
    pgid = process.pid  # the guardian leads its own session and group
    read_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, write_reader = anyio.create_memory_object_stream[SessionMessage](0)

    async def read_stdout() -> None:
        assert process.stdout is not None
        buffer = b""
        try:
            async with read_writer:
                async for chunk in process.stdout:
                    lines = (buffer + chunk).split(b"\n")
                    buffer = lines.pop()
                    for line in lines:
                        if line.strip():
                            await read_writer.send(_parse_line(line))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, ConnectionError, OSError):
            pass

    async def write_stdin() -> None:
        assert process.stdin is not None
        try:
            async with write_reader:
                async for message in write_reader:
                    text = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    await process.stdin.send(text.encode("utf-8") + b"\n")
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            await read_writer.aclose()  # the session sees the connection end

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(read_stdout)
            group.start_soon(write_stdin)
            try:
                yield read_stream, write_stream
            finally:
                with anyio.CancelScope(shield=True):
                    read_stream.close()
                    write_stream.close()
                    await _stop(process, pgid)
                group.cancel_scope.cancel()
    finally:
        kill_group(pgid)
