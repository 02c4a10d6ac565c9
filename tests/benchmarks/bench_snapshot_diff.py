"""Snapshot and diff of 20,000 topics and 20,000 groups per cluster: ours against mqadmin exportMetadata.

Two private clusters, a 4.9 source and a 5.x target, each pre-seeded through topics.json and
subscriptionGroup.json with 20,000 topics and 20,000 groups. They differ on purpose: per kind 500
objects only on the source, 500 only on the target and 500 with one field changed. Run twice:
with one broker per cluster, then with two masters per cluster, each holding half of the objects
(even indexes on the first, odd on the second, the same on both clusters): the same 40,000
objects per cluster, so the two runs show how each side scales when the brokers share the work.

* ours: ``take_snapshot`` of both clusters (concurrently, ACL read as ``rmqctl diff`` does) and
  ``diff``; three runs after three untimed ones (a fresh broker's first answers are slow:
  ``_common.WARMUP_RUNS``; the reference runs after ours, on brokers warmed up by them), median. Also ``rmqctl diff --json`` end to end as a process, once.
* reference: ``exportMetadata -c`` on both clusters started at once (two JVMs in parallel, as a
  user would), then both files loaded with ``json`` and compared with plain dict comparisons
  (keys present in both entries; a 4.9 export lacks the 5.x-only ones); measured in the same run.
* floor: the raw requests ours waits for (GET_ALL_TOPIC_CONFIG and GET_ALL_SUBSCRIPTIONGROUP_CONFIG
  on every master) at once, bodies left unparsed: the brokers' own time to serialise their
  tables, which neither side can beat.
* profile: one more run of ours under cProfile, its top contributors by own time.

Both sides must find exactly the seeded differences. Targets: at least 10x faster, under 5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import BENCH_SOURCE, BENCH_SOURCE_2M, BENCH_TARGET, BENCH_TARGET_2M, WARMUP_RUNS, Timer, fresh_cluster, \
    headline, load_average, mqadmin_cmd, profile, run_async, run_parallel, seed_split, side_by_side, verdict, \
    write_result

from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.metadata.diff import MetadataDiff, diff
from rocketmq_core.metadata.snapshot import take_snapshot
from rocketmq_core.model import GroupConfig, TopicConfig
from rocketmq_core.remoting.client import RemotingClient
from rocketmq_core.remoting.fastjson import loads
from rocketmq_core.remoting.protocol import RequestCode
from rocketmq_harness.clusters import ClusterSpec

N = 20_000
DIFFER = 500
RUNS = 3
TARGET_RATIO = 10
TARGET_SECONDS = 5.0
#: Brokers per cluster -> (source, target).
TOPOLOGIES = {1: (BENCH_SOURCE, BENCH_TARGET), 2: (BENCH_SOURCE_2M, BENCH_TARGET_2M)}
TABLES = (RequestCode.GET_ALL_TOPIC_CONFIG, RequestCode.GET_ALL_SUBSCRIPTIONGROUP_CONFIG)


def seeded() -> tuple[list[TopicConfig], list[GroupConfig], list[TopicConfig], list[GroupConfig]]:
    """(source topics, source groups, target topics, target groups)."""
    src_topics = [TopicConfig(f"BENCH_T_{i:05d}", 8, 8) for i in range(N)]
    src_groups = [GroupConfig(f"BENCH_G_{i:05d}") for i in range(N)]
    step = (N - DIFFER) // DIFFER  # every 39th of the shared ones changed: 500
    tgt_topics = [TopicConfig(t.name, 8, 8, perm=4) if i % step == 0 else t
                  for i, t in enumerate(src_topics[:N - DIFFER])]        # the last 500 only on the source
    tgt_topics += [TopicConfig(f"BENCH_T_X_{i:05d}", 8, 8) for i in range(DIFFER)]  # 500 only on the target
    tgt_groups = [GroupConfig(g.name, retry_max_times=3) if i % step == 0 else g
                  for i, g in enumerate(src_groups[:N - DIFFER])]
    tgt_groups += [GroupConfig(f"BENCH_G_X_{i:05d}") for i in range(DIFFER)]
    return src_topics, src_groups, tgt_topics, tgt_groups


EXPECTED = {"create": 2 * DIFFER, "update": 2 * DIFFER, "delete": 2 * DIFFER}
assert sum(t.perm == 4 for t in seeded()[2]) == DIFFER


async def _ours(source: str, target: str) -> tuple[float, MetadataDiff, int]:
    async with ClusterAdmin(source) as src, ClusterAdmin(target) as tgt:
        with Timer() as snap:
            a, b = await asyncio.gather(take_snapshot(src), take_snapshot(tgt))
    result = diff(a, b)
    return snap.seconds, result, len(a.topics) + len(a.groups) + len(b.topics) + len(b.groups)


def ours(source: str, target: str) -> tuple[Timer, float, MetadataDiff, int]:
    with Timer() as total:
        snap_s, result, objects = run_async(_ours(source, target))
    return total, snap_s, result, objects


def load(path: Path) -> dict:
    text = path.read_text()
    try:
        return json.loads(text)
    except ValueError:  # a fastjson quirk: fall back to the tolerant parser
        return loads(text)


def plain_diff(a: dict, b: dict) -> dict[str, int]:
    """Plain dict comparison of two exportMetadata documents, over the benchmark's objects."""
    counts = {"create": 0, "update": 0, "delete": 0}
    for table in ("topicConfigTable", "subscriptionGroupTable"):
        src = {n: w for n, w in a[table].items() if n.startswith("BENCH_")}
        tgt = {n: w for n, w in b[table].items() if n.startswith("BENCH_")}
        counts["create"] += len(src.keys() - tgt.keys())
        counts["delete"] += len(tgt.keys() - src.keys())
        for name in src.keys() & tgt.keys():
            common = src[name].keys() & tgt[name].keys()
            if {k: src[name][k] for k in common} != {k: tgt[name][k] for k in common}:
                counts["update"] += 1
    return counts


