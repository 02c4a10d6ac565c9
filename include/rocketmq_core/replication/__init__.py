"""Cross-cluster replication, free of Airflow: the wire pieces (codec, remote), the decisions
(policy), the task config (config) and the worker process (worker, composing queue_runner,
membership, routes and stats).

``ReplicationWorker`` is imported lazily so that ``python -m rocketmq_core.replication.worker``
does not load the module twice.
"""

from typing import Any

from rocketmq_core.replication.config import Endpoint, ReplicationConfig, StartPosition, Tuning, default_group
from rocketmq_core.replication.policy import HOPS_PROPERTY, ORIGIN_PROPERTY

__all__ = ["Endpoint", "ReplicationConfig", "ReplicationWorker", "StartPosition", "Tuning", "default_group",
           "HOPS_PROPERTY", "ORIGIN_PROPERTY"]


def __getattr__(name: str) -> Any:
    if name == "ReplicationWorker":
        from rocketmq_core.replication.worker import ReplicationWorker
        return ReplicationWorker
    raise AttributeError(name)
