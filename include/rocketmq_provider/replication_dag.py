"""Builds the DAGs of a replication task spec: create and start, control, monitoring, metadata sync."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from rocketmq_core.taskspec import ReplicationSpec
from rocketmq_provider.notifications import notifiers
from rocketmq_provider.operators.approval import ConflictGate, EvidenceApprovalOperator, XComEvidence, assignees
from rocketmq_provider.operators.metadata import (
    MetadataDiffOperator, MetadataSyncOperator, ResolveConflictsOperator, TwoWayMetadataSyncOperator,
)
from rocketmq_provider.operators.replication import (
    ACTIONS, ReplicationActiveOperator, ReplicationControlOperator, ReplicationMonitorOperator,
    ReplicationRescopeOperator, ReplicationStartOperator,
)

START = pendulum.datetime(2026, 1, 1, tz="UTC")


def _dag(spec: ReplicationSpec, kind: str, title: str, **kwargs) -> DAG:
    return DAG(f"rmq_replication_{kind}__{spec.slug}", dag_display_name=f"Replication {title}: {spec.name}",
               start_date=START, catchup=False, max_active_runs=1, tags=["rocketmq", "replication"],
               description=f"{spec.direction} replication {spec.source.conn_id} -> {spec.target.conn_id}", **kwargs)


def build_replication_dags(spec: ReplicationSpec) -> list[DAG]:
    scope = spec.scope.to_scope().to_dict()
    sync_args = {"source_conn_id": spec.source.conn_id, "target_conn_id": spec.target.conn_id,
                 "source_cluster": spec.source.cluster, "target_cluster": spec.target.cluster, "scope": scope}
    failure = notifiers(spec.notifications, "run_failed")
    with _dag(spec, "start", "create and start", schedule=None, on_failure_callback=failure) as start:
        plan = MetadataDiffOperator(task_id="metadata_plan", **sync_args)
        gate = EvidenceApprovalOperator(
            task_id="approve_start", subject=f"{spec.name}: sync metadata and start replicating?",
            body=f"{spec.direction} replication, {spec.workers} worker(s) per direction.",
            evidence=[XComEvidence("metadata_plan", "Metadata plan", field="text")],
            assigned_users=assignees(spec.approvers),
            notifiers=notifiers(spec.notifications, "gate_opened"))
        sync = MetadataSyncOperator(task_id="metadata_sync", **sync_args)
        plan >> gate >> sync >> ReplicationStartOperator(task_id="start_workers", spec=spec)

    with _dag(spec, "control", "control", schedule=None, render_template_as_native_obj=True, params={
        "action": Param("status", enum=list(ACTIONS), title="Action",
                        description="pause and resume keep the position; reset_offset works only while paused; "
                                    "delete (paused or stopped) removes the replicator's groups and offsets"),
        "timestamp": Param(None, type=["null", "string"], format="date-time", title="Reset to (UTC)",
                           description="For reset_offset: replication restarts from the first message stored "
                                       "at or after this time."),
    }) as control:
        ReplicationControlOperator(task_id="control", spec=spec, action="{{ params.action }}",
                                   timestamp="{{ params.timestamp }}")

    with _dag(spec, "monitor", "monitoring", schedule=spec.monitor_schedule) as monitor:
        ReplicationActiveOperator(task_id="task_active", spec=spec) >> ReplicationMonitorOperator(
            task_id="monitor", spec=spec, on_failure_callback=notifiers(spec.notifications, "replication_alert"))

    with _dag(spec, "metadata", "metadata sync", schedule=spec.metadata_sync_schedule,
              on_failure_callback=failure) as metadata:
        active = ReplicationActiveOperator(task_id="task_active", spec=spec)
        rescope = ReplicationRescopeOperator(task_id="restart_workers_on_scope_change", spec=spec)
        if spec.direction == "one-way":
            active >> MetadataSyncOperator(task_id="metadata_sync", allow_delete=True, **sync_args) >> rescope
        else:
            base = f"rmq_two_way_base__{spec.slug}"
            sync = TwoWayMetadataSyncOperator(task_id="metadata_sync", base_variable=base, **sync_args)
            active >> sync >> rescope
            gate = ConflictGate(task_id="resolve_conflicts_gate", sync_task_id="metadata_sync",
                                subject=f"{spec.name}: metadata changed on both sides; which side wins?",
                                assigned_users=assignees(spec.approvers),
                                notifiers=notifiers(spec.notifications, "gate_opened"))
            sync >> gate >> ResolveConflictsOperator(task_id="resolve_conflicts", gate_task_id=gate.task_id,
                                                     sync_task_id="metadata_sync", base_variable=base, **sync_args)
    return [start, control, monitor, metadata]
