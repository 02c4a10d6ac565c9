"""Approval gates on a running Airflow, answered through its REST API as the on-call engineer would."""

from __future__ import annotations

import pytest

from http_recorder import RecordingServer
from rocketmq_harness.airflow_api import AirflowApiError


def test_gate_shows_live_evidence_and_approval_runs_what_it_guards(airflow_api, online_group, tmp_path):
    dag = "probe_gate_approval"
    airflow_api.wait_for_dag(dag)
    run_id = airflow_api.trigger(dag, {"groups": [online_group], "marker_dir": str(tmp_path)})
    gate = airflow_api.wait_for_gate(dag, run_id, "gate")
    assert gate["subject"] == "Switch the probe fleet?"
    assert f"| {online_group} | 0 | 1 |" in gate["body"], gate["body"]
    assert not (tmp_path / "guarded").exists()
    assert "waiting for your approval: gate" in airflow_api.report_page(dag, run_id)
    airflow_api.answer(dag, run_id, "gate", "Approve")
    assert airflow_api.wait_for_run(dag, run_id) == "success"
    assert (tmp_path / "guarded").read_text() == "ran"
    page = airflow_api.report_page(dag, run_id)
    assert "<td>gate</td><td>Approve</td><td>admin</td>" in page
    assert "<svg" in page and f"clients: {online_group} (last 1)" in page
    assert "run success" in page


def test_report_tab_is_registered_on_the_run_page(airflow_api):
    plugins = airflow_api.call("GET", "/api/v2/plugins")["plugins"]
    (ours,) = [p for p in plugins if p["name"] == "rocketmq_reports"]
    assert ours["external_views"][0]["destination"] == "dag_run"
    assert ours["external_views"][0]["href"] == "/rocketmq/reports/{DAG_ID}/{RUN_ID}"
    with pytest.raises(AirflowApiError) as missing:
        airflow_api.report_page("probe_gate_approval", "no-such-run")
    assert missing.value.status == 404


def test_rejected_gate_does_not_run_what_it_guards(airflow_api, tmp_path):
    dag = "probe_gate_approval"
    airflow_api.wait_for_dag(dag)
    run_id = airflow_api.trigger(dag, {"groups": ["G_nobody_here"], "marker_dir": str(tmp_path)})
    airflow_api.wait_for_gate(dag, run_id, "gate")
    with pytest.raises(AirflowApiError) as invalid:
        airflow_api.answer(dag, run_id, "gate", "Maybe")
    assert invalid.value.status == 400
    airflow_api.answer(dag, run_id, "gate", "Reject")
    airflow_api.wait_for_run(dag, run_id)
    assert airflow_api.task_states(dag, run_id)["guarded"] == "skipped"
    answer = airflow_api.xcom(dag, run_id, "gate", key="answer")
    assert (answer["chosen_options"], answer["responded_by"]) == (["Reject"], "admin")
    assert not (tmp_path / "guarded").exists()


def test_roll_back_branch_runs_the_rollback_only(airflow_api, tmp_path):
    dag = "probe_gate_branch"
    airflow_api.wait_for_dag(dag)
    run_id = airflow_api.trigger(dag, {"marker_dir": str(tmp_path)})
    airflow_api.wait_for_gate(dag, run_id, "gate")
    airflow_api.answer(dag, run_id, "gate", "Roll back")
    assert airflow_api.wait_for_run(dag, run_id) == "success"
    states = airflow_api.task_states(dag, run_id)
    assert (states["go"], states["rollback_requested"], states["roll_back"]) == ("skipped", "success", "success")
    assert (tmp_path / "roll_back").exists() and not (tmp_path / "go").exists()


def test_approve_branch_runs_forward_and_skips_the_rollback(airflow_api, tmp_path):
    dag = "probe_gate_branch"
    airflow_api.wait_for_dag(dag)
    run_id = airflow_api.trigger(dag, {"marker_dir": str(tmp_path)})
    airflow_api.wait_for_gate(dag, run_id, "gate")
    airflow_api.answer(dag, run_id, "gate", "Approve")
    assert airflow_api.wait_for_run(dag, run_id) == "success"
    states = airflow_api.task_states(dag, run_id)
    assert (states["go"], states["roll_back"]) == ("success", "skipped")
    assert (tmp_path / "go").exists() and not (tmp_path / "roll_back").exists()


def test_a_gate_answered_the_moment_it_is_listed_runs_what_it_guards(airflow_api, tmp_path):
    """A chat bot or a person with Required Actions open answers at once. On Airflow 3.3.2's own
    LocalExecutor a third of such answers failed the gate; GateSafeLocalExecutor takes them all."""
    dag = "probe_gate_branch"
    airflow_api.wait_for_dag(dag)
    for attempt in range(4):
        marker_dir = tmp_path / str(attempt)
        marker_dir.mkdir()
        run_id = airflow_api.trigger(dag, {"marker_dir": str(marker_dir)})
        gate = airflow_api.wait_for_gate(dag, run_id, "gate", poll=0.05)
        airflow_api.answer(dag, run_id, "gate", "Approve")
        assert airflow_api.wait_for_run(dag, run_id) == "success"
        states = airflow_api.task_states(dag, run_id)
        assert (states["gate"], states["go"], states["roll_back"]) == ("success", "success", "skipped"), (
            f"answered while the gate was {gate['task_instance']['state']}: {states}")
        assert (marker_dir / "go").exists()


def test_gate_opening_and_run_failure_are_announced_on_the_webhook(airflow_api):
    hook = RecordingServer()
    try:
        airflow_api.set_connection("probe_webhook", **hook.connection())
        dag = "probe_notifications"
        airflow_api.wait_for_dag(dag)
        run_id = airflow_api.trigger(dag)
        airflow_api.wait_for_gate(dag, run_id, "gate")
        opened = [b for _, b in hook.wait_for(lambda p, b: b.get("event") == "gate_opened")]
        assert opened[0]["text"].startswith("probe_notifications: gate gate waits for approval: Proceed with the probe?")
        assert opened[0]["report"].endswith(f"/rocketmq/reports/probe_notifications/{run_id}")
        airflow_api.answer(dag, run_id, "gate", "Approve")
        assert airflow_api.wait_for_run(dag, run_id) == "failed"
        failed = [b for _, b in hook.wait_for(lambda p, b: b.get("event") == "run_failed", timeout=120)]
        assert failed[0]["run_id"] == run_id and all(path == "/hook" for path, _ in hook.requests)
    finally:
        hook.close()


def test_a_dead_webhook_does_not_block_the_gate(airflow_api):
    airflow_api.set_connection("probe_webhook", conn_type="http", host="127.0.0.1", port=1, schema="http")
    dag = "probe_notifications"
    run_id = airflow_api.trigger(dag)
    gate = airflow_api.wait_for_gate(dag, run_id, "gate")
    assert gate["task_instance"]["state"] in ("running", "awaiting_input")
    airflow_api.answer(dag, run_id, "gate", "Reject")
    airflow_api.wait_for_run(dag, run_id)
    assert airflow_api.task_states(dag, run_id) == {"gate": "success", "fail": "skipped"}
