"""The codemode wire protocol (docs/protocol.md): ``codemode serve`` and its Python client.

- :mod:`.messages`: the message definitions, defined once; ``schema.json`` is generated from them.
- :mod:`.transport`: stdio lines and WebSocket messages as frames.
- :mod:`.rpc`: the JSON-RPC 2.0 endpoint both sides use.
- :mod:`.server`: the server (``codemode serve``), a thin adapter over ``SessionRuntime``.
- :mod:`.client`: :class:`RemoteSession`, the same API as ``SessionRuntime`` over the wire.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from codemode.protocol.client import RemoteSession

__all__ = ["RemoteSession"]


def __getattr__(name: str) -> Any:
    # Imported lazily so `python -m codemode.protocol.messages` runs without a runpy warning.
    if name == "RemoteSession":
        from codemode.protocol.client import RemoteSession

        return RemoteSession
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
