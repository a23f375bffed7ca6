"""Orphaned sessions: a session whose caller process died is suspended by its host.

A ``ClusterSession`` names itself to its host with a *caller id* that carries the Ray identity
of its process (its worker id and job id). Ray's control store (the GCS) records when that
process ends: a driver or a worker killed outright is marked dead within a second. A host asks
it, every few seconds, about the callers of the sessions it holds; a session whose caller is
dead and that no other caller reopened within the grace period is suspended (its cells stop
without an outcome and stay in the store, its lease is released), so a later
``cluster.session(delegate, session_id=...)`` recovers it by replay, on any host.

Ray's own return path does not tell: a host's call stream (a streaming generator whose caller
died) is neither cancelled nor failed by Ray 2.60, and an idle session yields nothing anyway.
The GCS accessor used here is Ray's internal ``GlobalStateAccessor`` (ray is pinned to 2.60.0).
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from typing import Final

__all__ = ["ORPHAN_GRACE", "CallerId", "caller_id", "dead_callers", "orphan_grace"]

logger = logging.getLogger("codemode.cluster.orphans")

ORPHAN_GRACE: Final = 30.0
"""Seconds a session whose caller died stays on its host before it is suspended (default)."""
GRACE_ENV: Final = "CODEMODE_CLUSTER_ORPHAN_GRACE"
"""Environment variable of the process that starts the hosts: their grace period, in seconds."""


def orphan_grace() -> float:
    """The grace period for hosts started by this process: ``$CODEMODE_CLUSTER_ORPHAN_GRACE``
    (seconds, at least 0), else :data:`ORPHAN_GRACE`."""
    text = os.environ.get(GRACE_ENV)
    if not text:
        return ORPHAN_GRACE
    try:
        seconds = float(text)
    except ValueError:
        logger.warning("%s=%r is not a number of seconds; using %s", GRACE_ENV, text, ORPHAN_GRACE)
        return ORPHAN_GRACE
    return max(seconds, 0.0) if seconds == seconds else ORPHAN_GRACE


@dataclass(frozen=True)
class CallerId:
    """A caller's Ray identity, parsed from its caller id."""

    worker_id: str  # hex
    job_id: str  # hex
    driver: bool


def caller_id() -> str:
    """A new caller id for a ``ClusterSession`` of this process: a random token, then this
    process's Ray worker id, job id and kind (``token:worker:job:d|w``). Without a connected
    Ray, the token alone (such a caller is never taken for dead)."""
    token = secrets.token_hex(8)
    try:
        import ray

        if not ray.is_initialized():
            return token
        context = ray.get_runtime_context()
        worker = context.get_worker_id()
        job = context.get_job_id()
        from ray._private.worker import SCRIPT_MODE, global_worker

        kind = "d" if global_worker.mode == SCRIPT_MODE else "w"
    except Exception:  # pragma: no cover - a Ray without these accessors
        return token
    return f"{token}:{worker}:{job}:{kind}"


def parse(caller: str) -> CallerId | None:
    """The Ray identity in a caller id (``None`` for a bare token)."""
    parts = caller.split(":")
    if len(parts) != 4 or parts[3] not in ("d", "w"):
        return None
    _, worker, job, kind = parts
    try:
        bytes.fromhex(worker)
        bytes.fromhex(job)
    except ValueError:
        return None
    return CallerId(worker, job, kind == "d")


def dead_callers(callers: set[str]) -> set[str]:
    """The callers among ``callers`` that Ray's GCS reports dead: their worker is recorded as
    not alive, or (a driver) their job ended. Blocking (GCS requests): run it in a thread. A
    caller the GCS does not know, or a GCS that does not answer, counts as alive."""
    parsed = {c: parse(c) for c in callers}
    known = {c: p for c, p in parsed.items() if p is not None}
    if not known:
        return set()
    import ray
    from ray._private import state
    from ray.core.generated import gcs_pb2

    accessor = state.state._connect_and_get_accessor()
    worker_record = gcs_pb2.WorkerTableData  # type: ignore[attr-defined]
    dead: set[str] = set()
    ended_jobs: set[str] | None = None
    for caller, who in known.items():
        raw = accessor.get_worker_info(ray.WorkerID(bytes.fromhex(who.worker_id)))
        if raw is not None and not worker_record.FromString(raw).is_alive:
            dead.add(caller)
            continue
        if who.driver:
            if ended_jobs is None:
                jobs = state.state.job_table()  # type: ignore[no-untyped-call]
                ended_jobs = {j["JobID"] for j in jobs if j["IsDead"]}
            if who.job_id in ended_jobs:
                dead.add(caller)
    return dead
