"""Replication throughput and delay: one worker process against the source broker's ingest limit,
measured with the official Java producer, on one broker and on two masters per cluster.

Per topology, on two private clusters (4.9 source, 5.x target; one broker each, then two masters
each), stopped and removed afterwards (the ingest runs leave gigabytes in the store). Topics have
QUEUES queues on every master of both clusters.

1. ingest limit, the reference: the official Java producer (rocketmq-client 4.9.7,
   tests/benchmarks/java/LoadProducer.java: one JVM, several threads sharing one producer) sends
   1 KiB messages to a topic of its own, as fast as the brokers answer, once per (threads,
   messages per request) of INGEST: one message per request, then batches (``send(Collection)``,
   which the broker stores as separate messages). Each run warms up for a second, then counts for
   --ingest-seconds. The best rate is the source's ingest limit on this machine, the producer's
   own CPU included, as a replication worker's is.
2. throughput: the producer, at that best setting, leaves a backlog of about --backlog messages
   in the replicated topic; one worker (``python -m rocketmq_core.replication.worker``, default
   settings: batched sends) replicates it from the earliest offset; its rate is read from its own
   stats file between 10% and 90% of the backlog (start-up and tail excluded). Target: at least
   half the ingest limit. For information, a worker with ``tuning.batch = false`` (one
   SEND_MESSAGE_V2 per message) does the same over part of the backlog.
3. delay: the producer, paced at --delay-rate (5,000/s: PACED_THREADS threads, one message per
   request), sends for --delay-seconds into the caught-up worker; each message's delay is its
   store time on the target minus its store time on the source, both read back from the brokers
   afterwards (same clock). Target: p99 under 1 s. The achieved rate is reported; where the rate
   is not reached, that is said.

The machine is shared: the load average at start and end of each topology goes into the result.
Prints the figures and writes bench-results/replication.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import BENCH_REPL_SOURCE, BENCH_REPL_TARGET, BENCH_SOURCE_2M, BENCH_TARGET_2M, Timer, broker_pids, \
    fresh_cluster, load_average, process_cpu, report_profile, verdict, write_result

from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.errors import RocketMQError
from rocketmq_core.model import TopicConfig
from rocketmq_core.procutil import read_json
from rocketmq_core.replication import remote
from rocketmq_harness.clusters import SOURCE_VERSION, TARGET_VERSION, ClusterSpec, RunningCluster

TOPIC = "BENCH_REPLICATION"
INGEST_TOPIC = "BENCH_INGEST"
QUEUES = 8  # per master
SIZE = 1024
#: (threads, messages per request) of the ingest runs: one per request, then batches.
INGEST = ((16, 1), (8, 32), (8, 128), (8, 512))
WARM_UP_S = 1.0
#: Threads of the paced producer: each waits for its answer, so 5,000/s allows 12 ms per send (a loaded machine).
PACED_THREADS = 64
TARGET_RATIO = 0.5
TARGET_P99_MS = 1000
#: Brokers per cluster -> (source, target).
TOPOLOGIES = {1: (BENCH_REPL_SOURCE, BENCH_REPL_TARGET), 2: (BENCH_SOURCE_2M, BENCH_TARGET_2M)}

JAVA = Path(__file__).with_name("java")
MAIN_CLASS = "rocketmqbench.LoadProducer"


def java_classpath() -> str:
    """The compiled load producer's runtime classpath; Maven builds it when missing or stale
    (as rocketmq_demo.java_member builds the demo's Java member)."""
    target = JAVA / "target"
    out = target / "classpath.txt"
    sources = [JAVA / "pom.xml", *JAVA.glob("src/**/*.java")]
    if not out.exists() or out.stat().st_mtime < max(p.stat().st_mtime for p in sources):
        result = subprocess.run(["mvn", "-q", "-B", "-f", str(JAVA / "pom.xml"), "compile",
                                 "dependency:build-classpath", f"-Dmdep.outputFile={out}"],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"Maven could not build the Java load producer:\n{result.stdout[-3000:]}")
        out.touch()  # Maven leaves an unchanged classpath file as it was
    return os.pathsep.join([str(target / "classes"), out.read_text().strip()])


def java_producer(spec: ClusterSpec, topic: str, threads: int, batch: int, seconds: float, rate: float,
                  prefix: str, logs: Path, warm_up: float = 0.0) -> dict[str, Any]:
    """One run of the Java load producer; its rate over the timed part, its own and the brokers' CPU."""
    cmd = ["java", "-Xmx256m", f"-Drocketmq.client.logRoot={logs}", "-cp", java_classpath(), MAIN_CLASS,
           spec.namesrv, topic, str(threads), str(batch), str(warm_up), str(seconds), str(rate), prefix, str(SIZE)]
    with Timer(broker_pids(spec)) as timer:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=warm_up + seconds + 180)
    if done.returncode != 0:
        raise RuntimeError(f"Java load producer failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    r = json.loads(done.stdout.strip().splitlines()[-1])
    return {"threads": threads, "messages_per_request": batch, "sent": r["sent"], "timed": r["timed"],
            "seconds": r["seconds"], "rate": round(r["timed"] / r["seconds"], 1), "failed": r["failed"],
            "first_failure": r["first_failure"], "producer_cpu_s": round(timer.child_cpu, 2), "broker_cpu_s": round(timer.watched_cpu, 2)}


class Worker:
    """A worker process of its own task (and so consumer group)."""

    def __init__(self, directory: Path, task: str, source: RunningCluster, target: RunningCluster,
                 tuning: dict[str, Any] | None = None, profile: Path | None = None):
        """``profile``: run the process under cProfile, which writes there when it stops."""
        self.profile = profile
        config = {"task": task, "source": {"namesrv": source.namesrv, "cluster_id": "bench-src"},
                  "target": {"namesrv": target.namesrv, "cluster_id": "bench-dst"}, "topics": [TOPIC],
                  "start": "earliest", "rate_limit": None, "tuning": tuning or {}}
        self.config = directory / f"{task}.json"
        self.config.write_text(json.dumps(config))
        self.stats_path = directory / f"{task}.stats.json"
        self.log = open(directory / f"{task}.log", "ab")
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.stats_path.unlink(missing_ok=True)
        profiler = ["-m", "cProfile", "-o", str(self.profile)] if self.profile else []
        self.proc = subprocess.Popen([sys.executable, *profiler, "-m", "rocketmq_core.replication.worker", "--config",
                                      str(self.config), "--worker-id", "bench", "--stats", str(self.stats_path),
                                      "--log-level", "WARNING"], stdout=self.log, stderr=subprocess.STDOUT)

    def stats(self) -> dict[str, Any]:
        return read_json(self.stats_path) or {}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(120)


def wait_for(check: Callable[[], Any], what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def measure(worker: Worker, low: int, high: int) -> dict[str, Any]:
    """The worker's rate while its replicated count goes from ``low`` to ``high``."""
    assert worker.proc is not None
    first = wait_for(lambda: (s := worker.stats()).get("replicated", 0) >= low and s, f"{low} replicated", 900)
    cpu0 = process_cpu(worker.proc.pid)
    second = wait_for(lambda: (s := worker.stats()).get("replicated", 0) >= high and s, f"{high} replicated", 1800)
    cpu1 = process_cpu(worker.proc.pid)
    done = second["replicated"] - first["replicated"]
    seconds = (second["updated_at_ms"] - first["updated_at_ms"]) / 1000
    return {"measured_messages": done, "seconds": round(seconds, 2), "rate": round(done / seconds, 1),
            "cpu_seconds_per_1000": round((cpu1 - cpu0) / done * 1000, 4), "failed": second["failed"]}


async def _offsets(spec: ClusterSpec, topic: str) -> dict[tuple[str, int], int]:
    """(broker, queue id) -> max offset of the topic on every master."""
    async with ClusterAdmin(spec.namesrv) as admin:
        tables = await admin.gather(admin.topic_offsets(addr, topic) for addr in spec.master_addrs.values())
    return {(mq.broker, mq.queue_id): high for table in tables for mq, (_, high) in table.items()}


def max_offsets(spec: ClusterSpec, topic: str = TOPIC) -> dict[tuple[str, int], int]:
    return asyncio.run(_offsets(spec, topic))


def routed(spec: ClusterSpec, topic: str) -> bool:
    """The name server routes the topic to every master (a producer that starts earlier may miss one)."""
    async def brokers() -> set[str]:
        async with ClusterAdmin(spec.namesrv) as admin:
            return {q["brokerName"] for q in (await admin.topic_route(topic)).get("queueDatas") or []}
    try:
        return asyncio.run(brokers()) == set(spec.master_addrs)
    except RocketMQError:  # no route yet
        return False


async def _store_times(spec: ClusterSpec, since: dict[tuple[str, int], int]) -> dict[str, int]:
    """First key -> store timestamp of every message of the topic after ``since``, on every master."""
    out: dict[str, int] = {}
    async with ClusterAdmin(spec.namesrv) as admin:
        for broker, addr in spec.master_addrs.items():
            for mq, (low, high) in (await admin.topic_offsets(addr, TOPIC)).items():
                start = max(low, since.get((broker, mq.queue_id), low))
                for m in await remote.pull_range(admin.client, addr, TOPIC, mq.queue_id, start, high):
                    if m.keys:
                        out[m.keys[0]] = m.store_timestamp
    return out


def percentile(values: list[int], p: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def delay_run(specs: tuple[ClusterSpec, ClusterSpec], worker: Worker, rate: float, seconds: float,
              logs: Path) -> dict[str, Any]:
    """Pace ``rate`` messages/s for ``seconds`` into the running worker; per-message delays."""
    source, target = specs
    since_src, since_dst = max_offsets(source), max_offsets(target)
    before = worker.stats().get("replicated", 0)
    load = java_producer(source, TOPIC, PACED_THREADS, 1, seconds, rate, "delay", logs)
    sent_total = sum(max_offsets(source).values()) - sum(since_src.values())
    reported = wait_for(lambda: (s := worker.stats()).get("lag") == 0 and s["replicated"] >= before + sent_total
                        and s, "the paced load replicated", 600)["delay"]
    src_times = asyncio.run(_store_times(source, since_src))
    dst_times = asyncio.run(_store_times(target, since_dst))
    pairs = sorted((t, dst_times[k] - t) for k, t in src_times.items() if k in dst_times)
    delays = [d for _, d in pairs]
    missing = [k for k in src_times if k not in dst_times]
    p50, p99, worst = percentile(delays, 0.5), percentile(delays, 0.99), max(delays)
    windows: dict[int, list[int]] = {}
    for stored, delay in pairs:
        windows.setdefault((stored - pairs[0][0]) // 5000, []).append(delay)
    reached = load["rate"] >= rate * 0.95
    ok = p99 < TARGET_P99_MS and not missing
    out = {"load_generator": f"Java producer, {PACED_THREADS} threads, one message per request, paced",
           "requested_rate": rate, "achieved_rate": load["rate"], "rate_reached": reached, "producer": load,
           "messages": len(src_times), "missing": len(missing), "p50_ms": p50, "p99_ms": p99, "max_ms": worst,
           "p99_ms_per_5s": [percentile(v, 0.99) for _, v in sorted(windows.items())],
           "worker_reported_last_10s": reported, "target_p99_ms": TARGET_P99_MS, "met": ok}
    note = "" if reached else f" ({rate:.0f}/s was not reached on this machine)"
    print(f"  delay at {load['rate']:.0f} msg/s{note}: p50 {p50} ms, p99 {p99} ms, max {worst} ms"
          f" ({verdict(ok)}, target p99 < {TARGET_P99_MS} ms), {len(src_times)} messages, {len(missing)} missing;"
          f" p99 per 5 s: {out['p99_ms_per_5s']}", flush=True)
    return out


def bench_case(brokers: int, args: argparse.Namespace) -> dict[str, Any]:
    specs = TOPOLOGIES[brokers]
    load_start = load_average()
    print(f"\n== replication: {SIZE} B messages, {QUEUES} queues per master, {brokers} broker(s) per cluster,"
          f" {os.cpu_count()} CPUs, load average {load_start}", flush=True)
    result: dict[str, Any] = {"brokers": brokers, "clusters": [s.name for s in specs], "message_bytes": SIZE,
                              "queues_per_master": QUEUES}
    with (tempfile.TemporaryDirectory() as tmp, fresh_cluster(specs[0], discard=True) as source,
          fresh_cluster(specs[1], discard=True) as target):
        logs = Path(tmp)

        async def create() -> None:
            for spec in specs:
                async with ClusterAdmin(spec.namesrv) as admin:
                    for addr in spec.master_addrs.values():
                        await admin.create_topic(addr, TopicConfig(TOPIC, QUEUES, QUEUES))
                        if spec is specs[0]:
                            await admin.create_topic(addr, TopicConfig(INGEST_TOPIC, QUEUES, QUEUES))
        asyncio.run(create())
        for spec, topic in ((specs[0], INGEST_TOPIC), (specs[0], TOPIC), (specs[1], TOPIC)):
            wait_for(lambda: routed(spec, topic), f"{topic} routed to every master of {spec.name}", 60)

        # 1. the source's ingest limit with the official Java producer
        runs = []
        for threads, batch in INGEST:
            run = java_producer(specs[0], INGEST_TOPIC, threads, batch, args.ingest_seconds, 0,
                                f"ingest-{threads}x{batch}", logs, WARM_UP_S)
            runs.append(run)
            print(f"  ingest, Java producer, {threads} threads x {batch} message(s) per request: {run['rate']:.0f}"
                  f" msg/s ({run['producer_cpu_s']} producer CPU-s, {run['broker_cpu_s']} broker CPU-s,"
                  f" {run['failed']} failed {run['first_failure']})", flush=True)
        best = max(runs, key=lambda r: r["rate"])
        limit = best["rate"]
        result["ingest"] = {"what": "official Java producer (rocketmq-client 4.9.7), one JVM, several threads",
                            "runs": runs, "best": best, "rate": limit}

        # 2. one worker replicating a backlog; then, for reference, one sending message by message
        fill = java_producer(specs[0], TOPIC, best["threads"], best["messages_per_request"],
                             args.backlog / limit, 0, "backlog", logs, WARM_UP_S)
        backlog = sum(max_offsets(specs[0]).values())
        print(f"  backlog: {backlog} messages written in {fill['seconds']:.1f}s", flush=True)
        worker = Worker(logs, "bench", source, target)
        try:
            run = measure(worker, int(backlog * 0.1), int(backlog * 0.9))
            wait_for(lambda: (s := worker.stats()).get("replicated", 0) >= backlog and s.get("lag") == 0,
                     "the whole backlog replicated", 1800)
            worker.stop()
            ratio = run["rate"] / limit
            result["throughput"] = {**run, "backlog": backlog, "ratio_to_ingest": round(ratio, 3),
                                    "target_ratio": TARGET_RATIO, "met": ratio >= TARGET_RATIO,
                                    "load_average": load_average()}
            print(f"  worker: {run['rate']:.0f} msg/s over {run['measured_messages']} messages of the backlog;"
                  f" ingest limit {limit:.0f} msg/s ({best['threads']} threads x {best['messages_per_request']});"
                  f" {ratio:.2f} x ingest (target >= {TARGET_RATIO}): {verdict(ratio >= TARGET_RATIO)};"
                  f" {run['cpu_seconds_per_1000']} CPU s per 1000 messages; load average {load_average()}",
                  flush=True)

            # where one worker's time goes: a worker of its own task replicating the backlog again
            profiled = Worker(logs, "bench-profile", source, target, profile=logs / "worker.prof")
            try:
                measure(profiled, 5_000, min(backlog, 105_000))
            finally:
                profiled.stop()
            result["profile"] = report_profile(logs / "worker.prof", "a worker process replicating 100,000 messages")

            plain = Worker(logs, "bench-single", source, target, {"batch": False})
            try:
                ref = measure(plain, 5_000, min(backlog, 65_000))
            finally:
                plain.stop()
            result["throughput_single_sends"] = {**ref, "ratio_to_ingest": round(ref["rate"] / limit, 3)}
            print(f"  worker sending one SEND_MESSAGE_V2 per message (information): {ref['rate']:.0f} msg/s ="
                  f" {ref['rate'] / limit:.2f} x ingest; {ref['cpu_seconds_per_1000']} CPU s per 1000 messages",
                  flush=True)

            # 3. delay at a fixed rate, the (default) worker caught up
            worker.start()
            wait_for(lambda: (s := worker.stats()).get("lag") == 0 and s.get("active_queues"), "worker back", 120)
            result["delay"] = delay_run(specs, worker, args.delay_rate, args.delay_seconds, logs)
        finally:
            worker.stop()
    result["load_average"] = {"start": load_start, "end": load_average()}
    result["met"] = result["throughput"]["met"] and result["delay"]["met"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ingest-seconds", type=float, default=5)
    parser.add_argument("--backlog", type=int, default=500_000, help="messages the worker replicates (about)")
    parser.add_argument("--delay-seconds", type=float, default=30)
    parser.add_argument("--delay-rate", type=float, default=5000)
    parser.add_argument("--brokers", default="1,2", help="brokers per cluster to run: 1, 2 or 1,2 (default)")
    args = parser.parse_args()
    cases = [bench_case(int(b), args) for b in args.brokers.split(",")]
    print("\n  side by side:", flush=True)
    for c in cases:
        t, d = c["throughput"], c["delay"]
        print(f"    {c['brokers']} broker(s) per cluster: worker {t['rate']:.0f} msg/s, ingest limit"
              f" {c['ingest']['rate']:.0f} msg/s, {t['ratio_to_ingest']:.2f}x (target >= {TARGET_RATIO}):"
              f" {verdict(t['met'])}; p99 delay {d['p99_ms']} ms at {d['achieved_rate']:.0f} msg/s (target <"
              f" {TARGET_P99_MS} ms): {verdict(d['met'])}; load average {c['load_average']}", flush=True)
    met = all(c["met"] for c in cases)
    write_result("replication", {"source_version": SOURCE_VERSION, "target_version": TARGET_VERSION,
                                 "cases": cases, "met": met})
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
