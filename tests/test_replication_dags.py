"""Replication task DAGs on a running Airflow, answered through its REST API, between the real
4.9 source and 5.x target: start behind its gate, pause, reset by time, resume, stop, monitoring
with its alert, and the metadata DAG carrying adds, deletes and two-way conflicts."""

from __future__ import annotations

import os
import signal
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster_side import Side, wait_for
from conftest import E2E_HOME, E2E_SPECS
from http_recorder import RecordingServer
from rocketmq_core.model import TopicConfig
from rocketmq_core.procutil import alive
from rocketmq_provider.replication_runner import LocalProcessRunner

SOURCE, TARGET = "rocketmq_source", "rocketmq_target"


@dataclass
class Task:
    """One replication task spec written into the standalone's specs folder, and its DAGs."""

    name: str
    prefix: str
    spec_path: Path

    def dag(self, kind: str) -> str:
        return f"rmq_replication_{kind}__{self.name}"

    def topic(self, label: str) -> str:
        return f"{self.prefix}_{label}"


@pytest.fixture
def sides(rmq_clusters) -> tuple[Side, Side]:
    return Side.of(rmq_clusters["source"]), Side.of(rmq_clusters["target"])


@pytest.fixture
def runner() -> LocalProcessRunner:
    """The runner the standalone's tasks use, read from this side to see and clean up its workers."""
    return LocalProcessRunner(E2E_HOME / "state")


@pytest.fixture
def webhook(airflow_api):
    server = RecordingServer()
    conn_id = f"repl_hook_{uuid.uuid4().hex[:8]}"
    airflow_api.set_connection(conn_id, **server.connection())
    yield conn_id, server
    server.close()


@pytest.fixture
def make_task(airflow_api, runner, webhook):
    """Write a replication spec for a fresh topic prefix; at the end stop its workers and remove it."""
    made: list[Task] = []

    def _make(direction: str = "one-way", **extra: Any) -> Task:
        u = uuid.uuid4().hex[:8]
        task = Task(f"rdag_{u}", f"T_rdag_{u}", E2E_SPECS / f"rdag_{u}.yaml")
        spec = {"kind": "replication", "name": task.name, "source": {"conn_id": SOURCE},
                "target": {"conn_id": TARGET}, "direction": direction,
                "scope": {"topics": {"include": [f"{task.prefix}_*"]}, "groups": {"include": [f"G_rdag_{u}_*"]}},
                "start": "earliest", "workers": 1, "approvers": ["admin"],
                "monitor_schedule": None, "metadata_sync_schedule": None,
                "notifications": {"webhook": {"http_conn_id": webhook[0], "endpoint": "/hook"}}, **extra}
        task.spec_path.write_text(yaml.safe_dump(spec))
        made.append(task)
        return task
    yield _make
    for task in made:
        for direction in ("forward", "reverse"):
            runner.stop(f"{task.name}/{direction}")
        task.spec_path.unlink(missing_ok=True)


def run(api, dag_id: str, conf: dict[str, Any] | None = None) -> tuple[str, str]:
    api.wait_for_dag(dag_id)
    run_id = api.trigger(dag_id, conf)
    return run_id, api.wait_for_run(dag_id, run_id)


def control(api, task: Task, action: str, timestamp: str | None = None) -> tuple[str, str]:
    return run(api, task.dag("control"), {"action": action, "timestamp": timestamp})


def start(api, task: Task, expect_in_plan: str) -> dict[str, Any]:
    dag = task.dag("start")
    api.wait_for_dag(dag)
    run_id = api.trigger(dag)
    gate = api.wait_for_gate(dag, run_id, "approve_start")
    assert expect_in_plan in gate["body"], gate["body"]
    api.answer(dag, run_id, "approve_start", "Approve")
    assert api.wait_for_run(dag, run_id) == "success", api.task_states(dag, run_id)
    return api.xcom(dag, run_id, "start_workers")


def send(side: Side, topic: str, prefix: str, count: int) -> list[str]:
    keys = [f"{prefix}-{i}" for i in range(count)]
    for i, key in enumerate(keys):
        side.send(topic, i % 4, key)
    return keys


def arrived(side: Side, topic: str, expected: Counter[str]) -> Counter[str] | None:
    """The keys stored on ``side`` once they reach the expected counts (None before)."""
    have = side.keys(topic) if topic in side.run(lambda a: a.topic_names()) else Counter()
    return have if sum(have.values()) >= sum(expected.values()) else None


