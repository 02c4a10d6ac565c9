"""The replication task's configuration: a JSON file without secrets.

Secrets come only from the environment variable the file names (``secret_key_env``), so the
file can sit in a repository or an Airflow variable; a file that holds a secret is rejected.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rocketmq_core.errors import InvalidSpec
from rocketmq_core.model import validate_group_name, validate_topic_name
from rocketmq_core.remoting.client import Credentials
from rocketmq_core.replication.policy import validate_cluster_id

_SECRET_KEYS = {"secret_key", "secretkey", "secret", "password", "secret_key_value"}
_GROUP_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def default_group(task: str) -> str:
    """``rmq_replicator_<task>``, with characters a group name cannot hold replaced by '_'."""
    return validate_group_name("rmq_replicator_" + _GROUP_UNSAFE.sub("_", task))


@dataclass(frozen=True)
class Endpoint:
    """One side of a replication: where its name servers are and how to sign requests."""

    namesrv: str
    cluster_id: str
    access_key: str | None = None
    secret_key_env: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], side: str) -> "Endpoint":
        if not isinstance(data, Mapping):
            raise InvalidSpec(f"{side}: expected an object with namesrv and cluster_id")
        leaked = sorted(k for k in data if k.lower() in _SECRET_KEYS)
        if leaked:
            raise InvalidSpec(f"{side}: {', '.join(leaked)} must not be in the config file; name an environment "
                              "variable in secret_key_env instead")
        unknown = sorted(set(data) - {"namesrv", "cluster_id", "access_key", "secret_key_env"})
        if unknown:
            raise InvalidSpec(f"{side}: unknown field(s) {', '.join(unknown)}")
        if not data.get("namesrv") or not data.get("cluster_id"):
            raise InvalidSpec(f"{side}: namesrv and cluster_id are required")
        access_key, env = data.get("access_key"), data.get("secret_key_env")
        if bool(access_key) != bool(env):
            raise InvalidSpec(f"{side}: access_key and secret_key_env go together")
        return cls(str(data["namesrv"]), validate_cluster_id(str(data["cluster_id"])),
                   str(access_key) if access_key else None, str(env) if env else None)

    def credentials(self) -> Credentials | None:
        """The key pair, the secret read from the named environment variable now."""
        if not self.access_key or not self.secret_key_env:
            return None
        secret = os.environ.get(self.secret_key_env)
        if not secret:
            raise InvalidSpec(f"environment variable {self.secret_key_env} (secret key of {self.cluster_id}) is not set")
        return Credentials(self.access_key, secret)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"namesrv": self.namesrv, "cluster_id": self.cluster_id}
        if self.access_key:
            out.update(access_key=self.access_key, secret_key_env=self.secret_key_env)
        return out


@dataclass(frozen=True)
class StartPosition:
    """Where a group without a committed offset starts: latest, earliest, or a store time."""

    kind: str = "latest"
    timestamp_ms: int | None = None

    @classmethod
    def parse(cls, value: Any) -> "StartPosition":
        if value in (None, "latest"):
            return cls("latest")
        if value == "earliest":
            return cls("earliest")
        if isinstance(value, Mapping) and set(value) == {"timestamp_ms"}:
            try:
                return cls("timestamp", int(value["timestamp_ms"]))
            except (TypeError, ValueError) as exc:
                raise InvalidSpec(f"start.timestamp_ms must be an integer, not {value['timestamp_ms']!r}") from exc
        raise InvalidSpec(f'start must be "latest", "earliest" or {{"timestamp_ms": N}}, not {value!r}')

    def to_json(self) -> Any:
        return {"timestamp_ms": self.timestamp_ms} if self.kind == "timestamp" else self.kind


@dataclass(frozen=True)
class Tuning:
    """Knobs with defaults that suit a small cluster; all seconds unless named otherwise."""

    pull_batch: int = 32             # messages per pull (brokers cap it at 32 from memory)
    batch: bool = True               # several messages of a queue per request (SEND_BATCH_MESSAGE)
    batch_bytes: int = 1 << 20       # bodies per batch request, at most
    window: int = 8                  # requests in flight per queue of an unordered topic
    max_in_flight: int = 64          # requests in flight in all: more only fills the broker's send queue
    suspend_ms: int = 5000           # long-poll: the broker holds an empty pull this long
    heartbeat_interval: float = 10.0
    rebalance_interval: float = 3.0
    route_interval: float = 30.0
    lag_interval: float = 2.0
    commit_interval: float = 0.5
    recommit_interval: float = 5.0   # an unchanged offset is sent again this often (a lost commit heals)
    handoff_delay: float | None = None  # default: 2 rebalance intervals + 1 s
    drain_timeout: float = 30.0      # how long a released queue waits for its sends
    send_timeout: float = 5.0
    max_backoff: float = 5.0
    rate_burst: float | None = None  # tokens; default a tenth of the rate

    @property
    def effective_handoff_delay(self) -> float:
        return self.handoff_delay if self.handoff_delay is not None else 2 * self.rebalance_interval + 1

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "Tuning":
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidSpec(f"tuning: unknown field(s) {', '.join(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class ReplicationConfig:
    task: str
    source: Endpoint
    target: Endpoint
    topics: tuple[str, ...]
    group: str | None = None
    start: StartPosition = StartPosition()
    rate_limit: float | None = None
    ordered_topics: tuple[str, ...] = ()
    tuning: Tuning = field(default_factory=Tuning)

    @property
    def consumer_group(self) -> str:
        return self.group or default_group(self.task)

    @property
    def producer_group(self) -> str:
        return self.consumer_group + "_producer"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ReplicationConfig":
        known = {"task", "source", "target", "topics", "group", "start", "rate_limit", "ordered_topics", "tuning"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidSpec(f"unknown field(s) {', '.join(unknown)} in the replication config")
        task = data.get("task")
        if not task or not isinstance(task, str):
            raise InvalidSpec("task (a name) is required")
        topics = data.get("topics")
        if not topics or not isinstance(topics, list):
            raise InvalidSpec("topics must be a non-empty list")
        source = Endpoint.from_dict(data.get("source") or {}, "source")
        target = Endpoint.from_dict(data.get("target") or {}, "target")
        if source.cluster_id == target.cluster_id:
            raise InvalidSpec(f"source and target have the same cluster_id {source.cluster_id!r}; loop prevention"
                              " needs them distinct")
        rate = data.get("rate_limit")
        if rate is not None and (not isinstance(rate, (int, float)) or rate <= 0):
            raise InvalidSpec(f"rate_limit must be a positive number of messages per second or null, not {rate!r}")
        group = data.get("group")
        return cls(
            task=task, source=source, target=target,
            topics=tuple(validate_topic_name(str(t)) for t in topics),
            group=validate_group_name(str(group)) if group else None,
            start=StartPosition.parse(data.get("start")),
            rate_limit=float(rate) if rate is not None else None,
            ordered_topics=tuple(str(t) for t in data.get("ordered_topics") or ()),
            tuning=Tuning.from_dict(data.get("tuning")),
        )

    @classmethod
    def load(cls, path: str | Path) -> "ReplicationConfig":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise InvalidSpec(f"cannot read replication config {path}: {exc}") from exc
        if not isinstance(data, Mapping):
            raise InvalidSpec(f"replication config {path} is not a JSON object")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "source": self.source.to_dict(), "target": self.target.to_dict(),
                "topics": list(self.topics), "group": self.consumer_group, "start": self.start.to_json(),
                "rate_limit": self.rate_limit, "ordered_topics": list(self.ordered_topics)}
