"""Conditions on a live cluster that gate a migration step, evaluated the same way everywhere.

Sensors, their triggers and the precondition re-check of a fleet switch all evaluate these, so
"the source is drained" means one thing in the whole project. A check never turns an error
into success: a failure to measure raises, and callers treat that as "not satisfied".
Checks are rebuilt from ``(kind, kwargs)`` so triggers can serialise them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from rocketmq_core.admin import BrokerInfo, ClusterAdmin
from rocketmq_core.errors import InvalidSpec, RocketMQError
from rocketmq_core.fence import accounts_that_publish
from rocketmq_core.model import PERM_WRITE, RETRY_PREFIX

@dataclass
class CheckResult:
    """One evaluation: whether the condition held, the figures it saw, and a sentence for humans."""

    satisfied: bool
    figures: dict[str, Any]
    summary: str
    at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"satisfied": self.satisfied, "figures": self.figures, "summary": self.summary, "at": self.at}


class Check:
    """A condition with a name; ``kwargs`` rebuilds it (see ``build_check``).

    ``brokers`` is the run's broker set: the broker names seen when the run started. A check
    also remembers every broker it has seen itself. When one of them is missing (the name server
    drops a broker as soon as its connection does) or has no master, the figures it held are
    unknown, so the check raises instead of evaluating over the brokers that are left.
    """

    kind: ClassVar[str]
    brokers: list[str]
    _seen_brokers: set[str] | None = None

    async def live_brokers(self, admin: ClusterAdmin, cluster: str | None) -> list[BrokerInfo]:
        """Every broker of the run's set and of those seen before, each with its master."""
        expected = (self._seen_brokers or set()) | set(self.brokers)
        masters = await admin.masters(cluster, expected)
        self._seen_brokers = expected | {b.name for b in masters}
        return [b for b in masters if b.master]

    async def live_masters(self, admin: ClusterAdmin, cluster: str | None) -> list[str]:
        return [b.master for b in await self.live_brokers(admin, cluster) if b.master]

    def common_kwargs(self) -> dict[str, Any]:
        return {"cluster": self.cluster, "brokers": self.brokers}

    def kwargs(self) -> dict[str, Any]:
        raise NotImplementedError

    def brokers_seen(self) -> list[str]:
        """The run's broker set and every broker this check has seen since."""
        return sorted(set(self.brokers) | (self._seen_brokers or set()))

    def handover(self) -> dict[str, Any]:
        """The kwargs of a check that carries on from this one elsewhere (a sensor's trigger):
        the brokers it has seen join the broker set, so one gone since is still missed."""
        return {**self.kwargs(), "brokers": self.brokers_seen()}

    async def evaluate(self, admin: ClusterAdmin) -> CheckResult:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class BacklogZero(Check):
    """Nothing undelivered for the groups: lag, retry, delayed, timer and half messages all zero."""

    kind = "backlog_zero"

    def __init__(self, groups: list[str], cluster: str | None = None, brokers: list[str] | None = None):
        if not groups:
            raise InvalidSpec("backlog_zero needs at least one consumer group")
        self.groups = sorted(groups)
        self.cluster = cluster
        self.brokers = sorted(brokers or [])

    def kwargs(self) -> dict[str, Any]:
        return {"groups": self.groups, **self.common_kwargs()}

    def describe(self) -> str:
        return f"backlog of {len(self.groups)} group(s) is zero"

    async def evaluate(self, admin: ClusterAdmin) -> CheckResult:
        from rocketmq_core.backlog import attribute_system_rows, measure_backlog

        await self.live_masters(admin, self.cluster)
        report = await attribute_system_rows(admin, await measure_backlog(
            admin, self.groups, self.cluster, expected_brokers=self._seen_brokers or ()))
        figures = {"total": report.total, "by_group": dict(report.by_group)}
        return CheckResult(report.total == 0, figures, f"backlog {report.total} message(s)")


