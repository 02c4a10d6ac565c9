"""Airflow plugin: the RocketMQ progress report as a tab on every DAG run page."""

from airflow.plugins_manager import AirflowPlugin

from rocketmq_provider.ui import app


class RocketMQReportsPlugin(AirflowPlugin):
    name = "rocketmq_reports"
    fastapi_apps = [{"app": app, "url_prefix": "/rocketmq", "name": "RocketMQ reports"}]
    external_views = [{
        "name": "Migration report",
        "href": "/rocketmq/reports/{DAG_ID}/{RUN_ID}",
        "destination": "dag_run",
        "url_route": "rocketmq-report",
    }]
