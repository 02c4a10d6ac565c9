"""Approval gates on a running Airflow, answered through its REST API as the on-call engineer would."""

from __future__ import annotations

import pytest

from http_recorder import RecordingServer
from rocketmq_demo.address import ADDRESS_PORT
from rocketmq_harness import clusters as harness
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


def test_only_the_assigned_on_call_answers_and_a_viewer_can_neither_trigger_nor_answer(airflow_as, tmp_path):
    _only_the_assigned_answer(airflow_as, "probe_gate_assigned", "`oncall`", tmp_path)


@pytest.mark.parametrize("dag, named", [("probe_gate_assigned", "`oncall`"),
                                        ("probe_gate_rotation", "everyone with role `orders-oncall`")])
def test_under_fab_the_approver_is_found_by_name_or_rotation_role(fab_airflow_as, dag, named, tmp_path):
    """FAB's user ids are row numbers: the spec's names and roles still resolve (OnCallFabAuthManager)."""
    _only_the_assigned_answer(fab_airflow_as, dag, named, tmp_path)


def _only_the_assigned_answer(airflow_as, dag: str, named: str, tmp_path) -> None:
    oncall, developer, watcher = airflow_as["oncall"], airflow_as["developer"], airflow_as["watcher"]
    oncall.wait_for_dag(dag)
    oncall.call("PATCH", f"/api/v2/dags/{dag}", {"is_paused": False})
    with pytest.raises(AirflowApiError) as refused:
        watcher.call("POST", f"/api/v2/dags/{dag}/dagRuns", {"logical_date": None, "conf": {}})
    assert refused.value.status == 403
    run_id = developer.trigger(dag, {"marker_dir": str(tmp_path)})  # the user role may start runs
    gate = oncall.wait_for_gate(dag, run_id, "gate")
    assert f"**Who may answer:** {named}" in gate["body"]
    for who in (developer, watcher):
        with pytest.raises(AirflowApiError) as refused:
            who.answer(dag, run_id, "gate", "Approve")
        assert refused.value.status == 403, who
    assert [g["task_instance"]["task_id"] for g in oncall.pending_gates(dag, run_id)] == ["gate"]
    assert not (tmp_path / "guarded").exists()
    oncall.answer(dag, run_id, "gate", "Approve")
    assert oncall.wait_for_run(dag, run_id) == "success"
    assert (tmp_path / "guarded").exists()
    answer = oncall.xcom(dag, run_id, "gate", key="answer")
    assert (answer["chosen_options"], answer["responded_by"]) == (["Approve"], "oncall")
    page = watcher.report_page(dag, run_id)  # a viewer reads the record, refused attempts included
    assert "triggered by developer" in page
    assert "<td>developer</td><td>answered gate: Approve (not recorded: refused)</td>" in page
    assert "<td>oncall</td><td>answered gate: Approve</td>" in page


def test_an_override_typed_at_the_gate_unlocks_its_switch_and_is_on_the_record(airflow_as):
    """The switch after the gate refuses while its live precondition fails (nobody reads on the
    target). An Approve with no reason changes nothing; the on-call's reason typed into the gate's
    form lets that switch act, and the record shows who, which gate, the reason and the failed
    figures, to anyone who may read the run."""
    oncall, watcher = airflow_as["oncall"], airflow_as["watcher"]
    dag, reason = "probe_gate_override", "INC-7: readers verified on the target by hand"
    switch_api = RecordingServer()
    try:
        # gate_probes.OVERRIDE_SWITCH_CONN: the switch's HTTP connection, here the recorder
        airflow_as["admin"].set_connection("probe_override_switch", **switch_api.connection())
        oncall.wait_for_dag(dag)
        outcomes = {}
        for typed in ("", reason):
            run_id = oncall.trigger(dag)
            oncall.wait_for_gate(dag, run_id, "gate")
            oncall.answer(dag, run_id, "gate", "Approve", params_input={"override_reason": typed})
            outcomes[typed] = (run_id, oncall.wait_for_run(dag, run_id), len(switch_api.requests))
        refused_run, refused_state, calls = outcomes[""]
        assert (refused_state, calls) == ("failed", 0)
        assert "PROBE_OVERRIDE_READERS" in str(oncall.xcom(dag, refused_run, "switch", key="refused"))
        run_id, state, calls = outcomes[reason]
        assert (state, calls) == ("success", 1)
        override = oncall.xcom(dag, run_id, "switch", key="override")
        assert (override["reason"], override["gate"], override["by"]) == (reason, "gate", "oncall"), override
        assert override["failed"][0]["figures"]["clients"] == {"PROBE_OVERRIDE_READERS": 0}, override
        page = watcher.report_page(dag, run_id)
        assert "<b>Override</b> of switch by oncall" in page and reason in page and "PROBE_OVERRIDE_READERS" in page
    finally:
        switch_api.close()


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


def test_the_demo_connections_are_where_admin_connections_shows_them(airflow_as):
    """Created in the metadata database (not only the environment): the UI lists and edits them."""
    listed = airflow_as["admin"].call("GET", "/api/v2/connections?limit=100")["connections"]
    by_id = {c["connection_id"]: c for c in listed}
    source = harness.CLUSTERS["source"].namesrv_port
    assert by_id["rocketmq_source"]["conn_type"] == "rocketmq" and by_id["rocketmq_source"]["port"] == source
    assert by_id["address_service"]["conn_type"] == "http" and by_id["address_service"]["port"] == ADDRESS_PORT
    with pytest.raises(AirflowApiError) as refused:  # a viewer sees runs, not connections
        airflow_as["watcher"].call("GET", "/api/v2/connections/rocketmq_source")
    assert refused.value.status == 403
