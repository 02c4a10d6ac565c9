"""The whole story on real clusters, a real fleet and a running Airflow answered through its REST API.

A migration DAG built from a task spec moves a fleet of 2 producers and 4 consumers in 2 groups,
producing continuously, from the 4.9 source to the 5.x target: nothing is lost. The fleet is
switched by a config service it polls (C++ members, or C++ and Java ones), or by the name-server
address service that unmodified Java clients ask by themselves (and C++ members ask too). The negative
controls show what happens when the order is broken by hand, and that the DAG refuses to break
it even when its sensors are marked successful by hand or clients vanish after a sensor passed.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import E2E_SPECS
from rocketmq_core.address_service import AddressBook, make_server
from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.backlog import measure_backlog
from rocketmq_core.model import GroupConfig, TopicConfig
from rocketmq_demo.config_service import FleetConfig, serve
from rocketmq_demo.fleet import DemoFleet, FleetLayout
from rocketmq_harness import clusters as harness
from cluster_side import auto_create, send_routed, shutdown_within

SOURCE, TARGET = "rocketmq_source", "rocketmq_target"
GATES = ["approve_metadata_sync", "approve_canary_consumers", "approve_canary_producers",
         "approve_remaining_producers", "approve_cutover"]


@dataclass
class World:
    """One migration's worth of unique names, a config service, a running fleet and its spec."""

    name: str
    layout: FleetLayout
    config: FleetConfig
    fleet: DemoFleet
    config_url: str
    source: Any
    conns: tuple[str, str] = (SOURCE, TARGET)
    #: The address service's answers, when the members follow it instead of the config service.
    book: AddressBook | None = None

    @property
    def dag_id(self) -> str:
        return f"rmq_migration__{self.name}"

    def put(self, fleet: str, groups: list[str], share: float, cluster: str) -> None:
        self.config.switch(fleet, {"groups": groups, "share": share, "cluster": cluster})

    def clusters_of(self, role: str) -> dict[str, str]:
        """Where each member of the role's fleet is sent: by the config service or the address service."""
        fleet = self.layout.producer_fleet if role == "producer" else self.layout.consumer_fleet
        if self.book is None:
            return {m: e["cluster"] for m, e in self.config.state["fleets"][fleet]["members"].items()}
        named = self.fleet.cluster_names
        return {m: named[self.book.get(self.layout.subgroup(m))] for m, f, _, _ in self.layout.members() if f == fleet}


def _create_metadata(cluster, layout: FleetLayout) -> None:
    """The topic and groups on every master of the cluster."""
    async def run():
        async with ClusterAdmin(cluster.namesrv) as admin:
            for addr in cluster.spec.master_addrs.values():
                await admin.create_topic(addr, TopicConfig(layout.topic, 4, 4))
                for group in layout.consumer_groups:
                    await admin.create_group(addr, GroupConfig(group, retry_max_times=3))
    asyncio.run(run())


#: How a person is told to switch a fleet, in the manual world's spec.
BY_HAND = "Edit the fleet's entry in the config service and save."
#: The address service's bearer token in the address world.
ADDRESS_TOKEN = "address-s3cret"
#: How long an address-service switch may take: a Java client asks every 2 minutes, re-routes
#: within 30 s, and the old broker forgets it when its idle connection closes (45 s here,
#: ``java_member.IDLE_CLOSE_SECONDS``; 2 minutes by default, which this timeout also allows).
ADDRESS_SWITCH_SECONDS = 480


def _write_spec(world: World, conn_id: str, source: str = SOURCE, target: str = TARGET,
                extra: dict[str, Any] | None = None, manual: bool = False) -> Path:
    layout = world.layout

    def switch(fleet: str) -> dict[str, Any]:
        if manual:
            return {"type": "manual", "how": BY_HAND, "timeout_seconds": 300, "poll_seconds": 2}
        if world.book is not None:
            return {"type": "address_service", "http_conn_id": conn_id, "subgroup": fleet,
                    "canary_subgroup": f"{fleet}-canary", "timeout_seconds": ADDRESS_SWITCH_SECONDS,
                    "poll_seconds": 3}
        return {"http_conn_id": conn_id, "method": "PUT", "endpoint": f"/fleets/{fleet}"}

    spec = {
        "kind": "migration", "name": world.name, "source": {"conn_id": source}, "target": {"conn_id": target},
        "scope": {"topics": {"include": [layout.topic]}, "groups": {"include": layout.consumer_groups}},
        "fleets": [
            {"name": layout.consumer_fleet, "role": "consumer", "groups": layout.consumer_groups,
             "topics": [layout.topic], "canary_share": 0.5, "switch": switch(layout.consumer_fleet)},
            {"name": layout.producer_fleet, "role": "producer", "groups": [layout.producer_group],
             "topics": [layout.topic], "canary_share": 0.5, "switch": switch(layout.producer_fleet)},
        ],
        "approvers": ["admin"], "diff_schedule": None,
        "stability": {"backlog_checks": 3, "poll_interval_seconds": 2, "writes_quiet_seconds": 6,
                      "clients_timeout_seconds": 120, "drain_timeout_seconds": 300, "watch_seconds": 6},
        **(extra or {}),
    }
    path = E2E_SPECS / f"{world.name}.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    return path


