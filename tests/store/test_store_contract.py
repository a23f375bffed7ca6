"""The SessionStore contract, run against SqliteStore and PostgresStore alike."""

from __future__ import annotations

import asyncio
import math

import pytest
from store_support import (  # the fixtures: imported for pytest to find them
    Backend,
    backend_fixture,  # noqa: F401
    new_id,
    postgres_server_fixture,  # noqa: F401
)

from codemode import SessionBusy, SessionStore, StoreError
from codemode.store import Batch, Delivery, Entry, JournalEntry, KeyRecord, NewCell


async def opened(backend: Backend, owner: str = "A", **kw: float) -> tuple[SessionStore, str]:
    store = backend.make(**kw)
    session_id = new_id()
    await store.open_session(session_id, owner, limits={"max_cells": 4})
    return store, session_id


async def test_both_stores_implement_the_protocol(backend: Backend) -> None:
    store = backend.make(lease_seconds=3.5)
    assert isinstance(store, SessionStore)
    assert store.lease_seconds == 3.5


async def test_open_creates_the_session_once_and_returns_its_record(backend: Backend) -> None:
    store = backend.make()
    first = await store.open_session("s1", "A", limits={"max_cells": 4, "nested": [1, "x"]})
    assert first.created
    assert first.session.session_id == "s1"
    assert first.session.limits == {"max_cells": 4, "nested": [1, "x"]}
    assert first.lease.owner == "A" and first.lease.epoch == 1 and not first.lease.taken_over
    # The same owner opens again: idempotent, the recorded limits win.
    again = await store.open_session("s1", "A", limits={"other": True})
    assert not again.created
    assert again.session == first.session
    assert again.lease.epoch == 1
    record = await store.get_session("s1")
    assert record == first.session
    assert await store.get_session("nope") is None
    lease = await store.get_lease("s1")
    assert lease is not None and lease.owner == "A"


async def test_a_live_lease_makes_other_owners_busy(backend: Backend) -> None:
    store, sid = await opened(backend)
    other = backend.make()
    with pytest.raises(SessionBusy) as info:
        await other.open_session(sid, "B", limits={})
    assert str(info.value) == f"code mode session {sid} is open elsewhere"
    assert info.value.session_id == sid
    with pytest.raises(SessionBusy):
        await other.renew_lease(sid, "B")
    with pytest.raises(SessionBusy):
        await other.write(sid, "B", Batch(values={"k": 1}))
    assert await store.get_values(sid) == {}


async def test_release_lets_the_next_owner_in_without_waiting(backend: Backend) -> None:
    store, sid = await opened(backend)
    await store.release_lease(sid, "A")
    assert await store.get_lease(sid) is None
    other = backend.make()
    opened_b = await other.open_session(sid, "B", limits={})
    assert opened_b.lease.epoch == 2 and not opened_b.lease.taken_over
    # A released: its renewals and writes are refused; releasing again is harmless.
    with pytest.raises(SessionBusy):
        await store.renew_lease(sid, "A")
    with pytest.raises(SessionBusy):
        await store.write(sid, "A", Batch(values={"k": 1}))
    await store.release_lease(sid, "A")
    assert (await other.get_lease(sid)).owner == "B"  # type: ignore[union-attr]


async def test_renewal_keeps_the_lease_past_lease_seconds(backend: Backend) -> None:
    store, sid = await opened(backend, lease_seconds=1.5)
    other = backend.make(lease_seconds=1.5)
    loop = asyncio.get_running_loop()
    end = loop.time() + 2.2
    while loop.time() < end:
        lease = await store.renew_lease(sid, "A")
        assert lease.owner == "A" and lease.epoch == 1
        await asyncio.sleep(0.2)
    with pytest.raises(SessionBusy):
        await other.open_session(sid, "B", limits={})
    await store.write(sid, "A", Batch(values={"k": 1}))


