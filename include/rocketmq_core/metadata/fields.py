"""What of an object a diff compares, by wire name (normalisation rules 2 to 4 of the package)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rocketmq_core import acl
from rocketmq_core.model import GroupConfig, TopicConfig

KIND_TOPIC = "topic"
KIND_GROUP = "group"
CREATE, UPDATE, DELETE = "create", "update", "delete"

#: 5.x topic attributes and the value a topic without the attribute behaves as (TopicAttributes).
TOPIC_ATTRIBUTE_DEFAULTS = {"message.type": "NORMAL", "queue.type": "SimpleCQ", "cleanup.policy": "DELETE",
                            "reserve.time": "-1"}
DEFAULT_RETRY_POLICY: dict[str, Any] = {"type": "CUSTOMIZED"}
#: SubscriptionGroupConfig keys a 4.9 broker does not have.
V5_GROUP_KEYS = ("consumeMessageOrderly", "groupRetryPolicy", "groupSysFlag", "consumeTimeoutMinute", "attributes")


@dataclass(frozen=True)
class FieldChange:
    """One field that differs; secret values are already masked here."""

    field: str
    source: object
    target: object

    def to_dict(self) -> dict[str, object]:
        return {"field": self.field, "source": self.source, "target": self.target}


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


def fields_of(kind: str, obj: Any, v5: bool) -> dict[str, object]:
    if kind == KIND_TOPIC:
        return topic_fields(obj, v5)
    if kind == KIND_GROUP:
        return group_fields(obj, v5)
    return obj.fields()


def field_changes(source: Mapping[str, object], target: Mapping[str, object]) -> tuple[FieldChange, ...]:
    if source == target:  # compared in C: a 4.9 and a 5.x config differ as objects, rarely field by field
        return ()
    keys = list(source) + [k for k in target if k not in source]
    return tuple(FieldChange(k, _masked(k, source.get(k)), _masked(k, target.get(k)))
                 for k in keys if source.get(k) != target.get(k))


def _masked(key: str, value: object) -> object:
    return acl.MASK if key in acl.SECRET_FIELDS and value else value
