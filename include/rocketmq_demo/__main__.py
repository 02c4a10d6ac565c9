"""`make demo`'s fleet: the name-server address service and the fleet's members, in the background.

    python -m rocketmq_demo up        create the demo topic and groups on the source, start the
                                      address service (every subgroup answering the source's name
                                      servers) and the fleet
    python -m rocketmq_demo status    what each subgroup answers, and the message accounting so far
    python -m rocketmq_demo down      stop the fleet (producers first) and the address service
    python -m rocketmq_demo run       the fleet in the foreground (containers), following the
                                      address service at RMQ_DEMO_ADDRESS_DOMAIN

The fleet mixes clients the way the migration must handle them: unmodified official Java
clients told only the service's domain and their subgroup, and C++ members that ask it
themselves. Each member asks its fleet's subgroup (order-consumers, order-producers) or, for
the first member of each group, the fleet's canary subgroup.

RMQ_DEMO_SOURCE_NAMESRV / RMQ_DEMO_TARGET_NAMESRV name the clusters (default: the local
harness's of the RMQ_TOPOLOGY, small or ha); RMQ_DEMO_ADDRESS_PORT where the address service
listens (18081); RMQ_DEMO_JAVA_MEMBERS, comma-separated, which members run the Java client.
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
from rocketmq_core.procutil import alive
from rocketmq_demo.address import ADDRESS_DOMAIN, ADDRESS_PORT, DEMO_DIR, address_token
from rocketmq_demo.fleet import DemoFleet, FleetLayout
from rocketmq_harness.clusters import demo_clusters

#: The fleet of specs/orders-migration.yaml: each group has a member of each client, and the
#: canaries ("-0") are of both kinds.
JAVA_MEMBERS = os.environ.get("RMQ_DEMO_JAVA_MEMBERS", "producer-0,GID_orders_billing-1,GID_orders_shipping-0")
LAYOUT = FleetLayout(topic="orders_created", producer_group="PID_orders",
                     consumer_groups=["GID_orders_billing", "GID_orders_shipping"], rate=5,
                     java_members={m for m in JAVA_MEMBERS.split(",") if m})
CLUSTER_CONNS = {"rocketmq_source": os.environ.get("RMQ_DEMO_SOURCE_NAMESRV", demo_clusters()["source"].namesrv),
                 "rocketmq_target": os.environ.get("RMQ_DEMO_TARGET_NAMESRV", demo_clusters()["target"].namesrv)}
#: The other way round: what a subgroup answers (or a member holds), named as Airflow names it.
CLUSTER_NAMES = {namesrv: conn for conn, namesrv in CLUSTER_CONNS.items()}


def _fleet() -> DemoFleet:
    fleet = DemoFleet(LAYOUT, DEMO_DIR / "fleet", None, address_domain=ADDRESS_DOMAIN,
                      cluster_names=CLUSTER_NAMES)
    pids = DEMO_DIR / "fleet" / "pids.json"
    if pids.exists():
        fleet.pids = {m: p for m, p in json.loads(pids.read_text()).items() if alive(p)}
    return fleet


def _subgroups() -> list[str]:
    return sorted({LAYOUT.subgroup(member) for member, *_ in LAYOUT.members()})


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
    pid_file = DEMO_DIR / "address-service.pid"
    if not (pid_file.exists() and alive(int(pid_file.read_text()))):
        source = CLUSTER_CONNS["rocketmq_source"]
        command = [sys.executable, "-m", "rocketmq_core.address_service", "--state", str(DEMO_DIR / "addresses.json"),
                   "--port", str(ADDRESS_PORT), "--token-env", "RMQ_DEMO_ADDRESS_TOKEN",
                   *(f"--set={subgroup}={source}" for subgroup in _subgroups())]
        with open(DEMO_DIR / "address-service.out", "ab") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env={**os.environ, "RMQ_DEMO_ADDRESS_TOKEN": address_token()})
        pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + 20
        while _answers() is None:
            if time.monotonic() > deadline:
                sys.exit(f"the address service did not answer on {ADDRESS_DOMAIN} (see {DEMO_DIR}/address-service.out)")
            time.sleep(0.2)
    fleet = _fleet()
    fleet.start()
    print(f"demo fleet: {len(fleet.pids)} members ({len(LAYOUT.java_members)} on the Java client) following the"
          f" address service on {ADDRESS_DOMAIN} (logs in {fleet.run_dir})")


def _answers() -> dict[str, str] | None:
    """Every subgroup's answer, or None while the service does not answer."""
    try:
        with urllib.request.urlopen(f"http://{ADDRESS_DOMAIN}/subgroups", timeout=2) as resp:
            return json.load(resp)
    except OSError:
        return None


def run_all() -> None:
    """The fleet in one foreground process, for a container; SIGTERM stops it."""
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
    fleet = _fleet()
    fleet.start()
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    while not stopping:
        time.sleep(1)
    fleet.stop()


def status() -> None:
    answers = _answers()
    if answers is None:
        sys.exit(f"the address service does not answer on {ADDRESS_DOMAIN}")
    for subgroup in _subgroups():
        members = [m for m, *_ in LAYOUT.members() if LAYOUT.subgroup(m) == subgroup]
        answer = answers.get(subgroup)
        print(f"{subgroup}: {CLUSTER_NAMES.get(answer, answer)} ({', '.join(members)})")
    print(json.dumps(_fleet().account(), indent=2))


def down() -> None:
    _fleet().stop()
    pid_file = DEMO_DIR / "address-service.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text())
        if alive(pid):
            os.kill(pid, signal.SIGTERM)
        pid_file.unlink()
    print("demo fleet and address service stopped")


def main(argv: list[str]) -> int:
    commands = {"up": up, "down": down, "status": status, "run": run_all}
    if len(argv) != 1 or argv[0] not in commands:
        print(__doc__)
        return 2
    commands[argv[0]]()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