def check(result: MetadataDiff) -> None:
    """Exactly the seeded differences, object by object."""
    src_topics, src_groups, tgt_topics, tgt_groups = seeded()
    src = {t.name for t in src_topics} | {g.name for g in src_groups}
    tgt = {t.name for t in tgt_topics} | {g.name for g in tgt_groups}
    changed = {t.name for t in tgt_topics if t.perm == 4} | {g.name for g in tgt_groups if g.retry_max_times == 3}
    found = {a: {c.name for c in result.of(a)} for a in ("create", "update", "delete")}
    expected = {"create": src - tgt, "update": changed, "delete": tgt - src}
    for action, names in expected.items():
        if found[action] != names:
            wrong = sorted(found[action] ^ names)
            details = [(c.name, [f.to_dict() for f in c.fields]) for c in result.changes if c.name in wrong[:5]]
            raise AssertionError(f"{action}: {len(found[action])} found, {len(names)} seeded; differing names"
                                 f" {wrong[:10]} ({len(wrong)}); {details}")


async def _raw_tables(specs: tuple[ClusterSpec, ...]) -> tuple[float, dict[str, tuple[float, int]]]:
    async with RemotingClient(timeout=30) as client:
        async def one(addr: str, code: RequestCode) -> tuple[float, int]:
            started = time.perf_counter()
            response = await client.invoke(addr, code)
            return time.perf_counter() - started, len(response.body)

        jobs = {f"{broker} {code.name}": one(addr, code)
                for s in specs for broker, addr in s.master_addrs.items() for code in TABLES}
        with Timer() as timer:
            results = await asyncio.gather(*jobs.values())
    return timer.seconds, dict(zip(jobs, results))


def floor(specs: tuple[ClusterSpec, ...]) -> dict[str, Any]:
    """The brokers' own time to serialise their tables: the raw requests ours sends, all at once,
    bodies not parsed (only the small frame header is). Ours cannot be faster than this."""
    runs = [asyncio.run(_raw_tables(specs)) for _ in range(RUNS)]
    seconds = round(statistics.median(total for total, _ in runs), 3)
    per_request = {k: (round(statistics.median(r[k][0] for _, r in runs), 3), r_bytes)
                   for k, (_, r_bytes) in runs[0][1].items()}
    print(f"  floor: the {len(runs[0][1])} raw table requests at once, unparsed: runs " + ", ".join(f"{t:.2f}s" for t, _ in runs)
          + f", median {seconds:.2f}s; per request (median s, body bytes): "
          + "; ".join(f"{k} {t:.2f}s {n / 1e6:.1f} MB" for k, (t, n) in per_request.items()), flush=True)
    return {"what": "GET_ALL_TOPIC_CONFIG + GET_ALL_SUBSCRIPTIONGROUP_CONFIG on every master at once, raw",
            "runs_s": [round(t, 3) for t, _ in runs], "seconds": seconds,
            "per_request_s_bytes": per_request}


def reference(specs: tuple[ClusterSpec, ClusterSpec]) -> tuple[Timer, Timer]:
    """Both exportMetadata runs started at once, then json load + dict compare; (exports, compare)."""
    with tempfile.TemporaryDirectory() as tmp:
        dirs = [Path(tmp) / s.name for s in specs]
        exports = run_parallel([mqadmin_cmd(s, ["exportMetadata", "-c", s.name, "-f", str(d)])
                                for s, d in zip(specs, dirs)])
        with Timer() as compare:
            counts = plain_diff(*(load(d / "metadata.json") for d in dirs))
    if counts != EXPECTED:
        raise AssertionError(f"mqadmin files compared: {counts}, seeded {EXPECTED}")
    print(f"  reference: mqadmin exportMetadata on both clusters at once {exports.seconds:.2f}s"
          f" ({exports.child_cpu:.2f} JVM CPU-s), json load + dict compare {compare.seconds:.2f}s; differences"
          f" {counts} = seeded", flush=True)
    return exports, compare


