"""Shared pieces of the benchmarks: private clusters, pre-seeded config files, timing, results.

Benchmarks run as scripts (``make bench``), never under pytest: they start their own clusters
on ports of their own (the shared source/target clusters are never touched), seed them, and
stop them in a ``finally``. Results go to ``bench-results/<name>.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import json
import os
import platform
import pstats
import resource
import shutil
import statistics
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.errors import RocketMQError
from rocketmq_core.metadata.fields import V5_GROUP_KEYS
from rocketmq_core.model import GroupConfig, TopicConfig
from rocketmq_harness.clusters import (
    PROJECT_ROOT, SOURCE_VERSION, TARGET_VERSION, ClusterSpec, RunningCluster, classpath, is_up, mqadmin, start, stop,
)
from rocketmq_harness.clusters import _HEAPS, _java_opts  # the JVM flags harness.mqadmin uses
from rocketmq_harness.clusters import _recorded_pids, _store  # where a broker's pid and store are

T = TypeVar("T")
RESULTS = PROJECT_ROOT / "bench-results"
#: Untimed runs of ours before the timed ones. A fresh broker serves its first big requests with
#: cold code: in one run here snapshot + diff took 1.69, 1.06, 0.74, 0.74, 0.71 and 0.54 s on the
#: same brokers, ours using the same 0.4 to 0.5 CPU-s each time. Production brokers are warm, and
#: the references run after ours, on brokers warmed by all of ours' runs.
WARMUP_RUNS = 3
#: Ports of the benchmark clusters; brokers also bind listenPort-2 and listenPort+1.
BENCH_SOURCE = ClusterSpec("bench-source", SOURCE_VERSION, 63876, 64911)
BENCH_TARGET = ClusterSpec("bench-target", TARGET_VERSION, 65076, 65011)
BENCH_REPL_SOURCE = ClusterSpec("bench-repl-src", SOURCE_VERSION, 23876, 24911)
BENCH_REPL_TARGET = ClusterSpec("bench-repl-dst", TARGET_VERSION, 25876, 26911)
#: Two masters per cluster (no slave, no proxy: neither side of a benchmark reads through them), so
#: that the figures show how each side scales with brokers. Above the ephemeral range (32768-60999)
#: like the one-broker ones; second master 10 ports on.
BENCH_SOURCE_2M = ClusterSpec("bench-source-2m", SOURCE_VERSION, 61876, 61911, masters=2)
BENCH_TARGET_2M = ClusterSpec("bench-target-2m", TARGET_VERSION, 62076, 62011, masters=2)


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


def master_of(spec: ClusterSpec, name: str) -> int:
    """The master a benchmark object lives on when a cluster's objects are split over its masters.

    Benchmark names end in their index: even ones on the first master, odd ones on the second.
    A group, its retry topic and (in the backlog benchmark) the topic it consumes share that
    digit's parity, so each group's offsets and messages sit on one broker.
    """
    return int(name[-1]) % spec.masters


def seed_split(spec: ClusterSpec, topics: Iterable[TopicConfig] = (),
               groups: Iterable[GroupConfig] = ()) -> Callable[[Path], None]:
    """A harness ``seed`` hook giving every master its share (``master_of``) of the topics and groups.

    The harness hands the hook the first master's config directory only; the others' lie beside it.
    """
    topics, groups = list(topics), list(groups)

    def seed(_: Path) -> None:
        for index, broker in enumerate(b for b in spec.brokers if b.is_master):
            config_dir = _store(spec, broker) / "config"
            config_dir.mkdir(parents=True, exist_ok=True)
            config_writer([t for t in topics if master_of(spec, t.name) == index],
                          [g for g in groups if master_of(spec, g.name) == index], spec.major)(config_dir)
    return seed


@contextlib.contextmanager
def fresh_cluster(spec: ClusterSpec, seed: Callable[[Path], None] | None = None,
                  discard: bool = False) -> Iterator[RunningCluster]:
    """A cluster started from an empty store (optionally pre-seeded), stopped afterwards; with
    ``discard`` its directory is removed too (a store written at the broker's ingest limit holds gigabytes)."""
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
        for pid in stop(spec):  # reap them now: reaped later, inside a Timer, their CPU would count as a child's
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        if discard:
            shutil.rmtree(spec.home, ignore_errors=True)
        print(f"  stopped {spec.name}", flush=True)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int) -> float:
    """CPU seconds of a running process (user + system), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def broker_pids(spec: ClusterSpec) -> list[int]:
    """The running cluster's broker processes, as the harness recorded them."""
    return [pid for role, pid in _recorded_pids(spec).items() if role.startswith("broker")]


