"""The admin API read against mqadmin, the reference tool of each version, and its typed errors.

Everything here runs on both version lines (4.9.x source, 5.x target). mqadmin costs a JVM start
per call, so each test gathers its calls into one batch run in parallel.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import msgspec
import pytest
from rocketmq.client import Message, Producer, PushConsumer

from conftest import UniqueNames
from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.errors import AccessDenied, ConnectionFailed, InvalidSpec, RocketMQError
from rocketmq_core.model import (
    PERM_READ, PERM_WRITE, ClientConnection, ConsumerConnection, GroupConfig, MessageQueue, QueueOffsets,
    TopicConfig,
)
from rocketmq_core.offsets import reset_to_time
from rocketmq_core.remoting.client import Credentials
from rocketmq_core.remoting.fastjson import loads
from rocketmq_core.remoting.protocol import RequestCode
from rocketmq_harness import clusters as harness
from cluster_side import send_routed, shutdown_within

# --- helpers ----------------------------------------------------------------------------------

def admin_run(cluster, scenario, credentials: Credentials | None | str = "cluster", **kwargs):
    """Run ``scenario(admin)`` with a ClusterAdmin on the cluster's name server."""
    creds = cluster.credentials if credentials == "cluster" else credentials

    async def _run():
        async with ClusterAdmin(cluster.namesrv, creds, **kwargs) as admin:
            return await scenario(admin)
    return asyncio.run(_run())


def mqadmin_all(spec, *commands: list[str]) -> list[str]:
    """Run mqadmin commands in parallel; their standard outputs, in order."""
    with ThreadPoolExecutor(len(commands)) as pool:
        results = list(pool.map(lambda args: harness.mqadmin(spec, list(args)), commands))
    for args, result in zip(commands, results):
        assert result.returncode == 0, f"mqadmin {args}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    return [r.stdout for r in results]


def no_exception(output: str) -> str:
    # mqadmin reports most failures on stdout with exit code 0
    assert "Exception" not in output, output[-3000:]
    return output


def table_rows(output: str, min_columns: int, int_columns: tuple[int, ...]) -> list[list[str]]:
    """Rows of a whitespace table: enough columns, numbers where numbers belong, no header."""
    rows = []
    for line in output.splitlines():
        parts = line.split()
        if (len(parts) >= min_columns and not parts[0].startswith("#")
                and all(parts[i].lstrip("-").isdigit() for i in int_columns)):
            rows.append(parts)
    return rows


def topic_status(output: str) -> dict[tuple[str, int], tuple[int, int]]:
    """mqadmin topicStatus: (broker, queue) -> (min offset, max offset)."""
    return {(p[0], int(p[1])): (int(p[2]), int(p[3])) for p in table_rows(no_exception(output), 4, (1, 2, 3))}


def consumer_progress(output: str) -> dict[tuple[str, str, int], tuple[int, int]]:
    """mqadmin consumerProgress: (topic, broker, queue) -> (broker offset, consumer offset)."""
    return {(p[0], p[1], int(p[2])): (int(p[3]), int(p[4]))
            for p in table_rows(no_exception(output), 6, (2, 3, 4, 5))}


def broker_consume_stats(output: str) -> dict[tuple[str, str, int], tuple[int, int]]:
    """mqadmin brokerConsumeStats: (topic, group, queue) -> (broker offset, consumer offset)."""
    return {(p[0], p[1], int(p[3])): (int(p[4]), int(p[5]))
            for p in table_rows(no_exception(output), 7, (3, 4, 5, 6))}


def key_values(output: str) -> dict[str, str]:
    """mqadmin getConsumerConfig: ``key = value`` lines."""
    pairs = {}
    for line in no_exception(output).splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and " " not in key.strip() and not line.startswith("="):
            pairs[key.strip()] = value.strip()
    return pairs


def route(output: str) -> dict:
    text = no_exception(output)
    return loads(text[text.index("{"):])


