"""The replicator's consumer group on the side it reads: removed for good when a task is deleted."""

from __future__ import annotations

import asyncio

from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.errors import RocketMQError

#: Longer than a broker holds a pull: the worker's suspend (5 s) plus the hold service's check interval.
HELD_PULL_SECONDS = 12.0


async def delete_replicator_group(admin: ClusterAdmin, group: str, cluster: str | None = None,
                                  held_pull_seconds: float = HELD_PULL_SECONDS, attempts: int = 3) -> list[str]:
    """Delete the group and its offsets on every master; returns the masters' addresses.

    A broker answers the long-poll pulls a stopped worker left behind once they time out, and
    auto-creates the group again (seen on 4.9, seconds after the delete): delete until it stays
    gone for longer than a held pull can last.
    """
    brokers = [b.master for b in await admin.masters(cluster) if b.master]
    back = brokers
    for _ in range(attempts):
        await admin.gather(admin.delete_group(addr, group) for addr in brokers)
        await asyncio.sleep(held_pull_seconds)
        back = [a for a, configs in zip(brokers, await admin.gather(admin.group_configs(addr) for addr in brokers))
                if group in configs]
        if not back:
            return brokers
    raise RocketMQError(f"group {group} keeps coming back on {back}: is a worker still running?")
