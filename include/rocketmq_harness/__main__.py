"""Command line of the local cluster harness.

    python -m rocketmq_harness start [NAME ...]     (default: source target)
    python -m rocketmq_harness stop [NAME ...]      (default: every known cluster)
    python -m rocketmq_harness status
    python -m rocketmq_harness mqadmin NAME ARGS...
    python -m rocketmq_harness airflow start|stop
    python -m rocketmq_harness memory              (resident memory of everything we started)
"""

from __future__ import annotations

import sys

from rocketmq_harness import airflow_standalone
from rocketmq_harness.clusters import CLUSTERS, ClusterSpec, is_up, mqadmin, start, stop
from rocketmq_harness.processes import resident_memory


def _specs(names: list[str], default: list[str]) -> list[ClusterSpec]:
    unknown = [n for n in names if n not in CLUSTERS]
    if unknown:
        sys.exit(f"unknown cluster(s) {unknown}; known: {sorted(CLUSTERS)}")
    return [CLUSTERS[n] for n in names or default]


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("start", "stop", "status", "mqadmin", "airflow", "memory"):
        print(__doc__)
        return 2
    verb, rest = argv[0], argv[1:]
    if verb == "start":
        for spec in _specs(rest, ["source", "target"]):
            cluster = start(spec)
            auth = f", auth on (access key {cluster.credentials.access_key})" if cluster.credentials else ""
            brokers = ", ".join(f"{b.name}{'' if b.is_master else ' slave'} {b.addr}" for b in spec.brokers)
            proxy = f", proxy {spec.proxy} (gRPC {spec.proxy_grpc})" if spec.proxy else ""
            print(f"{spec.name}: RocketMQ {spec.version} name server {spec.namesrv}, brokers {brokers}{proxy}{auth}")
    elif verb == "stop":
        for spec in _specs(rest, list(CLUSTERS)):
            pids = stop(spec)
            print(f"{spec.name}: stopped {pids}" if pids else f"{spec.name}: nothing running")
    elif verb == "status":
        for spec in CLUSTERS.values():
            print(f"{spec.name}: {'up' if is_up(spec) else 'down'} ({spec.version}, {spec.namesrv})")
    elif verb == "airflow":
        if rest == ["start"]:
            running = airflow_standalone.start()
            print(f"Airflow UI and REST API: {running.url}")
            for user, password in airflow_standalone.passwords().items():
                print(f"  login {user} / {password} ({airflow_standalone.USERS[user]})")
        elif rest == ["stop"]:
            pid = airflow_standalone.stop()
            print(f"airflow: stopped process group {pid}" if pid else "airflow: nothing running")
        else:
            sys.exit("usage: airflow start|stop")
    elif verb == "memory":
        rows = resident_memory()
        for label, rss in rows:
            print(f"{rss / 2**20:8.0f} MiB  {label}")
        for name in CLUSTERS:  # one figure per topology: its name server, brokers and proxy together
            processes = [rss for label, rss in rows if label.split()[0] == name]
            if processes:
                print(f"{sum(processes) / 2**20:8.0f} MiB  cluster {name} ({len(processes)} processes)")
        print(f"{sum(rss for _, rss in rows) / 2**20:8.0f} MiB  total")
    else:
        if not rest:
            sys.exit("usage: mqadmin NAME ARGS...")
        result = mqadmin(_specs(rest[:1], [])[0], rest[1:])
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        return result.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
