"""The source fence on a cluster of two masters: the migrated topics lose their write bit on
every master (as mqadmin's topicRoute shows), consumers keep reading, and lifting the fence
restores exactly what each broker had (a broker already read-only stays so)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from cluster_side import wait_for
from rocketmq_core.acl import PlainAccount, plain_accounts, put_plain_account
from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.checks import FenceHolds
from rocketmq_core.errors import AccessDenied
from rocketmq_core.fence import (FenceRaced, allow_writes, carried_over, deny_writes, fence_topics, lift_fence,
                                  plan_fence, put_fence)
from rocketmq_core.model import PERM_READ, PERM_WRITE, TopicConfig
from rocketmq_core.remoting.client import Credentials
from rocketmq_core.remoting.fastjson import loads
from rocketmq_core.replication import codec, remote
from rocketmq_harness import clusters as harness

RW = PERM_READ | PERM_WRITE


def admin_run(cluster, job):
    async def _go():
        async with ClusterAdmin(cluster.namesrv, cluster.credentials) as admin:
            return await job(admin)
    return asyncio.run(_go())


def mqadmin_route_perms(cluster, topic: str) -> dict[str, int]:
    listed = harness.mqadmin(cluster.spec, ["topicRoute", "-t", topic])
    assert listed.returncode == 0, listed.stderr
    text = listed.stdout[listed.stdout.index("{"):]  # fastjson: broker ids are unquoted keys
    return {q["brokerName"]: q["perm"] for q in loads(text.encode())["queueDatas"]}


def test_fence_takes_the_write_bit_on_every_master_and_lifting_restores_each(ha_clusters, names):
    cluster = ha_clusters["source-ha"]
    b0, b1 = cluster.spec.master_addrs
    topic, other = names.topic(), names.topic("untouched")

    async def create(admin: ClusterAdmin):
        await admin.create_topic(cluster.spec.master_addrs[b0], TopicConfig(topic, 2, 2, perm=RW))
        await admin.create_topic(cluster.spec.master_addrs[b1], TopicConfig(topic, 2, 2, perm=PERM_READ))
        for addr in cluster.spec.master_addrs.values():
            await admin.create_topic(addr, TopicConfig(other, 2, 2))
    admin_run(cluster, create)
    wait_for(lambda: mqadmin_route_perms(cluster, topic) == {b0: RW, b1: PERM_READ}, "the route before", 30)

    before = admin_run(cluster, lambda a: fence_topics(a, [topic], expected_brokers=[b0, b1]))
    assert before == {b0: {topic: RW}, b1: {topic: PERM_READ}}
    wait_for(lambda: mqadmin_route_perms(cluster, topic) == {b0: PERM_READ, b1: PERM_READ},
             "the fenced route as mqadmin reads it", 30)
    assert set(mqadmin_route_perms(cluster, other).values()) == {RW}

    # A 4.9 broker itself stores a send to the read-only topic: a client that ignores the route's
    # permission gets through the fence, which is why the cutover re-measures the writes.
    async def send(admin: ClusterAdmin) -> str:
        props = codec.encode_properties({"KEYS": "k", "UNIQ_KEY": f"k-{time.time_ns()}"})
        try:
            await remote.send_v2(admin.client, cluster.spec.master_addrs[b0], "PG_fence", topic, 0, b"x", props,
                                 int(time.time() * 1000))
        except Exception as exc:  # the broker's refusal, if it refuses
            return f"refused: {exc}"
        return "stored"
    assert admin_run(cluster, send) == "stored"

    restored = admin_run(cluster, lambda a: lift_fence(a, before))
    assert restored == {b0: [topic]}
    wait_for(lambda: mqadmin_route_perms(cluster, topic) == {b0: RW, b1: PERM_READ}, "the route restored", 30)


def test_a_delayed_message_that_comes_due_behind_the_fence_is_stored_not_lost(ha_cluster, names):
    """A message sent with a delay before the fence comes due after it: the broker moves it into
    the read-only topic all the same (the permission guards sends, not the broker's own re-put),
    so consumers still on the source read it, and the drain, which counts pending delayed
    messages of the groups' topics, waits for it."""
    cluster = ha_cluster
    b0 = sorted(cluster.spec.master_addrs)[0]
    addr = cluster.spec.master_addrs[b0]
    topic = names.topic()
    admin_run(cluster, lambda a: a.create_topic(addr, TopicConfig(topic, 1, 1)))

    async def send_delayed(admin: ClusterAdmin) -> None:
        props = codec.encode_properties({"KEYS": "late", "UNIQ_KEY": f"late-{time.time_ns()}", "DELAY": "2"})
        await remote.send_v2(admin.client, addr, "PG_fence", topic, 0, b"due in 5 s", props, int(time.time() * 1000))
    admin_run(cluster, send_delayed)
    assert admin_run(cluster, lambda a: a.max_offset(addr, topic, 0)) == 0  # waiting in the delay queue
    admin_run(cluster, lambda a: fence_topics(a, [topic]))
    assert admin_run(cluster, lambda a: a.topic_configs(addr))[topic].perm == PERM_READ
    wait_for(lambda: admin_run(cluster, lambda a: a.max_offset(addr, topic, 0)) == 1,
             "the delayed message in the fenced topic", 40)
    stored = admin_run(cluster, lambda a: remote.pull_range(a.client, addr, topic, 0, 0, 1))
    assert [m.body for m in stored] == [b"due in 5 s"]


def test_with_plain_acl_on_the_broker_itself_refuses_a_fenced_send_while_reads_go_on(acl_clusters, names):
    """The send above gets through a route-only fence. With plain ACL on, the fence also gives
    every non-admin account the topics as SUB (it read them) or DENY (it did not): the broker
    refuses that same send with NO_PERMISSION, the account still pulls, other topics are
    untouched, the admin account is named as one the fence cannot stop, and lifting restores
    each account's own entries. The watch's FenceHolds sees an account given its PUB back by
    hand while the topic's perm still says read-only."""
    cluster = acl_clusters["source-acl"]
    broker, addr = next(iter(cluster.spec.master_addrs.items()))
    topic, other = names.topic(), names.topic("other")
    reader = PlainAccount(f"fleet{uuid.uuid4().hex[:8]}", "fleet-secret-1", default_topic_perm="PUB|SUB",
                          default_group_perm="PUB|SUB")
    writer = PlainAccount(f"writer{uuid.uuid4().hex[:8]}", "writer-secret-1", default_topic_perm="DENY",
                          default_group_perm="PUB|SUB", topic_perms=(f"{other}=PUB", f"{topic}=PUB"))

    async def prepare(admin: ClusterAdmin):
        for name in (topic, other):
            await admin.create_topic(addr, TopicConfig(name, 1, 1))
        for account in (reader, writer):
            await put_plain_account(admin, addr, account)
    admin_run(cluster, prepare)

    def as_account(account: PlainAccount, job):
        async def _go():
            async with ClusterAdmin(cluster.namesrv, Credentials(account.access_key, account.secret_key)) as admin:
                return await job(admin)
        return asyncio.run(_go())

    def send(account: PlainAccount, to: str) -> str:
        async def _send(admin: ClusterAdmin) -> str:
            props = codec.encode_properties({"UNIQ_KEY": f"acl-{time.time_ns()}"})
            try:
                await remote.send_v2(admin.client, addr, "PG_fence_acl", to, 0, b"x", props, int(time.time() * 1000))
            except AccessDenied as exc:
                return f"denied: {exc}"
            return "stored"
        return as_account(account, _send)

    def entries(account: PlainAccount) -> dict[str, str]:
        found = admin_run(cluster, lambda a: plain_accounts(a, addr))[account.access_key]
        return dict(e.partition("=")[::2] for e in found.topic_perms)

    assert send(reader, topic) == "stored" and send(writer, topic) == "stored"
    before, unstoppable = admin_run(cluster, lambda a: deny_writes(a, [topic], expected_brokers=[broker]))
    assert before[broker][reader.access_key] == {topic: ""} and before[broker][writer.access_key] == {topic: "PUB"}
    assert unstoppable == {broker: [harness.ADMIN_ACCESS_KEY]}
    assert entries(reader) == {topic: "SUB"} and entries(writer) == {topic: "DENY", other: "PUB"}
    for account in (reader, writer):
        refused = send(account, topic)
        # 4.9 answers an ACL refusal as a system error carrying the AclException
        assert refused.startswith("denied: ") and "AclException" in refused and topic in refused, refused
    assert send(writer, other) == "stored"
    pulled = as_account(reader, lambda a: remote.pull(a.client, addr, "GID_fence_acl", topic, 0, 0))
    assert pulled.status is codec.PullStatus.FOUND and len(pulled.messages) == 2, pulled

    perms = admin_run(cluster, lambda a: fence_topics(a, [topic], expected_brokers=[broker]))
    holds = FenceHolds([topic], brokers=[broker])
    assert admin_run(cluster, holds.evaluate).satisfied
    lifted_by_hand = PlainAccount(writer.access_key, writer.secret_key, default_topic_perm="DENY",
                                  default_group_perm="PUB|SUB", topic_perms=(f"{other}=PUB", f"{topic}=PUB"))
    admin_run(cluster, lambda a: put_plain_account(a, addr, lifted_by_hand))
    assert mqadmin_route_perms(cluster, topic) == {broker: PERM_READ}  # the perm alone still says fenced
    seen = admin_run(cluster, holds.evaluate)
    assert not seen.satisfied and seen.figures["acl_publishers"] == {broker: {writer.access_key: [topic]}}, seen
    assert f"account {writer.access_key} may send to {topic}" in seen.summary
    assert send(writer, topic) == "stored"  # what the watch saw: the broker takes the send again
    admin_run(cluster, lambda a: lift_fence(a, perms))

    restored = admin_run(cluster, lambda a: allow_writes(a, before))
    assert {reader.access_key, writer.access_key} <= set(restored[broker])  # and other tests' accounts
    assert entries(writer) == {topic: "PUB", other: "PUB"}
    assert entries(reader) == {topic: "PUB|SUB"}  # its default, spelled out: 4.9 cannot store an empty list
    assert send(reader, topic) == "stored" and send(writer, topic) == "stored"


def test_a_topic_changed_between_the_fences_read_and_write_is_not_reverted(rmq_clusters, names):
    """The fence writes whole topic configs: one changed since it read them (queues added) would
    be set back. It reads again first and writes nothing when anything changed, naming it."""
    cluster = rmq_clusters["source"]
    topic = names.topic()
    admin_run(cluster, lambda a: a.create_topic(cluster.broker, TopicConfig(topic, 4, 4)))
    fence = admin_run(cluster, lambda a: plan_fence(a, [topic]))
    admin_run(cluster, lambda a: a.create_topic(cluster.broker, TopicConfig(topic, 8, 8)))  # meanwhile
    with pytest.raises(FenceRaced, match=f"topic {topic} on {cluster.broker}"):
        admin_run(cluster, lambda a: put_fence(a, fence))
    now = admin_run(cluster, lambda a: a.topic_configs(cluster.broker))[topic]
    assert (now.read_queues, now.write_queues, now.perm) == (8, 8, RW)
    fence = admin_run(cluster, lambda a: plan_fence(a, [topic]))  # read again: it goes up
    admin_run(cluster, lambda a: put_fence(a, fence))
    now = admin_run(cluster, lambda a: a.topic_configs(cluster.broker))[topic]
    assert (now.read_queues, now.write_queues, now.perm) == (8, 8, PERM_READ)


def test_a_record_carried_over_keeps_the_first_fences_values_only_where_a_fence_still_stands():
    earlier = {"perms": {"b0": {"t": 6, "u": 6}}, "acl": {"b0": {"fleet": {"t": "", "u": "PUB"}}}}
    now = {"perms": {"b0": {"t": 4, "u": 6, "v": 6}}, "acl": {"b0": {"fleet": {"t": "SUB", "u": "PUB|SUB"}}}}
    assert carried_over(earlier, now) == {  # u was lifted by hand since: what it has now is its own
        "perms": {"b0": {"t": 6, "u": 6, "v": 6}}, "acl": {"b0": {"fleet": {"t": "", "u": "PUB|SUB"}}}}
    assert carried_over(None, now) == now
