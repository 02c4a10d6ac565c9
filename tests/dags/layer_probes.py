"""Probe DAGs for the Airflow-layer tests: one operator or sensor each, driven by params."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, task

from rocketmq_core.checks import ClientsOnline
from rocketmq_core.migration import SOURCE, TARGET, Condition
from rocketmq_provider.hooks.rocketmq import RocketMQHook
from rocketmq_provider.operators.fleet import FleetSwitchOperator, HttpSwitcher, ManualSwitcher
from rocketmq_provider.operators.metadata import MetadataDiffOperator, MetadataSyncOperator
from rocketmq_provider.operators.migration import FenceSourceOperator, LiftFenceOperator
from rocketmq_provider.sensors.rocketmq import ClientsOnlineSensor, SourceWritesStoppedSensor
from rocketmq_provider.templating import run_broker_sets

START = pendulum.datetime(2026, 1, 1, tz="UTC")
SWITCH_GUARD_GROUP = "PROBE_SWITCH_GUARD"
FENCE_RECORD = "rmq_migration_fence__probe"
MANUAL_GROUP = "PROBE_MANUAL_SWITCH"


def _dag(dag_id: str, **params) -> DAG:
    return DAG(dag_id, schedule=None, start_date=START, catchup=False, render_template_as_native_obj=True,
               params=params, tags=["test-probe"])


with _dag("probe_clients_at_least_one", conn_id="rocketmq_target", groups=["none"]):
    ClientsOnlineSensor(task_id="clients", rocketmq_conn_id="{{ params.conn_id }}", groups="{{ params.groups }}",
                        min_clients=1, poke_interval=1, timeout=8)

with _dag("probe_clients_none_while_broker_dies", conn_id="rocketmq_target", groups=["none"]):
    ClientsOnlineSensor(task_id="clients", rocketmq_conn_id="{{ params.conn_id }}", groups="{{ params.groups }}",
                        min_clients=0, max_clients=0, stable_checks=2, poke_interval=1, timeout=15)

with _dag("probe_clients_poke_mode", conn_id="rocketmq_target", groups=["none"]):
    ClientsOnlineSensor(task_id="clients", rocketmq_conn_id="{{ params.conn_id }}", groups="{{ params.groups }}",
                        min_clients=1, deferrable=False, mode="poke", poke_interval=1, timeout=20)

with _dag("probe_writes_stopped", conn_id="rocketmq_target", topics=["none"]):
    SourceWritesStoppedSensor(task_id="writes_stopped", rocketmq_conn_id="{{ params.conn_id }}",
                              topics="{{ params.topics }}", window_seconds=3, poke_interval=1, timeout=30)

with _dag("probe_switch", endpoint="/switch", override_reason=""):
    FleetSwitchOperator(
        task_id="switch", fleet="probe", role="producer", groups=["PROBE_PRODUCERS"], to_cluster="target",
        share=0.5, switcher=HttpSwitcher("switch_api", endpoint="{{ params.endpoint }}", method="POST"),
        preconditions=[Condition(TARGET, ClientsOnline([SWITCH_GUARD_GROUP], min_clients=1))],
        connections={TARGET: "rocketmq_target"},
        override_reason="{{ params.override_reason }}",
    )

with _dag("probe_switch_config_center"):
    # The README's worked example: a Nacos-style config publish, form fields, the target's name servers.
    FleetSwitchOperator(
        task_id="switch", fleet="orders", role="producer", groups=["PROBE_PRODUCERS"], to_cluster="rocketmq_target",
        switcher=HttpSwitcher("switch_api", endpoint="/nacos/v1/cs/configs", content_type="form", body={
            "dataId": "orders-{{ task.switch_request.role }}s.properties", "group": "DEFAULT_GROUP",
            "content": "rocketmq.namesrv.addr={{ task.target_namesrv }}"}),
    )

with _dag("probe_switch_run_brokers", broker_sets={}):
    # Nobody of the group is online: satisfied, unless a broker of the run's set is missing.
    FleetSwitchOperator(
        task_id="switch", fleet="probe", role="consumer", groups=["PROBE_CONSUMERS"], to_cluster="target",
        switcher=HttpSwitcher("switch_api", endpoint="/switch", method="POST"),
        preconditions=[Condition(SOURCE, ClientsOnline([SWITCH_GUARD_GROUP], "producer", 0, 0))],
        connections={SOURCE: "rocketmq_source_ha"},
        broker_sets="{{ params.broker_sets }}",
    )

with _dag("probe_secrets", conn_id="rocketmq_source_acl", groups=["none"]):
    sensor = ClientsOnlineSensor(task_id="clients", rocketmq_conn_id="{{ params.conn_id }}",
                                 groups="{{ params.groups }}", min_clients=0, poke_interval=1, timeout=20)

    @task
    def brokers(params: dict | None = None) -> list[str]:
        return [b.name for b in RocketMQHook(params["conn_id"]).run(lambda admin: admin.brokers())]

    sensor >> brokers()

with _dag("probe_metadata", scope={"topics": ["none"], "groups": ["none"]}, dry_run=False):
    MetadataDiffOperator(task_id="diff", source_conn_id="rocketmq_source", target_conn_id="rocketmq_target",
                         scope="{{ params.scope }}")
    MetadataSyncOperator(task_id="sync", source_conn_id="rocketmq_source", target_conn_id="rocketmq_target",
                         scope="{{ params.scope }}", dry_run="{{ params.dry_run }}")

with _dag("probe_metadata_drift", scope={"topics": ["none"], "groups": ["none"]}):
    MetadataDiffOperator(task_id="diff", source_conn_id="rocketmq_source", target_conn_id="rocketmq_target",
                         scope="{{ params.scope }}", fail_on_drift=True)

with _dag("probe_fence_twice", topics=["none"]):
    # Two fences, the second finding the first standing; then a send to the fenced topic as the
    # fleet account of the connection rocketmq_probe_fleet, made as a client that ignores the route.
    first = FenceSourceOperator(task_id="fence_first", rocketmq_conn_id="rocketmq_source_acl",
                                topics="{{ params.topics }}", record_key=FENCE_RECORD)
    again = FenceSourceOperator(task_id="fence_again", rocketmq_conn_id="rocketmq_source_acl",
                                topics="{{ params.topics }}", record_key=FENCE_RECORD)

    @task
    def send_fenced(params: dict | None = None) -> str:
        import asyncio
        import time

        from rocketmq_core.admin import ClusterAdmin
        from rocketmq_core.errors import AccessDenied
        from rocketmq_core.replication import codec, remote

        async def go() -> str:
            async with RocketMQHook("rocketmq_probe_fleet").get_endpoint().admin() as admin:
                [broker] = await admin.masters()
                props = codec.encode_properties({"UNIQ_KEY": f"probe-{time.time_ns()}"})
                try:
                    await remote.send_v2(admin.client, broker.master, "PG_probe_fence", params["topics"][0], 0,
                                         b"x", props, int(time.time() * 1000))
                except AccessDenied as exc:
                    return f"denied: {exc}"
                return "stored"
        return asyncio.run(go())

    first >> again >> send_fenced()

with _dag("probe_lift_on_record"):
    # A roll back in a run that never fenced: the fence standing from an earlier run is lifted from its record.
    LiftFenceOperator(task_id="lift", rocketmq_conn_id="rocketmq_source_acl", fence_task_id="fence_source",
                      record_key=FENCE_RECORD)

with _dag("probe_manual_switch"):
    # The move is waited for on the triggerer (dag.test() runs the trigger in-process).
    FleetSwitchOperator(task_id="switch", fleet="f", role="consumer", groups=[MANUAL_GROUP], to_cluster="rocketmq_target",
                        from_cluster="rocketmq_source", switcher=ManualSwitcher("Edit consumers.yaml.", 150, 1))

with DAG("probe_broker_joins", schedule=None, start_date=START, catchup=False, render_template_as_native_obj=True,
         params={"broker_sets": {}, "grow": True, "forget": False},
         user_defined_macros={"run_broker_sets": run_broker_sets}, tags=["test-probe"]):
    # The run's set (params.broker_sets) lacks b1; the first check sees it; b1 then stops (and,
    # with forget, the first check's XCom goes, as clearing that task would take it); the second
    # check, bound to the run's set as it grew (grow) or as the preflight left it, decides.
    RUN_SET = ("{{ run_broker_sets(ti, params.broker_sets)['rocketmq_source_ha'] if params.grow"
               " else params.broker_sets['rocketmq_source_ha'] }}")

    def clients(task_id: str) -> ClientsOnlineSensor:
        return ClientsOnlineSensor(task_id=task_id, rocketmq_conn_id="rocketmq_source_ha", groups=["PROBE_JOINS"],
                                   min_clients=0, brokers=RUN_SET, poke_interval=1, timeout=6)

    @task
    def stop_b1(params=None, ti=None) -> str:
        import time

        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session

        from rocketmq_harness import clusters as harness

        if params["forget"]:
            with create_session() as session:
                session.query(XComModel).filter_by(dag_id=ti.dag_id, run_id=ti.run_id, task_id="first_check").delete()

        spec = harness.CLUSTERS["source-ha"]
        name = sorted(spec.master_addrs)[-1]  # the master without a slave
        harness.stop(spec, roles=(next(b for b in spec.brokers if b.name == name).role,))
        deadline = time.monotonic() + 60
        while name in {b.name for b in RocketMQHook("rocketmq_source_ha").run(lambda a: a.brokers())}:
            assert time.monotonic() < deadline, f"{name} still registered"
            time.sleep(0.5)
        return name

    clients("first_check") >> stop_b1() >> clients("second_check")