async def test_takeover_after_expiry_and_the_old_holder_finds_its_lease_lost(
    backend: Backend,
) -> None:
    store, sid = await opened(backend, lease_seconds=0.5)
    await store.write(sid, "A", Batch(cells=[NewCell("c1", "continuing", {"code": "1"})]))
    await asyncio.sleep(0.8)
    other = backend.make(lease_seconds=0.5)
    took = await other.open_session(sid, "B", limits={})
    assert took.lease.taken_over and took.lease.epoch == 2 and not took.created
    with pytest.raises(SessionBusy):
        await store.renew_lease(sid, "A")
    with pytest.raises(SessionBusy):
        await store.write(sid, "A", Batch(entries=[Entry("c1", "step", 1)]))
    with pytest.raises(SessionBusy):
        await store.open_session(sid, "A", limits={})
    assert await other.write(sid, "B", Batch(entries=[Entry("c1", "step", 2)])) == [1]
    assert [e.payload for e in await other.read_journal(sid, "c1")] == [2]


async def test_a_partitioned_holder_is_refused_before_a_second_owner_writes(
    backend: Backend,
) -> None:
    """A holder whose renewals stop (it is partitioned away) loses the right to write when its
    lease expires, before anyone takes over; the taker's writes follow the holder's last one."""
    store, sid = await opened(backend, lease_seconds=1.0)
    await store.write(
        sid,
        "A",
        Batch(cells=[NewCell("c1", "pausable", {})], entries=[Entry("c1", "step", "a1")]),
    )
    await asyncio.sleep(1.3)  # renewals blocked: the lease runs out
    # Nobody took over yet, and still the old holder's appends are refused.
    with pytest.raises(SessionBusy):
        await store.write(sid, "A", Batch(entries=[Entry("c1", "step", "a2")]))
    assert await store.get_lease(sid) is None
    other = backend.make(lease_seconds=1.0)
    assert (await other.open_session(sid, "B", limits={})).lease.taken_over
    # The partition heals: the old holder's renewal tells it the lease is lost.
    with pytest.raises(SessionBusy):
        await store.renew_lease(sid, "A")
    await other.write(sid, "B", Batch(entries=[Entry("c1", "step", "b1")]))
    journal = await other.read_journal(sid, "c1")
    assert [(e.seq, e.payload) for e in journal] == [(1, "a1"), (2, "b1")]


async def test_journal_keeps_order_per_cell_across_batches(backend: Backend) -> None:
    store, sid = await opened(backend)
    seqs = await store.write(
        sid,
        "A",
        Batch(
            cells=[NewCell("c1", "continuing", {"code": "a"}), NewCell("c2", "pausable", {})],
            entries=[
                Entry("c1", "boot", {"n": 0}),
                Entry("c2", "boot", None),
                Entry("c1", "step", {"n": 1}),
                Entry("c1", "step", {"n": 2}),
            ],
        ),
    )
    assert seqs == [1, 1, 2, 3]
    seqs = await store.write(
        sid, "A", Batch(entries=[Entry("c2", "step", [1.5, "é", True]), Entry("c1", "step", 3)])
    )
    assert seqs == [2, 4]
    journal = await store.read_journal(sid, "c1")
    assert journal == [
        JournalEntry("c1", 1, "boot", {"n": 0}),
        JournalEntry("c1", 2, "step", {"n": 1}),
        JournalEntry("c1", 3, "step", {"n": 2}),
        JournalEntry("c1", 4, "step", 3),
    ]
    assert [e.payload for e in await store.read_journal(sid, "c2")] == [None, [1.5, "é", True]]
    assert [e.seq for e in await store.read_journal(sid, "c1", after=2)] == [3, 4]
    cell = await store.get_cell(sid, "c1")
    assert cell is not None and cell.entries == 4 and cell.state == "open"
    assert cell.request == {"code": "a"} and cell.kind == "continuing"
    # Another store (another process) reads the same journal.
    reader = backend.make()
    assert await reader.read_journal(sid, "c1") == journal


async def test_many_single_appends_stay_in_order(backend: Backend) -> None:
    store, sid = await opened(backend)
    await store.write(sid, "A", Batch(cells=[NewCell("c1", "continuing", {})]))
    results = await asyncio.gather(
        *(store.write(sid, "A", Batch(entries=[Entry("c1", "e", i)])) for i in range(50))
    )
    assert sorted(r[0] for r in results) == list(range(1, 51))
    journal = await store.read_journal(sid, "c1")
    assert [e.seq for e in journal] == list(range(1, 51))
    # The sequence numbers follow the order the writes were applied: each write's number
    # is the one its payload was stored under.
    assert {e.seq: e.payload for e in journal} == {r[0]: i for i, r in enumerate(results)}


