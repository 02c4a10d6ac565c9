"""The harness is real: messages flow through each cluster, mqadmin sees what we create,
authentication rejects wrong credentials, and the DAG folder imports cleanly."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from rocketmq.client import Message, Producer, PushConsumer

from rocketmq_core.errors import AccessDenied, ConnectionFailed
from rocketmq_core.remoting.client import Credentials, RemotingClient
from rocketmq_core.remoting.protocol import RequestCode
from rocketmq_harness import airflow_standalone
from rocketmq_harness import clusters as harness
from cluster_side import send_routed, shutdown_within


def _create_topic(addr: str, topic: str, credentials: Credentials | None = None) -> None:
    async def _run():
        async with RemotingClient(credentials) as client:
            await client.invoke(addr, RequestCode.UPDATE_AND_CREATE_TOPIC, {
                "topic": topic, "defaultTopic": "TBW102", "readQueueNums": 4, "writeQueueNums": 4,
                "perm": 6, "topicFilterType": "SINGLE_TAG", "topicSysFlag": 0, "order": "false"})
    asyncio.run(_run())


def test_message_sent_through_each_cluster_is_received(cluster, names):
    topic, group = names.topic(), names.group()
    created = harness.mqadmin(cluster.spec, ["updateTopic", "-c", cluster.name, "-t", topic])
    assert created.returncode == 0, created.stdout + created.stderr
    received: list[str] = []
    consumer = PushConsumer(group)
    consumer.set_namesrv_addr(cluster.namesrv)
    consumer.subscribe(topic, lambda msg: received.append(msg.id))
    consumer.start()
    producer = Producer(names.group("producer"))
    producer.set_namesrv_addr(cluster.namesrv)
    producer.start()
    try:
        sent = []
        for i in range(20):
            msg = Message(topic)
            msg.set_body(f"payload {i}".encode())
            msg.set_keys(f"k{i}")
            sent.append(send_routed(producer, msg).msg_id)
        deadline = time.monotonic() + 60
        while len(set(received)) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        producer.shutdown()
        shutdown_within(consumer)
    assert sorted(set(received)) == sorted(sent)


def test_mqadmin_topic_list_shows_topic_we_created(cluster, names):
    topic = names.topic()
    _create_topic(cluster.broker, topic)
    listed = harness.mqadmin(cluster.spec, ["topicList"])
    assert listed.returncode == 0, listed.stderr
    assert topic in listed.stdout.split()


@pytest.mark.parametrize("name", ["source-acl", "target-acl"])
def test_authentication_rejects_wrong_credentials(acl_clusters, names, name):
    cluster = acl_clusters[name]
    denied = names.topic("denied")
    with pytest.raises(AccessDenied):
        _create_topic(cluster.broker, denied, Credentials(cluster.credentials.access_key, "wrong-secret"))
    with pytest.raises(AccessDenied):
        _create_topic(cluster.broker, denied)
    allowed = names.topic("allowed")
    _create_topic(cluster.broker, allowed, cluster.credentials)
    listed = harness.mqadmin(cluster.spec, ["topicList"]).stdout.split()
    assert allowed in listed
    assert denied not in listed


def test_unreachable_address_is_a_typed_error():
    async def _run():
        async with RemotingClient(connect_timeout=1) as client:
            await client.invoke("127.0.0.1:1", RequestCode.GET_BROKER_CLUSTER_INFO)
    with pytest.raises(ConnectionFailed, match="127.0.0.1:1"):
        asyncio.run(_run())


def test_every_cluster_port_is_distinct_and_outside_the_ephemeral_range():
    """A port in the kernel's ephemeral range can be taken by any client socket's local end, and
    then the broker fails with BindException at start: that broke one CI run."""
    import test_airflow_layer
    import test_remoting
    import test_replication
    from benchmarks import _common

    specs = [*harness.CLUSTERS.values(), test_remoting.RESTART_PROBE, test_airflow_layer.LAYER_PROBE,
             test_replication.REPL_A, test_replication.REPL_B, _common.BENCH_SOURCE, _common.BENCH_TARGET,
             _common.BENCH_REPL_SOURCE, _common.BENCH_REPL_TARGET]
    low, high = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    ports = [port for spec in specs for port in spec.ports]
    assert len(ports) == len(set(ports)), sorted(p for p in ports if ports.count(p) > 1)
    inside = {spec.name: [p for p in spec.ports if low <= p <= high] for spec in specs}
    assert not any(inside.values()), {name: p for name, p in inside.items() if p}


def test_an_airflow_port_held_by_another_process_is_refused_before_anything_starts(tmp_path):
    """A server left on the port by another run would answer the health check in place of ours
    (its api-server then fails to bind, unseen): one CI run's gates went to a stale Airflow."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        spec = airflow_standalone.StandaloneSpec(tmp_path / "home", port, tmp_path / "dags", tmp_path / "specs")
        with pytest.raises(RuntimeError, match=f"port {port} is taken by a process this harness did not start"):
            airflow_standalone.start(spec)
    assert not (tmp_path / "home" / "airflow.db").exists() and airflow_standalone.recorded_pid(spec) is None