def bench_case(brokers: int) -> dict[str, Any]:
    src_spec, tgt_spec = TOPOLOGIES[brokers]
    src_topics, src_groups, tgt_topics, tgt_groups = seeded()
    print(f"\n== snapshot + diff: {N} topics and {N} groups on a {src_spec.version} and a {tgt_spec.version}"
          f" cluster of {brokers} broker(s) each", flush=True)
    load_before = load_average()
    with fresh_cluster(src_spec, seed_split(src_spec, src_topics, src_groups)) as source, \
            fresh_cluster(tgt_spec, seed_split(tgt_spec, tgt_topics, tgt_groups)) as target:
        print("  seeded by topics.json / subscriptionGroup.json written before each broker started"
              + (", each master its half" if brokers > 1 else ""), flush=True)
        for _ in range(WARMUP_RUNS):
            ours(source.namesrv, target.namesrv)
        runs, result, objects = [], None, 0
        for _ in range(RUNS):
            timer, snap_s, result, objects = ours(source.namesrv, target.namesrv)
            runs.append((timer, snap_s))
            check(result)
        assert result is not None
        counts = result.counts()
        ours_s = statistics.median(t.seconds for t, _ in runs)
        ours_cpu = statistics.median(t.cpu for t, _ in runs)
        print(f"  ours: take_snapshot x2 + diff of {objects} objects: runs "
              + ", ".join(f"{t.seconds:.2f}s (snapshots {s:.2f}s, {t.cpu:.2f} CPU-s)" for t, s in runs)
              + f", median {ours_s:.2f}s; diff {counts} = seeded", flush=True)

        exports, compare = reference((src_spec, tgt_spec))
        raw = floor((src_spec, tgt_spec))
        profiled = profile(lambda: ours(source.namesrv, target.namesrv))

        rmqctl = Path(sys.executable).with_name("rmqctl")
        with Timer() as cli:
            done = subprocess.run([str(rmqctl), "diff", "--source", source.namesrv, "--target", target.namesrv,
                                   "--json"], capture_output=True, text=True, timeout=300)
        if done.returncode != 1 or json.loads(done.stdout)["counts"] != EXPECTED:
            raise AssertionError(f"rmqctl diff: exit {done.returncode}\n{done.stdout[:500]}\n{done.stderr[-2000:]}")
        print(f"  rmqctl diff --json as a process (Python start, both snapshots, diff, JSON of"
              f" {sum(counts.values())} changes): {cli.seconds:.2f}s, {cli.child_cpu:.2f} CPU-s", flush=True)
    load_after = load_average()

    mq_s = exports.seconds + compare.seconds
    mq_cpu = exports.child_cpu + compare.cpu
    head = headline(f"snapshot + diff of {N} + {N} objects per cluster, {brokers} broker(s) per cluster", ours_s,
                    "both mqadmin exportMetadata at once + json load + dict compare", mq_s, TARGET_RATIO)
    ok = head["met"] and ours_s < TARGET_SECONDS
    print(f"  ours {ours_s:.2f}s (target < {TARGET_SECONDS:g}s): {verdict(ours_s < TARGET_SECONDS)}; floor (brokers"
          f" serialising, unparsed) {raw['seconds']:.2f}s, ours above it {ours_s - raw['seconds']:.2f}s;"
          f" CPU seconds {mq_cpu:.2f} vs ours {ours_cpu:.2f}; load average {load_before} -> {load_after}", flush=True)
    return {
        "brokers_per_cluster": brokers, "clusters": [src_spec.name, tgt_spec.name],
        "objects_per_cluster": {"topics": N, "groups": N}, "seeded_differences": EXPECTED,
        "load_average": {"before": load_before, "after": load_after},
        "ours": {"what": "take_snapshot(source) and take_snapshot(target) concurrently, then diff",
                 "runs_s": [round(t.seconds, 3) for t, _ in runs], "snapshots_s": [round(s, 3) for _, s in runs],
                 "cpu_s": [round(t.cpu, 3) for t, _ in runs], "seconds": round(ours_s, 3),
                 "cpu_seconds": round(ours_cpu, 3), "diff_counts": counts,
                 "rmqctl_diff_process_s": round(cli.seconds, 3)},
        "reference": {"what": "mqadmin exportMetadata -c on both clusters at once + json load + plain dict comparison",
                      "exports_at_once_s": round(exports.seconds, 3), "compare_s": round(compare.seconds, 3),
                      "seconds": round(mq_s, 3), "cpu_seconds": round(mq_cpu, 3), "extrapolated": False},
        "floor": raw, "profile": profiled, "headline": head,
        "ratio": head["ratio"], "ratio_cpu": round(mq_cpu / ours_cpu, 1),
        "targets": {"ratio": TARGET_RATIO, "ours_seconds": TARGET_SECONDS}, "met": ok,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", default="1,2", help="brokers per cluster to run: 1, 2 or 1,2 (default)")
    args = parser.parse_args()
    cases = [bench_case(int(b)) for b in args.brokers.split(",")]
    side_by_side([c["headline"] for c in cases])
    met = all(c["met"] for c in cases)
    write_result("snapshot_diff", {"cases": cases, "met": met})
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
