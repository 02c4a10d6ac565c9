"""Local RocketMQ clusters for tests and the demo; see clusters.py."""
