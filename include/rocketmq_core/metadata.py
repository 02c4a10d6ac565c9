"""Cluster metadata: scope, snapshot, diff, plan and apply, mqadmin exportMetadata files.

A migration first makes the target carry the source's topics, groups and ACL entries. This
module reads both clusters in one request per broker and kind, says what differs in terms a
reviewer can check, and applies exactly that, idempotently. ACL entries are in snapshots and
diffs but not in the exportMetadata format (it has no place for them, and files leak secrets).

Normalisation rules (what a diff compares, and why), applied identically by ``diff``, by
``apply_plan``'s "already done?" check and by its verification:

1. Only user metadata is in scope: system topics (``model.is_system_topic`` plus the broker's
   own list, which names e.g. the cluster and broker topics), %RETRY% and %DLQ% topics, and
   system groups (``model.is_system_group``) are always out, whatever the patterns say.
2. Topic queue counts are cluster totals, summed over the master brokers holding the topic,
   as ``mqadmin exportMetadata -c`` writes them, and a topic's perm is the widest of its
   brokers'; ``layout`` keeps where it lives: each broker's queue counts and perm (``Share``).
   Between two live clusters the diff compares per target broker what the source's layout maps
   to (``BrokerMapping``: names or sorted order broker to broker, else a topic on some brokers
   stays on as many, one on every broker goes on every broker with the same per-broker counts),
   with the widest perm on every broker unless ``Scope.per_broker_perm``. A source without
   layout (an imported file) gives totals: kept as the target already splits them, else spread
   evenly (``split_queues``) over the brokers holding the topic, or all masters for a new one.
   A file's perm is one broker's (mqadmin keeps the last broker it read), so it only widens.
3. Whether a topic is ordered is decided by the name server's ORDER_TOPIC_CONFIG table when
   it has one: ``mqadmin updateTopic -o true`` writes it, and every broker (4.9 and 5.x) copies
   it into its topic configs at each registration, so a broker's flag may lag by up to 30 s.
   Without that table the flag of 5.x brokers counts; a 4.9 broker ignores the flag in create
   requests, so its own flag is only ever a (possibly stale) copy of the table.
4. Topic attributes and the group fields 4.9 does not have (consumeMessageOrderly,
   consumeTimeoutMinute, groupRetryPolicy, groupSysFlag, attributes) are compared only when
   both sides are 5.x; a side without them would make every object look changed. Attribute
   defaults count as set (absent message.type = NORMAL, as the broker reads it), and an
   absent or null-only groupRetryPolicy equals the 5.x default ``{"type": "CUSTOMIZED"}``.
   When they are not compared, apply keeps the target's values instead of resetting them.
5. A group is the same on every master; the first broker by name stands for the cluster and
   retryQueueNums is not summed. mqadmin exportMetadata sums it over the masters: a file's
   value equal to that sum on the target counts as the target's per-broker value.
6. ACL entries are compared per kind (4.9 plain accounts, 5.x users, 5.x policies) and only
   when that kind could be read on both sides; secrets are compared but shown as ``***``.
"""

from __future__ import annotations

import fnmatch
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from rocketmq_core import acl
from rocketmq_core.acl import AclEntry, AclState
from rocketmq_core.admin import BrokerInfo, ClusterAdmin, gather_all, gc_paused
from rocketmq_core.errors import InvalidSpec, ProtocolError, QueryNotFound, RocketMQError
from rocketmq_core.model import (
    GroupConfig, Share, TopicConfig, is_system_group, is_system_topic, validate_group_name, validate_topic_name,
)
from rocketmq_core.remoting.fastjson import loads

KIND_TOPIC = "topic"
KIND_GROUP = "group"
CREATE, UPDATE, DELETE = "create", "update", "delete"

#: Name server KV requests (same codes in 4.9 and 5.x) and the namespace of ordered topics.
PUT_KV_CONFIG = 100
DELETE_KV_CONFIG = 102
GET_KVLIST_BY_NAMESPACE = 219
ORDER_NAMESPACE = "ORDER_TOPIC_CONFIG"

#: 5.x topic attributes and the value a topic without the attribute behaves as (TopicAttributes).
TOPIC_ATTRIBUTE_DEFAULTS = {"message.type": "NORMAL", "queue.type": "SimpleCQ", "cleanup.policy": "DELETE",
                            "reserve.time": "-1"}
DEFAULT_RETRY_POLICY: dict[str, Any] = {"type": "CUSTOMIZED"}
#: SubscriptionGroupConfig keys a 4.9 broker does not have.
V5_GROUP_KEYS = ("consumeMessageOrderly", "groupRetryPolicy", "groupSysFlag", "consumeTimeoutMinute", "attributes")
_FILTER_TYPES = {"SINGLE_TAG", "MULTI_TAG"}
E = TypeVar("E", bound=AclEntry)


# --- scope ----------------------------------------------------------------------------------

