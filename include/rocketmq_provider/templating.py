"""Helpers for values that arrive through Jinja templates, and the run's broker sets they carry."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from airflow.sdk import Variable

#: XCom key under which a guarded step records, per connection id, the brokers its checks saw.
BROKERS_SEEN = "brokers_seen"


def truthy(value: bool | str) -> bool:
    """Templated flags arrive as strings unless the DAG renders native objects."""
    return value if isinstance(value, bool) else str(value).strip().lower() in ("true", "1", "yes")


def broker_record_key(dag_id: str) -> str:
    """The Variable that keeps a DAG's current run's grown broker sets. Unlike XCom, clearing a
    task does not take what it saw away from it: within a run the sets only grow."""
    return f"rmq_run_brokers__{dag_id}"


def _recorded(ti: Any) -> dict[str, set[str]]:
    """The sets the Variable holds for this run (a record of another run counts for nothing)."""
    record = json.loads(Variable.get(broker_record_key(ti.dag_id), default="{}"))
    if record.get("run_id") != ti.run_id:
        return {}
    return {conn_id: set(brokers) for conn_id, brokers in record.get("sets", {}).items()}


def run_broker_sets(ti: Any, base: dict[str, list[str]] | None) -> dict[str, list[str]]:
    """The run's broker sets (a DAG macro): ``base`` (what the preflight saw) grown by every broker
    a step of this run has seen since (XCom ``brokers_seen`` of any of its tasks, and the run's
    record that survives a cleared task). A broker that joined mid-run and left again is then
    missed by every later check, not forgotten."""
    sets = {conn_id: set(brokers) for conn_id, brokers in (base or {}).items()}
    seen = ti.xcom_pull(task_ids=list(ti.task.dag.task_ids), key=BROKERS_SEEN) or []
    for grown in [*seen, _recorded(ti)]:
        for conn_id, brokers in (grown or {}).items():
            sets.setdefault(conn_id, set()).update(brokers)
    return {conn_id: sorted(brokers) for conn_id, brokers in sorted(sets.items())}


def record_brokers_seen(ti: Any, observations: Iterable[dict[str, Any]]) -> None:
    """Keep the brokers the observations' checks saw, per connection id (``conn_id``), for the
    run's later steps: in the task's XCom and in the run's record, which is written only when it
    grows (so a step that saw nothing new cannot overwrite a concurrent step's addition)."""
    grown: dict[str, set[str]] = {}
    for observation in observations:
        grown.setdefault(observation["conn_id"], set()).update(observation.get("brokers_seen") or [])
    if not grown or ti is None:  # None: the step runs outside a task (a test calling execute)
        return
    ti.xcom_push(key=BROKERS_SEEN, value={conn_id: sorted(b) for conn_id, b in grown.items()})
    record = _recorded(ti)
    if any(not brokers <= record.get(conn_id, set()) for conn_id, brokers in grown.items()):
        for conn_id, brokers in grown.items():
            record.setdefault(conn_id, set()).update(brokers)
        Variable.set(broker_record_key(ti.dag_id), json.dumps(
            {"run_id": ti.run_id, "sets": {conn_id: sorted(b) for conn_id, b in sorted(record.items())}}))