class ClientsOnline(Check):
    """Per group, the number of distinct online clients lies within [min_clients, max_clients]."""

    kind = "clients_online"

    def __init__(self, groups: list[str], role: str = "consumer", min_clients: int = 1,
                 max_clients: int | None = None, cluster: str | None = None, brokers: list[str] | None = None):
        if role not in ("consumer", "producer"):
            raise InvalidSpec(f"clients_online role must be consumer or producer, not {role!r}")
        if not groups:
            raise InvalidSpec("clients_online needs at least one group")
        if min_clients < 0 or (max_clients is not None and max_clients < min_clients):
            raise InvalidSpec(f"clients_online bounds [{min_clients}, {max_clients}] are empty")
        self.groups = sorted(groups)
        self.role = role
        self.min_clients = min_clients
        self.max_clients = max_clients
        self.cluster = cluster
        self.brokers = sorted(brokers or [])

    def kwargs(self) -> dict[str, Any]:
        return {"groups": self.groups, "role": self.role, "min_clients": self.min_clients,
                "max_clients": self.max_clients, **self.common_kwargs()}

    def describe(self) -> str:
        bound = (f"exactly {self.min_clients}" if self.max_clients == self.min_clients
                 else f"at least {self.min_clients}" + (f" and at most {self.max_clients}" if self.max_clients else ""))
        return f"{bound} {self.role}(s) online per group for {len(self.groups)} group(s)"

    async def evaluate(self, admin: ClusterAdmin) -> CheckResult:
        masters = await self.live_masters(admin, self.cluster)
        counts = {group: len(await admin.online_clients(masters, self.role, group)) for group in self.groups}
        failing = {g: n for g, n in counts.items()
                   if n < self.min_clients or (self.max_clients is not None and n > self.max_clients)}
        summary = (f"all {len(counts)} group(s) within bounds" if not failing
                   else f"{len(failing)} group(s) out of bounds: {failing}")
        return CheckResult(not failing, {"clients": counts}, summary)


class CanaryLeavesConsumers(Check):
    """After a canary of ``share`` moves, every group keeps a consumer on this cluster.

    A switch moves ceil(share x members) of a group (the switch request's contract): a group of
    one consumer, or a share that rounds up to all of them, would leave the source unread while
    its producers still write there.
    """

    kind = "canary_leaves_consumers"

    def __init__(self, groups: list[str], share: float | str, cluster: str | None = None,
                 brokers: list[str] | None = None):
        if not groups:
            raise InvalidSpec("canary_leaves_consumers needs at least one group")
        self.groups = sorted(groups)
        self.share = share  # a template until the run renders it
        self.cluster = cluster
        self.brokers = sorted(brokers or [])

    def kwargs(self) -> dict[str, Any]:
        return {"groups": self.groups, "share": self.share, **self.common_kwargs()}

    def describe(self) -> str:
        return f"a canary of {self.share} leaves a consumer of each of {len(self.groups)} group(s)"

    async def evaluate(self, admin: ClusterAdmin) -> CheckResult:
        share = float(self.share)
        if not 0 < share <= 1:
            raise InvalidSpec(f"canary share must be in (0, 1], not {self.share!r}")
        counts = (await ClientsOnline(self.groups, min_clients=0, cluster=self.cluster,
                                      brokers=self.brokers).evaluate(admin)).figures["clients"]
        left = {g: n - math.ceil(share * n) for g, n in counts.items()}
        stripped = sorted(g for g, n in left.items() if n < 1)
        summary = ("each group keeps a consumer" if not stripped else
                   "too small for a canary: " + ", ".join(f"{g} has {counts[g]} consumer(s) online, a "
                                                          f"{share:.0%} canary moves {counts[g] - left[g]}"
                                                          for g in stripped))
        return CheckResult(not stripped, {"clients": counts, "left": left}, summary)


class TopicsCheck(Check):
    """A check over some topics (a list, or a template that renders to one) on every master."""

    def __init__(self, topics: list[str] | str, cluster: str | None = None, brokers: list[str] | None = None):
        if not topics:
            raise InvalidSpec(f"{self.kind} needs at least one topic")
        self.topics = topics if isinstance(topics, str) else sorted(topics)  # a str is a template
        self.cluster = cluster
        self.brokers = sorted(brokers or [])

    def kwargs(self) -> dict[str, Any]:
        return {"topics": self.topics, **self.common_kwargs()}