def alive_workers(runner: LocalProcessRunner, task: Task) -> dict[str, bool]:
    return {w: info["alive"] for w, info in runner.status(f"{task.name}/forward").items()}


def test_start_pause_reset_resume_monitor_stop_through_the_dags(airflow_api, sides, runner, make_task, webhook):
    source, target = sides
    task = make_task()
    topic = task.topic("orders")
    source.create_topic(topic)
    before = send(source, topic, "before", 20)

    started = start(airflow_api, task, topic)
    assert started["topics"] == [topic] and started["workers"] == {"forward": ["worker-0"]}
    middle = datetime.now(timezone.utc)
    wait_for(lambda: arrived(target, topic, Counter(before)), "messages sent before the start", 90)
    later = send(source, topic, "later", 20)
    expected = Counter(before + later)
    assert wait_for(lambda: arrived(target, topic, expected), "messages sent while running", 90) == expected

    # reset only while paused: refused, and nothing moved
    run_id, state = control(airflow_api, task, "reset_offset", middle.isoformat())
    assert state == "failed"
    assert "while it is running; it must be paused" in airflow_api.task_log(task.dag("control"), run_id, "control")

    assert control(airflow_api, task, "pause")[1] == "success"
    assert alive_workers(runner, task) == {}
    paused = send(source, topic, "paused", 10)
    assert target.keys(topic) == expected, "a paused task replicated"

    run_id, state = control(airflow_api, task, "reset_offset", middle.isoformat())
    assert state == "success"
    moved = airflow_api.xcom(task.dag("control"), run_id, "control")["reset"]["forward"]
    assert len(moved) == 4, moved
    assert control(airflow_api, task, "resume")[1] == "success"
    # replayed from the time: everything sent after it once more, the paused messages once
    expected = Counter(before + later * 2 + paused)
    assert wait_for(lambda: arrived(target, topic, expected), "replay from the reset time", 90) == expected

    run_id, state = run(airflow_api, task.dag("monitor"))
    assert state == "success"
    figures = airflow_api.xcom(task.dag("monitor"), run_id, "monitor")
    assert figures["state"] == "running" and figures["failed"] == 0 and figures["replicated"] >= 30, figures

    hook_id, hook = webhook
    pids = [info["pid"] for info in runner.status(f"{task.name}/forward").values()]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    run_id, state = run(airflow_api, task.dag("monitor"))
    assert state == "failed"
    alerts = [body for _, body in hook.wait_for(lambda path, body: body.get("event") == "replication_alert",
                                                timeout=120)]
    assert [(body["dag_id"], body["run_id"]) for body in alerts] == [(task.dag("monitor"), run_id)], hook.requests
    assert "workers not running: ['forward/worker-0']" in alerts[0]["text"]
    page = airflow_api.report_page(task.dag("monitor"), run_id)  # this run's figures and the earlier run's
    assert "monitor — 2 checks" in page and "delay_seconds (last" in page and "replicated (last" in page, page

    assert control(airflow_api, task, "resume")[1] == "success"  # restarts the dead worker
    assert list(alive_workers(runner, task).values()) == [True]
    more = send(source, topic, "more", 10)
    expected += Counter(more)
    assert wait_for(lambda: arrived(target, topic, expected), "messages after the restart", 90) == expected

    run_id, state = control(airflow_api, task, "stop")
    assert state == "success" and alive_workers(runner, task) == {}
    assert airflow_api.xcom(task.dag("control"), run_id, "control") == {"stopped": {"forward": ["worker-0"]}}
    # every start and control action is on the record, newest first: who, what, and what came of it
    page = airflow_api.report_page(task.dag("control"), run_id)
    section = page.split("Replication control: who did what", 1)[1].split("</table>", 1)[0]
    rows = [row.split("</td><td>")[1:4] for row in section.split("<tr><td>")[1:]]
    assert [what.split(" to ")[0] for _, what, _ in rows] == [
        "stop", "resume", "resume", "reset_offset", "pause", "reset_offset", "start"], rows
    assert {by for by, _, _ in rows} == {"admin"} and rows[3][1] == f"reset_offset to {middle.isoformat()}"
    assert [state for _, _, state in rows] == ["success"] * 5 + ["failed", "success"]
    assert "{&quot;stopped&quot;: {&quot;forward&quot;: [&quot;worker-0&quot;]}}" in section

    group = f"rmq_replicator_{task.name}"
    assert group in source.run(lambda a: a.group_configs(source.broker))
    assert (topic, group) in source.run(lambda a: a.all_consumer_offsets(source.broker))
    run_id, state = control(airflow_api, task, "delete")
    assert state == "success" and group not in source.run(lambda a: a.group_configs(source.broker))
    assert (topic, group) not in source.run(lambda a: a.all_consumer_offsets(source.broker))
    run_id, state = run(airflow_api, task.dag("monitor"))  # a deleted task is no longer watched
    assert (state, airflow_api.task_states(task.dag("monitor"), run_id)) == (
        "success", {"task_active": "skipped", "monitor": "skipped"})


