"""The MCP front of codemode (docs/protocol.md): ``codemode mcp`` and ``codemode run --mcp-config``.

- :mod:`codemode.mcp.config` reads the ``{"mcpServers": {...}}`` file MCP clients already use;
- :mod:`codemode.mcp.upstream` connects to those servers and turns their tools into the nested
  tools ``mcp__{server}__{tool}`` of cells;
- :mod:`codemode.mcp.server` is the MCP server whose only tools are ``exec`` and ``wait``.

Built on the official ``mcp`` Python SDK (2.x). Import the submodules; this package imports
nothing itself, so ``import codemode`` never loads the SDK.
"""
