"""Applying a plan of 5,000 topics and 5,000 groups to an empty 5.x cluster: apply_plan against mqadmin.

On a cluster of one broker, then of two masters. Both tools create every object on every master
(the plan spreads a topic's 4 queues over the masters, 2 each; mqadmin's ``-c`` writes the file's
counts on each master, so its file says 2 there): the same end state, twice the broker work.

* ours: the plan is made from a 4.9-style exportMetadata document (the migration's direction)
  against a fresh, empty 5.x cluster, then ``apply_plan`` runs it: a read of the target,
  batch creates (UPDATE_AND_CREATE_TOPIC_LIST / SUBSCRIPTIONGROUP_LIST), and a fresh read that
  must show every object. Timed: apply_plan alone, and snapshot + diff + plan + apply.
* reference: mqadmin 5.5.0 has batch create commands, so no per-object calls: ``updateTopicList
  -c -f`` and ``updateSubGroupList -c -f`` with the same 5,000 + 5,000 objects, both JVMs started
  at once, on a second fresh, empty cluster of the same shape (both sides start from an empty one).

Both sides' objects are checked on the cluster: ours with ``mqadmin exportMetadata``, mqadmin's
with our snapshot. Target: at least 20x faster.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import BENCH_TARGET, BENCH_TARGET_2M, Timer, broker_pids, fresh_cluster, headline, load_average, \
    mqadmin_cmd, run_async, run_mqadmin, run_parallel, side_by_side, write_result

from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.metadata.apply import PlanResult, apply_plan
from rocketmq_core.metadata.diff import diff
from rocketmq_core.metadata.plan import make_plan
from rocketmq_core.metadata.scope import Scope
from rocketmq_core.metadata.snapshot import ClusterSnapshot, take_snapshot
from rocketmq_core.model import GroupConfig, TopicConfig
from rocketmq_harness.clusters import ClusterSpec

N = 5_000
TARGET_RATIO = 20
#: Brokers per cluster -> the (empty) cluster both sides apply to.
SPECS = {1: BENCH_TARGET, 2: BENCH_TARGET_2M}


def wanted() -> ClusterSnapshot:
    """What a 4.9 source exported: 5,000 topics of 4 queues and 5,000 groups, one in 7 changed from defaults."""
    topics = {f"BENCH_AT_{i:04d}": TopicConfig(f"BENCH_AT_{i:04d}", 4, 4, perm=4 if i % 7 == 0 else 6)
              for i in range(N)}
    groups = {f"BENCH_AG_{i:04d}": GroupConfig(f"BENCH_AG_{i:04d}", retry_max_times=5 if i % 7 == 0 else 16)
              for i in range(N)}
    export = ClusterSnapshot(topics=topics, groups=groups, v5=False).to_export()
    return ClusterSnapshot.from_export(json.dumps(export))


def check_landed(source: ClusterSnapshot, doc: dict[str, Any], seen_by: str) -> None:
    """Every wanted object is on the cluster with its planned values (doc: an exportMetadata document)."""
    topics = {n: w for n, w in doc["topicConfigTable"].items() if n.startswith("BENCH_AT_")}
    groups = {n: w for n, w in doc["subscriptionGroupTable"].items() if n.startswith("BENCH_AG_")}
    wrong = [n for n, t in source.topics.items()
             if (topics.get(n) or {}).get("perm") != t.perm or topics[n]["readQueueNums"] != t.read_queues]
    wrong += [n for n, g in source.groups.items() if (groups.get(n) or {}).get("retryMaxTimes") != g.retry_max_times]
    if len(topics) != N or len(groups) != N or wrong:
        raise AssertionError(f"{seen_by} sees {len(topics)} topics, {len(groups)} groups; differing: {wrong[:5]}")
    print(f"  {seen_by} confirms {N} topics and {N} groups with the planned values", flush=True)


async def _ours(namesrv: str, source: ClusterSnapshot) -> tuple[float, float, PlanResult, int]:
    async with ClusterAdmin(namesrv) as admin:
        with Timer() as plan_timer:
            current = await take_snapshot(admin, include_acl=False)
            plan = make_plan(diff(source, current, Scope()))
        with Timer() as apply_timer:
            result = await apply_plan(plan, admin)
    return plan_timer.seconds, apply_timer.seconds, result, len(plan.actions)


async def _snapshot(namesrv: str) -> ClusterSnapshot:
    async with ClusterAdmin(namesrv) as admin:
        return await take_snapshot(admin, include_acl=False)


def reference(spec: ClusterSpec, source: ClusterSnapshot) -> Timer:
    """mqadmin's batch commands, both at once, with the objects in the files they read (JSON lists);
    a topic's queue counts there are per master, as ``-c`` writes them on each."""
    with tempfile.TemporaryDirectory() as tmp:
        topics, groups = Path(tmp) / "topics.json", Path(tmp) / "groups.json"
        per_master = [{**t.to_wire(for_create=True), "readQueueNums": t.read_queues // spec.masters,
                       "writeQueueNums": t.write_queues // spec.masters} for t in source.topics.values()]
        topics.write_text(json.dumps(per_master))
        groups.write_text(json.dumps([g.to_wire() for g in source.groups.values()]))
        timer = run_parallel([mqadmin_cmd(spec, ["updateTopicList", "-c", spec.name, "-f", str(topics)]),
                              mqadmin_cmd(spec, ["updateSubGroupList", "-c", spec.name, "-f", str(groups)])],
                             watch=broker_pids(spec))
    print(f"  reference: mqadmin updateTopicList -f ({N} topics) and updateSubGroupList -f ({N} groups), both at"
          f" once: {timer.seconds:.2f}s ({timer.child_cpu:.2f} JVM CPU-s, brokers {timer.watched_cpu:.2f} CPU-s)",
          flush=True)
    return timer


def bench_case(spec: ClusterSpec) -> dict[str, Any]:
    source = wanted()
    print(f"\n== apply: {N} topics and {N} groups onto an empty RocketMQ {spec.version} cluster of"
          f" {spec.masters} broker(s)", flush=True)
    load_before = load_average()
    with fresh_cluster(spec) as cluster:
        with Timer(broker_pids(spec)) as total:
            plan_s, apply_s, result, actions = run_async(_ours(cluster.namesrv, source))
        if len(result.applied) != 2 * N or result.unchanged:
            raise AssertionError(f"applied {len(result.applied)}, unchanged {len(result.unchanged)}")
        print(f"  ours: snapshot + diff + plan of {actions} actions {plan_s:.2f}s, apply_plan (read, batch"
              f" create, verifying read) {apply_s:.2f}s; {total.seconds:.2f}s in all with connecting,"
              f" {total.cpu:.2f} CPU-s, brokers {total.watched_cpu:.2f} CPU-s", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            run_mqadmin(spec, ["exportMetadata", "-c", spec.name, "-f", tmp])
            check_landed(source, json.loads((Path(tmp) / "metadata.json").read_text()), "mqadmin exportMetadata")

    with fresh_cluster(spec) as cluster:
        mq = reference(spec, source)
        check_landed(source, asyncio.run(_snapshot(cluster.namesrv)).to_export(), "our snapshot")
    load_after = load_average()

    head = headline(f"apply {N} + {N} creates to an empty RocketMQ {spec.version} cluster, {spec.masters} broker(s)",
                    apply_s, "mqadmin updateTopicList + updateSubGroupList at once", mq.seconds, TARGET_RATIO)
    print(f"  snapshot + diff + plan + apply {total.seconds:.2f}s: {mq.seconds / total.seconds:.1f}x"
          f" (information); load average {load_before} -> {load_after}", flush=True)
    return {
        "brokers": spec.masters, "cluster": spec.name,
        "objects": {"topics": N, "groups": N}, "target_version": spec.version,
        "load_average": {"before": load_before, "after": load_after},
        "ours": {"what": "apply_plan(plan of 10,000 creates) on an empty 5.x cluster", "seconds": round(apply_s, 3),
                 "snapshot_diff_plan_s": round(plan_s, 3), "everything_s": round(total.seconds, 3),
                 "cpu_seconds": round(total.cpu, 3), "broker_cpu_seconds": round(total.watched_cpu, 3),
                 "applied": len(result.applied)},
        "reference": {"what": "mqadmin updateTopicList -f and updateSubGroupList -f, both at once, on an empty"
                              " 5.x cluster", "extrapolated": False,
                      "seconds": round(mq.seconds, 3), "cpu_seconds": round(mq.child_cpu, 3),
                      "broker_cpu_seconds": round(mq.watched_cpu, 3)},
        "headline": head, "ratio": head["ratio"], "ratio_everything": round(mq.seconds / total.seconds, 1),
        "ratio_cpu": round(mq.child_cpu / total.cpu, 1), "targets": {"ratio": TARGET_RATIO}, "met": head["met"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", default="1,2", help="brokers per cluster to run: 1, 2 or 1,2 (default)")
    args = parser.parse_args()
    cases = [bench_case(SPECS[int(b)]) for b in args.brokers.split(",")]
    side_by_side([c["headline"] for c in cases])
    met = all(c["met"] for c in cases)
    write_result("apply", {"cases": cases, "met": met})
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
