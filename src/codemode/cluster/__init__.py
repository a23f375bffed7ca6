"""Sessions across machines on Ray (docs/cluster.md): ``pip install codemode[ray]``.

:class:`SessionCluster` starts (or finds) session-host actors on a Ray cluster and opens
:class:`ClusterSession` s on them by load; a session's cells run on a host, its tool calls come
back to the delegate in the process that opened it, and a host that dies takes nothing with it:
its sessions are reopened on live hosts by replay from the shared store.
"""

from .cluster import NAMESPACE, HostInfo, SessionCluster
from .session import ClusterSession

__all__ = ["NAMESPACE", "ClusterSession", "HostInfo", "SessionCluster"]
