"""The DAG folder imports cleanly and its DAGs run against the real clusters."""

from __future__ import annotations

from pathlib import Path

from airflow.dag_processing.dagbag import DagBag

DAGS = Path(__file__).resolve().parents[1] / "dags"


def test_dag_folder_has_no_import_errors():
    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    assert "rocketmq_cluster_health" in bag.dag_ids


def test_cluster_health_dag_reports_both_versions(airflow_env):
    bag = DagBag(dag_folder=str(DAGS))
    run = bag.get_dag("rocketmq_cluster_health").test()
    assert run.state == "success"
    reports = [ti.xcom_pull(task_ids="describe", map_indexes=ti.map_index)
               for ti in run.get_task_instances() if ti.task_id == "describe"]
    versions = sorted(v for report in reports for v in report["versions"].values())
    assert versions == ["V4_9_7", "V5_5_0"]
