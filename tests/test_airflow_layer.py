"""Sensors, triggers and the fleet switch, run by Airflow (dag.test) against the real clusters."""

from __future__ import annotations

import json
import threading
import time

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.models.variable import Variable
from rocketmq.client import Message, Producer, PushConsumer

from conftest import TEST_DAGS
from http_recorder import RecordingServer
from rocketmq_core.model import TopicConfig
from rocketmq_harness import clusters as harness
from rocketmq_provider.hooks.rocketmq import RocketMQHook
from rocketmq_provider.templating import broker_record_key
from cluster_side import send_routed, shutdown_within

SWITCH_GUARD_GROUP = "PROBE_SWITCH_GUARD"


@pytest.fixture(scope="module")
def bag(airflow_env) -> DagBag:
    bag = DagBag(dag_folder=str(TEST_DAGS))
    assert bag.import_errors == {}
    return bag


def run_dag(bag: DagBag, dag_id: str, **conf):
    """Run one DAG, parsed afresh: dag.test() renders templates onto the parsed operators."""
    run = DagBag(dag_folder=str(TEST_DAGS)).get_dag(dag_id).test(run_conf=conf)
    return run, {ti.task_id: ti for ti in run.get_task_instances()}


def create_topic(cluster, topic: str) -> None:
    RocketMQHook(f"rocketmq_{cluster.name}").run(
        lambda admin: admin.create_topic(cluster.broker, TopicConfig(topic, 4, 4)))


class Consumer:
    """A real push consumer kept online for the duration of a with-block."""

    def __init__(self, namesrv: str, group: str, topic: str):
        self.consumer = PushConsumer(group)
        self.consumer.set_namesrv_addr(namesrv)
        self.consumer.subscribe(topic, lambda msg: None)

    def __enter__(self):
        self.consumer.start()
        return self

    def __exit__(self, *exc):
        shutdown_within(self.consumer)


