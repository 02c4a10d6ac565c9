"""Both clusters' routes of the task's topics as last read: the source queues and their brokers'
masters, the target queue each source queue sends to, and which topics are ordered. Read every
route interval, and soon after a request failed on a route that may be stale."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from rocketmq_core.admin import MASTER_ID, ClusterAdmin
from rocketmq_core.errors import ConnectionFailed, NotFound, RequestTimeout, ResponseError, RocketMQError
from rocketmq_core.model import MessageQueue, PERM_READ, PERM_WRITE
from rocketmq_core.replication.config import ReplicationConfig

log = logging.getLogger("rocketmq_core.replication")


def mq_key(mq: MessageQueue) -> tuple[str, str, int]:
    """MessageQueue's order in Java (topic, broker name, queue id): what every worker sorts by."""
    return (mq.topic, mq.broker, mq.queue_id)


@dataclass(frozen=True)
class TargetQueue:
    broker: str
    addr: str
    queue_id: int


class Routes:
    """The routes of ``config.topics`` on ``source`` and ``target``; ``refresh_loop`` keeps them fresh."""

    def __init__(self, config: ReplicationConfig, source: ClusterAdmin, target: ClusterAdmin):
        self._config = config
        self._source = source
        self._target = target
        self.ordered_topics: set[str] = set(config.ordered_topics)
        self.source_queues: dict[str, list[MessageQueue]] = {}
        self._topics = frozenset(config.topics)
        self._source_addrs: dict[str, str] = {}
        self._target_queues: dict[str, list[tuple[str, int]]] = {}
        self._target_addrs: dict[str, str] = {}
        self._wanted = asyncio.Event()
        self._config_refreshes = 0
        self._route_ordered: set[str] = set()
        self._config_ordered: set[str] = set()
        self._missing: set[tuple[str, str]] = set()

    def source_addr(self, broker: str) -> str | None:
        return self._source_addrs.get(broker)

    def source_masters(self) -> list[str]:
        """Every source broker master the routes name, once each, sorted."""
        return sorted(set(self._source_addrs.values()))

    def target_queue(self, mq: MessageQueue) -> TargetQueue | None:
        """The target queue of a source queue, fixed while the routes are: the source queue's index
        among the topic's sorted source queues modulo the target's writable queues (with one broker
        each side: source queue id modulo the target's write queue count)."""
        targets = self._target_queues.get(mq.topic)
        sources = self.source_queues.get(mq.topic)
        if not targets or not sources or mq not in sources:
            return None
        broker, queue_id = targets[sources.index(mq) % len(targets)]
        addr = self._target_addrs.get(broker)
        return TargetQueue(broker, addr, queue_id) if addr else None

    def request_refresh(self) -> None:
        self._wanted.set()

    async def refresh_loop(self) -> None:
        route_interval = self._config.tuning.route_interval
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                interval = route_interval if self.source_queues else min(route_interval, 2.0)
                await asyncio.wait_for(self._wanted.wait(), interval)
            self._wanted.clear()
            try:
                await self.refresh()
            except Exception:
                log.exception("route refresh failed")
            await asyncio.sleep(1.0)  # at most one refresh a second, however many sends ask

    async def refresh(self) -> set[str]:
        """Read both sides' routes of every topic; return the topics whose routes could not be read."""
        unavailable: set[str] = set()
        for topic in self._config.topics:
            try:
                src, dst = await asyncio.gather(_route(self._source, topic), _route(self._target, topic))
            except (ConnectionFailed, RequestTimeout, ResponseError) as exc:
                log.warning("route of %s unavailable, keeping the last one: %s", topic, exc)
                unavailable.add(topic)
                continue
            self._note_missing("source", topic, src is None)
            self._note_missing("target", topic, dst is None)
            if src is not None:
                self.source_queues[topic] = _queues(topic, src, PERM_READ, "readQueueNums", self._source_addrs)
                if src.get("orderTopicConf"):
                    self._route_ordered.add(topic)
            if dst is None:
                self._target_queues.pop(topic, None)
            else:
                self._target_queues[topic] = [(q.broker, q.queue_id) for q in
                                              _queues(topic, dst, PERM_WRITE, "writeQueueNums", self._target_addrs)]
        await self._refresh_ordered()
        return unavailable

    def _note_missing(self, side: str, topic: str, missing: bool) -> None:
        """Log a topic missing on a side once when it goes missing and once when it is back."""
        key = (side, topic)
        if missing and key not in self._missing:
            self._missing.add(key)
            log.warning("topic %s does not exist on the %s; its messages wait", topic, side)
        elif not missing and key in self._missing:
            self._missing.discard(key)
            log.info("topic %s exists on the %s now", topic, side)

    async def _refresh_ordered(self) -> None:
        """Ordered topics: named in the config, in the source name server's ORDER_TOPIC_CONFIG table,
        or flagged ordered / FIFO on a source broker (read now and then: it is a big answer)."""
        ordered = set(self._config.ordered_topics) | self._route_ordered
        with contextlib.suppress(RocketMQError):
            ordered |= set(await self._source.order_table())
        if self._config_refreshes % 10 == 0:
            flagged: set[str] = set()
            for addr in self.source_masters():
                with contextlib.suppress(RocketMQError):
                    for name, cfg in (await self._source.topic_configs(addr)).items():
                        if name in self._topics and cfg.keeps_order:
                            flagged.add(name)
            self._config_ordered = flagged
        self._config_refreshes += 1
        self.ordered_topics = {t for t in ordered | self._config_ordered if t in self._topics}


async def _route(admin: ClusterAdmin, topic: str) -> dict[str, Any] | None:
    try:
        return await admin.topic_route(topic)
    except NotFound:
        return None


def _queues(topic: str, route: dict[str, Any], perm: int, count_key: str, addrs: dict[str, str]) -> list[MessageQueue]:
    """The queues of a topic route with a permission, sorted; records each broker's master."""
    for broker in route.get("brokerDatas") or []:
        master = {int(k): v for k, v in (broker.get("brokerAddrs") or {}).items()}.get(MASTER_ID)
        if master:
            addrs[str(broker["brokerName"])] = str(master)
    queues: list[MessageQueue] = []
    for data in route.get("queueDatas") or []:
        name = str(data["brokerName"])
        if int(data.get("perm", 6)) & perm and name in addrs:
            queues.extend(MessageQueue(topic, name, i) for i in range(int(data.get(count_key, 0))))
    return sorted(queues, key=mq_key)
