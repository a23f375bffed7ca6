"""The model-facing front of code mode (docs/model-tools.md): the ``exec`` and ``wait`` tools.

Pure parts live in their own modules: :mod:`.typescript` (JSON Schema to TypeScript),
:mod:`.description` (tool descriptions and tool specs), :mod:`.pragma` (the ``// @exec:`` first-line
pragma), :mod:`.render` (result headers and token truncation) and :mod:`.result` (``ToolResult``).
"""

from codemode.tools.exec_wait import CodeModeSession, CodeModeTools
from codemode.tools.result import ToolResult

__all__ = ["CodeModeSession", "CodeModeTools", "ToolResult"]
