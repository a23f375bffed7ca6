"""The command line: run each engine in a child process, merge, print, write the JSON."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import engines_compare
from engines_compare.common import COMPARE_VENV, ENGINES, REEXEC_GUARD, RESULTS, ROOT
from engines_compare.measure import measure_engine, missing_reason
from engines_compare.peer_deno import DENO_HOST_JS
from engines_compare.report import machine_facts, merge_runs, print_table

PACKAGE = Path(__file__).resolve().parent
"""This package: ``python benchmarks/engines_compare`` runs it."""


def child_main(args: argparse.Namespace) -> None:
    engine = args.child
    with tempfile.TemporaryDirectory(prefix="engines-compare-") as tmp:
        script = os.path.join(tmp, "host.js")
        Path(script).write_text(DENO_HOST_JS)
        result = asyncio.run(measure_engine(engine, args, script))
    Path(args.child_out).write_text(json.dumps(result))


def maybe_reexec() -> None:
    """Under any interpreter but the compare venv's, re-run this script there when it exists."""
    venv_python = COMPARE_VENV / "bin" / "python"
    if os.environ.get(REEXEC_GUARD) or not venv_python.exists():
        return
    if Path(sys.prefix).resolve() == COMPARE_VENV.resolve():
        return
    print(f"(re-running in {COMPARE_VENV.relative_to(ROOT)})", file=sys.stderr, flush=True)
    env = dict(os.environ, **{REEXEC_GUARD: "1"})
    os.execve(str(venv_python), [str(venv_python), str(PACKAGE), *sys.argv[1:]], env)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=engines_compare.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset")
    parser.add_argument("--runs", type=int, default=1, help="whole comparisons to repeat")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--cells", type=int, default=200, help="fresh cells per variant")
    parser.add_argument("--cells-deno-process", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--reps", type=int, default=5, help="repetitions of each call workload")
    parser.add_argument("--runaway-reps", type=int, default=5)
    parser.add_argument("--idle", type=int, default=100, help="idle cells (in-process engines)")
    parser.add_argument("--idle-monty", type=int, default=10)
    parser.add_argument("--idle-deno-worker", type=int, default=20)
    parser.add_argument("--idle-deno-process", type=int, default=5)
    parser.add_argument(
        "--baseline",
        metavar="SRC",
        help="also run the codemode engines from another checkout's src/ directory (columns"
        " `codemode@base`, `codemode-worker@base`), in the same run: a before/after comparison",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    # `./dev bench ARGS` passes the same ARGS to every benchmark script: ignore the others'.
    args, unknown = parser.parse_known_args()
    if args.child:
        child_main(args)
        return
    maybe_reexec()
    if unknown:
        print(f"(ignoring arguments meant for other benchmarks: {unknown})", file=sys.stderr)

    wanted = [e.strip() for e in args.engines.split(",") if e.strip()]
    for e in wanted:
        if e not in ENGINES:
            parser.error(f"unknown engine {e!r}; choose from {', '.join(ENGINES)}")
    if args.baseline:
        # Each baseline column runs right after its own, so the two see the same load.
        wanted = [
            v for e in wanted for v in ((e, f"{e}@base") if e.startswith("codemode") else (e,))
        ]
        args.baseline = str(Path(args.baseline).resolve())
    facts = machine_facts()
    facts["runs"] = args.runs
    missing = {e: reason for e in wanted if (reason := missing_reason(e.split("@")[0]))}
    for engine, reason in missing.items():
        print(f"{engine}: skipped: {reason}", file=sys.stderr)

    runs: list[dict[str, Any]] = []
    for run in range(args.runs):
        results: dict[str, Any] = {e: {"missing": r} for e, r in missing.items()}
        for engine in wanted:
            if engine in missing:
                continue
            print(f"run {run + 1}/{args.runs}: {engine} ...", file=sys.stderr, flush=True)
            results[engine] = run_child(engine, args)
        runs.append(results)
    with contextlib.suppress(OSError):
        facts["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]

    merged = merge_runs(runs, wanted)
    print_table(merged, args.calls, facts)
    RESULTS.parent.mkdir(exist_ok=True)
    config = {
        k: v for k, v in vars(args).items() if k not in ("child", "child_out") and v is not None
    }
    RESULTS.write_text(
        json.dumps({"machine": facts, "config": config, "engines": merged, "runs": runs}, indent=2)
    )
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")


def run_child(engine: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    base_engine, _, variant = engine.partition("@")
    cmd = [sys.executable, str(PACKAGE), "--child", base_engine, "--child-out", out]
    for name in (
        "calls", "cells", "cells_deno_process", "warmup", "reps", "runaway_reps",
        "idle", "idle_monty", "idle_deno_worker", "idle_deno_process",
    ):  # fmt: skip
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    # Its own process group, so that a hung child and the deno/monty processes it started can be
    # ended together.
    env = None
    if variant == "base":
        # The baseline checkout's codemode comes first on the path (the worker processes of
        # WorkerEngine inherit it).
        env = dict(os.environ, PYTHONPATH=args.baseline)
    proc = subprocess.Popen(cmd, stdout=sys.stderr, start_new_session=True, env=env)
    try:
        code = proc.wait(timeout=900)
        if code != 0:
            return {"missing": f"the measuring process failed (exit {code})"}
        return dict(json.loads(Path(out).read_text()))
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return {"missing": "the measuring process timed out after 900 s"}
    finally:
        with contextlib.suppress(OSError):
            os.unlink(out)
