"""On-demand health check of the RocketMQ clusters this Airflow knows: brokers and versions.

Every migration starts by asking the same question, so the check is its own DAG too: trigger it
with the connection ids to look at (the trigger form lists the demo's two by default).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task

from rocketmq_provider.hooks.rocketmq import RocketMQHook


@dag(
    dag_id="rocketmq_cluster_health",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["rocketmq"],
    params={"conn_ids": Param(["rocketmq_source", "rocketmq_target"], type="array",
                              title="RocketMQ connection ids")},
)
def rocketmq_cluster_health():
    @task
    def conn_ids(params: dict | None = None) -> list[str]:
        return list(params["conn_ids"])

    @task
    def describe(conn_id: str) -> dict:
        async def _describe(admin):
            brokers = await admin.brokers()
            versions = {}
            for broker in brokers:
                if broker.master:
                    info = await admin.broker_runtime_info(broker.master)
                    versions[broker.name] = info.get("brokerVersionDesc", "unknown")
            return {"conn_id": conn_id, "brokers": [b.name for b in brokers], "versions": versions}

        report = RocketMQHook(conn_id).run(_describe)
        if not report["brokers"]:
            raise RuntimeError(f"{conn_id}: the name servers list no broker")
        print(f"{conn_id}: {report['versions']}")
        return report

    describe.expand(conn_id=conn_ids())


rocketmq_cluster_health()
