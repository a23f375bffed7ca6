"""``CodeModeMiddleware``: code mode inside ``langchain.agents.create_agent``
(docs/integrations.md). Import it from :mod:`codemode.integrations.langchain`; it lives here
because it needs the full ``langchain`` package, which ``code_mode_tools`` does not."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain_core.tools import BaseTool

from codemode.integrations._bridge import SessionArgument
from codemode.integrations.langchain import _Adapter
from codemode.tools.description import EXEC_TOOL_NAME, WAIT_TOOL_NAME

__all__ = ["CodeModeMiddleware"]


class CodeModeMiddleware(AgentMiddleware):
    """``create_agent`` middleware: the model sees ``exec`` and ``wait`` instead of the agent's
    tools, which run inside cells. Registers ``exec`` and ``wait`` with the agent."""

    def __init__(self, *, session: SessionArgument = None) -> None:
        super().__init__()
        self._adapter = _Adapter(session)
        self.tools = self._adapter.tools(self._adapter.use(()))

    def _rewrite(self, request: ModelRequest[Any]) -> ModelRequest[Any]:
        wrapped = [
            tool
            for tool in request.tools
            if isinstance(tool, BaseTool) and tool.name not in (EXEC_TOOL_NAME, WAIT_TOOL_NAME)
        ]
        others = [tool for tool in request.tools if not isinstance(tool, BaseTool)]
        visible = self._adapter.tools(self._adapter.use(wrapped))
        return request.override(tools=[*visible, *others])

    def wrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
    ) -> ModelResponse[Any]:
        return handler(self._rewrite(request))

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ModelResponse[Any]:
        return await handler(self._rewrite(request))

    async def aclose(self) -> None:
        """Shut an owned session down (its running cells are terminated)."""
        await self._adapter.bridge.aclose()
