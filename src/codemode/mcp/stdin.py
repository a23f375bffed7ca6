"""``codemode mcp``'s standard input, read without a blocked worker thread (issue 12 point 3).

The SDK's ``stdio_server`` reads stdin in a worker thread, which no cancellation can interrupt: on
SIGTERM the server would wait for the client's next line (or the end of input) before it could
shut down. :func:`open_stdin_lines` reads the same descriptor through the event loop instead (a
pipe or a socket; a regular file or a terminal falls back to a daemon thread), so SIGTERM stops
``codemode mcp`` at once. File descriptor 0 is then pointed at the null device, as the SDK does,
so nothing else in the process reads the protocol stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import AsyncIterator
from typing import BinaryIO, Final

__all__ = ["MAX_LINE_BYTES", "StdinLines", "open_stdin_lines"]

logger = logging.getLogger("codemode.mcp")

MAX_LINE_BYTES: Final = 64 * 1024 * 1024
"""The longest line read from the MCP client; a longer one ends the input."""


class StdinLines:
    """The client's lines as text (invalid UTF-8 replaced), for ``stdio_server(stdin=...)``."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    def __aiter__(self) -> AsyncIterator[str]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[str]:
        while True:
            try:
                line = await self._reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    yield exc.partial.decode("utf-8", "replace")
                return
            except asyncio.LimitOverrunError:
                logger.error("the MCP client sent a line over %d bytes; stopping", MAX_LINE_BYTES)
                return
            yield line.decode("utf-8", "replace")


def _pump(loop: asyncio.AbstractEventLoop, file: BinaryIO, reader: asyncio.StreamReader) -> None:
    try:
        while chunk := os.read(file.fileno(), 1 << 16):
            loop.call_soon_threadsafe(reader.feed_data, chunk)
    except OSError as exc:
        logger.debug("reading stdin: %s", exc)
    finally:
        with contextlib.suppress(OSError):
            file.close()
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(reader.feed_eof)


async def open_stdin_lines() -> StdinLines:
    """Take over file descriptor 0 (see the module docstring) and read it on the event loop."""
    loop = asyncio.get_running_loop()
    fd = os.dup(0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    reader = asyncio.StreamReader(limit=MAX_LINE_BYTES)
    file = os.fdopen(fd, "rb", buffering=0)
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), file)
    except ValueError:  # a regular file or a terminal: no pipe transport
        threading.Thread(target=_pump, args=(loop, file, reader), daemon=True).start()
    return StdinLines(reader)
