"""The one registry of a session's cells (``codemode.registry``), without V8."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from codemode import Cell, ForeignHandle, MissingCell, PausableCell, WrongCellKind
from codemode.model import CellKind
from codemode.registry import CellRegistry


@dataclass
class Entry:
    cell_id: str
    kind: CellKind


def _registry() -> CellRegistry[Entry]:
    registry: CellRegistry[Entry] = CellRegistry()
    registry.add(Entry("c1", CellKind.CONTINUING))
    registry.add(Entry("p1", CellKind.PAUSABLE))
    return registry


def test_handles_are_bound_to_their_registry() -> None:
    registry, other = _registry(), _registry()
    handle = registry.handle("c1", CellKind.CONTINUING)
    assert isinstance(handle, Cell)
    assert isinstance(registry.handle("p1", CellKind.PAUSABLE), PausableCell)
    assert registry.resolve(handle).cell_id == "c1"
    with pytest.raises(ForeignHandle) as caught:
        other.resolve(handle)
    assert caught.value.cell_id == "c1"


def test_resolve_ids_kinds_and_missing_cells() -> None:
    registry = _registry()
    assert registry.resolve("p1", CellKind.PAUSABLE).kind is CellKind.PAUSABLE
    with pytest.raises(WrongCellKind) as wrong:
        registry.resolve("p1", CellKind.CONTINUING)
    assert wrong.value.fields() == {
        "cell_id": "p1",
        "expected": "continuing",
        "actual": "pausable",
    }
    with pytest.raises(MissingCell):
        registry.resolve("nope")
    registry.remove("c1")
    with pytest.raises(MissingCell):
        registry.resolve("c1", CellKind.CONTINUING)


def test_type_errors_name_what_was_accepted() -> None:
    registry = _registry()
    with pytest.raises(TypeError, match="expected a cell handle or id, got int"):
        registry.resolve(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected a Cell or PausableCell handle, got str"):
        registry.cell_id_of("c1", accept_ids=False)


def test_is_live_never_raises() -> None:
    registry = _registry()
    assert registry.is_live("c1") and registry.is_live("p1")
    assert not registry.is_live("nope")
    registry.remove("p1")
    assert not registry.is_live("p1")
    assert len(registry) == 1 and list(registry) == ["c1"]
    registry.clear()
    assert not registry.is_live("c1")
