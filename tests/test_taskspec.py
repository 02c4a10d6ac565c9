"""Task specs: validated with errors naming file and field; overlaps rejected; the factory keeps
valid specs' DAGs when another spec is invalid."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from airflow.dag_processing.dagbag import DagBag

from rocketmq_core.errors import InvalidSpec
from rocketmq_core.taskspec import held_because, hold_spec, is_held, load_specs, parse_spec, release_spec

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = yaml.safe_load((ROOT / "specs" / "orders-migration.yaml").read_text())


def variant(**changes) -> dict:
    spec = copy.deepcopy(EXAMPLE)
    spec.update(changes)
    return spec


def test_example_spec_is_valid_and_derives_its_groups():
    spec = parse_spec(EXAMPLE, "orders-migration.yaml")
    assert spec.groups_of("consumer") == ["GID_orders_billing", "GID_orders_shipping"]
    assert spec.groups_of("producer") == ["PID_orders"]
    assert spec.slug == "orders-migration"


@pytest.mark.parametrize("changes, field", [
    ({"name": "bad name!"}, "name"),
    ({"name": "x" * 201}, "name"),
    ({"source": {"conn_id": ""}}, "source.conn_id"),
    ({"approvers": []}, "approvers"),
    ({"approvers": ["on call"]}, "approvers"),
    ({"approvers": ["role:orders oncall"]}, "approvers"),
    ({"surprise": 1}, "surprise"),
    ({"target": {"conn_id": "rocketmq_source"}}, "(top level)"),
])
def test_invalid_specs_name_the_file_and_field(changes, field):
    with pytest.raises(InvalidSpec) as exc:
        parse_spec(variant(**changes), "broken.yaml")
    assert str(exc.value).startswith("broken.yaml: ")
    assert f"{field}:" in str(exc.value)


def test_a_migration_between_two_clusters_of_one_connection_asks_for_a_connection_each():
    """Broker sets, evidence and fleet moves are kept per connection: one shared by both sides
    would count the two clusters as one."""
    with pytest.raises(InvalidSpec, match="both use connection 'rocketmq_source': give each cluster"):
        parse_spec(variant(source={"conn_id": "rocketmq_source", "cluster": "old"},
                           target={"conn_id": "rocketmq_source", "cluster": "new"}), "shared.yaml")


def test_fleet_errors_point_into_the_fleet():
    fleets = copy.deepcopy(EXAMPLE["fleets"])
    fleets[1]["canary_share"] = 1.5
    fleets[0]["groups"] = ["bad group"]
    message = str(pytest.raises(InvalidSpec, parse_spec, variant(fleets=fleets), "f.yaml").value)
    assert "fleets.1.canary_share" in message and "fleets.0.groups" in message and "bad group" in message


def test_consumer_group_outside_the_scope_is_rejected():
    fleets = copy.deepcopy(EXAMPLE["fleets"])
    fleets[0]["groups"] = ["GID_payments"]
    with pytest.raises(InvalidSpec, match="outside the scope"):
        parse_spec(variant(fleets=fleets))


def test_chinese_task_name_gets_an_ascii_dag_id():
    spec = parse_spec(variant(name="订单迁移_v2"))
    assert spec.slug.startswith("_v2_") and spec.slug.isascii()


def write(folder: Path, name: str, spec: dict) -> None:
    (folder / name).write_text(yaml.safe_dump(spec, allow_unicode=True))


def test_overlapping_scopes_on_the_same_source_reject_both(tmp_path):
    write(tmp_path, "a.yaml", EXAMPLE)
    write(tmp_path, "b.yaml", variant(name="orders-again"))
    write(tmp_path, "c.yaml", variant(name="other-source", source={"conn_id": "rocketmq_other"}))
    specs, errors = load_specs(tmp_path)
    assert sorted(p.name for p in specs) == ["c.yaml"]
    assert "overlaps" in errors[tmp_path / "a.yaml"] and "b.yaml" in errors[tmp_path / "a.yaml"]
    assert "a.yaml" in errors[tmp_path / "b.yaml"]


def test_factory_keeps_valid_dags_and_reports_invalid_specs_as_an_import_error(tmp_path, monkeypatch):
    write(tmp_path, "good.yaml", EXAMPLE)
    bad = copy.deepcopy(EXAMPLE)
    bad.update(name="payments", scope={"topics": {"include": ["pay_*"]}, "groups": {"include": ["GID_pay"]}})
    bad["fleets"] = [dict(EXAMPLE["fleets"][1], canary_share=2)]
    write(tmp_path, "bad.yaml", bad)
    (tmp_path / "garbage.yaml").write_text("kind: [unclosed")
    monkeypatch.setenv("RMQ_TASK_SPECS_DIR", str(tmp_path))
    bag = DagBag(dag_folder=str(ROOT / "dags" / "rocketmq_tasks.py"))
    assert {"rmq_migration__orders-migration", "rmq_metadata_diff__orders-migration"} <= set(bag.dag_ids)
    (error,) = bag.import_errors.values()
    assert "bad.yaml: fleets.0.canary_share" in error and "garbage.yaml: not valid YAML" in error


def test_a_spec_removed_during_its_run_keeps_its_dag_until_the_run_releases_it(tmp_path, monkeypatch):
    """Removing a spec file under an active run would take the DAG away (its tasks then fail on
    "Dag not found"): the run's held copy keeps the migration DAG, marked, and refuses to start
    another run; a spec added since that overlaps it is the one refused; the release ends it."""
    monkeypatch.setenv("RMQ_TASK_SPECS_DIR", str(tmp_path))
    write(tmp_path, "orders.yml", EXAMPLE)
    spec = parse_spec(EXAMPLE, "orders.yml")
    held = hold_spec(spec, "manual__run1")
    assert list(load_specs(tmp_path)[0]) == [tmp_path / "orders.yml"]  # the file itself while it is there
    write(tmp_path, "orders-too.yaml", variant(name="orders-too"))  # overlaps, while the file is there
    specs, errors = load_specs(tmp_path)
    assert list(specs) == [tmp_path / "orders.yml"], errors  # the running spec stands, by its file
    assert "orders.yml, held by its active run" in errors[tmp_path / "orders-too.yaml"]
    (tmp_path / "orders-too.yaml").unlink()
    (tmp_path / "orders.yml").unlink()
    write(tmp_path, "orders-again.yaml", variant(name="orders-again"))  # the same topics, while the run is on
    specs, errors = load_specs(tmp_path)
    assert list(specs) == [held] and is_held(held) and specs[held].name == "orders-migration"
    assert "overlaps" in errors[tmp_path / "orders-again.yaml"]
    assert "orders-migration.yaml, removed but held by its active run" in errors[tmp_path / "orders-again.yaml"]
    bag = DagBag(dag_folder=str(ROOT / "dags" / "rocketmq_tasks.py"))
    dag = bag.dags["rmq_migration__orders-migration"]
    assert "spec-removed" in dag.tags and dag.description.startswith("SPEC FILE REMOVED")
    assert "rmq_metadata_diff__orders-migration" not in bag.dag_ids  # the schedule stopped with the file
    assert hold_spec(spec, "manual__run1") == held  # that run's preflight retried: still held
    with pytest.raises(InvalidSpec, match="spec file was removed"):
        hold_spec(spec, "manual__run2")
    assert not release_spec(spec, "manual__run2") and held.exists()  # only the holder releases
    assert release_spec(spec, "manual__run1") and not held.exists()
    (tmp_path / "orders-again.yaml").unlink()
    assert load_specs(tmp_path) == ({}, {})


REPLICATION = yaml.safe_load((ROOT / "specs" / "orders-replication.yaml").read_text())


def test_a_spec_edited_during_its_run_applies_only_to_the_next_run(tmp_path, monkeypatch):
    """An edit made while a run is active (a group dropped from a fleet, an approver changed)
    would change the DAG, and the checks, under that run: the run's copy stands until it ends,
    the DAG says so, and a broken edit is listed without taking the run's DAG away."""
    monkeypatch.setenv("RMQ_TASK_SPECS_DIR", str(tmp_path))
    write(tmp_path, "orders.yml", EXAMPLE)
    spec = parse_spec(EXAMPLE, "orders.yml")
    held = hold_spec(spec, "manual__run1")
    write(tmp_path, "orders.yml", variant(description="edited during the run", approvers=["someone-else"]))
    specs, errors = load_specs(tmp_path)
    assert list(specs) == [held] and held_because(held) == "edited" and not errors
    assert specs[held].approvers == EXAMPLE["approvers"]
    bag = DagBag(dag_folder=str(ROOT / "dags" / "rocketmq_tasks.py"))
    dag = bag.dags["rmq_migration__orders-migration"]
    assert "spec-edited" in dag.tags and dag.description.startswith("SPEC FILE EDITED during the active run")
    assert "rmq_metadata_diff__orders-migration" in bag.dag_ids  # the file is there: its schedule goes on
    (tmp_path / "orders.yml").write_text("kind: [unclosed")
    specs, errors = load_specs(tmp_path)
    assert list(specs) == [held] and "not valid YAML" in errors[tmp_path / "orders.yml"]
    write(tmp_path, "orders.yml", variant(description="edited during the run"))
    assert release_spec(spec, "manual__run1")
    specs, _ = load_specs(tmp_path)
    assert list(specs) == [tmp_path / "orders.yml"] and specs[tmp_path / "orders.yml"].description == \
        "edited during the run"  # the next run takes the edit
    assert held_because(tmp_path / "orders.yml") is None