def as_rows(stats: list[QueueOffsets]) -> dict[tuple[str, str, int], tuple[int, int]]:
    return {(q.queue.topic, q.queue.broker, q.queue.queue_id): (q.broker_offset, q.consumer_offset) for q in stats}


async def store(admin: ClusterAdmin, addr: str, topic: str, queue_id: int, body: bytes) -> int:
    """Store one message in one queue (SEND_MESSAGE); returns its queue offset."""
    resp = await admin.client.invoke(addr, RequestCode.SEND_MESSAGE, {
        "producerGroup": "PG_admin_test", "topic": topic, "defaultTopic": "TBW102", "defaultTopicQueueNums": 4,
        "queueId": queue_id, "sysFlag": 0, "bornTimestamp": int(time.time() * 1000), "flag": 0,
        "properties": "WAIT\x01true\x02", "reconsumeTimes": 0, "unitMode": "false", "batch": "false"}, body=body)
    return int(resp.ext_fields["queueOffset"])


def poll(fetch, done, timeout: float, what: str):
    """Call fetch() until done(value) holds; the last value. Fails with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"{what}: last seen {value!r}"
        time.sleep(0.2)


class LiveConsumer:
    """A real push consumer (the C++-based client) recording (queue, offset, body) of each delivery."""

    def __init__(self, namesrv: str, group: str, topic: str):
        self.received: list[tuple[int, int, bytes]] = []
        self.consumer = PushConsumer(group)
        self.consumer.set_instance_name(f"t{uuid.uuid4().hex[:8]}")
        self.consumer.set_namesrv_addr(namesrv)
        self.consumer.subscribe(topic, lambda msg: self.received.append((msg.queue_id, msg.queue_offset, msg.body)))
        self.consumer.start()

    def shutdown(self) -> None:
        shutdown_within(self.consumer)


async def start_at_zero(admin: ClusterAdmin, addr: str, topic: TopicConfig, group: str) -> None:
    """Topic and group with committed offsets at 0, so a consumer starts at the first message."""
    await admin.create_topic(addr, topic)
    await admin.create_group(addr, GroupConfig(group))
    await admin.update_consumer_offsets(addr, group, topic.name, {q: 0 for q in range(topic.write_queues)})


# --- metadata ---------------------------------------------------------------------------------


def test_topics_created_by_mqadmin_are_read_back_exactly(cluster, names):
    t_order, t_write_only, t_default = names.topic("order"), names.topic("wo"), names.topic("default")
    commands = [
        ["updateTopic", "-c", cluster.name, "-t", t_order, "-r", "3", "-w", "5", "-p", "4", "-o", "true"],
        ["updateTopic", "-c", cluster.name, "-t", t_write_only, "-r", "8", "-w", "2", "-p", "2"],
        ["updateTopic", "-c", cluster.name, "-t", t_default],
    ]
    if cluster.spec.major >= 5:
        commands[2] += ["-a", "+message.type=FIFO"]
    for output in mqadmin_all(cluster.spec, *commands):
        assert "success" in no_exception(output)

    async def read(admin: ClusterAdmin):
        return await admin.topic_configs(cluster.broker), await admin.topic_names(), await admin.order_table()

    configs, listed, order_table = admin_run(cluster, read)
    # mqadmin -o true records the topic in the name server's order table on both versions ...
    assert order_table[t_order] == f"{cluster.spec.broker_name}:5"
    assert t_write_only not in order_table and t_default not in order_table
    # ... a 5.x broker also stores the flag at once; a 4.9 broker copies it from that table at
    # its next registration (up to 30 s later), so until then it reports the topic unordered.
    assert msgspec.structs.replace(configs[t_order], order=True) == \
        TopicConfig(t_order, read_queues=3, write_queues=5, perm=PERM_READ, order=True)
    if cluster.spec.major >= 5:
        assert configs[t_order].order
    assert configs[t_write_only] == TopicConfig(t_write_only, read_queues=8, write_queues=2, perm=PERM_WRITE)
    expected_attributes = {"message.type": "FIFO"} if cluster.spec.major >= 5 else {}
    assert configs[t_default] == TopicConfig(t_default, attributes=expected_attributes)
    assert configs[t_default].message_type == expected_attributes.get("message.type", "UNSPECIFIED")
    assert {t_order, t_write_only, t_default} <= set(listed)


def test_topics_created_by_admin_match_mqadmin(cluster, names):
    batch = [TopicConfig(names.topic("b1"), 4, 4), TopicConfig(names.topic("b2"), 2, 6, PERM_READ, order=True)]
    single = TopicConfig(names.topic("one"), 1, 1, PERM_READ | PERM_WRITE,
                         attributes={"message.type": "DELAY"} if cluster.spec.major >= 5 else {})

    async def create(admin: ClusterAdmin):
        await admin.create_topics(cluster.broker, batch)
        await admin.create_topic(cluster.broker, single)
        configs = await admin.topic_configs(cluster.broker)
        routes = {t.name: await admin.topic_route(t.name) for t in [*batch, single]}
        offsets = {t.name: await admin.topic_offsets(cluster.broker, t.name) for t in [*batch, single]}
        return configs, routes, offsets

    configs, routes, offsets = admin_run(cluster, create)
    for topic in [*batch, single]:
        # A 4.9 broker keeps no order flag (ordering there is the name server's ORDER_TOPIC_CONFIG
        # table, which admin.put_order writes); a 5.x broker stores it.
        assert configs[topic.name] == msgspec.structs.replace(topic, order=topic.order and cluster.spec.major >= 5)
    topics = [*batch, single]
    outputs = mqadmin_all(cluster.spec, ["topicList"], *(["topicRoute", "-t", t.name] for t in topics),
                          *(["topicStatus", "-t", t.name] for t in topics))
    listed = no_exception(outputs[0]).split()
    for i, topic in enumerate(topics):
        assert topic.name in listed
        theirs = route(outputs[1 + i])
        assert theirs["queueDatas"] == [{"brokerName": cluster.spec.broker_name, "perm": topic.perm,
                                         "readQueueNums": topic.read_queues, "topicSysFlag": 0,
                                         "writeQueueNums": topic.write_queues}]
        assert [{**b, "brokerAddrs": {int(k): v for k, v in b["brokerAddrs"].items()}}
                for b in theirs["brokerDatas"]] == \
            [{**b, "brokerAddrs": {int(k): v for k, v in b["brokerAddrs"].items()}}
             for b in routes[topic.name]["brokerDatas"]]
        assert routes[topic.name]["queueDatas"] == theirs["queueDatas"]
        status = topic_status(outputs[1 + len(topics) + i])
        assert status == {(cluster.spec.broker_name, q): (0, 0) for q in range(topic.write_queues)}
        assert status == {(mq.broker, mq.queue_id): v for mq, v in offsets[topic.name].items()}


def _group_wire(group: GroupConfig, major: int) -> dict[str, str]:
    """What getConsumerConfig prints for a group: the fields each version's class has."""
    fields = ["groupName", "consumeEnable", "consumeFromMinEnable", "consumeBroadcastEnable", "retryQueueNums",
              "retryMaxTimes", "brokerId", "whichBrokerWhenConsumeSlowly", "notifyConsumerIdsChangedEnable"]
    if major >= 5:
        fields += ["consumeMessageOrderly", "groupSysFlag", "consumeTimeoutMinute"]
    wire = group.to_wire()
    return {k: str(wire[k]).lower() if isinstance(wire[k], bool) else str(wire[k]) for k in fields}


