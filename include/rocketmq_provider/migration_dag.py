"""Builds the DAGs of a migration task spec: the migration itself and its scheduled metadata diff.

The order of steps is the only safe one: metadata, canary consumers, canary producers, the
remaining producers, the source fenced and drained, the remaining consumers. The order in the
graph is a convenience; safety comes from the switches, each of which re-checks its stage's
invariant (``rocketmq_core.migration``) against the live clusters when it runs, whatever
happened to the tasks before it. This module only maps stages to tasks and adds the gates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pendulum
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.python import ShortCircuitOperator
from airflow.sdk import DAG, Param, TaskGroup

from rocketmq_core.migration import SOURCE, TARGET, Condition, MigrationRun, Stage
from rocketmq_core.taskspec import (AddressServiceSwitchSpec, FleetSpec, ManualSwitchSpec, MigrationSpec,
                                    ReplicationSpec, held_because)
from rocketmq_provider.operators.approval import (
    ROLL_BACK, Approval, BacklogEvidence, ClientsEvidence, EvidenceApprovalOperator, InvariantEvidence,
    ManualStepEvidence, MigrationGate, WritersEvidence, XComEvidence, assignees, rollback_requested,
)
from rocketmq_provider.notifications import notifiers
from rocketmq_provider.templating import run_broker_sets
from rocketmq_provider.operators.fleet import (
    AddressServiceSwitcher, FleetSwitchOperator, HttpSwitcher, ManualSwitcher, Switcher,
)
from rocketmq_provider.operators.metadata import MetadataDiffOperator, MetadataSyncOperator
from rocketmq_provider.operators.migration import (
    ConsumeOffsetsOperator, FenceSourceOperator, LiftFenceOperator, MigrationPreflightOperator,
    MigrationReportOperator, ReleaseHeldSpec, RetireSourceOperator, SourceWatchOperator, fence_record_key,
)
from rocketmq_provider.sensors.rocketmq import BacklogZeroSensor, ClientsOnlineSensor, SourceWritesStoppedSensor

START = pendulum.datetime(2026, 1, 1, tz="UTC")
#: What a migration DAG built from a held copy says first, by why the copy is used (``held_because``).
HELD_NOTES = {"removed": "SPEC FILE REMOVED: this DAG stays only until its active run ends. ",
              "edited": "SPEC FILE EDITED during the active run: the run finishes on the spec it started with;"
                        " the edit applies to the next run. "}


def resolved(key: str) -> str:
    """A template for part of what the preflight resolved (rendered natively: a list, a dict)."""
    return f"{{{{ ti.xcom_pull(task_ids='preflight')['{key}'] }}}}"


#: A template for the run's broker sets (connection id -> broker names): what the preflight saw,
#: grown by what every later step saw (see ``templating.run_broker_sets``).
BROKER_SETS = "{{ run_broker_sets(ti, ti.xcom_pull(task_ids='preflight')['broker_sets']) }}"


def run_brokers(conn_id: str) -> str:
    """A template for the run's broker set on the cluster of one connection."""
    return f"{{{{ run_broker_sets(ti, ti.xcom_pull(task_ids='preflight')['broker_sets'])['{conn_id}'] }}}}"


def migration_dag_id(spec: MigrationSpec) -> str:
    return f"rmq_migration__{spec.slug}"


def diff_dag_id(spec: MigrationSpec) -> str:
    return f"rmq_metadata_diff__{spec.slug}"


def _params(spec: MigrationSpec) -> dict[str, Param]:
    return {
        "canary_share": Param(None, type=["null", "number"], exclusiveMinimum=0, exclusiveMaximum=1,
                              title="Canary share",
                              description="Share of each fleet moved in the canary steps; empty keeps each fleet's spec value."),
        "backlog_checks": Param(spec.stability.backlog_checks, type="integer", minimum=1, maximum=100,
                                title="Stability window (checks)",
                                description="Consecutive zero-backlog checks required before the last consumers move."),
        "watch_seconds": Param(spec.stability.watch_seconds, type="number", minimum=0, maximum=30 * 86400,
                               title="Watch the source after the cutover (seconds)",
                               description="How long a write, a lifted fence or a returning client on the source "
                                           "fails the run and alerts; 0 skips the watch."),
        "dry_run": Param(False, type="boolean", title="Dry run",
                         description="Plan and check everything, change nothing (no sync, no switch)."),
    }


