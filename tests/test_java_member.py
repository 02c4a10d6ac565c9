"""Fleet members on the official Apache RocketMQ Java client (4.9.7), next to C++-client members.

A mixed fleet (a Java and a C++ producer; a Java and a C++ consumer sharing one group) runs on
the 4.9 source; the Java members are moved to the 5.x target through the config service while
the C++ members stay: nothing is lost and the brokers see each client where the config says.
Without a config service the Java member follows the client's own name-server address service;
the project's address service and its switch move such members, judged by what the brokers show.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowException
from rocketmq.client import PushConsumer

from cluster_side import shutdown_within
from rocketmq_core.address_service import AddressBook, make_server
from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.fence import fence_topics
from rocketmq_core.model import GroupConfig, TopicConfig
from rocketmq_demo import java_member
from rocketmq_demo.config_service import FleetConfig, serve
from rocketmq_demo.fleet import DemoFleet, FleetLayout
from rocketmq_provider.operators.fleet import AddressServiceSwitcher

SOURCE, TARGET = "rocketmq_source", "rocketmq_target"


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.5)


def _languages(cluster, *, group: str | None = None, producer_group: str | None = None) -> list[str]:
    """Sorted languages of a group's consumers (or a producer group's producers) on the cluster's broker."""
    async def run() -> list[str]:
        async with ClusterAdmin(cluster.namesrv) as admin:
            if group is not None:
                clients = (await admin.consumer_connection(cluster.broker, group)).clients
            else:
                clients = await admin.producer_connections(cluster.broker, producer_group)
            return sorted(c.language for c in clients)
    return asyncio.run(run())


def _client_ids(cluster, group: str) -> list[str]:
    async def run() -> list[str]:
        async with ClusterAdmin(cluster.namesrv) as admin:
            return [c.client_id for c in (await admin.consumer_connection(cluster.broker, group)).clients]
    return asyncio.run(run())


def _stored(cluster, topic: str) -> int:
    """Messages the cluster's broker holds in the topic."""
    async def run() -> int:
        async with ClusterAdmin(cluster.namesrv) as admin:
            return sum(high - low for low, high in (await admin.topic_offsets(cluster.broker, topic)).values())
    return asyncio.run(run())


def _create_metadata(cluster, topic: str, groups: list[str]) -> None:
    async def run() -> None:
        async with ClusterAdmin(cluster.namesrv) as admin:
            await admin.create_topic(cluster.broker, TopicConfig(topic, 4, 4))
            for group in groups:
                await admin.create_group(cluster.broker, GroupConfig(group, retry_max_times=3))
    asyncio.run(run())


