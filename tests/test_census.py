"""The census of a migration's readers, from the brokers: groups outside every fleet, fleet groups
that also read a topic outside the scope, and broadcasting groups, on one and on two masters;
each group checked against mqadmin's ``topicList -c`` (the same broker request)."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from rocketmq.client import Message, Producer, PushConsumer
from rocketmq.ffi import MessageModel

from cluster_side import has_route, send_routed, shutdown_within, wait_for
from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.census import BROADCASTING, take_census
from rocketmq_core.model import TopicConfig
from rocketmq_harness import clusters as harness
from rocketmq_provider.operators.approval import WritersEvidence


def admin_run(cluster, job):
    async def _go():
        async with ClusterAdmin(cluster.namesrv, cluster.credentials) as admin:
            return await job(admin)
    return asyncio.run(_go())


def create_topics(cluster, *topics: str) -> None:
    async def _go(admin: ClusterAdmin):
        for addr in cluster.spec.master_addrs.values():
            for topic in topics:
                await admin.create_topic(addr, TopicConfig(topic, 2, 2))
    admin_run(cluster, _go)


@contextlib.contextmanager
def consumers(cluster, subscriptions: dict[str, list[str]], broadcasting: tuple[str, ...] = ()):
    """A real push consumer per group, subscribed to its topics, online for the with-block."""
    started = []
    for group, topics in subscriptions.items():
        model = MessageModel.BROADCASTING if group in broadcasting else MessageModel.CLUSTERING
        consumer = PushConsumer(group, message_model=model)
        consumer.set_namesrv_addr(cluster.namesrv)
        for topic in topics:
            consumer.subscribe(topic, lambda msg: None)
        consumer.start()
        started.append(consumer)
    try:
        yield
    finally:
        for consumer in started:
            shutdown_within(consumer)


@pytest.fixture(params=["source", "target-ha"])
def census_cluster(request, rmq_clusters, ha_clusters):
    return {**rmq_clusters, **ha_clusters}[request.param]


def test_census_names_every_reader_the_spec_did_not_decide(census_cluster, names):
    cluster = census_cluster
    topic, outside = names.topic("scope"), names.topic("outside")
    fleet_group, stranger, wide, broadcast = (names.group(label) for label in ("fleet", "stranger", "wide", "bcast"))
    create_topics(cluster, topic, outside)
    groups = {fleet_group: [topic], stranger: [topic], wide: [topic, outside], broadcast: [topic]}
    with consumers(cluster, groups, broadcasting=(broadcast,)):
        census = wait_for(lambda: (c := admin_run(cluster, lambda a: take_census(a, [topic])))
                          and set(c.readers) == set(groups) and all(r.online for r in c.readers.values()) and c,
                          "every reader online in the census", 60)
        # mqadmin's topicList -c asks every broker the same question (QUERY_TOPIC_CONSUME_BY_WHO)
        listed = harness.mqadmin(cluster.spec, ["topicList", "-c"])
    assert listed.returncode == 0, listed.stderr
    theirs = {parts[2] for parts in map(str.split, listed.stdout.splitlines()) if len(parts) > 2 and parts[1] == topic}
    assert theirs == set(census.readers) == set(groups)
    assert census.readers[wide].subscriptions == tuple(sorted([topic, outside]))
    assert census.readers[broadcast].message_model == BROADCASTING
    assert census.readers[fleet_group].message_model == "CLUSTERING"
    assert sorted(census.brokers) == sorted(cluster.spec.master_addrs)

    in_scope = lambda t: t == topic  # noqa: E731
    problems = census.problems([fleet_group, wide, broadcast], in_scope)
    assert len(problems) == 3, problems
    assert any(stranger in p and "in no fleet" in p for p in problems)
    assert any(wide in p and outside in p and "outside the scope" in p for p in problems)
    assert any(broadcast in p and "broadcasting" in p for p in problems)
    # Decided in the spec: the stranger stays on purpose, the broadcast group moves knowingly.
    decided = census.problems([fleet_group, wide, broadcast], in_scope, left_behind=[stranger],
                              broadcast_allowed=[broadcast])
    assert decided == [p for p in problems if wide in p]


def test_census_lists_every_producer_group_online_and_mqadmin_agrees(census_cluster, names, airflow_env,
                                                                    monkeypatch):
    """Writers: every producer group connected to any master, whatever it writes (a broker does not
    know), system groups left out; each group's clients are what mqadmin producerConnection lists.
    The cutover gate's evidence names the group in no fleet, and not one left behind on purpose."""
    cluster = census_cluster
    monkeypatch.setenv("AIRFLOW_CONN_ROCKETMQ_CENSUS", json.dumps({
        "conn_type": "rocketmq", "host": "127.0.0.1", "port": cluster.spec.namesrv_port}))
    topic = names.topic("scope")
    fleet_group, stray = names.group("pfleet"), names.group("pstray")
    create_topics(cluster, topic)
    wait_for(lambda: admin_run(cluster, lambda a: has_route(a, topic)), f"the route of {topic}", 30)
    started = []
    for group in (fleet_group, stray):
        producer = Producer(group)
        producer.set_namesrv_addr(cluster.namesrv)
        producer.start()
        send_routed(producer, _message(topic, group))  # connects to the broker that holds the queue
        started.append(producer)
    try:
        census = wait_for(lambda: (c := admin_run(cluster, lambda a: take_census(a, [topic])))
                          and {fleet_group, stray} <= set(c.writers or {}) and c,
                          "both producer groups among the census' writers", 60)
        listed = {g: harness.mqadmin(cluster.spec, ["producerConnection", "-g", g, "-t", topic])
                  for g in (fleet_group, stray)}
        brokers = sorted(cluster.spec.master_addrs)
        at_the_gate = WritersEvidence("rocketmq_census", [fleet_group], brokers=brokers).render({})
        left_on_purpose = WritersEvidence("rocketmq_census", [fleet_group], [stray], brokers=brokers).render({})
    finally:
        for producer in started:
            shutdown_within(producer)
    for group, result in listed.items():
        assert result.returncode == 0, result.stdout + result.stderr
        theirs = {line.split()[1] for line in result.stdout.splitlines() if line.strip().startswith("0001")}
        assert set(census.writers[group]) == theirs and len(theirs) == 1, (group, result.stdout)
    assert not [g for g in census.writers if g.startswith(("CLIENT_INNER", "SELF_TEST"))]
    assert set(census.writers_outside([fleet_group])) >= {stray}
    assert fleet_group not in census.writers_outside([fleet_group])
    assert stray not in census.writers_outside([fleet_group], left_behind=[stray])
    assert census.to_dict()["writers"][stray] == list(census.writers[stray])
    assert f"| {stray} | 1 | {census.writers[stray][0]} |" in at_the_gate and fleet_group not in at_the_gate
    assert stray not in left_on_purpose and fleet_group not in left_on_purpose


def _message(topic: str, key: str) -> Message:
    message = Message(topic)
    message.set_keys(key)
    message.set_body(b"census")
    return message