def test_groups_round_trip_between_admin_and_mqadmin(cluster, names):
    by_mqadmin = names.group("mq")
    custom = GroupConfig(names.group("custom"), consume_enable=False, consume_from_min=False, broadcast=False,
                         orderly=cluster.spec.major >= 5, retry_queues=2, retry_max_times=3, broker_id=1,
                         which_broker_when_slow=1, notify_ids_changed=False)
    plain = GroupConfig(names.group("plain"))
    single = GroupConfig(names.group("single"), retry_max_times=7)
    command = ["updateSubGroup", "-c", cluster.name, "-g", by_mqadmin, "-s", "false", "-m", "false", "-d", "false",
               "-q", "2", "-r", "3", "-i", "1", "-w", "1", "-a", "false"]
    if cluster.spec.major >= 5:
        command += ["-o", "true"]
    assert "success" in no_exception(mqadmin_all(cluster.spec, command)[0])

    async def scenario(admin: ClusterAdmin):
        read_back = (await admin.group_configs(cluster.broker))[by_mqadmin]
        await admin.create_groups(cluster.broker, [custom, plain])
        await admin.create_group(cluster.broker, single)
        return read_back, await admin.group_configs(cluster.broker)

    read_back, configs = admin_run(cluster, scenario)
    assert (read_back.consume_enable, read_back.consume_from_min, read_back.broadcast, read_back.retry_queues,
            read_back.retry_max_times, read_back.broker_id, read_back.which_broker_when_slow,
            read_back.notify_ids_changed, read_back.orderly) == \
        (False, False, False, 2, 3, 1, 1, False, cluster.spec.major >= 5)
    for group in (custom, plain, single):
        mine = configs[group.name]
        assert _group_wire(mine, cluster.spec.major) == _group_wire(group, cluster.spec.major)
    outputs = mqadmin_all(cluster.spec, *(["getConsumerConfig", "-g", g.name] for g in (custom, plain, single)))
    for group, output in zip((custom, plain, single), outputs):
        printed = key_values(output)
        assert {k: printed[k] for k in _group_wire(group, cluster.spec.major)} == \
            _group_wire(group, cluster.spec.major)


