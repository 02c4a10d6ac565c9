"""One cluster as a test reaches it with our own client: create, send, read back, offsets."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from rocketmq.exceptions import ProducerSendSyncFailed

from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.model import TopicConfig
from rocketmq_core.remoting.protocol import RequestCode
from rocketmq_core.remoting.client import Credentials
from rocketmq_core.replication import codec, remote
from rocketmq_core.replication.codec import StoredMessage
from rocketmq_harness import clusters as harness


def wait_for(check: Callable[[], Any], what: str, timeout: float = 60.0, every: float = 0.3) -> Any:
    """Poll until ``check`` returns something truthy; fail naming what was awaited and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last value: {last!r}")


@contextlib.contextmanager
def broker_setting(spec: harness.ClusterSpec, key: str, value: str, restore: str) -> Iterator[None]:
    """A setting of every broker of the cluster, changed with mqadmin for the with-block, then
    put back to ``restore`` (what the harness starts them with)."""
    def put(to: str) -> None:
        result = harness.mqadmin(spec, ["updateBrokerConfig", "-c", spec.name, "-k", key, "-v", to])
        assert result.returncode == 0, result.stdout + result.stderr
    put(value)
    try:
        yield
    finally:
        put(restore)


def auto_create(spec: harness.ClusterSpec, enabled: bool) -> contextlib.AbstractContextManager[None]:
    """``autoCreateTopicEnable`` of every broker of the cluster for the with-block (the harness starts them on)."""
    return broker_setting(spec, "autoCreateTopicEnable", str(enabled).lower(), "true")


def shutdown_within(client: Any, seconds: float = 20.0) -> None:
    """Shut a C++ client down, giving up after ``seconds``: the client was seen to deadlock in
    shutdown (MQClientFactory::eraseConsumerFromTable) right after its first rebalance, which
    would hang the whole session."""
    stopper = threading.Thread(target=client.shutdown, daemon=True)
    stopper.start()
    stopper.join(seconds)


def send_routed(producer: Any, message: Any, timeout: float = 30.0) -> Any:
    """``send_sync`` that rides out a missing route: the C++ client asks the name server once when it
    first sends, and on a busy machine that ask can time out or come before the route is complete,
    leaving "No route info" although the name server already holds the route. Other errors raise."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return producer.send_sync(message)
        except ProducerSendSyncFailed as error:
            if "No route info" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(1)


class Side:
    """One cluster as the tests reach it: name server, broker, credentials."""

    def __init__(self, namesrv: str, broker: str, cluster_id: str, credentials: Credentials | None = None):
        self.namesrv, self.broker, self.cluster_id, self.credentials = namesrv, broker, cluster_id, credentials

    @classmethod
    def of(cls, cluster: harness.RunningCluster) -> "Side":
        return cls(cluster.namesrv, cluster.broker, cluster.name, cluster.credentials)

    def endpoint(self, secret_env: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"namesrv": self.namesrv, "cluster_id": self.cluster_id}
        if self.credentials is not None:
            out.update(access_key=self.credentials.access_key, secret_key_env=secret_env)
        return out

    def run(self, job: Callable[[ClusterAdmin], Any]) -> Any:
        async def _go():
            async with ClusterAdmin(self.namesrv, self.credentials) as admin:
                return await job(admin)
        return asyncio.run(_go())

    def create_topic(self, topic: str, queues: int = 4) -> None:
        self.run(lambda a: a.create_topic(self.broker, TopicConfig(topic, queues, queues)))
        wait_for(lambda: self.run(lambda a: has_route(a, topic)), f"route of {topic} on {self.namesrv}", 30)

    def max_offsets(self, topic: str) -> dict[int, int]:
        table = self.run(lambda a: a.topic_offsets(self.broker, topic))
        return {mq.queue_id: high for mq, (_, high) in table.items()}

    def committed(self, group: str, topic: str, queues: int = 4) -> dict[int, int | None]:
        async def _go(a: ClusterAdmin):
            return {q: await a.query_consumer_offset(self.broker, group, topic, q) for q in range(queues)}
        return self.run(_go)

    def read(self, topic: str, since: dict[int, int] | None = None) -> list[StoredMessage]:
        """Every message the broker stores for the topic (from ``since`` per queue), duplicates
        included, read by pulls that commit nothing."""
        async def _go(a: ClusterAdmin):
            out: list[StoredMessage] = []
            for mq, (low, high) in sorted((await a.topic_offsets(self.broker, topic)).items(),
                                          key=lambda i: i[0].queue_id):
                start = max(low, (since or {}).get(mq.queue_id, low))
                out.extend(await remote.pull_range(a.client, self.broker, topic, mq.queue_id, start, high))
            return out
        return self.run(_go)

    def keys(self, topic: str, since: dict[int, int] | None = None) -> Counter[str]:
        return Counter(k for m in self.read(topic, since) for k in m.keys)

    def send(self, topic: str, queue_id: int, key: str, properties: dict[str, str] | None = None) -> None:
        """Store one message with our own client (works against ACL clusters, signed)."""
        props = codec.encode_properties({"KEYS": key, "UNIQ_KEY": key, **(properties or {})})

        async def _go(a: ClusterAdmin):
            await remote.send_v2(a.client, self.broker, "PG_repl_test", topic, queue_id, key.encode(), props,
                                 int(time.time() * 1000))
        self.run(_go)


async def has_route(admin: ClusterAdmin, topic: str) -> bool:
    try:
        return bool((await admin.topic_route(topic)).get("queueDatas"))
    except Exception:
        return False


async def send_half(admin: ClusterAdmin, broker: str, topic: str, key: str, producer_group: str, queues: int = 4):
    """A transactional half message (SEND_MESSAGE_V2, sysFlag TRANSACTION_PREPARED) that nobody
    commits: the broker's checker asks a producer of the group that is not there."""
    properties = {"TRAN_MSG": "true", "PGROUP": producer_group, "UNIQ_KEY": key, "KEYS": key, "WAIT": "true"}
    header = {"a": producer_group, "b": topic, "c": "TBW102", "d": queues, "e": 0, "f": 4,
              "g": int(time.time() * 1000), "h": 0, "j": 0, "k": "false", "m": "false",
              "i": "".join(f"{k}\x01{v}\x02" for k, v in properties.items())}
    return await admin.client.invoke(broker, RequestCode.SEND_MESSAGE_V2, header, body=f"half {key}".encode())
