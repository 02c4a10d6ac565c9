"""Clusters of several masters, as production runs them: a 4.9 cluster of two masters (the
first with a slave) and a 5.x cluster of two masters behind a proxy.

Figures that a one-broker cluster cannot get wrong are checked here against mqadmin of the
same version: where brokers are listed, backlog per broker and queue, clients counted once
across brokers, a group that never consumed on one of the brokers, and a master that stops
(the name server forgets it, so only the broker set seen earlier can tell it is missing).
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from rocketmq.client import Message, Producer, PushConsumer

from cluster_side import send_routed, shutdown_within, wait_for
from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.backlog import measure_backlog
from rocketmq_core.checks import BacklogZero, ClientsOnline, WritesStopped
from rocketmq_core.cli import main as rmqctl
from rocketmq_core.errors import BrokerUnavailable
from rocketmq_core.model import RETRY_PREFIX, GroupConfig, TopicConfig
from rocketmq_core.replication import codec, remote
from rocketmq_harness import clusters as harness

QUEUES = 2


def admin_run(cluster, job):
    async def _go():
        async with ClusterAdmin(cluster.namesrv, cluster.credentials) as admin:
            return await job(admin)
    return asyncio.run(_go())


def masters(cluster) -> dict[str, str]:
    return cluster.spec.master_addrs


def create_on_every_master(cluster, topic: str, group: str | None = None, only: list[str] | None = None) -> None:
    """The topic (and group) on every master, or on the ``only`` brokers; wait for its route."""
    async def _go(admin: ClusterAdmin):
        for name, addr in masters(cluster).items():
            if only is None or name in only:
                await admin.create_topic(addr, TopicConfig(topic, QUEUES, QUEUES))
                if group:  # mqadmin consumerProgress needs the group's retry topic to exist
                    await admin.create_group(addr, GroupConfig(group))
                    await admin.create_topic(addr, TopicConfig(RETRY_PREFIX + group, 1, 1))
    admin_run(cluster, _go)
    wanted = set(only or masters(cluster))
    wait_for(lambda: {q["brokerName"] for q in admin_run(cluster, lambda a: a.topic_route(topic))["queueDatas"]}
             == wanted, f"route of {topic} on {sorted(wanted)}", 30)


def send(cluster, broker: str, topic: str, queue_id: int, count: int) -> None:
    async def _go(admin: ClusterAdmin):
        for i in range(count):
            key = f"{broker}-{queue_id}-{i}"
            props = codec.encode_properties({"KEYS": key, "UNIQ_KEY": f"{key}-{time.time_ns()}"})
            await remote.send_v2(admin.client, masters(cluster)[broker], "PG_topologies", topic, queue_id,
                                 key.encode(), props, int(time.time() * 1000))
    admin_run(cluster, _go)


def commit(cluster, broker: str, group: str, topic: str, offsets: dict[int, int]) -> None:
    admin_run(cluster, lambda a: a.update_consumer_offsets(masters(cluster)[broker], group, topic, offsets))


def mqadmin_progress(cluster, group: str) -> tuple[dict[tuple[str, str, int], tuple[int, int, int]], int]:
    result = harness.mqadmin(cluster.spec, ["consumerProgress", "-g", group])
    assert result.returncode == 0 and "Diff Total" in result.stdout, result.stdout + result.stderr
    return harness.parse_consumer_progress(result.stdout)


def our_rows(report, group: str, kind: str = "normal") -> dict[tuple[str, str, int], tuple[int, int | None, int]]:
    return {(r.topic, r.broker, r.queue_id): (r.broker_offset, r.consumer_offset, r.lag)
            for r in report.rows if r.group == group and r.kind == kind}


def backlog(cluster, groups: list[str], method: str = "auto", expected: tuple[str, ...] = ()):
    return admin_run(cluster, lambda a: measure_backlog(a, groups, method=method, expected_brokers=expected))


def test_every_broker_registers_where_mqadmin_lists_it(ha_cluster):
    spec = ha_cluster.spec
    listed = harness.mqadmin(spec, ["clusterList"])
    assert listed.returncode == 0, listed.stderr
    theirs = {(parts[1], int(parts[2]), parts[3]) for parts in map(str.split, listed.stdout.splitlines())
              if len(parts) > 3 and parts[0] == spec.name}
    ours = {(b.name, broker_id, addr) for b in admin_run(ha_cluster, lambda a: a.brokers())
            for broker_id, addr in b.addrs.items()}
    wanted = {(b.name, b.broker_id, b.addr) for b in spec.brokers}
    assert ours == theirs == wanted
    assert len({name for name, _, _ in wanted}) == 2
    # Writes go to masters only: the admin API never hands out a slave's address.
    assert sorted(b.master for b in admin_run(ha_cluster, lambda a: a.masters(spec.name))) == \
        sorted(masters(ha_cluster).values())


@pytest.mark.parametrize("method", ["per_group", "broker_wide"])
def test_backlog_per_broker_and_queue_equals_mqadmin(ha_cluster, names, method):
    topic, group = names.topic(), names.group()
    create_on_every_master(ha_cluster, topic, group)
    b0, b1 = masters(ha_cluster)
    for broker, counts in ((b0, (3, 4)), (b1, (5, 2))):
        for queue_id, count in enumerate(counts):
            send(ha_cluster, broker, topic, queue_id, count)
    commit(ha_cluster, b0, group, topic, {0: 1, 1: 4})
    commit(ha_cluster, b1, group, topic, {0: 2, 1: 0})
    theirs, total = mqadmin_progress(ha_cluster, group)
    report = backlog(ha_cluster, [group], method)
    ours = our_rows(report, group)
    assert ours == {key: value for key, value in theirs.items() if key[0] == topic}
    assert {broker for _, broker, _ in ours} == {b0, b1}
    assert report.by_group[group] == total == 2 + 0 + 3 + 2
    assert sorted(report.brokers) == sorted(masters(ha_cluster))


def test_messages_on_a_broker_where_the_group_never_consumed_are_undelivered(ha_cluster, names):
    """mqadmin (and the broker's consume stats) list no row for a broker where the group has no
    offset; a consumer still receives every message there, so they are backlog."""
    topic, group = names.topic(), names.group()
    create_on_every_master(ha_cluster, topic, group)
    b0, b1 = masters(ha_cluster)
    send(ha_cluster, b0, topic, 0, 4)
    send(ha_cluster, b1, topic, 0, 3)
    send(ha_cluster, b1, topic, 1, 2)
    commit(ha_cluster, b0, group, topic, {0: 4, 1: 0})
    theirs, total = mqadmin_progress(ha_cluster, group)
    assert total == 0 and {broker for _, broker, _ in theirs} == {b0}
    report = backlog(ha_cluster, [group])
    assert report.by_group[group] == 5
    assert {k: v for k, v in our_rows(report, group).items() if k[1] == b1} == {
        (topic, b1, 0): (3, None, 3), (topic, b1, 1): (2, None, 2)}
    received: list[str] = []
    consumer = PushConsumer(group)
    consumer.set_namesrv_addr(ha_cluster.namesrv)
    consumer.subscribe(topic, lambda msg: received.append(msg.keys.decode()))
    consumer.start()
    try:
        wait_for(lambda: {k for k in received if k.startswith(b1)} >= {f"{b1}-0-{i}" for i in range(3)}
                 | {f"{b1}-1-{i}" for i in range(2)}, f"the consumer receiving {b1}'s 5 messages", 90)
    finally:
        shutdown_within(consumer)


def test_clients_are_counted_once_across_brokers(ha_cluster, names):
    topic, group, producer_group = names.topic(), names.group(), names.group("producer")
    create_on_every_master(ha_cluster, topic, group)
    consumer = PushConsumer(group)
    consumer.set_namesrv_addr(ha_cluster.namesrv)
    consumer.subscribe(topic, lambda msg: None)
    consumer.start()
    producer = Producer(producer_group)
    producer.set_namesrv_addr(ha_cluster.namesrv)
    producer.start()
    try:
        for i in range(8):  # round robin over both brokers' queues: the producer reaches both
            message = Message(topic)
            message.set_body(b"x")
            send_routed(producer, message)

        def per_broker() -> dict[str, tuple[int, int]]:
            async def _go(admin: ClusterAdmin):
                return {name: (len((await admin.consumer_connection(addr, group)).clients),
                               len(await admin.producer_connections(addr, producer_group)))
                        for name, addr in masters(ha_cluster).items()}
            return admin_run(ha_cluster, _go)

        wait_for(lambda: set(per_broker().values()) == {(1, 1)}, "the clients on both masters", 60)
        consumers = admin_run(ha_cluster, ClientsOnline([group], "consumer", 1, 1).evaluate)
        producers = admin_run(ha_cluster, ClientsOnline([producer_group], "producer", 1, 1).evaluate)
        assert consumers.figures["clients"] == {group: 1} and consumers.satisfied
        assert producers.figures["clients"] == {producer_group: 1} and producers.satisfied
        listed = harness.mqadmin(ha_cluster.spec, ["consumerConnection", "-g", group])
        assert listed.returncode == 0, listed.stderr
        connections = listed.stdout.split("Below is subscription")[0]
        their_ids = {token for line in connections.splitlines() for token in line.split() if "@" in token}
        ours = admin_run(ha_cluster, lambda a: a.consumer_connection(masters(ha_cluster)[ha_cluster.spec.broker_name],
                                                                     group))
        assert their_ids == {c.client_id for c in ours.clients} and len(their_ids) == 1
    finally:
        producer.shutdown()
        shutdown_within(consumer)


def _observe(cluster, check) -> tuple[bool, str]:
    async def _go(admin: ClusterAdmin):
        try:
            result = await check.evaluate(admin)
        except BrokerUnavailable as exc:
            return None, str(exc)
        return result.satisfied, result.summary
    return admin_run(cluster, _go)


def test_a_stopped_master_makes_every_figure_unknown(ha_clusters, names, capsys):
    """All of a group's backlog on the master that stops, none on the other: without the run's
    broker set a fresh check sees one broker and zero; with it, every figure is unknown, naming
    the broker. A master that leaves only its slave is unknown even without the set."""
    cluster = ha_clusters["source-ha"]
    spec = cluster.spec
    b0, b1 = masters(cluster)
    topic, group, producer_group = names.topic(), names.group(), names.group("producer")
    create_on_every_master(cluster, topic, group)
    send(cluster, b1, topic, 0, 6)
    commit(cluster, b0, group, topic, {0: 0, 1: 0})
    commit(cluster, b1, group, topic, {0: 0, 1: 0})
    assert backlog(cluster, [group]).by_group[group] == 6
    run_brokers = [b0, b1]
    b1_process = next(b for b in spec.brokers if b.name == b1)
    try:
        harness.stop(spec, roles=(b1_process.role,))
        wait_for(lambda: b1 not in {b.name for b in admin_run(cluster, lambda a: a.brokers())},
                 f"{b1} gone from the name server", 60)
        # The hole a broker set closes: a check built now sees b0 only, and b0 holds nothing.
        assert _observe(cluster, BacklogZero([group])) == (True, "backlog 0 message(s)")
        for check in (BacklogZero([group], brokers=run_brokers),
                      ClientsOnline([group], "consumer", 0, 0, brokers=run_brokers),
                      ClientsOnline([producer_group], "producer", 0, 0, brokers=run_brokers),
                      WritesStopped([topic], 0, brokers=run_brokers)):
            satisfied, summary = _observe(cluster, check)
            assert satisfied is None and b1 in summary and "not registered" in summary, (check.kind, summary)
        with pytest.raises(BrokerUnavailable, match=b1):
            backlog(cluster, [group], expected=tuple(run_brokers))
        assert rmqctl(["backlog", "-n", cluster.namesrv, "--expect-brokers", ",".join(run_brokers), group]) == 2
        assert b1 in capsys.readouterr().err
        # The same set read from the preflight's record of the run (``{"brokers": [...]}``).
        record = names.stem + ".json"
        with open(record, "w") as out:
            json.dump({"brokers": run_brokers, "versions": {}}, out)
        try:
            assert rmqctl(["clients", "-n", cluster.namesrv, "--expect-brokers", record, group]) == 2
            assert b1 in capsys.readouterr().err
        finally:
            import os
            os.unlink(record)
        # b0 has a slave: stopping its master leaves the name without a master, which is unknown as such.
        b0_master = next(b for b in spec.brokers if b.name == b0 and b.is_master)
        harness.stop(spec, roles=(b0_master.role,))
        wait_for(lambda: not any(b.master for b in admin_run(cluster, lambda a: a.brokers()) if b.name == b0),
                 f"{b0}'s master gone, its slave left", 60)
        assert {b.name: sorted(b.addrs) for b in admin_run(cluster, lambda a: a.brokers())} == {b0: [1]}
        satisfied, summary = _observe(cluster, BacklogZero([group]))
        assert satisfied is None and b0 in summary and "no master" in summary
    finally:
        harness.start(spec, timeout=180)
    assert backlog(cluster, [group], expected=tuple(run_brokers)).by_group[group] == 6