def _warm_up(cluster: RunningCluster, timeout: float = 60) -> None:
    """Wait until every master answers its runtime info: a 5.5.0 broker answers SYSTEM_ERROR
    (NoSuchElementException from its stats) for a few seconds after it registered."""
    async def ask() -> None:
        async with ClusterAdmin(cluster.namesrv, cluster.credentials) as admin:
            for addr in cluster.spec.master_addrs.values():
                await admin.broker_runtime_info(addr)

    deadline = time.monotonic() + timeout
    while True:
        try:
            asyncio.run(ask())
            return
        except RocketMQError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` without its two reprs of the result on the way out (CPython 3.11.7 here,
    python/cpython#112559: 0.15 s for a backlog report of 50,000 rows). Ours is timed through
    this: the cost is the interpreter's, not the library call's (the README says who pays it)."""
    result: list[T] = []

    async def main() -> None:
        result.append(await coro)

    asyncio.run(main())
    return result[0]


class Timer:
    """Wall seconds, and CPU seconds of this process and of the children waited for meanwhile;
    ``watched_cpu``: CPU seconds of the processes in ``watch`` (brokers) meanwhile.

    The machine is shared: wall time depends on what else runs, CPU time much less. Brokers are
    not children counted here (they run before the timer starts), so CPU covers the client side;
    watching them tells whether a side waits for its own work or for the broker's.
    """

    def __init__(self, watch: Iterable[int] = ()) -> None:
        self.watch = tuple(watch)

    def __enter__(self) -> "Timer":
        self.started = time.perf_counter()
        self._cpu = time.process_time()
        self._children = _children_cpu()
        self._watched = sum(map(process_cpu, self.watch))
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started
        self.cpu = time.process_time() - self._cpu
        self.child_cpu = _children_cpu() - self._children
        self.watched_cpu = sum(map(process_cpu, self.watch)) - self._watched


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_mqadmin(spec: ClusterSpec, args: list[str], timeout: float = 600,
                watch: Iterable[int] = ()) -> tuple[Timer, str]:
    """Run mqadmin once; (its timer: wall and JVM CPU seconds, stdout). Raises with its output when it fails."""
    with Timer(watch) as timer:
        result = mqadmin(spec, args, timeout=timeout)
    if result.returncode != 0 or "Exception" in result.stdout:
        raise RuntimeError(f"mqadmin {args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return timer, result.stdout


def mqadmin_cmd(spec: ClusterSpec, args: list[str]) -> list[str]:
    """The command line harness.mqadmin runs (same JVM flags), for starting several at once."""
    return ["java", *_HEAPS["mqadmin"], *_java_opts(spec, "mqadmin"), "-cp", classpath(spec.version),
            "org.apache.rocketmq.tools.command.MQAdminStartup", *args, "-n", spec.namesrv]


def run_parallel(commands: list[list[str]], timeout: float = 600, watch: Iterable[int] = ()) -> Timer:
    """Start the commands together, wait for all; wall seconds and their CPU seconds."""
    with Timer(watch) as timer:
        procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
        for cmd, proc in zip(commands, procs):
            out, err = proc.communicate(timeout=timeout)
            if proc.returncode != 0 or "Exception" in out:
                raise RuntimeError(f"{cmd[-6:]} failed:\n{out[-3000:]}\n{err[-3000:]}")
    return timer


def _own_time(source: cProfile.Profile | Path) -> tuple[dict[str, tuple[int, float]], dict[str, float]]:
    """Own time (and calls) per function "file:name", and own time per file, summed over same-named entries."""
    functions: dict[str, tuple[int, float]] = {}
    files: dict[str, float] = defaultdict(float)
    stats = pstats.Stats(str(source) if isinstance(source, Path) else source)
    # Stats.stats: (file, line, function) -> (primitive calls, calls, own time, cumulative time, callers)
    for (file, _, func), (_, calls, tottime, _, _) in stats.stats.items():
        name = "builtin" if file == "~" else Path(file).name
        had_calls, had_time = functions.get(f"{name}:{func}", (0, 0.0))
        functions[f"{name}:{func}"] = (had_calls + calls, had_time + tottime)
        files[name] += tottime
    return functions, files


def profile(run: Callable[[], object], top: int = 10) -> dict[str, Any]:
    """Where ours spends its time: one ``run()`` under cProfile (wall-clock), the functions with the
    most own time and own time per file. Waiting for the brokers shows as the event loop's epoll."""
    profiler = cProfile.Profile()
    profiler.enable()
    run()
    profiler.disable()
    return report_profile(profiler, "one run of ours", top)


def report_profile(source: cProfile.Profile | Path, what: str, top: int = 10) -> dict[str, Any]:
    """Print and return a profile's heaviest functions and files; ``source`` may be a file that
    ``python -m cProfile -o`` wrote (a process of ours profiled whole)."""
    functions, files = _own_time(source)
    total = sum(files.values())
    waiting = sum(t for name, (_, t) in functions.items() if "epoll" in name)
    ranked = sorted(functions.items(), key=lambda kv: kv[1][1], reverse=True)[:top]
    top_files = sorted(files.items(), key=lambda kv: kv[1], reverse=True)[:top]
    print(f"  profile of {what} under cProfile: {total:.2f}s, of which {waiting:.2f}s waiting in epoll;"
          " own time per function:", flush=True)
    for name, (calls, tottime) in ranked:
        print(f"    {tottime:6.2f}s {calls:>9} calls  {name}", flush=True)
    print("  own time per file: " + ", ".join(f"{n} {t:.2f}s" for n, t in top_files), flush=True)
    return {"profiled_s": round(total, 3), "waiting_in_epoll_s": round(waiting, 3),
            "top_functions": [{"function": n, "own_s": round(t, 3), "calls": c} for n, (c, t) in ranked],
            "top_files": {n: round(t, 3) for n, t in top_files}}


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


def side_by_side(heads: list[dict[str, Any]]) -> None:
    """The headlines of one benchmark at one and at two brokers, one line each, for comparison."""
    print("\n  side by side:", flush=True)
    for h in heads:
        print(f"    {h['what']}: ours {h['ours_s']}s, reference {h['reference_s']}s, {h['ratio']}x"
              f" (target >= {h['target_ratio']:g}x): {verdict(h['met'])}; load average {h['load_average']}", flush=True)
