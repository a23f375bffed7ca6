"""V8's own share of a ``Promise.all`` of 1,000 calls: the bridge called directly, no host.

Creates isolates as the engine's pool does (``_create_isolate``: the prelude and its warm-up
cell, with codemode's V8 flags), then times, on this thread, each bridge call of one cell: the
run that issues the calls, its drain, the step that delivers the results (through the inbox, as
the engine does) and its drain. Then the same JavaScript without the bridge (plain evals in raw
mini-racer: a ``tools.echo`` that appends an event to a string and keeps the promise's resolvers
in a Map), as a floor. Medians in ms over ``--isolates`` fresh isolates; each figure includes
one wait for the isolate's thread. ``PYTHONPATH=<checkout>/src`` measures another checkout.

    .venv/bin/python benchmarks/par_v8_alone.py [--calls 1000] [--isolates 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

PAR = (
    "const r = await Promise.all(Array.from({{length: {n}}}, (_, i) => tools.echo({{i}})));"
    " text(String(r.reduce((a, x) => a + x.i, 0)))"
)

FLOOR_SETUP = """
var out = "", pend = new Map(), n = 0;
var tools = {echo(a) { const j = JSON.stringify(a); n++; const id = "tool-" + n;
   const ev = '["call","' + id + '",0,' + j + ']';
   out = out === "" ? ev : out + "," + ev;
   return new Promise((res, rej) => { pend.set(id, {res, rej}); }); }};
var text = (s) => { out += s; };
"""


def _config(n: int) -> str:
    limits = {
        "maxToolCalls": n + 10,
        "maxParallel": n + 10,
        "maxOutputBytes": 1 << 20,
        "maxExternalBytes": 1 << 26,
        "maxStoredBytes": 1 << 20,
    }
    tools = [{"name": "echo", "ident": "echo", "kind": "function", "description": ""}]
    return json.dumps({"pausable": False, "limits": limits, "storedBytes": 2, "tools": tools})


def _results(ids: list[str]) -> str:
    return "[" + ",".join(f'["r","{i}",true,{{"i":{k}}}]' for k, i in enumerate(ids)) + "]"


def bridge_cell(loop: asyncio.AbstractEventLoop, n: int) -> list[float]:
    from codemode.engine import v8

    isolate = v8._create_isolate(loop)
    try:
        bridge = isolate.bridge
        assert bridge is not None and isolate.inbox is not None
        t0 = time.perf_counter()
        bridge.call_sync(bridge.start, _config(n), "{}", PAR.format(n=n))
        t1 = time.perf_counter()
        report = bridge.call_sync(bridge.drain)
        t2 = time.perf_counter()
        ids = [e[1] for e in json.loads(report)["ev"] if e[0] == "call"]
        assert len(ids) == n and isolate.inbox.put(_results(ids))
        t3 = time.perf_counter()
        bridge.call_sync(bridge.step)
        t4 = time.perf_counter()
        final = bridge.call_sync(bridge.drain)
        t5 = time.perf_counter()
        assert '"ok":true' in final and str(n * (n - 1) // 2) in final, final
    finally:
        isolate.free()
    return [(t1 - t0) * 1e3, (t2 - t1) * 1e3, (t4 - t3) * 1e3, (t5 - t4) * 1e3]


def floor_cell(n: int) -> list[float]:
    from py_mini_racer import MiniRacer

    mr = MiniRacer()
    mr.eval(FLOOR_SETUP)
    t0 = time.perf_counter()
    mr.eval(f"(async function () {{ {PAR.format(n=n)} }})(); 1")
    t1 = time.perf_counter()
    mr.eval("const s = out; out = ''; s")
    t2 = time.perf_counter()
    results = _results([f"tool-{i + 1}" for i in range(n)])
    mr.eval(f"var INPUTS = {json.dumps(results)}; 1")
    t3 = time.perf_counter()
    mr.eval(
        "for (const x of JSON.parse(INPUTS)) "
        "{ const e = pend.get(x[1]); pend.delete(x[1]); e.res(x[3]); } 1"
    )
    t4 = time.perf_counter()
    final: Any = mr.eval("out")
    t5 = time.perf_counter()
    assert str(final).endswith(str(n * (n - 1) // 2)), final
    return [(t1 - t0) * 1e3, (t2 - t1) * 1e3, (t4 - t3) * 1e3, (t5 - t4) * 1e3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--isolates", type=int, default=8)
    args = parser.parse_args()
    import codemode
    from codemode.engine import v8

    v8._init_v8()
    loop = asyncio.new_event_loop()
    rows = {
        "bridge": [bridge_cell(loop, args.calls) for _ in range(args.isolates)],
        "same JavaScript, no bridge": [floor_cell(args.calls) for _ in range(args.isolates)],
    }
    loop.close()
    print(f"codemode from {codemode.__file__}")
    names = ("run", "its drain", "step", "its drain", "total")
    print(f"{'(ms, medians)':28}" + "".join(f"{n:>11}" for n in names))
    for label, runs in rows.items():
        cols = [statistics.median(r[k] for r in runs) for k in range(4)]
        cols.append(statistics.median(sum(r) for r in runs))
        print(f"{label:28}" + "".join(f"{c:11.2f}" for c in cols))


if __name__ == "__main__":
    main()