def _patterns(value: str | Iterable[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


_PATTERN_KEYS = ("topics", "exclude_topics", "groups", "exclude_groups", "acl", "exclude_acl")


@dataclass(frozen=True)
class Scope:
    """Which topics, groups and ACL principals a diff covers (fnmatch include and exclude
    patterns), and how topics land on the target's brokers (rule 2).

    Matching is case-sensitive, like RocketMQ names. System metadata is never in scope.
    ``broker_map`` pins source brokers to target brokers; ``per_broker_perm`` copies each
    source broker's perm instead of the widest, for a user who wants a broker kept read-only.
    """

    topics: tuple[str, ...] = ("*",)
    exclude_topics: tuple[str, ...] = ()
    groups: tuple[str, ...] = ("*",)
    exclude_groups: tuple[str, ...] = ()
    acl: tuple[str, ...] = ("*",)
    exclude_acl: tuple[str, ...] = ()
    broker_map: Mapping[str, str] = field(default_factory=dict, hash=False)
    per_broker_perm: bool = False

    def __post_init__(self) -> None:
        for name in _PATTERN_KEYS:
            object.__setattr__(self, name, _patterns(getattr(self, name)))  # a bare string is one pattern
        if not isinstance(self.broker_map, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.broker_map.items()):
            raise InvalidSpec(f"broker_map must map source broker names to target broker names, "
                              f"not {self.broker_map!r}")
        object.__setattr__(self, "broker_map", dict(self.broker_map))

    def topic(self, name: str, system_topics: frozenset[str] = frozenset()) -> bool:
        return not is_system_topic(name, system_topics) and _matches(name, self.topics, self.exclude_topics)

    def group(self, name: str) -> bool:
        return not is_system_group(name) and _matches(name, self.groups, self.exclude_groups)

    def principal(self, name: str) -> bool:
        return _matches(name, self.acl, self.exclude_acl)

    def to_dict(self) -> dict[str, Any]:
        return {**{k: list(getattr(self, k)) for k in _PATTERN_KEYS}, "broker_map": dict(self.broker_map),
                "per_broker_perm": self.per_broker_perm}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scope:
        unknown = set(data) - set(cls().to_dict())
        if unknown:
            raise InvalidSpec(f"unknown scope keys {sorted(unknown)}")
        return cls(**data)


def _matches(name: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    return (any(fnmatch.fnmatchcase(name, p) for p in include)
            and not any(fnmatch.fnmatchcase(name, p) for p in exclude))


# --- snapshot -------------------------------------------------------------------------------

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
        gather_all(*(_read_broker(admin, b, include_acl) for b in masters)), _order_conf(admin))
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


async def _order_conf(admin: ClusterAdmin) -> dict[str, str]:
    """The name server's ordered topics: topic -> ``broker:queues;broker2:queues``."""
    try:
        resp = await admin.namesrv_invoke(GET_KVLIST_BY_NAMESPACE, {"namespace": ORDER_NAMESPACE})
    except QueryNotFound:  # no ordered topic at all
        return {}
    table = (loads(resp.body) if resp.body else {}).get("table") or {}
    return {str(k): str(v) for k, v in table.items()}


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
            topics[name] = replace(cfg if seen is None else seen, order=order,
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


# --- comparable fields (the normalisation rules) --------------------------------------------

def topic_fields(topic: TopicConfig, v5: bool) -> dict[str, object]:
    """The fields a diff compares for a topic (rules 2 to 4), by wire name."""
    fields: dict[str, object] = {
        "readQueueNums": topic.read_queues, "writeQueueNums": topic.write_queues, "perm": topic.perm,
        "order": topic.order, "topicSysFlag": topic.sys_flag, "topicFilterType": topic.filter_type,
    }
    if v5:
        attributes = {**TOPIC_ATTRIBUTE_DEFAULTS, **topic.attributes}
        fields.update({f"attributes.{k}": v for k, v in sorted(attributes.items())})
    return fields


def group_fields(group: GroupConfig, v5: bool) -> dict[str, object]:
    """The fields a diff compares for a group (rule 4), by wire name."""
    fields: dict[str, object] = {
        "consumeEnable": group.consume_enable, "consumeFromMinEnable": group.consume_from_min,
        "consumeBroadcastEnable": group.broadcast, "retryQueueNums": group.retry_queues,
        "retryMaxTimes": group.retry_max_times, "brokerId": group.broker_id,
        "whichBrokerWhenConsumeSlowly": group.which_broker_when_slow,
        "notifyConsumerIdsChangedEnable": group.notify_ids_changed,
    }
    if v5:
        fields.update({
            "consumeMessageOrderly": group.orderly, "consumeTimeoutMinute": group.consume_timeout_minute,
            "groupSysFlag": group.sys_flag, "groupRetryPolicy": _retry_policy(group.retry_policy),
        })
        fields.update({f"attributes.{k}": v for k, v in sorted(group.attributes.items())})
    return fields


def _retry_policy(policy: Mapping[str, Any] | None) -> str:
    cleaned = {k: v for k, v in (policy or {}).items() if v is not None} or DEFAULT_RETRY_POLICY
    return json.dumps(cleaned, sort_keys=True, separators=(",", ":"))


def _fields(kind: str, obj: Any, v5: bool) -> dict[str, object]:
    if kind == KIND_TOPIC:
        return topic_fields(obj, v5)
    if kind == KIND_GROUP:
        return group_fields(obj, v5)
    return obj.fields()


# --- layout across brokers (rule 2) ---------------------------------------------------------

@dataclass(frozen=True)
class BrokerMapping:
    """Where a live source's topics go on a live target's brokers.

    ``pairs`` maps brokers one to one: the user's ``broker_map``, then equal names, then the
    rest in sorted order when as many are left on both sides (source broker i -> target broker
    i). A topic whose brokers all have a pair keeps its per-broker layout; otherwise a topic on
    some source brokers stays on as many (a topic pinned to one broker stays on one), and one
    on every source broker goes on every target broker.
    """

    source: tuple[str, ...]
    target: tuple[str, ...]
    pairs: Mapping[str, str]
    per_broker_perm: bool = False

    @classmethod
    def of(cls, source: ClusterSnapshot, target: ClusterSnapshot, scope: Scope = Scope()) -> BrokerMapping | None:
        """None unless both sides were read from brokers (a file has no layout)."""
        if not source.brokers or not target.brokers:
            return None
        src, tgt = tuple(sorted(b.name for b in source.brokers)), tuple(sorted(b.name for b in target.brokers))
        wrong = sorted(set(scope.broker_map) - set(src)) + sorted(set(scope.broker_map.values()) - set(tgt))
        if wrong:
            raise InvalidSpec(f"broker_map names unknown broker(s) {', '.join(wrong)}: the source's masters are "
                              f"{', '.join(src)}, the target's {', '.join(tgt)}")
        pairs = dict(scope.broker_map)
        pairs.update({b: b for b in src if b in tgt and b not in pairs})
        rest_src = [b for b in src if b not in pairs]
        rest_tgt = [b for b in tgt if b not in pairs.values()]
        if len(rest_src) == len(rest_tgt):
            pairs.update(zip(rest_src, rest_tgt))
        return cls(src, tgt, pairs, scope.per_broker_perm)

    def _rule(self, brokers: Sequence[str]) -> str:
        if all(b in self.pairs for b in brokers):
            return "pairs"
        return "some" if len(brokers) < len(self.source) else "every"

    def place(self, shares: Mapping[str, Share]) -> dict[str, Share]:
        """The target's shares of a topic that has ``shares`` on the source."""
        if len(shares) == 1:  # the common case, fast: 20,000 topics are placed in every diff
            (name, share), = shares.items()
            if name in self.pairs:
                return {self.pairs[name]: share}
        widest = _widest(shares.values())
        names = sorted(shares)
        rule = self._rule(names)
        if rule == "every":
            counts = {(s.read, s.write) for s in shares.values()}
            if len(counts) == 1:
                (read, write), = counts
                return {t: Share(read, write, widest) for t in self.target}
            return _spread(sum(s.read for s in shares.values()), sum(s.write for s in shares.values()), widest,
                           {}, self.target)
        targets = [self.pairs[b] for b in names] if rule == "pairs" else \
            [self.target[i % len(self.target)] for i in range(len(names))]
        layout: dict[str, Share] = {}
        for target, name in zip(targets, names):
            share = shares[name]
            perm = share.perm if self.per_broker_perm else widest
            have = layout.get(target)
            layout[target] = Share(share.read, share.write, perm) if have is None else \
                Share(have.read + share.read, have.write + share.write, have.perm | perm)
        return layout

    def explain(self, shares: Mapping[str, Share]) -> str:
        """The rule that placed a topic, and the source brokers' perms when they disagree."""
        names = sorted(shares)
        rule = self._rule(names)
        if rule == "pairs":
            text = ", ".join(f"{b} -> {self.pairs[b]}" for b in names)
        elif rule == "some":
            text = f"on {len(names)} of {len(self.source)} source brokers: stays on {min(len(names), len(self.target))}"
        else:
            text = "on every source broker: on every target broker"
        if len({s.perm for s in shares.values()}) > 1:
            text += (f"; source brokers disagree on perm ({', '.join(f'{b} {shares[b].perm}' for b in names)}): "
                     + ("each keeps its own" if self.per_broker_perm else
                        f"perm {_widest(shares.values())} (the widest) on every target broker"))
        return text


def _widest(shares: Iterable[Share]) -> int:
    perm = 0
    for share in shares:
        perm |= share.perm
    return perm


def _spread(read: int, write: int, perm: int, have: Mapping[str, Share], brokers: Sequence[str]) -> dict[str, Share]:
    """Totals on the target: split as the target already splits them, else evenly over the
    brokers holding the topic (all of ``brokers`` for a new one)."""
    if have and (sum(s.read for s in have.values()), sum(s.write for s in have.values())) == (read, write):
        return {b: Share(s.read, s.write, perm) for b, s in have.items()}
    names = sorted(have) or list(brokers)
    reads, writes = split_queues(read, names), split_queues(write, names)
    return {b: Share(reads[b], writes[b], perm) for b in names if reads[b] or writes[b]}


def _totals(topic: TopicConfig, layout: Mapping[str, Share]) -> TopicConfig:
    """The topic as a cluster holding ``layout`` shows it (rule 2)."""
    shares = list(layout.values())
    totals = shares[0] if len(shares) == 1 else Share(sum(s.read for s in shares), sum(s.write for s in shares),
                                                      _widest(shares))
    if totals == (topic.read_queues, topic.write_queues, topic.perm):
        return topic
    return replace(topic, read_queues=totals.read, write_queues=totals.write, perm=totals.perm)


def _share_changes(want: Mapping[str, Share], have: Mapping[str, Share]) -> tuple[FieldChange, ...]:
    """One field per broker whose share differs, named ``queues@<broker>``."""
    return tuple(FieldChange(f"queues@{b}", str(want[b]) if b in want else "absent",
                             str(have[b]) if b in have else "absent")
                 for b in sorted(want.keys() | have.keys()) if want.get(b) != have.get(b))


def _layout_text(layout: Mapping[str, Share] | None, note: str) -> str:
    if not layout:
        return ""
    return "; on " + ", ".join(f"{b} {s}" for b, s in sorted(layout.items())) + (f" ({note})" if note else "")


# --- diff -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class FieldChange:
    """One field that differs; secret values are already masked here."""

    field: str
    source: object
    target: object

    def to_dict(self) -> dict[str, object]:
        return {"field": self.field, "source": self.source, "target": self.target}


@dataclass(frozen=True)
class Change:
    """Create (only on the source), update (on both, fields differ) or delete (only on the target)."""

    action: str
    kind: str
    name: str
    fields: tuple[FieldChange, ...] = ()
    source: Any = field(default=None, repr=False, compare=False)
    target: Any = field(default=None, repr=False, compare=False)
    #: A topic's wanted share per target broker (rule 2), and the rule that chose it.
    layout: Mapping[str, Share] | None = field(default=None, compare=False)
    note: str = field(default="", compare=False)

    def summary(self) -> str:
        """One line, no secrets: the object created or deleted, or each field's target -> source."""
        return _describe(self.action, self.kind, self.target if self.action == DELETE else self.source, self.fields,
                         self.layout, self.note)

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "kind": self.kind, "name": self.name,
                "fields": [f.to_dict() for f in self.fields], "summary": self.summary(),
                **_layout_dict(self.layout, self.note)}


@dataclass(frozen=True)
class MetadataDiff:
    """What the target lacks (create), has differently (update) or has in addition (delete)."""

    changes: tuple[Change, ...] = ()
    notes: tuple[str, ...] = ()
    compare_v5: bool = False
    scope: Scope = Scope()

    @property
    def empty(self) -> bool:
        return not self.changes

    def of(self, action: str | None = None, kind: str | None = None) -> list[Change]:
        return [c for c in self.changes if action in (None, c.action) and kind in (None, c.kind)]

    def find(self, kind: str, name: str) -> Change | None:
        return next((c for c in self.changes if c.kind == kind and c.name == name), None)

    def counts(self) -> dict[str, int]:
        return {a: len(self.of(a)) for a in (CREATE, UPDATE, DELETE)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (Airflow XCom); secrets are masked."""
        return {"empty": self.empty, "counts": self.counts(), "compare_v5": self.compare_v5,
                "scope": self.scope.to_dict(), "notes": list(self.notes),
                "changes": [c.to_dict() for c in self.changes]}

    def render(self) -> str:
        """A text table, one row per changed field (per object for create and delete)."""
        if self.empty:
            return "no differences in scope\n" + "".join(f"note: {n}\n" for n in self.notes)
        rows = [("ACTION", "KIND", "NAME", "FIELD", "SOURCE", "TARGET")]
        for c in self.changes:
            if c.action == UPDATE:
                rows += [(c.action, c.kind, c.name, f.field, _cell(f.source), _cell(f.target)) for f in c.fields]
            elif c.action == CREATE:
                rows.append((c.action, c.kind, c.name, "-", c.summary(), "(missing)"))
            else:
                rows.append((c.action, c.kind, c.name, "-", "(missing)", c.summary()))
        counts = ", ".join(f"{n} {a}" for a, n in self.counts().items())
        return _table(rows) + f"{len(self.changes)} changes: {counts}\n" + "".join(f"note: {n}\n" for n in self.notes)


def diff(source: ClusterSnapshot, target: ClusterSnapshot, scope: Scope = Scope()) -> MetadataDiff:
    """Compare two snapshots under the module's normalisation rules."""
    v5 = source.v5 and target.v5
    changes = [
        *_diff_topics(source, target, scope, v5),
        *_diff_table(KIND_GROUP, _wanted_groups(source, target), target.groups, lambda n, _: scope.group(n), v5),
    ]
    notes = [] if v5 else ["5.x-only fields (topic attributes, group consumeMessageOrderly, consumeTimeoutMinute, "
                           "groupRetryPolicy, groupSysFlag) not compared: "
                           f"{'source' if not source.v5 else 'target'} is not 5.x"]
    for kind in acl.ACL_KINDS:
        src, tgt = source.acl.of_kind(kind), target.acl.of_kind(kind)
        if src is None or tgt is None:
            if src is not None or tgt is not None:
                notes.append(f"{kind} not compared: not readable on {'source' if src is None else 'target'}")
            continue
        changes += _diff_table(kind, src, tgt, lambda _, e: scope.principal(acl.principal(e)), v5)
    return MetadataDiff(tuple(changes), tuple(notes), v5, scope)


def _diff_topics(source: ClusterSnapshot, target: ClusterSnapshot, scope: Scope, v5: bool) -> list[Change]:
    """Topics compared as totals and, when the target was read from brokers, per broker (rule 2)."""
    mapping = BrokerMapping.of(source, target, scope)
    brokers = sorted(b.name for b in target.brokers)
    changes = []
    for name in sorted(set(source.topics) | set(target.topics)):
        src, tgt = source.topics.get(name), target.topics.get(name)
        if not scope.topic(name):
            continue
        if src is None:
            changes.append(Change(DELETE, KIND_TOPIC, name, target=tgt))
            continue
        have = target.layout.get(name, {})
        if mapping is not None:
            layout: dict[str, Share] | None = mapping.place(source.layout[name])
        elif brokers:  # a file's perm is one broker's: it widens, never narrows
            layout = _spread(src.read_queues, src.write_queues, src.perm | (tgt.perm if tgt else 0), have, brokers)
        else:
            layout = None
        want = src if layout is None else _totals(src, layout)
        if tgt is not None and want == tgt and (layout is None or layout == have):
            continue  # equal objects are equal under every rule: skip the field-by-field compare
        note = mapping.explain(source.layout[name]) if mapping is not None else ""
        if tgt is None:
            changes.append(Change(CREATE, KIND_TOPIC, name, source=want, layout=layout, note=note))
            continue
        fields = field_changes(topic_fields(want, v5), topic_fields(tgt, v5))
        if layout is not None and len(layout.keys() | have.keys()) > 1:
            fields += _share_changes(layout, have)
        if fields:
            changes.append(Change(UPDATE, KIND_TOPIC, name, fields, source=want, target=tgt, layout=layout, note=note))
    return changes


def _wanted_groups(source: ClusterSnapshot, target: ClusterSnapshot) -> Mapping[str, GroupConfig]:
    """Rule 5 for a file read against live brokers: a retryQueueNums equal to the sum over the
    target's masters holding the group (all alike) is mqadmin's sum, so their own value."""
    if source.brokers or not target.brokers:
        return source.groups
    wanted = dict(source.groups)
    for name, group in source.groups.items():
        values = [b.groups[name].retry_queues for b in target.brokers if name in b.groups]
        if len(set(values)) == 1 and group.retry_queues == sum(values) != values[0]:
            wanted[name] = replace(group, retry_queues=values[0])
    return wanted


def _diff_table(kind: str, source: Mapping[str, Any], target: Mapping[str, Any],
                in_scope: Callable[[str, Any], bool], v5: bool) -> list[Change]:
    changes = []
    for name in sorted(set(source) | set(target)):
        src, tgt = source.get(name), target.get(name)
        if src == tgt or not in_scope(name, src if src is not None else tgt):
            continue  # equal objects are equal under every rule: skip the field-by-field compare
        if tgt is None:
            changes.append(Change(CREATE, kind, name, source=src))
        elif src is None:
            changes.append(Change(DELETE, kind, name, target=tgt))
        else:
            fields = field_changes(_fields(kind, src, v5), _fields(kind, tgt, v5))
            if fields:
                changes.append(Change(UPDATE, kind, name, fields, source=src, target=tgt))
    return changes


def field_changes(source: Mapping[str, object], target: Mapping[str, object]) -> tuple[FieldChange, ...]:
    keys = list(source) + [k for k in target if k not in source]
    return tuple(FieldChange(k, _masked(k, source.get(k)), _masked(k, target.get(k)))
                 for k in keys if source.get(k) != target.get(k))


def _masked(key: str, value: object) -> object:
    return acl.MASK if key in acl.SECRET_FIELDS and value else value


def _describe(action: str, kind: str, obj: Any, fields: Sequence[FieldChange],
              layout: Mapping[str, Share] | None = None, note: str = "") -> str:
    if action == UPDATE:
        text = ", ".join(f"{f.field}: {_cell(f.target)} -> {_cell(f.source)}" for f in fields)
    else:
        text = _summary(kind, obj)
    return text + _layout_text(layout, note)


def _layout_dict(layout: Mapping[str, Share] | None, note: str) -> dict[str, Any]:
    if layout is None:
        return {}
    return {"layout": {b: s._asdict() for b, s in sorted(layout.items())}, "note": note}


def _summary(kind: str, obj: Any) -> str:
    if kind == KIND_TOPIC:
        base = topic_fields(TopicConfig(obj.name), True)
        shown = {k: v for k, v in topic_fields(obj, True).items()
                 if k in ("readQueueNums", "writeQueueNums", "perm", "order") or base.get(k) != v}
    elif kind == KIND_GROUP:
        base = group_fields(GroupConfig(obj.name), True)
        shown = {k: v for k, v in group_fields(obj, True).items() if base.get(k) != v} or {"defaults": True}
    else:
        shown = {k: v for k, v in acl.describe(obj).items() if k != "name"}
    return " ".join(f"{k}={_cell(v)}" for k, v in shown.items())


def _cell(value: object, width: int = 60) -> str:
    text = json.dumps(value) if isinstance(value, (bool, list, dict)) or value is None else str(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n" for r in rows)


# --- plan -----------------------------------------------------------------------------------

#: Execution order: topics before the groups that consume them, users before their policies,
#: and deletes last, policies before users and groups before topics.
_STEP = {(CREATE, KIND_TOPIC): 0, (UPDATE, KIND_TOPIC): 1, (CREATE, KIND_GROUP): 2, (UPDATE, KIND_GROUP): 3,
         (CREATE, acl.KIND_ACCOUNT): 4, (UPDATE, acl.KIND_ACCOUNT): 4, (CREATE, acl.KIND_USER): 5,
         (UPDATE, acl.KIND_USER): 5, (CREATE, acl.KIND_POLICY): 6, (UPDATE, acl.KIND_POLICY): 6,
         (DELETE, acl.KIND_POLICY): 7, (DELETE, acl.KIND_USER): 8, (DELETE, acl.KIND_ACCOUNT): 8,
         (DELETE, KIND_GROUP): 9, (DELETE, KIND_TOPIC): 10}


@dataclass(frozen=True)
class Action:
    """One step: ``desired`` is the wanted object (create/update) or the one to remove (delete)."""

    op: str
    kind: str
    name: str
    desired: Any = field(default=None, repr=False)
    fields: tuple[FieldChange, ...] = ()
    #: A topic's share per target broker (what each broker gets), and why: see Change.
    layout: Mapping[str, Share] | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "kind": self.kind, "name": self.name,
                "summary": _describe(self.op, self.kind, self.desired, self.fields, self.layout, self.note),
                "fields": [f.to_dict() for f in self.fields], **_layout_dict(self.layout, self.note)}


@dataclass(frozen=True)
class Plan:
    """Ordered actions for a target; deletes only when the plan was made with allow_delete."""

    actions: tuple[Action, ...] = ()
    skipped: tuple[Change, ...] = ()
    compare_v5: bool = False

    @property
    def empty(self) -> bool:
        return not self.actions

    def validate(self) -> None:
        """Raise InvalidSpec for the first action the broker would reject; nothing is sent."""
        for action in self.actions:
            if action.kind == KIND_TOPIC:
                validate_topic_name(action.name)
                if action.op != DELETE:
                    _validate_topic(action.desired)
            elif action.kind == KIND_GROUP:
                validate_group_name(action.name)
                if action.op != DELETE:
                    _validate_group(action.desired)
            elif action.op != DELETE:
                action.desired.validate()

    def to_dict(self) -> dict[str, Any]:
        return {"actions": [a.to_dict() for a in self.actions], "compare_v5": self.compare_v5,
                "skipped": [c.to_dict() for c in self.skipped]}


def make_plan(metadata_diff: MetadataDiff, allow_delete: bool = False) -> Plan:
    """Turn a diff into ordered actions; without allow_delete, deletes are listed as skipped."""
    actions = [Action(c.action, c.kind, c.name, c.source if c.action != DELETE else c.target, c.fields,
                      c.layout, c.note)
               for c in metadata_diff.changes if allow_delete or c.action != DELETE]
    actions.sort(key=lambda a: _STEP[(a.op, a.kind)])
    skipped = () if allow_delete else tuple(metadata_diff.of(DELETE))
    return Plan(tuple(actions), skipped, metadata_diff.compare_v5)


def _validate_topic(topic: TopicConfig) -> None:
    counts = (topic.read_queues, topic.write_queues)
    if any(not isinstance(q, int) or q < 0 for q in counts) or counts == (0, 0):
        raise InvalidSpec(f"topic {topic.name!r}: queue counts {counts} must be non-negative and not both 0")
    if not 0 <= topic.perm <= 7:
        raise InvalidSpec(f"topic {topic.name!r}: perm {topic.perm} is not a combination of 4 (read), "
                          f"2 (write) and 1 (inherit)")
    if topic.filter_type not in _FILTER_TYPES:
        raise InvalidSpec(f"topic {topic.name!r}: filter type {topic.filter_type!r} is not one of {_FILTER_TYPES}")


def _validate_group(group: GroupConfig) -> None:
    if group.retry_queues < 0 or group.retry_max_times < -1:
        raise InvalidSpec(f"group {group.name!r}: retryQueueNums {group.retry_queues} and retryMaxTimes "
                          f"{group.retry_max_times} must be >= 0 and >= -1")


# --- apply ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PlanResult:
    """What apply did (applied), found already done (unchanged) and left out (skipped deletes)."""

    applied: tuple[Action, ...]
    unchanged: tuple[Action, ...]
    skipped: tuple[Change, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"applied": [a.to_dict() for a in self.applied],
                "unchanged": [a.to_dict() for a in self.unchanged],
                "skipped": [c.to_dict() for c in self.skipped]}


async def apply_plan(plan: Plan, admin: ClusterAdmin, cluster: str | None = None) -> PlanResult:
    """Apply a plan to the target, idempotently, and verify it.

    Every action is validated before anything is sent. The target is read first and actions it
    already satisfies are left alone, so re-applying a plan is harmless; per broker only configs
    that differ are sent (5.x's batch create answers success without applying anything when the
    batch holds one unchanged topic). A fresh read afterwards must satisfy every action.
    """
    plan.validate()
    if plan.empty:
        return PlanResult((), (), plan.skipped)
    has_acl = any(a.kind in acl.ACL_KINDS for a in plan.actions)
    current = await take_snapshot(admin, cluster, include_acl=has_acl)
    done = [_satisfied(a, current, plan.compare_v5) for a in plan.actions]
    # split by position: ``a not in pending`` compared every action with every other (quadratic:
    # minutes of CPU for a plan of 10,000 actions)
    pending = tuple(a for a, ok in zip(plan.actions, done) if not ok)
    unchanged = tuple(a for a, ok in zip(plan.actions, done) if ok)
    _check_acl_writable(pending, current)
    await _execute(admin, pending, current, cluster, plan.compare_v5)
    after = await take_snapshot(admin, cluster, include_acl=has_acl)
    left = [a for a in pending if not _satisfied(a, after, plan.compare_v5)]
    if left:
        raise RocketMQError("after apply the target still differs for "
                            + "; ".join(f"{a.op} {a.kind} {a.name}" for a in left))
    return PlanResult(pending, unchanged, plan.skipped)


def _table_of(snapshot: ClusterSnapshot, kind: str) -> Mapping[str, Any] | None:
    if kind == KIND_TOPIC:
        return snapshot.topics
    if kind == KIND_GROUP:
        return snapshot.groups
    return snapshot.acl.of_kind(kind)


def _satisfied(action: Action, snapshot: ClusterSnapshot, v5: bool) -> bool:
    table = _table_of(snapshot, action.kind)
    if table is None:
        raise RocketMQError(f"cannot {action.op} {action.kind} {action.name}: the target's {action.kind} "
                            f"entries are not readable ({'; '.join(snapshot.acl.notes)})")
    have = table.get(action.name)
    if action.op == DELETE:
        return have is None
    if action.kind == KIND_TOPIC:
        layout = _layout_on(action, snapshot)
        return (not _topic_writes(action, layout, snapshot, v5)
                and snapshot.order_conf.get(action.name) == _order_value(action.desired, layout))
    return have is not None and not field_changes(_fields(action.kind, action.desired, v5),
                                                  _fields(action.kind, have, v5))


def _check_acl_writable(actions: Sequence[Action], current: ClusterSnapshot) -> None:
    """Refuse before sending anything when an ACL kind to write is unreadable on some broker."""
    for kind in {a.kind for a in actions if a.kind in acl.ACL_KINDS}:
        blind = [b.name for b in current.brokers if b.acl is None or b.acl.of_kind(kind) is None]
        if blind:
            raise RocketMQError(f"cannot write {kind} entries: not readable on broker(s) {', '.join(blind)}")


async def _execute(admin: ClusterAdmin, pending: Sequence[Action], current: ClusterSnapshot,
                   cluster: str | None, v5: bool) -> None:
    puts = [a for a in pending if a.op != DELETE]
    await _put_topics(admin, current, [a for a in puts if a.kind == KIND_TOPIC], v5)
    await _put_groups(admin, current, [a for a in puts if a.kind == KIND_GROUP], v5)
    for action in (a for a in puts if a.kind in acl.ACL_KINDS):
        await _put_acl(admin, current, action)
    for action in (a for a in pending if a.op == DELETE):
        await _delete(admin, current, action, cluster)


def split_queues(total: int, brokers: Sequence[str]) -> dict[str, int]:
    """Spread a cluster total over brokers: equal shares, the remainder to the first by name."""
    share, extra = divmod(total, len(brokers))
    return {b: share + (1 if i < extra else 0) for i, b in enumerate(sorted(brokers))}


async def _put_topics(admin: ClusterAdmin, current: ClusterSnapshot, actions: Sequence[Action], v5: bool) -> None:
    """Order table first: the broker copies it when it registers the created topic (rule 3)."""
    batches: dict[str, list[TopicConfig]] = {}
    order_puts: dict[str, str | None] = {}
    for action in actions:
        layout = _layout_on(action, current)
        for broker, want in _topic_writes(action, layout, current, v5):
            batches.setdefault(broker.addr, []).append(want)
        value = _order_value(action.desired, layout)
        if current.order_conf.get(action.name) != value:
            order_puts[action.name] = value
    for topic, value in order_puts.items():
        await _put_order_conf(admin, topic, value)
    await gather_all(*(admin.create_topics(addr, cfgs) for addr, cfgs in batches.items()))


def _layout_on(action: Action, current: ClusterSnapshot) -> Mapping[str, Share]:
    """The planned share per broker; a plan made against a file spreads totals (rule 2)."""
    if action.layout is not None:
        return action.layout
    desired: TopicConfig = action.desired
    return _spread(desired.read_queues, desired.write_queues, desired.perm, current.layout.get(action.name, {}),
                   sorted(b.name for b in current.brokers))


def _topic_writes(action: Action, layout: Mapping[str, Share], current: ClusterSnapshot,
                  v5: bool) -> list[tuple[BrokerMetadata, TopicConfig]]:
    """What each broker of the layout lacks. Brokers outside it are left alone: removing a
    topic from one broker is not automated (its queues may hold messages)."""
    brokers = {b.name: b for b in current.brokers}
    missing = sorted(set(layout) - set(brokers))
    if missing:
        raise RocketMQError(f"topic {action.name}: the plan puts it on broker(s) {', '.join(missing)}, which are "
                            f"not masters of the target ({', '.join(sorted(brokers))})")
    writes = []
    for name, share in sorted(layout.items()):
        broker = brokers[name]
        have = broker.topics.get(action.name)
        want = _broker_topic(action.desired, have, broker, share, v5)
        if have is None or field_changes(_broker_topic_fields(want, broker), _broker_topic_fields(have, broker)):
            writes.append((broker, want))
    return writes


def _order_value(desired: TopicConfig, layout: Mapping[str, Share]) -> str | None:
    """The order table's entry: ``broker:writeQueues;...`` (rule 3), None for a topic not ordered."""
    return ";".join(f"{b}:{s.write}" for b, s in sorted(layout.items()) if s.write) if desired.order else None


def _broker_topic_fields(topic: TopicConfig, broker: BrokerMetadata) -> dict[str, object]:
    """What one broker holds of a topic: a 4.9 broker takes no order flag and no attributes."""
    fields = topic_fields(topic, broker.major >= 5)
    if broker.major < 5:
        del fields["order"]
    return fields


def _broker_topic(desired: TopicConfig, have: TopicConfig | None, broker: BrokerMetadata, share: Share,
                  v5: bool) -> TopicConfig:
    """What one broker should hold. Attributes: the desired ones when compared (rule 4), the
    broker's own otherwise; an attribute to drop is set back to its default."""
    current = dict(have.attributes) if have else {}
    if v5:
        attributes = {k: TOPIC_ATTRIBUTE_DEFAULTS[k] for k in current if k in TOPIC_ATTRIBUTE_DEFAULTS}
        attributes.update(desired.attributes)
    else:
        attributes = current
    return replace(desired, read_queues=share.read, write_queues=share.write, perm=share.perm,
                   attributes=attributes if broker.major >= 5 else {})


async def _put_order_conf(admin: ClusterAdmin, topic: str, value: str | None) -> None:
    """Record (or drop) an ordered topic on every name server, as mqadmin updateTopic -o does."""
    for addr in admin.namesrv_addrs:
        if value is None:
            await admin.client.invoke(addr, DELETE_KV_CONFIG, {"namespace": ORDER_NAMESPACE, "key": topic})
        else:
            await admin.client.invoke(addr, PUT_KV_CONFIG, {"namespace": ORDER_NAMESPACE, "key": topic,
                                                            "value": value})


async def _put_groups(admin: ClusterAdmin, current: ClusterSnapshot, actions: Sequence[Action], v5: bool) -> None:
    """Groups go to every master: a consumer may be served by any broker of the cluster."""
    batches: dict[str, list[GroupConfig]] = {}
    for action in actions:
        for broker in current.brokers:
            have = broker.groups.get(action.name)
            want = _broker_group(action.desired, have, v5)
            if have is None or field_changes(group_fields(want, broker.major >= 5),
                                             group_fields(have, broker.major >= 5)):
                batches.setdefault(broker.addr, []).append(want)
    await gather_all(*(admin.create_groups(addr, cfgs) for addr, cfgs in batches.items()))


def _broker_group(desired: GroupConfig, have: GroupConfig | None, v5: bool) -> GroupConfig:
    """When 5.x-only fields are not compared (rule 4), the target keeps its own values."""
    if v5 or have is None:
        return desired
    return replace(desired, orderly=have.orderly, consume_timeout_minute=have.consume_timeout_minute,
                   retry_policy=have.retry_policy, sys_flag=have.sys_flag, attributes=dict(have.attributes))


async def _put_acl(admin: ClusterAdmin, current: ClusterSnapshot, action: Action) -> None:
    """ACL entries live per broker: write every master that lacks or differs."""
    for broker in current.brokers:
        have = (broker.acl.of_kind(action.kind) or {}).get(action.name) if broker.acl else None
        if have is None or field_changes(have.fields(), action.desired.fields()):
            await acl.put_entry(admin, broker.addr, action.desired, have)


async def _delete(admin: ClusterAdmin, current: ClusterSnapshot, action: Action, cluster: str | None) -> None:
    if action.kind == KIND_TOPIC:
        await admin.delete_topic(action.name, cluster)
        if action.name in current.order_conf:
            await _put_order_conf(admin, action.name, None)
        return
    for broker in current.brokers:
        if action.kind == KIND_GROUP:
            if action.name in broker.groups:
                await admin.delete_group(broker.addr, action.name)
        elif broker.acl is not None and action.name in (broker.acl.of_kind(action.kind) or {}):
            await acl.delete_entry(admin, broker.addr, action.desired)
