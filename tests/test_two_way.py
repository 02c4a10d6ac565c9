"""Three-way metadata sync on the real clusters: one-sided changes travel, deletions included;
changes on both sides are conflicts that nobody overwrites."""

from __future__ import annotations

import asyncio

from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.metadata.apply import apply_plan
from rocketmq_core.metadata.plan import make_plan
from rocketmq_core.metadata.scope import Scope
from rocketmq_core.metadata.snapshot import take_snapshot
from rocketmq_core.model import TopicConfig
from rocketmq_core.two_way import resolve, three_way


def run(coro):
    return asyncio.run(coro)


async def snapshots(source, target, scope):
    async with ClusterAdmin(source.namesrv) as a, ClusterAdmin(target.namesrv) as b:
        return (await take_snapshot(a, include_acl=False)).scoped(scope), \
               (await take_snapshot(b, include_acl=False)).scoped(scope)


async def carry(result, source, target):
    async with ClusterAdmin(source.namesrv) as a, ClusterAdmin(target.namesrv) as b:
        await apply_plan(make_plan(result.to_target, allow_delete=True), b)
        await apply_plan(make_plan(result.to_source, allow_delete=True), a)


async def put(cluster, topic: TopicConfig):
    async with ClusterAdmin(cluster.namesrv) as admin:
        await admin.create_topic(cluster.broker, topic)


async def delete(cluster, topic: str):
    async with ClusterAdmin(cluster.namesrv) as admin:
        await admin.delete_topic(topic)


def test_three_way_sync_carries_one_sided_changes_and_stops_on_conflicts(rmq_clusters, names):
    source, target = rmq_clusters["source"], rmq_clusters["target"]
    prefix = names.topic("tw")
    scope = Scope(topics=(f"{prefix}_*",), groups=("none",))
    a_only, b_only, both = f"{prefix}_a", f"{prefix}_b", f"{prefix}_both"
    run(put(source, TopicConfig(a_only, 2, 2)))
    run(put(target, TopicConfig(b_only, 2, 2)))
    run(put(source, TopicConfig(both, 2, 2)))
    run(put(target, TopicConfig(both, 4, 4)))

    first = three_way(*run(snapshots(source, target, scope)), None, scope)
    assert {c.name for c in first.to_target.changes} == {a_only}
    assert {c.name for c in first.to_source.changes} == {b_only}
    assert first.conflicts == (("topic", both),)
    run(carry(first, source, target))

    loser, fix = resolve(*run(snapshots(source, target, scope)), [("topic", both)], "source", scope)
    assert loser == "target" and [c.name for c in fix.changes] == [both]
    async def apply_fix():
        async with ClusterAdmin(target.namesrv) as b:
            await apply_plan(make_plan(fix, allow_delete=True), b)
    run(apply_fix())
    base_source, base_target = run(snapshots(source, target, scope))
    assert set(base_source.topics) == set(base_target.topics) == {a_only, b_only, both}

    run(delete(source, a_only))                      # deleted on one side: the deletion travels
    run(put(target, TopicConfig(b_only, 3, 3)))      # changed on one side: the change travels
    run(put(source, TopicConfig(both, 6, 6)))        # changed on both sides differently: a conflict
    run(put(target, TopicConfig(both, 8, 8)))
    second = three_way(*run(snapshots(source, target, scope)), base_source, scope)
    assert [(c.action, c.name) for c in second.to_target.changes] == [("delete", a_only)]
    assert [(c.action, c.name) for c in second.to_source.changes] == [("update", b_only)]
    assert second.conflicts == (("topic", both),)
    run(carry(second, source, target))
    after_source, after_target = run(snapshots(source, target, scope))
    assert a_only not in after_target.topics
    assert after_source.topics[b_only].read_queues == 3
    assert (after_source.topics[both].read_queues, after_target.topics[both].read_queues) == (6, 8)