def test_metadata_dag_carries_adds_and_deletes_and_replicates_new_topics(airflow_api, sides, runner, make_task):
    source, target = sides
    task = make_task()
    kept, dropped, added = task.topic("kept"), task.topic("dropped"), task.topic("added")
    source.create_topic(kept)
    source.create_topic(dropped)
    assert start(airflow_api, task, dropped)["topics"] == sorted([dropped, kept])
    assert {kept, dropped} <= set(target.run(lambda a: a.topic_names()))

    source.create_topic(added)
    source.run(lambda a: a.delete_topic(dropped))
    early = send(source, added, "early", 12)  # before the sync: replicated from its first message

    run_id, state = run(airflow_api, task.dag("metadata"))
    assert state == "success", airflow_api.task_states(task.dag("metadata"), run_id)
    names = set(target.run(lambda a: a.topic_names()))
    assert added in names and dropped not in names and kept in names
    rescoped = airflow_api.xcom(task.dag("metadata"), run_id, "restart_workers_on_scope_change")
    assert (rescoped["restarted"], rescoped["added"], rescoped["removed"]) == (True, [added], [dropped])
    late = send(source, added, "late", 8)
    expected = Counter(early + late)
    assert wait_for(lambda: arrived(target, added, expected), "messages of the new topic", 90) == expected

    run_id, state = run(airflow_api, task.dag("metadata"))  # nothing changed: nothing restarted
    assert state == "success"
    assert airflow_api.xcom(task.dag("metadata"), run_id, "restart_workers_on_scope_change")["restarted"] is False

    # what `make stop` does after the standalone: no worker outlives the demo
    pids = [info["pid"] for info in runner.status(f"{task.name}/forward").values()]
    assert f"{task.name}/forward" in runner.stop_all()
    assert pids and not any(alive(pid) for pid in pids)


def test_two_way_metadata_conflict_waits_for_a_decision(airflow_api, sides, make_task):
    source, target = sides
    task = make_task("two-way")
    shared, gone, from_target = task.topic("shared"), task.topic("gone"), task.topic("from_target")
    source.create_topic(shared)
    source.create_topic(gone)
    dag = task.dag("metadata")
    run_id, state = run(airflow_api, dag)
    assert state == "success", airflow_api.task_states(dag, run_id)
    assert airflow_api.task_states(dag, run_id)["resolve_conflicts_gate"] == "skipped"
    assert {shared, gone} <= set(target.run(lambda a: a.topic_names()))

    # one-sided changes on each side, and the same topic changed differently on both
    source.run(lambda a: a.delete_topic(gone))
    target.create_topic(from_target)
    source.run(lambda a: a.create_topic(source.broker, TopicConfig(shared, 6, 6)))
    target.run(lambda a: a.create_topic(target.broker, TopicConfig(shared, 8, 8)))

    run_id = airflow_api.trigger(dag)
    gate = airflow_api.wait_for_gate(dag, run_id, "resolve_conflicts_gate")
    assert f"topic {shared}" in gate["body"], gate["body"]
    assert gate["options"] == ["Source wins", "Target wins"]
    assert target.run(lambda a: a.topic_configs(target.broker))[shared].write_queues == 8  # untouched meanwhile
    assert from_target in source.run(lambda a: a.topic_names())
    assert gone not in target.run(lambda a: a.topic_names())
    airflow_api.answer(dag, run_id, "resolve_conflicts_gate", "Source wins")
    assert airflow_api.wait_for_run(dag, run_id) == "success", airflow_api.task_states(dag, run_id)
    on_target = target.run(lambda a: a.topic_configs(target.broker))[shared]
    assert (on_target.read_queues, on_target.write_queues) == (6, 6)
    assert airflow_api.xcom(dag, run_id, "resolve_conflicts")["winner"] == "source"
