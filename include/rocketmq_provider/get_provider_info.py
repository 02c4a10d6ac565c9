"""Provider metadata Airflow reads through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations


def get_provider_info() -> dict:
    return {
        "package-name": "rocketmq-airflow-migration",
        "name": "RocketMQ migration and replication",
        "description": "Seamless RocketMQ cluster migration and cross-cluster replication.",
        "versions": ["0.1.0"],
        "integrations": [{"integration-name": "RocketMQ", "tags": ["software"],
                          "external-doc-url": "https://rocketmq.apache.org/"}],
        "hooks": [{"integration-name": "RocketMQ", "python-modules": ["rocketmq_provider.hooks.rocketmq"]}],
        "operators": [{"integration-name": "RocketMQ", "python-modules": [
            "rocketmq_provider.operators.approval", "rocketmq_provider.operators.fleet",
            "rocketmq_provider.operators.metadata", "rocketmq_provider.operators.migration"]}],
        "sensors": [{"integration-name": "RocketMQ", "python-modules": ["rocketmq_provider.sensors.rocketmq"]}],
        "triggers": [{"integration-name": "RocketMQ", "python-modules": ["rocketmq_provider.triggers.rocketmq"]}],
        "connection-types": [
            {
                "hook-class-name": "rocketmq_provider.hooks.rocketmq.RocketMQHook",
                "hook-name": "RocketMQ",
                "connection-type": "rocketmq",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "extra"],
                    "relabeling": {"host": "Name server host", "port": "Name server port",
                                   "login": "Access key", "password": "Secret key"},
                    "placeholders": {"host": "127.0.0.1", "port": "9876"},
                },
                "conn-fields": {
                    "namesrv_addrs": {
                        "label": "Name server list",
                        "description": "host:port;host:port — overrides host and port when set.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "cluster_name": {
                        "label": "Cluster name",
                        "description": "Broker cluster to act on when the name servers serve several.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "timeout": {
                        "label": "Request timeout (seconds)",
                        "schema": {"type": ["number", "null"], "default": 5},
                    },
                },
            }
        ],
    }