def _switches(spec: MigrationSpec, run: MigrationRun, stage: Stage, approval: Approval) -> TaskGroup:
    """One switch per fleet of the stage's role (its canary share, or all of it), guarded by its
    gate's recorded answer and by the stage's invariant on the live clusters."""
    to, away = ((spec.source.conn_id, spec.target.conn_id) if stage.to_side == SOURCE
                else (spec.target.conn_id, spec.source.conn_id))
    with TaskGroup(stage.value) as group:
        for fleet in spec.fleets_of(stage.role):
            share = _share(stage, fleet)
            FleetSwitchOperator(
                task_id=fleet.name, fleet=fleet.name, role=stage.role, groups=fleet.groups, to_cluster=to,
                from_cluster=away, switcher=_switcher(fleet), preconditions=run.conditions(stage, fleet.groups, share),
                connections=_connections(spec), share=share, approval=approval, dry_run="{{ params.dry_run }}",
                broker_sets=BROKER_SETS,
            )
    return group


def _phase(name: str) -> TaskGroup:
    """A box around one phase's tasks in the graph; task ids stay as they are (no group prefix)."""
    return TaskGroup(name, prefix_group_id=False, tooltip=PHASES[name])


#: The migration's phases, as the graph groups them, with the tooltip each box shows.
PHASES = {
    "metadata": "preflight, the metadata plan and its sync to the target",
    "canary": "a canary share of consumers, then of producers, to the target",
    "producers": "all remaining producers to the target",
    "drain": "fence the source, wait until it takes no writes and holds nothing undelivered",
    "cutover": "the remaining consumers to the target, verified, then the source watched",
    "rollback": "only after a Roll back answer: producers back, target drained, consumers back",
    "retire": "with retire_source only: the migrated topics deleted on the source, once nobody can read or write them",
}


def _share(stage: Stage, fleet: FleetSpec) -> float | str:
    """A canary moves the trigger's share, else the fleet's; other stages move everyone."""
    return f"{{{{ params.canary_share or {fleet.canary_share} }}}}" if stage.canary else 1.0


def _stage_conditions(spec: MigrationSpec, run: MigrationRun, stage: Stage) -> list[Condition]:
    """Every condition the stage's switches check, over all its fleets."""
    return [c for fleet in spec.fleets_of(stage.role) for c in run.conditions(stage, fleet.groups, _share(stage, fleet))]


def _manual_steps(spec: MigrationSpec, stage: Stage) -> list[ManualStepEvidence]:
    """What the on-call changes by hand after this gate, one entry per manually switched fleet."""
    to = spec.source.conn_id if stage.to_side == SOURCE else spec.target.conn_id
    return [ManualStepEvidence(fleet.name, stage.role, fleet.groups, _share(stage, fleet), to, fleet.switch.how)
            for fleet in spec.fleets_of(stage.role) if isinstance(fleet.switch, ManualSwitchSpec)]


def _connections(spec: MigrationSpec) -> dict[str, str]:
    return {SOURCE: spec.source.conn_id, TARGET: spec.target.conn_id}


def _switcher(fleet: FleetSpec) -> Switcher:
    switch = fleet.switch
    if isinstance(switch, AddressServiceSwitchSpec):
        return AddressServiceSwitcher(switch.http_conn_id, switch.subgroup, switch.canary_subgroup,
                                      switch.timeout_seconds, switch.poll_seconds)
    if isinstance(switch, ManualSwitchSpec):
        return ManualSwitcher(switch.how, switch.timeout_seconds, switch.poll_seconds)
    return HttpSwitcher(switch.http_conn_id, endpoint=switch.endpoint, method=switch.method, body=switch.body,
                        content_type=switch.content_type)