def test_delete_topic_and_group_remove_them(cluster, names):
    topic, kept = TopicConfig(names.topic("gone"), 2, 2), TopicConfig(names.topic("kept"), 2, 2)
    group, kept_group = GroupConfig(names.group("gone")), GroupConfig(names.group("kept"))

    async def scenario(admin: ClusterAdmin):
        await admin.create_topics(cluster.broker, [topic, kept])
        await admin.create_groups(cluster.broker, [group, kept_group])
        assert {topic.name, kept.name} <= set(await admin.topic_names())
        await admin.delete_topic(topic.name, cluster.name)
        await admin.delete_group(cluster.broker, group.name)
        return (set(await admin.topic_configs(cluster.broker)), set(await admin.topic_names()),
                set(await admin.group_configs(cluster.broker)))

    broker_topics, namesrv_topics, groups = admin_run(cluster, scenario)
    assert topic.name not in broker_topics and topic.name not in namesrv_topics
    assert kept.name in broker_topics and kept.name in namesrv_topics
    assert group.name not in groups and kept_group.name in groups
    listed, gone_group, kept_printed = mqadmin_all(
        cluster.spec, ["topicList"], ["getConsumerConfig", "-g", group.name], ["getConsumerConfig", "-g", kept_group.name])
    assert topic.name not in listed.split() and kept.name in listed.split()
    assert "groupName" not in gone_group and group.name not in gone_group
    assert key_values(kept_printed)["groupName"] == kept_group.name


# --- live clients -----------------------------------------------------------------------------


@dataclass
class Live:
    cluster: object
    topic: str
    group: str
    producer_group: str
    sent: int
    consumer: ConsumerConnection
    producers: tuple[ClientConnection, ...]
    all_producers: dict[str, tuple[ClientConnection, ...]]
    offsets: dict[MessageQueue, tuple[int, int]]
    single_offsets: dict[int, tuple[int, int]]
    stats: dict[tuple[str, str, int], tuple[int, int]]
    mqadmin: dict[str, str]


