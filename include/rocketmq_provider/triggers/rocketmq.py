"""Triggers that wait on the triggerer: until a rocketmq_core check holds on a live cluster,
while conditions keep holding (a watch), or until the brokers show a fleet moved."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from rocketmq_core.checks import Streak, build_check, observe
from rocketmq_core.fleet_moves import Whereabouts, move_event, wait_for_move
from rocketmq_core.migration import observe_on, rebuild
from rocketmq_provider.hooks.rocketmq import RocketMQHook

#: Observations kept in the event; older ones are dropped (their count is reported).
MAX_OBSERVATIONS = 500


class RocketMQCheckTrigger(BaseTrigger):
    """Evaluates a check every ``poll_interval`` seconds until it holds ``stable_checks`` times in a row.

    A failed measurement (broker down, timeout, refused request) counts as "not satisfied" and
    breaks the streak; it never passes. The trigger keeps its own deadline because deferral
    timeouts are not enforced everywhere (dag.test() runs triggers inline).
    """

    def __init__(self, rocketmq_conn_id: str, check_kind: str, check_kwargs: dict[str, Any],
                 stable_checks: int = 1, poll_interval: float = 10.0, timeout: float = 3600.0,
                 deadline: float | None = None, earlier: list[dict[str, Any]] | None = None, streak: int = 0):
        """``earlier`` and ``streak``: what the sensor saw before it deferred, carried on."""
        super().__init__()
        self.earlier = list(earlier or [])
        self.streak = streak
        self.rocketmq_conn_id = rocketmq_conn_id
        self.check_kind = check_kind
        self.check_kwargs = check_kwargs
        self.stable_checks = stable_checks
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.deadline = deadline if deadline is not None else time.time() + timeout

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}", {
            "rocketmq_conn_id": self.rocketmq_conn_id, "check_kind": self.check_kind,
            "check_kwargs": self.check_kwargs, "stable_checks": self.stable_checks,
            "poll_interval": self.poll_interval, "timeout": self.timeout, "deadline": self.deadline,
            "earlier": self.earlier, "streak": self.streak,
        })

    async def run(self) -> AsyncIterator[TriggerEvent]:
        check = build_check(self.check_kind, self.check_kwargs)
        endpoint = await RocketMQHook(self.rocketmq_conn_id).aget_endpoint()
        observations = list(self.earlier)
        dropped = 0
        streak = Streak(self.stable_checks, self.streak)
        async with endpoint.admin() as admin:
            while True:
                if observations:  # the last check, the sensor's own included, was a poll ago
                    await asyncio.sleep(self.poll_interval)
                observation = await observe(check, admin)
                observations.append(observation)
                if len(observations) > MAX_OBSERVATIONS:
                    observations.pop(0)
                    dropped += 1
                passed = streak.record(observation["satisfied"])
                self.log.info("%s on %s: %s (%d/%d in a row)", check.describe(), self.rocketmq_conn_id,
                              observation["summary"], streak.count, self.stable_checks)
                status = "success" if passed else "timeout" if time.time() >= self.deadline else None
                if status:
                    yield TriggerEvent({"status": status, "check": check.describe(),
                                        "observations": observations, "dropped_observations": dropped})
                    return


class RocketMQWatchTrigger(BaseTrigger):
    """Evaluates serialised conditions every ``poll_interval`` seconds until ``deadline``; fires at
    the first observation that fails (status ``touched``, with what failed) or, when every one
    held to the end, with status ``quiet`` and the last observations. A failed measurement is
    a failure: what cannot be seen is not watched."""

    def __init__(self, rocketmq_conn_id: str, conditions: list[dict[str, Any]], brokers: list[str],
                 deadline: float, poll_interval: float = 10.0):
        super().__init__()
        self.rocketmq_conn_id = rocketmq_conn_id
        self.conditions = conditions
        self.brokers = brokers
        self.deadline = deadline
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}", {
            "rocketmq_conn_id": self.rocketmq_conn_id, "conditions": self.conditions, "brokers": self.brokers,
            "deadline": self.deadline, "poll_interval": self.poll_interval})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        checks = [(rebuild(c, self.brokers), c["side"]) for c in self.conditions]
        endpoint = await RocketMQHook(self.rocketmq_conn_id).aget_endpoint()
        rounds = 0
        async with endpoint.admin() as admin:
            while True:
                seen = [await observe_on(check, side, admin) for check, side in checks]
                rounds += 1
                failed = [o for o in seen if not o["satisfied"]]
                if failed or time.time() >= self.deadline:
                    yield TriggerEvent({"status": "touched" if failed else "quiet", "rounds": rounds,
                                        "observations": failed or seen,
                                        "brokers_seen": sorted({b for o in seen for b in o["brokers_seen"]})})
                    return
                await asyncio.sleep(self.poll_interval)


class FleetMoveTrigger(BaseTrigger):
    """Waits until the brokers of both clusters show a switched fleet where it was sent (see
    ``rocketmq_core.fleet_moves``): status ``done``, ``stripped`` (a canary left a consumer group
    with no consumer on the old cluster) or ``timeout``, with what each cluster showed last.
    ``before`` and ``started`` (what the switch did) come back in the event: the task that
    resumes has nothing else of the one that deferred."""

    def __init__(self, from_conn_id: str, to_conn_id: str, role: str, before: dict[str, Any], canary: bool,
                 deadline: float, poll_interval: float = 5.0, started: dict[str, Any] | None = None):
        super().__init__()
        self.started = dict(started or {})
        self.from_conn_id = from_conn_id
        self.to_conn_id = to_conn_id
        self.role = role
        self.before = before
        self.canary = canary
        self.deadline = deadline
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}", {
            "from_conn_id": self.from_conn_id, "to_conn_id": self.to_conn_id, "role": self.role,
            "before": self.before, "canary": self.canary, "deadline": self.deadline,
            "poll_interval": self.poll_interval, "started": self.started})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        leaving = await RocketMQHook(self.from_conn_id).aget_endpoint()
        joining = await RocketMQHook(self.to_conn_id).aget_endpoint()
        async with leaving.admin() as old, joining.admin() as new:
            verdict, now = await wait_for_move(old, new, self.role, Whereabouts.from_dict(self.before), self.canary,
                                               self.deadline, self.poll_interval)
        yield TriggerEvent({**move_event(verdict, now), "before": self.before, "started": self.started})
