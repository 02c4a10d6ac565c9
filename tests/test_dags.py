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


def test_provider_registers_the_rocketmq_connection_type_and_its_modules():
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    assert manager.hooks["rocketmq"].hook_class_name == "rocketmq_provider.hooks.rocketmq.RocketMQHook"
    info = manager.providers["rocketmq-airflow-migration"].data
    fields = info["connection-types"][0]["conn-fields"]
    assert set(fields) == {"namesrv_addrs", "cluster_name", "timeout"}
    assert info["connection-types"][0]["ui-field-behaviour"]["relabeling"]["password"] == "Secret key"
    assert "rocketmq_provider.triggers.rocketmq" in info["triggers"][0]["python-modules"]


def test_connection_uri_and_name_server_list_are_understood(monkeypatch):
    from rocketmq_provider.hooks.rocketmq import RocketMQHook

    monkeypatch.setenv("AIRFLOW_CONN_RMQ_URI", "rocketmq://AK:S%2Fecret@10.0.0.5:9876?cluster_name=prod")
    monkeypatch.setenv("AIRFLOW_CONN_RMQ_LIST", '{"conn_type": "rocketmq", "extra": {"namesrv_addrs": "a:1; b:2"}}')
    uri = RocketMQHook("rmq_uri").get_endpoint()
    assert (uri.namesrv_addrs, uri.cluster_name, uri.credentials.secret_key) == (["10.0.0.5:9876"], "prod", "S/ecret")
    assert "S/ecret" not in repr(uri)
    assert RocketMQHook("rmq_list").get_endpoint().namesrv_addrs == ["a:1", "b:2"]