class NoPendingHalf(TopicsCheck):
    """No transactional half message of the topics waits for its commit on any master: the
    producers that could answer the broker's check-back are still where the halves are."""

    kind = "no_pending_half"

    def describe(self) -> str:
        return "no pending transactional half message on the topics"

    async def evaluate(self, admin: ClusterAdmin) -> CheckResult:
        from rocketmq_core.backlog import pending_halves_by_topic

        masters = await self.live_masters(admin, self.cluster)
        tables = await admin.gather(pending_halves_by_topic(admin, addr, self.topics) for addr in masters)
        pending = {t: sum(table[t] for table in tables) for t in self.topics}
        waiting = {t: n for t, n in pending.items() if n}
        summary = ("no pending half message" if not waiting else
                   "pending half messages: " + ", ".join(f"{t} {n}" for t, n in waiting.items()))
        return CheckResult(not waiting, {"pending_halves": pending}, summary)


class WritesStopped(Check):
    """No new message on the topics for ``window_seconds``: their max offsets stand still.

    The check remembers its first sample, so it is satisfied only on a later evaluation at
    least ``window_seconds`` after the offsets last moved.
    """

    kind = "writes_stopped"

    def __init__(self, topics: list[str], window_seconds: float = 60, cluster: str | None = None,
                 brokers: list[str] | None = None, since: dict[str, Any] | None = None):
        """``since`` (from ``handover``): when the offsets were last seen moving, and where they stood."""
        if not topics:
            raise InvalidSpec("writes_stopped needs at least one topic")
        self.topics = sorted(topics)
        self.window_seconds = window_seconds
        self.cluster = cluster
        self.brokers = sorted(brokers or [])
        self._baseline: tuple[float, dict[str, int]] | None = (
            (float(since["at"]), dict(since["max_offsets"])) if since else None)

    def kwargs(self) -> dict[str, Any]:
        return {"topics": self.topics, "window_seconds": self.window_seconds, **self.common_kwargs()}

    def handover(self) -> dict[str, Any]:
        """The quiet window carries on where this check saw it start."""
        since = {"at": self._baseline[0], "max_offsets": self._baseline[1]} if self._baseline else None
        return {**super().handover(), "since": since}

    def describe(self) -> str:
        return f"no writes to {len(self.topics)} topic(s) for {self.window_seconds:g}s"

    async def evaluate(self, admin: ClusterAdmin) -> CheckResult:
        offsets = await max_offsets(admin, await self.live_masters(admin, self.cluster), self.topics)
        now = time.time()
        if self._baseline is None or self._baseline[1] != offsets:
            self._baseline = (now, offsets)
        still = now - self._baseline[0]
        figures = {"max_offsets": offsets, "seconds_unchanged": round(still, 1)}
        return CheckResult(still >= self.window_seconds, figures,
                           f"offsets unchanged for {still:.0f}s of {self.window_seconds:g}s")


async def max_offsets(admin: ClusterAdmin, masters: list[str], topics: list[str]) -> dict[str, int]:
    """Per topic, the sum of its queues' max offsets over the masters: moves with every write."""
    pairs = [(addr, topic) for addr in masters for topic in topics]
    tables = await admin.gather(admin.topic_offsets(addr, topic) for addr, topic in pairs)
    offsets = dict.fromkeys(topics, 0)
    for (_, topic), table in zip(pairs, tables):
        offsets[topic] += sum(high for _, high in table.values())
    return offsets


