"""Replication throughput and delay: one worker process against the source broker's own ingest rate.

On two private clusters (4.9 source, 5.x target, stopped afterwards; their ports lie below the
kernel's ephemeral range, where a client's port could block a broker's bind):

1. ingest: native (C++ client) producers, each in a process of its own, send 1 KiB messages one
   per request (``send_sync``) as fast as the source broker takes them, with 1, 2 and 4
   producers; the best total is the broker's ingest rate. Everything sent stays as a backlog.
   (The native client's ``send_batch`` is no help: against 4.9 it stores a batch as one message.)
2. throughput: one worker (``python -m rocketmq_core.replication.worker``, default settings:
   batched sends) replicates that backlog from the earliest offset; its rate is read from its own
   stats file between 10% and 90% of the backlog (start-up and tail excluded). Target: at least
   half the ingest rate. For reference a second worker with ``tuning.batch = false`` (one
   SEND_MESSAGE_V2 per message) does the same over part of the backlog.
3. delay: messages are paced at 5,000/s into the caught-up worker, and each one's delay is its
   store time on the target minus its store time on the source, both read back from the brokers
   afterwards (same clock). Target: p99 under 1 s. Two load generators, one after the other:
   a light one (one process of this project's client, one SEND_MESSAGE_V2 per message, many in
   flight) that leaves the two CPUs to the brokers and the worker -- the headline figure -- and
   the native producers (4 processes of ``send_sync``), whose own CPU use competes with them.
   The achieved rates are reported; where 5,000/s is not reached, that is said.

The machine is shared: the load average at start and end goes into the result.
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
from pathlib import Path
from typing import Any

from _common import BENCH_REPL_SOURCE, BENCH_REPL_TARGET, fresh_cluster, verdict, write_result

from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.procutil import read_json
from rocketmq_core.model import TopicConfig
from rocketmq_core.replication import remote
from rocketmq_harness.clusters import SOURCE_VERSION, TARGET_VERSION, RunningCluster

TOPIC = "BENCH_REPLICATION"
QUEUES = 8
SIZE = 1024

PRODUCER = r"""
import json, sys, time
from rocketmq.client import Message, Producer

