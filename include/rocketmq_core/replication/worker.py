"""The replication worker: copies every message of some source topics to the same topics on a
target cluster, at least once, without loops, under its own consumer group.

How it stays correct:

* a source offset is committed (UPDATE_CONSUMER_OFFSET) only up to the oldest message the target
  has not acknowledged, so a crash or a broker restart replays, never skips;
* a replica carries ``RMQ_REPLICATOR_ORIGIN`` and the hop list ``RMQ_REPLICATOR_HOPS``; a message
  whose origin or hops name the target is skipped (``skipped_loop``), so A->B plus B->A ends;
* workers of one group register with HEART_BEAT as consumers, read the group's members with
  GET_CONSUMER_LIST_BY_GROUP and split each topic's queues with AllocateMessageQueueAveragely;
  a queue changes hands only after its old owner drained its sends and committed, and the new
  owner waits a hand-off delay before reading the committed offset;
* ordered topics send message i+1 of a queue only after message i was acknowledged, to the same
  target queue each time; other topics keep a window of sends in flight per queue.

Sends go to an explicit target queue: one SEND_MESSAGE_V2 per message with ``tuning.batch``
off, else a run of a queue's consecutive messages as one SEND_BATCH_MESSAGE (same V2 header),
which the broker stores in order, all or nothing, each message with its own properties and flag
-- about four times the throughput for the same CPU. A batch carries one born timestamp (its
first message's); single sends keep each message's own.

Run it as a process: ``python -m rocketmq_core.replication.worker --config FILE --worker-id ID
--stats FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import os
import re
import signal
import socket
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.errors import (
    ConnectionFailed, InvalidSpec, NotFound, ProtocolError, RequestTimeout, ResponseError, RocketMQError,
    SubscriptionGroupNotExist, TopicNotExist,
)
from rocketmq_core.model import GroupConfig, MessageQueue, PERM_READ, PERM_WRITE
from rocketmq_core.procutil import write_json
from rocketmq_core.remoting.fastjson import loads
from rocketmq_core.replication import codec, remote
from rocketmq_core.replication.codec import PullStatus, StoredMessage
from rocketmq_core.replication.config import ReplicationConfig, StartPosition
from rocketmq_core.replication.policy import (
    OffsetTracker, TokenBucket, allocate_averagely, chunk_messages, replica_properties, would_loop,
)

log = logging.getLogger("rocketmq_core.replication")

_MASTER = 0
_GET_KVLIST_BY_NAMESPACE = 219
_ORDER_NAMESPACE = "ORDER_TOPIC_CONFIG"
_DELAY_WINDOW_S = 10.0
_TRANSIENT = (ConnectionFailed, RequestTimeout, ResponseError, ProtocolError)


def queue_name(mq: MessageQueue) -> str:
    return f"{mq.topic}@{mq.broker}@{mq.queue_id}"


@dataclass
class TopicCounters:
    consumed: int = 0
    replicated: int = 0
    failed: int = 0
    skipped_loop: int = 0
    offset_moved: int = 0


@dataclass(frozen=True)
class TargetQueue:
    broker: str
    addr: str
    queue_id: int


class _Stopped(Exception):
    """The queue was released or the worker stops: leave the loop, then drain and commit."""


class QueueRunner:
    """Replicates one owned source queue: pull, send, commit. Released by ``release``, which
    lets in-flight sends finish (up to the drain timeout) and commits before returning."""

    def __init__(self, worker: "ReplicationWorker", mq: MessageQueue, start_delay: float,
                 previous: asyncio.Task[None] | None):
        self.worker = worker
        self.mq = mq
        self.ordered = mq.topic in worker.ordered_topics
        self.stop_event = asyncio.Event()
        self.tracker: OffsetTracker | None = None
        self.committed: int | None = None
        self.active = False
        self._last_commit = 0.0
        self._inflight: set[asyncio.Task[None]] = set()
        self._window = asyncio.Semaphore(1 if self.ordered else max(1, worker.tuning.window))
        self._start_delay = start_delay
        self._previous = previous
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"queue {queue_name(mq)}")

    @property
    def counters(self) -> TopicCounters:
        return self.worker.counters_of(self.mq.topic)

    async def release(self) -> None:
        """Stop pulling, finish or (after the drain timeout) abandon in-flight sends, commit."""
        self.stop_event.set()
        try:
            await asyncio.wait_for(asyncio.shield(self.task), self.worker.tuning.drain_timeout + 5)
        except asyncio.TimeoutError:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    # --- the loop -------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            if self._previous is not None:  # our own earlier runner of this queue is still draining
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await self._previous
            if self._start_delay > 0 and await self._wait_stop(self._start_delay):
                return
            offset = await self._initial_offset()
            self.tracker = OffsetTracker(offset)
            self.active = True
            await self._loop(offset)
        except _Stopped:
            pass
        except Exception:  # a bug must not take the other queues down; the next rebalance restarts it
            log.exception("queue %s stopped on an unexpected error", queue_name(self.mq))
        finally:
            await self._finish()

    async def _wait_stop(self, seconds: float) -> bool:
        """Sleep, waking early when released; True when released."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.stop_event.wait(), seconds)
        return self.stop_event.is_set()

    async def _initial_offset(self) -> int:
        """The group's committed offset, or the configured start position, committed at once so
        that a restart before the first message does not move the start."""
        w, backoff = self.worker, 0.1
        topic, queue_id = self.mq.topic, self.mq.queue_id
        while True:
            addr = w.source_addr(self.mq.broker)
            try:
                if addr is None:
                    raise ConnectionFailed(self.mq.broker, "no master address in the route")
                committed = await w.source.query_consumer_offset(addr, w.group, topic, queue_id)
                if committed is not None and committed > 0:
                    self.committed = committed
                    return committed
                start = w.start_of(self.mq)
                if start.kind == "earliest":
                    offset = await w.source.min_offset(addr, topic, queue_id)
                elif start.kind == "timestamp":
                    assert start.timestamp_ms is not None
                    offset = await w.source.search_offset(addr, topic, queue_id, start.timestamp_ms)
                else:
                    offset = await w.source.max_offset(addr, topic, queue_id)
                # A 4.9 broker answers 0 for a group without an offset on a queue whose messages are
                # all in memory: only its offset table tells "committed 0" from "none".
                if committed == 0 and (offset == 0 or await w.has_committed_offset(addr, topic, queue_id)):
                    self.committed = 0
                    return 0
                await w.source.update_consumer_offset(addr, w.group, topic, queue_id, offset)
                self.committed = offset
                log.info("queue %s starts at %s offset %d", queue_name(self.mq), start.kind, offset)
                return offset
            except _TRANSIENT as exc:
                log.warning("queue %s: cannot read its start offset yet: %s", queue_name(self.mq), exc)
                if await self._wait_stop(backoff):
                    raise _Stopped from None
                backoff = min(backoff * 2, w.tuning.max_backoff)

    async def _loop(self, offset: int) -> None:
        w, tracker, backoff = self.worker, self.tracker, 0.1
        assert tracker is not None
        while not self.stop_event.is_set():
            try:
                result = await self._pull(offset)
            except _TRANSIENT as exc:
                if isinstance(exc, SubscriptionGroupNotExist):
                    await w.ensure_group(self.mq.broker)
                else:
                    log.warning("queue %s: pull at %d failed: %s", queue_name(self.mq), offset, exc)
                    if isinstance(exc, ProtocolError):  # a record we cannot read: never skipped, so counted
                        self.counters.failed += 1
                    w.request_route_refresh()
                if await self._wait_stop(backoff):
                    break
                backoff = min(backoff * 2, w.tuning.max_backoff)
                continue
            if result is None:
                break
            backoff = 0.1
            if result.status is PullStatus.FOUND:
                await self._handle([m for m in result.messages if m.queue_offset >= offset])
                tracker.advance(result.next_begin_offset)
                offset = max(offset, result.next_begin_offset)
            elif result.status is PullStatus.OFFSET_ILLEGAL:
                log.warning("queue %s: offset %d is illegal (min %d, max %d); moving to %d as the broker says",
                            queue_name(self.mq), offset, result.min_offset, result.max_offset,
                            result.next_begin_offset)
                self.counters.offset_moved += 1
                await self._drain(w.tuning.drain_timeout)
                offset = result.next_begin_offset
                tracker.reset(offset)
                await self._commit(force=True)
            else:
                if result.next_begin_offset > offset:
                    tracker.advance(result.next_begin_offset)
                    offset = result.next_begin_offset
            await self._commit()

    async def _pull(self, offset: int) -> codec.PullResult | None:
        """A long-polling pull that gives way to a release; None when released meanwhile."""
        w = self.worker
        addr = w.source_addr(self.mq.broker)
        if addr is None:
            raise ConnectionFailed(self.mq.broker, "no master address in the route")
        pull = asyncio.ensure_future(remote.pull(
            w.source.client, addr, w.group, self.mq.topic, self.mq.queue_id, offset, w.tuning.pull_batch,
            w.tuning.suspend_ms, self.mq.broker, timeout=w.tuning.suspend_ms / 1000 + 15))
        stop = asyncio.ensure_future(self.stop_event.wait())
        try:
            while not (pull.done() or stop.done()):
                # while the broker holds the pull, sends still finish: keep committing them
                await asyncio.wait({pull, stop}, timeout=w.tuning.commit_interval,
                                   return_when=asyncio.FIRST_COMPLETED)
                if not (pull.done() or stop.done()):
                    await self._commit()
        except asyncio.CancelledError:
            pull.cancel()
            raise
        finally:
            stop.cancel()
        if not pull.done():
            pull.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pull
            return None
        return pull.result()

    async def _handle(self, messages: list[StoredMessage]) -> None:
        """Count and track a pulled batch, skip what would loop, and send the rest in chunks."""
        w, tracker = self.worker, self.tracker
        assert tracker is not None
        wanted: list[StoredMessage] = []
        target_id = w.config.target.cluster_id
        for message in messages:
            self.counters.consumed += 1
            tracker.add(message.queue_offset)
            if would_loop(message.properties, target_id):
                self.counters.skipped_loop += 1
                tracker.done(message.queue_offset)
            else:
                wanted.append(message)
        for chunk in self._chunks(wanted):
            if self.stop_event.is_set():  # released: the rest is tracked, never done, so never committed
                break
            await self._dispatch(chunk)

    def _chunks(self, messages: list[StoredMessage]) -> list[list[StoredMessage]]:
        tuning = self.worker.tuning
        most = self.worker.chunk_limit if tuning.batch else 1
        return chunk_messages(messages, most, tuning.batch_bytes)

    async def _dispatch(self, chunk: list[StoredMessage]) -> None:
        """Send one chunk: ordered topics wait for it (the next of the queue goes only after this
        one was acknowledged); others keep a window of chunks in flight."""
        w = self.worker
        await w.throttle(len(chunk))
        await self._window.acquire()
        try:
            await w.in_flight.acquire()
        except BaseException:
            self._window.release()
            raise
        if self.ordered:
            try:
                await self._replicate(chunk)
            finally:
                w.in_flight.release()
                self._window.release()
            return
        task = asyncio.get_running_loop().create_task(self._replicate_then_release(chunk))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _replicate_then_release(self, chunk: list[StoredMessage]) -> None:
        try:
            await self._replicate(chunk)
        finally:
            self.worker.in_flight.release()
            self._window.release()

    async def _replicate(self, chunk: list[StoredMessage]) -> None:
        """Send until the target acknowledges; every failed attempt is counted (per message), none
        is dropped. One message goes as SEND_MESSAGE_V2, several as one SEND_BATCH_MESSAGE."""
        w = self.worker
        source_id = w.config.source.cluster_id
        props = [codec.encode_properties(replica_properties(m.properties, source_id)) for m in chunk]
        first = chunk[0]
        backoff, failures = 0.05, 0
        while True:
            target = w.target_queue(self.mq)
            error: Exception
            if target is None:
                error = TopicNotExist("-", 0, TopicNotExist.errno, f"no writable route for {self.mq.topic} on the target")
            else:
                try:
                    if len(chunk) == 1:
                        sys_flag = (first.sys_flag & (codec.COMPRESSED_FLAG | codec.COMPRESSION_TYPE_MASK)
                                    if first.compressed else 0)
                        await remote.send_v2(w.target.client, target.addr, w.config.producer_group, self.mq.topic,
                                             target.queue_id, first.body, props[0], first.born_timestamp,
                                             first.flag, sys_flag, target.broker, timeout=w.tuning.send_timeout)
                    else:
                        await remote.send_batch(w.target.client, target.addr, w.config.producer_group, self.mq.topic,
                                                target.queue_id, [(m.body, m.flag, p) for m, p in zip(chunk, props)],
                                                first.born_timestamp, target.broker, timeout=w.tuning.send_timeout)
                    break
                except _TRANSIENT as exc:
                    error = exc
            failures += 1
            self.counters.failed += len(chunk)
            if failures == 1:
                w.retrying += len(chunk)
                w.retry_started(chunk)
            if failures == 1 or failures % 20 == 0:
                log.warning("send of %d message(s) of %s from offset %d to the target failed (attempt %d), retrying: %s",
                            len(chunk), queue_name(self.mq), first.queue_offset, failures, error)
            if target is None or isinstance(error, (ConnectionFailed, NotFound)):
                w.request_route_refresh()
            try:
                await asyncio.sleep(backoff)
            except asyncio.CancelledError:
                w.retrying -= len(chunk)
                w.retry_ended(chunk)
                raise
            backoff = min(backoff * 2, w.tuning.max_backoff)
        if failures:
            w.retrying -= len(chunk)
            w.retry_ended(chunk)
        self.counters.replicated += len(chunk)
        assert self.tracker is not None
        for m in chunk:
            w.record_delay(m.store_timestamp)
            self.tracker.done(m.queue_offset)

    async def _drain(self, timeout: float) -> None:
        if not self._inflight:
            return
        _, pending = await asyncio.wait(set(self._inflight), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("queue %s: abandoned %d unacknowledged sends after %.0fs; they stay uncommitted",
                        queue_name(self.mq), len(pending), timeout)
            await asyncio.gather(*pending, return_exceptions=True)

    async def _commit(self, force: bool = False, final: bool = False) -> None:
        tracker = self.tracker
        if tracker is None:
            return
        offset = tracker.committable
        now = time.monotonic()
        if offset == self.committed or (not force and now - self._last_commit < self.worker.tuning.commit_interval):
            return
        addr = self.worker.source_addr(self.mq.broker)
        if addr is None:
            return
        source, group = self.worker.source, self.worker.group
        try:
            if final:
                # A released queue drains for up to the drain timeout, while its new owner may
                # have started and committed further: never move the group's offset back.
                current = await source.query_consumer_offset(addr, group, self.mq.topic, self.mq.queue_id)
                if current is not None and current > offset:
                    log.info("queue %s: not committing %d below the %d its new owner committed",
                             queue_name(self.mq), offset, current)
                    return
            await source.update_consumer_offset(addr, group, self.mq.topic, self.mq.queue_id, offset)
        except _TRANSIENT as exc:
            log.warning("queue %s: commit of offset %d failed (retried later): %s", queue_name(self.mq), offset, exc)
            return
        self.committed = offset
        self._last_commit = now

    async def _finish(self) -> None:
        self.active = False
        try:
            await self._drain(self.worker.tuning.drain_timeout)
            await self._commit(force=True, final=True)
        except asyncio.CancelledError:
            pass


class ReplicationWorker:
    """Replicates ``config.topics`` from ``config.source`` to ``config.target`` (see module doc)."""

    def __init__(self, config: ReplicationConfig, worker_id: str):
        self.config = config
        self.tuning = config.tuning
        self.worker_id = worker_id
        self.group = config.consumer_group
        safe_id = re.sub(r"[^A-Za-z0-9_.-]", "_", worker_id)
        self.client_id = f"{_local_ip()}@rmq_replicator@{safe_id}@{os.getpid()}@{uuid.uuid4().hex[:8]}"
        self.source = ClusterAdmin(config.source.namesrv, config.source.credentials(),
                                   timeout=self.tuning.send_timeout)
        self.target = ClusterAdmin(config.target.namesrv, config.target.credentials(),
                                   timeout=self.tuning.send_timeout)
        self.state = "starting"
        self.retrying = 0
        self.ordered_topics: set[str] = set(config.ordered_topics)
        self._counters: dict[str, TopicCounters] = {t: TopicCounters() for t in config.topics}
        self._source_queues: dict[str, list[MessageQueue]] = {}
        self._source_addrs: dict[str, str] = {}
        self._target_queues: dict[str, list[tuple[str, int]]] = {}
        self._target_addrs: dict[str, str] = {}
        self._runners: dict[MessageQueue, QueueRunner] = {}
        self._releasing: dict[MessageQueue, asyncio.Task[None]] = {}
        self._bucket = (TokenBucket(config.rate_limit, self.tuning.rate_burst, time.monotonic())
                        if config.rate_limit else None)
        self._delays: collections.deque[tuple[float, int]] = collections.deque(maxlen=200_000)
        self.in_flight = asyncio.Semaphore(max(1, self.tuning.max_in_flight))
        self._newest_store_ts = 0
        self._lag: dict[str, int] = {}
        self._lag_at = 0
        self._consumers: list[str] = []
        # Events bind to a loop only when first awaited (3.10+): a stop asked before run() counts.
        self._stop = asyncio.Event()
        self._route_wanted = asyncio.Event()
        self._config_refreshes = 0
        self._route_ordered: set[str] = set()
        self._config_ordered: set[str] = set()
        self._offset_tables: dict[str, tuple[float, asyncio.Future[dict[tuple[str, str], dict[int, int]]]]] = {}
        self._missing: set[tuple[str, str]] = set()
        self._started = time.time()
        self._initial_queues: set[MessageQueue] | None = None
        self._retrying_since: dict[int, float] = {}

    # --- what the queue runners use --------------------------------------------------------

    def counters_of(self, topic: str) -> TopicCounters:
        return self._counters.setdefault(topic, TopicCounters())

    def source_addr(self, broker: str) -> str | None:
        return self._source_addrs.get(broker)

    def target_queue(self, mq: MessageQueue) -> TargetQueue | None:
        """The target queue of a source queue, fixed while the routes are: the source queue's index
        among the topic's sorted source queues modulo the target's writable queues (with one broker
        each side: source queue id modulo the target's write queue count)."""
        targets = self._target_queues.get(mq.topic)
        sources = self._source_queues.get(mq.topic)
        if not targets or not sources or mq not in sources:
            return None
        broker, queue_id = targets[sources.index(mq) % len(targets)]
        addr = self._target_addrs.get(broker)
        return TargetQueue(broker, addr, queue_id) if addr else None

    @property
    def chunk_limit(self) -> int:
        """Messages per request: a pull's worth, or the rate limit's burst so it stays smooth."""
        if self._bucket is not None:
            return max(1, min(self.tuning.pull_batch, int(self._bucket.burst)))
        return max(1, self.tuning.pull_batch)

    async def throttle(self, n: int = 1) -> None:
        if self._bucket is not None:
            wait = self._bucket.reserve(time.monotonic(), n)
            if wait > 0:
                await asyncio.sleep(wait)

    def record_delay(self, store_timestamp: int) -> None:
        now_ms = int(time.time() * 1000)
        self._delays.append((time.monotonic(), now_ms - store_timestamp))
        self._newest_store_ts = max(self._newest_store_ts, store_timestamp)

    def start_of(self, mq: MessageQueue) -> StartPosition:
        """Where a queue without a committed offset starts: the configured position for the
        queues the source had when this worker started; a queue that appeared since (a topic
        created later, more queues, a new broker) holds only messages written after the start,
        so from its first message, or they would be skipped."""
        if self._initial_queues is None or mq in self._initial_queues:
            return self.config.start
        return StartPosition("earliest")

    def retry_started(self, chunk: list[StoredMessage]) -> None:
        self._retrying_since[id(chunk)] = time.time()

    def retry_ended(self, chunk: list[StoredMessage]) -> None:
        self._retrying_since.pop(id(chunk), None)

    def request_route_refresh(self) -> None:
        self._route_wanted.set()

    async def has_committed_offset(self, addr: str, topic: str, queue_id: int) -> bool:
        """Whether the broker's offset table holds an offset of the group for the queue; the table
        is read once per broker for all queues starting at about the same time."""
        cached = self._offset_tables.get(addr)
        if cached is None or time.monotonic() - cached[0] > 2.0:
            cached = (time.monotonic(), asyncio.ensure_future(self.source.all_consumer_offsets(addr)))
            self._offset_tables[addr] = cached
        try:
            table = await asyncio.shield(cached[1])
        except Exception:
            self._offset_tables.pop(addr, None)
            raise
        return queue_id in table.get((topic, self.group), {})

    async def ensure_group(self, broker: str) -> None:
        """Create the consumer group on a broker that does not auto-create groups."""
        addr = self.source_addr(broker)
        if addr is None:
            return
        try:
            await self.source.create_group(addr, GroupConfig(self.group, broadcast=False))
            log.info("created consumer group %s on %s", self.group, broker)
        except RocketMQError as exc:
            log.warning("cannot create consumer group %s on %s: %s", self.group, broker, exc)

    # --- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the worker to stop (safe from a signal handler on the worker's loop)."""
        self._stop.set()

    async def run(self) -> None:
        """Run until ``stop``; then drain, commit and unregister."""
        background: list[asyncio.Task[None]] = []
        try:
            # The queues there are now get the configured start; every later one its first message.
            # So the view must be complete: wait out routes that cannot be read yet.
            while await self._refresh_routes() and not self._stop.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 2.0)
            self._initial_queues = {mq for queues in self._source_queues.values() for mq in queues}
            await self._heartbeat()
            await self._rebalance()
            self.state = "running"
            loop = asyncio.get_running_loop()
            background = [loop.create_task(self._every(self.tuning.heartbeat_interval, self._heartbeat)),
                          loop.create_task(self._every(self.tuning.rebalance_interval, self._rebalance)),
                          loop.create_task(self._route_loop()),
                          loop.create_task(self._every(self.tuning.lag_interval, self._measure_lag))]
            await self._stop.wait()
        finally:
            self.state = "stopping"
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self._release(list(self._runners))
            await asyncio.gather(*self._releasing.values(), return_exceptions=True)
            await self._unregister()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._measure_lag(), 5)
            await self.source.close()
            await self.target.close()
            self.state = "stopped"

    async def _every(self, interval: float, job: Any) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("periodic %s failed", getattr(job, "__name__", job))

    async def _route_loop(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                interval = self.tuning.route_interval if self._source_queues else min(self.tuning.route_interval, 2.0)
                await asyncio.wait_for(self._route_wanted.wait(), interval)
            self._route_wanted.clear()
            try:
                await self._refresh_routes()
            except Exception:
                log.exception("route refresh failed")
            await asyncio.sleep(1.0)  # at most one refresh a second, however many sends ask

    # --- routes --------------------------------------------------------------------------------

    async def _route(self, admin: ClusterAdmin, topic: str) -> dict[str, Any] | None:
        try:
            return await admin.topic_route(topic)
        except NotFound:
            return None

    async def _refresh_routes(self) -> set[str]:
        """Read both sides' routes of every topic; return the topics whose routes could not be read."""
        unavailable: set[str] = set()
        for topic in self.config.topics:
            try:
                src, dst = await asyncio.gather(self._route(self.source, topic), self._route(self.target, topic))
            except (ConnectionFailed, RequestTimeout, ResponseError) as exc:
                log.warning("route of %s unavailable, keeping the last one: %s", topic, exc)
                unavailable.add(topic)
                continue
            self._note_missing("source", topic, src is None)
            self._note_missing("target", topic, dst is None)
            if src is not None:
                self._source_queues[topic] = _queues(topic, src, PERM_READ, "readQueueNums", self._source_addrs)
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
        ordered = set(self.config.ordered_topics) | self._route_ordered
        with contextlib.suppress(RocketMQError):
            resp = await self.source.namesrv_invoke(_GET_KVLIST_BY_NAMESPACE, {"namespace": _ORDER_NAMESPACE})
            ordered |= set(((loads(resp.body) if resp.body else {}).get("table") or {}))
        if self._config_refreshes % 10 == 0:
            flagged: set[str] = set()
            for addr in sorted(set(self._source_addrs.values())):
                with contextlib.suppress(RocketMQError):
                    for name, cfg in (await self.source.topic_configs(addr)).items():
                        if name in self._counters and (cfg.order or cfg.message_type == "FIFO"):
                            flagged.add(name)
            self._config_ordered = flagged
        self._config_refreshes += 1
        self.ordered_topics = {t for t in ordered | self._config_ordered if t in self._counters}

    # --- membership and rebalance -------------------------------------------------------------

    async def _heartbeat(self) -> None:
        body = codec.heartbeat_body(self.client_id, self.group, self.config.topics,
                                    self.config.start.kind, int(self._started * 1000))
        for addr in sorted(set(self._source_addrs.values())):
            try:
                await remote.heartbeat(self.source.client, addr, body)
            except _TRANSIENT as exc:
                log.warning("heartbeat to %s failed: %s", addr, exc)

    async def _rebalance(self) -> None:
        for mq, runner in list(self._runners.items()):
            if runner.task.done():  # ended on an unexpected error: start it again below
                del self._runners[mq]
        owned: set[MessageQueue] = set()
        # A restarted broker forgets its consumers: whoever heartbeats first sees itself alone
        # while the others still own their queues. Having seen others last time counts as others.
        others = len(self._consumers) > 1
        for topic, queues in sorted(self._source_queues.items()):
            current = {mq for mq in self._runners if mq.topic == topic}
            if not queues:
                continue
            addr = self._source_addrs.get(queues[0].broker)
            try:
                if addr is None:
                    raise ConnectionFailed(queues[0].broker, "no master address in the route")
                ids = await remote.consumer_ids(self.source.client, addr, self.group)
            except _TRANSIENT as exc:
                log.warning("cannot list the consumers of %s (keeping %d queues of %s): %s", self.group,
                            len(current), topic, exc)
                owned |= current
                continue
            if self.client_id not in ids:
                log.info("this worker is not (yet) registered at %s; heartbeating", addr)
                await self._heartbeat()
                owned |= current
                continue
            self._consumers = ids
            others = others or len(ids) > 1
            owned |= set(allocate_averagely(sorted(queues, key=_mq_key), ids, self.client_id))
        lost = [mq for mq in self._runners if mq not in owned]
        gained = sorted((mq for mq in owned if mq not in self._runners), key=_mq_key)
        if lost or gained:
            log.info("rebalance: %d queues owned (+%d -%d) among %d consumers", len(owned), len(gained), len(lost),
                     len(self._consumers))
        await self._release(lost, wait=False)
        delay = self.tuning.effective_handoff_delay if others else 0.0
        for mq in gained:
            self._runners[mq] = QueueRunner(self, mq, delay, self._releasing.get(mq))

    async def _release(self, queues: list[MessageQueue], wait: bool = True) -> None:
        tasks = []
        for mq in queues:
            runner = self._runners.pop(mq, None)
            if runner is None:
                continue
            task = asyncio.get_running_loop().create_task(runner.release())
            self._releasing[mq] = task
            task.add_done_callback(self._released)
            tasks.append(task)
        if wait and tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _released(self, task: asyncio.Task[None]) -> None:
        for mq, releasing in list(self._releasing.items()):
            if releasing is task:
                del self._releasing[mq]

    async def _unregister(self) -> None:
        for addr in sorted(set(self._source_addrs.values())):
            try:
                await remote.unregister(self.source.client, addr, self.client_id, self.group)
            except _TRANSIENT as exc:
                log.warning("unregister at %s failed (the broker drops us when the connection closes): %s", addr, exc)

    # --- figures -------------------------------------------------------------------------------

    async def _measure_lag(self) -> None:
        """Source max offsets minus the group's committed offsets, over every queue of the topics
        (not only this worker's): the group's backlog as an operator reads it."""
        lag: dict[str, int] = {}
        for topic, queues in self._source_queues.items():
            total = 0
            for broker in sorted({q.broker for q in queues}):
                addr = self._source_addrs.get(broker)
                if addr is None:
                    continue
                bounds = await self.source.topic_offsets(addr, topic)
                mine = [q for q in queues if q.broker == broker]
                committed = await self.source.gather(
                    self.source.query_consumer_offset(addr, self.group, topic, q.queue_id) for q in mine)
                for mq, done in zip(mine, committed):
                    low, high = bounds.get(mq, (0, 0))
                    total += max(high - (done if done is not None and done >= 0 else low), 0)
            lag[topic] = total
        self._lag = lag
        self._lag_at = int(time.time() * 1000)

    def delay_figures(self) -> dict[str, Any]:
        now = time.monotonic()
        while self._delays and now - self._delays[0][0] > _DELAY_WINDOW_S:
            self._delays.popleft()
        recent = sorted(d for _, d in self._delays)

        def pct(p: float) -> int | None:
            return recent[min(len(recent) - 1, int(p * len(recent)))] if recent else None
        return {"window_s": _DELAY_WINDOW_S, "samples": len(recent), "p50_ms": pct(0.50), "p99_ms": pct(0.99),
                "max_ms": recent[-1] if recent else None}

    def snapshot(self) -> dict[str, Any]:
        """Counters and delay figures, as the stats file holds them."""
        now_ms = int(time.time() * 1000)
        totals = TopicCounters()
        for c in self._counters.values():
            for name, value in asdict(c).items():
                setattr(totals, name, getattr(totals, name) + value)
        return {
            "task": self.config.task, "worker_id": self.worker_id, "client_id": self.client_id, "group": self.group,
            "pid": os.getpid(), "state": self.state, "started_at_ms": int(self._started * 1000), "updated_at_ms": now_ms,
            "source": self.config.source.cluster_id, "target": self.config.target.cluster_id,
            **asdict(totals), "retrying": self.retrying,
            # a send retried this long is stuck (a read-only topic, a denied permission): the monitor alerts
            "oldest_retry_age_ms": (now_ms - int(min(self._retrying_since.values()) * 1000)
                                    if self._retrying_since else None),
            "topics": {t: asdict(c) for t, c in sorted(self._counters.items())},
            "owned_queues": sorted(queue_name(mq) for mq in self._runners),
            "active_queues": sorted(queue_name(mq) for mq, r in self._runners.items() if r.active),
            "committed": {queue_name(mq): r.committed for mq, r in sorted(self._runners.items(), key=lambda i: _mq_key(i[0]))
                          if r.committed is not None},
            "consumers": list(self._consumers),
            "ordered_topics": sorted(self.ordered_topics),
            "newest_replicated_store_ms": self._newest_store_ts or None,
            "newest_replicated_age_ms": now_ms - self._newest_store_ts if self._newest_store_ts else None,
            "delay": self.delay_figures(),
            "lag": sum(self._lag.values()) if self._lag else None, "lag_by_topic": dict(self._lag),
            "lag_measured_at_ms": self._lag_at or None,
            "rate_limit": self.config.rate_limit,
        }


def _mq_key(mq: MessageQueue) -> tuple[str, str, int]:
    """MessageQueue's order in Java (topic, broker name, queue id): what every worker sorts by."""
    return (mq.topic, mq.broker, mq.queue_id)


def _queues(topic: str, route: dict[str, Any], perm: int, count_key: str, addrs: dict[str, str]) -> list[MessageQueue]:
    """The queues of a topic route with a permission, sorted; records each broker's master."""
    for broker in route.get("brokerDatas") or []:
        master = {int(k): v for k, v in (broker.get("brokerAddrs") or {}).items()}.get(_MASTER)
        if master:
            addrs[str(broker["brokerName"])] = str(master)
    queues: list[MessageQueue] = []
    for data in route.get("queueDatas") or []:
        name = str(data["brokerName"])
        if int(data.get("perm", 6)) & perm and name in addrs:
            queues.extend(MessageQueue(topic, name, i) for i in range(int(data.get(count_key, 0))))
    return sorted(queues, key=_mq_key)


def _local_ip() -> str:
    with contextlib.suppress(OSError):
        return socket.gethostbyname(socket.gethostname())
    return "127.0.0.1"


# --- the process ---------------------------------------------------------------------------------

async def run_process(worker: ReplicationWorker, stats_path: Path, interval: float = 1.0) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)

    async def stats_loop() -> None:
        while True:
            try:
                write_json(stats_path, worker.snapshot())
            except OSError as exc:
                log.warning("cannot write stats to %s: %s", stats_path, exc)
            await asyncio.sleep(interval)

    stats = loop.create_task(stats_loop())
    try:
        await worker.run()
    finally:
        stats.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stats
        write_json(stats_path, worker.snapshot())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rocketmq_core.replication.worker",
                                     description="Replicate RocketMQ topics from one cluster to another.")
    parser.add_argument("--config", required=True, help="replication task JSON (no secrets)")
    parser.add_argument("--worker-id", required=True, help="this worker's name, unique within the task")
    parser.add_argument("--stats", required=True, help="file the counters are written to every second")
    parser.add_argument("--log-level", default=os.environ.get("RMQ_REPLICATOR_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s [{args.worker_id}] %(name)s: %(message)s")
    try:
        config = ReplicationConfig.load(args.config)
        worker = ReplicationWorker(config, args.worker_id)
    except InvalidSpec as exc:
        log.error("%s", exc)
        return 2
    log.info("replicating %s from %s to %s as %s (group %s)", ", ".join(config.topics), config.source.cluster_id,
             config.target.cluster_id, worker.client_id, worker.group)
    asyncio.run(run_process(worker, Path(args.stats)))
    log.info("stopped cleanly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
