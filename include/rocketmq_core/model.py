"""Metadata objects of a RocketMQ cluster, in one shape for 4.9.x and 5.x.

Each type converts from the broker's JSON (``from_wire``) and back (``to_wire``); the field
names of the wire form are those of the Java classes TopicConfig, SubscriptionGroupConfig and
the queue/offset tables, which is also what mqadmin exportMetadata writes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec

from rocketmq_core.errors import InvalidSpec

PERM_READ = 4
PERM_WRITE = 2
PERM_INHERIT = 1

RETRY_PREFIX = "%RETRY%"
DLQ_PREFIX = "%DLQ%"
SCHEDULE_TOPIC = "SCHEDULE_TOPIC_XXXX"
TIMER_TOPIC = "rmq_sys_wheel_timer"
HALF_TOPIC = "RMQ_SYS_TRANS_HALF_TOPIC"

_NAME = re.compile(r"^[%|a-zA-Z0-9_-]+$")
TOPIC_MAX_LENGTH = 127
GROUP_MAX_LENGTH = 255
_RESERVED_TOPICS = {"TBW102", SCHEDULE_TOPIC, "BenchmarkTest", "SELF_TEST_TOPIC", "OFFSET_MOVED_EVENT",
                    "RMQ_SYS_TRACE_TOPIC", "RMQ_SYS_TRANS_OP_HALF_TOPIC", HALF_TOPIC, TIMER_TOPIC}


def validate_topic_name(name: str) -> str:
    """Reject names the broker would reject, before anything is sent."""
    if not name or not _NAME.match(name):
        raise InvalidSpec(f"topic name {name!r} may contain only letters, digits, %, |, - and _")
    if len(name) > TOPIC_MAX_LENGTH:
        raise InvalidSpec(f"topic name {name[:40]!r}... is {len(name)} characters; RocketMQ allows {TOPIC_MAX_LENGTH}")
    if name in _RESERVED_TOPICS or name.startswith("rmq_sys_"):
        raise InvalidSpec(f"topic name {name!r} is reserved for RocketMQ's own use")
    return name


def validate_group_name(name: str) -> str:
    if not name or not _NAME.match(name):
        raise InvalidSpec(f"group name {name!r} may contain only letters, digits, %, |, - and _")
    if len(name) > GROUP_MAX_LENGTH:
        raise InvalidSpec(f"group name {name[:40]!r}... is {len(name)} characters; RocketMQ allows {GROUP_MAX_LENGTH}")
    return name


#: Prefixes of the topics RocketMQ creates for itself (RMQ_SYS_ROCKSDB_TRANS_HALF_TOPIC among them).
_SYSTEM_TOPIC_PREFIXES = ("rmq_sys_", "RMQ_SYS_", RETRY_PREFIX, DLQ_PREFIX)


def is_system_topic(name: str, system_topics: frozenset[str] = frozenset()) -> bool:
    """Topics RocketMQ creates for itself: never part of a user's scope."""
    return (name in _RESERVED_TOPICS or name in system_topics or name.startswith(_SYSTEM_TOPIC_PREFIXES)
            or name.endswith("_REPLY_TOPIC"))


_SYSTEM_GROUPS = {"SELF_TEST_C_GROUP", "CID_ONSAPI_OWNER", "CID_ONSAPI_PERMISSION", "TOOLS_CONSUMER",
                  "CID_ONS-HTTP-PROXY", "FILTERSRV_CONSUMER", "CID_ONSAPI_PULL", "CID_RMQ_SYS_TRANS",
                  "CID_SYS_RMQ_TRANS", "SCHEDULE_CONSUMER", "CID_DefaultHeartBeatSyncerTopic", "CLIENT_INNER_PRODUCER",
                  "SELF_TEST_P_GROUP", ""}


def is_system_group(name: str) -> bool:
    return name in _SYSTEM_GROUPS or name.startswith(("CID_RMQ_SYS_", "rmq_sys_"))


#: TopicConfig's fields by their names in the broker's JSON (the Java class's fields).
_TOPIC_WIRE_NAMES = {"name": "topicName", "read_queues": "readQueueNums", "write_queues": "writeQueueNums",
                     "sys_flag": "topicSysFlag", "filter_type": "topicFilterType"}


