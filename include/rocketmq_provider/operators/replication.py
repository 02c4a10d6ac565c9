"""Replication task operators: start, control (pause, resume, stop, reset offsets), monitor.

A replication task has one direction (source -> target) or two (and target -> source). Each
direction is a set of worker processes run by a WorkerRunner; its consumer group on the side it
reads from holds its position, so pausing keeps the position and resetting moves it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from rocketmq_core.metadata import take_snapshot
from rocketmq_core.taskspec import ClusterRef, ReplicationSpec
from rocketmq_provider.hooks.rocketmq import ClusterEndpoint, RocketMQHook
from rocketmq_provider.replication_runner import LocalProcessRunner, WorkerRunner

ACTIONS = ("pause", "resume", "stop", "reset_offset", "status")


@dataclass(frozen=True)
class Direction:
    name: str
    source: ClusterRef
    target: ClusterRef


def directions(spec: ReplicationSpec) -> list[Direction]:
    forward = [Direction("forward", spec.source, spec.target)]
    return forward + [Direction("reverse", spec.target, spec.source)] if spec.direction == "two-way" else forward


def cluster_id(ref: ClusterRef) -> str:
    """The id stamped on replicated messages: the cluster name, else the connection id."""
    return re.sub(r"[^A-Za-z0-9_.:-]", "_", ref.cluster or ref.conn_id)


def _side(ref: ClusterRef, endpoint: ClusterEndpoint, secret_env: str) -> tuple[dict[str, Any], dict[str, str]]:
    side: dict[str, Any] = {"namesrv": ";".join(endpoint.namesrv_addrs), "cluster_id": cluster_id(ref)}
    if endpoint.credentials is None:
        return side, {}
    side.update(access_key=endpoint.credentials.access_key, secret_key_env=secret_env)
    return side, {secret_env: endpoint.credentials.secret_key}


class ReplicationOperator(BaseOperator):
    """Shared by the replication operators: the spec, the runner, and the task's state."""

    def __init__(self, *, spec: ReplicationSpec, runner: WorkerRunner | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.spec = spec
        self.runner = runner or LocalProcessRunner()

    def worker_name(self, direction: Direction) -> str:
        return f"{self.spec.slug}/{direction.name}"

    def state(self) -> str:
        return self.runner.get_state(self.spec.slug) or "created"

    def topics_in_scope(self) -> tuple[list[str], list[str]]:
        """The source's topics in the spec's scope now, and which of them are ordered."""
        spec = self.spec
        snapshot = RocketMQHook(spec.source.conn_id).run(
            lambda admin: take_snapshot(admin, spec.source.cluster, include_acl=False))
        scope = spec.scope.to_scope()
        topics = sorted(t for t in snapshot.topics if scope.topic(t))
        if not topics:
            raise AirflowException(f"the scope of {spec.name} matches no topic on {spec.source.conn_id}")
        return topics, sorted(t for t in topics if snapshot.topics[t].order)

    def start_workers(self, topics: list[str], ordered: list[str], start: Any) -> dict[str, list[str]]:
        started = {}
        for d in directions(self.spec):
            source = RocketMQHook(d.source.conn_id).get_endpoint()
            target = RocketMQHook(d.target.conn_id).get_endpoint()
            source_side, source_secret = _side(d.source, source, f"RMQ_SECRET_{d.name.upper()}_SOURCE")
            target_side, target_secret = _side(d.target, target, f"RMQ_SECRET_{d.name.upper()}_TARGET")
            config = {"task": f"{self.spec.slug}_{d.name}", "group": self.spec.group, "source": source_side,
                      "target": target_side, "topics": topics, "ordered_topics": ordered, "start": start,
                      "rate_limit": self.spec.rate_limit}
            started[d.name] = self.runner.start(self.worker_name(d), config, {**source_secret, **target_secret},
                                                self.spec.workers)
        self.runner.set_state(self.spec.slug, "running")
        return started

    def stop_workers(self, state: str) -> dict[str, list[str]]:
        stopped = {d.name: self.runner.stop(self.worker_name(d)) for d in directions(self.spec)}
        self.runner.set_state(self.spec.slug, state)
        return stopped

    def worker_status(self) -> dict[str, dict[str, Any]]:
        return {d.name: self.runner.status(self.worker_name(d)) for d in directions(self.spec)}


class ReplicationStartOperator(ReplicationOperator):
    """Resolve the scope to topics on the source, then start the workers of every direction."""

    def execute(self, context: Any) -> dict[str, Any]:
        if self.state() == "running":
            raise AirflowException(f"replication {self.spec.name} is already running; use its control DAG")
        spec = self.spec
        topics, ordered = self.topics_in_scope()
        start = ({"timestamp_ms": int(spec.start.timestamp() * 1000)} if isinstance(spec.start, datetime)
                 else spec.start)
        started = self.start_workers(topics, ordered, start)
        self.log.info("replication %s started: %s over %d topic(s)", spec.name, started, len(topics))
        return {"topics": topics, "ordered_topics": ordered, "workers": started}


class ReplicationRescopeOperator(ReplicationOperator):
    """After a metadata sync: when topics entered or left the scope on the source, restart the
    running workers on the new set. A new topic is replicated from its first message; the others
    go on from their committed offsets."""

    def execute(self, context: Any) -> dict[str, Any]:
        state = self.state()
        if state != "running":
            return {"state": state, "restarted": False}
        before = self.runner.last_config(self.worker_name(directions(self.spec)[0])) or {}
        topics, ordered = self.topics_in_scope()
        if topics == before.get("topics") and ordered == before.get("ordered_topics", []):
            return {"state": state, "restarted": False, "topics": topics}
        added = sorted(set(topics) - set(before.get("topics", ())))
        removed = sorted(set(before.get("topics", ())) - set(topics))
        self.log.info("replication %s: topics added %s, removed %s; restarting its workers",
                      self.spec.name, added, removed)
        self.stop_workers("paused")
        self.start_workers(topics, ordered, "earliest")
        return {"state": "running", "restarted": True, "added": added, "removed": removed, "topics": topics}


class ReplicationControlOperator(ReplicationOperator):
    """Pause, resume, stop, reset the start offset to a time (only while paused), or report status."""

    template_fields = ("action", "timestamp")

    def __init__(self, *, action: str, timestamp: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.action = action
        self.timestamp = timestamp

    def execute(self, context: Any) -> dict[str, Any]:
        action, state = self.action, self.state()
        if action not in ACTIONS:
            raise AirflowException(f"unknown action {action!r}; one of {ACTIONS}")
        if action == "pause":
            self._require(state, "running")
            return {"paused": self.stop_workers("paused")}
        if action == "stop":
            return {"stopped": self.stop_workers("stopped")}
        if action == "resume":  # also while running: restarts workers that died, keeps the live ones
            self._require(state, "paused", "stopped", "running")
            config = self.runner.last_config(self.worker_name(directions(self.spec)[0]))
            if config is None:
                raise AirflowException(f"replication {self.spec.name} was never started")
            # Every queue seen before has a committed offset, so the start only applies to queues
            # that appeared since (more queues on a topic): those are replicated from their first message.
            return {"resumed": self.start_workers(config["topics"], config.get("ordered_topics", []), "earliest")}
        if action == "reset_offset":
            self._require(state, "paused")
            return {"reset": self._reset(self._timestamp_ms())}
        return {"state": state, "workers": self.worker_status()}

    def _require(self, state: str, *allowed: str) -> None:
        if state not in allowed:
            raise AirflowException(f"cannot {self.action} replication {self.spec.name} while it is {state}; "
                                   f"it must be {' or '.join(allowed)}")

    def _timestamp_ms(self) -> int:
        if not self.timestamp:
            raise AirflowException("reset_offset needs a timestamp")
        try:
            return int(datetime.fromisoformat(str(self.timestamp).replace("Z", "+00:00")).timestamp() * 1000)
        except ValueError:
            raise AirflowException(f"timestamp {self.timestamp!r} is not an ISO date-time") from None

    def _reset(self, timestamp_ms: int) -> dict[str, dict[str, int]]:
        """Every direction's group, on the side it reads from, moved to the first message at or after the time."""
        result = {}
        for d in directions(self.spec):
            config = self.runner.last_config(self.worker_name(d)) or {}
            async def reset(admin, topics=tuple(config.get("topics", ()))):
                moved = {}
                for topic in topics:
                    offsets = await admin.reset_offset_by_timestamp(self.spec.group, topic, timestamp_ms,
                                                                    d.source.cluster)
                    moved.update({f"{mq.topic}:{mq.broker}:{mq.queue_id}": o for mq, o in offsets.items()})
                return moved
            result[d.name] = RocketMQHook(d.source.conn_id).run(reset)
        return result


class ReplicationMonitorOperator(ReplicationOperator):
    """Record the counters and delay of every worker; fail (and notify) when the delay passes
    the spec's threshold, when replication stalls with a backlog, or when a worker died."""

    def execute(self, context: Any) -> dict[str, Any]:
        state, status = self.state(), self.worker_status()
        figures: dict[str, Any] = {"consumed": 0, "replicated": 0, "failed": 0, "skipped_loop": 0, "lag": 0}
        delay_ms, dead, stalled = 0, [], []
        for direction, workers in status.items():
            for worker, info in workers.items():
                stats = info["stats"] or {}
                for key in ("consumed", "replicated", "failed", "skipped_loop"):
                    figures[key] += int(stats.get(key) or 0)
                figures["lag"] += int(stats.get("lag") or 0)
                delay_ms = max(delay_ms, int((stats.get("delay") or {}).get("p99_ms") or 0))
                if state == "running" and not info["alive"]:
                    dead.append(f"{direction}/{worker}")
                if state == "running" and (stats.get("lag") or 0) > 0 and not (stats.get("delay") or {}).get("samples"):
                    stalled.append(f"{direction}/{worker}")
        figures["delay_seconds"] = round(delay_ms / 1000, 3)
        observation = {"at": time.time(), "satisfied": True, "figures": figures,
                       "summary": f"{state}: delay {figures['delay_seconds']}s, lag {figures['lag']}"}
        problems = []
        if figures["delay_seconds"] > self.spec.delay_alert_seconds:
            problems.append(f"delay {figures['delay_seconds']}s passed {self.spec.delay_alert_seconds:g}s")
        if dead:
            problems.append(f"workers not running: {dead}")
        if stalled:
            problems.append(f"workers with a backlog and nothing replicated lately: {stalled}")
        observation["satisfied"] = not problems
        context["ti"].xcom_push(key="observations", value=[observation])
        self.log.info("replication %s: %s", self.spec.name, observation["summary"])
        if problems:
            raise AirflowException(f"replication {self.spec.name}: " + "; ".join(problems))
        return {"state": state, **figures}