def _world(airflow_api, tmp_path, source, target, conns: tuple[str, str] = (SOURCE, TARGET), mixed: bool = False,
           extra: dict[str, Any] | None = None, consumers_per_group: int = 2, manual: bool = False,
           address: bool = False):
    """A world on two clusters; ``conns`` name them in Airflow (and in the fleet's config).
    ``mixed``: the first producer and the first consumer of each group run on the Java client;
    ``extra``: more fields of the spec; ``manual``: a person switches the fleets; ``address``:
    the fleet follows a name-server address service and the spec switches it there: the Java
    members run the unmodified client, told only the service's domain and their subgroup, the
    C++ members ask the same subgroup themselves. Each group has one of each kind, and the
    canaries ("-0") are of both kinds."""
    u = uuid.uuid4().hex[:8]
    layout = FleetLayout(topic=f"orders_{u}", producer_group=f"PID_orders_{u}",
                         consumer_groups=[f"GID_billing_{u}", f"GID_shipping_{u}"], rate=15,
                         consumers_per_group=consumers_per_group)
    if mixed:
        layout.java_members = {"producer-0", *(f"{group}-0" for group in layout.consumer_groups)}
    if address:
        billing, shipping = layout.consumer_groups
        layout.java_members = {"producer-0", f"{billing}-1", f"{shipping}-0"}
    _create_metadata(source, layout)
    config = FleetConfig(tmp_path / "fleet-config.json", {conns[0]: source.namesrv, conns[1]: target.namesrv})
    server = serve(config)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    book = AddressBook(tmp_path / "addresses.json") if address else None
    switched_by = server
    if book is not None:
        for member, *_ in layout.members():
            book.set(layout.subgroup(member), source.namesrv)
        switched_by = make_server(book, token=ADDRESS_TOKEN)
        threading.Thread(target=switched_by.serve_forever, daemon=True, name="address-service").start()
    fleet = DemoFleet(layout, tmp_path / "fleet", url,
                      address_domain=f"127.0.0.1:{switched_by.server_address[1]}" if book else None,
                      cluster_names={source.namesrv: conns[0], target.namesrv: conns[1]})
    fleet.register(config, conns[0])
    w = World(f"e2e_{u}", layout, config, fleet, url, source, conns, book)
    conn_id = f"{'address_service' if book else 'fleet_config'}_{u}"
    airflow_api.set_connection(conn_id, conn_type="http", host="127.0.0.1", port=switched_by.server_address[1],
                               schema="http", password=ADDRESS_TOKEN if book else None)
    spec_path = _write_spec(w, conn_id, *conns, extra=extra, manual=manual)
    fleet.start()
    try:
        yield w
    finally:
        fleet.stop()
        server.shutdown()
        if book is not None:
            switched_by.shutdown()
        spec_path.unlink(missing_ok=True)


@pytest.fixture
def world(rmq_clusters, airflow_api, tmp_path):
    yield from _world(airflow_api, tmp_path, rmq_clusters["source"], rmq_clusters["target"])


@pytest.fixture
def lone_world(rmq_clusters, airflow_api, tmp_path):
    """A world whose consumer groups have one consumer each: too small for a canary."""
    yield from _world(airflow_api, tmp_path, rmq_clusters["source"], rmq_clusters["target"], consumers_per_group=1)


@pytest.fixture
def manual_world(rmq_clusters, airflow_api, tmp_path):
    """A world whose spec switches both fleets by hand (``type: manual``)."""
    yield from _world(airflow_api, tmp_path, rmq_clusters["source"], rmq_clusters["target"], manual=True)


@pytest.fixture
def retiring_world(rmq_clusters, airflow_api, tmp_path):
    """A world whose spec ends with the gated retirement of the source topics."""
    yield from _world(airflow_api, tmp_path, rmq_clusters["source"], rmq_clusters["target"],
                      extra={"retire_source": True})


def _ha_world(ha_clusters, airflow_api, tmp_path, **kind: bool):
    source, target = ha_clusters["source-ha"], ha_clusters["target-ha"]
    for name, cluster in (("rocketmq_source_ha", source), ("rocketmq_target_ha", target)):
        airflow_api.set_connection(name, conn_type="rocketmq", host="127.0.0.1", port=cluster.spec.namesrv_port)
    yield from _world(airflow_api, tmp_path, source, target, ("rocketmq_source_ha", "rocketmq_target_ha"), **kind)


@pytest.fixture
def ha_world(ha_clusters, airflow_api, tmp_path):
    """Two masters per cluster (4.9 with a slave, 5.x behind a proxy) and a fleet that mixes the
    official Java client (one producer, one consumer per group) with C++ members."""
    yield from _ha_world(ha_clusters, airflow_api, tmp_path, mixed=True)


@pytest.fixture
def address_world(ha_clusters, airflow_api, tmp_path):
    """Two masters per cluster and a fleet of unmodified Java clients and C++ members moved by the
    address service."""
    yield from _ha_world(ha_clusters, airflow_api, tmp_path, address=True)


def _perms(cluster, topic: str) -> dict[str, int]:
    """The topic's permission on every master of the cluster."""
    async def run():
        async with ClusterAdmin(cluster.namesrv) as admin:
            return {name: (await admin.topic_configs(addr))[topic].perm
                    for name, addr in cluster.spec.master_addrs.items()}
    return asyncio.run(run())


def _online(cluster, group: str) -> int:
    async def run():
        async with ClusterAdmin(cluster.namesrv) as admin:
            return (await admin.consumer_connection(cluster.broker, group)).online
    return asyncio.run(run())


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _run_approving(world: World, airflow_api, gates: list[str],
                   conf: dict[str, Any] | None = None) -> tuple[str, dict[str, str]]:
    """Once the fleet's consumers are online on the source, trigger the migration and approve
    ``gates`` in order; the run id and the body each gate showed."""
    _wait(lambda: all(_online(world.source, g) == world.layout.consumers_per_group
                      for g in world.layout.consumer_groups), 90, "consumers online on the source")
    airflow_api.wait_for_dag(world.dag_id, timeout=180)
    run_id = airflow_api.trigger(world.dag_id, conf)
    return run_id, _approve(world, airflow_api, run_id, gates)


