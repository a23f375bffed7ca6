"""The machine's facts, the merge of repeated runs and the printed table."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
from typing import Any

from engines_compare.common import BUSY, ENGINES
from engines_compare.measure import ROWS


def _fmt_number(value: float, kind: str) -> str:
    if kind == "rate":
        return f"{value:,.0f}"
    if kind == "mib":
        return f"{value:.2f}" if value < 10 else f"{value:.1f}"
    if value < 1:
        return f"{value:.3f}"
    if value < 10:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:.0f}"


def cell_text(engine_result: dict[str, Any], key: str, kind: str, notes: list[str]) -> str:
    if "missing" in engine_result:
        return "missing"
    if key == "stall_ms":
        compute = engine_result.get("compute_ms")
        if isinstance(compute, dict) and "host_loop_max_stall_ms" in compute:
            return _fmt_number(compute["host_loop_max_stall_ms"], kind)
        key = "compute_ms"
    value = engine_result.get("idle_memory" if key.startswith("idle_") else key)
    if value is None:
        return "-"
    if isinstance(value, dict) and ("na" in value or "error" in value):
        reason = value.get("na") or value.get("error")
        tag = "n/a" if "na" in value else "error"
        if reason not in notes:
            notes.append(reason)
        return f"{tag} [{notes.index(reason) + 1}]"
    if key == "installed_mib":
        return _fmt_number(float(value), "mib")
    if key == "idle_pss":
        return _fmt_number(value["pss_mib_per_cell"], "mib")
    if key == "idle_rss":
        return _fmt_number(value["rss_mib_per_cell"], "mib")
    if key == "idle_threads":
        return f"{value['threads_per_cell']:.1f} / {value['processes_per_cell']:.1f}"
    text = _fmt_number(value["median"], kind)
    if key == "runaway_ms" and "wall_ms_past_limit" in value:
        text += " (CPU)"
    if key == "runaway_ms" and value.get("cpu_busy_after_stop", 0) > BUSY:
        text += " (still busy!)"
    return text


def machine_facts() -> dict[str, Any]:
    facts: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "interpreter": sys.executable,
    }
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                facts["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        facts["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    return facts


def merge_runs(runs: list[dict[str, Any]], order: list[str] | None = None) -> dict[str, Any]:
    """The median over runs of each per-run median (and of each idle-memory figure). A workload
    that failed in some runs is merged over the runs where it worked, and says how many."""
    merged: dict[str, Any] = {}
    for engine in order or ENGINES:
        per_run = [r[engine] for r in runs if engine in r]
        if not per_run:
            continue
        if all("missing" in r for r in per_run):
            merged[engine] = per_run[0]
            continue
        per_run = [r for r in per_run if "missing" not in r]
        out: dict[str, Any] = {}
        keys = dict.fromkeys(k for r in per_run for k in r)
        for key in keys:
            values = [r.get(key) for r in per_run]
            timed = [v for v in values if isinstance(v, dict) and "median" in v]
            idle = [v for v in values if isinstance(v, dict) and "n" in v]
            if timed:
                m = dict(timed[0])
                m.pop("samples", None)
                m["median"] = statistics.median(v["median"] for v in timed)
                m["run_medians"] = [v["median"] for v in timed]
                for extra in ("host_loop_max_stall_ms",):
                    if extra in m:
                        m[extra] = statistics.median(v[extra] for v in timed)
                if "cpu_busy_after_stop" in m:
                    m["cpu_busy_after_stop"] = max(v["cpu_busy_after_stop"] for v in timed)
                for extra in ("in_sandbox_time_limit_ms_past_limit", "wall_ms_past_limit"):
                    if extra in m:
                        inner = [v[extra]["median"] for v in timed]
                        m[extra] = {"median": statistics.median(inner), "run_medians": inner}
                if len(timed) < len(values):
                    m["failed_runs"] = len(values) - len(timed)
                out[key] = m
            elif idle:
                m = {k: statistics.median(v[k] for v in idle) for k in idle[0] if k != "n"}
                m["n"] = idle[0]["n"]
                m["run_values"] = {k: [v[k] for v in idle] for k in idle[0] if k != "n"}
                out[key] = m
            else:
                out[key] = next(v for v in values if v is not None)
        merged[engine] = out
    return merged


def print_table(merged: dict[str, Any], calls: int, facts: dict[str, Any]) -> None:
    engines = list(merged)
    notes: list[str] = []
    label_w = max(len(label.format(calls=calls)) for _, label, _ in ROWS) + 2
    col_w = 2 + max(
        [len(e) for e in engines]
        + [len(cell_text(merged[e], key, kind, [])) for e in engines for key, _, kind in ROWS]
    )
    header = " " * label_w + "".join(f"{e:>{col_w}}" for e in engines)
    print(header)
    print("-" * len(header))
    for key, label, kind in ROWS:
        cells = [cell_text(merged[e], key, kind, notes) for e in engines]
        print(f"{label.format(calls=calls):<{label_w}}" + "".join(f"{c:>{col_w}}" for c in cells))
    for i, note in enumerate(notes, 1):
        print(f"[{i}] {note}")
    print()
    for engine in engines:
        r = merged[engine]
        if "missing" in r:
            print(f"{engine}: missing: {r['missing']}")
            continue
        versions = ", ".join(f"{k} {v}" for k, v in r.get("versions", {}).items())
        stop = r.get("runaway_ms", {})
        print(f"{engine}: {versions}; stop = {r.get('runaway_method', '?')}")
        inner = stop.get("in_sandbox_time_limit_ms_past_limit") if isinstance(stop, dict) else None
        if inner:
            print(
                f"  (Monty's own max_feed_duration_secs: {inner['median']:.2f} ms past the limit)"
            )
        wall = stop.get("wall_ms_past_limit") if isinstance(stop, dict) else None
        if wall:
            print(
                f"  (wall-clock time past the 50 ms limit: median {wall['median']:.1f} ms;"
                " more than the CPU figure when the machine is loaded)"
            )
    print(
        f"\nmachine: {facts['cpus']} CPUs ({facts.get('cpu_model', '?')}), Python"
        f" {facts['python']}, {facts['platform']}; load average at start"
        f" {facts.get('loadavg_start')}, at end {facts.get('loadavg_end')}; runs: {facts['runs']}"
    )