def wait_online(cluster, group: str, expected: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = RocketMQHook(f"rocketmq_{cluster.name}").run(lambda a: a.consumer_connection(cluster.broker, group))
        if conn.online == expected:
            return
        time.sleep(0.5)
    raise AssertionError(f"{group} never had {expected} consumer(s) online")


def test_clients_online_sensor_sees_a_live_consumer(bag, rmq_clusters, names):
    target = rmq_clusters["target"]
    topic, group = names.topic(), names.group()
    create_topic(target, topic)
    with Consumer(target.namesrv, group, topic):
        wait_online(target, group, 1)
        run, tis = run_dag(bag, "probe_clients_at_least_one", conn_id="rocketmq_target", groups=[group])
    assert run.state == "success"
    observations = tis["clients"].xcom_pull(task_ids="clients", key="observations")
    # one check, in the task: it held at once, so nothing went to the triggerer
    assert observations == [observations[-1]] and observations[-1]["figures"]["clients"] == {group: 1}


def test_clients_online_sensor_fails_when_nobody_comes(bag, names):
    run, tis = run_dag(bag, "probe_clients_at_least_one", conn_id="rocketmq_target", groups=[names.group()])
    assert run.state == "failed"
    observations = tis["clients"].xcom_pull(task_ids="clients", key="observations")
    # the task's own check did not hold, so it deferred: the trigger's checks follow it
    assert len(observations) > 1 and not any(o["satisfied"] for o in observations)


def test_poke_mode_sensor_records_every_check(bag, rmq_clusters, names):
    source = rmq_clusters["source"]
    topic, group = names.topic(), names.group()
    create_topic(source, topic)
    with Consumer(source.namesrv, group, topic):
        wait_online(source, group, 1)
        run, tis = run_dag(bag, "probe_clients_poke_mode", conn_id="rocketmq_source", groups=[group])
    assert run.state == "success"
    observations = tis["clients"].xcom_pull(task_ids="clients", key="observations")
    assert observations[-1]["satisfied"] and observations[-1]["figures"]["clients"] == {group: 1}


LAYER_PROBE = harness.ClusterSpec("layer-probe", harness.TARGET_VERSION, 17876, 18911)


@pytest.fixture
def private_cluster(monkeypatch):
    """A cluster of its own, so a test can kill its broker without hurting others."""
    spec = LAYER_PROBE
    cluster = harness.start(spec)
    monkeypatch.setenv("AIRFLOW_CONN_ROCKETMQ_PRIVATE",
                       json.dumps({"conn_type": "rocketmq", "host": "127.0.0.1", "port": spec.namesrv_port}))
    yield cluster
    harness.stop(spec)


def test_sensor_never_passes_while_its_broker_is_down(bag, private_cluster, names):
    """'Exactly 0 consumers' would pass if a dead broker counted as 'no clients'; it must not."""
    topic, group = names.topic(), names.group()
    RocketMQHook("rocketmq_private").run(lambda a: a.create_topic(private_cluster.broker, TopicConfig(topic, 2, 2)))
    consumer = Consumer(private_cluster.namesrv, group, topic).__enter__()
    try:
        deadline = time.monotonic() + 30
        while RocketMQHook("rocketmq_private").run(
                lambda a: a.consumer_connection(private_cluster.broker, group)).online != 1:
            assert time.monotonic() < deadline, "consumer never came online"
            time.sleep(0.5)
        killer = threading.Timer(3, lambda: harness.stop(private_cluster.spec, roles=("broker",)))
        killer.start()
        run, tis = run_dag(bag, "probe_clients_none_while_broker_dies", conn_id="rocketmq_private", groups=[group])
        killer.join()
    finally:
        consumer.__exit__()
    assert run.state == "failed"
    observations = tis["clients"].xcom_pull(task_ids="clients", key="observations")
    assert observations[0]["figures"]["clients"] == {group: 1}
    assert any("could not measure" in o["summary"] for o in observations)
    assert not any(a["satisfied"] and b["satisfied"] for a, b in zip(observations, observations[1:]))


def test_writes_stopped_sensor_waits_for_quiet_topic(bag, rmq_clusters, names):
    source = rmq_clusters["source"]
    topic = names.topic()
    create_topic(source, topic)
    producer = Producer(names.group("p"))
    producer.set_namesrv_addr(source.namesrv)
    producer.start()
    stop_at = time.monotonic() + 4
    sent = []
    last_write = []

    def produce():
        while time.monotonic() < stop_at:
            msg = Message(topic)
            msg.set_body(b"x")
            sent.append(send_routed(producer, msg).msg_id)
            last_write.append(time.time())
            time.sleep(0.2)

    writer = threading.Thread(target=produce)
    writer.start()
    try:
        run, tis = run_dag(bag, "probe_writes_stopped", conn_id="rocketmq_source", topics=[topic])
    finally:
        writer.join()
        producer.shutdown()
    assert run.state == "success"
    observations = tis["writes_stopped"].xcom_pull(task_ids="writes_stopped", key="observations")
    assert observations[-1]["figures"]["max_offsets"][topic] == len(sent)
    assert observations[-1]["at"] >= last_write[-1] + 3, "passed before the topic was quiet for the window"
    assert not observations[0]["satisfied"]


@pytest.fixture
def switch_api(monkeypatch):
    """A config center standing in for the fleet's: records switches, fails on /broken."""
    api = RecordingServer({"/broken": (500, b"config center says: fleet lock held by deploy 4711")})
    monkeypatch.setenv("AIRFLOW_CONN_SWITCH_API", json.dumps(api.connection()))
    yield api
    api.close()


def test_switch_refuses_when_precondition_fails_and_calls_nothing(bag, switch_api):
    run, tis = run_dag(bag, "probe_switch")
    assert run.state == "failed"
    assert switch_api.requests == []


def test_switch_acts_when_precondition_holds(bag, rmq_clusters, switch_api, names):
    target = rmq_clusters["target"]
    topic = names.topic()
    create_topic(target, topic)
    with Consumer(target.namesrv, SWITCH_GUARD_GROUP, topic):
        wait_online(target, SWITCH_GUARD_GROUP, 1)
        run, tis = run_dag(bag, "probe_switch")
    assert run.state == "success"
    assert switch_api.requests == [("/switch", {"fleet": "probe", "role": "producer", "groups": ["PROBE_PRODUCERS"],
                                                "share": 0.5, "cluster": "target"})]
    recorded = tis["switch"].xcom_pull(task_ids="switch", key="switch")
    assert recorded["status_code"] == 200


def test_config_center_switch_sends_form_fields_with_the_target_name_servers(bag, rmq_clusters, switch_api):
    run, _ = run_dag(bag, "probe_switch_config_center")
    assert run.state == "success"
    assert switch_api.requests == [("/nacos/v1/cs/configs", {
        "dataId": "orders-producers.properties", "group": "DEFAULT_GROUP",
        "content": f"rocketmq.namesrv.addr={rmq_clusters['target'].namesrv}"})]


def test_failed_http_switch_fails_the_task_and_shows_the_answer(bag, rmq_clusters, switch_api, names, capfd):
    target = rmq_clusters["target"]
    topic = names.topic()
    create_topic(target, topic)
    with Consumer(target.namesrv, SWITCH_GUARD_GROUP, topic):
        wait_online(target, SWITCH_GUARD_GROUP, 1)
        run, tis = run_dag(bag, "probe_switch", endpoint="/broken")
    assert run.state == "failed"
    assert [path for path, _ in switch_api.requests] == ["/broken"]
    assert "fleet lock held by deploy 4711" in capfd.readouterr().out


def test_override_reason_lets_a_switch_past_a_failed_precondition(bag, switch_api):
    run, tis = run_dag(bag, "probe_switch", override_reason="INC-42: target verified by hand")
    assert run.state == "success"
    override = tis["switch"].xcom_pull(task_ids="switch", key="override")
    assert override["reason"] == "INC-42: target verified by hand"
    assert len(switch_api.requests) == 1


def test_switch_refuses_when_a_broker_of_the_run_is_gone(bag, ha_clusters, switch_api, monkeypatch, capfd):
    """The name server forgets a stopped master; the switch's live check still knows the run's
    broker set, so the figures of the missing broker are unknown and nothing is switched."""
    spec = ha_clusters["source-ha"].spec
    monkeypatch.setenv("AIRFLOW_CONN_ROCKETMQ_SOURCE_HA", json.dumps(
        {"conn_type": "rocketmq", "host": "127.0.0.1", "port": spec.namesrv_port}))
    b0, b1 = spec.master_addrs
    run_set = {"rocketmq_source_ha": [b0, b1]}
    run, _ = run_dag(bag, "probe_switch_run_brokers", broker_sets=run_set)
    assert run.state == "success" and len(switch_api.requests) == 1  # every broker there: it acts
    stopped = next(b for b in spec.brokers if b.name == b1)
    try:
        harness.stop(spec, roles=(stopped.role,))
        deadline = time.monotonic() + 60
        while b1 in {b.name for b in RocketMQHook("rocketmq_source_ha").run(lambda a: a.brokers())}:
            assert time.monotonic() < deadline, f"{b1} still registered"
            time.sleep(0.5)
        capfd.readouterr()
        run, _ = run_dag(bag, "probe_switch_run_brokers", broker_sets=run_set)
        assert run.state == "failed" and len(switch_api.requests) == 1
        out = capfd.readouterr()
        assert f"{b1} expected" in out.out + out.err and "not switching" in out.out + out.err
        # Without the run's set the same switch sees one broker with nobody on it, and acts.
        run, _ = run_dag(bag, "probe_switch_run_brokers", broker_sets={})
        assert run.state == "success" and len(switch_api.requests) == 2
    finally:
        harness.start(spec, timeout=180)


def test_a_broker_seen_after_the_preflight_joins_the_runs_broker_set(bag, ha_clusters, monkeypatch):
    """The preflight saw one master; a later step's check saw a second one (added since). When
    that broker then drops out, the next step's check misses it and refuses as unknown, instead of
    counting the broker that is left, even once the first check's XCom is gone (clearing that
    task takes it: the run's record keeps the set grown). The negative control binds the second
    check to the preflight's set: it passes over the one broker left, blind to what the other held."""
    spec = ha_clusters["source-ha"].spec
    monkeypatch.setenv("AIRFLOW_CONN_ROCKETMQ_SOURCE_HA", json.dumps(
        {"conn_type": "rocketmq", "host": "127.0.0.1", "port": spec.namesrv_port}))
    b0, b1 = sorted(spec.master_addrs)
    preflight = {"rocketmq_source_ha": [b0]}
    try:
        for grow, expected in ((True, "failed"), (False, "success")):
            harness.start(spec, timeout=180)
            run, tis = run_dag(bag, "probe_broker_joins", broker_sets=preflight, grow=grow, forget=grow)
            seen = tis["first_check"].xcom_pull(task_ids="first_check", key="brokers_seen")
            assert seen == (None if grow else {"rocketmq_source_ha": [b0, b1]}), seen
            record = json.loads(Variable.get(broker_record_key("probe_broker_joins")))
            assert record == {"run_id": run.run_id, "sets": {"rocketmq_source_ha": [b0, b1]}}, record
            assert tis["stop_b1"].state == "success"
            assert (run.state, tis["second_check"].state) == (expected, expected), (grow, run.state)
            last = tis["second_check"].xcom_pull(task_ids="second_check", key="observations")[-1]
            if grow:
                assert f"{b1} expected" in last["summary"] and not last["satisfied"], last
            else:
                assert last["satisfied"] and last["brokers_seen"] == [b0], last
    finally:
        harness.start(spec, timeout=180)


def test_secrets_never_reach_logs_or_xcom(bag, acl_clusters, monkeypatch, capfd):
    cluster = acl_clusters["source-acl"]
    secret = cluster.credentials.secret_key
    monkeypatch.setenv("AIRFLOW_CONN_ROCKETMQ_SOURCE_ACL", json.dumps({
        "conn_type": "rocketmq", "host": "127.0.0.1", "port": cluster.spec.namesrv_port,
        "login": cluster.credentials.access_key, "password": secret}))
    run, tis = run_dag(bag, "probe_secrets", conn_id="rocketmq_source_acl", groups=["G_nobody"])
    assert run.state == "success"
    assert tis["brokers"].xcom_pull(task_ids="brokers") == ["source-acl-b0"]
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        values = [row.value for row in session.query(XComModel).filter(
            XComModel.dag_id == "probe_secrets", XComModel.run_id == run.run_id)]
    assert values, "the run pushed no XCom to inspect"
    assert all(secret not in json.dumps(v, default=str) for v in values)
    captured = capfd.readouterr()
    assert "probe_secrets" in captured.out + captured.err, "the task output was not captured"
    assert secret not in captured.out + captured.err
    logs = [p.read_text(errors="replace") for p in (TEST_DAGS.parent / "logs").rglob("*") if p.is_file()
            and "probe_secrets" in str(p)]
    assert all(secret not in text for text in logs)


def test_metadata_sync_dry_run_changes_nothing_then_sync_converges_and_reruns_clean(bag, rmq_clusters, names):
    source = rmq_clusters["source"]
    topic, group = names.topic(), names.group()
    RocketMQHook("rocketmq_source").run(lambda a: a.create_topic(source.broker, TopicConfig(topic, 3, 3)))
    from rocketmq_core.model import GroupConfig

    RocketMQHook("rocketmq_source").run(
        lambda a: a.create_group(source.broker, GroupConfig(group, retry_max_times=5, broadcast=False)))
    scope = {"topics": [topic], "groups": [group]}

    run, tis = run_dag(bag, "probe_metadata", scope=scope, dry_run=True)
    assert run.state == "success"
    diff = tis["diff"].xcom_pull(task_ids="diff")
    assert diff["counts"] == {"create": 2, "update": 0, "delete": 0} and topic in diff["text"]
    assert tis["sync"].xcom_pull(task_ids="sync")["applied"] is False
    target_topics = RocketMQHook("rocketmq_target").run(lambda a: a.topic_configs(rmq_clusters["target"].broker))
    assert topic not in target_topics

    run, tis = run_dag(bag, "probe_metadata", scope=scope, dry_run=False)
    assert run.state == "success"
    report = tis["sync"].xcom_pull(task_ids="sync")
    assert report["applied"] is True and report["after"]["empty"] is True
    target = rmq_clusters["target"]
    assert RocketMQHook("rocketmq_target").run(lambda a: a.topic_configs(target.broker))[topic].read_queues == 3
    assert RocketMQHook("rocketmq_target").run(lambda a: a.group_configs(target.broker))[group].retry_max_times == 5

    run, tis = run_dag(bag, "probe_metadata", scope=scope, dry_run=False)  # a re-run converges: nothing to do
    assert run.state == "success"
    assert tis["sync"].xcom_pull(task_ids="sync")["plan"]["actions"] == []


def test_metadata_diff_can_fail_on_drift(bag, rmq_clusters, names):
    source = rmq_clusters["source"]
    topic = names.topic()
    RocketMQHook("rocketmq_source").run(lambda a: a.create_topic(source.broker, TopicConfig(topic, 2, 2)))
    run, tis = run_dag(bag, "probe_metadata_drift", scope={"topics": [topic], "groups": ["none"]})
    assert run.state == "failed"
    assert tis["diff"].xcom_pull(task_ids="diff")["counts"]["create"] == 1


def test_sensors_refuse_reschedule_mode_at_parse_time():
    """A reschedule is a new process for every poke: a streak of stable checks (and a check's
    memory of brokers and offsets) would start from nothing each time and could never pass."""
    from rocketmq_provider.sensors.rocketmq import BacklogZeroSensor, ClientsOnlineSensor

    with pytest.raises(ValueError, match="keeps its streak"):
        BacklogZeroSensor(task_id="drained", rocketmq_conn_id="rocketmq_source", groups=["G"], mode="reschedule",
                          deferrable=False)
    with pytest.raises(ValueError, match="keeps its streak"):
        ClientsOnlineSensor(task_id="online", rocketmq_conn_id="rocketmq_source", groups=["G"], mode="reschedule",
                            deferrable=False)


def test_connection_cluster_name_scopes_every_operation(airflow_env, rmq_clusters, monkeypatch):
    """A connection's cluster_name limits the admin to that cluster's brokers: one naming a
    cluster the name server does not serve acts on nothing and says so."""
    from rocketmq_core.backlog import measure_backlog
    from rocketmq_core.errors import BrokerUnavailable

    port = rmq_clusters["source"].spec.namesrv_port
    for conn_id, cluster_name in (("ROCKETMQ_SCOPED", "source"), ("ROCKETMQ_ELSEWHERE", "another-cluster")):
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id}", json.dumps({
            "conn_type": "rocketmq", "host": "127.0.0.1", "port": port, "extra": {"cluster_name": cluster_name}}))
    assert [b.name for b in RocketMQHook("rocketmq_scoped").run(lambda a: a.brokers())] == ["source-b0"]
    elsewhere = RocketMQHook("rocketmq_elsewhere")
    assert elsewhere.run(lambda a: a.brokers()) == []
    assert elsewhere.test_connection() == (False, f"no broker of cluster 'another-cluster' is registered at"
                                                  f" 127.0.0.1:{port}")
    with pytest.raises(BrokerUnavailable, match="no master broker"):
        elsewhere.run(lambda a: measure_backlog(a, ["G_any"]))