def _terminate(proc: subprocess.Popen) -> None:
    """SIGTERM, as a deployment stops a pod; kill if it is still there after 30 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    finally:
        proc.kill()


def _entries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


@dataclass
class Mixed:
    layout: FleetLayout
    config: FleetConfig
    fleet: DemoFleet
    group: str
    java_consumer: str


@pytest.fixture
def mixed(rmq_clusters, names, tmp_path) -> Iterator[Mixed]:
    group = names.group("c")
    layout = FleetLayout(topic=names.topic(), producer_group=names.group("p"), consumer_groups=[group],
                         rate=10, java_members={"producer-0", f"{group}-0"})
    for name in ("source", "target"):
        _create_metadata(rmq_clusters[name], layout.topic, [group])
    config = FleetConfig(tmp_path / "fleet-config.json", {
        SOURCE: rmq_clusters["source"].namesrv, TARGET: rmq_clusters["target"].namesrv})
    server = serve(config)
    fleet = DemoFleet(layout, tmp_path / "fleet", f"http://127.0.0.1:{server.server_address[1]}")
    fleet.register(config, SOURCE)
    try:
        yield Mixed(layout, config, fleet, group, f"{group}-0")
    finally:
        fleet.stop()
        server.shutdown()


def test_mixed_fleet_moves_its_java_members_to_the_target(mixed, rmq_clusters):
    source, target = rmq_clusters["source"], rmq_clusters["target"]
    layout, fleet, group = mixed.layout, mixed.fleet, mixed.group
    fleet.start(("consumer",))
    _wait(lambda: _languages(source, group=group) == ["CPP", "JAVA"], 60, "a Java and a C++ consumer on the source")
    fleet.start(("producer",))
    _wait(lambda: _languages(source, producer_group=layout.producer_group) == ["CPP", "JAVA"], 60,
          "a Java and a C++ producer on the source")

    def java_receipts_from_both() -> bool:  # the Java consumer takes its share of both producers' messages
        keys = {e["key"] for e in _entries(fleet.log_path(mixed.java_consumer)) if e["e"] == "recv"}
        return {k.rsplit("-", 1)[0] for k in keys} == {"producer-0", "producer-1"}
    _wait(java_receipts_from_both, 60, "the Java consumer receiving from both producers")

    # The Java consumer moves (it sorts first in its group), the C++ one keeps the source's queues.
    assert mixed.config.switch(layout.consumer_fleet, {"groups": [group], "share": 0.5, "cluster": TARGET})["moved"] \
        == [mixed.java_consumer]
    _wait(lambda: _languages(target, group=group) == ["JAVA"] and _languages(source, group=group) == ["CPP"], 60,
          "the Java consumer on the target and gone from the source")
    assert [cid.split("@", 1)[1] for cid in _client_ids(target, group)] == [f"{mixed.java_consumer}-2"]

    assert mixed.config.switch(layout.producer_fleet, {"share": 0.5, "cluster": TARGET})["moved"] == ["producer-0"]
    _wait(lambda: _languages(target, producer_group=layout.producer_group) == ["JAVA"]
          and _languages(source, producer_group=layout.producer_group) == ["CPP"], 60,
          "the Java producer on the target and gone from the source")
    _wait(lambda: sum(e["e"] == "sent" and e["cluster"] == TARGET for e in _entries(fleet.log_path("producer-0"))) >= 30,
          60, "the Java producer sending on the target")

    fleet.stop(("producer",))
    result = fleet.wait_until_received(timeout=120)
    print("mixed fleet accounting:", json.dumps({k: v for k, v in result.items() if k != "groups"}))
    assert result["lost"] == 0, result
    events = fleet.events()
    sent = {e["key"]: e["cluster"] for e in events if e["e"] == "sent"}
    assert {k.rsplit("-", 1)[0] for k in sent} == {"producer-0", "producer-1"}
    assert {c for k, c in sent.items() if k.startswith("producer-1-")} == {SOURCE}
    on_target = {k for k, c in sent.items() if c == TARGET}
    assert on_target and all(k.startswith("producer-0-") for k in on_target)
    received_on_target = {e["key"] for e in events if e["e"] == "recv" and e["cluster"] == TARGET
                          and e["member"] == mixed.java_consumer}
    assert on_target <= received_on_target
    assert _entries(fleet.log_path("producer-0"))[-1]["e"] == "stopped"

    fleet.stop_members([mixed.java_consumer])  # SIGTERM: the shutdown hook unregisters it at once
    assert _entries(fleet.log_path(mixed.java_consumer))[-1]["e"] == "stopped"
    _wait(lambda: _languages(target, group=group) == [], 10, "the stopped Java consumer unregistered")


class AddressServer:
    """What rocketmq.namesrv.domain points a Java client at: GET /rocketmq/{subgroup} -> addresses."""

    def __init__(self, address: str):
        self.address = address
        self.requests: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests.append(self.path)
                body = owner.address.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True, name="address-server").start()

    @property
    def domain(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"


def test_java_member_without_config_url_follows_the_clients_address_service(rmq_clusters, names, tmp_path):
    """No --config-url: no name-server address is set and the client asks the address server, at
    start and 10 s later (then every 2 min); it re-routes sends at its next 30 s route poll."""
    source, target = rmq_clusters["source"], rmq_clusters["target"]
    topic, producer_group, subgroup = names.topic(), names.group("p"), names.group("nsaddr")
    for cluster in (source, target):
        _create_metadata(cluster, topic, [])
    addresses = AddressServer(source.namesrv)
    log = tmp_path / "member.jsonl"
    cmd = java_member.command(
        ["--member", "java-producer", "--role", "producer", "--group", producer_group, "--topic", topic,
         "--log", str(log), "--rate", "10"], tmp_path / "client-logs",
        java_member.address_options(addresses.domain, subgroup))
    with open(tmp_path / "member.out", "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _wait(lambda: addresses.requests, 30, "the client asking the address server")
        addresses.address = target.namesrv  # it asks again 10 s after start
        assert addresses.requests == [f"/rocketmq/{subgroup}"]

        def sent(cluster: str) -> int:
            return sum(e["e"] == "sent" and e["cluster"] == cluster for e in _entries(log))
        _wait(lambda: sent(source.namesrv) >= 10, 30, "sends while the client uses the source's name server")
        assert _languages(source, producer_group=producer_group) == ["JAVA"]
        _wait(lambda: {"e": "switch", "cluster": target.namesrv} in
              [{k: e.get(k) for k in ("e", "cluster")} for e in _entries(log)], 30, "the switch to the target")
        assert len(addresses.requests) == 2
        _wait(lambda: _languages(target, producer_group=producer_group) == ["JAVA"], 90,
              "the Java producer on the target's broker")
        _wait(lambda: _stored(target, topic) >= 10, 30, "the Java producer's messages on the target's broker")
    finally:
        try:
            _terminate(proc)
        finally:
            addresses.server.shutdown()
    assert _entries(log)[-1]["e"] == "stopped"
    assert not any(e["e"] == "fail" for e in _entries(log)), (tmp_path / "member.out").read_text()[-2000:]


def test_the_fence_refuses_a_java_straggler_at_its_next_route_refresh(rmq_clusters, names, tmp_path):
    """A Java producer left on the source after the cutover (a stale config) keeps sending; once
    the fence makes the topic read-only, its sends fail with the client's own error within one
    route refresh (30 s), and the broker stores nothing more of it."""
    source = rmq_clusters["source"]
    topic, producer_group = names.topic(), names.group("p")
    _create_metadata(source, topic, [])
    log = tmp_path / "member.jsonl"
    cmd = java_member.command(
        ["--member", "java-straggler", "--role", "producer", "--group", producer_group, "--topic", topic,
         "--log", str(log), "--rate", "10"], tmp_path / "client-logs", [f"-Drocketmq.namesrv.addr={source.namesrv}"])
    with open(tmp_path / "member.out", "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def events(kind: str) -> list[dict[str, Any]]:
        return [e for e in _entries(log) if e["e"] == kind]
    try:
        _wait(lambda: len(events("sent")) >= 10, 60, "the straggler's sends to the source")

        async def fence() -> None:
            async with ClusterAdmin(source.namesrv) as admin:
                await fence_topics(admin, [topic])
        asyncio.run(fence())
        _wait(lambda: events("fail"), 60, "the straggler's first refused send")
        stored = _stored(source, topic)
        time.sleep(5)
        assert _stored(source, topic) == stored, "the broker stored sends after the client saw the fence"
        assert len(events("fail")) > 10
    finally:
        _terminate(proc)
    errors = {e["error"] for e in events("fail")}
    assert any("No route info of this topic" in error for error in errors), errors


LOG = logging.getLogger("switch")


@pytest.fixture
def address_service(tmp_path, monkeypatch) -> Iterator[tuple[AddressBook, str]]:
    """The project's address service on a free port, and the HTTP connection the switcher uses."""
    book = AddressBook(tmp_path / "addresses.json")
    server = make_server(book, token="s3cret-token")
    threading.Thread(target=server.serve_forever, daemon=True, name="address-service").start()
    monkeypatch.setenv("AIRFLOW_CONN_ADDRESS_SERVICE", json.dumps(
        {"conn_type": "http", "host": "127.0.0.1", "port": server.server_address[1], "password": "s3cret-token"}))
    try:
        yield book, f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def _move(groups: list[str], share: float) -> dict[str, Any]:
    """A switch request moving consumers of ``groups`` from the source to the target."""
    return {"fleet": "f", "role": "consumer", "groups": groups, "share": share,
            "cluster": TARGET, "from_cluster": SOURCE}


