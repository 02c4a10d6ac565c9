"""The manual switch: nothing is called; a person moves the clients (here a thread that stops a
real consumer on the source and starts it on the target) and the switch returns only when the
brokers show it, or fails naming what they show."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk.exceptions import AirflowException, TaskDeferred
from rocketmq.client import PushConsumer

from conftest import TEST_DAGS
from cluster_side import Side, shutdown_within, wait_for
from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.model import GroupConfig
from rocketmq_provider.operators.fleet import ManualSwitcher
from rocketmq_provider.triggers.rocketmq import FleetMoveTrigger

SOURCE, TARGET = "rocketmq_source", "rocketmq_target"
LOG = logging.getLogger("manual-switch")


def start_consumer(cluster, group: str, topic: str) -> PushConsumer:
    consumer = PushConsumer(group)
    consumer.set_namesrv_addr(cluster.namesrv)
    consumer.set_instance_name(f"manual-{uuid.uuid4().hex[:8]}")
    consumer.subscribe(topic, lambda msg: None)
    consumer.start()
    return consumer


def online(cluster, group: str) -> int:
    async def _go() -> int:
        async with ClusterAdmin(cluster.namesrv) as admin:
            return len((await admin.consumer_connection(cluster.broker, group)).clients)
    return asyncio.run(_go())


@pytest.fixture
def fleet(rmq_clusters, airflow_env, names, request):
    """A topic and a consumer group on both clusters, and the consumers started for the test
    (a group of the test's choosing when it parametrizes the fixture: a probe DAG's)."""
    topic, group = names.topic(), getattr(request, "param", None) or names.group("c")
    for name in ("source", "target"):
        side = Side.of(rmq_clusters[name])
        side.create_topic(topic)
        side.run(lambda a: a.create_group(side.broker, GroupConfig(group)))
    started: list[PushConsumer] = []
    yield topic, group, started
    for consumer in started:
        shutdown_within(consumer)


def move_by_hand(consumer: PushConsumer, target, group: str, topic: str, started: list) -> threading.Thread:
    """What the on-call does after reading the instructions: stop the member, start it on the target."""
    def _do() -> None:
        time.sleep(2)
        shutdown_within(consumer)
        started.remove(consumer)
        started.append(start_consumer(target, group, topic))
    mover = threading.Thread(target=_do, daemon=True)
    mover.start()
    return mover


def request(group: str, share: float) -> dict:
    return {"fleet": "f", "role": "consumer", "groups": [group], "share": share,
            "cluster": TARGET, "from_cluster": SOURCE}


def test_a_manual_switch_returns_once_the_brokers_show_the_person_moved_the_fleet(rmq_clusters, fleet, caplog):
    source, target = rmq_clusters["source"], rmq_clusters["target"]
    topic, group, started = fleet
    started.append(start_consumer(source, group, topic))
    wait_for(lambda: online(source, group) == 1, f"the consumer of {group} on the source", 60)
    mover = move_by_hand(started[0], target, group, topic, started)
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        result = ManualSwitcher("Edit consumers.yaml in the deploy repo.", timeout_seconds=150,
                                poll_seconds=1).switch(request(group, 1.0), LOG)
    mover.join(30)
    assert result["after"]["leaving"][group] == [] and len(result["after"]["joining"][group]) == 1
    assert online(source, group) == 0 and online(target, group) == 1
    assert f"at the name server(s) {target.namesrv}. Edit consumers.yaml in the deploy repo." in result["instructions"]
    assert "BY HAND" in caplog.text and group in caplog.text


def test_a_manual_canary_that_strips_a_group_fails_asking_for_a_consumer_back(rmq_clusters, fleet):
    source, target = rmq_clusters["source"], rmq_clusters["target"]
    topic, group, started = fleet
    started.append(start_consumer(source, group, topic))
    wait_for(lambda: online(source, group) == 1, f"the consumer of {group} on the source", 60)
    mover = move_by_hand(started[0], target, group, topic, started)
    with pytest.raises(AirflowException, match=rf"\['{group}'\] with no consumer on {SOURCE}.*back on {SOURCE}"):
        ManualSwitcher(timeout_seconds=150, poll_seconds=1).switch(request(group, 0.5), LOG)
    mover.join(30)


def test_a_manual_switch_nobody_carries_out_times_out_naming_the_clients(rmq_clusters, fleet):
    source = rmq_clusters["source"]
    topic, group, started = fleet
    started.append(start_consumer(source, group, topic))
    wait_for(lambda: online(source, group) == 1, f"the consumer of {group} on the source", 60)
    with pytest.raises(AirflowException, match=rf"of {group} are still on the old cluster"):
        ManualSwitcher(timeout_seconds=5, poll_seconds=1).switch(request(group, 1.0), LOG)


@pytest.mark.parametrize("fleet", ["PROBE_MANUAL_SWITCH"], indirect=True)
def test_a_switch_task_waits_for_the_person_on_the_triggerer_not_in_a_worker_slot(rmq_clusters, fleet):
    """The switch task asks for the move and defers: the brokers are watched by a trigger, so an
    hour's wait for a person holds no worker. Run by Airflow, it succeeds once they show the move."""
    source, target = rmq_clusters["source"], rmq_clusters["target"]
    topic, group, started = fleet
    started.append(start_consumer(source, group, topic))
    wait_for(lambda: online(source, group) == 1, f"the consumer of {group} on the source", 60)
    dag = DagBag(dag_folder=str(TEST_DAGS)).get_dag("probe_manual_switch")
    with pytest.raises(TaskDeferred) as deferred:
        dag.get_task("switch").execute({})
    assert isinstance(deferred.value.trigger, FleetMoveTrigger) and deferred.value.method_name == "move_complete"
    assert len(deferred.value.trigger.before["leaving"][group]) == 1  # where the fleet stood when asked

    mover = move_by_hand(started[0], target, group, topic, started)
    run = dag.test()
    mover.join(30)
    assert run.state == "success"
    [ti] = run.get_task_instances()
    record = ti.xcom_pull(task_ids="switch", key="switch")
    assert record["after"]["leaving"][group] == [] and len(record["after"]["joining"][group]) == 1, record
    assert "Edit consumers.yaml." in record["instructions"]
