"""A real multi-node Ray cluster on this machine, shared by every test of a run.

:func:`acquire` starts it once (``ray.cluster_utils.Cluster``: a head node and one more node,
each its own raylet, on 127.0.0.1 only, one CPU slot each, a small object store, no dashboard)
and connects this process to it; :func:`release` stops it when its last user lets go. The
``ray_cluster`` fixture of ``tests/cluster/conftest.py`` (package scope: the cluster tests share
one start) and the ``cluster`` factory of the scenario suite (module scope) use it, so the
cluster's start (about ten seconds here) is paid at most twice per run, and no Ray process
outlives the tests that need it.
"""

from __future__ import annotations

import os
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Before Ray is imported: a loopback-only cluster, no usage reporting.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

OBJECT_STORE_BYTES = 80 * 1024 * 1024
NODE_CPUS = 1


@dataclass
class RayCluster:
    """The shared cluster: ``address``, the ``Cluster`` object (``cluster.add_node``,
    ``cluster.remove_node``) and a scratch directory for stores."""

    cluster: Any
    address: str
    scratch: Path
    nodes: list[Any] = field(default_factory=list)

    def node_ids(self) -> set[str]:
        import ray

        return {n["NodeID"] for n in ray.nodes() if n["Alive"]}

    def add_node(self) -> Any:
        """Add one more node (a raylet) and wait for it."""
        node = self.cluster.add_node(
            num_cpus=NODE_CPUS, object_store_memory=OBJECT_STORE_BYTES, include_dashboard=False
        )
        self.cluster.wait_for_nodes()
        self.nodes.append(node)
        return node


_CLUSTER: RayCluster | None = None
_USERS = 0
_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_HANDLERS: dict[int, Any] = {}


def acquire() -> RayCluster:
    """The shared cluster, started on first use; pair with :func:`release`.

    Ray installs its own SIGTERM handler in the process that starts a head node or connects a
    driver; the test process's handlers are put back right after, so the rest of the run
    behaves as without Ray."""
    global _CLUSTER, _USERS
    if _CLUSTER is None:
        import ray
        from ray.cluster_utils import Cluster

        _HANDLERS.update({sig: signal.getsignal(sig) for sig in _SIGNALS})

        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": NODE_CPUS,
                "object_store_memory": OBJECT_STORE_BYTES,
                "include_dashboard": False,
            },
        )
        shared = RayCluster(
            cluster, cluster.address, Path(tempfile.mkdtemp(prefix="codemode-ray-"))
        )
        shared.add_node()
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        _restore_signals()
        _CLUSTER = shared
    _USERS += 1
    return _CLUSTER


def release() -> None:
    """One user is done; the last one stops the cluster."""
    global _CLUSTER, _USERS
    _USERS -= 1
    if _USERS > 0 or _CLUSTER is None:
        return
    import ray

    shared, _CLUSTER = _CLUSTER, None
    ray.shutdown()
    shared.cluster.shutdown()
    _restore_signals()


def _restore_signals() -> None:
    for sig, handler in _HANDLERS.items():
        if handler is not None:
            signal.signal(sig, handler)


def run_sync(make: Any) -> Any:
    """Run the coroutine ``make()`` to completion on a fresh event loop in another thread (a
    session-scoped fixture may be set up from inside a test's running loop)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()
