"""``ToolResult``: what one model-facing ``exec`` or ``wait`` call returns (docs/model-tools.md)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from codemode.model import ImageItem, OutputItem, TextItem
from codemode.textsafe import valid_text

__all__ = ["IMAGE_PLACEHOLDER", "ToolResult"]

IMAGE_PLACEHOLDER = "[image]"
"""How :attr:`ToolResult.text` shows an image item."""


@dataclass(frozen=True)
class ToolResult:
    """The answer to one ``exec``/``wait`` call.

    Attributes:
        items: what the model sees; a cell result starts with its header item
        (docs/model-tools.md), a usage
            error is one text item with the message.
        is_error: ``True`` for ``Script failed`` and for usage errors, else ``False``.
        cell_id: the cell the call observed, when there is one.
    """

    items: tuple[OutputItem, ...]
    is_error: bool
    cell_id: str | None = None

    def __post_init__(self) -> None:
        # The exec/wait front's one boundary for valid Unicode (codemode.textsafe): a lone
        # surrogate a cell printed becomes U+FFFD in what the model (or MCP client) receives.
        object.__setattr__(self, "items", tuple(_valid_item(item) for item in self.items))

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


def _valid_item(item: OutputItem) -> OutputItem:
    if isinstance(item, TextItem):
        text = valid_text(item.text)
        return item if text is item.text else replace(item, text=text)
    if isinstance(item, ImageItem):
        url = valid_text(item.image_url)
        return item if url is item.image_url else replace(item, image_url=url)
    return item