def _approve(world: World, airflow_api, run_id: str, gates: list[str]) -> dict[str, str]:
    """Approve ``gates`` of the run in order, each as soon as it opens; the body each gate showed."""
    bodies = {}
    for gate in gates:
        bodies[gate] = airflow_api.wait_for_gate(world.dag_id, run_id, gate, timeout=600)["body"]
        airflow_api.answer(world.dag_id, run_id, gate, "Approve")
    return bodies


def _mark_drain_sensors_by_hand(world: World, airflow_api, run_id: str) -> None:
    """What the UI allows: mark the writes-stopped and drained sensors successful while they wait,
    then wait for the cutover gate they unlock."""
    for sensor in ("source_writes_stopped", "source_drained"):
        # deferred: its own first check in the task is over and the trigger waits (marking a task
        # while its process still runs was seen to fail with a database error on SQLite)
        _wait(lambda s=sensor: airflow_api.task_states(world.dag_id, run_id).get(s) == "deferred",
              120, f"{sensor} waiting")
        airflow_api.set_task_state(world.dag_id, run_id, sensor, "success")
    airflow_api.wait_for_gate(world.dag_id, run_id, "approve_cutover", timeout=300)


#: The story on one-broker clusters runs end to end in the tests of rollback, resumption and
#: retirement below, each with zero loss; here it runs on the production shapes. The address
#: service's world waits about three minutes at each of three switches for the Java clients'
#: two-minute address poll: it is marked slow (``make test-slow``), outside CI's 90 minutes.
WORLDS = {"two masters, mixed fleet": "ha_world",
          "two masters, mixed fleet moved by the address service": "address_world"}


@pytest.fixture(params=["two masters, mixed fleet",
                        pytest.param("two masters, mixed fleet moved by the address service", marks=pytest.mark.slow)])
def any_world(request):
    """The story on source-ha -> target-ha with Java and C++ members and a config service; and
    there with unmodified Java clients that only know their address service, beside C++ members
    that ask it (each switch there waits for the Java clients' 2-minute address poll)."""
    return request.getfixturevalue(WORLDS[request.param])


def test_migration_dag_moves_a_live_fleet_without_losing_a_message(any_world, airflow_api):
    world = any_world
    source, target = world.conns
    layout = world.layout
    run_id, bodies = _run_approving(world, airflow_api, GATES)
    assert airflow_api.wait_for_run(world.dag_id, run_id, timeout=600) == "success", \
        airflow_api.task_states(world.dag_id, run_id)

    states = airflow_api.task_states(world.dag_id, run_id)
    rollback = [t for t in states if t.startswith("rollback_") and t != "rollback_requested"]
    assert {t: s for t, s in states.items() if t not in rollback and s != "success"} == {}
    assert rollback and {states[t] for t in rollback} == {"skipped"}
    assert "orders_" in bodies["approve_metadata_sync"] and layout.topic in bodies["approve_metadata_sync"]
    for group in layout.consumer_groups:  # canary consumers were online on the target when asked
        assert f"| {group} | 1 | 1 |" in bodies["approve_canary_producers"], bodies["approve_canary_producers"]
    assert "Total undelivered: 0" in bodies["approve_cutover"]
    for gate in GATES[1:]:  # each gate showed the next switch's invariant, measured as it opened
        assert "What the next switch checks" in bodies[gate] and "**refuses**" not in bodies[gate], bodies[gate]
    assert "| holds | a canary of 0.5 leaves a consumer of each of 2 group(s)" in bodies["approve_canary_consumers"]
    assert "| holds | no pending transactional half message" in bodies["approve_remaining_producers"]
    for gate in ("approve_remaining_producers", "approve_cutover"):  # the writers census, live at the gate
        writers = bodies[gate].split("in no fleet", 1)[1].split("###", 1)[0]  # that section, measured
        assert "None: every producer group" in writers or "in no fleet are online" in writers, bodies[gate]
    assert set(world.clusters_of("producer").values()) == {target}
    assert set(world.clusters_of("consumer").values()) == {target}
    if world.book is not None:  # each client took the target's name server from the service itself
        followed = {e["member"] for e in world.fleet.events() if e["e"] == "switch" and e["cluster"] == target}
        assert followed == {member for member, *_ in layout.members()}, followed
    canary = airflow_api.xcom(world.dag_id, run_id, f"canary_producers.{layout.producer_fleet}", key="switch")
    assert canary["share"] == 0.5 and "kept" not in canary, canary  # a first run's canary moves
    assert set(_perms(world.source, layout.topic).values()) == {4}  # fenced: read-only on every master
    preflight = airflow_api.xcom(world.dag_id, run_id, "preflight")
    assert preflight["broker_sets"][source] == sorted(world.source.spec.master_addrs)
    assert len(preflight["broker_sets"][target]) == len(preflight["broker_sets"][source])

    world.fleet.stop(("producer",))
    result = world.fleet.wait_until_received(timeout=120)
    print("e2e accounting:", json.dumps(result))
    assert result["sent"] > 100
    assert result["sent_by_cluster"].get(source, 0) > 0 and result["sent_by_cluster"].get(target, 0) > 0
    assert result["lost"] == 0, result
    report = airflow_api.xcom(world.dag_id, run_id, "report")
    assert [a["gate"] for a in report["approvals"]] == GATES
    assert {a["by"] for a in report["approvals"]} == {"admin"}
    assert report["offsets_at_cutover"]["offsets"].keys() == set(layout.consumer_groups)
    assert report["phases"] and all(p["seconds"] >= 0 for p in report["phases"])


