"""Apply a plan to a live target, idempotently, and verify it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from rocketmq_core import acl
from rocketmq_core.admin import ClusterAdmin, gather_all
from rocketmq_core.errors import RocketMQError
from rocketmq_core.metadata.diff import Change
from rocketmq_core.metadata.fields import (
    DELETE, KIND_GROUP, KIND_TOPIC, TOPIC_ATTRIBUTE_DEFAULTS, field_changes, fields_of, group_fields, topic_fields,
)
from rocketmq_core.metadata.layout import spread
from rocketmq_core.metadata.plan import Action, Plan
from rocketmq_core.metadata.snapshot import BrokerMetadata, ClusterSnapshot, take_snapshot
from rocketmq_core.model import GroupConfig, Share, TopicConfig


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
    return have is not None and not field_changes(fields_of(action.kind, action.desired, v5),
                                                  fields_of(action.kind, have, v5))


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
        await admin.put_order(topic, value)
    await gather_all(*(admin.create_topics(addr, cfgs) for addr, cfgs in batches.items()))


def _layout_on(action: Action, current: ClusterSnapshot) -> Mapping[str, Share]:
    """The planned share per broker; a plan made against a file spreads totals (rule 2)."""
    if action.layout is not None:
        return action.layout
    desired: TopicConfig = action.desired
    return spread(desired.read_queues, desired.write_queues, desired.perm, current.layout.get(action.name, {}),
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
    return msgspec.structs.replace(desired, read_queues=share.read, write_queues=share.write, perm=share.perm,
                                   attributes=attributes if broker.major >= 5 else {})


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
    return msgspec.structs.replace(
        desired, orderly=have.orderly, consume_timeout_minute=have.consume_timeout_minute,
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
            await admin.put_order(action.name, None)
        return
    for broker in current.brokers:
        if action.kind == KIND_GROUP:
            if action.name in broker.groups:
                await admin.delete_group(broker.addr, action.name)
        elif broker.acl is not None and action.name in (broker.acl.of_kind(action.kind) or {}):
            await acl.delete_entry(admin, broker.addr, action.desired)
