"""Frame transports of the wire protocol (docs/protocol.md).

A transport moves whole frames, each one JSON-RPC message:

- :class:`LineTransport`: one ``\\n``-terminated UTF-8 line per frame, over an asyncio stream
  (a child's pipes, the server's own stdin/stdout, or an in-memory pair for tests). A line longer
  than :data:`~codemode.protocol.messages.MAX_FRAME_BYTES` raises :class:`FrameTooLarge`, which
  ends the connection. A final line without ``\\n`` at end of input is still delivered.
- :class:`WebSocketTransport`: one WebSocket message per frame (the ``websockets`` asyncio API);
  the connection is opened with ``max_size`` set to the same limit, so a larger message closes it.

Transports know nothing of JSON-RPC; :mod:`codemode.protocol.rpc` parses and answers frames.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from typing import Any, BinaryIO, Protocol

from websockets.asyncio.connection import Connection
from websockets.exceptions import ConnectionClosed

from codemode.protocol.messages import MAX_FRAME_BYTES

__all__ = [
    "FrameTooLarge",
    "LineTransport",
    "Transport",
    "TransportClosed",
    "WebSocketTransport",
    "memory_pair",
    "open_stdio",
]

logger = logging.getLogger("codemode.protocol.transport")

# How long closing a transport may wait for buffered output to drain.
CLOSE_TIMEOUT = 5.0


class TransportClosed(Exception):
    """The transport cannot send any more (the peer went away or it was closed)."""


class FrameTooLarge(Exception):
    """The peer sent a frame over the size limit; the connection must close."""


class Transport(Protocol):
    """A bidirectional stream of frames."""

    name: str

    async def receive(self) -> bytes | str | None:
        """The next frame, or ``None`` at the end of input. Raises :class:`FrameTooLarge`."""
        ...

    async def send(self, text: str) -> None:
        """Send one frame. Raises :class:`TransportClosed` once the peer is gone."""
        ...

    async def close(self) -> None:
        """Stop sending (flushing what was sent, bounded) and release the transport."""
        ...


class _Writer(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...


class LineTransport:
    """Newline-delimited frames over an asyncio :class:`~asyncio.StreamReader` and a writer."""

    def __init__(self, reader: asyncio.StreamReader, writer: _Writer, name: str) -> None:
        self.name = name
        self._reader = reader
        self._writer = writer
        self._lock = asyncio.Lock()
        self._closed = False

    async def receive(self) -> bytes | None:
        try:
            line = await self._reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            return exc.partial or None
        except asyncio.LimitOverrunError as exc:
            raise FrameTooLarge(f"a line exceeds {MAX_FRAME_BYTES} bytes") from exc
        return line[:-1]

    async def send(self, text: str) -> None:
        await self.send_raw(text.encode("utf-8") + b"\n")

    async def send_raw(self, data: bytes) -> None:
        """Write ``data`` as is (tests use it to send broken frames)."""
        async with self._lock:
            if self._closed:
                raise TransportClosed(f"{self.name} is closed")
            try:
                self._writer.write(data)
                await self._writer.drain()
            except (ConnectionError, OSError, RuntimeError, AssertionError) as exc:
                self._closed = True
                raise TransportClosed(f"{self.name}: {exc}") from exc

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                async with self._lock:
                    self._writer.close()
                    wait_closed = getattr(self._writer, "wait_closed", None)
                    if wait_closed is not None:
                        await wait_closed()
        except (TimeoutError, ConnectionError, OSError, RuntimeError) as exc:
            logger.debug("closing %s: %s", self.name, exc)


class WebSocketTransport:
    """One WebSocket message per frame."""

    def __init__(self, websocket: Connection, name: str) -> None:
        self.name = name
        self._ws = websocket

    async def receive(self) -> bytes | str | None:
        try:
            return await self._ws.recv()
        except ConnectionClosed as exc:
            if exc.sent is not None and exc.sent.code == 1009:
                raise FrameTooLarge(f"a message exceeds {MAX_FRAME_BYTES} bytes") from exc
            logger.debug("%s closed: %s", self.name, exc)
            return None

    async def send(self, text: str) -> None:
        try:
            await self._ws.send(text)
        except ConnectionClosed as exc:
            raise TransportClosed(f"{self.name}: {exc}") from exc

    async def close(self) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._ws.close()
        except (TimeoutError, ConnectionError, OSError) as exc:
            logger.debug("closing %s: %s", self.name, exc)


# ---------------------------------------------------------------------------- in memory


class _FeedWriter:
    """Writes into the peer's StreamReader (the in-memory pipe)."""

    def __init__(self, peer: asyncio.StreamReader) -> None:
        self._peer = peer
        self._closed = False

    def write(self, data: bytes) -> None:
        if self._closed:
            raise ConnectionResetError("the in-memory pipe is closed")
        self._peer.feed_data(data)

    async def drain(self) -> None:
        await asyncio.sleep(0)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._peer.feed_eof()


def memory_pair(name: str = "memory") -> tuple[LineTransport, LineTransport]:
    """Two connected line transports (for tests): what one sends, the other receives.
    Closing one ends the other's input."""
    a_in = asyncio.StreamReader(limit=MAX_FRAME_BYTES)
    b_in = asyncio.StreamReader(limit=MAX_FRAME_BYTES)
    a = LineTransport(a_in, _FeedWriter(b_in), f"{name}/a")
    b = LineTransport(b_in, _FeedWriter(a_in), f"{name}/b")
    return a, b


# ---------------------------------------------------------------------------- the process's stdio


class _BlockingWriter:
    """A writer for a regular file (where a pipe transport is refused): plain blocking writes."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file  # owns the descriptor: it stays open as long as this writer

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._file.fileno(), view)
            view = view[written:]

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        self._file.close()


def _feed_from_thread(
    loop: asyncio.AbstractEventLoop, file: BinaryIO, reader: asyncio.StreamReader
) -> None:
    def pump() -> None:
        try:
            while True:
                chunk = os.read(file.fileno(), 1 << 16)
                if not chunk:
                    break
                loop.call_soon_threadsafe(reader.feed_data, chunk)
        except OSError as exc:
            logger.debug("reading stdin: %s", exc)
        finally:
            file.close()
            loop.call_soon_threadsafe(reader.feed_eof)

    threading.Thread(target=pump, name="codemode-stdin", daemon=True).start()


async def open_stdio(name: str = "stdio") -> LineTransport:
    """The process's stdin and stdout as a line transport, for ``codemode serve``.

    The protocol keeps the original stdout for itself; file descriptor 1 (and so ``print``, and
    anything a native library writes there) is pointed at stderr, so stdout carries protocol
    lines only.
    """
    loop = asyncio.get_running_loop()
    sys.stdout.flush()
    out_fd = os.dup(1)
    os.dup2(2, 1)
    in_fd = os.dup(0)

    reader = asyncio.StreamReader(limit=MAX_FRAME_BYTES)
    in_file = os.fdopen(in_fd, "rb", buffering=0)
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), in_file)
    except ValueError:  # a regular file: no pipe transport
        _feed_from_thread(loop, in_file, reader)

    writer: Any
    out_file = os.fdopen(out_fd, "wb", buffering=0)
    try:
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, out_file
        )
        writer = asyncio.StreamWriter(transport, protocol, None, loop)
    except ValueError:  # a regular file
        writer = _BlockingWriter(out_file)
    return LineTransport(reader, writer, name)
