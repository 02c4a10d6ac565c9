"""Metadata across brokers: source-ha (4.9, two masters, a slave of b0) -> target-ha (5.x, two masters).

Where a topic lives (which brokers, queue counts and perm per broker) is checked against the
route mqadmin of each version prints, and mqadmin's own exportMetadata -c file is read back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import pytest

from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.errors import InvalidSpec, RocketMQError
from rocketmq_core.metadata.apply import apply_plan
from rocketmq_core.metadata.diff import diff
from rocketmq_core.metadata.fields import CREATE, KIND_TOPIC, UPDATE
from rocketmq_core.metadata.plan import Plan, make_plan
from rocketmq_core.metadata.scope import Scope
from rocketmq_core.metadata.snapshot import ClusterSnapshot, take_snapshot
from rocketmq_core.model import GroupConfig, Share, TopicConfig
from rocketmq_core.remoting.fastjson import loads
from rocketmq_harness.clusters import mqadmin

T = TypeVar("T")
SRC0, SRC1, TGT0, TGT1 = "source-ha-b0", "source-ha-b1", "target-ha-b0", "target-ha-b1"


def run(cluster, job: Callable[[ClusterAdmin], Awaitable[T]]) -> T:
    async def _go() -> T:
        async with ClusterAdmin(cluster.namesrv, cluster.credentials) as admin:
            return await job(admin)
    return asyncio.run(_go())


def mq(cluster, *args: str) -> str:
    result = mqadmin(cluster.spec, list(args))
    assert result.returncode == 0, f"mqadmin {args} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result.stdout


def mq_route(cluster, topic: str) -> dict[str, Share]:
    """The topic's queues per broker, as mqadmin topicRoute of the cluster's version prints them."""
    out = mq(cluster, "topicRoute", "-t", topic)
    data = loads(out[out.index("{"):])
    return {q["brokerName"]: Share(q["readQueueNums"], q["writeQueueNums"], q["perm"]) for q in data["queueDatas"]}


def snapshot(cluster) -> ClusterSnapshot:
    return run(cluster, lambda admin: take_snapshot(admin, cluster.name, include_acl=False))


def wait_route(cluster, topic: str, brokers: set[str], timeout: float = 30) -> None:
    """Until the name server routes the topic to exactly these brokers."""
    async def _go(admin: ClusterAdmin) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            with contextlib.suppress(RocketMQError):
                if {q["brokerName"] for q in (await admin.topic_route(topic))["queueDatas"]} == brokers:
                    return
            assert asyncio.get_running_loop().time() < deadline, f"route of {topic} never was {sorted(brokers)}"
            await asyncio.sleep(0.3)
    run(cluster, _go)


def seed(cluster, layouts: dict[str, dict[str, Share]], groups: tuple[str, ...] = ()) -> None:
    """Create each topic on the given masters with the given shares, each group on every master."""
    async def _go(admin: ClusterAdmin) -> None:
        for topic, shares in layouts.items():
            for broker, share in shares.items():
                await admin.create_topic(cluster.spec.master_addrs[broker],
                                         TopicConfig(topic, share.read, share.write, share.perm))
        for group in groups:
            for addr in cluster.spec.master_addrs.values():
                await admin.create_group(addr, GroupConfig(group))
    run(cluster, _go)
    for topic, shares in layouts.items():
        wait_route(cluster, topic, set(shares))


def apply(cluster, plan: Plan):
    return run(cluster, lambda admin: apply_plan(plan, admin, cluster.name))


@pytest.fixture
def cleanup(ha_clusters) -> Iterator[Callable[[str], None]]:
    """Register topic or group names to delete from both clusters after the test."""
    names: list[str] = []
    yield names.append

    async def _clean(admin: ClusterAdmin, cluster) -> None:
        for name in names:
            with contextlib.suppress(RocketMQError):
                if name.startswith("T_"):
                    await admin.delete_topic(name, cluster.name)
                else:
                    for addr in cluster.spec.master_addrs.values():
                        await admin.delete_group(addr, name)
    for cluster in ha_clusters.values():
        run(cluster, lambda admin, c=cluster: _clean(admin, c))


def scope_of(*names: str, **options) -> Scope:
    return Scope(topics=[n for n in names if n.startswith("T_")] or [""],
                 groups=[n for n in names if n.startswith("G_")] or [""], acl=(), **options)


def test_snapshot_per_broker_equals_mqadmin_route(ha_clusters, names, cleanup):
    source = ha_clusters["source-ha"]
    topic = names.topic()
    cleanup(topic)
    seed(source, {topic: {SRC0: Share(4, 4, 4), SRC1: Share(2, 6, 6)}})

    snap = snapshot(source)
    assert snap.layout[topic] == mq_route(source, topic) == {SRC0: Share(4, 4, 4), SRC1: Share(2, 6, 6)}
    merged = snap.topics[topic]
    assert (merged.read_queues, merged.write_queues, merged.perm) == (6, 10, 6)  # totals, the widest perm
    assert {b.name for b in snap.brokers} == {SRC0, SRC1}  # the slave of b0 is not read as a broker


def test_sync_keeps_the_per_broker_layout(ha_clusters, names, cleanup):
    """One broker only, read-only on one broker, different counts per broker: each lands as it
    is on the source, broker i -> broker i, with the widest perm on every broker."""
    source, target = ha_clusters["source-ha"], ha_clusters["target-ha"]
    pinned, read_only, uneven = names.topic("pinned"), names.topic("ro"), names.topic("uneven")
    for name in (pinned, read_only, uneven):
        cleanup(name)
    seed(source, {pinned: {SRC1: Share(3, 3, 6)}, read_only: {SRC0: Share(4, 4, 4), SRC1: Share(4, 4, 6)},
                  uneven: {SRC0: Share(2, 2, 6), SRC1: Share(4, 6, 6)}})
    scope = scope_of(pinned, read_only, uneven)

    plan = make_plan(diff(snapshot(source), snapshot(target), scope))
    actions = {a.name: a for a in plan.actions}
    assert {a.op for a in plan.actions} == {CREATE}
    expected = {pinned: {TGT1: Share(3, 3, 6)}, read_only: {TGT0: Share(4, 4, 6), TGT1: Share(4, 4, 6)},
                uneven: {TGT0: Share(2, 2, 6), TGT1: Share(4, 6, 6)}}
    assert {n: a.layout for n, a in actions.items()} == expected
    text = actions[read_only].to_dict()["summary"]
    assert f"on {TGT0} 4/4 perm 6, {TGT1} 4/4 perm 6" in text
    assert f"source brokers disagree on perm ({SRC0} 4, {SRC1} 6)" in text
    assert f"{SRC1} -> {TGT1}" in actions[pinned].to_dict()["summary"]

    result = apply(target, plan)
    assert len(result.applied) == 3
    for topic, layout in expected.items():
        wait_route(target, topic, set(layout))
        assert mq_route(target, topic) == layout == snapshot(target).layout[topic]
    after = diff(snapshot(source), snapshot(target), scope)
    assert after.empty, after.render()
    assert apply(target, plan).applied == ()


def test_diff_reports_a_layout_that_differs_with_equal_totals(ha_clusters, names, cleanup):
    """The reported bug: 4/4 on one source broker became 2/2 + 2/2 on the target."""
    source, target = ha_clusters["source-ha"], ha_clusters["target-ha"]
    topic = names.topic()
    cleanup(topic)
    seed(source, {topic: {SRC0: Share(4, 4, 6)}})
    seed(target, {topic: {TGT0: Share(2, 2, 6), TGT1: Share(2, 2, 6)}})

    changes = diff(snapshot(source), snapshot(target), scope_of(topic))
    [change] = changes.changes
    assert (change.action, change.kind) == (UPDATE, KIND_TOPIC)
    assert [f.to_dict() for f in change.fields] == [
        {"field": f"queues@{TGT0}", "source": "4/4 perm 6", "target": "2/2 perm 6"},
        {"field": f"queues@{TGT1}", "source": "absent", "target": "2/2 perm 6"}]
    assert f"queues@{TGT1}" in changes.render()


def test_mqadmin_export_of_the_source_imports_as_nothing_to_do(ha_clusters, names, cleanup, tmp_path):
    source, target = ha_clusters["source-ha"], ha_clusters["target-ha"]
    pinned, read_only, group = names.topic("pinned"), names.topic("ro"), names.group()
    for name in (pinned, read_only, group):
        cleanup(name)
    seed(source, {pinned: {SRC0: Share(4, 4, 6)}, read_only: {SRC0: Share(4, 4, 4), SRC1: Share(2, 6, 6)}},
         (group,))
    scope = scope_of(pinned, read_only, group)
    apply(target, make_plan(diff(snapshot(source), snapshot(target), scope)))

    mq(source, "exportMetadata", "-c", source.name, "-f", str(tmp_path))
    raw = loads((tmp_path / "metadata.json").read_text())
    # What mqadmin writes: queue counts summed over the masters, retryQueueNums summed too, and
    # the perm of whichever broker it read last (4 or 6 here).
    ro, grp = raw["topicConfigTable"][read_only], raw["subscriptionGroupTable"][group]
    assert (ro["readQueueNums"], ro["writeQueueNums"]) == (6, 10) and ro["perm"] in (4, 6)
    assert grp["retryQueueNums"] == 2

    exported = ClusterSnapshot.load(tmp_path / "metadata.json")
    changes = diff(exported, snapshot(target), scope)
    assert changes.empty, changes.render()
    assert make_plan(changes).empty
    target_groups = [b.groups[group].retry_queues for b in snapshot(target).brokers]
    assert target_groups == [1, 1]


def test_explicit_broker_map_is_honoured(ha_clusters, names, cleanup):
    source, target = ha_clusters["source-ha"], ha_clusters["target-ha"]
    pinned, both = names.topic("pinned"), names.topic("both")
    cleanup(pinned)
    cleanup(both)
    seed(source, {pinned: {SRC0: Share(3, 3, 6)}, both: {SRC0: Share(2, 2, 6), SRC1: Share(4, 4, 6)}})
    swapped = scope_of(pinned, both, broker_map={SRC0: TGT1, SRC1: TGT0})

    plan = make_plan(diff(snapshot(source), snapshot(target), swapped))
    assert {a.name: a.layout for a in plan.actions} == {
        pinned: {TGT1: Share(3, 3, 6)}, both: {TGT1: Share(2, 2, 6), TGT0: Share(4, 4, 6)}}
    assert f"{SRC0} -> {TGT1}" in plan.actions[0].to_dict()["summary"]
    apply(target, plan)
    wait_route(target, pinned, {TGT1})
    assert mq_route(target, pinned) == {TGT1: Share(3, 3, 6)}
    assert mq_route(target, both) == {TGT1: Share(2, 2, 6), TGT0: Share(4, 4, 6)}
    assert diff(snapshot(source), snapshot(target), swapped).empty
    assert not diff(snapshot(source), snapshot(target), scope_of(pinned, both)).empty  # without the map: b0 -> b0

    with pytest.raises(InvalidSpec, match="nowhere-b9"):
        diff(snapshot(source), snapshot(target), scope_of(pinned, broker_map={"nowhere-b9": TGT0}))
    assert Scope.from_dict(json.loads(json.dumps(swapped.to_dict()))) == swapped


def test_nothing_is_written_to_the_slave(ha_clusters, names, cleanup):
    """A sync onto source-ha (whose b0 has a slave) sends every request to masters only."""
    source, target = ha_clusters["source-ha"], ha_clusters["target-ha"]
    topic, group = names.topic(), names.group()
    cleanup(topic)
    cleanup(group)
    seed(target, {topic: {TGT0: Share(2, 2, 6)}}, (group,))
    slave = next(b.addr for b in source.spec.brokers if not b.is_master)
    scope, wanted = scope_of(topic, group), snapshot(target)

    async def _sync(admin: ClusterAdmin) -> set[str]:
        addrs: set[str] = set()
        invoke = admin.client.invoke

        async def recording(addr, *args, **kwargs):
            addrs.add(addr)
            return await invoke(addr, *args, **kwargs)
        admin.client.invoke = recording  # type: ignore[method-assign]
        current = await take_snapshot(admin, source.name, include_acl=False)
        await apply_plan(make_plan(diff(wanted, current, scope)), admin, source.name)
        return addrs
    addrs = run(source, _sync)
    assert slave not in addrs
    assert addrs - {source.namesrv} == set(source.spec.master_addrs.values())
    wait_route(source, topic, {SRC0})
    assert mq_route(source, topic) == {SRC0: Share(2, 2, 6)}
    assert diff(snapshot(target), snapshot(source), scope).empty
