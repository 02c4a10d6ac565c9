"""Who reads the topics of a migration, as the brokers see them rather than as a spec lists them.

A migration moves the fleets its spec names. A group that reads an in-scope topic and is in
no fleet starves once the producers move (and may later join the target without an offset);
a fleet's group that also reads a topic outside the scope is moved whole while that topic's
producers stay behind; a broadcasting group keeps its offsets in its clients, so "drained" says
nothing about it. The census finds each of these on the live cluster, over every master broker.

It also lists the writers: every producer group with a producer connected to any master. A
broker does not know which topics a producer writes, so a writer outside every fleet is not
refused here; it is named at the preflight and in the report, and the fence (which makes the
topics read-only before the cutover) is what stops it writing where nobody will read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.errors import RequestCodeNotSupported
from rocketmq_core.model import RETRY_PREFIX, is_system_group

BROADCASTING = "BROADCASTING"


@dataclass(frozen=True)
class Reader:
    """One consumer group reading in-scope topics: which, what it subscribes to, and how."""

    group: str
    topics: tuple[str, ...]
    subscriptions: tuple[str, ...]
    message_model: str
    online: int


@dataclass(frozen=True)
class Census:
    """The readers of some topics on one cluster, by group, and every producer group's clients
    (``writers``; None when a broker cannot list them: a 4.9 broker before GET_ALL_PRODUCER_INFO)."""

    readers: dict[str, Reader]
    brokers: tuple[str, ...]
    writers: dict[str, tuple[str, ...]] | None = field(default_factory=dict)

    def writers_outside(self, fleet_groups: Iterable[str], left_behind: Iterable[str] = ()) -> dict[str, tuple[str, ...]]:
        """Producer groups online on the cluster that are in no fleet and not left behind on purpose."""
        known = set(fleet_groups) | set(left_behind)
        return {g: c for g, c in sorted((self.writers or {}).items()) if g not in known}

    def problems(self, fleet_groups: Iterable[str], in_scope: Callable[[str], bool],
                 left_behind: Iterable[str] = (), broadcast_allowed: Iterable[str] = ()) -> list[str]:
        """What the spec must decide before anything moves, one sentence each, naming group and topics."""
        fleet, left, broadcast = set(fleet_groups), set(left_behind), set(broadcast_allowed)
        problems = []
        for name, reader in sorted(self.readers.items()):
            if name not in fleet and name not in left:
                problems.append(f"consumer group {name} reads {list(reader.topics)} but is in no fleet"
                                " (add it to a fleet, or to leave_behind)")
            outside = sorted(t for t in reader.subscriptions if not in_scope(t))
            if name in fleet and outside:
                problems.append(f"consumer group {name} also subscribes {outside}, outside the scope:"
                                " moving the group would leave those topics' messages unread")
            if reader.message_model == BROADCASTING and name not in broadcast:
                problems.append(f"consumer group {name} consumes {list(reader.topics)} in broadcasting mode:"
                                " its offsets live in its clients, so no backlog figure covers it"
                                " (name it in broadcast_groups to move it anyway)")
        return problems

    def to_dict(self) -> dict[str, object]:
        writers = None if self.writers is None else {g: list(c) for g, c in sorted(self.writers.items())}
        return {"brokers": list(self.brokers), "writers": writers, "readers": {
            g: {"topics": list(r.topics), "subscriptions": list(r.subscriptions),
                "message_model": r.message_model, "online": r.online} for g, r in sorted(self.readers.items())}}


async def take_census(admin: ClusterAdmin, topics: Iterable[str], cluster: str | None = None,
                      expected_brokers: Iterable[str] = ()) -> Census:
    """Every non-system group that reads one of ``topics`` on any master, with its online
    subscriptions and message model (from its consumers on every master, counted once), and
    every non-system producer group connected to any master."""
    topics = sorted(set(topics))
    masters = await admin.masters(cluster, expected_brokers)
    addrs = [b.master for b in masters if b.master]
    pairs = [(addr, topic) for addr in addrs for topic in topics]
    found = await admin.gather(admin.topic_readers(addr, topic) for addr, topic in pairs)
    reads: dict[str, set[str]] = {}
    for (_, topic), groups in zip(pairs, found):
        for group in groups:
            if not is_system_group(group):
                reads.setdefault(group, set()).add(topic)
    readers = {}
    for group, read in sorted(reads.items()):
        answers = await admin.gather(admin.consumer_connection(addr, group) for addr in addrs)
        subscriptions = sorted({t for a in answers for t in a.subscriptions if not t.startswith(RETRY_PREFIX)})
        models = {a.message_model for a in answers if a.online}
        readers[group] = Reader(group, tuple(sorted(read)), tuple(subscriptions),
                                BROADCASTING if BROADCASTING in models else next(iter(models), ""),
                                len({c.client_id for a in answers for c in a.clients}))
    return Census(readers, tuple(b.name for b in masters), await _writers(admin, addrs))


async def _writers(admin: ClusterAdmin, addrs: list[str]) -> dict[str, tuple[str, ...]] | None:
    try:
        tables = await admin.gather(admin.all_producers(addr) for addr in addrs)
    except RequestCodeNotSupported:
        return None
    clients: dict[str, set[str]] = {}
    for table in tables:
        for group, connections in table.items():
            if not is_system_group(group):
                clients.setdefault(group, set()).update(c.client_id for c in connections)
    return {group: tuple(sorted(ids)) for group, ids in sorted(clients.items())}