class WritesUnchanged(Check):
    """No write since a WritesStopped measurement found the topics quiet: their max offsets still
    equal what its last satisfied observation saw, re-measured now.

    ``observations`` are that measurement's (a sensor's XCom, so usually a template). None, or
    none satisfied, means nobody found the writes stopped in this run (a sensor marked
    successful by hand), which is not satisfied.
    """

    kind = "writes_unchanged"

    def __init__(self, observations: list[dict[str, Any]] | str | None = None, cluster: str | None = None,
                 brokers: list[str] | None = None):
        self.observations = observations
        self.cluster = cluster
        self.brokers = sorted(brokers or [])

    def kwargs(self) -> dict[str, Any]:
        return {"observations": self.observations, **self.common_kwargs()}

    def describe(self) -> str:
        return "no write to the topics since their writes were measured stopped"

    async def evaluate(self, admin: ClusterAdmin) -> CheckResult:
        quiet = [o for o in self.observations or [] if isinstance(o, dict) and o.get("satisfied")]
        if not quiet:
            return CheckResult(False, {"baseline": None}, "no measurement in this run found the writes stopped"
                                                          " (was the sensor marked successful by hand?)")
        baseline = quiet[-1]["figures"]["max_offsets"]
        offsets = await max_offsets(admin, await self.live_masters(admin, self.cluster), sorted(baseline))
        moved = {topic: {"then": baseline[topic], "now": offsets[topic]}
                 for topic in sorted(baseline) if offsets[topic] != baseline[topic]}
        summary = ("no write since" if not moved else
                   f"{len(moved)} topic(s) written since: " + ", ".join(f"{t} {m['then']} -> {m['now']}"
                                                                      for t, m in moved.items()))
        return CheckResult(not moved, {"baseline": baseline, "max_offsets": offsets, "moved": moved}, summary)


class FenceHolds(TopicsCheck):
    """The topics are still read-only on every master that holds them, and where a master has
    plain ACL on, no non-admin account may send to them (nobody lifted either part of the fence)."""

    kind = "fence_holds"

    def describe(self) -> str:
        return "the fenced topics are still read-only"

    async def evaluate(self, admin: ClusterAdmin) -> CheckResult:
        brokers = await self.live_brokers(admin, self.cluster)
        tables = await admin.gather(admin.topic_configs(b.master) for b in brokers if b.master)
        writable = {b.name: sorted(t for t in self.topics if t in table and table[t].perm & PERM_WRITE)
                    for b, table in zip(brokers, tables)}
        writable = {broker: topics for broker, topics in writable.items() if topics}
        publishers = await accounts_that_publish(admin, self.topics, brokers)
        lifted = [f"{b}: {', '.join(t)}" for b, t in sorted(writable.items())]
        lifted += [f"{b}: account {key} may send to {', '.join(t)}"
                   for b, accounts in sorted(publishers.items()) for key, t in accounts.items()]
        summary = "read-only everywhere" if not lifted else "writable again: " + "; ".join(lifted)
        return CheckResult(not lifted, {"writable": writable, "acl_publishers": publishers}, summary)


class TopicsUnread(TopicsCheck):
    """Nobody reads the topics any more and nothing of theirs waits: no consumer of any group that
    reads them is online, and every such group's backlog is zero (a group the spec left behind
    on purpose included). The census finds the groups, not the spec: deleting a topic deletes
    whatever a forgotten reader has not read yet."""

    kind = "topics_unread"

    def describe(self) -> str:
        return "no group reads the topics or has anything left to read"

    async def evaluate(self, admin: ClusterAdmin) -> CheckResult:
        from rocketmq_core.backlog import attribute_system_rows, measure_backlog
        from rocketmq_core.census import take_census

        await self.live_masters(admin, self.cluster)
        census = await take_census(admin, self.topics, self.cluster, self._seen_brokers or ())
        online = {g: r.online for g, r in census.readers.items() if r.online}
        waiting: dict[str, int] = {}
        if census.readers:
            report = await attribute_system_rows(admin, await measure_backlog(
                admin, sorted(census.readers), self.cluster, expected_brokers=self._seen_brokers or ()))
            # The topics' own rows, each reader's retry rows (which topic a retry came from is not
            # kept), and pending delayed, half or timer messages bound for the readers' topics.
            for row in report.rows:
                owner = row.group or "(pending delayed, half or timer messages)"
                if row.lag and (row.group is None or row.topic in self.topics or row.topic == RETRY_PREFIX + row.group):
                    waiting[owner] = waiting.get(owner, 0) + row.lag
            waiting = dict(sorted(waiting.items()))
        problems = ([f"{g} has {n} consumer(s) online" for g, n in online.items()]
                    + [f"{g} has {n} message(s) unread" for g, n in waiting.items()])
        return CheckResult(not problems, {"readers": sorted(census.readers), "online": online, "backlog": waiting},
                           "; ".join(problems) or f"{len(census.readers)} reader group(s), none online, nothing unread")