async def test_concurrent_writes_fail_alone(backend: Backend) -> None:
    """Writes issued together (SqliteStore commits them as one group) land or fail each on its
    own: a malformed batch or a writer without the lease takes nothing else with it."""
    store, sid = await opened(backend)
    await store.write(sid, "A", Batch(cells=[NewCell("c1", "continuing", {})]))
    writes = [store.write(sid, "A", Batch(entries=[Entry("c1", "step", i)])) for i in range(10)]
    writes.insert(3, store.write(sid, "A", Batch(entries=[Entry("ghost", "step", "x")])))
    writes.insert(6, store.write(sid, "B", Batch(values={"stolen": True})))
    writes.insert(8, store.write(sid, "A", Batch(cells=[NewCell("c1", "continuing", {})])))
    results = await asyncio.gather(*writes, return_exceptions=True)
    assert isinstance(results[3], StoreError) and "ghost" in str(results[3])
    assert isinstance(results[6], SessionBusy)
    assert isinstance(results[8], StoreError) and "already recorded" in str(results[8])
    good = [r for i, r in enumerate(results) if i not in (3, 6, 8)]
    assert sorted(r[0] for r in good) == list(range(1, 11))  # type: ignore[index]
    journal = await store.read_journal(sid, "c1")
    assert [e.seq for e in journal] == list(range(1, 11))
    assert await store.get_values(sid) == {}


async def test_a_failing_batch_writes_nothing(backend: Backend) -> None:
    store, sid = await opened(backend)
    await store.write(
        sid, "A", Batch(cells=[NewCell("c1", "continuing", {})], values={"k": "before"})
    )
    bad = Batch(
        cells=[NewCell("c2", "continuing", {}, "key-2", "fp")],
        entries=[Entry("c1", "step", 1), Entry("ghost", "step", 2)],
        values={"k": "after"},
    )
    with pytest.raises(StoreError, match="ghost"):
        await store.write(sid, "A", bad)
    assert await store.read_journal(sid, "c1") == []
    assert await store.get_values(sid) == {"k": "before"}
    assert await store.get_cell(sid, "c2") is None
    assert await store.list_keys(sid) == []
    assert (await store.get_cell(sid, "c1")).entries == 0  # type: ignore[union-attr]
    # The store is still usable, and the numbering has no gap.
    assert await store.write(sid, "A", Batch(entries=[Entry("c1", "step", 1)])) == [1]


async def test_values_that_json_cannot_hold_are_refused_before_any_write(
    backend: Backend,
) -> None:
    store, sid = await opened(backend)
    await store.write(sid, "A", Batch(cells=[NewCell("c1", "continuing", {})]))
    with pytest.raises(StoreError, match="cannot record"):
        await store.write(sid, "A", Batch(entries=[Entry("c1", "x", {"n": math.nan})]))
    with pytest.raises(StoreError, match="cannot record"):
        await store.write(sid, "A", Batch(values={"k": object()}))
    assert await store.read_journal(sid, "c1") == []


async def test_cells_and_keys(backend: Backend) -> None:
    store, sid = await opened(backend)
    await store.write(
        sid,
        "A",
        Batch(
            cells=[
                NewCell("c1", "continuing", {"code": "1"}, "k1", "fp1"),
                NewCell("c2", "pausable", {"code": "2"}),
                NewCell("c3", "pausable", {"code": "3"}, "k3", "fp3"),
            ]
        ),
    )
    assert [c.cell_id for c in await store.list_cells(sid)] == ["c1", "c2", "c3"]
    assert await store.list_keys(sid) == [
        KeyRecord("k1", "fp1", "c1"),
        KeyRecord("k3", "fp3", "c3"),
    ]
    c1 = await store.get_cell(sid, "c1")
    assert c1 is not None and (c1.idempotency_key, c1.fingerprint) == ("k1", "fp1")
    # A cell id or a key recorded twice is refused, and nothing of that batch lands.
    with pytest.raises(StoreError, match="already recorded"):
        await store.write(sid, "A", Batch(cells=[NewCell("c1", "continuing", {})]))
    with pytest.raises(StoreError, match="idempotency key k1"):
        await store.write(sid, "A", Batch(cells=[NewCell("c4", "continuing", {}, "k1", "x")]))
    assert await store.get_cell(sid, "c4") is None
    await store.write(sid, "A", Batch(closed=["c2"], keys_deleted=["k3"]))
    assert [c.cell_id for c in await store.list_cells(sid, state="open")] == ["c1", "c3"]
    assert [c.cell_id for c in await store.list_cells(sid, state="closed")] == ["c2"]
    assert await store.list_keys(sid) == [KeyRecord("k1", "fp1", "c1")]
    with pytest.raises(StoreError, match="not recorded"):
        await store.write(sid, "A", Batch(closed=["ghost"]))


