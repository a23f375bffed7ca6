"""LeaseKeeper: a holder keeps its lease by renewing, and knows it lost it before another owner
can take over, against both stores."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from store_support import (  # the fixtures: imported for pytest to find them
    Backend,
    backend_fixture,  # noqa: F401
    new_id,
    postgres_server_fixture,  # noqa: F401
)

from codemode import SessionBusy, StoreError
from codemode.store import Batch, LeaseKeeper


class Partition:
    """A store seen through a link that can be cut: while ``cut``, renewals hang (``hang``) or
    fail as unreachable."""

    def __init__(self, store: Any, *, hang: bool = True) -> None:
        self.store = store
        self.cut = False
        self.hang = hang

    @property
    def lease_seconds(self) -> float:
        return float(self.store.lease_seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def renew_lease(self, session_id: str, owner: str) -> Any:
        if self.cut:
            if self.hang:
                await asyncio.Event().wait()
            raise StoreError("the store is unreachable (test partition)")
        return await self.store.renew_lease(session_id, owner)


async def test_a_kept_lease_outlives_lease_seconds_and_release_hands_it_over(
    backend: Backend,
) -> None:
    sid = new_id()
    keeper = LeaseKeeper(backend.make(lease_seconds=1.5), sid, "A")
    try:
        lease = await keeper.open(limits={})
        assert lease.owner == "A" and keeper.held()
        other = backend.make(lease_seconds=1.5)
        loop = asyncio.get_running_loop()
        end = loop.time() + 2.2  # longer than lease_seconds: the keeper must have renewed
        while loop.time() < end:
            with pytest.raises(SessionBusy):
                await other.open_session(sid, "B", limits={})
            assert keeper.held()
            await asyncio.sleep(0.1)
        keeper.check()
    finally:
        await keeper.stop(release=True)
    assert (await other.open_session(sid, "B", limits={})).lease.epoch == 2


@pytest.mark.parametrize("hang", [True, False], ids=["renewals-hang", "renewals-fail"])
async def test_a_partitioned_holder_knows_it_lost_its_lease_before_anyone_takes_over(
    backend: Backend, hang: bool
) -> None:
    sid = new_id()
    link = Partition(backend.make(lease_seconds=0.8), hang=hang)
    lost_at: list[float] = []
    keeper = LeaseKeeper(link, sid, "A", on_lost=lambda: lost_at.append(time.monotonic()))  # type: ignore[arg-type]
    backend.keepers.append(keeper)
    await keeper.open(limits={})
    await asyncio.sleep(0.3)
    link.cut = True  # renewals from now on hang or fail
    other = backend.make(lease_seconds=0.8)
    taken_at = None
    held_when_taken = None
    for _ in range(400):
        try:
            await other.open_session(sid, "B", limits={})
        except SessionBusy:
            await asyncio.sleep(0.01)
            continue
        taken_at = time.monotonic()
        held_when_taken = keeper.held()
        break
    assert taken_at is not None
    # The holder's own deadline had passed when the other owner got in: every check of the
    # holder refused its effects by then (its lost notice may follow on the next loop turn).
    assert held_when_taken is False
    await asyncio.wait_for(keeper.lost.wait(), 2.0)
    assert lost_at and lost_at[0] - taken_at < 1.0
    assert not keeper.held()
    with pytest.raises(SessionBusy):
        keeper.check()
    with pytest.raises(SessionBusy):
        await link.store.write(sid, "A", Batch(values={"k": 1}))
    await keeper.stop()


async def test_a_holder_whose_lease_was_taken_learns_it_at_its_next_renewal(
    backend: Backend,
) -> None:
    sid = new_id()
    store = backend.make(lease_seconds=3.0)
    keeper = LeaseKeeper(store, sid, "A")
    backend.keepers.append(keeper)
    await keeper.open(limits={})
    # Behind the keeper's back the lease changes hands (as after a takeover).
    await store.release_lease(sid, "A")
    other = backend.make(lease_seconds=3.0)
    await other.open_session(sid, "B", limits={})
    await asyncio.wait_for(keeper.lost.wait(), 2.5)  # the next renewal, well before the deadline
    assert not keeper.held()
    await keeper.stop(release=True)  # nothing to release: B keeps it
    assert (await other.get_lease(sid)).owner == "B"  # type: ignore[union-attr]