def build_migration_dag(spec: MigrationSpec, held: str | None = None) -> DAG:
    """``held``: why an active run's copy of the spec is built instead of its file ("removed",
    "edited"); the DAG stays on that copy to finish the run."""
    src, tgt = spec.source, spec.target
    consumers, producers = spec.groups_of("consumer"), spec.groups_of("producer")
    users = assignees(spec.approvers)

    def approved_at(gate: str) -> Approval:
        return Approval((gate,), approvers=tuple(spec.approvers))

    stability = spec.stability
    gate_args: dict[str, Any] = {"assigned_users": users, "notifiers": notifiers(spec.notifications, "gate_opened")}
    run = MigrationRun(consumers, producers, topics=resolved("topics"), consumer_topics=spec.topics_of("consumer"),
                       source_cluster=src.cluster, target_cluster=tgt.cluster,
                       writes_observations="{{ ti.xcom_pull(task_ids='source_writes_stopped', key='observations') }}")
    with DAG(migration_dag_id(spec), dag_display_name=f"Migration: {spec.name}", schedule=None, start_date=START,
             # Room for a second run only so that its preflight refuses it at once, naming the
             # first (a queued run would start a migration whenever the first one ends).
             catchup=False, max_active_runs=2, render_template_as_native_obj=True,
             description=HELD_NOTES.get(held or "", "")
             + (spec.description or f"Move fleets from {src.conn_id} to {tgt.conn_id}"),
             on_success_callback=[ReleaseHeldSpec(spec)],
             on_failure_callback=[*notifiers(spec.notifications, "run_failed"), ReleaseHeldSpec(spec)],
             user_defined_macros={"run_broker_sets": run_broker_sets},
             tags=["rocketmq", "migration", *([f"spec-{held}"] if held else [])]) as dag:
        with _phase("metadata"):
            preflight = MigrationPreflightOperator(task_id="preflight", spec=spec)
            plan = MetadataDiffOperator(task_id="metadata_plan", source_conn_id=src.conn_id, target_conn_id=tgt.conn_id,
                                        source_cluster=src.cluster, target_cluster=tgt.cluster,
                                        scope=spec.scope.to_scope().to_dict())
            gate_sync = MigrationGate(task_id="approve_metadata_sync", subject=f"{spec.name}: apply the metadata plan?",
                                      body="Topics and groups the target lacks or holds differently. "
                                           "Roll back here only stops the run: nothing has moved yet.",
                                      approve_task_id="metadata_sync",
                                      evidence=[XComEvidence("metadata_plan", "Metadata plan", field="text")], **gate_args)
            sync = MetadataSyncOperator(task_id="metadata_sync", source_conn_id=src.conn_id, target_conn_id=tgt.conn_id,
                                        source_cluster=src.cluster, target_cluster=tgt.cluster,
                                        scope=spec.scope.to_scope().to_dict(), allow_delete=spec.allow_delete,
                                        dry_run="{{ params.dry_run }}", approval=approved_at("approve_metadata_sync"))

        both = [(src.conn_id, src.cluster), (tgt.conn_id, tgt.cluster)]
        strays = WritersEvidence(src.conn_id, producers, spec.leave_behind, src.cluster, run_brokers(src.conn_id))

        def gate(gate_id: str, next_id: str, stage: Stage, subject: str, evidence: list[Any]) -> MigrationGate:
            return MigrationGate(
                task_id=gate_id, subject=f"{spec.name}: {subject}", approve_task_id=next_id,
                evidence=[*_manual_steps(spec, stage), *evidence,
                          InvariantEvidence(_stage_conditions(spec, run, stage), _connections(spec),
                                            BROKER_SETS)], **gate_args)

        with _phase("canary"):
            gate_canary_consumers = gate(
                "approve_canary_consumers", "canary_consumers", Stage.CANARY_CONSUMERS,
                "Move the canary share of consumers to the target?",
                [ClientsEvidence(both, consumers)])
            canary_consumers = _switches(spec, run, Stage.CANARY_CONSUMERS, approved_at("approve_canary_consumers"))
            consumers_online = ClientsOnlineSensor(
                task_id="canary_consumers_online", rocketmq_conn_id=tgt.conn_id, groups=consumers, min_clients=1,
                cluster=tgt.cluster, brokers=run_brokers(tgt.conn_id), poke_interval=stability.poll_interval_seconds,
                timeout=stability.clients_timeout_seconds)
            gate_canary_producers = gate(
                "approve_canary_producers", "canary_producers", Stage.CANARY_PRODUCERS,
                "Consumers on the target are online. Are they idempotent? Move the canary share of producers?",
                [ClientsEvidence(both, consumers)])
            canary_producers = _switches(spec, run, Stage.CANARY_PRODUCERS, approved_at("approve_canary_producers"))
        with _phase("producers"):
            gate_remaining_producers = gate(
                "approve_remaining_producers", "remaining_producers", Stage.REMAINING_PRODUCERS,
                "Move all remaining producers to the target?",
                [ClientsEvidence(both, producers, "producer"), strays,
                 ClientsEvidence(both, consumers)])
            remaining_producers = _switches(spec, run, Stage.REMAINING_PRODUCERS,
                                            approved_at("approve_remaining_producers"))
        with _phase("drain"):
            # Producers are gone: a straggler's sends now fail at a Java client (read-only route), and
            # the quiet window and the drain are measured after the fence.
            fence = FenceSourceOperator(task_id="fence_source", rocketmq_conn_id=src.conn_id,
                                        topics=resolved("topics"), record_key=fence_record_key(spec),
                                        cluster=src.cluster, brokers=run_brokers(src.conn_id),
                                        dry_run="{{ params.dry_run }}")
            writes_stopped = SourceWritesStoppedSensor(
                task_id="source_writes_stopped", rocketmq_conn_id=src.conn_id, topics=resolved("topics"),
                cluster=src.cluster, brokers=run_brokers(src.conn_id), window_seconds=stability.writes_quiet_seconds,
                poke_interval=stability.poll_interval_seconds, timeout=stability.drain_timeout_seconds)
            drained = BacklogZeroSensor(
                task_id="source_drained", rocketmq_conn_id=src.conn_id, groups=resolved("groups"),
                cluster=src.cluster, brokers=run_brokers(src.conn_id), stable_checks="{{ params.backlog_checks }}",
                poke_interval=stability.poll_interval_seconds, timeout=stability.drain_timeout_seconds)
        with _phase("cutover"):
            gate_cutover = gate(
                "approve_cutover", "cutover_offsets", Stage.CUTOVER,
                "The source is drained. Move the remaining consumers to the target (cutover)?",
                [BacklogEvidence(src.conn_id, consumers, src.cluster),
                 ClientsEvidence(both, producers, "producer"), strays,
                 ClientsEvidence(both, consumers)])
            offsets = ConsumeOffsetsOperator(task_id="cutover_offsets", rocketmq_conn_id=src.conn_id,
                                             groups=consumers, cluster=src.cluster)
            remaining_consumers = _switches(spec, run, Stage.CUTOVER, approved_at("approve_cutover"))
            no_consumers_left = ClientsOnlineSensor(
                task_id="cutover_verified_consumers", rocketmq_conn_id=src.conn_id, groups=consumers, min_clients=0,
                max_clients=0, cluster=src.cluster, brokers=run_brokers(src.conn_id),
                poke_interval=stability.poll_interval_seconds,
                timeout=stability.clients_timeout_seconds)
            no_producers_left = ClientsOnlineSensor(
                task_id="cutover_verified_producers", rocketmq_conn_id=src.conn_id, groups=producers,
                role="producer", min_clients=0, max_clients=0, cluster=src.cluster, brokers=run_brokers(src.conn_id),
                poke_interval=stability.poll_interval_seconds,
                timeout=stability.clients_timeout_seconds)
            # The cutover is done; the source stays watched: a straggler's write (the fence does not
            # stop every client), a fence lifted by hand, a client of a migrated group back there.
            watch = SourceWatchOperator(
                task_id="watch_source", rocketmq_conn_id=src.conn_id, conditions=run.watch(),
                watch_seconds="{{ params.watch_seconds }}", poll_interval=stability.poll_interval_seconds,
                brokers=run_brokers(src.conn_id), dry_run="{{ params.dry_run }}",
                on_failure_callback=notifiers(spec.notifications, "source_touched"))
        gates = {g.task_id: g for g in (gate_canary_consumers, gate_canary_producers, gate_remaining_producers,
                                        gate_cutover)}

        with _phase("rollback"):
            rollback = ShortCircuitOperator(task_id="rollback_requested", python_callable=rollback_requested,
                                            op_kwargs={"gates": list(gates)}, trigger_rule="all_done",
                                            ignore_downstream_trigger_rules=False)
            rolled_back = Approval(tuple(gates), ROLL_BACK, tuple(spec.approvers))
            lift = LiftFenceOperator(task_id="rollback_lift_fence", rocketmq_conn_id=src.conn_id,
                                     fence_task_id="fence_source", record_key=fence_record_key(spec),
                                     cluster=src.cluster)
            rollback_producers = _switches(spec, run, Stage.ROLLBACK_PRODUCERS, rolled_back)
            target_drained = BacklogZeroSensor(
                task_id="rollback_target_drained", rocketmq_conn_id=tgt.conn_id, groups=consumers,
                cluster=tgt.cluster, brokers=run_brokers(tgt.conn_id),
                stable_checks="{{ params.backlog_checks }}", poke_interval=stability.poll_interval_seconds,
                timeout=stability.drain_timeout_seconds)
            rollback_consumers = _switches(spec, run, Stage.ROLLBACK_CONSUMERS, rolled_back)

        retire = None
        if spec.retire_source:
            with _phase("retire"):
                gate_retire = EvidenceApprovalOperator(
                    task_id="approve_retire_source", subject=f"{spec.name}: delete the migrated topics on the source?",
                    body="This deletes the topics and every message left in them on the source; it cannot be"
                         " undone. Reject keeps them: the run still succeeds.",
                    evidence=[InvariantEvidence(run.retirement(), _connections(spec), BROKER_SETS)],
                    **gate_args)
                retire = RetireSourceOperator(
                    task_id="retire_source", rocketmq_conn_id=src.conn_id, topics=resolved("topics"),
                    conditions=run.retirement(), approval=approved_at("approve_retire_source"),
                    fence_record_key=fence_record_key(spec), cluster=src.cluster,
                    brokers=run_brokers(src.conn_id), dry_run="{{ params.dry_run }}")
            watch >> gate_retire >> retire

        switch_ids = [t.task_id for g in (canary_consumers, canary_producers, remaining_producers,
                                          remaining_consumers, rollback_producers, rollback_consumers)
                      for t in g.children.values()]
        # A teardown runs whatever happened, a run ended by hand included; it carries the verdict.
        report = MigrationReportOperator(task_id="report",
                                         gates=["approve_metadata_sync", *gates,
                                                *(["approve_retire_source"] if retire else [])],
                                         switches=switch_ids, offsets_task="cutover_offsets", verdict_task="outcome",
                                         retire_task=retire.task_id if retire else None,
                                         ).as_teardown(on_failure_fail_dagrun=True)

        preflight >> plan >> gate_sync >> sync >> gate_canary_consumers >> canary_consumers
        canary_consumers >> consumers_online >> gate_canary_producers >> canary_producers
        canary_producers >> gate_remaining_producers >> remaining_producers
        remaining_producers >> fence >> writes_stopped >> drained >> gate_cutover >> offsets
        offsets >> remaining_consumers >> [no_consumers_left, no_producers_left] >> rollback
        [no_consumers_left, no_producers_left] >> watch
        rollback >> lift >> rollback_producers >> target_drained >> rollback_consumers
        # The run's verdict: failed if the cutover or the rollback failed or was refused anywhere
        # upstream, successful once either finished.
        outcome = EmptyOperator(task_id="outcome", trigger_rule="none_failed_min_one_success")
        # A Reject at the retirement gate skips only the retirement: the watch still decides.
        [watch, *([retire] if retire else []), rollback_consumers] >> outcome >> report
    # The trigger form, set once the tasks exist: Airflow deep-copies a DAG's params into every
    # task made after them (half the parse time of 200 specs), and a task's run reads the DAG's.
    dag.params.update(_params(spec))
    return dag


