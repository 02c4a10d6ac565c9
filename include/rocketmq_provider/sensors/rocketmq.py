"""Sensors over live RocketMQ state: backlog zero, clients online, writes stopped.

Deferrable by default: the sensor checks once in the task and, unless that settles it, the wait
runs on the triggerer, which carries on the streak; ``deferrable=False`` pokes instead.
Every check's figures are logged and pushed to XCom under ``observations`` so a gate, a
report or a person can see what the sensor saw, not only that it passed.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowException

from rocketmq_core.checks import BacklogZero, Check, ClientsOnline, Streak, WritesStopped, observe
from rocketmq_provider.hooks.rocketmq import RocketMQHook
from rocketmq_provider.templating import record_brokers_seen
from rocketmq_provider.triggers.rocketmq import RocketMQCheckTrigger


class RocketMQCheckSensor(BaseSensorOperator):
    """Waits until a check holds ``stable_checks`` times in a row on the cluster of a connection."""

    template_fields = ("rocketmq_conn_id", "stable_checks", "brokers")

    def __init__(self, *, rocketmq_conn_id: str, cluster: str | None = None, stable_checks: int | str = 1,
                 deferrable: bool = True, brokers: list[str] | str | None = None, **kwargs: Any):
        """``brokers`` is the run's broker set (templated): a check that misses one of them is unknown."""
        super().__init__(**kwargs)
        if isinstance(stable_checks, int) and stable_checks < 1:
            raise ValueError("stable_checks must be at least 1")
        if self.mode == "reschedule":
            # Each reschedule is a new process: the streak and a check's memory of brokers and
            # offsets would start from nothing at every poke, and a streak could never pass.
            raise ValueError(f"{type(self).__name__} keeps its streak between checks; use deferrable or poke mode")
        self.rocketmq_conn_id = rocketmq_conn_id
        self.cluster = cluster
        self.brokers = brokers
        self.stable_checks = stable_checks
        self.deferrable = deferrable
        self._check: Check | None = None
        self._observations: list[dict[str, Any]] = []
        self._streak: Streak | None = None

    def build_check(self) -> Check:
        raise NotImplementedError

    def _record(self, ti: Any, observations: list[dict[str, Any]]) -> None:
        """What the sensor saw, and the brokers its check saw (for the run's later steps)."""
        ti.xcom_push(key="observations", value=observations)
        record_brokers_seen(ti, [{**o, "conn_id": self.rocketmq_conn_id} for o in observations[-1:]])

    def execute(self, context: Any) -> Any:
        if not self.deferrable:
            try:
                return super().execute(context)
            finally:
                self._record(context["ti"], self._observations)
        if self.poke(context):  # it already holds: no round trip through the triggerer
            self._record(context["ti"], self._observations)
            return self._observations[-1]
        check, streak = self._check, self._streak  # built by poke()
        self.defer(
            trigger=RocketMQCheckTrigger(self.rocketmq_conn_id, check.kind, check.handover(),
                                         stable_checks=int(self.stable_checks), poll_interval=self.poke_interval,
                                         timeout=self.timeout, earlier=self._observations, streak=streak.count),
            method_name="execute_complete",
            # a backstop should the triggerer be gone: the trigger's own deadline reports first, with figures
            timeout=timedelta(seconds=self.timeout + self.poke_interval + 60),
        )

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        observations = event.get("observations", [])
        self._record(context["ti"], observations)
        last = observations[-1]["summary"] if observations else "no observation"
        if event.get("status") != "success":
            raise AirflowException(f"{event.get('check')}: not satisfied before the timeout; last: {last}")
        self.log.info("%s: satisfied; last: %s", event.get("check"), last)
        return observations[-1] if observations else {}

    def poke(self, context: Any) -> bool:
        if self._check is None or self._streak is None:
            self._check, self._streak = self.build_check(), Streak(int(self.stable_checks))
        check, streak = self._check, self._streak
        observation = RocketMQHook(self.rocketmq_conn_id).run(lambda admin: observe(check, admin))
        self._observations.append(observation)
        passed = streak.record(observation["satisfied"])
        self.log.info("%s: %s (%d/%d in a row)", check.describe(), observation["summary"], streak.count,
                      self.stable_checks)
        return passed


class BacklogZeroSensor(RocketMQCheckSensor):
    """The groups' full backlog (lag, retry, delayed, timer, half) is zero ``stable_checks`` times in a row."""

    template_fields = (*RocketMQCheckSensor.template_fields, "groups")

    def __init__(self, *, groups: list[str] | str, stable_checks: int | str = 3, **kwargs: Any):
        super().__init__(stable_checks=stable_checks, **kwargs)
        self.groups = groups

    def build_check(self) -> Check:
        return BacklogZero(list(self.groups), self.cluster, list(self.brokers or []))


class ClientsOnlineSensor(RocketMQCheckSensor):
    """Per group, the online consumer (or producer) count lies within [min_clients, max_clients]."""

    template_fields = (*RocketMQCheckSensor.template_fields, "groups")

    def __init__(self, *, groups: list[str], role: str = "consumer", min_clients: int = 1,
                 max_clients: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.groups = groups
        self.role = role
        self.min_clients = min_clients
        self.max_clients = max_clients
        ClientsOnline(list(groups) or ["-"], role, min_clients, max_clients)  # reject bad bounds at parse time

    def build_check(self) -> Check:
        return ClientsOnline(list(self.groups), self.role, self.min_clients, self.max_clients, self.cluster,
                             list(self.brokers or []))


class SourceWritesStoppedSensor(RocketMQCheckSensor):
    """The topics took no new message for ``window_seconds`` (their max offsets stood still)."""

    template_fields = (*RocketMQCheckSensor.template_fields, "topics")

    def __init__(self, *, topics: list[str], window_seconds: float = 60, **kwargs: Any):
        super().__init__(**kwargs)
        self.topics = topics
        self.window_seconds = window_seconds

    def build_check(self) -> Check:
        return WritesStopped(list(self.topics), self.window_seconds, self.cluster, list(self.brokers or []))
