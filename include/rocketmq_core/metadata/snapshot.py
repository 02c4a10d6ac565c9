"""What one cluster holds: read from its master brokers, or from an mqadmin exportMetadata file."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from rocketmq_core import acl
from rocketmq_core.acl import AclEntry, AclState
from rocketmq_core.admin import BrokerInfo, ClusterAdmin, gather_all, gc_paused
from rocketmq_core.errors import InvalidSpec, ProtocolError
from rocketmq_core.metadata.fields import V5_GROUP_KEYS
from rocketmq_core.metadata.scope import Scope
from rocketmq_core.model import GroupConfig, Share, TopicConfig, is_system_group, is_system_topic
from rocketmq_core.remoting.fastjson import loads

E = TypeVar("E", bound=AclEntry)


@dataclass(frozen=True)
class BrokerMetadata:
    """Everything one master broker holds, unfiltered, as read."""

    name: str
    addr: str
    version: str
    topics: Mapping[str, TopicConfig]
    groups: Mapping[str, GroupConfig]
    system_topics: frozenset[str] = frozenset()
    acl: AclState | None = None

    @property
    def major(self) -> int:
        head = self.version.split(".")[0]
        return int(head) if head.isdigit() else 0


@dataclass(frozen=True)
class ClusterSnapshot:
    """The user metadata of one cluster (rule 1), merged over its master brokers (rules 2, 3, 5).

    ``v5`` says whether the 5.x-only fields are meaningful (every broker is 5.x, or an imported
    file carries them). ``brokers`` keeps the raw per-broker view and ``layout`` each topic's
    share per broker; both are empty for an import, which knows cluster totals only.
    """

    topics: Mapping[str, TopicConfig] = field(default_factory=dict)
    groups: Mapping[str, GroupConfig] = field(default_factory=dict)
    v5: bool = False
    acl: AclState = field(default_factory=lambda: AclState(notes=("ACL not read",)))
    layout: Mapping[str, Mapping[str, Share]] = field(default_factory=dict)
    order_conf: Mapping[str, str] = field(default_factory=dict)
    brokers: tuple[BrokerMetadata, ...] = ()
    cluster: str | None = None
    taken_at_ms: int = 0

    @classmethod
    async def take(cls, admin: ClusterAdmin, cluster: str | None = None,
                   include_acl: bool = True) -> ClusterSnapshot:
        return await take_snapshot(admin, cluster, include_acl)

    @property
    def versions(self) -> dict[str, str]:
        return {b.name: b.version for b in self.brokers}

    @property
    def placement(self) -> dict[str, dict[str, tuple[int, int]]]:
        """Per topic, broker -> (read, write) queues: ``layout`` without the perms."""
        return {t: {b: (s.read, s.write) for b, s in shares.items()} for t, shares in self.layout.items()}

    def names_in(self, scope: Scope) -> tuple[list[str], list[str]]:
        """The topics and the groups in scope, sorted: what a migration or a replication task covers."""
        return sorted(t for t in self.topics if scope.topic(t)), sorted(g for g in self.groups if scope.group(g))

    def scoped(self, scope: Scope) -> ClusterSnapshot:
        """The same snapshot with only the topics, groups and ACL entries in scope."""
        return replace(
            self, topics={n: t for n, t in self.topics.items() if scope.topic(n)},
            groups={n: g for n, g in self.groups.items() if scope.group(n)},
            acl=_scoped_acl(self.acl, scope))

    # exportMetadata format ----------------------------------------------------------------

    def to_export(self) -> dict[str, Any]:
        """The ``mqadmin exportMetadata -c`` JSON; 5.x-only keys only when the snapshot has them."""
        return {
            "topicConfigTable": {n: _topic_wire(t, self.v5) for n, t in sorted(self.topics.items())},
            "subscriptionGroupTable": {n: _group_wire(g, self.v5) for n, g in sorted(self.groups.items())},
            "exportTime": self.taken_at_ms or _now_ms(),
        }

    @classmethod
    def from_export(cls, data: Mapping[str, Any] | str | bytes) -> ClusterSnapshot:
        """Read an exportMetadata document (ours or mqadmin's; fastjson quirks are accepted)."""
        try:
            doc = loads(data) if isinstance(data, (str, bytes)) else data
        except (ProtocolError, UnicodeDecodeError) as exc:
            raise InvalidSpec(f"not an exportMetadata document: {exc}") from exc
        if not isinstance(doc, Mapping) or not ({"topicConfigTable", "subscriptionGroupTable"} & set(doc)):
            raise InvalidSpec("not an exportMetadata document: no topicConfigTable or subscriptionGroupTable")
        topic_table = doc.get("topicConfigTable") or {}
        group_table = doc.get("subscriptionGroupTable") or {}
        try:
            topics = {n: TopicConfig.from_wire({**w, "topicName": n}) for n, w in topic_table.items()
                      if not is_system_topic(n)}
            groups = {n: GroupConfig.from_wire({**w, "groupName": n}) for n, w in group_table.items()
                      if not is_system_group(n)}
        except (TypeError, ValueError, AttributeError) as exc:
            raise InvalidSpec(f"malformed exportMetadata entry: {exc}") from exc
        return cls(topics=topics, groups=groups, v5=_looks_v5(topic_table, group_table),
                   acl=AclState(notes=("ACL is not part of the exportMetadata format",)),
                   taken_at_ms=int(doc.get("exportTime") or 0))

    def dump(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_export(), indent=2, sort_keys=True))
        return path

    @classmethod
    def load(cls, path: str | Path) -> ClusterSnapshot:
        return cls.from_export(Path(path).read_bytes())