def test_a_specs_folder_that_cannot_hold_a_copy_names_the_setting_that_moves_it(tmp_path, monkeypatch):
    """A specs folder synced read-only (git-sync) cannot take the held copy: the preflight's
    hold fails naming the folder and RMQ_HELD_SPECS_DIR; set, the copy lives there and keeps the
    DAG once the file is gone. (Root writes through a read-only mode: a file where the folder
    should be makes the same OSError.)"""
    specs, elsewhere = tmp_path / "specs", tmp_path / "held"
    specs.mkdir()
    monkeypatch.setenv("RMQ_TASK_SPECS_DIR", str(specs))
    write(specs, "orders.yml", EXAMPLE)
    (specs / ".held").write_text("not a folder")
    spec = parse_spec(EXAMPLE, "orders.yml")
    with pytest.raises(InvalidSpec, match=r"cannot hold a copy of the spec .* set RMQ_HELD_SPECS_DIR"):
        hold_spec(spec, "manual__run1")
    monkeypatch.setenv("RMQ_HELD_SPECS_DIR", str(elsewhere))
    elsewhere.mkdir()
    held = hold_spec(spec, "manual__run1")
    assert held.parent == elsewhere
    (specs / "orders.yml").unlink()
    loaded, errors = load_specs(specs)
    assert list(loaded) == [held] and is_held(held) and not errors
    assert release_spec(spec, "manual__run1") and not held.exists()


