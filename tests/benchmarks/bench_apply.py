"""Applying a plan of 5,000 topics and 5,000 groups to an empty 5.x cluster: apply_plan against mqadmin.

* ours: the plan is made from a 4.9-style exportMetadata document (the migration's direction)
  against a fresh, empty 5.x cluster, then ``apply_plan`` runs it: a read of the target,
  batch creates (UPDATE_AND_CREATE_TOPIC_LIST / SUBSCRIPTIONGROUP_LIST), and a fresh read that
  must show every object. Timed: apply_plan alone, and snapshot + diff + plan + apply.
* mqadmin: one ``updateTopic`` / ``updateSubGroup`` per object, as a script around the reference
  tool would do. A sample of calls (default 10 of each) is timed and extrapolated to 5,000 + 5,000
  calls. The sample's objects get names of their own, created after ours on the same cluster.

Both sides' objects are checked on the cluster: ours with ``mqadmin exportMetadata``, mqadmin's
with our snapshot. Target: at least 20x faster.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path

from _common import BENCH_TARGET, Timer, fresh_cluster, load_average, run_mqadmin, stats, verdict, write_result

from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.metadata.apply import PlanResult, apply_plan
from rocketmq_core.metadata.diff import diff
from rocketmq_core.metadata.plan import make_plan
from rocketmq_core.metadata.scope import Scope
from rocketmq_core.metadata.snapshot import ClusterSnapshot, take_snapshot
from rocketmq_core.model import GroupConfig, TopicConfig

N = 5_000
TARGET_RATIO = 20


def wanted() -> ClusterSnapshot:
    """What a 4.9 source exported: 5,000 topics of 4 queues and 5,000 groups, one in 7 changed from defaults."""
    topics = {f"BENCH_AT_{i:04d}": TopicConfig(f"BENCH_AT_{i:04d}", 4, 4, perm=4 if i % 7 == 0 else 6)
              for i in range(N)}
    groups = {f"BENCH_AG_{i:04d}": GroupConfig(f"BENCH_AG_{i:04d}", retry_max_times=5 if i % 7 == 0 else 16)
              for i in range(N)}
    export = ClusterSnapshot(topics=topics, groups=groups, v5=False).to_export()
    return ClusterSnapshot.from_export(json.dumps(export))


async def _ours(namesrv: str, source: ClusterSnapshot) -> tuple[float, float, PlanResult, int]:
    async with ClusterAdmin(namesrv) as admin:
        with Timer() as plan_timer:
            current = await take_snapshot(admin, include_acl=False)
            plan = make_plan(diff(source, current, Scope()))
        with Timer() as apply_timer:
            result = await apply_plan(plan, admin)
    return plan_timer.seconds, apply_timer.seconds, result, len(plan.actions)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=10, help="mqadmin calls timed per kind (default 10)")
    args = parser.parse_args()
    spec = BENCH_TARGET
    source = wanted()
    print(f"\n== apply: {N} topics and {N} groups onto an empty RocketMQ {spec.version} cluster", flush=True)
    load_before = load_average()
    with fresh_cluster(spec) as cluster:
        with Timer() as total:
            plan_s, apply_s, result, actions = asyncio.run(_ours(cluster.namesrv, source))
        if len(result.applied) != 2 * N or result.unchanged:
            raise AssertionError(f"applied {len(result.applied)}, unchanged {len(result.unchanged)}")
        print(f"  ours: snapshot + diff + plan of {actions} actions {plan_s:.2f}s, apply_plan (read, batch"
              f" create, verifying read) {apply_s:.2f}s; {total.seconds:.2f}s in all with connecting,"
              f" {total.cpu:.2f} CPU-s", flush=True)

        with tempfile.TemporaryDirectory() as tmp:
            run_mqadmin(spec, ["exportMetadata", "-c", spec.name, "-f", tmp])
            doc = json.loads((Path(tmp) / "metadata.json").read_text())
        seen_topics = {n: w for n, w in doc["topicConfigTable"].items() if n.startswith("BENCH_AT_")}
        seen_groups = {n: w for n, w in doc["subscriptionGroupTable"].items() if n.startswith("BENCH_AG_")}
        wrong = [n for n, t in source.topics.items()
                 if (seen_topics.get(n) or {}).get("perm") != t.perm or seen_topics[n]["readQueueNums"] != 4]
        wrong += [n for n, g in source.groups.items() if (seen_groups.get(n) or {}).get("retryMaxTimes") != g.retry_max_times]
        if len(seen_topics) != N or len(seen_groups) != N or wrong:
            raise AssertionError(f"mqadmin exportMetadata sees {len(seen_topics)} topics, {len(seen_groups)} groups;"
                                 f" differing: {wrong[:5]}")
        print(f"  mqadmin exportMetadata confirms {N} topics and {N} groups with the planned values", flush=True)

        topic_calls, group_calls = [], []
        for i in range(args.sample):
            timer, _ = run_mqadmin(spec, ["updateTopic", "-c", spec.name, "-t", f"BENCH_MQ_T_{i:04d}",
                                          "-r", "4", "-w", "4", "-p", "6"])
            topic_calls.append(timer)
            timer, _ = run_mqadmin(spec, ["updateSubGroup", "-c", spec.name, "-g", f"BENCH_MQ_G_{i:04d}"])
            group_calls.append(timer)

        async def look():
            async with ClusterAdmin(cluster.namesrv) as admin:
                return await take_snapshot(admin, include_acl=False)
        snap = asyncio.run(look())
        landed = sum(f"BENCH_MQ_T_{i:04d}" in snap.topics for i in range(args.sample)) + \
            sum(f"BENCH_MQ_G_{i:04d}" in snap.groups for i in range(args.sample))
        if landed != 2 * args.sample:
            raise AssertionError(f"only {landed} of mqadmin's {2 * args.sample} objects are on the cluster")
        topic_call = statistics.fmean(t.seconds for t in topic_calls)
        group_call = statistics.fmean(t.seconds for t in group_calls)
        mq_s = N * topic_call + N * group_call
        mq_cpu = N * statistics.fmean(t.child_cpu for t in topic_calls) + \
            N * statistics.fmean(t.child_cpu for t in group_calls)
        print(f"  mqadmin: {args.sample} updateTopic calls timed ({topic_call:.2f}s each) and {args.sample}"
              f" updateSubGroup calls ({group_call:.2f}s each), one JVM per call; EXTRAPOLATED to {N} + {N}"
              f" calls = {mq_s:.0f}s; all {2 * args.sample} sampled objects on the cluster", flush=True)
    load_after = load_average()

    ratio = mq_s / apply_s
    ok = ratio >= TARGET_RATIO
    print(f"  ratio {ratio:.0f}x against apply_plan, {mq_s / total.seconds:.0f}x against everything"
          f" (target >= {TARGET_RATIO}x): {verdict(ok)}; load average {load_before} -> {load_after}"
          f" on this shared machine", flush=True)
    write_result("apply", {
        "objects": {"topics": N, "groups": N}, "target_version": spec.version,
        "load_average": {"before": load_before, "after": load_after},
        "ours": {"what": "apply_plan(plan of 10,000 creates) on an empty 5.x cluster", "seconds": round(apply_s, 3),
                 "snapshot_diff_plan_s": round(plan_s, 3), "everything_s": round(total.seconds, 3),
                 "cpu_seconds": round(total.cpu, 3), "applied": len(result.applied)},
        "mqadmin": {"what": "one mqadmin updateTopic / updateSubGroup per object", "extrapolated": True,
                    "update_topic_sample": stats([t.seconds for t in topic_calls]),
                    "update_sub_group_sample": stats([t.seconds for t in group_calls]),
                    "seconds": round(mq_s, 1), "cpu_seconds": round(mq_cpu, 1)},
        "ratio": round(ratio, 1), "ratio_everything": round(mq_s / total.seconds, 1),
        "ratio_cpu": round(mq_cpu / total.cpu, 1),
        "targets": {"ratio": TARGET_RATIO}, "pass": ok,
    })
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