async def take_snapshot(admin: ClusterAdmin, cluster: str | None = None,
                        include_acl: bool = True) -> ClusterSnapshot:
    """Read every master broker (of one cluster when named) concurrently, and the order table.

    Per broker: one GET_ALL_TOPIC_CONFIG, one GET_ALL_SUBSCRIPTIONGROUP_CONFIG, the system topic
    list, the runtime info (for the version) and, with ``include_acl``, its ACL (acl.read_acl).
    """
    masters = await admin.masters(cluster)
    brokers, order_conf = await gather_all(
        gather_all(*(_read_broker(admin, b, include_acl) for b in masters)), admin.order_table())
    return merge_brokers(list(brokers), order_conf, cluster, include_acl)


async def _read_broker(admin: ClusterAdmin, info: BrokerInfo, include_acl: bool) -> BrokerMetadata:
    addr = info.master or ""
    topics, groups, system, runtime = await gather_all(
        admin.topic_configs(addr), admin.group_configs(addr), admin.system_topics(addr),
        admin.broker_runtime_info(addr))
    version = _version(runtime)
    broker = BrokerMetadata(info.name, addr, version, topics, groups, system)
    if include_acl:
        broker = replace(broker, acl=await acl.read_acl(admin, addr, broker.major))
    return broker


def _version(runtime: Mapping[str, str]) -> str:
    """``V5_5_0`` (brokerVersionDesc) -> ``5.5.0``; empty when the broker does not say."""
    desc = runtime.get("brokerVersionDesc", "")
    return desc[1:].replace("_", ".") if desc.startswith("V") else ""


def merge_brokers(brokers: list[BrokerMetadata], order_conf: Mapping[str, str], cluster: str | None = None,
                  include_acl: bool = True) -> ClusterSnapshot:
    """One cluster view from per-broker reads (rules 1, 2, 3 and 5); brokers sorted by name."""
    with gc_paused():  # tens of thousands of objects: see admin.gc_paused
        return _merge_brokers(brokers, order_conf, cluster, include_acl)


