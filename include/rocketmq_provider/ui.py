"""The report page as a FastAPI app mounted in Airflow's api-server by plugins/rocketmq_reports.py.

It reads the run from the metadata database when the page is opened, so it shows where a run
stands now. Access is Airflow's own: the caller must be allowed to read the DAG's runs.
"""

from __future__ import annotations

import json

from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import HTMLResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import requires_access_dag
from airflow.models.dagrun import DagRun
from airflow.models.log import Log
from airflow.models.taskinstance import TaskInstance
from airflow.models.xcom import XComModel
from airflow.utils.session import create_session

from rocketmq_provider.reporting import HISTORY_DAG_PREFIXES, HISTORY_RUNS, RunRecord, render

app = FastAPI(title="RocketMQ migration reports")


def load_run(session: Session, dag_id: str, run_id: str) -> RunRecord:
    run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
    if run is None:
        raise HTTPException(404, f"no run {run_id} of {dag_id}")
    tis = session.scalars(select(TaskInstance).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id))
    # Upstream tasks weigh more (Airflow's default weight rule), which orders steps as the DAG does.
    tasks = [(ti.task_id, ti.state) for ti in sorted(tis, key=lambda t: (-t.priority_weight, t.task_id))]
    record = RunRecord(dag_id, run_id, str(run.state), [(t, str(s) if s else None) for t, s in tasks])
    rows = session.scalars(select(XComModel).where(
        XComModel.dag_id == dag_id, XComModel.run_id == run_id,
        XComModel.key.in_(["answer", "switch", "override", "return_value"])))
    for row in rows:
        value = XComModel.deserialize_value(row)
        if row.key == "answer":
            record.answers[row.task_id] = value
        elif row.key == "switch":
            record.switches[row.task_id] = value
        elif row.key == "override":
            record.overrides.append({"task": row.task_id, **value})
        elif row.task_id == "report" and isinstance(value, dict):
            record.report = value
        elif row.task_id == "preflight" and isinstance(value, dict):
            record.preflight = value
    record.observations = _observations(session, run)
    record.triggered_by = run.triggering_user_name
    record.actions = _actions(session, dag_id, run_id)
    record.control_actions = _control_actions(session, dag_id)
    return record


#: The DAGs whose runs act on a replication task (by DAG id prefix), with the task that acts.
CONTROL_DAGS = {"rmq_replication_start__": "start_workers", "rmq_replication_control__": "control"}
CONTROL_RUNS = 50


def _control_actions(session: Session, dag_id: str) -> list[dict]:
    """On any page of a replication task: its latest starts and control actions, newest first,
    each with who triggered it, what it asked and what came of it, from the runs themselves."""
    if not dag_id.startswith("rmq_replication_"):
        return []
    name = dag_id.split("__", 1)[1]
    acting = {f"{prefix}{name}": task for prefix, task in CONTROL_DAGS.items()}
    runs = session.scalars(select(DagRun).where(DagRun.dag_id.in_(acting))
                           .order_by(DagRun.run_after.desc()).limit(CONTROL_RUNS)).all()
    results = {(row.dag_id, row.run_id): XComModel.deserialize_value(row) for row in session.scalars(
        select(XComModel).where(XComModel.dag_id.in_(acting), XComModel.run_id.in_([r.run_id for r in runs]),
                                XComModel.task_id.in_(set(acting.values())), XComModel.key == "return_value"))}
    actions = []
    for run in runs:
        conf = run.conf or {}
        start = run.dag_id.startswith("rmq_replication_start__")
        actions.append({"at": str(run.start_date or run.run_after), "by": run.triggering_user_name,
                        "action": "start" if start else conf.get("action", "status"),
                        "timestamp": None if start else conf.get("timestamp"), "state": str(run.state),
                        "outcome": results.get((run.dag_id, run.run_id))})
    return actions


#: The audit log's events (Airflow's API endpoint names) that change a run by hand.
AUDITED_EVENTS = ("patch_task_instance", "post_clear_task_instances", "patch_dag_run", "update_hitl_detail")


def _actions(session: Session, dag_id: str, run_id: str) -> list[dict]:
    rows = session.scalars(select(Log).where(Log.dag_id == dag_id, Log.run_id == run_id,
                                             Log.event.in_(AUDITED_EVENTS)).order_by(Log.dttm))
    actions = []
    for row in rows:
        try:
            extra = json.loads(row.extra or "{}")
        except ValueError:
            extra = {}
        actions.append({"at": str(row.dttm), "by": row.owner, "event": row.event, "task_id": row.task_id,
                        "extra": extra if isinstance(extra, dict) else {}})
    return actions


def _observations(session: Session, run: DagRun) -> dict[str, list[dict]]:
    """Per task, the figures its checks recorded: this run's, or for a monitoring DAG this run's
    and those of up to HISTORY_RUNS runs before it, oldest first."""
    run_ids = [run.run_id]
    if run.dag_id.startswith(HISTORY_DAG_PREFIXES):
        run_ids = list(session.scalars(
            select(DagRun.run_id).where(DagRun.dag_id == run.dag_id, DagRun.run_after <= run.run_after)
            .order_by(DagRun.run_after.desc()).limit(HISTORY_RUNS)))
    rows = session.scalars(select(XComModel).where(
        XComModel.dag_id == run.dag_id, XComModel.run_id.in_(run_ids), XComModel.key == "observations"))
    observations: dict[str, list[dict]] = {}
    for row in rows:
        observations.setdefault(row.task_id, []).extend(XComModel.deserialize_value(row) or [])
    return {task: sorted(obs, key=lambda o: o.get("at", 0)) for task, obs in observations.items()}


@app.get("/reports/{dag_id}/{run_id}", response_class=HTMLResponse,
         dependencies=[Depends(requires_access_dag("GET", DagAccessEntity.RUN))])
def report_page(dag_id: str, run_id: str) -> HTMLResponse:
    with create_session() as session:
        return HTMLResponse(render(load_run(session, dag_id, run_id)))
