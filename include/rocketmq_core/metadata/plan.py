"""Ordered actions that make the target carry what a diff found missing or different."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rocketmq_core import acl
from rocketmq_core.errors import InvalidSpec
from rocketmq_core.metadata.diff import Change, MetadataDiff, describe, layout_dict
from rocketmq_core.metadata.fields import CREATE, DELETE, KIND_GROUP, KIND_TOPIC, UPDATE, FieldChange
from rocketmq_core.model import GroupConfig, Share, TopicConfig, validate_group_name, validate_topic_name

_FILTER_TYPES = {"SINGLE_TAG", "MULTI_TAG"}


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
                "summary": describe(self.op, self.kind, self.desired, self.fields, self.layout, self.note),
                "fields": [f.to_dict() for f in self.fields], **layout_dict(self.layout, self.note)}


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