def test_replication_sides_must_stamp_different_origins():
    """Two clusters both keeping RocketMQ's default name would stamp one origin: loops undetectable."""
    same = {**REPLICATION, "source": {"conn_id": "a", "cluster": "DefaultCluster"},
            "target": {"conn_id": "b", "cluster": "DefaultCluster"}}
    with pytest.raises(InvalidSpec, match="both stamp origin 'DefaultCluster'"):
        parse_spec(same, "r.yaml")
    spec = parse_spec({**same, "target": {"conn_id": "b", "cluster": "dr-cluster"}}, "r.yaml")
    assert (spec.source.origin_id, spec.target.origin_id) == ("DefaultCluster", "dr-cluster")


def test_a_replication_start_time_without_a_zone_is_utc():
    spec = parse_spec({**REPLICATION, "start": "2026-03-01T08:00:00"}, "r.yaml")
    assert spec.start.isoformat() == "2026-03-01T08:00:00+00:00"


def test_an_address_service_fleet_builds_switches_that_name_both_clusters(tmp_path, monkeypatch):
    """A fleet switched through the address service gets AddressServiceSwitchers; every switch
    knows the cluster it leaves (its evidence is the clients gone from there)."""
    fleets = copy.deepcopy(EXAMPLE["fleets"])
    fleets[0]["switch"] = {"type": "address_service", "http_conn_id": "address_service",
                           "subgroup": "billing", "canary_subgroup": "billing-canary", "timeout_seconds": 300}
    write(tmp_path, "a.yaml", variant(fleets=fleets))
    monkeypatch.setenv("RMQ_TASK_SPECS_DIR", str(tmp_path))
    bag = DagBag(dag_folder=str(ROOT / "dags" / "rocketmq_tasks.py"))
    assert not bag.import_errors
    dag = bag.dags["rmq_migration__orders-migration"]
    name = fleets[0]["name"]
    canary, cutover = dag.get_task(f"canary_consumers.{name}"), dag.get_task(f"remaining_consumers.{name}")
    rollback = dag.get_task(f"rollback_consumers.{name}")
    for task in (canary, cutover):
        assert type(task.switcher).__name__ == "AddressServiceSwitcher"
        assert (task.to_cluster, task.from_cluster) == ("rocketmq_target", "rocketmq_source")
        assert (task.switcher.subgroup, task.switcher.canary_subgroup, task.switcher.timeout_seconds) == \
            ("billing", "billing-canary", 300)
    assert (rollback.to_cluster, rollback.from_cluster) == ("rocketmq_source", "rocketmq_target")


