"""``SqliteStore``: the embedded session store, one SQLite file shared by the processes of one
machine (docs/durability.md).

- WAL mode: readers never block the writer; a process killed mid-transaction leaves nothing of
  that transaction (SQLite rolls it back from the WAL on the next open).
- Every write transaction starts with ``BEGIN IMMEDIATE`` (it takes the file's write lock at once,
  so the lease check and the writes that depend on it see the same state) and waits up to
  ``busy_seconds`` for another process's transaction to end.
- ``synchronous=NORMAL``: a committed transaction survives the crash of any process; a power loss
  or an OS crash may lose the last transactions (never corrupt the file).
- Blocking I/O runs on one dedicated thread per store, which owns the connection; the event loop
  never waits on the disk. A small ``write`` runs on the caller's thread instead when it cannot
  wait: when the file's write lock is free at once (a second connection without a busy
  timeout), it commits there, which with ``synchronous=NORMAL`` appends to the WAL without
  flushing it (the checkpoints, which flush, run on the store's thread); otherwise it goes to the
  store's thread like any write. This saves a journal write the two thread hand-offs (and their
  scheduling delays on a loaded machine) that used to cost more than the transaction itself.
- The schema is versioned (table ``codemode_schema_version``) and migrated forward on open; a file
  from a newer codemode is refused with :class:`~codemode.StoreError`.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from codemode.errors import SessionBusy, StoreError
from codemode.store.base import (
    Batch,
    CellJournal,
    CellRecord,
    CellState,
    Entry,
    JournalEntry,
    KeyRecord,
    Lease,
    OpenedSession,
    SessionRecord,
    check_batch,
    dump_json,
    group_cells,
    load_json,
)

__all__ = ["SCHEMA_VERSION", "SqliteStore"]

T = TypeVar("T")

# Forward migrations: MIGRATIONS[n] takes the schema from version n to n + 1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE codemode_sessions (
            session_id TEXT PRIMARY KEY,
            limits TEXT NOT NULL,
            created REAL NOT NULL)""",
        """CREATE TABLE codemode_leases (
            session_id TEXT PRIMARY KEY,
            owner TEXT,
            expires_at REAL NOT NULL,
            epoch INTEGER NOT NULL)""",
        """CREATE TABLE codemode_cells (
            session_id TEXT NOT NULL,
            cell_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            request TEXT NOT NULL,
            idempotency_key TEXT,
            fingerprint TEXT,
            state TEXT NOT NULL,
            created REAL NOT NULL,
            entries INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (session_id, cell_id))""",
        """CREATE TABLE codemode_journal (
            session_id TEXT NOT NULL,
            cell_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            kind TEXT NOT NULL,
            payload TEXT NOT NULL,
            PRIMARY KEY (session_id, cell_id, seq)) WITHOUT ROWID""",
        """CREATE TABLE codemode_values (
            session_id TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (session_id, key)) WITHOUT ROWID""",
        """CREATE TABLE codemode_keys (
            session_id TEXT NOT NULL,
            key TEXT NOT NULL,
            fingerprint TEXT,
            cell_id TEXT NOT NULL,
            PRIMARY KEY (session_id, key))""",
    ),
    (
        "ALTER TABLE codemode_cells ADD COLUMN delivered INTEGER NOT NULL DEFAULT 0",
        """CREATE TABLE codemode_deliveries (
            session_id TEXT NOT NULL,
            cell_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            items INTEGER NOT NULL,
            PRIMARY KEY (session_id, cell_id, seq)) WITHOUT ROWID""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

_CELL_COLUMNS = (
    "cell_id, kind, request, idempotency_key, fingerprint, state, created, entries, delivered"
)


# Writes of at most this many rows and this much JSON may run on the caller's thread.
_INLINE_ROWS = 256
_INLINE_BYTES = 256 * 1024
# Commits on the caller's thread between two checkpoints on the store's thread.
_CHECKPOINT_EVERY = 200


# UPDATE ... RETURNING (SQLite 3.35): a step's write in two statements (_prepare_step).
_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)


# An engine step's write (_prepare_step): the lease check and the cell's counter, the entry.
_STEP_COUNTER = (
    "UPDATE codemode_cells SET entries = entries + 1 "
    "WHERE session_id = ? AND cell_id = ? AND state = 'open' AND EXISTS ("
    "SELECT 1 FROM codemode_leases WHERE session_id = ? AND owner = ? "
    "AND expires_at > ?) RETURNING entries"
)
_STEP_INSERT = (
    "INSERT INTO codemode_journal (session_id, cell_id, seq, kind, payload) VALUES (?, ?, ?, ?, ?)"
)


def _only_entries(batch: Batch) -> bool:
    return not (
        batch.cells
        or batch.deliveries
        or batch.closed
        or batch.values
        or batch.values_deleted
        or batch.keys_deleted
        or batch.journals_deleted
    )


def _busy(exc: sqlite3.OperationalError) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))


def newer_schema_text(where: str, found: int, supported: int) -> str:
    return (
        f"the session store {where} has schema version {found}, newer than this codemode "
        f"supports ({supported}): upgrade codemode to use it"
    )


def _cell(row: tuple[Any, ...]) -> CellRecord:
    return CellRecord(
        cell_id=row[0],
        kind=row[1],
        request=load_json(row[2]),
        idempotency_key=row[3],
        fingerprint=row[4],
        state=row[5],
        created=float(row[6]),
        entries=int(row[7]),
        delivered=int(row[8]),
    )


class SqliteStore:
    """The embedded session store: one SQLite file, safe for several processes of one machine.

    The file is created on first use. ``lease_seconds`` is how
    long a session's lease lasts after it was granted or renewed (docs/durability.md).
    """

    busy_seconds = 30.0
    """How long a write waits for another process's transaction before raising StoreError."""

    def __init__(self, path: str | os.PathLike[str], *, lease_seconds: float = 10.0) -> None:
        if not lease_seconds > 0:
            raise ValueError("lease_seconds must be positive")
        self._path = Path(path)
        self._lease_seconds = float(lease_seconds)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="codemode-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._close_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: collections.deque[
            tuple[Callable[[sqlite3.Connection, float], Any], concurrent.futures.Future[Any]]
        ] = collections.deque()
        # The caller-thread path of small writes (see the module's docstring): a connection
        # made on the store's thread, used by one caller at a time, never waiting for a lock.
        self._inline: sqlite3.Connection | None = None
        self._inline_lock = threading.Lock()
        self._grouped_writes = 0  # writes queued for or running on the store's thread
        self._since_checkpoint = 0

    @property
    def lease_seconds(self) -> float:
        return self._lease_seconds

    @property
    def path(self) -> Path:
        return self._path

    def __repr__(self) -> str:
        return f"SqliteStore({str(self._path)!r}, lease_seconds={self._lease_seconds})"

    # ----------------------------------------------------------------- the store's own thread

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StoreError(f"the SQLite store {self._path} is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            conn = self._connect()
            try:
                return fn(conn)
            finally:
                if conn.in_transaction:
                    conn.rollback()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        conn = sqlite3.connect(
            self._path, timeout=self.busy_seconds, isolation_level=None, check_same_thread=True
        )
        try:
            self._wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            self._migrate(conn, SCHEMA_VERSION)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        try:
            self._inline = self._inline_connection()
        except sqlite3.Error:  # pragma: no cover - then every write takes the thread
            self._inline = None
        return conn

    def _inline_connection(self) -> sqlite3.Connection:
        """The connection of the caller-thread path: no busy timeout (a lock held elsewhere
        sends the write to the store's thread) and no automatic checkpoint (a checkpoint
        flushes the disk: it runs on the store's thread, see :meth:`_checkpoint`)."""
        conn = sqlite3.connect(self._path, timeout=0, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA wal_autocheckpoint=0")
        except BaseException:
            conn.close()
            raise
        return conn

    def _wal(self, conn: sqlite3.Connection) -> None:
        """Switch the file to WAL mode. Processes creating a file together can find it busy
        without SQLite's busy handler being called (a journal-mode change takes an exclusive
        lock): retry within ``busy_seconds``."""
        deadline = time.monotonic() + self.busy_seconds
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                name = getattr(exc, "sqlite_errorname", "") or ""
                if not name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
                    raise
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _migrate(self, conn: sqlite3.Connection, target: int) -> None:
        """Bring the schema to ``target`` (forward only); refuse a newer schema."""
        found = self._version(conn)
        if found == target:
            return
        if found > target:
            raise StoreError(newer_schema_text(f"{self._path}", found, target))
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS codemode_schema_version (version INTEGER NOT NULL)"
            )
            found = self._version(conn)  # another process may have migrated meanwhile
            if found > target:
                raise StoreError(newer_schema_text(f"{self._path}", found, target))
            for version in range(found, target):
                for statement in MIGRATIONS[version]:
                    conn.execute(statement)
            conn.execute("DELETE FROM codemode_schema_version")
            conn.execute("INSERT INTO codemode_schema_version (version) VALUES (?)", (target,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _version(conn: sqlite3.Connection) -> int:
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'codemode_schema_version'"
        ).fetchone()
        if exists is None:
            return 0
        row = conn.execute("SELECT max(version) FROM codemode_schema_version").fetchone()
        return 0 if row is None or row[0] is None else int(row[0])

    def _error(self, exc: sqlite3.Error) -> StoreError:
        name = getattr(exc, "sqlite_errorname", "") or ""
        where = f"the SQLite store {self._path}"
        if name.startswith("SQLITE_READONLY"):
            return StoreError(f"{where} is read-only: {exc}")
        if name == "SQLITE_FULL" or "disk is full" in str(exc):
            return StoreError(f"{where} is full (no space left for the database): {exc}")
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return StoreError(
                f"{where} stayed locked by another process for {self.busy_seconds:g} s: {exc}"
            )
        if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
            return StoreError(f"{where} is corrupt or not a SQLite database: {exc}")
        if name.startswith("SQLITE_CANTOPEN"):
            if self._path.exists() and not os.access(self._path.parent, os.W_OK):
                return StoreError(f"{where} is read-only (its directory is not writable): {exc}")
            return StoreError(f"{where} cannot be opened: {exc}")
        if name.startswith("SQLITE_IOERR"):
            return StoreError(f"{where} failed with an I/O error (is the disk full?): {exc}")
        return StoreError(f"{where} failed: {exc}")

    def _try_inline(self, body: Callable[[sqlite3.Connection, float], T]) -> tuple[bool, T | None]:
        """Run ``body(conn, now)`` as one transaction on the caller's thread if that needs no
        waiting: no write of this store is queued for its thread (writes keep their order) and
        the file's write lock is free at once. ``(False, None)``: not run, nothing written
        (take the store's thread); ``(True, result)``: committed. Raises as the thread's path
        does (StoreError, SessionBusy), having written nothing."""
        conn = self._inline
        if conn is None or self._grouped_writes or self._closed:
            return False, None
        if not self._inline_lock.acquire(blocking=False):
            return False, None
        try:
            if self._inline is not conn:  # closed meanwhile
                return False, None
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if _busy(exc):
                    return False, None
                raise self._error(exc) from exc
            try:
                result = body(conn, time.time())
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError) and _busy(exc):
                    return False, None
                if isinstance(exc, sqlite3.Error):
                    raise self._error(exc) from exc
                raise
        finally:
            self._inline_lock.release()
        self._since_checkpoint += 1
        if self._since_checkpoint >= _CHECKPOINT_EVERY:
            self._since_checkpoint = 0
            with contextlib.suppress(RuntimeError):  # the executor is shut down: closing
                self._executor.submit(self._checkpoint)
        return True, result

    def _checkpoint(self) -> None:
        """Copy the WAL's committed pages into the database (on the store's thread; without
        waiting for readers or writers), so the caller-thread path never flushes the disk."""
        try:
            if self._conn is not None:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error:  # pragma: no cover - the next checkpoint tries again
            pass

    async def _grouped(self, body: Callable[[sqlite3.Connection, float], T]) -> T:
        """Run ``body(conn, now)`` as one write of a group commit: the store's thread runs every
        write queued meanwhile in one transaction, each in a savepoint of its own (a write that
        raises is rolled back alone and raises to its caller), and answers them all after the
        commit. Writes are applied in the order they were queued."""
        if self._closed:
            raise StoreError(f"the SQLite store {self._path} is closed")
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._queue_lock:
            self._queue.append((body, future))
        loop = asyncio.get_running_loop()
        self._grouped_writes += 1
        try:
            loop.run_in_executor(self._executor, self._flush)
            result: T = await asyncio.wrap_future(future)
        finally:
            self._grouped_writes -= 1
        return result

    def _flush(self) -> None:
        with self._queue_lock:
            jobs = list(self._queue)
            self._queue.clear()
        if not jobs:
            return
        pending = {future for _, future in jobs if future.set_running_or_notify_cancel()}
        outcomes: list[tuple[concurrent.futures.Future[Any], Any, BaseException | None]] = []
        try:
            conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")
            try:
                now = time.time()
                for body, future in jobs:
                    if future not in pending:
                        continue
                    conn.execute("SAVEPOINT codemode_write")
                    try:
                        result = body(conn, now)
                    except Exception as exc:
                        if not conn.in_transaction:
                            raise  # SQLite rolled the whole transaction back: all fail
                        conn.execute("ROLLBACK TO codemode_write")
                        conn.execute("RELEASE codemode_write")
                        if isinstance(exc, sqlite3.Error):
                            exc = self._error(exc)
                        outcomes.append((future, None, exc))
                    else:
                        conn.execute("RELEASE codemode_write")
                        outcomes.append((future, result, None))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except BaseException as exc:
            error = self._error(exc) if isinstance(exc, sqlite3.Error) else exc
            for future in pending:
                future.set_exception(error)
            return
        for future, result, failure in outcomes:
            if failure is not None:
                future.set_exception(failure)
            else:
                future.set_result(result)

    @staticmethod
    def _transaction(conn: sqlite3.Connection, body: Callable[[float], T]) -> T:
        """Run ``body(now)`` in a write transaction; ``now`` is read once the lock is held."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = body(time.time())
            conn.execute("COMMIT")
            return result
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _check_lease(conn: sqlite3.Connection, session_id: str, owner: str, now: float) -> None:
        row = conn.execute(
            "SELECT owner, expires_at FROM codemode_leases WHERE session_id = ?", (session_id,)
        ).fetchone()
        if row is None or row[0] != owner or row[1] <= now:
            raise SessionBusy(session_id)

    # ------------------------------------------------------------------------------ leases

    async def open_session(self, session_id: str, owner: str, *, limits: Any) -> OpenedSession:
        limits_text = dump_json(limits, "the session's limits")
        seconds = self._lease_seconds

        def run(conn: sqlite3.Connection) -> OpenedSession:
            return self._transaction(conn, lambda now: body(conn, now))

        def body(conn: sqlite3.Connection, now: float) -> OpenedSession:
            created = (
                conn.execute(
                    "INSERT OR IGNORE INTO codemode_sessions (session_id, limits, created) "
                    "VALUES (?, ?, ?)",
                    (session_id, limits_text, now),
                ).rowcount
                == 1
            )
            conn.execute(
                "INSERT OR IGNORE INTO codemode_leases (session_id, owner, expires_at, epoch) "
                "VALUES (?, NULL, 0, 0)",
                (session_id,),
            )
            holder, expires_at, epoch = conn.execute(
                "SELECT owner, expires_at, epoch FROM codemode_leases WHERE session_id = ?",
                (session_id,),
            ).fetchone()
            taken_over = False
            if holder != owner:
                if holder is not None and expires_at > now:
                    raise SessionBusy(session_id)
                taken_over = holder is not None
                epoch += 1
            conn.execute(
                "UPDATE codemode_leases SET owner = ?, expires_at = ?, epoch = ? "
                "WHERE session_id = ?",
                (owner, now + seconds, epoch, session_id),
            )
            stored_limits, created_at = conn.execute(
                "SELECT limits, created FROM codemode_sessions WHERE session_id = ?",
                (session_id,),
            ).fetchone()
            return OpenedSession(
                session=SessionRecord(session_id, load_json(stored_limits), float(created_at)),
                lease=Lease(session_id, owner, int(epoch), seconds, taken_over),
                created=created,
            )

        return await self._run(run)

    async def renew_lease(self, session_id: str, owner: str) -> Lease:
        seconds = self._lease_seconds

        def run(conn: sqlite3.Connection) -> Lease:
            def body(now: float) -> Lease:
                row = conn.execute(
                    "SELECT owner, epoch FROM codemode_leases WHERE session_id = ?", (session_id,)
                ).fetchone()
                if row is None or row[0] != owner:
                    raise SessionBusy(session_id)
                conn.execute(
                    "UPDATE codemode_leases SET expires_at = ? WHERE session_id = ?",
                    (now + seconds, session_id),
                )
                return Lease(session_id, owner, int(row[1]), seconds)

            return self._transaction(conn, body)

        return await self._run(run)

    async def release_lease(self, session_id: str, owner: str) -> None:
        def run(conn: sqlite3.Connection) -> None:
            def body(now: float) -> None:
                conn.execute(
                    "UPDATE codemode_leases SET owner = NULL, expires_at = 0 "
                    "WHERE session_id = ? AND owner = ?",
                    (session_id, owner),
                )

            self._transaction(conn, body)

        await self._run(run)

    async def get_lease(self, session_id: str) -> Lease | None:
        seconds = self._lease_seconds

        def run(conn: sqlite3.Connection) -> Lease | None:
            row = conn.execute(
                "SELECT owner, expires_at, epoch FROM codemode_leases WHERE session_id = ?",
                (session_id,),
            ).fetchone()
            if row is None or row[0] is None or row[1] <= time.time():
                return None
            return Lease(session_id, row[0], int(row[2]), seconds)

        return await self._run(run)

    # ------------------------------------------------------------------------------ writes

    async def write(self, session_id: str, owner: str, batch: Batch) -> list[int]:
        run, small = self._prepare_write(session_id, owner, batch)
        if small:
            done, result = self._try_inline(run)
            if done:
                assert result is not None
                return result
        return await self._grouped(run)

    def write_now(self, session_id: str, owner: str, batch: Batch) -> list[int] | None:
        """:meth:`write` on the caller's thread, if that needs no waiting (see the module's
        docstring): the entries' sequence numbers once committed, or None when nothing was
        written (then call :meth:`write`). Raises as :meth:`write` does."""
        run, small = self._prepare_write(session_id, owner, batch)
        if not small:
            return None
        done, result = self._try_inline(run)
        return result if done else None

    def write_entry_now(self, session_id: str, owner: str, entry: Entry) -> int | None:
        """:meth:`write_now` of a batch of this one entry (an engine step's, the journal's
        most frequent write), without building the batch: its sequence number once committed,
        or None when nothing was written (then call :meth:`write`)."""
        if not _RETURNING:
            seqs = self.write_now(session_id, owner, Batch(entries=(entry,)))
            return None if seqs is None else seqs[0]
        run, small = self._prepare_step(session_id, owner, entry)
        if not small:
            return None
        done, result = self._try_inline(run)
        return result[0] if done and result is not None else None

    def _prepare_write(
        self, session_id: str, owner: str, batch: Batch
    ) -> tuple[Callable[[sqlite3.Connection, float], list[int]], bool]:
        """The transaction's body of a write, and whether it is small enough for the caller's
        thread."""
        check_batch(batch)
        if _RETURNING and len(batch.entries) == 1 and _only_entries(batch):
            return self._prepare_step(session_id, owner, batch.entries[0])
        # Serialize JSON on the caller's thread: a value JSON cannot hold fails before any I/O.
        cells = [
            (
                session_id,
                c.cell_id,
                c.kind,
                dump_json(c.request, f"the request of cell {c.cell_id}"),
                c.idempotency_key,
                c.fingerprint,
            )
            for c in batch.cells
        ]
        entries = [
            (e.cell_id, e.kind, dump_json(e.payload, f"a journal entry of cell {e.cell_id}"))
            for e in batch.entries
        ]
        values = [
            (session_id, key, dump_json(value, f"stored value {key}"))
            for key, value in batch.values.items()
        ]

        def run(conn: sqlite3.Connection, now: float) -> list[int]:
            def body(now: float) -> list[int]:
                self._check_lease(conn, session_id, owner, now)
                for row, cell in zip(cells, batch.cells, strict=True):
                    try:
                        conn.execute(
                            "INSERT INTO codemode_cells (session_id, cell_id, kind, request, "
                            "idempotency_key, fingerprint, state, created) "
                            "VALUES (?, ?, ?, ?, ?, ?, 'open', ?)",
                            (*row, now),
                        )
                    except sqlite3.IntegrityError:
                        raise StoreError(
                            f"cell {cell.cell_id} is already recorded in session {session_id}"
                        ) from None
                    if cell.idempotency_key is not None:
                        try:
                            conn.execute(
                                "INSERT INTO codemode_keys (session_id, key, fingerprint, "
                                "cell_id) VALUES (?, ?, ?, ?)",
                                (session_id, cell.idempotency_key, cell.fingerprint, cell.cell_id),
                            )
                        except sqlite3.IntegrityError:
                            raise StoreError(
                                f"idempotency key {cell.idempotency_key} is already recorded "
                                f"in session {session_id}"
                            ) from None
                seqs = self._append(conn, session_id, entries)
                self._deliver(conn, session_id, batch)
                for cell_id in batch.closed:
                    if (
                        conn.execute(
                            "UPDATE codemode_cells SET state = 'closed' "
                            "WHERE session_id = ? AND cell_id = ?",
                            (session_id, cell_id),
                        ).rowcount
                        != 1
                    ):
                        raise StoreError(f"cell {cell_id} is not recorded in session {session_id}")
                if values:
                    conn.executemany(
                        "INSERT INTO codemode_values (session_id, key, value) VALUES (?, ?, ?) "
                        "ON CONFLICT (session_id, key) DO UPDATE SET value = excluded.value",
                        values,
                    )
                if batch.values_deleted:
                    conn.executemany(
                        "DELETE FROM codemode_values WHERE session_id = ? AND key = ?",
                        [(session_id, key) for key in batch.values_deleted],
                    )
                if batch.keys_deleted:
                    conn.executemany(
                        "DELETE FROM codemode_keys WHERE session_id = ? AND key = ?",
                        [(session_id, key) for key in batch.keys_deleted],
                    )
                for cell_id in batch.journals_deleted:
                    state = self._state(conn, session_id, cell_id)
                    if state != "closed":
                        raise StoreError(
                            f"the journal of cell {cell_id} cannot be deleted: "
                            f"the cell is {state or 'not recorded'}"
                        )
                    conn.execute(
                        "DELETE FROM codemode_journal WHERE session_id = ? AND cell_id = ?",
                        (session_id, cell_id),
                    )
                    conn.execute(
                        "DELETE FROM codemode_deliveries WHERE session_id = ? AND cell_id = ?",
                        (session_id, cell_id),
                    )
                return seqs

            return body(now)

        small = len(entries) + len(cells) + len(values) <= _INLINE_ROWS and (
            sum(len(e[2]) for e in entries) <= _INLINE_BYTES
        )
        return run, small

    def _prepare_step(
        self, session_id: str, owner: str, entry: Entry
    ) -> tuple[Callable[[sqlite3.Connection, float], list[int]], bool]:
        """The body of a batch of one journal entry (an engine step's), in two statements: the
        lease check and the cell's counter in one UPDATE, then the entry; and whether it is
        small enough for the caller's thread. Its errors are those of the general body (the
        lease first, then the cell)."""
        cell_id, kind = entry.cell_id, entry.kind
        payload = dump_json(entry.payload, f"a journal entry of cell {cell_id}")

        def run(conn: sqlite3.Connection, now: float) -> list[int]:
            rows = conn.execute(
                _STEP_COUNTER, (session_id, cell_id, session_id, owner, now)
            ).fetchall()
            if not rows:  # which check failed: the general body's checks raise it
                self._check_lease(conn, session_id, owner, now)
                self._counters(conn, session_id, [cell_id], "entries")
                raise StoreError(f"cell {cell_id} is not recorded in session {session_id}")
            seq = int(rows[0][0])
            conn.execute(_STEP_INSERT, (session_id, cell_id, seq, kind, payload))
            return [seq]

        return run, len(payload) <= _INLINE_BYTES

    @staticmethod
    def _state(conn: sqlite3.Connection, session_id: str, cell_id: str) -> str | None:
        row = conn.execute(
            "SELECT state FROM codemode_cells WHERE session_id = ? AND cell_id = ?",
            (session_id, cell_id),
        ).fetchone()
        return None if row is None else str(row[0])

    def _counters(
        self, conn: sqlite3.Connection, session_id: str, cell_ids: list[str], column: str
    ) -> dict[str, int]:
        counters: dict[str, int] = {}
        for cell_id in cell_ids:
            row = conn.execute(
                f"SELECT state, {column} FROM codemode_cells WHERE session_id = ? AND cell_id = ?",
                (session_id, cell_id),
            ).fetchone()
            if row is None:
                raise StoreError(f"cell {cell_id} is not recorded in session {session_id}")
            if row[0] != "open":
                raise StoreError(f"cell {cell_id} of session {session_id} is closed")
            counters[cell_id] = int(row[1])
        return counters

    def _append(
        self, conn: sqlite3.Connection, session_id: str, entries: list[tuple[str, str, str]]
    ) -> list[int]:
        if not entries:
            return []
        counters = self._counters(
            conn, session_id, list(dict.fromkeys(e[0] for e in entries)), "entries"
        )
        seqs: list[int] = []
        rows: list[tuple[str, str, int, str, str]] = []
        for cell_id, kind, payload in entries:
            counters[cell_id] += 1
            seqs.append(counters[cell_id])
            rows.append((session_id, cell_id, counters[cell_id], kind, payload))
        insert = (
            "INSERT INTO codemode_journal (session_id, cell_id, seq, kind, payload) "
            "VALUES (?, ?, ?, ?, ?)"
        )
        update = "UPDATE codemode_cells SET entries = ? WHERE session_id = ? AND cell_id = ?"
        if len(rows) == 1:  # one engine step's entry: the common case
            conn.execute(insert, rows[0])
        else:
            conn.executemany(insert, rows)
        if len(counters) == 1:
            ((cell_id, n),) = counters.items()
            conn.execute(update, (n, session_id, cell_id))
        else:
            conn.executemany(update, [(n, session_id, cell_id) for cell_id, n in counters.items()])
        return seqs

    def _deliver(self, conn: sqlite3.Connection, session_id: str, batch: Batch) -> None:
        if not batch.deliveries:
            return
        counters = self._counters(
            conn, session_id, list(dict.fromkeys(d.cell_id for d in batch.deliveries)), "delivered"
        )
        rows: list[tuple[str, str, int, int]] = []
        for delivery in batch.deliveries:
            counters[delivery.cell_id] += 1
            rows.append((session_id, delivery.cell_id, counters[delivery.cell_id], delivery.items))
        conn.executemany(
            "INSERT INTO codemode_deliveries (session_id, cell_id, seq, items) VALUES (?, ?, ?, ?)",
            rows,
        )
        conn.executemany(
            "UPDATE codemode_cells SET delivered = ? WHERE session_id = ? AND cell_id = ?",
            [(n, session_id, cell_id) for cell_id, n in counters.items()],
        )

    async def delete_cells(self, session_id: str, owner: str) -> None:
        def run(conn: sqlite3.Connection) -> None:
            def body(now: float) -> None:
                self._check_lease(conn, session_id, owner, now)
                for table in ("codemode_journal", "codemode_deliveries", "codemode_cells"):
                    conn.execute(f"DELETE FROM {table} WHERE session_id = ?", (session_id,))

            self._transaction(conn, body)

        await self._run(run)

    async def delete_session(self, session_id: str) -> None:
        def run(conn: sqlite3.Connection) -> None:
            def body(now: float) -> None:
                for table in (
                    "codemode_journal",
                    "codemode_deliveries",
                    "codemode_cells",
                    "codemode_values",
                    "codemode_keys",
                    "codemode_leases",
                    "codemode_sessions",
                ):
                    conn.execute(f"DELETE FROM {table} WHERE session_id = ?", (session_id,))

            self._transaction(conn, body)

        await self._run(run)

    # ------------------------------------------------------------------------------- reads

    async def get_session(self, session_id: str) -> SessionRecord | None:
        def run(conn: sqlite3.Connection) -> SessionRecord | None:
            row = conn.execute(
                "SELECT limits, created FROM codemode_sessions WHERE session_id = ?",
                (session_id,),
            ).fetchone()
            return None if row is None else SessionRecord(session_id, load_json(row[0]), row[1])

        return await self._run(run)

    async def list_cells(
        self, session_id: str, *, state: CellState | None = None
    ) -> list[CellRecord]:
        return await self._run(lambda conn: self._cells(conn, session_id, state))

    @staticmethod
    def _cells(
        conn: sqlite3.Connection, session_id: str, state: CellState | None
    ) -> list[CellRecord]:
        if state is None:
            rows = conn.execute(
                f"SELECT {_CELL_COLUMNS} FROM codemode_cells WHERE session_id = ? ORDER BY rowid",
                (session_id,),
            ).fetchall()
        else:
            rows = conn.execute(
                f"SELECT {_CELL_COLUMNS} FROM codemode_cells "
                "WHERE session_id = ? AND state = ? ORDER BY rowid",
                (session_id, state),
            ).fetchall()
        return [_cell(row) for row in rows]

    async def get_cell(self, session_id: str, cell_id: str) -> CellRecord | None:
        def run(conn: sqlite3.Connection) -> CellRecord | None:
            row = conn.execute(
                f"SELECT {_CELL_COLUMNS} FROM codemode_cells WHERE session_id = ? AND cell_id = ?",
                (session_id, cell_id),
            ).fetchone()
            return None if row is None else _cell(row)

        return await self._run(run)

    async def read_journal(
        self, session_id: str, cell_id: str, *, after: int = 0
    ) -> list[JournalEntry]:
        def run(conn: sqlite3.Connection) -> list[JournalEntry]:
            rows = conn.execute(
                "SELECT seq, kind, payload FROM codemode_journal "
                "WHERE session_id = ? AND cell_id = ? AND seq > ? ORDER BY seq",
                (session_id, cell_id, after),
            ).fetchall()
            return [JournalEntry(cell_id, int(s), k, load_json(p)) for s, k, p in rows]

        return await self._run(run)

    async def deliveries(self, session_id: str, cell_id: str) -> list[int]:
        def run(conn: sqlite3.Connection) -> list[int]:
            rows = conn.execute(
                "SELECT items FROM codemode_deliveries WHERE session_id = ? AND cell_id = ? "
                "ORDER BY seq",
                (session_id, cell_id),
            ).fetchall()
            return [int(row[0]) for row in rows]

        return await self._run(run)

    async def read_cells(
        self, session_id: str, *, state: CellState | None = None
    ) -> list[CellJournal]:
        def run(conn: sqlite3.Connection) -> list[CellJournal]:
            conn.execute("BEGIN")  # one read transaction: one snapshot of the file
            records = self._cells(conn, session_id, state)
            entries = conn.execute(
                "SELECT cell_id, seq, kind, payload FROM codemode_journal "
                "WHERE session_id = ? ORDER BY cell_id, seq",
                (session_id,),
            ).fetchall()
            deliveries = conn.execute(
                "SELECT cell_id, items FROM codemode_deliveries WHERE session_id = ? "
                "ORDER BY cell_id, seq",
                (session_id,),
            ).fetchall()
            conn.execute("COMMIT")
            return group_cells(records, entries, deliveries)

        return await self._run(run)

    async def get_values(self, session_id: str) -> dict[str, Any]:
        def run(conn: sqlite3.Connection) -> dict[str, Any]:
            rows = conn.execute(
                "SELECT key, value FROM codemode_values WHERE session_id = ?", (session_id,)
            ).fetchall()
            return {key: load_json(value) for key, value in rows}

        return await self._run(run)

    async def list_keys(self, session_id: str) -> list[KeyRecord]:
        def run(conn: sqlite3.Connection) -> list[KeyRecord]:
            rows = conn.execute(
                "SELECT key, fingerprint, cell_id FROM codemode_keys WHERE session_id = ? "
                "ORDER BY rowid",
                (session_id,),
            ).fetchall()
            return [KeyRecord(k, f, c) for k, f, c in rows]

        return await self._run(run)

    # ------------------------------------------------------------------------------ closing

    async def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close_connection)
        self._executor.shutdown(wait=False)

    def _close_connection(self) -> None:
        with self._inline_lock:
            if self._inline is not None:
                self._inline.close()
                self._inline = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
