"""``ToolResult``: what one model-facing ``exec`` or ``wait`` call returns (SPEC section 9)."""

from __future__ import annotations

from dataclasses import dataclass

from codemode.model import ImageItem, OutputItem, TextItem

__all__ = ["IMAGE_PLACEHOLDER", "ToolResult"]

IMAGE_PLACEHOLDER = "[image]"
"""How :attr:`ToolResult.text` shows an image item."""


@dataclass(frozen=True)
class ToolResult:
    """The answer to one ``exec``/``wait`` call.

    Attributes:
        items: what the model sees; a cell result starts with its header item (SPEC 9.3), a usage
            error is one text item with the message.
        is_error: ``True`` for ``Script failed`` and for usage errors, else ``False``.
        cell_id: the cell the call observed, when there is one.
    """

    items: tuple[OutputItem, ...]
    is_error: bool
    cell_id: str | None = None

    @property
    def text(self) -> str:
        """The items as one string: text items joined by ``"\\n"``, each image shown as
        ``[image]``."""
        parts: list[str] = []
        for item in self.items:
            if isinstance(item, TextItem):
                parts.append(item.text)
            elif isinstance(item, ImageItem):
                parts.append(IMAGE_PLACEHOLDER)
        return "\n".join(parts)
