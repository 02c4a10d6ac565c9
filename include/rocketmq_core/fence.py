"""The source fence: the migrated topics made read-only on every source master before the drain.

Once the producers have moved, a straggler (a stale config, a restarted pod, a producer of a
group no spec lists) must not write where nobody will read. A topic's permission reaches the
clients through its route: the Java client stops sending to a read-only topic at its next route
refresh (``No route info of this topic``). A 4.9 broker does not itself refuse such a send, so
the fence does not stand alone: the cutover still re-measures the topics' writes (checks.
WritesUnchanged) and refuses when anything got through. Consumers keep reading: only the write
bit goes. What each broker had is returned, so lifting the fence restores exactly that.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.model import PERM_WRITE

#: broker name -> topic -> the permission it had before the fence
Perms = dict[str, dict[str, int]]


async def fence_topics(admin: ClusterAdmin, topics: Iterable[str], cluster: str | None = None,
                       expected_brokers: Iterable[str] = ()) -> Perms:
    """Take the write permission of the topics away on every master that holds them."""
    wanted = set(topics)
    before: Perms = {}
    for broker in await admin.masters(cluster, expected_brokers):
        assert broker.master is not None
        configs = await admin.topic_configs(broker.master)
        for name in sorted(wanted & set(configs)):
            config = configs[name]
            before.setdefault(broker.name, {})[name] = config.perm
            if config.perm & PERM_WRITE:
                await admin.create_topic(broker.master, replace(config, perm=config.perm & ~PERM_WRITE))
    return before


async def lift_fence(admin: ClusterAdmin, before: Perms, cluster: str | None = None) -> dict[str, list[str]]:
    """Give every topic back the permission ``fence_topics`` found; broker -> topics restored."""
    restored: dict[str, list[str]] = {}
    for broker in await admin.masters(cluster, before):
        assert broker.master is not None
        configs = await admin.topic_configs(broker.master)
        for name, perm in sorted(before.get(broker.name, {}).items()):
            config = configs.get(name)
            if config is not None and config.perm != perm:
                await admin.create_topic(broker.master, replace(config, perm=perm))
                restored.setdefault(broker.name, []).append(name)
    return restored