def test_a_member_that_ignores_the_address_service_fails_the_switch_by_name(
        rmq_clusters, airflow_env, address_service, names):
    """A consumer pinned to the source's name server does not follow its subgroup: the switch
    times out naming its client id as still on the old cluster."""
    source = rmq_clusters["source"]
    topic, group = names.topic(), names.group("c")
    _create_metadata(source, topic, [group])
    _create_metadata(rmq_clusters["target"], topic, [group])
    book, _ = address_service
    consumer = PushConsumer(group)
    consumer.set_namesrv_addr(source.namesrv)
    consumer.subscribe(topic, lambda msg: None)
    consumer.start()
    try:
        _wait(lambda: _client_ids(source, group), 60, "the pinned consumer online on the source")
        [pinned] = _client_ids(source, group)
        switcher = AddressServiceSwitcher("address_service", names.group("sg"), names.group("sg-canary"),
                                          timeout_seconds=15, poll_seconds=1)
        with pytest.raises(AirflowException, match="still on the old cluster") as refused:
            switcher.switch(_move([group], 1.0), LOG)
        assert f"['{pinned}'] of {group} are still on the old cluster" in str(refused.value)
        assert book.get(switcher.subgroup) == rmq_clusters["target"].namesrv
    finally:
        shutdown_within(consumer)