namesrv, topic, rate, seconds, size, prefix = (sys.argv[1], sys.argv[2], float(sys.argv[3]),
    float(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
producer = Producer("PG_bench_" + prefix, timeout=5000)
producer.set_namesrv_addr(namesrv)
producer.start()
body = (b"0123456789abcdefghijklmnopqrstuvwxyz" * (size // 36 + 1))[:size]

def message(key):
    msg = Message(topic)
    msg.set_keys(key)
    msg.set_body(body)
    return msg

for i in range(20):  # warm up the route and the connection
    producer.send_sync(message(f"{prefix}-warm-{i}"))
sent = errors = 0
start = time.monotonic()
end = start + seconds
while True:
    now = time.monotonic()
    if now >= end:
        break
    if rate > 0:
        due = start + sent / rate
        if due > now:
            time.sleep(due - now)
    try:
        producer.send_sync(message(f"{prefix}-{sent}"))
        sent += 1
    except Exception:
        errors += 1
took = time.monotonic() - start
producer.shutdown()
print(json.dumps({"sent": sent + 20, "timed": sent, "seconds": took, "errors": errors}))
"""


def producers(namesrv: str, count: int, rate_each: float, seconds: float, tag: str) -> dict[str, Any]:
    """Run ``count`` native producer processes at once; their total rate over the timed part."""
    procs = [subprocess.Popen([sys.executable, "-c", PRODUCER, namesrv, TOPIC, str(rate_each), str(seconds),
                               str(SIZE), f"{tag}{i}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(count)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=seconds + 120)
        if proc.returncode != 0:
            raise RuntimeError(f"native producer failed: {err[-2000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    timed = sum(r["timed"] for r in results)
    longest = max(r["seconds"] for r in results)
    return {"producers": count, "sent": sum(r["sent"] for r in results), "timed": timed,
            "seconds": round(longest, 2), "rate": round(timed / longest, 1), "errors": sum(r["errors"] for r in results)}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Worker:
    """A worker process of its own task (and so consumer group)."""

    def __init__(self, directory: Path, task: str, source: RunningCluster, target: RunningCluster,
                 tuning: dict[str, Any] | None = None):
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
        self.proc = subprocess.Popen([sys.executable, "-m", "rocketmq_core.replication.worker", "--config",
                                      str(self.config), "--worker-id", "bench", "--stats", str(self.stats_path),
                                      "--log-level", "WARNING"], stdout=self.log, stderr=subprocess.STDOUT)

    def stats(self) -> dict[str, Any]:
        return read_json(self.stats_path) or {}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(120)


def wait_for(check, what: str, timeout: float) -> Any:
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
    cpu0 = cpu_seconds(worker.proc.pid)
    second = wait_for(lambda: (s := worker.stats()).get("replicated", 0) >= high and s, f"{high} replicated", 1800)
    cpu1 = cpu_seconds(worker.proc.pid)
    done = second["replicated"] - first["replicated"]
    seconds = (second["updated_at_ms"] - first["updated_at_ms"]) / 1000
    return {"measured_messages": done, "seconds": round(seconds, 2), "rate": round(done / seconds, 1),
            "cpu_seconds_per_1000": round((cpu1 - cpu0) / done * 1000, 4), "failed": second["failed"]}


async def _store_times(cluster: RunningCluster, since: dict[int, int]) -> dict[str, int]:
    """First key -> store timestamp of every message of the topic from ``since``."""
    out: dict[str, int] = {}
    async with ClusterAdmin(cluster.namesrv) as admin:
        for mq, (low, high) in (await admin.topic_offsets(cluster.broker, TOPIC)).items():
            start = max(low, since.get(mq.queue_id, low))
            for m in await remote.pull_range(admin.client, cluster.broker, TOPIC, mq.queue_id, start, high):
                if m.keys:
                    out[m.keys[0]] = m.store_timestamp
    return out


async def _max_offsets(cluster: RunningCluster) -> dict[int, int]:
    async with ClusterAdmin(cluster.namesrv) as admin:
        return {mq.queue_id: high for mq, (_, high) in (await admin.topic_offsets(cluster.broker, TOPIC)).items()}


def percentile(values: list[int], p: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ingest-seconds", type=float, default=15)
    parser.add_argument("--delay-seconds", type=float, default=30)
    parser.add_argument("--delay-rate", type=float, default=5000)
    args = parser.parse_args()
    load_start = list(os.getloadavg())
    print(f"replication benchmark: {SIZE} B messages, topic of {QUEUES} queues, {os.cpu_count()} CPUs, "
          f"load average {load_start[0]:.1f}", flush=True)
    result: dict[str, Any] = {"message_bytes": SIZE, "queues": QUEUES, "source_version": SOURCE_VERSION,
                              "target_version": TARGET_VERSION}
    with (tempfile.TemporaryDirectory() as tmp, fresh_cluster(BENCH_REPL_SOURCE) as source,
          fresh_cluster(BENCH_REPL_TARGET) as target):
        async def create() -> None:
            for cluster in (source, target):
                async with ClusterAdmin(cluster.namesrv) as admin:
                    await admin.create_topic(cluster.broker, TopicConfig(TOPIC, QUEUES, QUEUES))
        asyncio.run(create())
        time.sleep(2)

        # 1. the source broker's ingest rate with native producers
        runs = []
        for count in (1, 2, 4):
            run = producers(source.namesrv, count, 0, args.ingest_seconds, f"ingest{count}-")
            runs.append(run)
            print(f"  ingest, {count} native producer(s): {run['rate']:.0f} msg/s", flush=True)
        single = max(runs, key=lambda r: r["rate"])
        best = single["rate"]
        backlog = sum(asyncio.run(_max_offsets(source)).values())
        result["ingest"] = {"runs": runs, "rate": best, "backlog": backlog}

        # 2. one worker replicating that backlog; then, for reference, one sending message by message
        worker = Worker(Path(tmp), "bench", source, target)
        try:
            run = measure(worker, int(backlog * 0.1), int(backlog * 0.9))
            wait_for(lambda: (s := worker.stats()).get("replicated", 0) >= backlog and s.get("lag") == 0,
                     "the whole backlog replicated", 900)
            worker.stop()
            ratio = run["rate"] / best
            result["throughput"] = {**run, "backlog": backlog, "ratio_to_ingest": round(ratio, 3),
                                    "target_ratio": 0.5, "pass": ratio >= 0.5}
            print(f"  worker: {run['rate']:.0f} msg/s over {run['measured_messages']} messages of the backlog = "
                  f"{ratio:.2f} x ingest ({verdict(ratio >= 0.5)}, target 0.5); {run['cpu_seconds_per_1000']} CPU s "
                  "per 1000 messages", flush=True)

            plain = Worker(Path(tmp), "bench-single", source, target, {"batch": False})
            try:
                ref = measure(plain, 5_000, min(backlog, 65_000))
            finally:
                plain.stop()
            result["throughput_single_sends"] = {**ref, "ratio_to_ingest": round(ref["rate"] / best, 3)}
            print(f"  worker sending one SEND_MESSAGE_V2 per message: {ref['rate']:.0f} msg/s = "
                  f"{ref['rate'] / best:.2f} x ingest; {ref['cpu_seconds_per_1000']} CPU s per 1000 messages",
                  flush=True)

            # 3. delay at a fixed rate, the (default) worker caught up
            worker.start()
            wait_for(lambda: (s := worker.stats()).get("lag") == 0 and s.get("active_queues"), "worker back", 120)
            light = delay_run(source, target, worker, args.delay_rate, args.delay_seconds, "light")
            native = delay_run(source, target, worker, args.delay_rate, args.delay_seconds, "native")
        finally:
            worker.stop()
        result["delay"] = light
        result["delay_native_producers"] = native
    result["load_average"] = {"start": load_start, "end": list(os.getloadavg())}
    write_result("replication", result)
    return 0 if result["throughput"]["pass"] and result["delay"]["pass"] else 1


LIGHT_PRODUCER = r"""
import asyncio, json, sys, time
from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.replication import codec, remote

namesrv, broker, topic, rate, seconds, size, prefix, queues = (sys.argv[1], sys.argv[2], sys.argv[3],
    float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]), sys.argv[7], int(sys.argv[8]))
body = (b"0123456789abcdefghijklmnopqrstuvwxyz" * (size // 36 + 1))[:size]

async def main():
    async with ClusterAdmin(namesrv) as admin:
        gate, tasks, sent = asyncio.Semaphore(256), set(), 0
        async def one(n):
            try:
                key = f"{prefix}-{n}"
                props = codec.encode_properties({"KEYS": key, "UNIQ_KEY": key, "WAIT": "true"})
                await remote.send_v2(admin.client, broker, "PG_bench_light", topic, n % queues, body, props,
                                     int(time.time() * 1000))
            finally:
                gate.release()
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            due = start + sent / rate
            if due > time.monotonic():
                await asyncio.sleep(due - time.monotonic())
            await gate.acquire()
            task = asyncio.create_task(one(sent))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        took = time.monotonic() - start
        results = await asyncio.gather(*tasks, return_exceptions=True)
        errors = sum(1 for r in results if isinstance(r, Exception))
    print(json.dumps({"sent": sent, "timed": sent, "seconds": took, "errors": errors}))

asyncio.run(main())
"""


def light_producer(source: RunningCluster, rate: float, seconds: float, prefix: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", LIGHT_PRODUCER, source.namesrv, source.broker, TOPIC, str(rate),
                          str(seconds), str(SIZE), prefix, str(QUEUES)], capture_output=True, text=True,
                         timeout=seconds + 120)
    if out.returncode != 0:
        raise RuntimeError(f"light producer failed: {out.stderr[-2000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return {"producers": 1, "sent": r["sent"], "timed": r["timed"], "seconds": round(r["seconds"], 2),
            "rate": round(r["timed"] / r["seconds"], 1), "errors": r["errors"]}


def delay_run(source: RunningCluster, target: RunningCluster, worker: Worker, rate: float, seconds: float,
              kind: str) -> dict[str, Any]:
    """Pace ``rate`` messages/s for ``seconds`` into the running worker; per-message delays."""
    since_src, since_dst = asyncio.run(_max_offsets(source)), asyncio.run(_max_offsets(target))
    before = worker.stats().get("replicated", 0)
    if kind == "light":
        load = light_producer(source, rate, seconds, "delay-light")
    else:
        load = producers(source.namesrv, 4, rate / 4, seconds, "delay-native-")
    sent_total = sum(asyncio.run(_max_offsets(source)).values()) - sum(since_src.values())
    reported = wait_for(lambda: (s := worker.stats()).get("lag") == 0 and s["replicated"] >= before + sent_total
                        and s, f"the paced load ({kind}) replicated", 600)["delay"]
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
    ok = p99 < 1000 and not missing
    out = {"load_generator": kind, "requested_rate": rate, "achieved_rate": load["rate"], "rate_reached": reached,
           "messages": len(src_times), "missing": len(missing), "p50_ms": p50, "p99_ms": p99, "max_ms": worst,
           "p99_ms_per_5s": [percentile(v, 0.99) for _, v in sorted(windows.items())],
           "worker_reported_last_10s": reported, "target_p99_ms": 1000, "pass": ok}
    note = "" if reached else f" ({rate:.0f}/s was not reached on this machine)"
    print(f"  delay, {kind} load at {load['rate']:.0f} msg/s{note}: p50 {p50} ms, p99 {p99} ms, max {worst} ms "
          f"({verdict(ok)}, target p99 < 1000 ms), {len(src_times)} messages, {len(missing)} missing; "
          f"p99 per 5 s: {out['p99_ms_per_5s']}", flush=True)
    return out


if __name__ == "__main__":
    sys.exit(main())
