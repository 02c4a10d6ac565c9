"""Backlog of 10,000 consumer groups on one broker: measure_backlog against mqadmin consumerProgress.

Per broker version (4.9 and 5.x, one private cluster each, one after the other):

* seeding: 10 topics of 4 queues, 10,000 groups and their 10,000 %RETRY% topics (as consumers'
  heartbeats would create them; 4.9's consumerProgress fails without one) written into
  topics.json / subscriptionGroup.json before the broker starts; then 20 messages per queue,
  2 retry messages for every 500th group, and committed offsets (40,000 queue offsets plus the
  retry ones) sent over the wire;
* ours: ``measure_backlog`` of all 10,000 groups, three runs, each with a fresh connection;
  every group's number is checked against the seeded arithmetic;
* mqadmin: ``consumerProgress -g`` for a sample of groups, timed call by call and extrapolated to
  10,000 calls (one JVM each, as a shell loop would); its rows and Diff Total are checked against
  ours for every sampled group. For reference also one ``consumerProgress`` without ``-g`` (all
  groups in one JVM, totals only), whose per-group Diff Total is checked for every group.

Targets: identical numbers, at least 20x faster than mqadmin, under 3 s.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

from _common import BENCH_SOURCE, BENCH_TARGET, Timer, config_writer, fresh_cluster, load_average, run_mqadmin, \
    stats, verdict, write_result

from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.backlog import BacklogReport, measure_backlog
from rocketmq_core.model import GroupConfig, TopicConfig
from rocketmq_core.remoting.protocol import RequestCode
from rocketmq_harness.clusters import parse_consumer_progress

N_GROUPS = 10_000
N_TOPICS = 10
QUEUES = 4
PER_QUEUE = 20
RETRY_EVERY = 500
RETRY_MESSAGES = 2
RUNS = 3
TARGET_RATIO = 20
TARGET_SECONDS = 3.0

GROUPS = [f"BENCH_G_{i:05d}" for i in range(N_GROUPS)]
TOPICS = [f"BENCH_T_{i}" for i in range(N_TOPICS)]


def retry(group: str) -> str:
    return f"%RETRY%{group}"


def topic_of(index: int) -> str:
    return TOPICS[index % N_TOPICS]


def committed(index: int, queue_id: int) -> int:
    return (index + 3 * queue_id) % (PER_QUEUE + 1)


def expected_lag(index: int) -> int:
    lag = sum(PER_QUEUE - committed(index, q) for q in range(QUEUES))
    return lag + (RETRY_MESSAGES if index % RETRY_EVERY == 0 else 0)


async def _send(admin: ClusterAdmin, broker: str, topic: str, queue_id: int, n: int) -> None:
    for i in range(n):
        await admin.client.invoke(broker, RequestCode.SEND_MESSAGE_V2, {
            "a": "PG_bench", "b": topic, "c": "TBW102", "d": QUEUES, "e": queue_id, "f": 0,
            "g": int(time.time() * 1000), "h": 0, "i": "WAIT\x01true\x02", "j": 0, "k": "false", "m": "false"},
            body=b"x" * 64)


async def seed_over_wire(namesrv: str, broker: str) -> None:
    async with ClusterAdmin(namesrv, timeout=30) as admin:
        sends = [_send(admin, broker, t, q, PER_QUEUE) for t in TOPICS for q in range(QUEUES)]
        sends += [_send(admin, broker, retry(g), 0, RETRY_MESSAGES) for g in GROUPS[::RETRY_EVERY]]
        await admin.gather(sends)
        deadline = time.monotonic() + 30
        while True:  # the broker dispatches to consume queues asynchronously
            maxes = await admin.gather(admin.max_offset(broker, t, q) for t in TOPICS for q in range(QUEUES))
            if set(maxes) == {PER_QUEUE}:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"consume queues never reached {PER_QUEUE}: {maxes}")
            await asyncio.sleep(0.2)
        # update_consumer_offsets: concurrent first commits of one (topic, group) race in the broker
        commits = [admin.update_consumer_offsets(broker, g, topic_of(i), {q: committed(i, q) for q in range(QUEUES)})
                   for i, g in enumerate(GROUPS)]
        commits += [admin.update_consumer_offset(broker, g, retry(g), 0, 0) for g in GROUPS[::RETRY_EVERY]]
        await admin.gather(commits)


async def _ours(namesrv: str) -> BacklogReport:
    async with ClusterAdmin(namesrv) as admin:
        return await measure_backlog(admin, GROUPS)


def ours(namesrv: str) -> tuple[Timer, BacklogReport]:
    with Timer() as timer:
        report = asyncio.run(_ours(namesrv))
    return timer, report


def parse_progress(out: str) -> tuple[dict[tuple[str, int], tuple[int, int, int]], int]:
    rows, total = parse_consumer_progress(out)
    return {(topic, queue): v for (topic, _, queue), v in rows.items()}, total


def parse_all_groups(out: str) -> dict[str, int]:
    """Group -> Diff Total from consumerProgress without -g (its last column)."""
    totals = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0].startswith("BENCH_G_") and parts[-1].lstrip("-").isdigit():
            totals[parts[0]] = int(parts[-1])
    return totals


def bench_one(spec, sample_size: int, all_groups: bool) -> dict:
    print(f"\n== {spec.name}: RocketMQ {spec.version}, {N_GROUPS} groups on one broker", flush=True)
    topics = [TopicConfig(t, QUEUES, QUEUES) for t in TOPICS] + [TopicConfig(retry(g), 1, 1) for g in GROUPS]
    with Timer() as seed_files:
        seed = config_writer(topics, [GroupConfig(g) for g in GROUPS], spec.major)
    with fresh_cluster(spec, seed) as cluster:
        with Timer() as wire:
            asyncio.run(seed_over_wire(cluster.namesrv, cluster.broker))
        print(f"  seeded {len(topics)} topics and {N_GROUPS} groups by file; messages and"
              f" {N_GROUPS * QUEUES + N_GROUPS // RETRY_EVERY} committed offsets over the wire in {wire.seconds:.1f}s",
              flush=True)

        runs, report = [], None
        for _ in range(RUNS):
            timer, report = ours(cluster.namesrv)
            runs.append(timer)
        assert report is not None
        wrong = {g: (n, expected_lag(i)) for i, g in enumerate(GROUPS)
                 if (n := report.by_group[g]) != expected_lag(i)}
        if wrong:
            raise AssertionError(f"{len(wrong)} groups differ from the seeded arithmetic, e.g. {list(wrong.items())[:5]}")
        ours_s = statistics.median(r.seconds for r in runs)
        ours_cpu = statistics.median(r.cpu for r in runs)
        print(f"  ours: measure_backlog of {N_GROUPS} groups ({report.method}): runs "
              + ", ".join(f"{r.seconds:.2f}s ({r.cpu:.2f} CPU-s)" for r in runs) + f", median {ours_s:.2f}s; total {report.total}"
              f" (consumer lag {report.consumer_lag}, pending system {report.pending_system}); every group's"
              " number equals the seeded arithmetic", flush=True)

        sample = [GROUPS[(k * 997) % N_GROUPS] for k in range(sample_size)]
        samples, cpu_samples, mismatches = [], [], []
        ours_rows = {}
        for row in report.rows:
            if row.group in sample:
                ours_rows.setdefault(row.group, {})[(row.topic, row.queue_id)] = (
                    row.broker_offset, row.consumer_offset, row.lag)
        for group in sample:
            timer, out = run_mqadmin(spec, ["consumerProgress", "-g", group])
            samples.append(timer.seconds)
            cpu_samples.append(timer.child_cpu)
            rows, total = parse_progress(out)
            mine = ours_rows[group]
            lagging = {k for k, v in mine.items() if v[2]}
            if any(mine.get(k) != v for k, v in rows.items()) or not lagging <= set(rows) \
                    or total != report.by_group[group]:
                mismatches.append({"group": group, "mqadmin": {f"{t}:{q}": v for (t, q), v in rows.items()},
                                   "mqadmin_total": total, "ours_total": report.by_group[group]})
        per_call = statistics.fmean(samples)
        mq_s = per_call * N_GROUPS
        mq_cpu = statistics.fmean(cpu_samples) * N_GROUPS
        ratio = mq_s / ours_s
        print(f"  mqadmin consumerProgress -g: {sample_size} of {N_GROUPS} groups timed, one JVM per call:"
              f" {per_call:.2f}s ({statistics.fmean(cpu_samples):.2f} JVM CPU-s) per call; EXTRAPOLATED to"
              f" {N_GROUPS} calls = {mq_s:.0f}s; numbers identical on the sample: {not mismatches}", flush=True)

        everything = None
        if all_groups:
            timer, out = run_mqadmin(spec, ["consumerProgress"], timeout=1800)
            took = timer.seconds
            totals = parse_all_groups(out)
            differ = {g: (t, report.by_group[g]) for g, t in totals.items() if t != report.by_group[g]}
            everything = {"seconds": round(took, 2), "cpu_seconds": round(timer.child_cpu, 2), "groups_listed": len(totals), "groups_differing": len(differ),
                          "ratio": round(took / ours_s, 1), "differing_sample": dict(list(differ.items())[:5])}
            print(f"  mqadmin consumerProgress (no -g, all groups in one JVM, totals only): {took:.1f}s for"
                  f" {len(totals)} groups, {len(differ)} Diff Totals differ from ours; ours is"
                  f" {took / ours_s:.0f}x faster than that too", flush=True)

    ok = not mismatches and ratio >= TARGET_RATIO and ours_s < TARGET_SECONDS
    print(f"  ratio {ratio:.0f}x (target >= {TARGET_RATIO}x), ours {ours_s:.2f}s (target < {TARGET_SECONDS}s):"
          f" {verdict(ok)}; load average {load_average()} on this shared machine", flush=True)
    return {
        "cluster": spec.name, "version": spec.version, "groups": N_GROUPS, "offsets": N_GROUPS * QUEUES,
        "seeding": {"by_file_s": round(seed_files.seconds, 2), "over_wire_s": round(wire.seconds, 2)},
        "ours": {"what": "measure_backlog(admin, 10,000 groups)", "method": report.method,
                 "runs_s": [round(r.seconds, 3) for r in runs], "cpu_s": [round(r.cpu, 3) for r in runs],
                 "seconds": round(ours_s, 3), "cpu_seconds": round(ours_cpu, 3), "total": report.total,
                 "consumer_lag": report.consumer_lag, "pending_system": report.pending_system},
        "mqadmin": {"what": "mqadmin consumerProgress -g GROUP, one call per group", "extrapolated": True,
                    "sample": stats(samples), "sample_groups": sample, "seconds_per_call": round(per_call, 3),
                    "seconds": round(mq_s, 1), "cpu_seconds": round(mq_cpu, 1), "mismatches": mismatches},
        "mqadmin_all_groups_one_call": everything,
        "ratio": round(ratio, 1), "ratio_cpu": round(mq_cpu / ours_cpu, 1), "load_average": load_average(),
        "targets": {"ratio": TARGET_RATIO, "ours_seconds": TARGET_SECONDS},
        "identical_on_sample": not mismatches, "pass": ok,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=10, help="mqadmin calls timed per broker (default 10)")
    parser.add_argument("--versions", default="4,5", help="broker lines to run: 4, 5 or 4,5 (default)")
    parser.add_argument("--no-all-groups", action="store_true", help="skip mqadmin consumerProgress without -g")
    args = parser.parse_args()
    specs = {"4": BENCH_SOURCE, "5": BENCH_TARGET}
    cases = [bench_one(specs[v], args.sample, not args.no_all_groups) for v in args.versions.split(",")]
    write_result("backlog", {"cases": cases, "pass": all(c["pass"] for c in cases)})
    return 0 if all(c["pass"] for c in cases) else 1


if __name__ == "__main__":
    sys.exit(main())
