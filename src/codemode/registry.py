"""The cells of one session, and the one place their handles are checked (see ``docs/design.md``).

A :class:`CellRegistry` maps the ids of a session's live cells to their entries (a cell actor
in-process, the client's record of a cell in :class:`~codemode.protocol.client.RemoteSession`)
and owns the identity its handles are bound to. Every session kind asks it, so the rules are
written once:

- a handle minted by another session raises ``ForeignHandle``; anything that is neither a handle
  nor (where accepted) a cell id raises ``TypeError``;
- an id with no live cell raises ``MissingCell``;
- a cell of the other kind raises ``WrongCellKind`` (``expected``, then ``actual``);
- :meth:`CellRegistry.is_live` answers whether a cell is live, without raising.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

from codemode.errors import ForeignHandle, MissingCell, WrongCellKind
from codemode.model import Cell, CellKind, PausableCell

__all__ = ["CellEntry", "CellRegistry"]


class CellEntry(Protocol):
    """What the registry needs of an entry: the cell's id and kind."""

    @property
    def cell_id(self) -> str: ...

    @property
    def kind(self) -> CellKind: ...


E = TypeVar("E", bound=CellEntry)


class CellRegistry(Generic[E]):
    """The live cells of one session by id, and the owner identity of its handles."""

    def __init__(self) -> None:
        self.owner = object()  # the identity handles are bound to
        self._cells: dict[str, E] = {}

    # ------------------------------------------------------------------ the map

    def add(self, entry: E) -> None:
        """Record a live cell (its id must be new)."""
        self._cells[entry.cell_id] = entry

    def remove(self, cell_id: str) -> E | None:
        """Forget a cell (it closed); ``None`` when it was not recorded."""
        return self._cells.pop(cell_id, None)

    def get(self, cell_id: str) -> E | None:
        return self._cells.get(cell_id)

    def entries(self) -> list[E]:
        """A snapshot of the live cells' entries."""
        return list(self._cells.values())

    def __getitem__(self, cell_id: str) -> E:
        return self._cells[cell_id]

    def clear(self) -> None:
        self._cells.clear()

    def __contains__(self, cell_id: object) -> bool:
        return cell_id in self._cells

    def __len__(self) -> int:
        return len(self._cells)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._cells))

    def is_live(self, cell_id: str) -> bool:
        """Whether ``cell_id`` names a live cell of this session (of either kind)."""
        return cell_id in self._cells

    # ------------------------------------------------------------------ handles

    def handle(self, cell_id: str, kind: CellKind) -> Cell | PausableCell:
        """A handle on ``cell_id`` bound to this session."""
        if kind is CellKind.PAUSABLE:
            return PausableCell(cell_id, self.owner)
        return Cell(cell_id, self.owner)

    def cell_id_of(self, cell: Cell | PausableCell | str, *, accept_ids: bool = True) -> str:
        """The id a handle (or, when ``accept_ids``, a raw id) names: ``ForeignHandle`` for
        another session's handle, ``TypeError`` for anything else."""
        if isinstance(cell, str) and accept_ids:
            return cell
        if isinstance(cell, Cell | PausableCell):
            if cell._owner is not self.owner:
                raise ForeignHandle(cell.cell_id)
            return cell.cell_id
        if accept_ids:
            raise TypeError(f"expected a cell handle or id, got {type(cell).__name__}")
        raise TypeError(f"expected a Cell or PausableCell handle, got {type(cell).__name__}")

    def find(self, cell_id: str) -> E:
        """The live cell ``cell_id``: ``MissingCell`` when there is none."""
        entry = self._cells.get(cell_id)
        if entry is None:
            raise MissingCell(cell_id)
        return entry

    def find_kind(self, cell_id: str, expected: CellKind) -> E:
        """:meth:`find`, then ``WrongCellKind`` unless the cell is of the ``expected`` kind."""
        entry = self.find(cell_id)
        if entry.kind is not expected:
            raise WrongCellKind(cell_id, str(expected), str(entry.kind))
        return entry

    def resolve(self, cell: Cell | PausableCell | str, expected: CellKind | None = None) -> E:
        """:meth:`cell_id_of` then :meth:`find` (or :meth:`find_kind` when ``expected``)."""
        cell_id = self.cell_id_of(cell)
        return self.find(cell_id) if expected is None else self.find_kind(cell_id, expected)
