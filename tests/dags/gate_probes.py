"""Probe DAGs for the approval-gate tests, answered through Airflow's REST API."""

from __future__ import annotations

from pathlib import Path

import pendulum
from airflow.sdk import DAG, task

from airflow.providers.standard.operators.python import ShortCircuitOperator

from rocketmq_core.checks import ClientsOnline
from rocketmq_core.migration import TARGET, Condition
from rocketmq_core.taskspec import NotificationSpec
from rocketmq_provider.notifications import notifiers
from rocketmq_provider.operators.fleet import FleetSwitchOperator, HttpSwitcher
from rocketmq_provider.sensors.rocketmq import ClientsOnlineSensor
from rocketmq_provider.operators.approval import (
    Approval, ClientsEvidence, EvidenceApprovalOperator, MigrationGate, assignees, rollback_requested,
)

START = pendulum.datetime(2026, 1, 1, tz="UTC")
NOTIFY = NotificationSpec(webhook={"http_conn_id": "probe_webhook", "endpoint": "/hook"})


@task
def mark(name: str, params: dict | None = None) -> str:
    """Leave a file behind, so a test can tell whether a guarded task really ran."""
    path = Path(params["marker_dir"]) / name
    path.write_text("ran")
    return str(path)


with DAG("probe_gate_approval", schedule=None, start_date=START, catchup=False, render_template_as_native_obj=True,
         params={"groups": ["none"], "marker_dir": "/tmp"}, tags=["test-probe"]):
    gate = EvidenceApprovalOperator(
        task_id="gate", subject="Switch the probe fleet?",
        body="Consumers must be online on the target before producers move.",
        evidence=[ClientsEvidence([("rocketmq_source", None), ("rocketmq_target", None)], groups="{{ params.groups }}")],
        assigned_users=[{"id": "admin", "name": "admin"}],
    )
    watch = ClientsOnlineSensor(task_id="watch", rocketmq_conn_id="rocketmq_target", groups="{{ params.groups }}",
                                min_clients=0, stable_checks=2, poke_interval=1, timeout=60)
    watch >> gate >> mark.override(task_id="guarded")("guarded")

with DAG("probe_gate_branch", schedule=None, start_date=START, catchup=False,
         params={"marker_dir": "/tmp"}, tags=["test-probe"]):
    gate = MigrationGate(task_id="gate", subject="Continue the migration?", approve_task_id="go")
    check = ShortCircuitOperator(task_id="rollback_requested", python_callable=rollback_requested,
                                 op_kwargs={"gates": ["gate"]}, trigger_rule="all_done")
    gate >> mark.override(task_id="go")("go") >> check >> mark.override(task_id="roll_back")("roll_back")


with DAG("probe_notifications", schedule=None, start_date=START, catchup=False, tags=["test-probe"],
         on_failure_callback=notifiers(NOTIFY, "run_failed")):
    gate = EvidenceApprovalOperator(task_id="gate", subject="Proceed with the probe?", body="probe",
                                    notifiers=notifiers(NOTIFY, "gate_opened"))

    @task
    def fail() -> None:
        raise RuntimeError("this probe fails on purpose")

    gate >> fail()


with DAG("probe_gate_assigned", schedule=None, start_date=START, catchup=False, params={"marker_dir": "/tmp"},
         tags=["test-probe"]):
    EvidenceApprovalOperator(task_id="gate", subject="Move the probe fleet?", body="Only the on-call answers.",
                             assigned_users=assignees(["oncall"])) >> mark.override(task_id="guarded")("guarded")

with DAG("probe_gate_rotation", schedule=None, start_date=START, catchup=False, params={"marker_dir": "/tmp"},
         tags=["test-probe"]):
    EvidenceApprovalOperator(task_id="gate", subject="Move the probe fleet?", body="The rotation answers.",
                             assigned_users=assignees(["role:orders-oncall"])) >> mark.override(task_id="guarded")("guarded")

#: The HTTP connection the override probe's switch calls (a test points it at a recorder).
OVERRIDE_SWITCH_CONN = "probe_override_switch"

with DAG("probe_gate_override", schedule=None, start_date=START, catchup=False, render_template_as_native_obj=True,
         tags=["test-probe"]):
    # Nobody reads PROBE_OVERRIDE_READERS on the target: the switch refuses, unless the gate's
    # answer carries an override reason typed by the on-call.
    MigrationGate(task_id="gate", subject="Move the probe producers?", approve_task_id="switch",
                  assigned_users=assignees(["oncall"])) >> FleetSwitchOperator(
        task_id="switch", fleet="probe", role="producer", groups=["PROBE_OVERRIDE"], to_cluster="rocketmq_target",
        switcher=HttpSwitcher(OVERRIDE_SWITCH_CONN, endpoint="/switch", method="POST"),
        preconditions=[Condition(TARGET, ClientsOnline(["PROBE_OVERRIDE_READERS"], min_clients=1))],
        connections={TARGET: "rocketmq_target"}, approval=Approval(("gate",), approvers=("oncall",)))