@pytest.fixture(scope="module", params=["source", "target"])
def live(request, rmq_clusters):
    """A producer and a push consumer online; what the admin API and mqadmin see of them at once."""
    cluster = rmq_clusters[request.param]
    names = UniqueNames(f"live_{request.param}")
    topic, group, producer_group = names.topic(), names.group(), names.group("producer")
    sent = 20
    admin_run(cluster, lambda admin: start_at_zero(admin, cluster.broker, TopicConfig(topic, 4, 4), group))
    consumer = LiveConsumer(cluster.namesrv, group, topic)
    producer = Producer(producer_group)
    producer.set_namesrv_addr(cluster.namesrv)
    producer.start()
    try:
        for i in range(sent):
            msg = Message(topic)
            msg.set_body(f"live {i}".encode())
            send_routed(producer, msg)

        async def snapshot(admin: ClusterAdmin):
            offsets = await admin.topic_offsets(cluster.broker, topic)
            single = {mq.queue_id: (await admin.min_offset(cluster.broker, topic, mq.queue_id),
                                    await admin.max_offset(cluster.broker, topic, mq.queue_id)) for mq in offsets}
            return (await admin.consumer_connection(cluster.broker, group),
                    await admin.producer_connections(cluster.broker, producer_group),
                    {g: c for g, c in (await admin.all_producers(cluster.broker)).items() if g == producer_group},
                    offsets, single,
                    as_rows(await admin.consume_stats(cluster.broker, group)))

        def settled(snap) -> bool:
            stats = snap[5]
            mine = [v for k, v in stats.items() if k[0] == topic]
            return (len(consumer.received) >= sent and len(mine) == 4 and all(b == c for b, c in mine)
                    and sum(b for b, _ in mine) == sent and snap[0].online == 1 and len(snap[1]) == 1)

        poll(lambda: admin_run(cluster, snapshot), settled, 60, "consumer never caught up")
        commands = {"consumerConnection": ["consumerConnection", "-g", group],
                    "producerConnection": ["producerConnection", "-g", producer_group, "-t", topic],
                    "topicStatus": ["topicStatus", "-t", topic],
                    "consumerProgress": ["consumerProgress", "-g", group]}
        for _ in range(3):  # the consumer commits on its own schedule: compare a state that held still
            before = admin_run(cluster, snapshot)
            outputs = dict(zip(commands, mqadmin_all(cluster.spec, *commands.values())))
            after = admin_run(cluster, snapshot)
            if before == after:
                break
        assert before == after, "the group never held still while mqadmin looked"
        yield Live(cluster, topic, group, producer_group, sent, *after, outputs)
    finally:
        producer.shutdown()
        shutdown_within(consumer)


def test_consumer_connections_equal_mqadmin(live):
    output = no_exception(live.mqadmin["consumerConnection"])
    clients = [(p[0], p[1], p[2]) for p in table_rows(output.split("Below is subscription")[0], 4, ())
               if "@" in p[0]]
    assert len(clients) == live.consumer.online == 1
    assert sorted(clients) == sorted((c.client_id, c.client_addr, c.language) for c in live.consumer.clients)
    subscribed = [p[0] for p in table_rows(output.split("Below is subscription")[1].split("ConsumeType")[0], 2, ())]
    assert sorted(subscribed) == sorted(live.consumer.subscriptions) == sorted([live.topic, f"%RETRY%{live.group}"])
    assert f"ConsumeType: {live.consumer.consume_type}" in output
    assert f"MessageModel: {live.consumer.message_model}" in output


def test_producer_presence_equals_mqadmin(live):
    output = no_exception(live.mqadmin["producerConnection"])
    rows = [(p[1], p[2], p[3]) for p in table_rows(output, 5, (0,))]
    assert len(rows) == len(live.producers) == 1
    assert rows == [(c.client_id, c.client_addr, c.language) for c in live.producers]
    assert [c.client_id for c in live.all_producers[live.producer_group]] == [rows[0][0]]


def test_min_and_max_offsets_equal_topic_status(live):
    status = topic_status(live.mqadmin["topicStatus"])
    assert status == {(mq.broker, mq.queue_id): v for mq, v in live.offsets.items()}
    assert status == {(live.cluster.spec.broker_name, q): v for q, v in live.single_offsets.items()}
    assert sum(mx for _, mx in status.values()) == live.sent and len(status) == 4