def test_a_migration_switched_by_hand_is_approved_through_rest_and_loses_nothing(manual_world, airflow_api,
                                                                                rmq_clusters):
    """A person moves the fleets. Each gate says what to change (fleet, groups, share, the
    target's name server, the spec's own words); after the answer, sent through the REST API,
    the switch calls nothing and waits on the triggerer until the brokers show the clients moved.
    The person (this test) then edits the fleet's config; the run ends with nothing lost."""
    world, layout = manual_world, manual_world.layout
    consumers, producers = (layout.consumer_fleet, layout.consumer_groups), (layout.producer_fleet,
                                                                             [layout.producer_group])
    by_hand = {"approve_canary_consumers": ("canary_consumers", *consumers, 0.5),
               "approve_canary_producers": ("canary_producers", *producers, 0.5),
               "approve_remaining_producers": ("remaining_producers", *producers, 1.0),
               "approve_cutover": ("remaining_consumers", *consumers, 1.0)}
    run_id, _ = _run_approving(world, airflow_api, GATES[:1])
    for gate, (stage, fleet, groups, share) in by_hand.items():
        body = airflow_api.wait_for_gate(world.dag_id, run_id, gate, timeout=600)["body"]
        assert f"By hand after you approve: fleet {fleet}" in body and BY_HAND in body, body
        assert rmq_clusters["target"].namesrv in body and ", ".join(groups) in body, body
        airflow_api.answer(world.dag_id, run_id, gate, "Approve")
        switch = f"{stage}.{fleet}"
        _wait(lambda: airflow_api.task_states(world.dag_id, run_id).get(switch) == "deferred", 120,
              f"{switch} waiting for the person")
        world.put(fleet, groups, share, TARGET)
        _wait(lambda: airflow_api.task_states(world.dag_id, run_id).get(switch) == "success", 300,
              f"{switch} seeing the fleet moved")
    assert airflow_api.wait_for_run(world.dag_id, run_id, timeout=600) == "success", \
        airflow_api.task_states(world.dag_id, run_id)
    assert set(world.clusters_of("producer").values()) == set(world.clusters_of("consumer").values()) == {TARGET}
    world.fleet.stop(("producer",))
    result = world.fleet.wait_until_received(timeout=120)
    print("manual e2e accounting:", json.dumps({k: v for k, v in result.items() if k != "groups"}))
    assert result["sent_by_cluster"].get(SOURCE, 0) > 0 and result["sent_by_cluster"].get(TARGET, 0) > 0
    assert result["lost"] == 0, result
    report = airflow_api.xcom(world.dag_id, run_id, "report")
    assert [a["gate"] for a in report["approvals"]] == GATES


def test_by_hand_moving_the_last_consumers_before_the_drain_loses_messages(world, rmq_clusters):
    """The negative control: consumers leave the source while producers still write there."""
    layout = world.layout
    _wait(lambda: all(_online(rmq_clusters["source"], g) == 2 for g in layout.consumer_groups), 60,
          "consumers online on the source")
    _create_metadata(rmq_clusters["target"], layout)
    world.put(layout.consumer_fleet, layout.consumer_groups, 1.0, TARGET)
    _wait(lambda: all(_online(rmq_clusters["source"], g) == 0 for g in layout.consumer_groups), 60,
          "consumers gone from the source")
    time.sleep(4)  # producers keep writing to a source nobody reads any more
    world.put(layout.producer_fleet, [layout.producer_group], 1.0, TARGET)
    time.sleep(3)
    world.fleet.stop(("producer",))
    result = world.fleet.wait_until_received(timeout=20)
    print("by hand, last consumers before the drain:", json.dumps({k: v for k, v in result.items() if k != "groups"}))
    assert result["lost"] > 0
    lost = {k for g in result["groups"].values() for k in g["lost_keys"]}
    sent_to = {e["key"]: e["cluster"] for e in world.fleet.events() if e["e"] == "sent"}
    assert {sent_to[k] for k in lost} == {SOURCE}, "only messages left on the source may be missing"


def test_by_hand_moving_producers_first_is_measured(world, rmq_clusters):
    """Producers before consumers: messages pile up on a target nobody reads yet.

    Whether they are lost depends on where a group with no offset starts on the target: both
    brokers here start it at the first message while the queue's minimum offset is 0 and the
    message is still in memory, so this client loses nothing on a fresh target; a target whose
    queues were cleaned (or whose messages left the page cache) starts it at the max offset and
    loses them. The test measures and reports; the DAG refuses this order either way (below).
    """
    layout = world.layout
    _wait(lambda: all(_online(rmq_clusters["source"], g) == 2 for g in layout.consumer_groups), 60,
          "consumers online on the source")
    _create_metadata(rmq_clusters["target"], layout)
    world.put(layout.producer_fleet, [layout.producer_group], 1.0, TARGET)
    time.sleep(5)
    world.put(layout.consumer_fleet, layout.consumer_groups, 1.0, TARGET)
    time.sleep(3)
    world.fleet.stop(("producer",))
    result = world.fleet.wait_until_received(timeout=60)
    print("by hand, producers first:", json.dumps({k: v for k, v in result.items() if k != "groups"}))
    assert result["sent_by_cluster"].get(TARGET, 0) > 0
    assert set(world.clusters_of("producer").values()) == {TARGET}


