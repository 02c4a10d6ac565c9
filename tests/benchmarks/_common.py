"""Shared pieces of the benchmarks: private clusters, pre-seeded config files, timing, results.

Benchmarks run as scripts (``make bench``), never under pytest: they start their own clusters
on ports of their own (the shared source/target clusters are never touched), seed them, and
stop them in a ``finally``. Results go to ``bench-results/<name>.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.errors import RocketMQError
from rocketmq_core.metadata.fields import V5_GROUP_KEYS
from rocketmq_core.model import GroupConfig, TopicConfig
from rocketmq_harness.clusters import (
    PROJECT_ROOT, SOURCE_VERSION, TARGET_VERSION, ClusterSpec, RunningCluster, classpath, is_up, mqadmin, start, stop,
)
from rocketmq_harness.clusters import _HEAPS, _java_opts  # the JVM flags harness.mqadmin uses

RESULTS = PROJECT_ROOT / "bench-results"
#: Ports of the benchmark clusters; brokers also bind listenPort-2 and listenPort+1.
BENCH_SOURCE = ClusterSpec("bench-source", SOURCE_VERSION, 63876, 64911)
BENCH_TARGET = ClusterSpec("bench-target", TARGET_VERSION, 65076, 65011)
BENCH_REPL_SOURCE = ClusterSpec("bench-repl-src", SOURCE_VERSION, 23876, 24911)
BENCH_REPL_TARGET = ClusterSpec("bench-repl-dst", TARGET_VERSION, 25876, 26911)


def _data_version() -> dict[str, int]:
    return {"counter": 1, "timestamp": int(time.time() * 1000)}


def config_writer(topics: Iterable[TopicConfig] = (), groups: Iterable[GroupConfig] = (),
                  major: int = 5) -> Callable[[Path], None]:
    """A harness ``seed`` hook writing topics.json and subscriptionGroup.json as the broker keeps them."""
    def write(config_dir: Path) -> None:
        topic_table = {t.name: t.to_wire() for t in topics}
        group_table = {}
        for group in groups:
            wire = group.to_wire()
            if major < 5:  # 4.9's SubscriptionGroupConfig has none of these fields
                for key in V5_GROUP_KEYS:
                    wire.pop(key, None)
            group_table[group.name] = wire
        (config_dir / "topics.json").write_text(
            json.dumps({"dataVersion": _data_version(), "topicConfigTable": topic_table}))
        (config_dir / "subscriptionGroup.json").write_text(
            json.dumps({"dataVersion": _data_version(), "subscriptionGroupTable": group_table,
                        "forbiddenTable": {}}))
    return write


@contextlib.contextmanager
def fresh_cluster(spec: ClusterSpec, seed: Callable[[Path], None] | None = None) -> Iterator[RunningCluster]:
    """A cluster started from an empty store (optionally pre-seeded), stopped afterwards."""
    if is_up(spec):
        raise RuntimeError(f"{spec.name} ({spec.namesrv}) is already running: stop it first "
                           f"(python -m rocketmq_harness stop is for the named clusters; kill its recorded pids)")
    stop(spec)
    shutil.rmtree(spec.home, ignore_errors=True)
    started = time.monotonic()
    try:
        cluster = start(spec, timeout=300, seed=seed)
        _warm_up(cluster)
        print(f"  started {spec.name} (RocketMQ {spec.version}) in {time.monotonic() - started:.1f}s", flush=True)
        yield cluster
    finally:
        stop(spec)
        print(f"  stopped {spec.name}", flush=True)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _warm_up(cluster: RunningCluster, timeout: float = 60) -> None:
    """Wait until the broker answers its runtime info: a 5.5.0 broker answers SYSTEM_ERROR
    (NoSuchElementException from its stats) for a few seconds after it registered."""
    async def ask() -> None:
        async with ClusterAdmin(cluster.namesrv, cluster.credentials) as admin:
            await admin.broker_runtime_info(cluster.broker)

    deadline = time.monotonic() + timeout
    while True:
        try:
            asyncio.run(ask())
            return
        except RocketMQError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


class Timer:
    """Wall seconds, and CPU seconds of this process and of the children waited for meanwhile.

    The machine is shared: wall time depends on what else runs, CPU time much less. Brokers are
    not children counted here (they run before the timer starts), so CPU covers the client side.
    """

    def __enter__(self) -> "Timer":
        self.started = time.perf_counter()
        self._cpu = time.process_time()
        self._children = _children_cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started
        self.cpu = time.process_time() - self._cpu
        self.child_cpu = _children_cpu() - self._children


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_mqadmin(spec: ClusterSpec, args: list[str], timeout: float = 600) -> tuple[Timer, str]:
    """Run mqadmin once; (its timer: wall and JVM CPU seconds, stdout). Raises with its output when it fails."""
    with Timer() as timer:
        result = mqadmin(spec, args, timeout=timeout)
    if result.returncode != 0 or "Exception" in result.stdout:
        raise RuntimeError(f"mqadmin {args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return timer, result.stdout


def mqadmin_cmd(spec: ClusterSpec, args: list[str]) -> list[str]:
    """The command line harness.mqadmin runs (same JVM flags), for starting several at once."""
    return ["java", *_HEAPS["mqadmin"], *_java_opts(spec, "mqadmin"), "-cp", classpath(spec.version),
            "org.apache.rocketmq.tools.command.MQAdminStartup", *args, "-n", spec.namesrv]


def run_parallel(commands: list[list[str]], timeout: float = 600) -> Timer:
    """Start the commands together, wait for all; wall seconds and their CPU seconds."""
    with Timer() as timer:
        procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
        for cmd, proc in zip(commands, procs):
            out, err = proc.communicate(timeout=timeout)
            if proc.returncode != 0 or "Exception" in out:
                raise RuntimeError(f"{cmd[-6:]} failed:\n{out[-3000:]}\n{err[-3000:]}")
    return timer


def stats(samples: list[float]) -> dict[str, float]:
    return {"n": len(samples), "mean_s": round(statistics.fmean(samples), 4),
            "median_s": round(statistics.median(samples), 4), "min_s": round(min(samples), 4),
            "max_s": round(max(samples), 4)}


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "load_average_at_end": load_average()}


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), **result}, indent=2) + "\n")
    print(f"  wrote {path.relative_to(PROJECT_ROOT)}", flush=True)
    return path


def verdict(ok: bool) -> str:
    return "met" if ok else "not met"


def headline(what: str, ours_s: float, reference: str, reference_s: float, target: float) -> dict[str, Any]:
    """Print one headline figure beside its reference, their ratio and whether the target is met;
    return the same for the JSON. Both sides must be measured in the same run: the machine is shared."""
    ratio = reference_s / ours_s
    load = load_average()
    print(f"  {what}: ours {ours_s:.2f}s, reference ({reference}) {reference_s:.2f}s: {ratio:.1f}x"
          f" (target >= {target:g}x): {verdict(ratio >= target)}; load average {load}", flush=True)
    return {"what": what, "ours_s": round(ours_s, 3), "reference": reference, "reference_s": round(reference_s, 3),
            "ratio": round(ratio, 1), "target_ratio": target, "met": ratio >= target, "load_average": load}