def test_consume_stats_equal_consumer_progress(live):
    progress = consumer_progress(live.mqadmin["consumerProgress"])
    assert progress == live.stats
    assert {k for k in progress if k[0] == live.topic} == {(live.topic, live.cluster.spec.broker_name, q)
                                                          for q in range(4)}


def test_consumer_connection_of_an_offline_group_is_empty(cluster, names):
    group = names.group()

    async def scenario(admin: ClusterAdmin):
        await admin.create_group(cluster.broker, GroupConfig(group))
        return await admin.consumer_connection(cluster.broker, group)

    assert admin_run(cluster, scenario) == ConsumerConnection(group, ())


# --- resetting offsets by time ----------------------------------------------------------------

A_COUNTS = [3, 1, 2, 0]  # messages stored before the reset time, per queue
B_PER_QUEUE = 2          # messages stored after it


def test_reset_to_time_moves_to_the_first_message_at_or_after_the_time(cluster, names):
    """Online first, then offline: the group's committed offsets land exactly on batch B.

    The store times are laid out so that a time ``t_near_a`` is much closer to the last message of
    batch A than to the first of B (4.9's broker search picks A's last message there, one too
    early), and ``t_near_b`` is closer to B's first: for both the exact answer is B's first message.
    """
    topic, group, fresh = names.topic(), names.group(), names.group("fresh")
    queues = len(A_COUNTS)
    broker = cluster.spec.broker_name

    async def produce(admin: ClusterAdmin):
        await start_at_zero(admin, cluster.broker, TopicConfig(topic, queues, queues), group)
        await admin.create_group(cluster.broker, GroupConfig(fresh))
        for q, count in enumerate(A_COUNTS):
            for i in range(count):
                await store(admin, cluster.broker, topic, q, f"A{q}.{i}".encode())
        t_near_a = int(time.time() * 1000) + 1  # just after A's last store time (a stored reply came)
        await asyncio.sleep(0.5)
        t_near_b = int(time.time() * 1000)
        await asyncio.sleep(0.02)
        for i in range(B_PER_QUEUE):
            for q in range(queues):
                await store(admin, cluster.broker, topic, q, f"B{q}.{i}".encode())
        return t_near_a, t_near_b

    t_near_a, t_near_b = admin_run(cluster, produce)
    exact = {MessageQueue(topic, broker, q): count for q, count in enumerate(A_COUNTS)}
    maxima = {(topic, broker, q): count + B_PER_QUEUE for q, count in enumerate(A_COUNTS)}
    batch_b = Counter((q, A_COUNTS[q] + i) for q in range(queues) for i in range(B_PER_QUEUE))

    def stats():
        return admin_run(cluster, lambda admin: admin.consume_stats(cluster.broker, group, topic))

    consumer = LiveConsumer(cluster.namesrv, group, topic)
    try:
        # Online: the consumer has everything and committed it.
        poll(stats, lambda s: {k: c for k, (_, c) in as_rows(s).items()} == maxima, 60, "consumer never caught up")
        assert len(consumer.received) == sum(maxima.values())
        if cluster.spec.major == 4:
            # 4.9's broker would move this online group one message early on the queues holding
            # A: refused, and nothing changed.
            with pytest.raises(RocketMQError, match="nothing was changed") as refused:
                admin_run(cluster, lambda admin: reset_to_time(admin, group, topic, t_near_a))
            assert "closest" in str(refused.value)
            assert {k: c for k, (_, c) in as_rows(stats()).items()} == maxima
            moved = admin_run(cluster, lambda admin: reset_to_time(admin, group, topic, t_near_b))
        else:
            # 5.x resets on the server: the committed offsets move at once (the consumer follows later).
            moved = admin_run(cluster, lambda admin: reset_to_time(admin, group, topic, t_near_a))
            assert {k: c for k, (_, c) in as_rows(stats()).items()} == \
                {(topic, broker, q): count for q, count in enumerate(A_COUNTS)}
        assert moved == exact
        # The online consumer takes the reset: batch B, and only B, is delivered again.
        first = Counter((q, o) for q, o, _ in consumer.received)
        poll(lambda: Counter((q, o) for q, o, _ in consumer.received) - first, lambda extra: extra == batch_b, 90,
             "batch B was not delivered again")
        poll(stats, lambda s: {k: c for k, (_, c) in as_rows(s).items()} == maxima, 30, "redelivery not committed")
    finally:
        shutdown_within(consumer)
    redelivered = Counter((q, o) for q, o, _ in consumer.received)
    assert redelivered == Counter({**{(q, o): 1 for q in range(queues) for o in range(A_COUNTS[q])},
                                   **{k: 2 for k in batch_b}})

    # Offline: the group that consumed and left, and a group that never consumed at all.
    async def offline(admin: ClusterAdmin):
        assert (await admin.consumer_connection(cluster.broker, group)).online == 0
        return (await reset_to_time(admin, group, topic, t_near_a),
                await reset_to_time(admin, fresh, topic, t_near_a),
                as_rows(await admin.consume_stats(cluster.broker, fresh, topic)))

    poll(lambda: admin_run(cluster, lambda a: a.consumer_connection(cluster.broker, group)).online, lambda n: n == 0,
         30, "consumer still online")
    moved, moved_fresh, fresh_stats = admin_run(cluster, offline)
    assert moved == exact and moved_fresh == exact
    progress_out, broker_stats_out = mqadmin_all(cluster.spec, ["consumerProgress", "-g", group],
                                                 ["brokerConsumeStats", "-b", cluster.broker, "-l", "-1"])
    expected = {(topic, broker, q): (count + B_PER_QUEUE, count) for q, count in enumerate(A_COUNTS)}
    assert {k: v for k, v in consumer_progress(progress_out).items() if k[0] == topic} == expected
    assert fresh_stats == expected
    # mqadmin brokerConsumeStats lists every group, leaving out queues committed at offset 0.
    listed = {(t, q): v for (t, g, q), v in broker_consume_stats(broker_stats_out).items() if g == fresh}
    assert listed == {(topic, q): (count + B_PER_QUEUE, count) for q, count in enumerate(A_COUNTS) if count}


