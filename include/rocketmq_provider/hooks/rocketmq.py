"""RocketMQHook: turns a ``rocketmq`` Airflow connection into the core's ClusterAdmin."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from airflow.sdk import BaseHook

from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.errors import RocketMQError
from rocketmq_core.migration import verify
from rocketmq_core.remoting.client import Credentials

T = TypeVar("T")


@dataclass(frozen=True)
class ClusterEndpoint:
    """Where a cluster is and how to sign requests to it, read from one connection."""

    namesrv_addrs: list[str]
    credentials: Credentials | None
    cluster_name: str | None
    timeout: float

    def admin(self) -> ClusterAdmin:
        return ClusterAdmin(self.namesrv_addrs, self.credentials, timeout=self.timeout, cluster=self.cluster_name)


def endpoint_from_connection(conn: Any) -> ClusterEndpoint:
    extra = conn.extra_dejson or {}
    listed = extra.get("namesrv_addrs") or ""
    addrs = [a.strip() for a in str(listed).replace(",", ";").split(";") if a.strip()]
    if not addrs and conn.host:
        addrs = [f"{conn.host}:{conn.port or 9876}"]
    if not addrs:
        raise RocketMQError(f"connection {conn.conn_id!r} names no name server (host or namesrv_addrs)")
    credentials = Credentials(conn.login, conn.password or "") if conn.login else None
    return ClusterEndpoint(addrs, credentials, extra.get("cluster_name") or None,
                           float(extra.get("timeout") or 5))


class RocketMQHook(BaseHook):
    """Admin access to one RocketMQ cluster named by an Airflow connection.

    The access key is the connection's login and the secret key its password, so Airflow's
    secret masking covers the secret wherever it could be printed.
    """

    conn_name_attr = "rocketmq_conn_id"
    default_conn_name = "rocketmq_default"
    conn_type = "rocketmq"
    hook_name = "RocketMQ"

    def __init__(self, rocketmq_conn_id: str = default_conn_name, **kwargs: Any):
        super().__init__(**kwargs)
        self.rocketmq_conn_id = rocketmq_conn_id

    def get_endpoint(self) -> ClusterEndpoint:
        return endpoint_from_connection(self.get_connection(self.rocketmq_conn_id))

    async def aget_endpoint(self) -> ClusterEndpoint:
        """Async connection access, for triggers (sync access would block the triggerer loop)."""
        return endpoint_from_connection(await self.aget_connection(self.rocketmq_conn_id))

    def namesrv(self) -> str:
        """The connection's name servers as clients take them, ``host:port;host:port`` (no credentials)."""
        return ";".join(self.get_endpoint().namesrv_addrs)

    def get_conn(self) -> ClusterAdmin:
        return self.get_endpoint().admin()

    def run(self, work: Callable[[ClusterAdmin], Awaitable[T]]) -> T:
        """Run one async admin job to completion from synchronous operator code."""
        endpoint = self.get_endpoint()

        async def _job() -> T:
            async with endpoint.admin() as admin:
                return await work(admin)

        return asyncio.run(_job())

    def test_connection(self) -> tuple[bool, str]:
        try:
            brokers = self.run(lambda admin: admin.brokers())
        except RocketMQError as exc:
            return False, str(exc)
        if not brokers:
            endpoint = self.get_endpoint()
            which = f"of cluster {endpoint.cluster_name!r} " if endpoint.cluster_name else ""
            return False, f"no broker {which}is registered at {';'.join(endpoint.namesrv_addrs)}"
        return True, f"{len(brokers)} broker(s): " + ", ".join(b.name for b in brokers)


def verify_conditions(conditions: list[dict[str, Any]], connections: dict[str, str],
                      broker_sets: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    """Evaluate serialised core conditions now, each on the connection of its side and bound to
    the run's broker set there; each observation also names its ``conn_id``."""
    seen = []
    for condition in conditions:
        conn_id = connections[condition["side"]]
        brokers = list((broker_sets or {}).get(conn_id, []))
        observation = RocketMQHook(conn_id).run(lambda admin, c=condition: verify(c, admin, brokers))
        seen.append({**observation, "conn_id": conn_id})
    return seen
