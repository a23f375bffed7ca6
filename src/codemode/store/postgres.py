"""``PostgresStore``: the session store shared by the hosts of a cluster (docs/durability.md).

The same semantics as :class:`~codemode.SqliteStore`, on PostgreSQL through psycopg 3 (async; the
``postgres`` extra: ``pip install codemode[postgres]``):

- Leases are rows of ``codemode_leases`` timed by the server's clock (``clock_timestamp()``), so
  the hosts' clocks do not matter. Taking a lease locks its row (``FOR UPDATE``); every write
  first locks the same row ``FOR SHARE`` and checks the writer still holds it unexpired, so a
  takeover and a write of the old holder are ordered: the write lands before the takeover, or it
  is refused with :class:`~codemode.SessionBusy`.
- A batch is one transaction: a client killed mid-transaction leaves nothing of it.
- The schema is versioned (``codemode_schema_version``) and migrated forward on first use, under
  a transaction-level advisory lock so hosts starting together migrate once; a database from a
  newer codemode is refused with :class:`~codemode.StoreError`.
- One connection per store, used by one operation at a time; a connection that failed is
  replaced on the next operation.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from codemode.errors import SessionBusy, StoreError
from codemode.store.base import (
    Batch,
    CellJournal,
    CellRecord,
    CellState,
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
from codemode.store.sqlite import newer_schema_text

if TYPE_CHECKING:
    import psycopg

__all__ = ["SCHEMA_VERSION", "PostgresStore"]

T = TypeVar("T")

# Forward migrations: MIGRATIONS[n] takes the schema from version n to n + 1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE codemode_sessions (
            session_id text PRIMARY KEY,
            limits text NOT NULL,
            created double precision NOT NULL)""",
        """CREATE TABLE codemode_leases (
            session_id text PRIMARY KEY,
            owner text,
            expires_at timestamptz NOT NULL,
            epoch bigint NOT NULL)""",
        """CREATE TABLE codemode_cells (
            session_id text NOT NULL,
            cell_id text NOT NULL,
            ordinal bigserial,
            kind text NOT NULL,
            request text NOT NULL,
            idempotency_key text,
            fingerprint text,
            state text NOT NULL,
            created double precision NOT NULL,
            entries bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (session_id, cell_id))""",
        """CREATE TABLE codemode_journal (
            session_id text NOT NULL,
            cell_id text NOT NULL,
            seq bigint NOT NULL,
            kind text NOT NULL,
            payload text NOT NULL,
            PRIMARY KEY (session_id, cell_id, seq))""",
        """CREATE TABLE codemode_values (
            session_id text NOT NULL,
            key text NOT NULL,
            value text NOT NULL,
            PRIMARY KEY (session_id, key))""",
        """CREATE TABLE codemode_keys (
            session_id text NOT NULL,
            key text NOT NULL,
            fingerprint text,
            cell_id text NOT NULL,
            ordinal bigserial,
            PRIMARY KEY (session_id, key))""",
    ),
    (
        "ALTER TABLE codemode_cells ADD COLUMN delivered bigint NOT NULL DEFAULT 0",
        """CREATE TABLE codemode_deliveries (
            session_id text NOT NULL,
            cell_id text NOT NULL,
            seq bigint NOT NULL,
            items bigint NOT NULL,
            PRIMARY KEY (session_id, cell_id, seq))""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

# pg_advisory_xact_lock key of schema migrations ("codemode" in ASCII, as a bigint).
_MIGRATION_LOCK = 0x636F64656D6F6465

_CELL_COLUMNS = (
    "cell_id, kind, request, idempotency_key, fingerprint, state, created, entries, delivered"
)


_LEASE_CHECK = (
    "SELECT owner, expires_at > clock_timestamp() FROM codemode_leases "
    "WHERE session_id = %s FOR SHARE"
)
_INSERT_CELL = (
    "INSERT INTO codemode_cells (session_id, cell_id, kind, request, idempotency_key, "
    "fingerprint, state, created) VALUES (%s, %s, %s, %s, %s, %s, 'open', "
    "extract(epoch FROM clock_timestamp())) ON CONFLICT (session_id, cell_id) DO NOTHING"
)
_INSERT_KEY = (
    "INSERT INTO codemode_keys (session_id, key, fingerprint, cell_id) "
    "VALUES (%s, %s, %s, %s) ON CONFLICT (session_id, key) DO NOTHING"
)
# Append a batch of entries in one statement: number them per cell after the cell's last
# sequence number (counted in codemode_cells.entries, bumped here for open cells only), and
# return each counted cell's number before the batch.
_APPEND = """
WITH input AS (
    SELECT c, k, p, ord
    FROM unnest(%s::text[], %s::text[], %s::text[]) WITH ORDINALITY AS t(c, k, p, ord)
), numbered AS (
    SELECT c, k, p, row_number() OVER (PARTITION BY c ORDER BY ord) AS n FROM input
), counts AS (
    SELECT c, count(*) AS n FROM input GROUP BY c
), bumped AS (
    UPDATE codemode_cells AS cell SET entries = cell.entries + counts.n
    FROM counts
    WHERE cell.session_id = %s AND cell.cell_id = counts.c AND cell.state = 'open'
    RETURNING cell.session_id, cell.cell_id, cell.entries - counts.n AS base
), inserted AS (
    INSERT INTO codemode_journal (session_id, cell_id, seq, kind, payload)
    SELECT bumped.session_id, numbered.c, bumped.base + numbered.n, numbered.k, numbered.p
    FROM numbered JOIN bumped ON bumped.cell_id = numbered.c
)
SELECT cell_id, base FROM bumped
"""
_DELIVER = """
WITH input AS (
    SELECT c, i, ord FROM unnest(%s::text[], %s::bigint[]) WITH ORDINALITY AS t(c, i, ord)
), numbered AS (
    SELECT c, i, row_number() OVER (PARTITION BY c ORDER BY ord) AS n FROM input
), counts AS (
    SELECT c, count(*) AS n FROM input GROUP BY c
), bumped AS (
    UPDATE codemode_cells AS cell SET delivered = cell.delivered + counts.n
    FROM counts
    WHERE cell.session_id = %s AND cell.cell_id = counts.c AND cell.state = 'open'
    RETURNING cell.session_id, cell.cell_id, cell.delivered - counts.n AS base
), inserted AS (
    INSERT INTO codemode_deliveries (session_id, cell_id, seq, items)
    SELECT bumped.session_id, numbered.c, bumped.base + numbered.n, numbered.i
    FROM numbered JOIN bumped ON bumped.cell_id = numbered.c
)
SELECT cell_id, base FROM bumped
"""
_CLOSE = (
    "UPDATE codemode_cells SET state = 'closed' WHERE session_id = %s AND cell_id = ANY(%s) "
    "RETURNING cell_id"
)
_SET_VALUES = (
    "INSERT INTO codemode_values (session_id, key, value) "
    "SELECT %s, k, v FROM unnest(%s::text[], %s::text[]) AS t(k, v) "
    "ON CONFLICT (session_id, key) DO UPDATE SET value = excluded.value"
)
_DELETE_VALUES = "DELETE FROM codemode_values WHERE session_id = %s AND key = ANY(%s)"
_DELETE_KEYS = "DELETE FROM codemode_keys WHERE session_id = %s AND key = ANY(%s)"
_CLOSED_AMONG = (
    "SELECT cell_id, state FROM codemode_cells WHERE session_id = %s AND cell_id = ANY(%s)"
)
_DELETE_JOURNALS = (
    "DELETE FROM codemode_journal WHERE session_id = %s AND cell_id = ANY(%s) AND cell_id IN "
    "(SELECT cell_id FROM codemode_cells WHERE session_id = %s AND state = 'closed')"
)
_DELETE_DELIVERIES = (
    "DELETE FROM codemode_deliveries WHERE session_id = %s AND cell_id = ANY(%s) AND cell_id IN "
    "(SELECT cell_id FROM codemode_cells WHERE session_id = %s AND state = 'closed')"
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


def _cells_query(session_id: str, state: CellState | None) -> tuple[str, tuple[Any, ...]]:
    """The query of a session's cells (of ``state``, if given) in admission order."""
    if state is None:
        return (
            f"SELECT {_CELL_COLUMNS} FROM codemode_cells WHERE session_id = %s ORDER BY ordinal",
            (session_id,),
        )
    return (
        f"SELECT {_CELL_COLUMNS} FROM codemode_cells "
        "WHERE session_id = %s AND state = %s ORDER BY ordinal",
        (session_id, state),
    )


async def migrate(conn: psycopg.AsyncConnection[tuple[Any, ...]], target: int, where: str) -> None:
    """Bring the schema of ``conn``'s database (its ``search_path``) to ``target``, forward only;
    refuse a newer schema with StoreError."""
    # Read first: a current schema needs no write (a read-only database can still be read).
    cur = await conn.execute("SELECT to_regclass('codemode_schema_version') IS NOT NULL")
    exists = await cur.fetchone()
    if exists is not None and exists[0]:
        cur = await conn.execute("SELECT max(version) FROM codemode_schema_version")
        row = await cur.fetchone()
        found = 0 if row is None or row[0] is None else int(row[0])
        if found > target:
            raise StoreError(newer_schema_text(where, found, target))
        if found == target:
            return
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS codemode_schema_version (version integer NOT NULL)"
        )
        cur = await conn.execute("SELECT max(version) FROM codemode_schema_version")
        row = await cur.fetchone()
        found = 0 if row is None or row[0] is None else int(row[0])
        if found > target:
            raise StoreError(newer_schema_text(where, found, target))
        if found == target:
            return
        for version in range(found, target):
            for statement in MIGRATIONS[version]:
                await conn.execute(statement)
        await conn.execute("DELETE FROM codemode_schema_version")
        await conn.execute("INSERT INTO codemode_schema_version (version) VALUES (%s)", (target,))