# --- typed errors that change nothing ---------------------------------------------------------


@pytest.mark.parametrize("name", ["source-acl", "target-acl"])
def test_wrong_credentials_are_access_denied_and_create_nothing(acl_clusters, names, name):
    cluster = acl_clusters[name]
    topic, batch_topic, group = TopicConfig(names.topic("denied"), 2, 2), TopicConfig(names.topic("b"), 2, 2), \
        GroupConfig(names.group("denied"))
    wrong = Credentials(cluster.credentials.access_key, "not-the-secret")
    unknown = Credentials("no-such-user", cluster.credentials.secret_key)

    async def denied(admin: ClusterAdmin):
        errors = []
        for attempt in (lambda: admin.create_topic(cluster.broker, topic),
                        lambda: admin.create_topics(cluster.broker, [batch_topic]),
                        lambda: admin.create_group(cluster.broker, group)):
            with pytest.raises(AccessDenied) as caught:
                await attempt()
            errors.append(caught.value)
        return errors

    for creds in (wrong, unknown, None):
        for error in admin_run(cluster, denied, credentials=creds):
            assert error.addr == cluster.broker and cluster.broker in str(error)

    async def look(admin: ClusterAdmin):
        return (set(await admin.topic_configs(cluster.broker)), set(await admin.topic_names()),
                set(await admin.group_configs(cluster.broker)))

    topics, listed, groups = admin_run(cluster, look)
    assert topic.name not in topics and batch_topic.name not in topics
    assert topic.name not in listed and batch_topic.name not in listed
    assert group.name not in groups
    assert len(topics) > 0 and len(groups) > 0  # the right credentials do read
    mq_listed = no_exception(mqadmin_all(cluster.spec, ["topicList"])[0]).split()
    assert topic.name not in mq_listed and batch_topic.name not in mq_listed and "TBW102" in mq_listed


