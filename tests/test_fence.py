"""The source fence on a cluster of two masters: the migrated topics lose their write bit on
every master (as mqadmin's topicRoute shows), consumers keep reading, and lifting the fence
restores exactly what each broker had (a broker already read-only stays so)."""

from __future__ import annotations

import asyncio
import time

from cluster_side import wait_for
from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.fence import fence_topics, lift_fence
from rocketmq_core.model import PERM_READ, PERM_WRITE, TopicConfig
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