class PostgresStore:
    """The session store shared by several machines: a PostgreSQL database reached by ``dsn``
    (a libpq connection string or URL). Its tables (``codemode_*``) are created in the
    connection's ``search_path`` on first use. ``lease_seconds`` is how long a session's lease
    lasts after it was granted or renewed, by the server's clock (docs/durability.md).
    """

    connect_timeout = 10.0
    """Seconds to wait for a connection before raising StoreError."""

    def __init__(self, dsn: str, *, lease_seconds: float = 10.0) -> None:
        if not lease_seconds > 0:
            raise ValueError("lease_seconds must be positive")
        self._dsn = dsn
        self._lease_seconds = float(lease_seconds)
        self._conn: psycopg.AsyncConnection[tuple[Any, ...]] | None = None
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writes: list[tuple[Callable[..., Awaitable[Any]], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def lease_seconds(self) -> float:
        return self._lease_seconds

    def __repr__(self) -> str:
        return f"PostgresStore(<dsn>, lease_seconds={self._lease_seconds})"

    # ------------------------------------------------------------------------- connection

    async def _run(
        self, fn: Callable[[psycopg.AsyncConnection[tuple[Any, ...]]], Awaitable[T]]
    ) -> T:
        if self._closed:
            raise StoreError("the PostgreSQL store is closed")
        import psycopg

        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # First use, or a new event loop (asyncio.run again): the connection and the lock
            # belong to the old loop; start afresh.
            self._loop = loop
            self._lock = asyncio.Lock()
            stale, self._conn = self._conn, None
            if stale is not None and not stale.closed:
                stale.pgconn.finish()
        assert self._lock is not None

        async with self._lock:
            try:
                conn = await self._connect()
                return await fn(conn)
            except psycopg.Error as exc:
                if self._conn is not None and (self._conn.closed or self._conn.broken):
                    self._conn = None
                raise self._error(exc) from exc
            except BaseException:
                # Cancelled mid-operation: a connection left inside a transaction is dropped
                # (the server rolls that transaction back); the next operation reconnects.
                current = self._conn
                idle = psycopg.pq.TransactionStatus.IDLE
                if current is not None and (
                    current.closed or current.info.transaction_status != idle
                ):
                    self._conn = None
                    if not current.closed:
                        current.pgconn.finish()
                raise

    async def _connect(self) -> psycopg.AsyncConnection[tuple[Any, ...]]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        import psycopg

        conn = await psycopg.AsyncConnection.connect(
            self._dsn, autocommit=True, connect_timeout=max(1, round(self.connect_timeout))
        )
        try:
            await migrate(conn, SCHEMA_VERSION, "in PostgreSQL")
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        return conn

    @staticmethod
    def _error(exc: Exception) -> StoreError:
        import psycopg
        from psycopg import errors

        where = "the PostgreSQL store"
        if isinstance(exc, errors.ReadOnlySqlTransaction):
            return StoreError(f"{where} is read-only: {exc}")
        if isinstance(exc, errors.DiskFull | errors.InsufficientResources):
            return StoreError(f"{where} is full: {exc}")
        if isinstance(exc, errors.DataCorrupted | errors.IndexCorrupted):
            return StoreError(f"{where} is corrupt: {exc}")
        if isinstance(exc, psycopg.OperationalError):
            return StoreError(f"{where} is unreachable: {exc}")
        return StoreError(f"{where} failed: {exc}")

    @staticmethod
    async def _check_lease(
        conn: psycopg.AsyncConnection[tuple[Any, ...]], session_id: str, owner: str
    ) -> None:
        cur = await conn.execute(_LEASE_CHECK, (session_id,))
        row = await cur.fetchone()
        if row is None or row[0] != owner or not row[1]:
            raise SessionBusy(session_id)

    # ----------------------------------------------------------------------------- leases

    async def open_session(self, session_id: str, owner: str, *, limits: Any) -> OpenedSession:
        limits_text = dump_json(limits, "the session's limits")
        seconds = self._lease_seconds

        async def run(conn: psycopg.AsyncConnection[tuple[Any, ...]]) -> OpenedSession:
            async with conn.transaction():
                cur = await conn.execute(
                    "INSERT INTO codemode_sessions (session_id, limits, created) "
                    "VALUES (%s, %s, extract(epoch FROM clock_timestamp())) "
                    "ON CONFLICT (session_id) DO NOTHING",
                    (session_id, limits_text),
                )
                created = cur.rowcount == 1
                await conn.execute(
                    "INSERT INTO codemode_leases (session_id, owner, expires_at, epoch) "
                    "VALUES (%s, NULL, 'epoch', 0) ON CONFLICT (session_id) DO NOTHING",
                    (session_id,),
                )
                cur = await conn.execute(
                    "SELECT owner, expires_at > clock_timestamp(), epoch FROM codemode_leases "
                    "WHERE session_id = %s FOR UPDATE",
                    (session_id,),
                )
                row = await cur.fetchone()
                assert row is not None
                holder, live, epoch = row
                taken_over = False
                if holder != owner:
                    if holder is not None and live:
                        raise SessionBusy(session_id)
                    taken_over = holder is not None
                    epoch += 1
                await conn.execute(
                    "UPDATE codemode_leases SET owner = %s, epoch = %s, "
                    "expires_at = clock_timestamp() + make_interval(secs => %s) "
                    "WHERE session_id = %s",
                    (owner, epoch, seconds, session_id),
                )
                cur = await conn.execute(
                    "SELECT limits, created FROM codemode_sessions WHERE session_id = %s",
                    (session_id,),
                )
                session_row = await cur.fetchone()
                assert session_row is not None
            return OpenedSession(
                session=SessionRecord(session_id, load_json(session_row[0]), float(session_row[1])),
                lease=Lease(session_id, owner, int(epoch), seconds, taken_over),
                created=created,
            )

        return await self._run(run)

    async def renew_lease(self, session_id: str, owner: str) -> Lease:
        seconds = self._lease_seconds

        async def run(conn: psycopg.AsyncConnection[tuple[Any, ...]]) -> Lease:
            cur = await conn.execute(
                "UPDATE codemode_leases "
                "SET expires_at = clock_timestamp() + make_interval(secs => %s) "
                "WHERE session_id = %s AND owner = %s RETURNING epoch",
                (seconds, session_id, owner),
            )
            row = await cur.fetchone()
            if row is None:
                raise SessionBusy(session_id)
            return Lease(session_id, owner, int(row[0]), seconds)

        return await self._run(run)

    async def release_lease(self, session_id: str, owner: str) -> None:
        async def run(conn: psycopg.AsyncConnection[tuple[Any, ...]]) -> None:
            await conn.execute(
                "UPDATE codemode_leases SET owner = NULL, expires_at = 'epoch' "
                "WHERE session_id = %s AND owner = %s",
                (session_id, owner),
            )

        await self._run(run)

    async def get_lease(self, session_id: str) -> Lease | None:
        seconds = self._lease_seconds

        async def run(conn: psycopg.AsyncConnection[tuple[Any, ...]]) -> Lease | None:
            cur = await conn.execute(
                "SELECT owner, epoch FROM codemode_leases WHERE session_id = %s "
                "AND owner IS NOT NULL AND expires_at > clock_timestamp()",
                (session_id,),
            )
            row = await cur.fetchone()
            return None if row is None else Lease(session_id, row[0], int(row[1]), seconds)

        return await self._run(run)

    # ----------------------------------------------------------------------------- writes

    async def write(self, session_id: str, owner: str, batch: Batch) -> list[int]:
        check_batch(batch)
        cells = [(c, dump_json(c.request, f"the request of cell {c.cell_id}")) for c in batch.cells]
        entry_cells = [e.cell_id for e in batch.entries]
        entry_kinds = [e.kind for e in batch.entries]
        entry_payloads = [
            dump_json(e.payload, f"a journal entry of cell {e.cell_id}") for e in batch.entries
        ]
        value_keys = list(batch.values)
        value_texts = [dump_json(v, f"stored value {k}") for k, v in batch.values.items()]

        async def run(
            conn: psycopg.AsyncConnection[tuple[Any, ...]], pipeline: psycopg.AsyncPipeline
        ) -> list[int]:
            # Every statement of the batch goes to the server in one pipeline, in a savepoint of
            # the group's transaction: the lease check first (its row lock orders this write
            # against a takeover), then the writes. One sync reads all results back; a failed
            # check raises, which rolls the savepoint back.
            async with conn.transaction():
                lease = await conn.execute(_LEASE_CHECK, (session_id,))
                admitted = []
                for cell, request in cells:
                    inserted = await conn.execute(
                        _INSERT_CELL,
                        (
                            session_id,
                            cell.cell_id,
                            cell.kind,
                            request,
                            cell.idempotency_key,
                            cell.fingerprint,
                        ),
                    )
                    key = None
                    if cell.idempotency_key is not None:
                        key = await conn.execute(
                            _INSERT_KEY,
                            (session_id, cell.idempotency_key, cell.fingerprint, cell.cell_id),
                        )
                    admitted.append((cell, inserted, key))
                appended = None
                if batch.entries:
                    appended = await conn.execute(
                        _APPEND, (entry_cells, entry_kinds, entry_payloads, session_id)
                    )
                delivered = None
                if batch.deliveries:
                    delivered = await conn.execute(
                        _DELIVER,
                        (
                            [d.cell_id for d in batch.deliveries],
                            [d.items for d in batch.deliveries],
                            session_id,
                        ),
                    )
                closed = None
                if batch.closed:
                    closed = await conn.execute(_CLOSE, (session_id, list(batch.closed)))
                if value_keys:
                    await conn.execute(_SET_VALUES, (session_id, value_keys, value_texts))
                if batch.values_deleted:
                    await conn.execute(_DELETE_VALUES, (session_id, list(batch.values_deleted)))
                if batch.keys_deleted:
                    await conn.execute(_DELETE_KEYS, (session_id, list(batch.keys_deleted)))
                dropped = None
                if batch.journals_deleted:
                    names = list(batch.journals_deleted)
                    dropped = await conn.execute(_CLOSED_AMONG, (session_id, names))
                    await conn.execute(_DELETE_JOURNALS, (session_id, names, session_id))
                    await conn.execute(_DELETE_DELIVERIES, (session_id, names, session_id))
                await pipeline.sync()

                row = await lease.fetchone()
                if row is None or row[0] != owner or not row[1]:
                    raise SessionBusy(session_id)
                for cell, inserted, key in admitted:
                    if inserted.rowcount != 1:
                        raise StoreError(
                            f"cell {cell.cell_id} is already recorded in session {session_id}"
                        )
                    if key is not None and key.rowcount != 1:
                        raise StoreError(
                            f"idempotency key {cell.idempotency_key} is already recorded "
                            f"in session {session_id}"
                        )
                seqs: list[int] = []
                if appended is not None:
                    bases = {cell_id: int(base) for cell_id, base in await appended.fetchall()}
                    await self._check_counted(conn, session_id, entry_cells, bases)
                    for cell_id in entry_cells:
                        bases[cell_id] += 1
                        seqs.append(bases[cell_id])
                if delivered is not None:
                    bases = {cell_id: int(base) for cell_id, base in await delivered.fetchall()}
                    await self._check_counted(
                        conn, session_id, [d.cell_id for d in batch.deliveries], bases
                    )
                if closed is not None:
                    found = {r[0] for r in await closed.fetchall()}
                    for cell_id in batch.closed:
                        if cell_id not in found:
                            raise StoreError(
                                f"cell {cell_id} is not recorded in session {session_id}"
                            )
                if dropped is not None:
                    states = dict(await dropped.fetchall())
                    for cell_id in batch.journals_deleted:
                        if states.get(cell_id) != "closed":
                            state = states.get(cell_id, "not recorded")
                            raise StoreError(
                                f"the journal of cell {cell_id} cannot be deleted: "
                                f"the cell is {state}"
                            )
            return seqs

        return await self._grouped(run)

    async def _grouped(
        self,
        job: Callable[
            [psycopg.AsyncConnection[tuple[Any, ...]], psycopg.AsyncPipeline], Awaitable[T]
        ],
    ) -> T:
        """Run ``job`` as one write of a group commit: writes queued while a transaction is in
        flight go together in the next one, each in a savepoint of its own (a write that raises
        is rolled back alone and raises to its caller), answered after the commit, in the order
        they were queued. A caller cancelled before its write started writes nothing."""
        if self._closed:
            raise StoreError("the PostgreSQL store is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._writes.append((job, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_writes())
        result: T = await future
        return result

    async def _flush_writes(self) -> None:
        while self._writes:
            jobs = [(job, future) for job, future in self._writes if not future.done()]
            self._writes.clear()
            if not jobs:
                continue
            outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
            try:
                await self._run(functools.partial(self._run_group, jobs, outcomes))
            except BaseException as exc:
                for _, future in jobs:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for future, result, failure in outcomes:
                if future.done():
                    continue
                if failure is not None:
                    future.set_exception(failure)
                else:
                    future.set_result(result)

    @staticmethod
    async def _run_group(
        jobs: list[tuple[Callable[..., Awaitable[Any]], asyncio.Future[Any]]],
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]],
        conn: psycopg.AsyncConnection[tuple[Any, ...]],
    ) -> None:
        outcomes.clear()
        async with conn.pipeline() as pipeline, conn.transaction():
            for job, future in jobs:
                try:
                    result = await job(conn, pipeline)
                except (SessionBusy, StoreError) as exc:
                    outcomes.append((future, None, exc))
                else:
                    outcomes.append((future, result, None))

    @staticmethod
    async def _check_counted(
        conn: psycopg.AsyncConnection[tuple[Any, ...]],
        session_id: str,
        cell_ids: list[str],
        counted: dict[str, int],
    ) -> None:
        """Every cell an append or delivery named was counted (recorded and open); else say
        which was not (the caller's exception rolls the batch back)."""
        missing = [cell_id for cell_id in dict.fromkeys(cell_ids) if cell_id not in counted]
        if not missing:
            return
        cur = await conn.execute(
            "SELECT state FROM codemode_cells WHERE session_id = %s AND cell_id = %s",
            (session_id, missing[0]),
        )
        row = await cur.fetchone()
        if row is None:
            raise StoreError(f"cell {missing[0]} is not recorded in session {session_id}")
        raise StoreError(f"cell {missing[0]} of session {session_id} is closed")

    async def delete_cells(self, session_id: str, owner: str) -> None:
        async def run(conn: psycopg.AsyncConnection[tuple[Any, ...]]) -> None:
            async with conn.transaction():
                await self._check_lease(conn, session_id, owner)
                for table in ("codemode_journal", "codemode_deliveries", "codemode_cells"):
                    await conn.execute(f"DELETE FROM {table} WHERE session_id = %s", (session_id,))

        await self._run(run)

    async def delete_session(self, session_id: str) -> None:
        async def run(conn: psycopg.AsyncConnection[tuple[Any, ...]]) -> None:
            async with conn.transaction():
                for table in (
                    "codemode_journal",
                    "codemode_deliveries",
                    "codemode_cells",
                    "codemode_values",
                    "codemode_keys",
                    "codemode_leases",
                    "codemode_sessions",
                ):
                    await conn.execute(f"DELETE FROM {table} WHERE session_id = %s", (session_id,))

        await self._run(run)

    # ------------------------------------------------------------------------------ reads

    async def _fetchall(self, query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        async def run(conn: psycopg.AsyncConnection[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
            cur = await conn.execute(query, params)
            return await cur.fetchall()

        return await self._run(run)

    async def get_session(self, session_id: str) -> SessionRecord | None:
        rows = await self._fetchall(
            "SELECT limits, created FROM codemode_sessions WHERE session_id = %s", (session_id,)
        )
        if not rows:
            return None
        return SessionRecord(session_id, load_json(rows[0][0]), float(rows[0][1]))

    async def list_cells(
        self, session_id: str, *, state: CellState | None = None
    ) -> list[CellRecord]:
        rows = await self._fetchall(*_cells_query(session_id, state))
        return [_cell(row) for row in rows]

    async def get_cell(self, session_id: str, cell_id: str) -> CellRecord | None:
        rows = await self._fetchall(
            f"SELECT {_CELL_COLUMNS} FROM codemode_cells WHERE session_id = %s AND cell_id = %s",
            (session_id, cell_id),
        )
        return _cell(rows[0]) if rows else None

    async def read_journal(
        self, session_id: str, cell_id: str, *, after: int = 0
    ) -> list[JournalEntry]:
        rows = await self._fetchall(
            "SELECT seq, kind, payload FROM codemode_journal "
            "WHERE session_id = %s AND cell_id = %s AND seq > %s ORDER BY seq",
            (session_id, cell_id, after),
        )
        return [JournalEntry(cell_id, int(s), k, load_json(p)) for s, k, p in rows]

    async def deliveries(self, session_id: str, cell_id: str) -> list[int]:
        rows = await self._fetchall(
            "SELECT items FROM codemode_deliveries WHERE session_id = %s AND cell_id = %s "
            "ORDER BY seq",
            (session_id, cell_id),
        )
        return [int(row[0]) for row in rows]

    async def read_cells(
        self, session_id: str, *, state: CellState | None = None
    ) -> list[CellJournal]:
        async def run(conn: psycopg.AsyncConnection[tuple[Any, ...]]) -> list[CellJournal]:
            # One snapshot for the three reads (a writer's batch lands whole between them).
            async with conn.transaction():
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                query, params = _cells_query(session_id, state)
                cur = await conn.execute(query, params)
                records = [_cell(row) for row in await cur.fetchall()]
                cur = await conn.execute(
                    "SELECT cell_id, seq, kind, payload FROM codemode_journal "
                    "WHERE session_id = %s ORDER BY cell_id, seq",
                    (session_id,),
                )
                entries = await cur.fetchall()
                cur = await conn.execute(
                    "SELECT cell_id, items FROM codemode_deliveries WHERE session_id = %s "
                    "ORDER BY cell_id, seq",
                    (session_id,),
                )
                deliveries = await cur.fetchall()
            return group_cells(records, entries, deliveries)

        return await self._run(run)

    async def get_values(self, session_id: str) -> dict[str, Any]:
        rows = await self._fetchall(
            "SELECT key, value FROM codemode_values WHERE session_id = %s", (session_id,)
        )
        return {key: load_json(value) for key, value in rows}

    async def list_keys(self, session_id: str) -> list[KeyRecord]:
        rows = await self._fetchall(
            "SELECT key, fingerprint, cell_id FROM codemode_keys WHERE session_id = %s "
            "ORDER BY ordinal",
            (session_id,),
        )
        return [KeyRecord(k, f, c) for k, f, c in rows]

    # ---------------------------------------------------------------------------- closing

    async def close(self) -> None:
        """Close the connection once the operation in flight (if any) has finished; writes still
        queued raise StoreError."""
        if self._closed:
            return
        self._closed = True
        lock = self._lock
        try:
            current_loop = asyncio.get_running_loop()
        except RuntimeError:
            current_loop = None
        if lock is not None and self._loop is current_loop:
            async with lock:
                conn, self._conn = self._conn, None
        else:
            conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            if self._loop is current_loop:
                await conn.close()
            else:
                conn.pgconn.finish()
