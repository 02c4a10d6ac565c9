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
from typing import Any

import msgspec

from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.errors import RocketMQError

#: broker name -> topic -> its configuration on that broker before the deletion
Held = dict[str, dict[str, dict[str, Any]]]


async def topic_holdings(admin: ClusterAdmin, topics: Iterable[str], cluster: str | None = None,
                         expected_brokers: Iterable[str] = ()) -> Held:
    """What each master of the run's broker set holds of the topics, read before the deletion."""
    wanted = sorted(set(topics))
    masters = await admin.masters(cluster, expected_brokers)
    held: Held = {}
    for broker, configs in zip(masters, await admin.gather(admin.topic_configs(b.master) for b in masters)):
        found = {name: msgspec.structs.asdict(configs[name]) for name in wanted if name in configs}
        if found:
            held[broker.name] = found
    return held


async def retire_topics(admin: ClusterAdmin, topics: Iterable[str], cluster: str | None = None,
                        expected_brokers: Iterable[str] = ()) -> None:
    """Delete the topics on every master of the run's broker set, then from every name server.

    A broker of the set missing refuses before anything is deleted; a failure after that names
    the topics done and the one that may now be gone from some brokers only."""
    wanted = sorted(set(topics))
    await admin.masters(cluster, expected_brokers)  # a broker of the set missing: nothing is touched
    for done, topic in enumerate(wanted):
        try:
            await admin.delete_topic(topic, cluster, expected_brokers)
        except RocketMQError as exc:
            raise RocketMQError(f"retired {wanted[:done]}; {topic} may be deleted on some brokers only; not"
                                f" retired: {wanted[done + 1:]}: {exc}") from exc
