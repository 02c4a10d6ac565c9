"""What a worker counts and measures for its stats file, which the operator's monitor reads:
per-topic counters, how long ago replicated messages were stored, the sends being retried and
the group's lag."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any

from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.procutil import write_json
from rocketmq_core.replication.codec import StoredMessage
from rocketmq_core.replication.routes import Routes

log = logging.getLogger("rocketmq_core.replication")

_DELAY_WINDOW_S = 10.0


@dataclass
class TopicCounters:
    consumed: int = 0
    replicated: int = 0
    failed: int = 0
    skipped_loop: int = 0
    offset_moved: int = 0


class ReplicationStats:
    """The figures of one worker; the queue runners count into it as they go."""

    def __init__(self, topics: tuple[str, ...]):
        self.retrying = 0
        self._counters: dict[str, TopicCounters] = {t: TopicCounters() for t in topics}
        self._delays: collections.deque[tuple[float, int]] = collections.deque(maxlen=200_000)
        self._newest_store_ts = 0
        self._lag: dict[str, int] = {}
        self._lag_at = 0
        self._retrying_since: dict[int, float] = {}

    def counters_of(self, topic: str) -> TopicCounters:
        return self._counters.setdefault(topic, TopicCounters())

    def record_delays(self, replicated: list[StoredMessage]) -> None:
        """The sync delay of messages the target just acknowledged, all at one clock reading."""
        now_ms, at = int(time.time() * 1000), time.monotonic()
        self._delays.extend([(at, now_ms - m.store_timestamp) for m in replicated])
        self._newest_store_ts = max(self._newest_store_ts, max(m.store_timestamp for m in replicated))

    def retry_started(self, chunk: list[StoredMessage]) -> None:
        self.retrying += len(chunk)
        self._retrying_since[id(chunk)] = time.time()

    def retry_ended(self, chunk: list[StoredMessage]) -> None:
        self.retrying -= len(chunk)
        self._retrying_since.pop(id(chunk), None)

    async def measure_lag(self, source: ClusterAdmin, group: str, routes: Routes) -> None:
        """Source max offsets minus the group's committed offsets, over every queue of the topics
        (not only this worker's): the group's backlog as an operator reads it."""
        lag: dict[str, int] = {}
        for topic, queues in routes.source_queues.items():
            total = 0
            for broker in sorted({q.broker for q in queues}):
                addr = routes.source_addr(broker)
                if addr is None:
                    continue
                bounds = await source.topic_offsets(addr, topic)
                mine = [q for q in queues if q.broker == broker]
                committed = await source.gather(
                    source.query_consumer_offset(addr, group, topic, q.queue_id) for q in mine)
                for mq, done in zip(mine, committed):
                    low, high = bounds.get(mq, (0, 0))
                    total += max(high - (done if done is not None and done >= 0 else low), 0)
            lag[topic] = total
        self._lag = lag
        self._lag_at = int(time.time() * 1000)

    def _delay_figures(self) -> dict[str, Any]:
        now = time.monotonic()
        while self._delays and now - self._delays[0][0] > _DELAY_WINDOW_S:
            self._delays.popleft()
        recent = sorted(map(itemgetter(1), self._delays))  # up to 200,000: no Python per item

        def pct(p: float) -> int | None:
            return recent[min(len(recent) - 1, int(p * len(recent)))] if recent else None
        return {"window_s": _DELAY_WINDOW_S, "samples": len(recent), "p50_ms": pct(0.50), "p99_ms": pct(0.99),
                "max_ms": recent[-1] if recent else None}

    def snapshot(self, now_ms: int) -> dict[str, Any]:
        """The counters, retries, delays and lag as the stats file holds them."""
        totals = TopicCounters()
        for c in self._counters.values():
            for name, value in asdict(c).items():
                setattr(totals, name, getattr(totals, name) + value)
        return {
            **asdict(totals), "retrying": self.retrying,
            # a send retried this long is stuck (a read-only topic, a denied permission): the monitor alerts
            "oldest_retry_age_ms": (now_ms - int(min(self._retrying_since.values()) * 1000)
                                    if self._retrying_since else None),
            "topics": {t: asdict(c) for t, c in sorted(self._counters.items())},
            "newest_replicated_store_ms": self._newest_store_ts or None,
            "newest_replicated_age_ms": now_ms - self._newest_store_ts if self._newest_store_ts else None,
            "delay": self._delay_figures(),
            "lag": sum(self._lag.values()) if self._lag else None, "lag_by_topic": dict(self._lag),
            "lag_measured_at_ms": self._lag_at or None,
        }


async def write_stats_every(path: Path, snapshot: Callable[[], dict[str, Any]], interval: float) -> None:
    """Rewrite the stats file every ``interval``; a failed write is logged and tried again next time."""
    while True:
        try:
            write_json(path, snapshot())
        except OSError as exc:
            log.warning("cannot write stats to %s: %s", path, exc)
        await asyncio.sleep(interval)
