"""Adapters for agent frameworks (docs/integrations.md), each an optional extra.

- :mod:`codemode.integrations.pydantic_ai` (``codemode[pydantic-ai]``): ``CodeModeToolset``, a
  wrapper toolset, and ``CodeModeCapability``.
- :mod:`codemode.integrations.openai_agents` (``codemode[openai-agents]``): ``code_mode_tools``
  and ``mcp_function_tools``.
- :mod:`codemode.integrations.langchain` (``codemode[langchain]``): ``code_mode_tools`` and
  ``CodeModeMiddleware`` for ``create_agent``.

Importing this package imports no framework; each submodule imports only its own.
"""
