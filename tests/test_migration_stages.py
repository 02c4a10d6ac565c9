"""The migration's stages and the invariant each switch must find true (rocketmq_core.migration),
evaluated on the multi-broker clusters with real clients and no Airflow: a canary that would take
a group's last consumer off the source, producers moving while one side has no reader or while
a transactional half waits for its check-back, a cutover while someone still writes, the source
topics retired while someone could still read or write them."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest
from rocketmq.client import Message, Producer, PushConsumer

from rocketmq_harness import clusters as harness
from cluster_side import auto_create, broker_setting, send_half, send_routed, shutdown_within, wait_for
from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.checks import ClientsOnline, WritesStopped
from rocketmq_core.errors import BrokerUnavailable
from rocketmq_core.fence import fence_topics, lift_fence
from rocketmq_core.migration import SOURCE, TARGET, MigrationRun, Stage, verify
from rocketmq_core.model import PERM_WRITE, GroupConfig, TopicConfig
from rocketmq_core.retire import retire_topics, topic_holdings

SIDES = {SOURCE: "source-ha", TARGET: "target-ha"}
END_TRANSACTION = 37  # request code a transactional producer commits or rolls back a half with
DISCARDED_HALVES = "TRANS_CHECK_MAX_TIME_TOPIC"  # where a 4.9 broker puts a half it gave up checking


@pytest.fixture
def sides(ha_clusters):
    return {side: ha_clusters[name] for side, name in SIDES.items()}


def admin_run(cluster, job):
    async def _go():
        async with ClusterAdmin(cluster.namesrv, cluster.credentials) as admin:
            return await job(admin)
    return asyncio.run(_go())


def evaluate(sides, conditions) -> dict[tuple[str, str], dict]:
    """Each condition evaluated now on its side, bound to that side's masters as the run's broker set."""
    seen = {}
    for condition in conditions:
        cluster = sides[condition.side]
        brokers = sorted(cluster.spec.master_addrs)
        seen[(condition.side, condition.check.kind)] = admin_run(
            cluster, lambda admin, c=condition.to_dict(): verify(c, admin, brokers))
    return seen


def create_everywhere(sides, topics: list[str], groups: list[str]) -> None:
    async def _go(admin: ClusterAdmin, cluster):
        for addr in cluster.spec.master_addrs.values():
            for topic in topics:
                await admin.create_topic(addr, TopicConfig(topic, 2, 2))
            for group in groups:
                await admin.create_group(addr, GroupConfig(group))
    for cluster in sides.values():
        admin_run(cluster, lambda admin, c=cluster: _go(admin, c))


def online(cluster, group: str) -> int:
    result = admin_run(cluster, ClientsOnline([group], min_clients=0).evaluate)
    return result.figures["clients"][group]


@contextlib.contextmanager
def consumers(cluster, group: str, topic: str, count: int):
    """``count`` real push consumers of ``group`` (distinct client ids), online for the with-block."""
    started = []
    for index in range(count):
        consumer = PushConsumer(group)
        consumer.set_namesrv_addr(cluster.namesrv)
        consumer.set_instance_name(f"stage-{uuid.uuid4().hex[:8]}-{index}")
        consumer.subscribe(topic, lambda msg: None)
        consumer.start()
        started.append(consumer)
    try:
        wait_for(lambda: online(cluster, group) == count, f"{count} consumer(s) of {group} online")
        yield
    finally:
        for consumer in started:
            shutdown_within(consumer)



def test_a_canary_never_takes_the_last_consumer_of_a_group_off_the_source(sides, names):
    topic, group = names.topic(), names.group()
    create_everywhere(sides, [topic], [group])
    run = MigrationRun([group], [names.group("p")], topics=[topic], consumer_topics=[topic])

    with consumers(sides[SOURCE], group, topic, 1):
        seen = evaluate(sides, run.conditions(Stage.CANARY_CONSUMERS, [group], 0.5))
    assert seen[(TARGET, "metadata_present")]["satisfied"], seen
    alone = seen[(SOURCE, "canary_leaves_consumers")]
    assert not alone["satisfied"] and alone["figures"] == {"clients": {group: 1}, "left": {group: 0}}
    assert f"too small for a canary: {group} has 1 consumer(s) online, a 50% canary moves 1" in alone["summary"]

    with consumers(sides[SOURCE], group, topic, 2):
        half = evaluate(sides, run.conditions(Stage.CANARY_CONSUMERS, [group], 0.5))
        most = evaluate(sides, run.conditions(Stage.CANARY_CONSUMERS, [group], "0.9"))  # a rendered template
    assert half[(SOURCE, "canary_leaves_consumers")]["satisfied"], half
    assert half[(SOURCE, "canary_leaves_consumers")]["figures"]["left"] == {group: 1}
    rounded = most[(SOURCE, "canary_leaves_consumers")]
    assert not rounded["satisfied"] and "a 90% canary moves 2" in rounded["summary"]


def send_as_stray(cluster, topic: str, count: int) -> None:
    """``count`` messages to the topic from a producer of a group no spec lists."""
    stray = Producer(f"STRAY_{uuid.uuid4().hex[:8]}")
    stray.set_namesrv_addr(cluster.namesrv)
    stray.start()
    try:
        for index in range(count):
            message = Message(topic)
            message.set_keys(f"stray-{index}")
            message.set_body(b"stray")
            send_routed(stray, message)
    finally:
        stray.shutdown()


def end_transaction(cluster, addr: str, sent, producer_group: str, key: str) -> None:
    """Commit a half message as its producer would (END_TRANSACTION with the half's commit-log offset)."""
    commit_log_offset = int(sent.ext_fields["msgId"][-16:], 16)  # offset message id: address, then offset
    header = {"producerGroup": producer_group, "tranStateTableOffset": int(sent.ext_fields["queueOffset"]),
              "commitLogOffset": commit_log_offset, "commitOrRollback": 8, "fromTransactionCheck": "false",
              "msgId": key, "transactionId": key}

    admin_run(cluster, lambda admin: admin.client.invoke(addr, END_TRANSACTION, header))


def test_producers_move_only_while_both_sides_read_and_no_half_waits(sides, names):
    topic, quiet_topic, group, producers = names.topic(), names.topic("q"), names.group(), names.group("p")
    create_everywhere(sides, [topic, quiet_topic], [group])
    run = MigrationRun([group], [producers], topics=[topic, quiet_topic], consumer_topics=[topic])
    stages = (Stage.CANARY_PRODUCERS, Stage.REMAINING_PRODUCERS)

    with consumers(sides[TARGET], group, topic, 1):
        for stage in stages:
            seen = evaluate(sides, run.conditions(stage, [producers]))
            assert seen[(TARGET, "clients_online")]["satisfied"], seen
            unread = seen[(SOURCE, "clients_online")]
            assert not unread["satisfied"] and unread["figures"]["clients"] == {group: 0}, unread

    source = sides[SOURCE]
    addr = sorted(source.spec.master_addrs.items())[-1][1]  # the master without a slave
    key = uuid.uuid4().hex.upper()
    with consumers(sides[TARGET], group, topic, 1), consumers(source, group, topic, 1):
        assert all(o["satisfied"] for o in evaluate(sides, run.conditions(Stage.REMAINING_PRODUCERS)).values())
        sent = admin_run(source, lambda admin: send_half(admin, addr, topic, key, producers, queues=2))

        def waiting():
            seen = evaluate(sides, run.conditions(Stage.REMAINING_PRODUCERS))[(SOURCE, "no_pending_half")]
            return seen if not seen["satisfied"] else None
        half = wait_for(waiting, "the half message counted as pending")
        assert half["figures"]["pending_halves"] == {topic: 1, quiet_topic: 0}
        assert half["summary"] == f"pending half messages: {topic} 1"
        other = MigrationRun([group], [producers], topics=[quiet_topic], consumer_topics=[quiet_topic])
        assert evaluate(sides, other.conditions(Stage.CANARY_PRODUCERS))[(SOURCE, "no_pending_half")]["satisfied"]

        end_transaction(source, addr, sent, producers, key)
        wait_for(lambda: evaluate(sides, run.conditions(Stage.REMAINING_PRODUCERS))[(SOURCE, "no_pending_half")]
                 ["satisfied"], "the committed half no longer pending")


def test_without_the_guard_a_half_whose_producers_moved_is_discarded_by_the_source(sides, names):
    """The negative control of "no pending transactional half": a half message waits on the
    source while its producers have moved (none of its group is online there). The broker's
    check-back finds nobody; once the checks run out (transactionCheckMax, 15 by default, 0 here
    so the second check decides: the checker runs every 60 s) the broker discards the half into
    TRANS_CHECK_MAX_TIME_TOPIC. Its topic never gets the message: lost to every consumer."""
    source = sides[SOURCE]
    topic, group, producers = names.topic(), names.group(), names.group("p")
    create_everywhere(sides, [topic], [group])
    run = MigrationRun([group], [producers], topics=[topic], consumer_topics=[topic])
    addr = sorted(source.spec.master_addrs.items())[-1][1]  # the master without a slave

    def pending() -> int:
        seen = evaluate(sides, run.conditions(Stage.REMAINING_PRODUCERS))[(SOURCE, "no_pending_half")]
        return seen["figures"]["pending_halves"][topic]

    def discarded() -> int:
        offsets = admin_run(source, lambda admin: admin.topic_offsets(addr, DISCARDED_HALVES))
        return sum(high for _, high in offsets.values())

    with broker_setting(source.spec, "transactionCheckMax", "0", "15"):
        before = discarded() if DISCARDED_HALVES in admin_run(source, lambda a: a.topic_configs(addr)) else 0
        admin_run(source, lambda admin: send_half(admin, addr, topic, uuid.uuid4().hex.upper(), producers, queues=2))
        wait_for(lambda: pending() == 1, "the half pending: the guard would refuse to move producers now")
        wait_for(lambda: pending() == 0, "the broker's checker giving up on the half", timeout=200, every=2)
        assert discarded() > before
    stored = admin_run(source, lambda admin: admin.topic_offsets(addr, topic))
    assert sum(high for _, high in stored.values()) == 0, stored  # never reached its topic


def test_the_cutover_refuses_while_anyone_writes_the_source(sides, names):
    """A producer no spec lists writes the topic after the writes were measured stopped: the
    cutover's invariant sees the offsets moved, whatever the backlog and the spec's producers say."""
    topic, group, listed = names.topic(), names.group(), names.group("p")
    create_everywhere(sides, [topic], [group])
    source = sides[SOURCE]
    quiet = WritesStopped([topic], window_seconds=0, brokers=sorted(source.spec.master_addrs))
    observation = admin_run(source, quiet.evaluate).to_dict()
    run = MigrationRun([group], [listed], topics=[topic], consumer_topics=[topic],
                       writes_observations=[observation])
    before = evaluate(sides, run.conditions(Stage.CUTOVER))
    assert before[(SOURCE, "writes_unchanged")]["satisfied"], before
    assert before[(SOURCE, "clients_online")]["satisfied"], before

    send_as_stray(source, topic, 3)
    after = evaluate(sides, run.conditions(Stage.CUTOVER))
    moved = after[(SOURCE, "writes_unchanged")]
    assert not moved["satisfied"] and moved["figures"]["moved"] == {topic: {"then": 0, "now": 3}}, moved
    assert after[(SOURCE, "clients_online")]["satisfied"]  # the spec's own producers are gone: not enough
    unseen = MigrationRun([group], [listed], topics=[topic], consumer_topics=[topic], writes_observations=None)
    assert not evaluate(sides, unseen.conditions(Stage.CUTOVER))[(SOURCE, "writes_unchanged")]["satisfied"]


def test_the_watch_sees_a_returning_client_a_lifted_fence_and_a_write(sides, names):
    """After the cutover the source is fenced, quiet and empty of the migrated groups' clients;
    each way of touching it again fails its own condition of the watch, naming what it saw."""
    topic, group, producers = names.topic(), names.group(), names.group("p")
    create_everywhere(sides, [topic], [group])
    source = sides[SOURCE]
    brokers = sorted(source.spec.master_addrs)
    before = admin_run(source, lambda admin: fence_topics(admin, [topic], None, brokers))
    quiet = admin_run(source, WritesStopped([topic], window_seconds=0, brokers=brokers).evaluate).to_dict()
    run = MigrationRun([group], [producers], topics=[topic], consumer_topics=[topic], writes_observations=[quiet])

    def watch() -> list[dict]:
        return [admin_run(source, lambda admin, c=c.to_dict(): verify(c, admin, brokers)) for c in run.watch()]

    assert [o["satisfied"] for o in watch()] == [True, True, True, True]
    with consumers(source, group, topic, 1):
        back = watch()
    assert [o["satisfied"] for o in back] == [True, True, False, True]
    assert back[2]["figures"]["clients"] == {group: 1}

    admin_run(source, lambda admin: lift_fence(admin, before))
    lifted = watch()
    assert [o["satisfied"] for o in lifted] == [True, False, True, True]
    assert lifted[1]["figures"]["writable"] == {broker: [topic] for broker in brokers}
    assert lifted[1]["summary"].startswith("writable again: ")

    send_as_stray(source, topic, 1)
    written = watch()
    assert not written[0]["satisfied"] and written[0]["figures"]["moved"] == {topic: {"then": 0, "now": 1}}


def commit_all(cluster, group: str, topic: str, at_end: bool) -> None:
    """Commit ``group``'s offset on every queue of ``topic`` on every master: at its end, or at 0."""
    async def _go(admin: ClusterAdmin):
        for addr in cluster.spec.master_addrs.values():
            bounds = await admin.topic_offsets(addr, topic)
            await admin.update_consumer_offsets(addr, group, topic, {
                mq.queue_id: high if at_end else 0 for mq, (_, high) in bounds.items()})
    admin_run(cluster, _go)


def test_the_source_topics_are_retired_only_once_nobody_reads_them_and_nothing_can_bring_them_back(sides, names):
    """Retiring deletes the topics and their messages: refused while a group the spec left behind
    still has messages there, while any reader is online, while a broker would re-create the topic
    on a straggler's send, or while a broker of the run is missing; then deleted on every master
    and the name server, as mqadmin sees it."""
    topic, group, left, producers = names.topic(), names.group(), names.group("left"), names.group("p")
    create_everywhere(sides, [topic], [group, left])
    source = sides[SOURCE]
    brokers = sorted(source.spec.master_addrs)
    send_as_stray(source, topic, 6)
    commit_all(source, group, topic, at_end=True)
    commit_all(source, left, topic, at_end=False)  # a group left behind on purpose, 6 unread
    admin_run(source, lambda admin: fence_topics(admin, [topic], None, brokers))
    quiet = admin_run(source, WritesStopped([topic], window_seconds=0, brokers=brokers).evaluate).to_dict()
    run = MigrationRun([group], [producers], topics=[topic], consumer_topics=[topic], writes_observations=[quiet])

    def retirement() -> dict[str, dict]:
        return {c.check.kind: admin_run(source, lambda admin, c=c.to_dict(): verify(c, admin, brokers))
                for c in run.retirement()}

    seen = retirement()
    assert [k for k, o in seen.items() if o["satisfied"]] == ["fence_holds", "writes_unchanged", "no_pending_half"]
    assert seen["topics_unread"]["figures"]["backlog"] == {left: 6}, seen["topics_unread"]
    assert set(seen["topics_unread"]["figures"]["readers"]) >= {group, left}
    assert seen["auto_create_off"]["figures"]["auto_create"] == brokers
    assert "a straggler's send would re-create a retired topic" in seen["auto_create_off"]["summary"]

    commit_all(source, left, topic, at_end=True)
    with auto_create(source.spec, False):
        with consumers(source, group, topic, 1):
            read = retirement()["topics_unread"]
        assert not read["satisfied"] and read["figures"]["online"] == {group: 1}, read
        wait_for(lambda: online(source, group) == 0, f"the consumer of {group} gone")
        assert all(o["satisfied"] for o in retirement().values()), retirement()

        with pytest.raises(BrokerUnavailable, match="ghost-b9"):
            admin_run(source, lambda admin: retire_topics(admin, [topic], None, [*brokers, "ghost-b9"]))
        assert all(topic in admin_run(source, lambda admin, a=addr: admin.topic_configs(a))
                   for addr in source.spec.master_addrs.values())  # refused before deleting anything
        held = admin_run(source, lambda admin: topic_holdings(admin, [topic], None, brokers))
        admin_run(source, lambda admin: retire_topics(admin, [topic], None, brokers))
    assert sorted(held) == brokers and all(held[b][topic]["perm"] & PERM_WRITE == 0 for b in brokers), held
    assert all(topic not in admin_run(source, lambda admin, a=addr: admin.topic_configs(a))
               for addr in source.spec.master_addrs.values())
    listed = harness.mqadmin(source.spec, ["topicList"])
    assert listed.returncode == 0 and topic not in listed.stdout.split(), listed.stdout[-2000:]
