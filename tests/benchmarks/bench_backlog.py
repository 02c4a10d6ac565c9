"""Backlog of 10,000 consumer groups: measure_backlog against mqadmin consumerProgress.

Per broker version (4.9 and 5.x) and topology (one broker, then two masters), one private
cluster each, one after the other. On two masters each holds half of the groups, their retry
topics and the topics they consume (even indexes on the first, odd on the second): the same
10,000 groups and 40,000 offsets as on one broker, so the figures show how each side scales when
the brokers share the work. (mqadmin finds a group's brokers through its retry topic's route, so a
group's offsets must lie where its retry topic does.)

* seeding: 10 topics of 4 queues, 10,000 groups and their 10,000 %RETRY% topics (as consumers'
  heartbeats would create them; 4.9's consumerProgress fails without one) written into
  topics.json / subscriptionGroup.json before the broker starts; then 20 messages per queue,
  2 retry messages for every 500th group, and committed offsets (40,000 queue offsets plus the
  retry ones) sent over the wire;
* ours: ``measure_backlog`` of all 10,000 groups, three runs after three untimed ones (a fresh
  broker's first answers are slow: ``_common.WARMUP_RUNS``; the reference runs after ours, on
  brokers warmed up by them), each with a fresh connection;
  every group's number is checked against the seeded arithmetic; the brokers' CPU seconds during
  each run are recorded, and one more run goes under cProfile (top contributors printed);
* reference: ONE ``mqadmin consumerProgress`` without ``-g`` (all groups in one JVM, as a user
  who knows the tool would run it), timed in the same run; its Diff Total is checked for every group;
* correctness check: ``consumerProgress -g`` on a sample of groups, rows and Diff Total compared
  with ours. Its per-call time is printed for information only, never extrapolated.

Targets: identical numbers, at least 20x faster than the one all-groups call, under 3 s.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

from _common import BENCH_SOURCE, BENCH_SOURCE_2M, BENCH_TARGET, BENCH_TARGET_2M, WARMUP_RUNS, Timer, broker_pids, \
    fresh_cluster, headline, master_of, profile, run_async, run_mqadmin, seed_split, side_by_side, stats, verdict, \
    write_result

from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.backlog import BacklogReport, measure_backlog
from rocketmq_core.errors import SystemBusy
from rocketmq_core.model import GroupConfig, TopicConfig
from rocketmq_core.remoting.protocol import RequestCode
from rocketmq_harness.clusters import ClusterSpec, parse_consumer_progress

N_GROUPS = 10_000
N_TOPICS = 10
QUEUES = 4
PER_QUEUE = 20
RETRY_EVERY = 500
RETRY_MESSAGES = 2
RUNS = 3
TARGET_RATIO = 20
TARGET_SECONDS = 3.0
BUSY_RETRIES = 20

GROUPS = [f"BENCH_G_{i:05d}" for i in range(N_GROUPS)]
TOPICS = [f"BENCH_T_{i}" for i in range(N_TOPICS)]
#: (broker line, brokers per cluster) -> cluster.
SPECS = {("4", 1): BENCH_SOURCE, ("5", 1): BENCH_TARGET, ("4", 2): BENCH_SOURCE_2M, ("5", 2): BENCH_TARGET_2M}


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
    """n messages, one after the other. On a loaded machine the broker's flow control rejects
    sends that waited too long in its queue (SYSTEM_BUSY, not stored): sent again, as producers do."""
    for _ in range(n):
        for attempt in range(BUSY_RETRIES + 1):
            try:
                await admin.client.invoke(broker, RequestCode.SEND_MESSAGE_V2, {
                    "a": "PG_bench", "b": topic, "c": "TBW102", "d": QUEUES, "e": queue_id, "f": 0,
                    "g": int(time.time() * 1000), "h": 0, "i": "WAIT\x01true\x02", "j": 0, "k": "false",
                    "m": "false"}, body=b"x" * 64)
                break
            except SystemBusy:
                if attempt == BUSY_RETRIES:
                    raise
                await asyncio.sleep(0.2)


async def seed_over_wire(spec: ClusterSpec) -> None:
    addrs = list(spec.master_addrs.values())

    def home(name: str) -> str:
        return addrs[master_of(spec, name)]

    async with ClusterAdmin(spec.namesrv, timeout=30) as admin:
        sends = [_send(admin, home(t), t, q, PER_QUEUE) for t in TOPICS for q in range(QUEUES)]
        sends += [_send(admin, home(g), retry(g), 0, RETRY_MESSAGES) for g in GROUPS[::RETRY_EVERY]]
        await admin.gather(sends)
        deadline = time.monotonic() + 30
        while True:  # the broker dispatches to consume queues asynchronously
            maxes = await admin.gather(admin.max_offset(home(t), t, q) for t in TOPICS for q in range(QUEUES))
            if set(maxes) == {PER_QUEUE}:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"consume queues never reached {PER_QUEUE}: {maxes}")
            await asyncio.sleep(0.2)
        # update_consumer_offsets: concurrent first commits of one (topic, group) race in the broker
        commits = [admin.update_consumer_offsets(home(g), g, topic_of(i), {q: committed(i, q) for q in range(QUEUES)})
                   for i, g in enumerate(GROUPS)]
        commits += [admin.update_consumer_offset(home(g), g, retry(g), 0, 0) for g in GROUPS[::RETRY_EVERY]]
        await admin.gather(commits)


async def _ours(namesrv: str) -> BacklogReport:
    async with ClusterAdmin(namesrv) as admin:
        return await measure_backlog(admin, GROUPS)


def ours(spec: ClusterSpec) -> tuple[Timer, BacklogReport]:
    """One run; the timer also holds the brokers' CPU seconds meanwhile (``watched_cpu``)."""
    with Timer(broker_pids(spec)) as timer:
        report = run_async(_ours(spec.namesrv))
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


