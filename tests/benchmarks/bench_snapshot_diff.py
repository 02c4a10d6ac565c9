"""Snapshot and diff of 20,000 topics and 20,000 groups per cluster: ours against mqadmin exportMetadata.

Two private clusters, a 4.9 source and a 5.x target, each pre-seeded through topics.json and
subscriptionGroup.json with 20,000 topics and 20,000 groups. They differ on purpose: per kind 500
objects only on the source, 500 only on the target and 500 with one field changed.

* ours: ``take_snapshot`` of both clusters (concurrently, ACL read as ``rmqctl diff`` does) and
  ``diff``; three runs, median. Also ``rmqctl diff --json`` end to end as a process, once.
* mqadmin: ``exportMetadata -c`` on both clusters (two JVMs at once, and one after the other),
  then both files loaded with ``json`` and compared with plain dict comparisons (keys present in
  both entries; a 4.9 export lacks the 5.x-only ones).

Both sides must find exactly the seeded differences. Targets: at least 10x faster, under 5 s.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import BENCH_SOURCE, BENCH_TARGET, Timer, config_writer, fresh_cluster, load_average, run_mqadmin, \
    run_parallel, verdict, write_result

from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.metadata.diff import MetadataDiff, diff
from rocketmq_core.metadata.snapshot import take_snapshot
from rocketmq_core.model import GroupConfig, TopicConfig
from rocketmq_core.remoting.fastjson import loads
from rocketmq_harness.clusters import classpath

N = 20_000
DIFFER = 500
RUNS = 3
TARGET_RATIO = 10
TARGET_SECONDS = 5.0


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
        snap_s, result, objects = asyncio.run(_ours(source, target))
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


def mqadmin_cmd(spec, out_dir: Path) -> list[str]:
    """The command line harness.mqadmin runs, for starting two at once."""
    from rocketmq_harness.clusters import _HEAPS, _java_opts  # the same JVM flags as harness.mqadmin
    return ["java", *_HEAPS["mqadmin"], *_java_opts(spec, "mqadmin"), "-cp", classpath(spec.version),
            "org.apache.rocketmq.tools.command.MQAdminStartup", "exportMetadata", "-c", spec.name, "-f",
            str(out_dir), "-n", spec.namesrv]


def main() -> int:
    src_topics, src_groups, tgt_topics, tgt_groups = seeded()
    print(f"\n== snapshot + diff: {N} topics and {N} groups on a {BENCH_SOURCE.version} and a"
          f" {BENCH_TARGET.version} cluster", flush=True)
    load_before = load_average()
    with fresh_cluster(BENCH_SOURCE, config_writer(src_topics, src_groups, BENCH_SOURCE.major)) as source, \
            fresh_cluster(BENCH_TARGET, config_writer(tgt_topics, tgt_groups, BENCH_TARGET.major)) as target:
        print("  seeded by topics.json / subscriptionGroup.json written before each broker started", flush=True)
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

        rmqctl = Path(sys.executable).with_name("rmqctl")
        with Timer() as cli:
            done = subprocess.run([str(rmqctl), "diff", "--source", source.namesrv, "--target", target.namesrv,
                                   "--json"], capture_output=True, text=True, timeout=300)
        if done.returncode != 1 or json.loads(done.stdout)["counts"] != EXPECTED:
            raise AssertionError(f"rmqctl diff: exit {done.returncode}\n{done.stdout[:500]}\n{done.stderr[-2000:]}")
        print(f"  rmqctl diff --json as a process (Python start, both snapshots, diff, JSON of"
              f" {sum(counts.values())} changes): {cli.seconds:.2f}s, {cli.child_cpu:.2f} CPU-s", flush=True)

        with tempfile.TemporaryDirectory() as tmp:
            dirs = {s.name: Path(tmp) / s.name for s in (BENCH_SOURCE, BENCH_TARGET)}
            seq = {}
            for spec in (BENCH_SOURCE, BENCH_TARGET):
                seq[spec.name], _ = run_mqadmin(spec, ["exportMetadata", "-c", spec.name, "-f", str(dirs[spec.name])])
            with Timer() as compare:
                tool_counts = plain_diff(load(dirs[BENCH_SOURCE.name] / "metadata.json"),
                                         load(dirs[BENCH_TARGET.name] / "metadata.json"))
            par_dirs = {name: d.with_name(name + "-par") for name, d in dirs.items()}
            parallel = run_parallel([mqadmin_cmd(BENCH_SOURCE, par_dirs[BENCH_SOURCE.name]),
                                     mqadmin_cmd(BENCH_TARGET, par_dirs[BENCH_TARGET.name])])
            again = plain_diff(load(par_dirs[BENCH_SOURCE.name] / "metadata.json"),
                               load(par_dirs[BENCH_TARGET.name] / "metadata.json"))
        if tool_counts != EXPECTED or again != EXPECTED:
            raise AssertionError(f"mqadmin files compared: {tool_counts} / {again}, seeded {EXPECTED}")
        sequential_s = sum(t.seconds for t in seq.values()) + compare.seconds
        parallel_s = parallel.seconds + compare.seconds
        mq_cpu = parallel.child_cpu + compare.cpu
        print(f"  mqadmin exportMetadata: {BENCH_SOURCE.name} {seq[BENCH_SOURCE.name].seconds:.2f}s +"
              f" {BENCH_TARGET.name} {seq[BENCH_TARGET.name].seconds:.2f}s one after the other,"
              f" {parallel.seconds:.2f}s both at once ({parallel.child_cpu:.2f} JVM CPU-s); json load + dict compare"
              f" {compare.seconds:.2f}s; differences {tool_counts} = seeded", flush=True)
    load_after = load_average()

    ratio = parallel_s / ours_s
    ok = ratio >= TARGET_RATIO and ours_s < TARGET_SECONDS
    print(f"  mqadmin {parallel_s:.2f}s (exports at once) / {sequential_s:.2f}s (one after the other) vs ours"
          f" {ours_s:.2f}s: ratio {ratio:.1f}x / {sequential_s / ours_s:.1f}x (target >= {TARGET_RATIO}x),"
          f" ours < {TARGET_SECONDS}s: {verdict(ok)}; CPU seconds {mq_cpu:.2f} vs {ours_cpu:.2f}"
          f" ({mq_cpu / ours_cpu:.1f}x); load average {load_before} -> {load_after} on this shared machine",
          flush=True)
    write_result("snapshot_diff", {
        "objects_per_cluster": {"topics": N, "groups": N}, "seeded_differences": EXPECTED,
        "load_average": {"before": load_before, "after": load_after},
        "ours": {"what": "take_snapshot(source) and take_snapshot(target) concurrently, then diff",
                 "runs_s": [round(t.seconds, 3) for t, _ in runs], "snapshots_s": [round(s, 3) for _, s in runs],
                 "cpu_s": [round(t.cpu, 3) for t, _ in runs], "seconds": round(ours_s, 3),
                 "cpu_seconds": round(ours_cpu, 3), "diff_counts": counts,
                 "rmqctl_diff_process_s": round(cli.seconds, 3)},
        "mqadmin": {"what": "mqadmin exportMetadata -c on both clusters + json load + plain dict comparison",
                    "export_sequential_s": {k: round(v.seconds, 3) for k, v in seq.items()},
                    "export_parallel_s": round(parallel.seconds, 3), "compare_s": round(compare.seconds, 3),
                    "seconds": round(parallel_s, 3), "seconds_sequential": round(sequential_s, 3),
                    "cpu_seconds": round(mq_cpu, 3), "diff_counts": tool_counts, "extrapolated": False},
        "ratio": round(ratio, 1), "ratio_sequential": round(sequential_s / ours_s, 1),
        "ratio_cpu": round(mq_cpu / ours_cpu, 1),
        "targets": {"ratio": TARGET_RATIO, "ours_seconds": TARGET_SECONDS}, "pass": ok,
    })
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