def test_unreachable_name_server_is_connection_failed_naming_the_address():
    dead = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            dead.append(f"127.0.0.1:{sock.getsockname()[1]}")

    async def scenario():
        async with ClusterAdmin(";".join(dead), connect_timeout=1) as admin:
            errors = []
            for call in (admin.topic_names, admin.brokers, lambda: admin.topic_route("T"),
                         lambda: admin.delete_topic("T")):
                started = time.monotonic()
                with pytest.raises(ConnectionFailed) as failed:
                    await call()
                errors.append((failed.value, time.monotonic() - started))
            return errors

    for error, took in asyncio.run(scenario()):
        assert all(addr in str(error) for addr in dead) and all(addr in error.addr for addr in dead)
        assert took < 5


BAD_TOPICS = ["bad topic!", "T" * 200, "TBW102", "", "a/b", "rmq_sys_custom", "SCHEDULE_TOPIC_XXXX"]
BAD_GROUPS = ["bad group!", "G" * 256, "", "g:1"]


def test_rejected_names_are_invalid_spec_before_anything_is_sent(cluster, names):
    good_topic, good_group = TopicConfig(names.topic("good"), 2, 2), GroupConfig(names.group("good"))

    # Nothing listens at these addresses: reaching the network would be ConnectionFailed.
    async def offline():
        async with ClusterAdmin("127.0.0.1:1", connect_timeout=1) as admin:
            for bad in BAD_TOPICS:
                with pytest.raises(InvalidSpec):
                    await admin.create_topic("127.0.0.1:1", TopicConfig(bad))
                with pytest.raises(InvalidSpec):
                    await admin.create_topics("127.0.0.1:1", [good_topic, TopicConfig(bad)])
            for bad in BAD_GROUPS:
                with pytest.raises(InvalidSpec):
                    await admin.create_group("127.0.0.1:1", GroupConfig(bad))
                with pytest.raises(InvalidSpec):
                    await admin.create_groups("127.0.0.1:1", [good_group, GroupConfig(bad)])
                with pytest.raises(InvalidSpec):
                    await reset_to_time(admin, bad, "T", 0)
            return dict(admin.client._connections)

    assert asyncio.run(offline()) == {}

    async def on_the_real_broker(admin: ClusterAdmin):
        before = await admin.topic_configs(cluster.broker)
        system = {name: before[name] for name in BAD_TOPICS if name in before}  # TBW102, SCHEDULE_TOPIC_XXXX
        groups_before = await admin.group_configs(cluster.broker)
        messages = []
        for bad in BAD_TOPICS:
            with pytest.raises(InvalidSpec) as caught:
                await admin.create_topics(cluster.broker, [good_topic, TopicConfig(bad, 3, 3)])
            messages.append(str(caught.value))
        for bad in BAD_GROUPS:
            with pytest.raises(InvalidSpec):
                await admin.create_groups(cluster.broker, [good_group, GroupConfig(bad)])
        return (messages, system, await admin.topic_configs(cluster.broker), await admin.topic_names(),
                groups_before, await admin.group_configs(cluster.broker))

    messages, system, topics, listed, groups_before, groups = admin_run(cluster, on_the_real_broker)
    assert any("200 characters" in m for m in messages) and any("reserved" in m for m in messages)
    assert good_topic.name not in topics and good_topic.name not in listed
    assert set(system) == {"TBW102", "SCHEDULE_TOPIC_XXXX"}
    assert not any(name in topics for name in BAD_TOPICS if name not in system)
    assert {name: topics[name] for name in system} == system  # the broker's own topics untouched
    assert good_group.name not in groups
    # (a 4.9 broker may already hold a group named "", made by a client that gave no group)
    assert {n: groups[n] for n in BAD_GROUPS if n in groups} == {n: groups_before[n] for n in BAD_GROUPS
                                                                if n in groups_before}
    mq_listed = no_exception(mqadmin_all(cluster.spec, ["topicList"])[0]).split()
    assert good_topic.name not in mq_listed and "T" * 200 not in mq_listed and "topic!" not in mq_listed
