"""Adapters for agent frameworks (docs/integrations.md), each an optional extra.

- :mod:`codemode.integrations.pydantic_ai` (``codemode[pydantic-ai]``): ``CodeModeToolset``.
- :mod:`codemode.integrations.openai_agents` (``codemode[openai-agents]``): ``code_mode_tools``.
- :mod:`codemode.integrations.langchain` (``codemode[langchain]``): ``code_mode_tools``.

Importing this package imports no framework; each submodule imports only its own.
"""
