"""``LeaseKeeper``: holds a session's lease for a runtime and says when it is lost.

The store times a lease by its own clock; the holder cannot read that clock, so it keeps a
conservative local deadline: ``lease_seconds`` after it *sent* its last successful renewal (or
open), by its monotonic clock. The store granted that renewal no earlier than it was sent, so the
local deadline passes no later than the store's expiry (clocks running at the same rate): a holder
that stops at its local deadline has stopped before any other owner can take over.

The keeper renews every ``lease_seconds / 3``. It declares the lease lost (``lost`` is set,
``on_lost`` is called once) when a renewal raises :class:`~codemode.SessionBusy` (another owner
took over), or when the local deadline passes without a successful renewal (the store is
unreachable, or renewals are blocked: the holder may be partitioned away). Failed renewals that
raise :class:`~codemode.StoreError` are retried until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from codemode.errors import SessionBusy, StoreError
from codemode.store.base import Lease, SessionStore

__all__ = ["LeaseKeeper"]

logger = logging.getLogger(__name__)


class LeaseKeeper:
    """Keep ``owner``'s lease on ``session_id`` while the holder runs.

    Call :meth:`held` (or :meth:`check`) before every effect that needs the lease; :meth:`stop`
    ends the renewals and, with ``release=True``, gives the lease up.
    """

    def __init__(
        self,
        store: SessionStore,
        session_id: str,
        owner: str,
        *,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.session_id = session_id
        self.owner = owner
        self.lost = asyncio.Event()
        self._on_lost = on_lost
        self._seconds = store.lease_seconds
        self._deadline = 0.0
        self._task: asyncio.Task[None] | None = None
        # Set by stop()/cancel(): the renew loop ends at its next check even when the task's
        # cancellation was swallowed (asyncio.wait_for on Python 3.11 drops a cancellation that
        # arrives after the awaited renewal completed and before the task resumed).
        self._stopping = False
        self.lease: Lease | None = None

    def granted(self, sent_at: float, lease: Lease) -> None:
        """Record a lease the store granted to a request sent at ``sent_at``
        (``time.monotonic()``), e.g. by ``open_session``."""
        self.lease = lease
        self._deadline = max(self._deadline, sent_at + lease.seconds)

    async def open(self, *, limits: object) -> Lease:
        """Open the session through the store (``SessionBusy`` if another owner holds it), then
        keep its lease."""
        sent = time.monotonic()
        opened = await self.store.open_session(self.session_id, self.owner, limits=limits)
        self.granted(sent, opened.lease)
        self.start()
        return opened.lease

    def start(self) -> None:
        """Start renewing (after :meth:`granted`)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._renew_loop())

    def held(self) -> bool:
        """True while the lease is certainly still held: not lost, before the local deadline."""
        return not self.lost.is_set() and time.monotonic() < self._deadline

    def remaining(self) -> float:
        """Seconds left before the local deadline (0 when lost)."""
        return max(0.0, self._deadline - time.monotonic()) if not self.lost.is_set() else 0.0

    def check(self) -> None:
        """Raise ``SessionBusy`` unless :meth:`held`; declares the lease lost when its deadline
        has passed."""
        if not self.held():
            self._declare_lost()
            raise SessionBusy(self.session_id)

    def cancel(self) -> None:
        """Stop renewing at once, without releasing: the lease then expires (for a holder that
        is going away without an event loop turn to spare)."""
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()

    async def stop(self, *, release: bool = False) -> None:
        """Stop renewing; with ``release``, give the lease up (if still held)."""
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if release and not self.lost.is_set():
            await self.store.release_lease(self.session_id, self.owner)
            self._deadline = 0.0

    def _declare_lost(self) -> None:
        if self.lost.is_set():
            return
        self.lost.set()
        self._deadline = 0.0
        if self._on_lost is not None:
            try:
                self._on_lost()
            except Exception:
                logger.exception("on_lost callback of session %s failed", self.session_id)

    async def _renew_loop(self) -> None:
        period = self._seconds / 3
        while not self.lost.is_set() and not self._stopping:
            # Renew a period after the last grant (two periods before its deadline).
            await asyncio.sleep(max(0.0, self._deadline - 2 * period - time.monotonic()))
            if self._stopping:
                return
            sent = time.monotonic()
            if sent >= self._deadline:
                # The last renewal failed or timed out just short of the deadline, or this loop
                # did not run in time (a stalled event loop or a starved process).
                logger.warning(
                    "lease of session %s lost: no renewal succeeded before its deadline",
                    self.session_id,
                )
                self._declare_lost()
                return
            try:
                # A renewal still unanswered at the deadline does not keep the lease.
                lease = await asyncio.wait_for(
                    self.store.renew_lease(self.session_id, self.owner), self._deadline - sent
                )
            except SessionBusy:
                self._declare_lost()
                return
            except (StoreError, TimeoutError) as exc:
                if time.monotonic() >= self._deadline:
                    logger.warning("lease of session %s lost: %s", self.session_id, exc)
                    self._declare_lost()
                    return
                await asyncio.sleep(min(0.05, max(0.0, self._deadline - time.monotonic())))
                continue
            self.granted(sent, lease)
