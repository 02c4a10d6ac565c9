"""Helpers for values that arrive through Jinja templates, and the run's broker sets they carry."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

#: XCom key under which a guarded step records, per connection id, the brokers its checks saw.
BROKERS_SEEN = "brokers_seen"


def truthy(value: bool | str) -> bool:
    """Templated flags arrive as strings unless the DAG renders native objects."""
    return value if isinstance(value, bool) else str(value).strip().lower() in ("true", "1", "yes")


def run_broker_sets(ti: Any, base: dict[str, list[str]] | None) -> dict[str, list[str]]:
    """The run's broker sets (a DAG macro): ``base`` (what the preflight saw) grown by every broker
    a step of this run has seen since (XCom ``brokers_seen`` of any of its tasks). A broker that
    joined mid-run and left again is then missed by every later check, not forgotten."""
    sets = {conn_id: set(brokers) for conn_id, brokers in (base or {}).items()}
    for seen in ti.xcom_pull(task_ids=list(ti.task.dag.task_ids), key=BROKERS_SEEN) or []:
        for conn_id, brokers in (seen or {}).items():
            sets.setdefault(conn_id, set()).update(brokers)
    return {conn_id: sorted(brokers) for conn_id, brokers in sorted(sets.items())}


def record_brokers_seen(ti: Any, observations: Iterable[dict[str, Any]]) -> None:
    """Push the brokers the observations' checks saw, per connection id (``conn_id``), for later steps."""
    seen: dict[str, set[str]] = {}
    for observation in observations:
        seen.setdefault(observation["conn_id"], set()).update(observation.get("brokers_seen") or [])
    if seen and ti is not None:  # None: the step runs outside a task (a test calling execute)
        ti.xcom_push(key=BROKERS_SEEN, value={conn_id: sorted(b) for conn_id, b in seen.items()})
