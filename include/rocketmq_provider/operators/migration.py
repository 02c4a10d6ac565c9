"""The steps of a migration that are not a switch, a sensor or a gate: preflight, fence, watch,
retirement, offsets, report."""

from __future__ import annotations

import time
from typing import Any

import pendulum

from airflow.sdk import BaseOperator, Variable
from airflow.sdk.exceptions import AirflowException, AirflowRuntimeError

from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.census import take_census
from rocketmq_core.errors import InvalidSpec, RocketMQError
from rocketmq_core.fence import allow_writes, carried_over, lift_fence, plan_fence, put_fence
from rocketmq_core.metadata.snapshot import ClusterSnapshot, take_snapshot
from rocketmq_core.migration import SOURCE, Condition
from rocketmq_core.retire import retire_topics, topic_holdings
from rocketmq_core.taskspec import MigrationSpec, hold_spec, load_specs, release_spec
from rocketmq_provider.hooks.rocketmq import RocketMQHook
from rocketmq_provider.operators.approval import ROLL_BACK, Approval
from rocketmq_provider.operators.fleet import failed_conditions, refuse
from rocketmq_provider.templating import record_brokers_seen, truthy
from rocketmq_provider.triggers.rocketmq import RocketMQWatchTrigger


async def _describe_cluster(admin: ClusterAdmin, cluster: str | None) -> dict[str, Any]:
    """Brokers and versions; reading every broker's topic table also proves the credentials."""
    masters = await admin.masters(cluster)
    versions = {}
    for broker in masters:
        versions[broker.name] = (await admin.broker_runtime_info(broker.master)).get("brokerVersionDesc", "?")
        await admin.topic_configs(broker.master)
    return {"brokers": sorted(versions), "versions": versions}


class MigrationPreflightOperator(BaseOperator):
    """Everything that must hold before a migration changes anything.

    Both clusters answer, with their versions; the credentials are accepted; the scope resolves
    to concrete topics and groups on the source; every consumer fleet's group exists there; every
    group the source's brokers know to read an in-scope topic is in a fleet or left behind on
    purpose, no fleet group reads a topic outside the scope, and no broadcasting group moves
    without the spec saying so (the census); the target has brokers; and no other task spec on the
    same source claims any of the same topics or groups; and no other run of this migration is
    unfinished. Returns the resolved scope, which later steps use.
    """

    def __init__(self, *, spec: MigrationSpec, **kwargs: Any):
        super().__init__(**kwargs)
        self.spec = spec

    def execute(self, context: Any) -> dict[str, Any]:
        spec = self.spec
        self._claim_the_migration(context)
        try:  # the DAG now outlives its spec file until the report releases it
            hold_spec(spec, context["run_id"])
        except InvalidSpec as exc:
            raise AirflowException(f"preflight: {exc}") from None
        try:
            source = RocketMQHook(spec.source.conn_id).run(lambda a: _describe_cluster(a, spec.source.cluster))
            target = RocketMQHook(spec.target.conn_id).run(lambda a: _describe_cluster(a, spec.target.cluster))
            snapshot = RocketMQHook(spec.source.conn_id).run(
                lambda a: take_snapshot(a, spec.source.cluster, include_acl=False))
        except RocketMQError as exc:
            raise AirflowException(f"preflight: {exc}") from exc
        scope = spec.scope.to_scope()
        topics, groups = snapshot.names_in(scope)
        problems = []
        if not topics:
            problems.append(f"the scope matches no topic on {spec.source.conn_id}")
        missing = [g for g in spec.groups_of("consumer") if g not in snapshot.groups]
        if missing:
            problems.append(f"consumer groups {missing} do not exist on {spec.source.conn_id}")
        problems += self._claims_elsewhere(set(topics), set(groups), snapshot)
        census = None
        if topics:
            try:
                census = RocketMQHook(spec.source.conn_id).run(
                    lambda a: take_census(a, topics, spec.source.cluster, source["brokers"]))
            except RocketMQError as exc:
                raise AirflowException(f"preflight: census of the readers of {topics}: {exc}") from exc
            problems += census.problems(spec.groups_of("consumer"), scope.topic, spec.leave_behind,
                                        spec.broadcast_groups)
        self.log.info("source %s: %s; target %s: %s", spec.source.conn_id, source["versions"],
                      spec.target.conn_id, target["versions"])
        self.log.info("scope resolves to %d topic(s) and %d group(s)", len(topics), len(groups))
        writers_outside = census.writers_outside(spec.groups_of("producer"), spec.leave_behind) if census else {}
        if census and census.writers is None:
            self.log.warning("the source's brokers cannot list their producers: writers outside the fleets"
                             " are unknown; the fence before the cutover is what stops them")
        elif writers_outside:
            self.log.warning("producer groups online on the source in no fleet (the fence will refuse their"
                             " writes to the migrated topics): %s", writers_outside)
        if problems:
            raise AirflowException("preflight: " + "; ".join(problems))
        # The run's broker sets: every later check must see all of these, or its figures are unknown.
        broker_sets = {spec.source.conn_id: source["brokers"], spec.target.conn_id: target["brokers"]}
        return {"source": source, "target": target, "broker_sets": broker_sets, "topics": topics, "groups": groups,
                "census": census.to_dict() if census else None, "writers_outside": writers_outside,
                "left_behind": spec.leave_behind,
                "consumer_groups": spec.groups_of("consumer"), "producer_groups": spec.groups_of("producer")}

    def _claim_the_migration(self, context: Any) -> None:
        """One run of a migration at a time: the run named in its claim (an Airflow Variable) must
        have finished, whatever its state, before another may start; a refusal names that run."""
        ti, run_id = context["ti"], context["run_id"]
        key = migration_claim_key(self.spec)
        holder = Variable.get(key, default=None)
        if holder and holder != run_id:
            try:
                state = str(getattr(ti.get_dagrun_state(ti.dag_id, holder), "value", "?"))
            except AirflowRuntimeError:  # the run was deleted: it holds nothing any more
                state = "deleted"
            if state in ("queued", "running"):
                raise AirflowException(f"preflight: run {holder} of this migration is still {state}; finish it,"
                                       " or mark it failed, before starting another")
        Variable.set(key, run_id)

    def _claims_elsewhere(self, topics: set[str], groups: set[str], snapshot: ClusterSnapshot) -> list[str]:
        """Other specs on the same source, resolved against the same snapshot, must not share names."""
        specs, _ = load_specs()
        problems = []
        for path, other in specs.items():
            if other.name == self.spec.name or other.source != self.spec.source:
                continue
            their_topics, their_groups = snapshot.names_in(other.scope.to_scope())
            shared = sorted(topics.intersection(their_topics) | groups.intersection(their_groups))
            if shared:
                problems.append(f"{path.name} ({other.name}) also covers {shared[:10]}")
        return problems