def test_dag_refuses_producers_when_target_consumers_vanished_after_the_sensor(world, airflow_api, rmq_clusters):
    """The sensor saw consumers online on the target; they die before the gate is approved.
    The producer switch re-checks live, refuses, and no producer moves."""
    layout = world.layout
    run_id, _ = _run_approving(world, airflow_api, GATES[:2])
    airflow_api.wait_for_gate(world.dag_id, run_id, "approve_canary_producers", timeout=600)
    moved = [m for m, c in world.clusters_of("consumer").items() if c == TARGET]
    assert len(moved) == 2
    world.fleet.stop_members(moved)
    _wait(lambda: all(_online(rmq_clusters["target"], g) == 0 for g in layout.consumer_groups), 60,
          "target consumers gone")
    airflow_api.answer(world.dag_id, run_id, "approve_canary_producers", "Approve")
    assert airflow_api.wait_for_run(world.dag_id, run_id, timeout=300) == "failed"
    states = airflow_api.task_states(world.dag_id, run_id)
    assert states[f"canary_producers.{layout.producer_fleet}"] == "failed"
    assert set(world.clusters_of("producer").values()) == {SOURCE}


def test_dag_refuses_last_consumers_while_a_producer_still_writes_to_the_source(world, airflow_api, rmq_clusters):
    """Sensors marked successful by hand while a stray producer still writes to the source:
    the cutover switch re-checks live, refuses, and the remaining consumers stay."""
    layout = world.layout
    run_id, _ = _run_approving(world, airflow_api, GATES[:4])
    _wait(lambda: set(world.clusters_of("producer").values()) == {TARGET}, 120, "producers moved")
    world.put(layout.producer_fleet, [layout.producer_group], 0.5, SOURCE)  # a stray producer goes back
    _mark_drain_sensors_by_hand(world, airflow_api, run_id)
    airflow_api.answer(world.dag_id, run_id, "approve_cutover", "Approve")
    assert airflow_api.wait_for_run(world.dag_id, run_id, timeout=300) == "failed"
    states = airflow_api.task_states(world.dag_id, run_id)
    assert states[f"remaining_consumers.{layout.consumer_fleet}"] == "failed"
    assert SOURCE in set(world.clusters_of("consumer").values())
    page = airflow_api.report_page(world.dag_id, run_id)  # the hand-marking is on the record
    for sensor in ("source_writes_stopped", "source_drained"):
        assert f"<td>admin</td><td>marked {sensor} success by hand</td>" in page
    assert "triggered by admin" in page