def test_an_address_service_canary_that_strips_a_group_is_undone_and_refused(
        rmq_clusters, airflow_env, address_service, names, tmp_path):
    """Unmodified Java consumers know only -Drocketmq.namesrv.domain and .subgroup. A group whose
    only consumer asks the canary subgroup would be stripped from the source by the canary: the
    switch sees it leave, points the canary subgroup back at the source and refuses, naming the
    group; the main subgroup never changed. (The canary and full moves of a whole migration on
    such clients are in test_migration_e2e, "Java fleet moved by the address service".)"""
    source, target = rmq_clusters["source"], rmq_clusters["target"]
    topic, group, lone = names.topic(), names.group("c"), names.group("lone")
    for cluster in (source, target):
        _create_metadata(cluster, topic, [group, lone])
    book, domain = address_service
    main, canary = names.group("nsaddr"), names.group("nsaddr-canary")
    for subgroup in (main, canary):
        book.set(subgroup, source.namesrv)
    members = [("c-main", group, main), ("c-canary", group, canary), ("c-lone", lone, canary)]
    procs = []
    for member, member_group, subgroup in members:
        cmd = java_member.command(
            ["--member", member, "--role", "consumer", "--group", member_group, "--topic", topic,
             "--log", str(tmp_path / f"{member}.jsonl")], tmp_path / "client-logs",
            java_member.address_options(domain, subgroup))
        with open(tmp_path / f"{member}.out", "wb") as out:
            procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
    switcher = AddressServiceSwitcher("address_service", main, canary, timeout_seconds=420, poll_seconds=2)
    try:
        _wait(lambda: len(_client_ids(source, group)) == 2 and len(_client_ids(source, lone)) == 1, 60,
              "every Java consumer online on the source")
        with pytest.raises(AirflowException, match=rf"left consumer group\(s\) \['{lone}'\] with no consumer"):
            switcher.switch(_move([group, lone], 0.2), LOG)
        assert book.get(canary) == source.namesrv and book.get(main) == source.namesrv
        assert _client_ids(source, lone) == [] and len(_client_ids(target, lone)) == 1  # what the switch saw
    finally:
        for proc in procs:
            _terminate(proc)
