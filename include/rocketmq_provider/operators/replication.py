"""Replication task operators: start, control (pause, resume, stop, reset offsets, delete), monitor.

A replication task has one direction (source -> target) or two (and target -> source). Each
direction is a set of worker processes run by a WorkerRunner; its consumer group on the side it
reads from holds its position, so pausing keeps the position and resetting moves it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowSkipException

from rocketmq_core.errors import RocketMQError
from rocketmq_core.metadata.snapshot import take_snapshot
from rocketmq_core.offsets import reset_to_time
from rocketmq_core.replication.group import delete_replicator_group
from rocketmq_core.taskspec import ClusterRef, ReplicationSpec
from rocketmq_provider.hooks.rocketmq import ClusterEndpoint, RocketMQHook
from rocketmq_provider.replication_runner import LocalProcessRunner, WorkerRunner

ACTIONS = ("pause", "resume", "stop", "reset_offset", "delete", "status")


@dataclass(frozen=True)
class Direction:
    name: str
    source: ClusterRef
    target: ClusterRef


def directions(spec: ReplicationSpec) -> list[Direction]:
    forward = [Direction("forward", spec.source, spec.target)]
    return forward + [Direction("reverse", spec.target, spec.source)] if spec.direction == "two-way" else forward


def _side(ref: ClusterRef, endpoint: ClusterEndpoint, secret_env: str) -> tuple[dict[str, Any], dict[str, str]]:
    side: dict[str, Any] = {"namesrv": ";".join(endpoint.namesrv_addrs), "cluster_id": ref.origin_id}
    if endpoint.credentials is None:
        return side, {}
    side.update(access_key=endpoint.credentials.access_key, secret_key_env=secret_env)
    return side, {secret_env: endpoint.credentials.secret_key}


class ReplicationOperator(BaseOperator):
    """Shared by the replication operators: the spec, the runner, and the task's state."""

    #: A worker still alive this long after its start got past its config, credentials and routes.
    START_CHECK_SECONDS = 3.0

    def __init__(self, *, spec: ReplicationSpec, runner: WorkerRunner | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.spec = spec
        self.runner = runner or LocalProcessRunner()

    def execute(self, context: Any) -> Any:
        # One action at a time per task, across its DAGs: a pause must not land between the
        # metadata DAG's stop and start of the workers, nor a reset while a resume starts them.
        with self.runner.exclusive(self.spec.slug):
            return self.act(context)

    def act(self, context: Any) -> Any:
        raise NotImplementedError

    def worker_name(self, direction: Direction) -> str:
        return f"{self.spec.slug}/{direction.name}"

    def state(self) -> str:
        return self.runner.get_state(self.spec.slug) or "created"

    def topics_in_scope(self) -> tuple[list[str], list[str]]:
        """The source's topics in the spec's scope now, and which of them are ordered (4.9 order
        flag or 5.x FIFO type): a worker keeps per-queue order only for topics it knows at start."""
        spec = self.spec
        snapshot = RocketMQHook(spec.source.conn_id).run(
            lambda admin: take_snapshot(admin, spec.source.cluster, include_acl=False))
        topics, _ = snapshot.names_in(spec.scope.to_scope())
        if not topics:
            raise AirflowException(f"the scope of {spec.name} matches no topic on {spec.source.conn_id}")
        ordered = [t for t in topics if snapshot.topics[t].keeps_order]
        return topics, ordered

    def start_workers(self, topics: list[str], ordered: list[str], start: Any) -> dict[str, list[str]]:
        """Start every direction, or none: connections are resolved before anything starts, and a
        worker that dies at once (a bad config, a refused credential) fails the task with its log,
        after the directions this call started are stopped again."""
        was_running = self.state() == "running"
        plans = []
        for d in directions(self.spec):
            source_side, source_secret = _side(d.source, RocketMQHook(d.source.conn_id).get_endpoint(),
                                               f"RMQ_SECRET_{d.name.upper()}_SOURCE")
            target_side, target_secret = _side(d.target, RocketMQHook(d.target.conn_id).get_endpoint(),
                                               f"RMQ_SECRET_{d.name.upper()}_TARGET")
            config = {"task": f"{self.spec.slug}_{d.name}", "group": self.spec.group, "source": source_side,
                      "target": target_side, "topics": topics, "ordered_topics": ordered, "start": start,
                      "rate_limit": self.spec.rate_limit}
            plans.append((d, config, {**source_secret, **target_secret}))
        started: dict[str, list[str]] = {}
        try:
            for d, config, secrets in plans:
                started[d.name] = self.runner.start(self.worker_name(d), config, secrets, self.spec.workers)
            time.sleep(self.START_CHECK_SECONDS)
            for d, _, _ in plans:
                for worker, info in self.runner.status(self.worker_name(d)).items():
                    if not info["alive"]:
                        raise AirflowException(f"replication worker {d.name}/{worker} of {self.spec.name} exited at "
                                               f"start:\n{self.runner.log_tail(self.worker_name(d), worker)}")
        except Exception:
            if not was_running:
                for d, _, _ in plans:
                    if d.name in started:
                        self.runner.stop(self.worker_name(d))
            raise
        self.runner.set_state(self.spec.slug, "running")
        return started

    def stop_workers(self, state: str) -> dict[str, list[str]]:
        stopped = {d.name: self.runner.stop(self.worker_name(d)) for d in directions(self.spec)}
        self.runner.set_state(self.spec.slug, state)
        return stopped

    def last_config(self) -> dict[str, Any] | None:
        """The config the workers were last started with (its topics are every direction's)."""
        return self.runner.last_config(self.worker_name(directions(self.spec)[0]))

    def worker_status(self) -> dict[str, dict[str, Any]]:
        return {d.name: self.runner.status(self.worker_name(d)) for d in directions(self.spec)}


class ReplicationStartOperator(ReplicationOperator):
    """Resolve the scope to topics on the source, then start the workers of every direction."""

    def act(self, context: Any) -> dict[str, Any]:
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

    def act(self, context: Any) -> dict[str, Any]:
        state = self.state()
        if state != "running":
            return {"state": state, "restarted": False}
        before = self.last_config() or {}
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

    def act(self, context: Any) -> dict[str, Any]:
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
            config = self.last_config()
            if config is None:
                raise AirflowException(f"replication {self.spec.name} was never started")
            # Every queue seen before has a committed offset, so the start only applies to queues
            # that appeared since (more queues on a topic): those are replicated from their first message.
            return {"resumed": self.start_workers(config["topics"], config.get("ordered_topics", []), "earliest")}
        if action == "reset_offset":
            self._require(state, "paused")
            running = [f"{d}/{w}" for d, ws in self.worker_status().items() for w, info in ws.items() if info["alive"]]
            if running:  # a live worker would commit over the reset
                raise AirflowException(f"cannot reset {self.spec.name}: workers still running: {running}")
            return {"reset": self._reset(self._timestamp_ms())}
        if action == "delete":
            self._require(state, "paused", "stopped")
            return {"deleted": self._delete()}
        return {"state": state, "workers": self.worker_status()}

    def _require(self, state: str, *allowed: str) -> None:
        if state not in allowed:
            raise AirflowException(f"cannot {self.action} replication {self.spec.name} while it is {state}; "
                                   f"it must be {' or '.join(allowed)}")

    def _timestamp_ms(self) -> int:
        if not self.timestamp:
            raise AirflowException("reset_offset needs a timestamp")
        try:
            moment = datetime.fromisoformat(str(self.timestamp).replace("Z", "+00:00"))
        except ValueError:
            raise AirflowException(f"timestamp {self.timestamp!r} is not an ISO date-time") from None
        if moment.tzinfo is None:  # the form says UTC; the worker's local zone must not decide
            moment = moment.replace(tzinfo=timezone.utc)
        return int(moment.timestamp() * 1000)

    def _delete(self) -> dict[str, str]:
        """Stop for good: the replicator's group and its offsets go from every side it read, and
        the scheduled DAGs skip from now on. A later start begins afresh at the spec's start."""
        self.stop_workers("deleted")
        deleted = {}
        group = self.spec.group
        for d in directions(self.spec):
            try:
                brokers = RocketMQHook(d.source.conn_id).run(
                    lambda admin, cluster=d.source.cluster: delete_replicator_group(admin, group, cluster))
            except RocketMQError as exc:
                raise AirflowException(f"delete {self.spec.name}: {exc}") from exc
            deleted[d.name] = f"group {self.spec.group} on {d.source.conn_id} ({len(brokers)} broker(s))"
        return deleted

    def _reset(self, timestamp_ms: int) -> dict[str, dict[str, int]]:
        """Every direction's group, on the side it reads from, moved to the first message at or after the time."""
        result = {}
        for d in directions(self.spec):
            config = self.runner.last_config(self.worker_name(d)) or {}
            async def reset(admin, topics=tuple(config.get("topics", ()))):
                moved = {}
                for topic in topics:
                    offsets = await reset_to_time(admin, self.spec.group, topic, timestamp_ms, d.source.cluster)
                    moved.update({f"{mq.topic}:{mq.broker}:{mq.queue_id}": o for mq, o in offsets.items()})
                return moved
            result[d.name] = RocketMQHook(d.source.conn_id).run(reset)
        return result


class ReplicationActiveOperator(ReplicationOperator):
    """First task of the scheduled DAGs: once the task is deleted they skip instead of syncing
    metadata or alerting on workers that are gone on purpose."""

    def act(self, context: Any) -> str:
        state = self.state()
        if state == "deleted":
            raise AirflowSkipException(f"replication {self.spec.name} was deleted; remove its spec file")
        return state


class ReplicationMonitorOperator(ReplicationOperator):
    """Record the counters and delay of every worker; fail (and notify) when the delay passes the
    spec's threshold, a worker died or stopped reporting, the lag cannot be measured, a send is
    stuck retrying, or a direction has a backlog and replicates nothing."""

    #: Stats older than this mean a hung worker or a lag nobody can measure (a broker unreachable).
    STALE_MS = 60_000

    def act(self, context: Any) -> dict[str, Any]:
        state, status = self.state(), self.worker_status()
        now_ms = time.time() * 1000
        figures: dict[str, Any] = {"consumed": 0, "replicated": 0, "failed": 0, "skipped_loop": 0, "retrying": 0,
                                   "lag": 0}
        found: dict[str, list[str]] = {"dead": [], "stale": [], "unmeasured": [], "stuck": [], "stalled": []}
        delay_ms = 0
        for direction, workers in status.items():
            direction_lag, moving = 0, False
            for worker, info in workers.items():
                stats, name = info["stats"] or {}, f"{direction}/{worker}"
                for key in ("consumed", "replicated", "failed", "skipped_loop", "retrying"):
                    figures[key] += int(stats.get(key) or 0)
                # every worker measures the whole group's lag, so a direction's lag is one of them
                direction_lag = max(direction_lag, int(stats.get("lag") or 0))
                delay = stats.get("delay") or {}
                delay_ms = max(delay_ms, int(delay.get("p99_ms") or 0))
                moving = moving or bool(delay.get("samples"))
                problem = self._problem(info, stats, now_ms) if state == "running" else None
                if problem:
                    found[problem].append(name)
            figures["lag"] += direction_lag
            if state == "running" and direction_lag > 0 and not moving:
                found["stalled"].append(direction)
        figures["delay_seconds"] = round(delay_ms / 1000, 3)
        problems = [f"delay {figures['delay_seconds']}s passed {self.spec.delay_alert_seconds:g}s"] \
            if figures["delay_seconds"] > self.spec.delay_alert_seconds else []
        problems += [f"{text}: {found[key]}" for key, text in (
            ("dead", "workers not running"), ("stale", "workers whose figures stopped updating"),
            ("unmeasured", "workers that cannot measure the lag (a broker unreachable?)"),
            ("stuck", f"workers with sends retried for over {self.spec.delay_alert_seconds:g}s"),
            ("stalled", "directions with a backlog and nothing replicated lately")) if found[key]]
        observation = {"at": time.time(), "satisfied": not problems, "figures": figures,
                       "summary": f"{state}: delay {figures['delay_seconds']}s, lag {figures['lag']}"}
        context["ti"].xcom_push(key="observations", value=[observation])
        self.log.info("replication %s: %s", self.spec.name, observation["summary"])
        if problems:
            raise AirflowException(f"replication {self.spec.name}: " + "; ".join(problems))
        return {"state": state, **figures}

    def _problem(self, info: dict[str, Any], stats: dict[str, Any], now_ms: float) -> str | None:
        """What is wrong with one worker of a running task (a key of the found lists), if anything."""
        if not info["alive"]:
            return "dead"
        if not stats:
            return None  # started a moment ago: no figures written yet
        if now_ms - (stats.get("updated_at_ms") or 0) > self.STALE_MS:
            return "stale"
        if now_ms - (stats.get("lag_measured_at_ms") or stats.get("started_at_ms") or 0) > self.STALE_MS:
            return "unmeasured"
        if (stats.get("oldest_retry_age_ms") or 0) > self.spec.delay_alert_seconds * 1000:
            return "stuck"
        return None