def _merge_brokers(brokers: list[BrokerMetadata], order_conf: Mapping[str, str], cluster: str | None,
                   include_acl: bool) -> ClusterSnapshot:
    brokers = sorted(brokers, key=lambda b: b.name)
    system = frozenset().union(*(b.system_topics for b in brokers))
    topics: dict[str, TopicConfig] = {}
    layout: dict[str, dict[str, Share]] = {}
    for broker in brokers:
        for name, cfg in broker.topics.items():
            if is_system_topic(name, system):
                continue
            layout.setdefault(name, {})[broker.name] = Share(cfg.read_queues, cfg.write_queues, cfg.perm)
            seen = topics.get(name)
            order = _ordered(name, cfg, broker, order_conf) or (seen is not None and seen.order)
            if seen is None and order == cfg.order:
                topics[name] = cfg  # the common case, without the cost of replace()
                continue
            topics[name] = msgspec.structs.replace(
                cfg if seen is None else seen, order=order,
                read_queues=cfg.read_queues + (seen.read_queues if seen else 0),
                write_queues=cfg.write_queues + (seen.write_queues if seen else 0),
                perm=cfg.perm | (seen.perm if seen else 0))
    groups: dict[str, GroupConfig] = {}
    for broker in brokers:
        for name, grp in broker.groups.items():
            if not is_system_group(name):
                groups.setdefault(name, grp)
    return ClusterSnapshot(
        topics=topics, groups=groups, v5=bool(brokers) and all(b.major >= 5 for b in brokers),
        acl=_merge_acl(brokers) if include_acl else AclState(notes=("ACL not read (include_acl=False)",)),
        layout=layout, order_conf=dict(order_conf), brokers=tuple(brokers), cluster=cluster,
        taken_at_ms=_now_ms())


def _ordered(name: str, cfg: TopicConfig, broker: BrokerMetadata, order_conf: Mapping[str, str]) -> bool:
    """Rule 3: the name server's order table when there is one, else a 5.x broker's flag."""
    if order_conf:
        return name in order_conf
    return cfg.order and broker.major >= 5


def _merge_acl(brokers: list[BrokerMetadata]) -> AclState:
    """The first broker's ACL stands for the cluster; brokers that disagree are noted."""
    states = [b.acl for b in brokers if b.acl is not None]
    if not states:
        return AclState(notes=("no broker answered",))
    first, lead = states[0], next(b.name for b in brokers if b.acl is not None)
    notes = [n for s in states for n in s.notes]
    for kind in acl.ACL_KINDS:
        for broker in brokers:
            if broker.acl is not None and broker.acl.of_kind(kind) != first.of_kind(kind):
                notes.append(f"{kind}: broker {broker.name} differs from {lead}; the snapshot shows {lead}'s")
    return replace(first, notes=tuple(notes))


def _scoped_acl(state: AclState, scope: Scope) -> AclState:
    def keep(table: Mapping[str, E] | None) -> dict[str, E] | None:
        return None if table is None else {k: e for k, e in table.items() if scope.principal(acl.principal(e))}

    return AclState(keep(state.accounts), keep(state.users), keep(state.policies), state.notes)


def _topic_wire(topic: TopicConfig, v5: bool) -> dict[str, Any]:
    wire = topic.to_wire()
    if v5:
        wire["attributes"] = dict(topic.attributes)
    else:
        wire.pop("attributes", None)
    return wire


def _group_wire(group: GroupConfig, v5: bool) -> dict[str, Any]:
    wire = group.to_wire()
    if v5:
        wire["attributes"] = dict(group.attributes)
    else:
        for key in V5_GROUP_KEYS:
            wire.pop(key, None)
    return wire


def _looks_v5(topic_table: Mapping[str, Any], group_table: Mapping[str, Any]) -> bool:
    """A 5.x export carries ``attributes`` on topics and the 5.x-only keys on groups."""
    return (any(isinstance(w, Mapping) and "attributes" in w for w in topic_table.values())
            or any(isinstance(w, Mapping) and any(k in w for k in V5_GROUP_KEYS) for w in group_table.values()))


def _now_ms() -> int:
    return int(time.time() * 1000)
