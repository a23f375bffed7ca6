"""What recording costs at the store: journal appends per second and read-back time.

For SqliteStore (a file in a temporary directory, WAL, synchronous=NORMAL) and PostgresStore (a
throwaway PostgreSQL server on 127.0.0.1 started from the machine's binaries, fsync on, default
synchronous_commit), measures:

- appends per second with one entry per transaction (a writer that commits every input alone);
- entries per second with batches of 10 and 100 entries per transaction (one transaction per
  engine step, as the journal writes), and the batches (transactions) per second;
- a typical step's batch (one input entry plus one delivered-event boundary) per second;
- appends per second from 50 concurrent writers (SqliteStore commits concurrent writes as a
  group; PostgresStore runs them one after the other on its connection);
- the time to read back a 1,000-entry journal (median of 20 reads).

Each entry carries a ~120-byte JSON payload (a tool result). Prints a table and writes
benchmarks/results/store_journal.json. Run: .venv/bin/python benchmarks/store_journal.py
[--appends N] [--no-postgres]. The machine is shared: expect 20-40 % noise between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from codemode import PostgresStore, SqliteStore
from codemode.store import Batch, Delivery, Entry, NewCell

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "store"))

PAYLOAD = {"call": "tool-1", "result": {"rows": [1, 2, 3], "text": "x" * 80}}


async def measure(store: Any, appends: int) -> dict[str, float]:
    sid = "bench-" + str(time.monotonic_ns())
    await store.open_session(sid, "bench", limits={})
    await store.write(
        sid, "bench", Batch(cells=[NewCell(f"c{i}", "continuing", {}) for i in range(5)])
    )
    figures: dict[str, float] = {}

    start = time.perf_counter()
    for _ in range(appends):
        await store.write(sid, "bench", Batch(entries=[Entry("c0", "step", PAYLOAD)]))
    figures["appends/s, 1 entry per transaction"] = appends / (time.perf_counter() - start)

    for size, cell in ((10, "c1"), (100, "c2")):
        batches = max(10, appends // size * 2)
        entries = [Entry(cell, "step", PAYLOAD) for _ in range(size)]
        start = time.perf_counter()
        for _ in range(batches):
            await store.write(sid, "bench", Batch(entries=entries))
        elapsed = time.perf_counter() - start
        figures[f"entries/s, batches of {size}"] = batches * size / elapsed
        figures[f"transactions/s, batches of {size}"] = batches / elapsed

    start = time.perf_counter()
    for _ in range(appends):
        await store.write(
            sid,
            "bench",
            Batch(entries=[Entry("c3", "step", PAYLOAD)], deliveries=[Delivery("c3", 1)]),
        )
    figures["steps/s, 1 entry + 1 delivery per transaction"] = appends / (
        time.perf_counter() - start
    )

    async def writer(cell: str, count: int) -> None:
        for _ in range(count):
            await store.write(sid, "bench", Batch(entries=[Entry(cell, "step", PAYLOAD)]))

    cells = [NewCell(f"w{i}", "continuing", {}) for i in range(50)]
    await store.write(sid, "bench", Batch(cells=cells))
    start = time.perf_counter()
    await asyncio.gather(*(writer(c.cell_id, max(1, appends // 50)) for c in cells))
    figures["appends/s, 50 concurrent writers, 1 entry each"] = (
        max(1, appends // 50) * 50 / (time.perf_counter() - start)
    )

    await store.write(sid, "bench", Batch(entries=[Entry("c4", "step", PAYLOAD)] * 1000))
    reads = []
    for _ in range(20):
        start = time.perf_counter()
        journal = await store.read_journal(sid, "c4")
        reads.append(time.perf_counter() - start)
        assert len(journal) == 1000
    figures["read back 1,000 entries, ms (median)"] = statistics.median(reads) * 1000
    await store.delete_session(sid)
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--appends", type=int, default=1000)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "bench.db", lease_seconds=3600)
        try:
            results["SqliteStore"] = await measure(store, args.appends)
        finally:
            await store.close()

    if not args.no_postgres:
        from pgserver import PostgresServer, find_bindir

        if find_bindir() is None:
            print("PostgreSQL binaries missing (apt-get install postgresql): skipping it")
        else:
            server = PostgresServer(fsync=True).start()
            try:
                pg = PostgresStore(server.dsn(), lease_seconds=3600)
                try:
                    results["PostgresStore (loopback)"] = await measure(pg, args.appends)
                finally:
                    await pg.close()
            finally:
                server.stop()

    names = list(next(iter(results.values())))
    width = max(len(n) for n in names)
    print(f"{'':{width}}  " + "  ".join(f"{k:>24}" for k in results))
    for name in names:
        print(f"{name:{width}}  " + "  ".join(f"{r[name]:>24,.1f}" for r in results.values()))

    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "store_journal.json").write_text(
        json.dumps(
            {"machine": platform.platform(), "appends": args.appends, "results": results},
            indent=2,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