class TopicConfig(msgspec.Struct, frozen=True, gc=False, rename=_TOPIC_WIRE_NAMES):
    """A topic as one broker holds it. ``attributes`` carries 5.x settings like message.type.

    A msgspec struct, not a dataclass: a broker's whole table decodes straight into these in C
    (``admin.ClusterAdmin.topic_configs``), five times faster than building them from parsed JSON.
    Untracked by the cyclic garbage collector (``gc=False``: they hold names, numbers and string
    maps, never a cycle), so a snapshot's 40,000 of them add nothing to its collections.
    """

    name: str
    read_queues: int = 8
    write_queues: int = 8
    perm: int = PERM_READ | PERM_WRITE
    order: bool = False
    sys_flag: int = 0
    filter_type: str = "SINGLE_TAG"
    attributes: dict[str, str] = {}

    @property
    def message_type(self) -> str:
        return self.attributes.get("message.type", "UNSPECIFIED")

    @property
    def keeps_order(self) -> bool:
        """Per-queue order matters: the 4.9 order flag, or the 5.x FIFO message type."""
        return self.order or self.message_type == "FIFO"

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> "TopicConfig":
        """From already parsed JSON, as lenient as fastjson: numbers and flags may come as strings."""
        return msgspec.convert({**data, "attributes": _text_map(data.get("attributes"))}, cls, strict=False)

    def to_wire(self, for_create: bool = False) -> dict[str, Any]:
        """The broker's JSON form; a create request marks each attribute as added (``+key``)."""
        wire: dict[str, Any] = msgspec.to_builtins(self)
        if self.attributes:
            wire["attributes"] = {f"+{k}" if for_create else k: v for k, v in self.attributes.items()}
        else:
            del wire["attributes"]
        return wire

    def create_header(self) -> dict[str, object]:
        """extFields of UPDATE_AND_CREATE_TOPIC; 5.x reads attributes as ``+k=v,+k2=v2``."""
        header: dict[str, object] = {
            "topic": self.name, "defaultTopic": "TBW102", "readQueueNums": self.read_queues,
            "writeQueueNums": self.write_queues, "perm": self.perm, "topicFilterType": self.filter_type,
            "topicSysFlag": self.sys_flag, "order": str(self.order).lower(),
        }
        if self.attributes:
            header["attributes"] = ",".join(f"+{k}={v}" for k, v in sorted(self.attributes.items()))
        return header


class Share(NamedTuple):
    """A topic's part on one broker: its queue counts and its permission there. Brokers of one
    cluster may differ (a topic read-only on one broker, or on some brokers only)."""

    read: int
    write: int
    perm: int

    def __str__(self) -> str:
        return f"{self.read}/{self.write} perm {self.perm}"


#: SubscriptionGroupConfig's fields by their names in the broker's JSON.
_GROUP_WIRE_NAMES = {
    "name": "groupName", "consume_enable": "consumeEnable", "consume_from_min": "consumeFromMinEnable",
    "broadcast": "consumeBroadcastEnable", "orderly": "consumeMessageOrderly", "retry_queues": "retryQueueNums",
    "retry_max_times": "retryMaxTimes", "broker_id": "brokerId", "which_broker_when_slow": "whichBrokerWhenConsumeSlowly",
    "notify_ids_changed": "notifyConsumerIdsChangedEnable", "sys_flag": "groupSysFlag",
    "consume_timeout_minute": "consumeTimeoutMinute", "retry_policy": "groupRetryPolicy",
}


class GroupConfig(msgspec.Struct, frozen=True, gc=False, rename=_GROUP_WIRE_NAMES):
    """A subscription (consumer) group as one broker holds it (a msgspec struct: see TopicConfig)."""

    name: str
    consume_enable: bool = True
    consume_from_min: bool = True
    broadcast: bool = True
    orderly: bool = False
    retry_queues: int = 1
    retry_max_times: int = 16
    broker_id: int = 0
    which_broker_when_slow: int = 1
    notify_ids_changed: bool = True
    sys_flag: int = 0
    consume_timeout_minute: int = 15
    retry_policy: dict[str, Any] | None = None
    attributes: dict[str, str] = {}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> "GroupConfig":
        return msgspec.convert({**data, "attributes": _text_map(data.get("attributes"))}, cls, strict=False)

    def to_wire(self) -> dict[str, Any]:
        """The broker's JSON form, without an unset retry policy or empty attributes."""
        wire: dict[str, Any] = msgspec.to_builtins(self)
        for key in ("groupRetryPolicy", "attributes"):
            if not wire[key]:
                del wire[key]
        return wire


def _text_map(value: Mapping[Any, Any] | None) -> dict[str, str]:
    return {str(k): str(v) for k, v in (value or {}).items()}


@dataclass(frozen=True)
class MessageQueue:
    topic: str
    broker: str
    queue_id: int

    @classmethod
    def from_key(cls, key: Any) -> "MessageQueue":
        """From a fastjson object key (see remoting.fastjson.ObjectKey)."""
        data = dict(key)
        return cls(topic=data["topic"], broker=data["brokerName"], queue_id=int(data["queueId"]))


@dataclass(frozen=True)
class QueueOffsets:
    """One queue of a group: what the broker holds and what the group has committed."""

    queue: MessageQueue
    broker_offset: int
    consumer_offset: int
    last_timestamp: int = 0

    @property
    def lag(self) -> int:
        return max(self.broker_offset - max(self.consumer_offset, 0), 0)


@dataclass(frozen=True)
class ClientConnection:
    client_id: str
    client_addr: str
    language: str
    version: int


@dataclass(frozen=True)
class ConsumerConnection:
    """Who consumes for a group right now, and what they subscribe to."""

    group: str
    clients: tuple[ClientConnection, ...]
    subscriptions: tuple[str, ...] = ()
    message_model: str = ""
    consume_type: str = ""

    @property
    def online(self) -> int:
        return len(self.clients)
