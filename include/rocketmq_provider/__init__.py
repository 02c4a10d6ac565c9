"""Airflow provider for moving RocketMQ workloads between clusters: a thin layer over rocketmq_core."""