class AutoCreateOff(Check):
    """No master creates a topic on first send (``autoCreateTopicEnable``): a straggler's send to a
    deleted topic would otherwise bring it back, where nobody reads."""

    kind = "auto_create_off"

    def __init__(self, cluster: str | None = None, brokers: list[str] | None = None):
        self.cluster = cluster
        self.brokers = sorted(brokers or [])

    def kwargs(self) -> dict[str, Any]:
        return self.common_kwargs()

    def describe(self) -> str:
        return "no broker creates topics on first send"

    async def evaluate(self, admin: ClusterAdmin) -> CheckResult:
        brokers = await self.live_brokers(admin, self.cluster)
        configs = await admin.gather(admin.broker_config(b.master) for b in brokers)  # type: ignore[arg-type]
        creating = sorted(b.name for b, config in zip(brokers, configs)  # unset means on: the broker's default
                          if config.get("autoCreateTopicEnable", "true").lower() == "true")
        summary = ("auto-create is off everywhere" if not creating else
                   f"autoCreateTopicEnable=true on {', '.join(creating)}: a straggler's send would re-create"
                   " a retired topic where nobody reads (turn it off first)")
        return CheckResult(not creating, {"auto_create": creating}, summary)


class MetadataPresent(Check):
    """The topics and groups exist on every master broker (the metadata sync has reached them)."""

    kind = "metadata_present"

    def __init__(self, topics: list[str], groups: list[str], cluster: str | None = None,
                 brokers: list[str] | None = None):
        if not topics and not groups:
            raise InvalidSpec("metadata_present needs a topic or a group")
        self.topics = sorted(topics)
        self.groups = sorted(groups)
        self.cluster = cluster
        self.brokers = sorted(brokers or [])

    def kwargs(self) -> dict[str, Any]:
        return {"topics": self.topics, "groups": self.groups, **self.common_kwargs()}

    def describe(self) -> str:
        return f"{len(self.topics)} topic(s) and {len(self.groups)} group(s) exist"

    async def evaluate(self, admin: ClusterAdmin) -> CheckResult:
        masters = await self.live_masters(admin, self.cluster)
        topic_tables = await admin.gather(admin.topic_configs(addr) for addr in masters)
        group_tables = await admin.gather(admin.group_configs(addr) for addr in masters)
        missing_topics = sorted({t for table in topic_tables for t in self.topics if t not in table})
        missing_groups = sorted({g for table in group_tables for g in self.groups if g not in table})
        figures = {"missing_topics": missing_topics, "missing_groups": missing_groups}
        ok = not missing_topics and not missing_groups
        return CheckResult(ok, figures, "all present" if ok else f"missing topics {missing_topics}, "
                                                                  f"groups {missing_groups}")


async def observe(check: Check, admin: ClusterAdmin) -> dict[str, Any]:
    """Evaluate once; a measurement failure becomes an unsatisfied observation naming the error.
    Each names the brokers the check has seen (``brokers_seen``): a later step must see them too."""
    try:
        observation = (await check.evaluate(admin)).to_dict()
    except RocketMQError as exc:
        observation = {"satisfied": False, "figures": {}, "summary": f"could not measure: {exc}",
                       "error": type(exc).__name__, "at": time.time()}
    return {**observation, "brokers_seen": check.brokers_seen()}


@dataclass
class Streak:
    """Consecutive satisfied observations; ``required`` in a row pass. A failure resets it."""

    required: int
    count: int = 0

    def record(self, satisfied: bool) -> bool:
        self.count = self.count + 1 if satisfied else 0
        return self.count >= self.required


CHECKS: dict[str, type[Check]] = {c.kind: c for c in (BacklogZero, ClientsOnline, CanaryLeavesConsumers, NoPendingHalf,
                                                       WritesStopped, WritesUnchanged, FenceHolds, TopicsUnread,
                                                       AutoCreateOff, MetadataPresent)}


def build_check(kind: str, kwargs: dict[str, Any]) -> Check:
    try:
        return CHECKS[kind](**kwargs)
    except KeyError:
        raise InvalidSpec(f"unknown check {kind!r}; known: {sorted(CHECKS)}") from None
