"""A child process of the store tests: ``store_child.py BACKEND LOCATION MODE ARGS...``.

- ``writer SESSION BATCH``: opens SESSION (lease 1 s), admits cell ``c1``, prints ``ready``, then
  appends batches of BATCH entries forever, each with the stored value ``last`` set to the batch
  number in the same transaction, printing each batch number once it is committed. The parent
  kills it at a random instant (a crash mid-transaction).
- ``open SESSION OWNER GOFILE``: prints ``ready``, waits until GOFILE exists, then opens SESSION
  as OWNER and prints ``won`` or ``busy``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from codemode.errors import SessionBusy
from codemode.store import Batch, Entry, NewCell, PostgresStore, SqliteStore


def make(backend: str, location: str, lease_seconds: float) -> SqliteStore | PostgresStore:
    if backend == "sqlite":
        return SqliteStore(location, lease_seconds=lease_seconds)
    return PostgresStore(location, lease_seconds=lease_seconds)


async def writer(store: SqliteStore | PostgresStore, session_id: str, size: int) -> None:
    await store.open_session(session_id, "child", limits={})
    await store.write(session_id, "child", Batch(cells=[NewCell("c1", "continuing", {})]))
    print("ready", flush=True)
    batch = 0
    while True:
        entries = [
            Entry("c1", "step", {"batch": batch, "i": i, "pad": "x" * 200}) for i in range(size)
        ]
        await store.write(session_id, "child", Batch(entries=entries, values={"last": batch}))
        print(batch, flush=True)
        batch += 1
        if batch % 5 == 0:
            await store.renew_lease(session_id, "child")


async def opener(store: SqliteStore | PostgresStore, session_id: str, owner: str) -> None:
    try:
        await store.open_session(session_id, owner, limits={"owner": owner})
    except SessionBusy:
        print("busy", flush=True)
    else:
        print("won", flush=True)
    await store.close()


def main() -> None:
    backend, location, mode, *args = sys.argv[1:]
    if mode == "writer":
        store = make(backend, location, 1.0)
        asyncio.run(writer(store, args[0], int(args[1])))
    elif mode == "open":
        store = make(backend, location, 30.0)
        print("ready", flush=True)
        while not os.path.exists(args[2]):
            time.sleep(0.002)
        asyncio.run(opener(store, args[0], args[1]))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