class StrayProducer:
    """A producer of a group no spec lists, writing the migrated topic on the source: the fleet
    inventory does not know it, only the brokers do."""

    def __init__(self, namesrv: str, topic: str):
        from rocketmq.client import Producer

        self.producer = Producer(f"PID_stray_{uuid.uuid4().hex[:8]}")
        self.producer.set_namesrv_addr(namesrv)
        self.topic = topic
        self.sent: list[str] = []
        self.stopping = False

    def __enter__(self) -> "StrayProducer":
        import threading

        from rocketmq.client import Message

        self.producer.start()

        def produce() -> None:
            while not self.stopping:
                key = f"stray-{len(self.sent)}"
                message = Message(self.topic)
                message.set_keys(key)
                message.set_body(key.encode())
                send_routed(self.producer, message)
                self.sent.append(key)
                time.sleep(0.3)

        self.thread = threading.Thread(target=produce, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping = True
        self.thread.join(10)
        self.producer.shutdown()


def test_dag_refuses_the_cutover_while_a_producer_outside_the_spec_writes_the_source(world, airflow_api,
                                                                                     rmq_clusters):
    """Every listed producer moved; one of a group the spec does not list keeps writing the
    source. With both sensors marked successful by hand, only the cutover's own re-measurement
    of the topic's writes stands between it and loss: it refuses, naming the topic, and the
    consumers stay where the stray's messages are."""
    layout = world.layout
    run_id, _ = _run_approving(world, airflow_api, GATES[:4])
    _wait(lambda: set(world.clusters_of("producer").values()) == {TARGET}, 120, "producers moved")
    with StrayProducer(rmq_clusters["source"].namesrv, layout.topic) as stray:
        _mark_drain_sensors_by_hand(world, airflow_api, run_id)
        airflow_api.answer(world.dag_id, run_id, "approve_cutover", "Approve")
        assert airflow_api.wait_for_run(world.dag_id, run_id, timeout=300) == "failed"
    states = airflow_api.task_states(world.dag_id, run_id)
    switch = f"remaining_consumers.{layout.consumer_fleet}"
    assert states[switch] == "failed"
    log = airflow_api.task_log(world.dag_id, run_id, switch)
    assert "no measurement in this run found the writes stopped" in log, log[-3000:]
    assert "PreconditionRefused" in log  # refused, not crashed: the report tells them apart
    refusals = airflow_api.xcom(world.dag_id, run_id, "report")["refusals"]
    assert [r["task"] for r in refusals] == [switch]
    assert any(f["condition"].startswith("no write to the topics since") for f in refusals[0]["failed"])
    assert set(world.clusters_of("consumer").values()) == {SOURCE, TARGET}
    assert len(stray.sent) > 10
    received = {(e["group"], e["key"]) for e in world.fleet.events() if e["e"] == "recv"}
    missing = {g: [k for k in stray.sent if (g, k) not in received] for g in layout.consumer_groups}
    deadline = time.monotonic() + 60
    while any(missing.values()) and time.monotonic() < deadline:
        time.sleep(1)
        received = {(e["group"], e["key"]) for e in world.fleet.events() if e["e"] == "recv"}
        missing = {g: [k for k in stray.sent if (g, k) not in received] for g in layout.consumer_groups}
    assert not any(missing.values()), missing


def test_a_straggler_writing_the_source_after_the_cutover_fails_the_watch(world, airflow_api, rmq_clusters):
    """The migration is done and every fleet is on the target; a producer (a restarted pod with
    a stale config) writes the migrated topic on the source. The fence does not stop this client
    (a 4.9 broker stores the send), the watch does: it fails the run, naming the topic."""
    layout = world.layout
    run_id, _ = _run_approving(world, airflow_api, GATES, conf={"watch_seconds": 600})
    _wait(lambda: airflow_api.task_states(world.dag_id, run_id).get("watch_source") == "deferred", 300,
          "the watch running")
    assert set(world.clusters_of("consumer").values()) == {TARGET}
    with StrayProducer(rmq_clusters["source"].namesrv, layout.topic) as stray:
        assert airflow_api.wait_for_run(world.dag_id, run_id, timeout=120) == "failed"
    states = airflow_api.task_states(world.dag_id, run_id)
    assert states["watch_source"] == "failed" and states["outcome"] == "upstream_failed", states
    assert states["report"] == "failed"  # it carries the run's verdict, after writing the report
    assert airflow_api.xcom(world.dag_id, run_id, "report")["verdict"] == "upstream_failed"
    log = airflow_api.task_log(world.dag_id, run_id, "watch_source")
    assert "the source was touched after the cutover" in log and f"topic(s) written since: {layout.topic}" in log, \
        log[-3000:]
    assert stray.sent, "the stray producer's sends went through: only the watch saw them"


def test_a_gate_marked_successful_by_hand_unlocks_nothing(world, airflow_api, rmq_clusters):
    """Marking a gate successful (as the UI allows) records no answer: the switch after it reads
    the gate's recorded answer, finds none, and moves nobody."""
    run_id, _ = _run_approving(world, airflow_api, GATES[:1])
    airflow_api.wait_for_gate(world.dag_id, run_id, "approve_canary_consumers", timeout=300)
    airflow_api.set_task_state(world.dag_id, run_id, "approve_canary_consumers", "success")
    assert airflow_api.wait_for_run(world.dag_id, run_id, timeout=300) == "failed"
    switch = f"canary_consumers.{world.layout.consumer_fleet}"
    assert airflow_api.task_states(world.dag_id, run_id)[switch] == "failed"
    log = airflow_api.task_log(world.dag_id, run_id, switch)
    assert "not approved" in log and "no recorded answer" in log, log[-3000:]
    assert set(world.clusters_of("consumer").values()) == {SOURCE}


def test_preflight_refuses_readers_the_spec_did_not_decide(world, airflow_api, rmq_clusters):
    """A group outside every fleet and a broadcasting group read the migrated topic: the
    preflight names both, and nothing after it runs."""
    from rocketmq.client import PushConsumer
    from rocketmq.ffi import MessageModel

    source = rmq_clusters["source"]
    stranger, broadcast = f"GID_stranger_{world.name}", f"GID_broadcast_{world.name}"
    readers = []
    for group, model in ((stranger, MessageModel.CLUSTERING), (broadcast, MessageModel.BROADCASTING)):
        consumer = PushConsumer(group, message_model=model)
        consumer.set_namesrv_addr(source.namesrv)
        consumer.subscribe(world.layout.topic, lambda msg: None)
        consumer.start()
        readers.append(consumer)
    try:
        _wait(lambda: _online(source, stranger) == 1 and _online(source, broadcast) == 1, 60, "readers online")
        airflow_api.wait_for_dag(world.dag_id, timeout=180)
        run_id = airflow_api.trigger(world.dag_id)
        assert airflow_api.wait_for_run(world.dag_id, run_id, timeout=300) == "failed"
    finally:
        for consumer in readers:
            shutdown_within(consumer)
    states = airflow_api.task_states(world.dag_id, run_id)
    assert states["preflight"] == "failed" and states["metadata_sync"] in ("upstream_failed", None)
    log = airflow_api.task_log(world.dag_id, run_id, "preflight")
    assert f"consumer group {stranger} reads ['{world.layout.topic}'] but is in no fleet" in log, log[-3000:]
    assert f"consumer group {broadcast} consumes ['{world.layout.topic}'] in broadcasting mode" in log
    assert set(world.clusters_of("consumer").values()) == {SOURCE}


def test_roll_back_at_the_cutover_lifts_the_fence_and_brings_everyone_back(world, airflow_api):
    """Producers moved and the source fenced; the on-call answers Roll back at the cutover gate:
    the fence is lifted first, producers return, the target drains, consumers return, and
    nothing is lost."""
    layout = world.layout
    run_id, _ = _run_approving(world, airflow_api, GATES[:4])
    airflow_api.wait_for_gate(world.dag_id, run_id, "approve_cutover", timeout=600)
    assert set(_perms(world.source, layout.topic).values()) == {4}
    airflow_api.answer(world.dag_id, run_id, "approve_cutover", "Roll back")
    assert airflow_api.wait_for_run(world.dag_id, run_id, timeout=600) == "success", \
        airflow_api.task_states(world.dag_id, run_id)
    states = airflow_api.task_states(world.dag_id, run_id)
    assert {t: states[t] for t in ("rollback_lift_fence", f"rollback_producers.{layout.producer_fleet}",
                                   "rollback_target_drained", f"rollback_consumers.{layout.consumer_fleet}")} \
        == dict.fromkeys(("rollback_lift_fence", f"rollback_producers.{layout.producer_fleet}",
                          "rollback_target_drained", f"rollback_consumers.{layout.consumer_fleet}"), "success")
    assert states[f"remaining_consumers.{layout.consumer_fleet}"] == "skipped"
    assert set(_perms(world.source, layout.topic).values()) == {6}
    assert set(world.clusters_of("producer").values()) == {SOURCE}
    assert set(world.clusters_of("consumer").values()) == {SOURCE}
    time.sleep(5)  # producers write the source again
    world.fleet.stop(("producer",))
    result = world.fleet.wait_until_received(timeout=120)
    assert result["lost"] == 0, result
    assert result["sent_by_cluster"].get(TARGET, 0) > 0


def test_a_second_run_is_refused_while_the_first_is_unfinished(world, airflow_api):
    """Two runs of one migration would switch the same fleets against each other: the second's
    preflight refuses, naming the first; once the first is marked failed by hand, a new run may start."""
    airflow_api.wait_for_dag(world.dag_id, timeout=180)
    first = airflow_api.trigger(world.dag_id)
    airflow_api.wait_for_gate(world.dag_id, first, "approve_metadata_sync", timeout=300)
    second = airflow_api.trigger(world.dag_id)
    assert airflow_api.wait_for_run(world.dag_id, second, timeout=300) == "failed"
    assert airflow_api.task_states(world.dag_id, second)["preflight"] == "failed"
    log = airflow_api.task_log(world.dag_id, second, "preflight")
    assert f"run {first} of this migration is still running" in log, log[-3000:]
    assert airflow_api.run_state(world.dag_id, first) == "running"

    # Ended by hand: the run stays failed (its report fails it again after Airflow ran the teardown)
    airflow_api.set_run_state(world.dag_id, first, "failed")
    _wait(lambda: airflow_api.task_states(world.dag_id, first).get("report") in ("success", "failed"), 120,
          "the first run's report")
    _wait(lambda: airflow_api.run_state(world.dag_id, first) in ("success", "failed"), 60, "the first run ended")
    assert airflow_api.run_state(world.dag_id, first) == "failed"
    report = airflow_api.xcom(world.dag_id, first, "report")
    assert report["ended_by_hand"] and report["standing"] == {} and report["switches"] == []
    assert "where each fleet stands: no fleet was switched" in airflow_api.task_log(world.dag_id, first, "report")
    third = airflow_api.trigger(world.dag_id)
    airflow_api.wait_for_gate(world.dag_id, third, "approve_metadata_sync", timeout=300)
    airflow_api.answer(world.dag_id, third, "approve_metadata_sync", "Roll back")
    airflow_api.wait_for_run(world.dag_id, third, timeout=300)
    assert airflow_api.run_state(world.dag_id, first) == "failed"
    assert set(world.clusters_of("consumer").values()) == {SOURCE}


def test_a_spec_removed_while_its_run_is_active_keeps_its_dag_until_the_run_ends(world, airflow_api):
    """Removing a spec file takes its DAG away at the next parse, and the active run's tasks then
    fail on "Dag not found". The run holds a copy from its preflight: the DAG stays, marked, its
    next steps still run, and it goes once the run's end callback has released the copy (after
    the run's other callbacks: the DAG processor parses the DAG again to run them)."""
    held = E2E_SPECS / ".held" / f"{world.name}.yaml"
    airflow_api.wait_for_dag(world.dag_id, timeout=180)
    run_id = airflow_api.trigger(world.dag_id)
    try:
        airflow_api.wait_for_gate(world.dag_id, run_id, "approve_metadata_sync", timeout=300)
        assert held.exists()
        (E2E_SPECS / f"{world.name}.yaml").unlink()
        _wait(lambda: "spec-removed" in {t["name"] for t in airflow_api.call("GET", f"/api/v2/dags/{world.dag_id}")
                                         ["tags"]}, 120, "the DAG parsed again from the held copy")
        airflow_api.answer(world.dag_id, run_id, "approve_metadata_sync", "Approve")
        airflow_api.wait_for_gate(world.dag_id, run_id, "approve_canary_consumers", timeout=300)
        assert airflow_api.task_states(world.dag_id, run_id)["metadata_sync"] == "success"
        airflow_api.answer(world.dag_id, run_id, "approve_canary_consumers", "Roll back")
        assert airflow_api.wait_for_run(world.dag_id, run_id, timeout=300) == "success", \
            airflow_api.task_states(world.dag_id, run_id)
        _wait(lambda: not held.exists(), 120, "the run's end callback released the copy")
        _wait(lambda: airflow_api.call("GET", f"/api/v2/dags/{world.dag_id}")["is_stale"], 120,
              "the DAG gone with its run")
        assert set(world.clusters_of("consumer").values()) == {SOURCE}
    finally:
        held.unlink(missing_ok=True)


def test_a_run_after_a_failed_one_resumes_where_the_fleets_stand(world, airflow_api):
    """The first run moves every producer, fences the source and is ended by hand while it drains.
    The next run's canaries find each fleet already further along on the target and keep it there
    (a 50% canary of producers would send half of them back to the fenced source); its fence
    finds the first one standing and keeps the topic's own permission for a roll back; the run
    completes and nothing is lost."""
    layout, source = world.layout, world.source
    first, _ = _run_approving(world, airflow_api, GATES[:4])
    _wait(lambda: airflow_api.task_states(world.dag_id, first).get("fence_source") == "success", 300, "the fence")
    airflow_api.set_run_state(world.dag_id, first, "failed")
    _wait(lambda: airflow_api.task_states(world.dag_id, first).get("report") in ("success", "failed"), 120,
          "the first run's report")
    assert set(world.clusters_of("producer").values()) == {TARGET}
    assert sorted(world.clusters_of("consumer").values()) == sorted([SOURCE, TARGET] * len(layout.consumer_groups))
    assert set(_perms(source, layout.topic).values()) == {4}

    second = airflow_api.trigger(world.dag_id)
    _approve(world, airflow_api, second, GATES)
    assert airflow_api.wait_for_run(world.dag_id, second, timeout=600) == "success", \
        airflow_api.task_states(world.dag_id, second)
    consumers = airflow_api.xcom(world.dag_id, second, f"canary_consumers.{layout.consumer_fleet}", key="switch")
    producers = airflow_api.xcom(world.dag_id, second, f"canary_producers.{layout.producer_fleet}", key="switch")
    assert consumers["kept"] and consumers["moved"] == dict.fromkeys(layout.consumer_groups, 0.5), consumers
    assert producers["kept"] and producers["moved"] == {layout.producer_group: 1.0}, producers
    fence = airflow_api.xcom(world.dag_id, second, "fence_source")
    assert fence["carried_over"] and fence["before"] == {source.spec.broker_name: {layout.topic: 6}}, fence
    assert set(world.clusters_of("producer").values()) == set(world.clusters_of("consumer").values()) == {TARGET}
    world.fleet.stop(("producer",))
    result = world.fleet.wait_until_received(timeout=120)
    assert result["sent"] > 100 and result["lost"] == 0, result


def test_a_canary_that_would_take_a_groups_only_consumer_off_the_source_is_refused(lone_world, airflow_api):
    """Each group has one consumer, so a 50% canary moves all of it. The gate shows the refusal
    and the switch moves nobody. The negative control, by hand: the same move leaves the source
    with no consumer while every producer still writes there, and the backlog only grows."""
    world, layout = lone_world, lone_world.layout
    run_id, _ = _run_approving(world, airflow_api, GATES[:1])
    body = airflow_api.wait_for_gate(world.dag_id, run_id, "approve_canary_consumers", timeout=300)["body"]
    assert "| **refuses** | a canary of 0.5 leaves a consumer of each of 2 group(s)" in body, body
    assert "too small for a canary" in body
    airflow_api.answer(world.dag_id, run_id, "approve_canary_consumers", "Approve")
    assert airflow_api.wait_for_run(world.dag_id, run_id, timeout=300) == "failed"
    switch = f"canary_consumers.{layout.consumer_fleet}"
    assert airflow_api.task_states(world.dag_id, run_id)[switch] == "failed"
    [refused] = airflow_api.xcom(world.dag_id, run_id, switch, key="refused")
    assert refused["figures"]["left"] == dict.fromkeys(layout.consumer_groups, 0), refused
    assert set(world.clusters_of("consumer").values()) == {SOURCE}  # nobody moved

    world.put(layout.consumer_fleet, layout.consumer_groups, 0.5, TARGET)  # the same canary, by hand
    _wait(lambda: all(_online(world.source, g) == 0 for g in layout.consumer_groups), 120,
          "the only consumers gone from the source")
    first = _backlog(world.source, layout.consumer_groups)
    time.sleep(10)
    later = _backlog(world.source, layout.consumer_groups)
    assert later > first, (first, later)  # producers write where nobody reads any more


def _backlog(cluster, groups: list[str]) -> int:
    async def run():
        async with ClusterAdmin(cluster.namesrv) as admin:
            return (await measure_backlog(admin, groups)).total
    return asyncio.run(run())


def test_the_source_topics_are_retired_at_the_last_gate_once_nothing_can_bring_them_back(retiring_world, airflow_api):
    """retire_source: the last gate shows what the deletion checks, measured as it opens. The demo
    brokers create topics on first send, so the retirement refuses and deletes nothing; the on-call
    turns auto-create off with mqadmin and clears the task: the topic is gone from the source, the
    fleet lost nothing, and the report records the deletion."""
    world = retiring_world
    topic, source = world.layout.topic, world.source
    run_id, _ = _run_approving(world, airflow_api, GATES)
    body = airflow_api.wait_for_gate(world.dag_id, run_id, "approve_retire_source", timeout=600)["body"]
    assert "cannot be undone" in body and "| holds | no group reads the topics" in body, body
    assert "| **refuses** | no broker creates topics on first send" in body, body
    airflow_api.answer(world.dag_id, run_id, "approve_retire_source", "Approve")
    assert airflow_api.wait_for_run(world.dag_id, run_id, timeout=300) == "failed"
    assert airflow_api.task_states(world.dag_id, run_id)["retire_source"] == "failed"
    refused = airflow_api.xcom(world.dag_id, run_id, "retire_source", key="refused")
    assert [o["figures"] for o in refused] == [{"auto_create": [source.spec.broker_name]}], refused
    assert set(_perms(source, topic).values()) == {4}  # still there, still fenced

    with auto_create(source.spec, False):
        airflow_api.clear(world.dag_id, run_id, ["retire_source"])
        assert airflow_api.wait_for_run(world.dag_id, run_id, timeout=300) == "success", \
            airflow_api.task_states(world.dag_id, run_id)
    listed = harness.mqadmin(source.spec, ["topicList"])
    assert listed.returncode == 0 and topic not in listed.stdout.split(), listed.stdout[-2000:]
    report = airflow_api.xcom(world.dag_id, run_id, "report")
    assert report["retired"]["retired"] == [topic] and report["retired"]["by"] == "admin"
    held = report["retired"]["held"]  # what the broker had, for the record: fenced, read-only
    assert list(held) == [source.spec.broker_name] and held[source.spec.broker_name][topic]["perm"] == 4, held
    assert "approve_retire_source" in [a["gate"] for a in report["approvals"]]
    world.fleet.stop(("producer",))
    result = world.fleet.wait_until_received(timeout=120)
    assert result["sent"] > 100 and result["lost"] == 0, result
