"""`make demo`'s fleet: the config service and the fleet's member processes, in the background.

    python -m rocketmq_demo up        create the demo topic and groups on the source, start the
                                      config service and the fleet (all members on the source)
    python -m rocketmq_demo status    where each member is, and the message accounting so far
    python -m rocketmq_demo down      stop the fleet (producers first) and the config service
    python -m rocketmq_demo serve     run the config service in the foreground (used by `up`)
    python -m rocketmq_demo run       the config service and the fleet in the foreground (containers)

RMQ_DEMO_SOURCE_NAMESRV / RMQ_DEMO_TARGET_NAMESRV name the clusters (default: the local
harness's of the RMQ_TOPOLOGY, small or ha), RMQ_DEMO_CONFIG_PORT and RMQ_DEMO_BIND where the config service listens.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.model import GroupConfig, TopicConfig
from rocketmq_demo.config_service import FleetConfig, serve
from rocketmq_core.procutil import alive
from rocketmq_demo.fleet import DemoFleet, FleetLayout
from rocketmq_harness.clusters import RUN_DIR, demo_clusters

DEMO_DIR = RUN_DIR / "demo"
CONFIG_PORT = int(os.environ.get("RMQ_DEMO_CONFIG_PORT", "18080"))
CONFIG_URL = f"http://127.0.0.1:{CONFIG_PORT}"
#: The fleet of specs/orders-migration.yaml.
LAYOUT = FleetLayout(topic="orders_created", producer_group="PID_orders",
                     consumer_groups=["GID_orders_billing", "GID_orders_shipping"], rate=5)
CLUSTER_CONNS = {"rocketmq_source": os.environ.get("RMQ_DEMO_SOURCE_NAMESRV", demo_clusters()["source"].namesrv),
                 "rocketmq_target": os.environ.get("RMQ_DEMO_TARGET_NAMESRV", demo_clusters()["target"].namesrv)}
BIND = os.environ.get("RMQ_DEMO_BIND", "127.0.0.1")


def _fleet() -> DemoFleet:
    fleet = DemoFleet(LAYOUT, DEMO_DIR / "fleet", CONFIG_URL)
    pids = DEMO_DIR / "fleet" / "pids.json"
    if pids.exists():
        fleet.pids = {m: p for m, p in json.loads(pids.read_text()).items() if alive(p)}
    return fleet


async def _create_source_metadata() -> None:
    """The self-built cluster's state before the migration: the topic and groups, on the source only."""
    async with ClusterAdmin(CLUSTER_CONNS["rocketmq_source"]) as admin:
        for broker in await admin.masters():
            await admin.create_topic(broker.master, TopicConfig(LAYOUT.topic, 4, 4))
            for group in LAYOUT.consumer_groups:
                await admin.create_group(broker.master, GroupConfig(group, retry_max_times=3))


def up() -> None:
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    asyncio.run(_create_source_metadata())
    pid_file = DEMO_DIR / "config-service.pid"
    if not (pid_file.exists() and alive(int(pid_file.read_text()))):
        with open(DEMO_DIR / "config-service.out", "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "rocketmq_demo", "serve"], stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + 20
        while not _answers(CONFIG_URL + "/state"):
            if time.monotonic() > deadline:
                sys.exit(f"config service did not answer on {CONFIG_URL}")
            time.sleep(0.2)
    fleet = _fleet()
    fleet.start()
    print(f"demo fleet: {len(fleet.pids)} members following {CONFIG_URL} (logs in {fleet.run_dir})")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


def _serve() -> object:
    """The config service; the members are registered on the source the first time."""
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    state = DEMO_DIR / "fleet-config.json"
    fresh = not state.exists()
    config = FleetConfig(state, CLUSTER_CONNS)
    if fresh:
        DemoFleet(LAYOUT, DEMO_DIR / "fleet", CONFIG_URL).register(config, "rocketmq_source")
    server = serve(config, CONFIG_PORT, BIND)
    print(f"fleet config service on {BIND}:{CONFIG_PORT}", flush=True)
    return server


def run_service() -> None:
    server = _serve()
    signal.signal(signal.SIGTERM, lambda *_: server.shutdown())
    signal.pause()


def run_all() -> None:
    """Config service and fleet in one foreground process, for a container; SIGTERM stops both."""
    deadline = time.monotonic() + 300
    while True:  # the brokers may still be starting
        try:
            asyncio.run(_create_source_metadata())
            break
        except Exception as exc:
            if time.monotonic() > deadline:
                raise
            print(f"waiting for the source cluster: {exc}", flush=True)
            time.sleep(5)
    server = _serve()
    fleet = DemoFleet(LAYOUT, DEMO_DIR / "fleet", CONFIG_URL)
    fleet.start()
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    while not stopping:
        time.sleep(1)
    fleet.stop()
    server.shutdown()


def status() -> None:
    with urllib.request.urlopen(CONFIG_URL + "/state", timeout=3) as resp:
        state = json.load(resp)
    for name, fleet in state["fleets"].items():
        print(name + ": " + ", ".join(f"{m}={e['cluster']}" for m, e in sorted(fleet["members"].items())))
    print(json.dumps(_fleet().account(), indent=2))


def down() -> None:
    _fleet().stop()
    pid_file = DEMO_DIR / "config-service.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text())
        if alive(pid):
            os.kill(pid, signal.SIGTERM)
        pid_file.unlink()
    print("demo fleet and config service stopped")


def main(argv: list[str]) -> int:
    commands = {"up": up, "down": down, "status": status, "serve": run_service, "run": run_all}
    if len(argv) != 1 or argv[0] not in commands:
        print(__doc__)
        return 2
    commands[argv[0]]()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