def check_sample(spec: ClusterSpec, report: BacklogReport, by_group: dict[str, int], size: int) -> dict[str, Any]:
    """consumerProgress -g on a sample of groups: its rows and Diff Total must equal ours.
    A correctness check; its time per call is information, not a reference."""
    sample = [GROUPS[(k * 997) % N_GROUPS] for k in range(size)]
    ours_rows: dict[str, dict[tuple[str, int], tuple[int, int, int]]] = {}
    for row in report.rows:
        if row.group in sample:
            ours_rows.setdefault(row.group, {})[(row.topic, row.queue_id)] = (
                row.broker_offset, row.consumer_offset, row.lag)
    samples, mismatches = [], []
    for group in sample:
        timer, out = run_mqadmin(spec, ["consumerProgress", "-g", group])
        samples.append(timer.seconds)
        rows, total = parse_progress(out)
        mine = ours_rows[group]
        lagging = {k for k, v in mine.items() if v[2]}
        if any(mine.get(k) != v for k, v in rows.items()) or not lagging <= set(rows) or total != by_group[group]:
            mismatches.append({"group": group, "mqadmin": {f"{t}:{q}": v for (t, q), v in rows.items()},
                               "mqadmin_total": total, "ours_total": by_group[group]})
    print(f"  check: mqadmin consumerProgress -g on {size} sampled groups, rows and Diff Total identical to ours:"
          f" {not mismatches}; {statistics.fmean(samples):.2f}s per call (information only, one JVM per call,"
          f" not extrapolated)", flush=True)
    return {"what": "mqadmin consumerProgress -g GROUP on a sample: rows and Diff Total compared with ours",
            "groups": sample, "seconds_per_call": stats(samples), "mismatches": mismatches}


def reference(spec: ClusterSpec, by_group: dict[str, int]) -> dict[str, Any]:
    """The headline reference: one consumerProgress without -g, all groups in one JVM; Diff Totals checked."""
    timer, out = run_mqadmin(spec, ["consumerProgress"], timeout=1800, watch=broker_pids(spec))
    totals = parse_all_groups(out)
    differ = {g: (t, by_group[g]) for g, t in totals.items() if t != by_group[g]}
    print(f"  reference: mqadmin consumerProgress (no -g, all groups in one JVM): {timer.seconds:.2f}s"
          f" ({timer.child_cpu:.2f} JVM CPU-s, brokers {timer.watched_cpu:.2f} CPU-s) for {len(totals)} groups,"
          f" {len(differ)} Diff Totals differ from ours", flush=True)
    return {"what": "mqadmin consumerProgress without -g: all groups in one JVM, one call",
            "seconds": round(timer.seconds, 3), "cpu_seconds": round(timer.child_cpu, 2),
            "broker_cpu_seconds": round(timer.watched_cpu, 2), "groups_listed": len(totals),
            "groups_differing": len(differ), "differing_sample": dict(list(differ.items())[:5])}


