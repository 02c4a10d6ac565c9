"""Retiring the source topics at the end of a migration: deleted from every source master and
from the name servers, which deletes their messages too.

It is the one step that cannot be rolled back, so it runs only when ``MigrationRun.retirement``
holds on the live source, and only over the run's whole broker set: a broker of that set that is
not registered now would keep its copy of a topic, so nothing is deleted anywhere. What each
broker held is returned (queues, permission, attributes) for the record, and to re-create a
topic by hand.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.errors import RocketMQError

#: broker name -> topic -> its configuration on that broker before the deletion
Held = dict[str, dict[str, dict[str, Any]]]


async def retire_topics(admin: ClusterAdmin, topics: Iterable[str], cluster: str | None = None,
                        expected_brokers: Iterable[str] = ()) -> Held:
    """Delete the topics on every master of the run's broker set, then from every name server."""
    wanted = sorted(set(topics))
    masters = await admin.masters(cluster, expected_brokers)
    held: Held = {}
    for broker, configs in zip(masters, await admin.gather(admin.topic_configs(b.master) for b in masters)):
        held[broker.name] = {name: asdict(configs[name]) for name in wanted if name in configs}
    for done, topic in enumerate(wanted):
        try:
            await admin.delete_topic(topic, cluster, expected_brokers)
        except RocketMQError as exc:
            raise RocketMQError(f"retired {wanted[:done]}, stopped at {topic} (not retired: {wanted[done:]}):"
                                f" {exc}") from exc
    return {broker: topics for broker, topics in held.items() if topics}