async def test_closed_cells_take_no_entries_and_their_journal_can_be_deleted(
    backend: Backend,
) -> None:
    store, sid = await opened(backend)
    await store.write(
        sid,
        "A",
        Batch(
            cells=[NewCell("c1", "continuing", {}), NewCell("c2", "continuing", {})],
            entries=[Entry("c1", "step", 1), Entry("c2", "step", 1)],
            deliveries=[Delivery("c1", 2)],
        ),
    )
    with pytest.raises(StoreError, match="open"):
        await store.write(sid, "A", Batch(journals_deleted=["c1"]))
    # The terminal outcome and the close in one batch.
    assert await store.write(
        sid, "A", Batch(entries=[Entry("c1", "outcome", {"done": True})], closed=["c1"])
    ) == [2]
    with pytest.raises(StoreError, match="closed"):
        await store.write(sid, "A", Batch(entries=[Entry("c1", "step", 3)]))
    with pytest.raises(StoreError, match="closed"):
        await store.write(sid, "A", Batch(deliveries=[Delivery("c1", 1)]))
    await store.write(sid, "A", Batch(journals_deleted=["c1"]))
    assert await store.read_journal(sid, "c1") == []
    assert await store.deliveries(sid, "c1") == []
    cell = await store.get_cell(sid, "c1")
    assert cell is not None and cell.state == "closed"
    assert len(await store.read_journal(sid, "c2")) == 1  # other cells keep theirs
    # Close and delete in one batch.
    await store.write(sid, "A", Batch(closed=["c2"], journals_deleted=["c2"]))
    assert await store.read_journal(sid, "c2") == []


async def test_read_cells_gives_every_cell_with_its_journal_in_admission_order(
    backend: Backend,
) -> None:
    """``read_cells`` is ``list_cells`` with each cell's ``read_journal`` and ``deliveries``, in
    one read: in admission order (not the ids' order), only this session's cells."""
    store, sid = await opened(backend)
    other_sid = new_id()
    await store.open_session(other_sid, "A", limits={})
    await store.write(
        other_sid, "A", Batch(cells=[NewCell("c1", "pausable", {})], entries=[Entry("c1", "x", 0)])
    )
    await store.write(
        sid,
        "A",
        Batch(
            cells=[
                NewCell("c3", "continuing", {"code": "3"}, "k3", "fp3"),
                NewCell("c1", "pausable", {"code": "1"}),
                NewCell("c2", "continuing", {"code": "2"}),
            ],
            entries=[Entry("c1", "step", {"n": 1}), Entry("c3", "boot", None)],
            deliveries=[Delivery("c3", 2)],
        ),
    )
    await store.write(
        sid,
        "A",
        Batch(
            entries=[Entry("c1", "step", [1.5, "é"]), Entry("c2", "done", {})],
            deliveries=[Delivery("c1", 0), Delivery("c3", 4), Delivery("c1", 7)],
            closed=["c2"],
        ),
    )
    cells = await store.read_cells(sid)
    assert [c.record for c in cells] == await store.list_cells(sid)
    assert [c.record.cell_id for c in cells] == ["c3", "c1", "c2"]
    for cell in cells:
        assert cell.entries == await store.read_journal(sid, cell.record.cell_id)
        assert cell.deliveries == await store.deliveries(sid, cell.record.cell_id)
    assert [e.payload for e in cells[1].entries] == [{"n": 1}, [1.5, "é"]]
    assert cells[1].deliveries == [0, 7] and cells[0].deliveries == [2, 4]
    opened_cells = await store.read_cells(sid, state="open")
    assert [c.record.cell_id for c in opened_cells] == ["c3", "c1"]
    assert opened_cells == cells[:2]
    closed = await store.read_cells(sid, state="closed")
    assert [(c.record.cell_id, [e.kind for e in c.entries]) for c in closed] == [("c2", ["done"])]
    assert await store.read_cells(new_id()) == []
    reader = backend.make()  # another process reads the same
    assert await reader.read_cells(sid) == cells