def bench_one(spec: ClusterSpec, sample_size: int) -> dict[str, Any]:
    print(f"\n== {spec.name}: RocketMQ {spec.version}, {N_GROUPS} groups on {spec.masters} broker(s)", flush=True)
    topics = [TopicConfig(t, QUEUES, QUEUES) for t in TOPICS] + [TopicConfig(retry(g), 1, 1) for g in GROUPS]
    with fresh_cluster(spec, seed_split(spec, topics, [GroupConfig(g) for g in GROUPS])):
        with Timer() as wire:
            asyncio.run(seed_over_wire(spec))
        print(f"  seeded {len(topics)} topics and {N_GROUPS} groups by file; messages and"
              f" {N_GROUPS * QUEUES + N_GROUPS // RETRY_EVERY} committed offsets over the wire in {wire.seconds:.1f}s",
              flush=True)

        for _ in range(WARMUP_RUNS):
            ours(spec)
        runs, report = [], None
        for _ in range(RUNS):
            timer, report = ours(spec)
            runs.append(timer)
        assert report is not None
        by_group = report.by_group
        wrong = {g: (by_group[g], expected_lag(i)) for i, g in enumerate(GROUPS) if by_group[g] != expected_lag(i)}
        if wrong:
            raise AssertionError(f"{len(wrong)} groups differ from the seeded arithmetic, e.g. {list(wrong.items())[:5]}")
        ours_s = statistics.median(r.seconds for r in runs)
        ours_cpu = statistics.median(r.cpu for r in runs)
        print(f"  ours: measure_backlog of {N_GROUPS} groups ({report.method}): runs "
              + ", ".join(f"{r.seconds:.2f}s ({r.cpu:.2f} CPU-s, brokers {r.watched_cpu:.2f} CPU-s)" for r in runs)
              + f", median {ours_s:.2f}s; total {report.total} (consumer lag {report.consumer_lag}, pending system"
              f" {report.pending_system}); every group's number equals the seeded arithmetic", flush=True)
        profiled = profile(lambda: ours(spec))

        ref = reference(spec, by_group)
        check = check_sample(spec, report, by_group, sample_size)

    head = headline(f"backlog of {N_GROUPS} groups, RocketMQ {spec.version}, {spec.masters} broker(s)", ours_s,
                    "one mqadmin consumerProgress without -g", ref["seconds"], TARGET_RATIO)
    identical = not check["mismatches"] and not ref["groups_differing"] and ref["groups_listed"] == N_GROUPS
    ok = head["met"] and ours_s < TARGET_SECONDS and identical
    print(f"  ours {ours_s:.2f}s (target < {TARGET_SECONDS:g}s): {verdict(ours_s < TARGET_SECONDS)}; identical"
          f" numbers: {verdict(identical)}", flush=True)
    return {
        "cluster": spec.name, "version": spec.version, "brokers": spec.masters, "groups": N_GROUPS,
        "offsets": N_GROUPS * QUEUES, "seeding": {"over_wire_s": round(wire.seconds, 2)},
        "ours": {"what": "measure_backlog(admin, 10,000 groups)", "method": report.method,
                 "runs_s": [round(r.seconds, 3) for r in runs], "cpu_s": [round(r.cpu, 3) for r in runs],
                 "broker_cpu_s": [round(r.watched_cpu, 3) for r in runs],
                 "seconds": round(ours_s, 3), "cpu_seconds": round(ours_cpu, 3), "total": report.total,
                 "consumer_lag": report.consumer_lag, "pending_system": report.pending_system},
        "profile": profiled, "reference": ref, "sample_check": check, "headline": head,
        "ratio": head["ratio"], "ratio_cpu": round(ref["cpu_seconds"] / ours_cpu, 1),
        "load_average": head["load_average"], "targets": {"ratio": TARGET_RATIO, "ours_seconds": TARGET_SECONDS},
        "identical": identical, "met": ok,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=10, help="groups checked with consumerProgress -g (default 10)")
    parser.add_argument("--versions", default="4,5", help="broker lines to run: 4, 5 or 4,5 (default)")
    parser.add_argument("--brokers", default="1,2", help="brokers per cluster to run: 1, 2 or 1,2 (default)")
    args = parser.parse_args()
    cases = [bench_one(SPECS[(v, int(b))], args.sample)
             for b in args.brokers.split(",") for v in args.versions.split(",")]
    side_by_side([c["headline"] for c in cases])
    met = all(c["met"] for c in cases)
    write_result("backlog", {"cases": cases, "met": met})
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
