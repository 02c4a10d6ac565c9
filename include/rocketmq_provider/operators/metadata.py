"""Metadata diff and sync between two clusters, as Airflow operators over rocketmq_core.metadata."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator, Variable
from airflow.sdk.bases.notifier import BaseNotifier
from airflow.sdk.exceptions import AirflowException

from rocketmq_core.metadata.apply import apply_plan
from rocketmq_core.metadata.diff import MetadataDiff, diff
from rocketmq_core.metadata.fields import DELETE
from rocketmq_core.metadata.plan import make_plan
from rocketmq_core.metadata.scope import Scope
from rocketmq_core.metadata.snapshot import ClusterSnapshot, take_snapshot
from rocketmq_core.two_way import resolve, three_way
from rocketmq_provider.hooks.rocketmq import RocketMQHook
from rocketmq_provider.operators.approval import Approval
from rocketmq_provider.templating import truthy


class _TwoClusterOperator(BaseOperator):
    template_fields = ("source_conn_id", "target_conn_id", "scope")

    def __init__(self, *, source_conn_id: str, target_conn_id: str, scope: dict[str, Any] | str | None = None,
                 source_cluster: str | None = None, target_cluster: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.source_conn_id = source_conn_id
        self.target_conn_id = target_conn_id
        self.scope = scope or {}
        self.source_cluster = source_cluster
        self.target_cluster = target_cluster
        if isinstance(self.scope, dict):
            Scope.from_dict(self.scope)  # reject a bad scope when the DAG is parsed, unless templated

    def snapshot(self, conn_id: str, cluster: str | None) -> ClusterSnapshot:
        return RocketMQHook(conn_id).run(lambda admin: take_snapshot(admin, cluster))

    def compare(self) -> MetadataDiff:
        source = self.snapshot(self.source_conn_id, self.source_cluster)
        target = self.snapshot(self.target_conn_id, self.target_cluster)
        return diff(source, target, Scope.from_dict(self.scope))


class MetadataDiffOperator(_TwoClusterOperator):
    """Diff two clusters over a scope; push the structured report and log it as a table.

    With ``fail_on_drift`` any difference fails the task; ``drift_notifiers`` are called when
    there is one, whether or not the task fails.
    """

    def __init__(self, *, fail_on_drift: bool = False, drift_notifiers: Sequence[BaseNotifier] = (), **kwargs: Any):
        super().__init__(**kwargs)
        self.fail_on_drift = fail_on_drift
        self.drift_notifiers = list(drift_notifiers)

    def execute(self, context: Any) -> dict[str, Any]:
        result = self.compare()
        text = result.render()
        self.log.info("metadata diff %s -> %s:\n%s", self.source_conn_id, self.target_conn_id, text)
        report = {**result.to_dict(), "text": text}
        if not result.empty:
            for notifier in self.drift_notifiers:
                notifier(context)
            if self.fail_on_drift:
                context["ti"].xcom_push(key="return_value", value=report)
                raise AirflowException(f"metadata drift: {result.counts()}")
        return report


class MetadataSyncOperator(_TwoClusterOperator):
    """Plan, then apply, then diff again; fail if anything the plan should have fixed is left.

    Idempotent: a re-run after a crash plans only what is still missing. Deletes happen only
    with ``allow_delete``. ``dry_run`` (templated, for trigger forms) stops after the plan. With
    ``approval``, nothing is applied unless the gate before it recorded that answer in this run.
    """

    template_fields = (*_TwoClusterOperator.template_fields, "dry_run")

    def __init__(self, *, allow_delete: bool = False, dry_run: bool | str = False,
                 approval: Approval | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.allow_delete = allow_delete
        self.dry_run = dry_run
        self.approval = approval

    def execute(self, context: Any) -> dict[str, Any]:
        if self.approval is not None:
            self.approval.answer(context["ti"])
        before = self.compare()
        plan = make_plan(before, allow_delete=self.allow_delete)
        plan.validate()
        self.log.info("metadata plan (%d actions):\n%s", len(plan.actions), before.render())
        report: dict[str, Any] = {"plan": plan.to_dict(), "dry_run": truthy(self.dry_run)}
        if report["dry_run"] or plan.empty:
            return {**report, "applied": False}
        result = RocketMQHook(self.target_conn_id).run(lambda admin: apply_plan(plan, admin, self.target_cluster))
        after = self.compare()
        left = [c for c in after.changes if self.allow_delete or c.action != DELETE]
        report.update(applied=True, result=result.to_dict(), after=after.to_dict())
        if left:
            context["ti"].xcom_push(key="return_value", value=report)
            raise AirflowException(f"after sync {len(left)} difference(s) remain:\n{after.render()}")
        return report



class TwoWayMetadataSyncOperator(_TwoClusterOperator):
    """Three-way sync for two-way replication, against the last agreed snapshot (an Airflow Variable).

    Changes made on one side since then reach the other, deletions included. Objects changed on
    both sides differently are not touched: they are pushed as ``conflicts`` for a person to
    decide (see ConflictGate), and the base is only moved forward once both sides agree.
    """

    def __init__(self, *, base_variable: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.base_variable = base_variable

    def execute(self, context: Any) -> dict[str, Any]:
        scope = Scope.from_dict(self.scope)
        source = self.snapshot(self.source_conn_id, self.source_cluster)
        target = self.snapshot(self.target_conn_id, self.target_cluster)
        saved = Variable.get(self.base_variable, default=None)
        result = three_way(source, target, ClusterSnapshot.from_export(saved) if saved else None, scope)
        applied = {}
        for side, changes, conn_id, cluster in (("target", result.to_target, self.target_conn_id, self.target_cluster),
                                                ("source", result.to_source, self.source_conn_id, self.source_cluster)):
            plan = make_plan(changes, allow_delete=True)
            plan.validate()
            self.log.info("to the %s:\n%s", side, changes.render())
            if not plan.empty:
                applied[side] = RocketMQHook(conn_id).run(
                    lambda admin, p=plan, c=cluster: apply_plan(p, admin, c)).to_dict()
        report = {**result.to_dict(), "applied": applied}
        if result.conflicts:
            context["ti"].xcom_push(key="conflicts", value=[f"{k} {n}" for k, n in result.conflicts])
            self.log.warning("changed on both sides, left for a decision: %s", result.conflicts)
            return report
        agreed = self.snapshot(self.source_conn_id, self.source_cluster).scoped(scope)
        Variable.set(self.base_variable, json.dumps(agreed.to_export()))
        return report


class ResolveConflictsOperator(_TwoClusterOperator):
    """Make the losing side like the winner for the conflicting objects, as the gate decided."""

    def __init__(self, *, gate_task_id: str, sync_task_id: str, base_variable: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.gate_task_id = gate_task_id
        self.sync_task_id = sync_task_id
        self.base_variable = base_variable

    def execute(self, context: Any) -> dict[str, Any]:
        answer = context["ti"].xcom_pull(task_ids=self.gate_task_id, key="answer") or {}
        conflicts = context["ti"].xcom_pull(task_ids=self.sync_task_id, key="conflicts") or []
        winner = {"Source wins": "source", "Target wins": "target"}[answer["chosen_options"][0]]
        scope = Scope.from_dict(self.scope)
        source = self.snapshot(self.source_conn_id, self.source_cluster)
        target = self.snapshot(self.target_conn_id, self.target_cluster)
        keys = [tuple(c.split(" ", 1)) for c in conflicts]
        loser, changes = resolve(source, target, keys, winner, scope)
        conn_id, cluster = ((self.target_conn_id, self.target_cluster) if loser == "target"
                            else (self.source_conn_id, self.source_cluster))
        plan = make_plan(changes, allow_delete=True)
        result = RocketMQHook(conn_id).run(lambda admin: apply_plan(plan, admin, cluster))
        agreed = self.snapshot(self.source_conn_id, self.source_cluster).scoped(scope)
        Variable.set(self.base_variable, json.dumps(agreed.to_export()))
        return {"winner": winner, "applied_to": loser, "result": result.to_dict()}