def build_diff_dag(spec: MigrationSpec) -> DAG:
    """The recurring diff of the same cluster pair and scope, on the spec's schedule."""
    with DAG(diff_dag_id(spec), dag_display_name=f"Metadata diff: {spec.name}", schedule=spec.diff_schedule,
             start_date=START, catchup=False, max_active_runs=1, tags=["rocketmq", "metadata-diff"],
             description=f"Metadata drift between {spec.source.conn_id} and {spec.target.conn_id}") as dag:
        MetadataDiffOperator(task_id="metadata_diff", source_conn_id=spec.source.conn_id,
                             target_conn_id=spec.target.conn_id, source_cluster=spec.source.cluster,
                             target_cluster=spec.target.cluster, scope=spec.scope.to_scope().to_dict())
    return dag


class SpecErrorsDag(DAG):
    """Stands for the invalid specs: its validation fails, so the DAG processor records an
    import error (naming each spec file and field) while the valid specs' DAGs load."""

    def validate(self) -> None:
        raise ValueError("invalid task spec(s): " + " | ".join(self.description.split("\n")))


def build_dags(specs: dict[Path, MigrationSpec | ReplicationSpec], errors: dict[Any, str]) -> list[DAG]:
    """The DAGs of ``load_specs``' answer. A spec whose file was removed during a run keeps only
    its migration DAG, until the run ends; its scheduled diff stops with the file."""
    from rocketmq_provider.replication_dag import build_replication_dags

    dags = []
    for path, spec in specs.items():
        held = held_because(path)
        if isinstance(spec, ReplicationSpec):
            dags += build_replication_dags(spec)
        elif held == "removed":
            dags.append(build_migration_dag(spec, held=held))
        else:
            dags += [build_migration_dag(spec, held=held), build_diff_dag(spec)]
    if errors:
        dags.append(SpecErrorsDag("rmq_invalid_task_specs", schedule=None, start_date=START,
                                  description="\n".join(errors.values())))
    return dags