class ReleaseHeldSpec:
    """A DAG callback, last of the run's end callbacks: drop the copy of the spec the run held, so
    the DAG goes with its file. Not sooner: the DAG processor parses the DAG again to run the
    run's callbacks (its failure notice among them), and the run must close on the DAG it ran."""

    def __init__(self, spec: MigrationSpec):
        self.spec = spec

    def __call__(self, context: Any) -> None:
        release_spec(self.spec, context["run_id"])


def migration_claim_key(spec: MigrationSpec) -> str:
    """The Variable that names the run a migration belongs to now."""
    return f"rmq_migration_run__{spec.slug}"


def fence_record_key(spec: MigrationSpec) -> str:
    """The Variable that keeps the source topics' own permissions while a fence stands: a run
    after a failed one finds the fence already up and must restore what was there before it."""
    return f"rmq_migration_fence__{spec.slug}"


class FenceSourceOperator(BaseOperator):
    """Make the migrated topics read-only on every source master once the producers have moved
    (see rocketmq_core.fence); returns what each broker had, which ``LiftFenceOperator`` restores.

    ``record_key`` names a Variable that outlives the run: an earlier run's fence, still up, is
    carried over, so what is restored is the topics' own permission, not that fence's.
    """

    template_fields = ("topics", "brokers", "dry_run")

    def __init__(self, *, rocketmq_conn_id: str, topics: list[str] | str, record_key: str,
                 cluster: str | None = None, brokers: list[str] | str | None = None, dry_run: bool | str = False,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.rocketmq_conn_id = rocketmq_conn_id
        self.topics = topics
        self.record_key = record_key
        self.cluster = cluster
        self.brokers = brokers
        self.dry_run = dry_run

    def execute(self, context: Any) -> dict[str, Any]:
        if truthy(self.dry_run):
            self.log.info("dry run: would make %s read-only on %s", self.topics, self.rocketmq_conn_id)
            return {"dry_run": True, "before": {}}
        topics, brokers = list(self.topics), list(self.brokers or [])
        hook = RocketMQHook(self.rocketmq_conn_id)
        earlier = Variable.get(self.record_key, default=None, deserialize_json=True)
        fence = hook.run(lambda a: plan_fence(a, topics, self.cluster, brokers))
        # Recorded before anything changes: a fence that fails half-way is retried from the record.
        record = carried_over(earlier, {"perms": fence.perms, "acl": fence.acl})
        Variable.set(self.record_key, record, description="the migrated topics' permissions before the fence",
                     serialize_json=True)
        hook.run(lambda a: put_fence(a, fence))
        if earlier:
            self.log.info("an earlier fence's record was found; where the fence still stood, its values are kept")
        self.log.info("fenced (read-only) on %s: %s; ACL denied to the accounts %s", self.rocketmq_conn_id,
                      record["perms"], {b: sorted(a) for b, a in record["acl"].items()})
        if fence.unstoppable:
            self.log.warning("admin accounts pass every ACL check, the fence cannot stop them: %s",
                             fence.unstoppable)
        return {"dry_run": False, "before": record["perms"], "acl_before": record["acl"],
                "acl_unstoppable": fence.unstoppable, "carried_over": bool(earlier), "at": time.time()}


class LiftFenceOperator(BaseOperator):
    """Before producers roll back to the source, give the fenced topics their permission back."""

    def __init__(self, *, rocketmq_conn_id: str, fence_task_id: str, record_key: str, cluster: str | None = None,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.rocketmq_conn_id = rocketmq_conn_id
        self.fence_task_id = fence_task_id
        self.record_key = record_key
        self.cluster = cluster

    def execute(self, context: Any) -> dict[str, Any]:
        fence = context["ti"].xcom_pull(task_ids=self.fence_task_id) or {}
        record = {"perms": fence.get("before"), "acl": fence.get("acl_before")}
        if not record["perms"]:  # this run did not fence: an earlier run's fence may still stand
            record = Variable.get(self.record_key, default=None, deserialize_json=True) or {}
        if not record.get("perms"):
            self.log.info("no fence stands on record: nothing to lift")
            return {"restored": {}}

        async def lift(admin: ClusterAdmin) -> tuple[Any, ...]:
            return (await lift_fence(admin, record["perms"], self.cluster),
                    await allow_writes(admin, record.get("acl") or {}, self.cluster))
        restored, accounts = RocketMQHook(self.rocketmq_conn_id).run(lift)
        Variable.delete(self.record_key)
        self.log.info("fence lifted on %s: %s; ACL entries restored for %s", self.rocketmq_conn_id, restored, accounts)
        return {"restored": restored, "acl_restored": accounts}


class SourceWatchOperator(BaseOperator):
    """After the cutover, keep the source watched for ``watch_seconds`` (on the triggerer): the
    first write to a migrated topic, a fence lifted, or a client of a migrated group back on the
    source fails this task, naming it and the figures, and its failure callbacks alert.

    ``conditions`` come from the core (``MigrationRun.watch``), all on one side: the cluster of
    ``rocketmq_conn_id``; ``brokers`` is the run's broker set there (templated).
    """

    template_fields = ("conditions", "brokers", "watch_seconds", "dry_run")

    def __init__(self, *, rocketmq_conn_id: str, conditions: list[Condition], watch_seconds: float | str,
                 poll_interval: float = 15.0, brokers: list[str] | str | None = None,
                 dry_run: bool | str = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.rocketmq_conn_id = rocketmq_conn_id
        self.conditions = [c.to_dict() for c in conditions]
        self.watch_seconds = watch_seconds
        self.poll_interval = poll_interval
        self.brokers = brokers
        self.dry_run = dry_run

    def execute(self, context: Any) -> dict[str, Any] | None:
        seconds = float(self.watch_seconds)
        if truthy(self.dry_run) or not seconds:
            self.log.info("not watching the source (dry run, or watch_seconds is 0)")
            return {"watched_seconds": 0}
        self.log.info("watching %s for %.0fs: %s", self.rocketmq_conn_id, seconds, [c["kind"] for c in self.conditions])
        self.defer(trigger=RocketMQWatchTrigger(self.rocketmq_conn_id, list(self.conditions), list(self.brokers or []),
                                                deadline=time.time() + seconds,
                                                poll_interval=self.poll_interval),
                   method_name="execute_complete")
        return None

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        record_brokers_seen(context["ti"], [{"conn_id": self.rocketmq_conn_id,
                                             "brokers_seen": event.get("brokers_seen", [])}])
        seen = "; ".join(f"{o['condition']}: {o['summary']}" for o in event["observations"])
        if event["status"] != "quiet":
            raise AirflowException(f"the source was touched after the cutover ({self.rocketmq_conn_id}): {seen}")
        self.log.info("the source stayed untouched for %ss (%d checks): %s", self.watch_seconds, event["rounds"], seen)
        return {"watched_seconds": float(self.watch_seconds), "rounds": event["rounds"]}


class RetireSourceOperator(BaseOperator):
    """Delete the migrated topics on the source, and their messages (see rocketmq_core.retire).

    Nothing is deleted unless ``approval`` was answered in this run by an approver and every
    condition (``MigrationRun.retirement``, on the cluster of ``rocketmq_conn_id``) holds on the
    live source when this runs. There is no override: a deletion cannot be undone. What each
    broker held goes to the log and XCom; a refusal pushes the failed figures as ``refused``.
    """

    template_fields = ("topics", "conditions", "brokers", "dry_run")

    def __init__(self, *, rocketmq_conn_id: str, topics: list[str] | str, conditions: list[Condition],
                 approval: Approval, fence_record_key: str, cluster: str | None = None,
                 brokers: list[str] | str | None = None, dry_run: bool | str = False, **kwargs: Any):
        super().__init__(**kwargs)
        if {c.side for c in conditions} - {SOURCE}:
            raise ValueError("a retirement's conditions are all on the source")
        self.rocketmq_conn_id = rocketmq_conn_id
        self.topics = topics
        self.fence_record_key = fence_record_key
        self.conditions = [c.to_dict() for c in conditions]
        self.approval = approval
        self.cluster = cluster
        self.brokers = brokers
        self.dry_run = dry_run

    def execute(self, context: Any) -> dict[str, Any]:
        ti = context["ti"]
        answer = self.approval.answer(ti)
        brokers = list(self.brokers or [])
        failed = failed_conditions(self.conditions, {SOURCE: self.rocketmq_conn_id},
                                   {self.rocketmq_conn_id: brokers}, self.log, ti)
        topics = sorted(self.topics)
        if truthy(self.dry_run):
            self.log.info("dry run: would delete %s on %s%s", topics, self.rocketmq_conn_id,
                          " (refused now: conditions fail)" if failed else "")
            return {"dry_run": True, "topics": topics, "failed": failed}
        if failed:
            refuse(ti, f"not retiring {len(topics)} topic(s) on {self.rocketmq_conn_id}", failed)
        hook = RocketMQHook(self.rocketmq_conn_id)
        held = hook.run(lambda a: topic_holdings(a, topics, self.cluster, brokers))
        ti.xcom_push(key="held", value=held)
        self.log.info("retiring on %s: %s; what each broker holds: %s", self.rocketmq_conn_id, topics, held)
        record = Variable.get(self.fence_record_key, default=None, deserialize_json=True) or {}

        async def retire(admin: ClusterAdmin) -> dict[str, list[str]]:
            await retire_topics(admin, topics, self.cluster, brokers)
            # the accounts' SUB/DENY entries would deny the topics again if they were re-created
            return await allow_writes(admin, record.get("acl") or {}, self.cluster)
        accounts = hook.run(retire)
        Variable.delete(self.fence_record_key)  # no topic left to restore a permission to
        self.log.info("retired on %s: %s; ACL entries restored for %s", self.rocketmq_conn_id, topics, accounts)
        return {"dry_run": False, "retired": topics, "held": held, "acl_restored": accounts,
                "by": answer["responded_by"], "at": pendulum.now("UTC").isoformat()}


class ConsumeOffsetsOperator(BaseOperator):
    """Record the groups' committed offsets per queue on a cluster (for the report at cutover)."""

    template_fields = ("rocketmq_conn_id", "groups")

    def __init__(self, *, rocketmq_conn_id: str, groups: list[str], cluster: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.rocketmq_conn_id = rocketmq_conn_id
        self.groups = groups
        self.cluster = cluster

    def execute(self, context: Any) -> dict[str, Any]:
        async def _offsets(admin: ClusterAdmin) -> dict[str, Any]:
            masters = [b.master for b in await admin.masters(self.cluster)]
            table: dict[str, list[dict[str, Any]]] = {}
            for group in self.groups:
                rows = [row for stats in await admin.gather(admin.consume_stats(a, group) for a in masters)
                        for row in stats]
                table[group] = [{"topic": r.queue.topic, "broker": r.queue.broker, "queue": r.queue.queue_id,
                                 "broker_offset": r.broker_offset, "consumer_offset": r.consumer_offset}
                                for r in sorted(rows, key=lambda r: (r.queue.topic, r.queue.broker, r.queue.queue_id))]
            return table

        return {"at": time.time(), "offsets": RocketMQHook(self.rocketmq_conn_id).run(_offsets)}


class MigrationReportOperator(BaseOperator):
    """Who approved what and when, overrides and their reasons, offsets at cutover, phase timeline,
    and where each fleet stands.

    It runs as the run's teardown, after ``verdict_task``, and its own state is the run's: Airflow
    decides a run by a teardown that may fail it, not by the teardown's upstream. So it fails
    (after pushing the report) when the verdict is not success: a refused or failed step, or a
    run ended by hand (marked failed in the UI skips the verdict, and Airflow would otherwise let
    the teardown turn the run successful). A Roll back answered before anything moved is a stop,
    not a failure. The failure names where each fleet stands.
    """

    def __init__(self, *, gates: list[str], switches: list[str], offsets_task: str,
                 verdict_task: str, retire_task: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.gates = gates
        self.switches = switches
        self.offsets_task = offsets_task
        self.verdict_task = verdict_task
        self.retire_task = retire_task

    def execute(self, context: Any) -> dict[str, Any]:
        return self._report(context["ti"])

    def _report(self, ti: Any) -> dict[str, Any]:
        approvals = []
        for gate in self.gates:
            answer = ti.xcom_pull(task_ids=gate, key="answer")
            if answer:
                approvals.append({"gate": gate, "chosen": answer["chosen_options"], "by": answer["responded_by"],
                                  "at": answer["responded_at"]})
        switches, overrides, refusals = [], [], []
        retired = ti.xcom_pull(task_ids=self.retire_task) if self.retire_task else None
        retired = retired if retired and retired.get("retired") else None
        for task_id in [*self.switches, *([self.retire_task] if self.retire_task else [])]:
            record = ti.xcom_pull(task_ids=task_id, key="switch")
            if record:
                switches.append({"task": task_id, **record})
            override = ti.xcom_pull(task_ids=task_id, key="override")
            if override:
                overrides.append({"task": task_id, **override})
            refused = ti.xcom_pull(task_ids=task_id, key="refused")
            if refused:
                refusals.append({"task": task_id, "failed": refused})
        timeline = sorted([(_iso(a["at"]), f"{a['gate']}: {a['chosen']} by {a['by']}") for a in approvals]
                          + [(_iso(s["at"]), f"{s['task']}: {s['role']}s of {s['fleet']} -> {s['cluster']} "
                                             f"({s['share']:.0%}" + (", already there: kept" if s.get("kept") else "")
                                             + ")") for s in switches]
                          + ([(_iso(retired["at"]), f"{self.retire_task}: {len(retired['retired'])} topic(s)"
                                                    " deleted on the source")] if retired else []))
        phases = [{"from": a, "to": b, "seconds": round((pendulum.parse(tb) - pendulum.parse(ta)).total_seconds(), 1)}
                  for (ta, a), (tb, b) in zip(timeline, timeline[1:])]
        standing = {f"{s['role']}s of {s['fleet']}": f"{s['cluster']} ({_share_there(s):.0%})" for s in switches}
        states = ti.get_task_states(dag_id=ti.dag_id, task_ids=[self.verdict_task], run_ids=[ti.run_id])
        verdict = str(states.get(ti.run_id, {}).get(self.verdict_task))
        stopped = any(a["chosen"] == [ROLL_BACK] for a in approvals)
        report = {"approvals": approvals, "switches": switches, "overrides": overrides, "refusals": refusals,
                  "standing": standing,
                  "verdict": verdict, "ended_by_hand": verdict in ("skipped", "None") and not stopped,
                  "offsets_at_cutover": ti.xcom_pull(task_ids=self.offsets_task), "retired": retired,
                  "timeline": [{"at": at, "event": e} for at, e in timeline], "phases": phases}
        self.log.info("migration report:\n%s", "\n".join(f"{at}  {e}" for at, e in timeline))
        if verdict == "success" or (stopped and verdict in ("skipped", "None")):
            return report
        ti.xcom_push(key="return_value", value=report)
        where = "; ".join(f"{k} on {v}" for k, v in standing.items()) or "no fleet was switched"
        why = ("was ended before it reached a verdict (marked failed by hand?)" if report["ended_by_hand"]
               else f"failed ({self.verdict_task}: {verdict})")
        raise AirflowException(f"the run {why}; where each fleet stands: {where}")


def _share_there(switch: dict[str, Any]) -> float:
    """A switch's share, or for a kept one the least share of a group the brokers showed there."""
    moved = [m for m in (switch.get("moved") or {}).values() if m is not None] if switch.get("kept") else []
    return min(moved) if moved else float(switch["share"])


def _iso(value: Any) -> str:
    """One timestamp format for HITL answers (datetimes) and switch records (ISO strings)."""
    return pendulum.parse(str(value)).in_timezone("UTC").isoformat()
