"""Airflow DAG factory: one migration DAG and one scheduled metadata-diff DAG per task spec in $RMQ_TASK_SPECS_DIR.

This file only declares: the specs are the source of truth. Reading them touches no network.
Invalid specs surface as one import error naming each file and field; valid ones still load.
"""

from rocketmq_core.taskspec import load_specs
from rocketmq_provider.migration_dag import build_dags

_specs, _errors = load_specs()
for _dag in build_dags(_specs, _errors):
    globals()[_dag.dag_id] = _dag