async def test_delivered_event_boundaries(backend: Backend) -> None:
    store, sid = await opened(backend)
    await store.write(
        sid,
        "A",
        Batch(cells=[NewCell("c1", "continuing", {})], deliveries=[Delivery("c1", 3)]),
    )
    await store.write(sid, "A", Batch(deliveries=[Delivery("c1", 0), Delivery("c1", 5)]))
    assert await store.deliveries(sid, "c1") == [3, 0, 5]
    assert (await store.get_cell(sid, "c1")).delivered == 3  # type: ignore[union-attr]
    with pytest.raises(StoreError):
        await store.write(sid, "A", Batch(deliveries=[Delivery("c1", -1)]))
    with pytest.raises(StoreError, match="not recorded"):
        await store.write(sid, "A", Batch(deliveries=[Delivery("ghost", 1)]))


async def test_stored_values_commit_replaces_a_set_of_keys_atomically(backend: Backend) -> None:
    store, sid = await opened(backend)
    await store.write(sid, "A", Batch(values={"a": 1, "b": {"x": [1, 2]}, "c": "three"}))
    await store.write(sid, "A", Batch(values={"a": 10, "d": None}, values_deleted=["c"]))
    assert await store.get_values(sid) == {"a": 10, "b": {"x": [1, 2]}, "d": None}
    with pytest.raises(StoreError, match="both sets and deletes"):
        await store.write(sid, "A", Batch(values={"a": 1}, values_deleted=["a"]))
    # Values are per session.
    other_sid = new_id()
    await store.open_session(other_sid, "A", limits={})
    assert await store.get_values(other_sid) == {}


async def test_delete_cells_at_shutdown_keeps_values_and_keys(backend: Backend) -> None:
    store, sid = await opened(backend)
    await store.write(
        sid,
        "A",
        Batch(
            cells=[NewCell("c1", "continuing", {}, "k1", "fp1")],
            entries=[Entry("c1", "step", 1)],
            deliveries=[Delivery("c1", 1)],
            values={"v": 1},
        ),
    )
    other = backend.make()
    with pytest.raises(SessionBusy):
        await other.delete_cells(sid, "B")
    assert len(await store.list_cells(sid)) == 1
    await store.delete_cells(sid, "A")
    assert await store.list_cells(sid) == []
    assert await store.read_journal(sid, "c1") == []
    assert await store.deliveries(sid, "c1") == []
    assert await store.get_values(sid) == {"v": 1}
    assert await store.list_keys(sid) == [KeyRecord("k1", "fp1", "c1")]
    await store.delete_session(sid)
    assert await store.get_session(sid) is None
    assert await store.get_values(sid) == {}
    assert await store.list_keys(sid) == []


async def test_a_closed_store_refuses_work(backend: Backend) -> None:
    store, sid = await opened(backend)
    await store.close()
    await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store.get_session(sid)


async def test_closing_with_writes_in_flight_ends_each_cleanly(backend: Backend) -> None:
    """A write in flight when the store closes lands (or raises StoreError), never half."""
    store, sid = await opened(backend)
    await store.write(sid, "A", Batch(cells=[NewCell("c1", "continuing", {})]))
    big = Batch(entries=[Entry("c1", "step", {"i": i, "pad": "z" * 200}) for i in range(2000)])
    writes = [asyncio.create_task(store.write(sid, "A", big)) for _ in range(3)]
    await asyncio.sleep(0)
    await store.close()
    results = await asyncio.gather(*writes, return_exceptions=True)
    for result in results:
        assert isinstance(result, list | StoreError), repr(result)
    landed = sum(isinstance(r, list) for r in results)
    reader = backend.make()
    assert len(await reader.read_journal(sid, "c1")) == 2000 * landed
