"""``SqliteStore.write_entry_now``: an engine step's write, committed on the caller's thread when
that needs no waiting (docs/durability.md, *SqliteStore*). It promises what ``write`` promises
for a batch of that one entry: the lease checked by the store, the cell's sequence numbers
without a gap, all or nothing; and it writes nothing when it would have to wait."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from codemode import SessionBusy, SqliteStore, StoreError
from codemode.store import Batch, Entry, NewCell
from codemode.store.sqlite import _INLINE_BYTES


async def _opened(path: Path, **kw: float) -> SqliteStore:
    store = SqliteStore(path, **kw)
    await store.open_session("s", "A", limits={})
    await store.write("s", "A", Batch(cells=[NewCell("c", "continuing", {})]))
    return store


async def test_step_writes_follow_every_other_write_without_a_gap(tmp_path: Path) -> None:
    store = await _opened(tmp_path / "s.db")
    assert store.write_entry_now("s", "A", Entry("c", "step", {"i": [1]})) == 1
    assert await store.write("s", "A", Batch(entries=[Entry("c", "reads", {"r": []})])) == [2]
    assert store.write_entry_now("s", "A", Entry("c", "step", {"i": [2]})) == 3
    journal = await store.read_journal("s", "c")
    assert [(e.seq, e.kind, e.payload) for e in journal] == [
        (1, "step", {"i": [1]}),
        (2, "reads", {"r": []}),
        (3, "step", {"i": [2]}),
    ]
    cell = await store.get_cell("s", "c")
    assert cell is not None and cell.entries == 3
    await store.close()


async def test_a_step_write_without_the_lease_or_its_open_cell_writes_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    store = await _opened(path, lease_seconds=0.2)
    with pytest.raises(SessionBusy):
        store.write_entry_now("s", "B", Entry("c", "step", 1))  # not the lease's owner
    with pytest.raises(StoreError, match="not recorded"):
        store.write_entry_now("s", "A", Entry("nope", "step", 1))
    await asyncio.sleep(0.3)  # the lease expires (the store's clock decides)
    with pytest.raises(SessionBusy):
        store.write_entry_now("s", "A", Entry("c", "step", 1))
    other = SqliteStore(path)
    await other.open_session("s", "B", limits={})  # a takeover
    await other.write("s", "B", Batch(closed=["c"]))
    with pytest.raises(StoreError, match="closed"):
        other.write_entry_now("s", "B", Entry("c", "step", 1))
    assert await other.read_journal("s", "c") == []
    await other.close()
    await store.close()


async def test_a_step_write_that_would_wait_is_left_to_write(tmp_path: Path) -> None:
    """Nothing is written (None) when another connection holds the file's write lock or the
    entry is too large to be written on the caller's thread; ``write`` then lands it."""
    path = tmp_path / "s.db"
    store = await _opened(path)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    assert store.write_entry_now("s", "A", Entry("c", "step", 1)) is None
    blocker.execute("ROLLBACK")
    blocker.close()
    large = "x" * (_INLINE_BYTES + 1)
    assert store.write_entry_now("s", "A", Entry("c", "step", large)) is None
    assert await store.read_journal("s", "c") == []
    assert await store.write("s", "A", Batch(entries=[Entry("c", "step", large)])) == [1]
    assert store.write_entry_now("s", "A", Entry("c", "step", 2)) == 2
    await store.close()


async def test_a_value_json_cannot_hold_is_refused_before_any_write(tmp_path: Path) -> None:
    store = await _opened(tmp_path / "s.db")
    with pytest.raises(StoreError, match="cannot record"):
        store.write_entry_now("s", "A", Entry("c", "step", float("nan")))
    assert await store.read_journal("s", "c") == []
    await store.close()