@pytest.mark.parametrize("switch, message", [
    ({"subgroup": "billing", "canary_subgroup": "billing"}, "canary_subgroup must differ"),
    ({"subgroup": "bil ling", "canary_subgroup": "c"}, "subgroup 'bil ling' must be"),
    ({"subgroup": "billing"}, "canary_subgroup"),
    ({"type": "carrier_pigeon"}, "does not match any of the expected tags"),
])
def test_a_bad_address_service_switch_is_named(switch, message):
    fleets = copy.deepcopy(EXAMPLE["fleets"])
    fleets[0]["switch"] = {"type": "address_service", "http_conn_id": "address_service", **switch}
    error = str(pytest.raises(InvalidSpec, parse_spec, variant(fleets=fleets), "f.yaml").value)
    assert "fleets.0.switch" in error and message in error


@pytest.mark.parametrize("switch, message", [
    ({"content_type": "form"}, "content_type form needs a body"),
    ({"content_type": "form", "body": {"dataId": "orders", "timeout": 3}}, "not text: ['timeout']"),
    ({"content_type": "xml", "body": {}}, "content_type"),
])
def test_a_bad_form_switch_is_named(switch, message):
    fleets = copy.deepcopy(EXAMPLE["fleets"])
    fleets[0]["switch"] = {"type": "http", "http_conn_id": "nacos", "endpoint": "/nacos/v1/cs/configs", **switch}
    error = str(pytest.raises(InvalidSpec, parse_spec, variant(fleets=fleets), "f.yaml").value)
    assert "fleets.0.switch" in error and message in error