def test_a_fence_on_an_acl_source_is_refused_by_the_broker_and_outlives_its_run(bag, acl_clusters, names,
                                                                                monkeypatch):
    """A second fence finds the first standing: what it records to restore is the topic's own
    permission and each account's own entry, not the fence's. On a source with plain ACL on, a
    fleet account's send to the fenced topic is refused by the broker. A later run that never
    fenced lifts it from the record (a roll back before its own fence), and drops the record."""
    from airflow.models import Variable  # the metadata database's, outside a task
    from rocketmq_core.acl import PlainAccount, plain_accounts, put_plain_account

    cluster = acl_clusters["source-acl"]
    broker, addr = next(iter(cluster.spec.master_addrs.items()))
    topic = names.topic()
    account = PlainAccount(f"probe{names.topic()[-8:]}", "probe-secret-1", default_topic_perm="PUB|SUB",
                           default_group_perm="PUB|SUB", topic_perms=(f"{topic}=PUB|SUB",))
    for conn_id, login, password in (("ROCKETMQ_SOURCE_ACL", cluster.credentials.access_key,
                                      cluster.credentials.secret_key),
                                     ("ROCKETMQ_PROBE_FLEET", account.access_key, account.secret_key)):
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id}", json.dumps({
            "conn_type": "rocketmq", "host": "127.0.0.1", "port": cluster.spec.namesrv_port,
            "login": login, "password": password}))
    Variable.delete("rmq_migration_fence__probe")

    async def prepare(admin):
        await admin.create_topic(addr, TopicConfig(topic, 1, 1))
        await put_plain_account(admin, addr, account)
    hook = RocketMQHook("rocketmq_source_acl")
    hook.run(prepare)
    run, tis = run_dag(bag, "probe_fence_twice", topics=[topic])
    assert run.state == "success"
    first, again = (tis[t].xcom_pull(task_ids=t) for t in ("fence_first", "fence_again"))
    assert not first["carried_over"] and again["carried_over"]
    assert again["before"] == first["before"] == {broker: {topic: 6}}, again  # not the first fence's 4
    assert again["acl_before"][broker][account.access_key] == {topic: "PUB|SUB"}, again["acl_before"]
    assert again["acl_unstoppable"] == {broker: [harness.ADMIN_ACCESS_KEY]}
    refused = tis["send_fenced"].xcom_pull(task_ids="send_fenced")
    assert refused.startswith("denied: ") and "AclException" in refused, refused
    assert Variable.get("rmq_migration_fence__probe", deserialize_json=True)["perms"] == {broker: {topic: 6}}

    run, tis = run_dag(bag, "probe_lift_on_record")
    assert run.state == "success"
    lifted = tis["lift"].xcom_pull(task_ids="lift")
    assert lifted["restored"] == {broker: [topic]} and account.access_key in lifted["acl_restored"][broker]
    assert hook.run(lambda admin: admin.topic_configs(addr))[topic].perm == 6
    own = hook.run(lambda admin: plain_accounts(admin, addr))[account.access_key]
    assert own.topic_perms == (f"{topic}=PUB|SUB",)
    assert Variable.get("rmq_migration_fence__probe", default_var=None) is None
