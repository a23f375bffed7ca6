"""What ``codemode serve`` lets its clients do: who may connect, and what they may make it spend.

:class:`ServePolicy` holds the server-wide settings of ``codemode serve`` beyond the per-cell
limits (docs/protocol.md, "Limits and defaults"):

- **Origin.** A WebSocket opening handshake that carries an ``Origin`` header (every browser
  sends one) is refused with HTTP 403 unless the origin is in ``allow_origins``
  (``--allow-origin``, repeatable, compared case-insensitively); one without ``Origin`` (a
  program, not a web page) is accepted.
- **Authentication.** ``--listen`` on an address that is not loopback needs ``--token-env`` (a
  bearer token), or an explicit ``--no-auth``; otherwise ``codemode serve`` refuses to start.
- **Memory.** ``max_queued_bytes`` bounds the bytes of messages waiting to be written to one
  connection: above it the server stops reading that client's requests until it reads its
  answers (backpressure). ``max_sessions`` and ``max_live_cells_total`` cap the open sessions
  and the live cells of the whole server, over all connections; beyond them ``session/open`` and
  ``cell/create`` fail with ``EngineError`` (-32000) saying which cap and flag.
"""

from __future__ import annotations

import argparse
import ipaddress
from dataclasses import dataclass
from typing import Final

from codemode.protocol.rpc import MAX_QUEUED_BYTES

__all__ = [
    "DEFAULT_MAX_LIVE_CELLS_TOTAL",
    "DEFAULT_MAX_SESSIONS",
    "UNREADY_FRAME_BYTES",
    "ServePolicy",
    "add_serve_flags",
    "is_loopback",
    "origin_allowed",
    "policy_from_args",
]

DEFAULT_MAX_SESSIONS: Final = 256
"""Open sessions of one ``codemode serve`` process, over all its connections."""
DEFAULT_MAX_LIVE_CELLS_TOTAL: Final = 1024
"""Live cells of one ``codemode serve`` process, over all its sessions (each cell is a thread and
a V8 isolate)."""
UNREADY_FRAME_BYTES: Final = 1024 * 1024
"""The largest frame read before ``initialize`` (larger ones are answered ``-32002`` unparsed)."""


@dataclass(frozen=True)
class ServePolicy:
    """Server-wide settings of ``codemode serve`` (see the module docstring)."""

    allow_origins: tuple[str, ...] = ()
    no_auth: bool = False
    max_sessions: int = DEFAULT_MAX_SESSIONS
    max_live_cells_total: int = DEFAULT_MAX_LIVE_CELLS_TOTAL
    max_queued_bytes: int = MAX_QUEUED_BYTES

    def __post_init__(self) -> None:
        for name in ("max_sessions", "max_live_cells_total", "max_queued_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """Whether a handshake with this ``Origin`` header (``None``: absent) is accepted."""
    if origin is None:
        return True
    wanted = origin.strip().rstrip("/").lower()
    return any(wanted == a.strip().rstrip("/").lower() for a in allowed)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    """The policy flags of ``codemode serve``."""
    group = parser.add_argument_group("access and server-wide caps (docs/protocol.md)")
    group.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="accept WebSocket handshakes with this Origin header (repeatable); without it, "
        "any handshake carrying an Origin (a web page) is refused",
    )
    group.add_argument(
        "--no-auth",
        action="store_true",
        help="allow --listen on a non-loopback address without --token-env",
    )
    group.add_argument(
        "--max-sessions",
        type=int,
        default=DEFAULT_MAX_SESSIONS,
        help=f"open sessions of the whole server (default {DEFAULT_MAX_SESSIONS})",
    )
    group.add_argument(
        "--max-live-cells-total",
        type=int,
        default=DEFAULT_MAX_LIVE_CELLS_TOTAL,
        help=f"live cells of the whole server (default {DEFAULT_MAX_LIVE_CELLS_TOTAL})",
    )
    group.add_argument(
        "--max-queued-bytes",
        type=int,
        default=MAX_QUEUED_BYTES,
        help="bytes of answers queued for one client before the server stops reading it "
        f"(default {MAX_QUEUED_BYTES})",
    )


def policy_from_args(args: argparse.Namespace) -> ServePolicy:
    """The :class:`ServePolicy` of the flags; ``ValueError`` if one is invalid."""
    return ServePolicy(
        allow_origins=tuple(args.allow_origin),
        no_auth=bool(args.no_auth),
        max_sessions=args.max_sessions,
        max_live_cells_total=args.max_live_cells_total,
        max_queued_bytes=args.max_queued_bytes,
    )
