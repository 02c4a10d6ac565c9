"""A migration as ordered stages, each with the invariant its switch must find true, free of Airflow.

The seamless order is: canary consumers, canary producers, the remaining producers, (fence and
drain), the remaining consumers (the cutover); a roll back moves producers back first, then
consumers. Each stage names the conditions that must hold on the live clusters at the moment
its switch acts, whatever happened before it: that is where "no message is lost" is decided.
A DAG maps stages to operators and adds gates; it decides nothing about safety itself.

Values a run learns as it goes (the topics the preflight resolved, what the writes-stopped
sensor saw) may be passed as templates: conditions serialise to dicts and are rebuilt with
the run's broker set when they are evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.checks import (
    AutoCreateOff, BacklogZero, CanaryLeavesConsumers, Check, ClientsOnline, FenceHolds, MetadataPresent,
    NoPendingHalf, TopicsUnread, WritesUnchanged, build_check, observe,
)

SOURCE, TARGET = "source", "target"


class Stage(str, Enum):
    """The switches of a migration, in the only order that loses nothing."""

    CANARY_CONSUMERS = "canary_consumers"
    CANARY_PRODUCERS = "canary_producers"
    REMAINING_PRODUCERS = "remaining_producers"
    CUTOVER = "remaining_consumers"
    ROLLBACK_PRODUCERS = "rollback_producers"
    ROLLBACK_CONSUMERS = "rollback_consumers"

    @property
    def role(self) -> str:
        return "producer" if self in _PRODUCER_STAGES else "consumer"

    @property
    def to_side(self) -> str:
        """Where the stage's clients go."""
        return SOURCE if self in (Stage.ROLLBACK_PRODUCERS, Stage.ROLLBACK_CONSUMERS) else TARGET

    @property
    def canary(self) -> bool:
        return self in (Stage.CANARY_CONSUMERS, Stage.CANARY_PRODUCERS)


_PRODUCER_STAGES = (Stage.CANARY_PRODUCERS, Stage.REMAINING_PRODUCERS, Stage.ROLLBACK_PRODUCERS)


@dataclass(frozen=True)
class Condition:
    """A check that must hold on one side of the migration (``source`` or ``target``)."""

    side: str
    check: Check

    def to_dict(self) -> dict[str, Any]:
        return {"side": self.side, "kind": self.check.kind, "kwargs": self.check.kwargs()}


@dataclass(frozen=True)
class MigrationRun:
    """What a run's stages read: the spec's groups and clusters, and what the run learnt so far.

    ``topics`` are the in-scope topics the preflight resolved on the source; ``consumer_topics``
    the topics the spec's consumer fleets read (they must exist on the target before any
    consumer moves); ``writes_observations`` what the writes-stopped measurement saw after the
    fence. Any of the three may be a template.
    """

    consumers: list[str]
    producers: list[str]
    topics: list[str] | str
    consumer_topics: list[str]
    source_cluster: str | None = None
    target_cluster: str | None = None
    writes_observations: list[dict[str, Any]] | str | None = None

    def conditions(self, stage: Stage, groups: list[str] | None = None,
                   share: float | str = 1.0) -> list[Condition]:
        """What must hold when ``stage`` switches ``groups`` (a fleet's; default all of the
        role) by ``share``: the invariant of that stage."""
        src, tgt = self.source_cluster, self.target_cluster
        consumers, producers = self.consumers, self.producers
        if stage is Stage.CANARY_CONSUMERS:
            # The target holds the topics and groups; the source keeps a consumer of each group,
            # since every producer still writes there.
            return [Condition(TARGET, MetadataPresent(self.consumer_topics, consumers, tgt)),
                    Condition(SOURCE, CanaryLeavesConsumers(groups or consumers, share, src))]
        if stage in (Stage.CANARY_PRODUCERS, Stage.REMAINING_PRODUCERS):
            # Whatever producers write, on either side, is read: consumers on both; and no
            # transactional half waits on the source for a check-back the movers would miss.
            return [Condition(TARGET, ClientsOnline(consumers, min_clients=1, cluster=tgt)),
                    Condition(SOURCE, ClientsOnline(consumers, min_clients=1, cluster=src)),
                    Condition(SOURCE, NoPendingHalf(self.topics, src))]
        if stage is Stage.CUTOVER:
            # Nothing undelivered, no producer of the spec, and no write by anyone since the
            # writes were measured stopped after the fence.
            return [Condition(SOURCE, BacklogZero(consumers, src)),
                    Condition(SOURCE, ClientsOnline(producers, "producer", 0, 0, src)),
                    Condition(SOURCE, WritesUnchanged(self.writes_observations, src))]
        if stage is Stage.ROLLBACK_PRODUCERS:
            return [Condition(SOURCE, ClientsOnline(consumers, min_clients=1, cluster=src))]
        if stage is Stage.ROLLBACK_CONSUMERS:
            return [Condition(TARGET, BacklogZero(consumers, tgt)),
                    Condition(TARGET, ClientsOnline(producers, "producer", 0, 0, tgt))]
        raise ValueError(f"unknown stage {stage!r}")

    def watch(self) -> list[Condition]:
        """What must stay true on the source after the cutover: nobody writes the topics (a
        restarted pod, a stale config, a rolled-back deployment), the fence holds, and no client
        of the migrated groups comes back."""
        src = self.source_cluster
        return [Condition(SOURCE, WritesUnchanged(self.writes_observations, src)),
                Condition(SOURCE, FenceHolds(self.topics, src)),
                Condition(SOURCE, ClientsOnline(self.consumers, "consumer", 0, 0, src)),
                Condition(SOURCE, ClientsOnline(self.producers, "producer", 0, 0, src))]

    def retirement(self) -> list[Condition]:
        """What must hold before the source topics are deleted, which deletes their messages: the
        fence held and nothing wrote them since, no transactional half waits to be committed into
        them, no group (listed or not) reads them or has anything left in them, and no broker would
        re-create them for a straggler's send."""
        src = self.source_cluster
        return [Condition(SOURCE, FenceHolds(self.topics, src)),
                Condition(SOURCE, WritesUnchanged(self.writes_observations, src)),
                Condition(SOURCE, NoPendingHalf(self.topics, src)),
                Condition(SOURCE, TopicsUnread(self.topics, src)),
                Condition(SOURCE, AutoCreateOff(src))]


def rebuild(condition: dict[str, Any], brokers: list[str]) -> Check:
    """The check of a serialised condition, bound to the run's broker set on its side."""
    return build_check(condition["kind"], {**condition["kwargs"], "brokers": list(brokers)})


async def observe_on(check: Check, side: str, admin: ClusterAdmin) -> dict[str, Any]:
    """Evaluate a condition's check once on ``admin``'s cluster: an observation that names it."""
    return {**await observe(check, admin), "condition": f"{check.describe()} on the {side}"}


async def verify(condition: dict[str, Any], admin: ClusterAdmin, brokers: list[str]) -> dict[str, Any]:
    """Evaluate one serialised condition now, bound to the run's broker set on its side."""
    return await observe_on(rebuild(condition, brokers), condition["side"], admin)