def test_a_manual_fleet_gets_its_instructions_at_the_gate_before_each_switch(tmp_path, monkeypatch):
    """The gate before a manual switch says what to change, with the destination's name servers
    read from its connection when the gate opens; the switch is a ManualSwitcher."""
    fleets = copy.deepcopy(EXAMPLE["fleets"])
    fleets[0]["switch"] = {"type": "manual", "how": "Edit billing.yaml in the deploy repo.", "timeout_seconds": 900}
    write(tmp_path, "a.yaml", variant(fleets=fleets))
    monkeypatch.setenv("RMQ_TASK_SPECS_DIR", str(tmp_path))
    monkeypatch.setenv("AIRFLOW_CONN_ROCKETMQ_TARGET", '{"conn_type": "rocketmq", "host": "10.1.2.3", "port": 9876,'
                                                       ' "login": "AK", "password": "secret-SK"}')
    bag = DagBag(dag_folder=str(ROOT / "dags" / "rocketmq_tasks.py"))
    assert not bag.import_errors
    dag = bag.dags["rmq_migration__orders-migration"]
    name = fleets[0]["name"]
    switch = dag.get_task(f"remaining_consumers.{name}")
    assert type(switch.switcher).__name__ == "ManualSwitcher" and switch.switcher.timeout_seconds == 900
    [step] = [e for e in dag.get_task("approve_cutover").evidence if type(e).__name__ == "ManualStepEvidence"]
    text = step.render({})
    assert f"fleet {name}" in text and "all of its members" in text and "10.1.2.3:9876" in text
    assert "Edit billing.yaml in the deploy repo." in text and "secret-SK" not in text
    # producers' gates carry no manual step: that fleet is switched through the address service
    assert not [e for e in dag.get_task("approve_remaining_producers").evidence
                if type(e).__name__ == "ManualStepEvidence"]


def test_the_migration_graph_boxes_each_phase_and_keeps_task_ids(tmp_path, monkeypatch):
    from rocketmq_provider.migration_dag import PHASES

    write(tmp_path, "a.yaml", EXAMPLE)
    monkeypatch.setenv("RMQ_TASK_SPECS_DIR", str(tmp_path))
    bag = DagBag(dag_folder=str(ROOT / "dags" / "rocketmq_tasks.py"))
    dag = bag.dags["rmq_migration__orders-migration"]
    top = dag.task_group.children
    assert set(top) == {*PHASES, "outcome", "report"} - {"retire"}  # retire_source is off by default
    phase_of = {task_id: phase for phase in PHASES if phase in top for task_id in top[phase].children}
    assert phase_of["approve_metadata_sync"] == "metadata" and phase_of["source_drained"] == "drain"
    assert phase_of["approve_cutover"] == phase_of["remaining_consumers"] == "cutover"
    assert phase_of["rollback_requested"] == "rollback"
    assert dag.get_task("approve_cutover").task_id == "approve_cutover"  # no phase prefix


def test_retire_source_ends_the_run_with_a_gated_deletion_after_the_watch(tmp_path, monkeypatch):
    write(tmp_path, "a.yaml", variant(retire_source=True))
    monkeypatch.setenv("RMQ_TASK_SPECS_DIR", str(tmp_path))
    bag = DagBag(dag_folder=str(ROOT / "dags" / "rocketmq_tasks.py"))
    dag = bag.dags["rmq_migration__orders-migration"]
    assert set(dag.task_group.children["retire"].children) == {"approve_retire_source", "retire_source"}
    assert dag.get_task("approve_retire_source").upstream_task_ids == {"watch_source"}
    assert dag.get_task("retire_source").upstream_task_ids == {"approve_retire_source"}
    # a Reject skips the deletion only: the watch alone still makes the run a success
    assert {"watch_source", "retire_source"} <= dag.get_task("outcome").upstream_task_ids
    retire = dag.get_task("retire_source")
    assert [c["kind"] for c in retire.conditions] == ["fence_holds", "writes_unchanged", "no_pending_half",
                                                      "topics_unread", "auto_create_off"]
    assert retire.approval.gates == ("approve_retire_source",)
    assert "approve_retire_source" in dag.get_task("report").gates
