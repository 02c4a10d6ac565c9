"""One owned source queue, replicated: pull, send to its target queue, commit what the target
acknowledged.

Sends go to an explicit target queue: one SEND_MESSAGE_V2 per message with ``tuning.batch``
off, else a run of a queue's consecutive messages as one SEND_BATCH_MESSAGE (same V2 header),
which the broker stores in order, all or nothing, each message with its own properties and flag
-- about four times the throughput for the same CPU. A batch carries one born timestamp (its
first message's); single sends keep each message's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.errors import ConnectionFailed, NotFound, ProtocolError, SubscriptionGroupNotExist, TopicNotExist
from rocketmq_core.model import MessageQueue
from rocketmq_core.offsets import search_offset
from rocketmq_core.replication import codec, remote
from rocketmq_core.replication.codec import PullStatus, StoredMessage
from rocketmq_core.replication.config import ReplicationConfig, StartPosition, Tuning
from rocketmq_core.replication.policy import OffsetTracker, chunk_messages, replica_properties, would_loop
from rocketmq_core.replication.remote import TRANSIENT
from rocketmq_core.replication.routes import Routes
from rocketmq_core.replication.stats import ReplicationStats, TopicCounters

log = logging.getLogger("rocketmq_core.replication")


def queue_name(mq: MessageQueue) -> str:
    return f"{mq.topic}@{mq.broker}@{mq.queue_id}"


class RunnerHost(Protocol):
    """What the runners of one worker share: its clusters, group, routes, counters and send budget."""

    config: ReplicationConfig
    tuning: Tuning
    group: str
    source: ClusterAdmin
    target: ClusterAdmin
    routes: Routes
    stats: ReplicationStats
    in_flight: asyncio.Semaphore

    @property
    def chunk_limit(self) -> int: ...

    async def throttle(self, n: int = 1) -> None: ...

    def start_of(self, mq: MessageQueue) -> StartPosition: ...

    async def has_committed_offset(self, addr: str, topic: str, queue_id: int) -> bool: ...

    async def ensure_group(self, broker: str) -> None: ...


class _Stopped(Exception):
    """The queue was released or the worker stops: leave the loop, then drain and commit."""


class QueueRunner:
    """Replicates one owned source queue: pull, send, commit. Released by ``release``, which
    lets in-flight sends finish (up to the drain timeout) and commits before returning."""

    def __init__(self, worker: RunnerHost, mq: MessageQueue, start_delay: float,
                 previous: asyncio.Task[None] | None):
        self.worker = worker
        self.mq = mq
        self.ordered = mq.topic in worker.routes.ordered_topics
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
        return self.worker.stats.counters_of(self.mq.topic)

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
            addr = w.routes.source_addr(self.mq.broker)
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
                    offset = await search_offset(w.source, addr, topic, queue_id, start.timestamp_ms)
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
            except TRANSIENT as exc:
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
            except TRANSIENT as exc:
                if isinstance(exc, SubscriptionGroupNotExist):
                    await w.ensure_group(self.mq.broker)
                else:
                    log.warning("queue %s: pull at %d failed: %s", queue_name(self.mq), offset, exc)
                    if isinstance(exc, ProtocolError):  # a record we cannot read: never skipped, so counted
                        self.counters.failed += 1
                    w.routes.request_refresh()
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
        addr = w.routes.source_addr(self.mq.broker)
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
        looping: list[int] = []
        target_id = w.config.target.cluster_id
        for message in messages:
            if would_loop(message.properties, target_id):
                looping.append(message.queue_offset)
            else:
                wanted.append(message)
        self.counters.consumed += len(messages)
        self.counters.skipped_loop += len(looping)
        tracker.add(*[m.queue_offset for m in messages])
        tracker.done(*looping)
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
            target = w.routes.target_queue(self.mq)
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
                except TRANSIENT as exc:
                    error = exc
            failures += 1
            self.counters.failed += len(chunk)
            if failures == 1:
                w.stats.retry_started(chunk)
            if failures == 1 or failures % 20 == 0:
                log.warning("send of %d message(s) of %s from offset %d to the target failed (attempt %d), retrying: %s",
                            len(chunk), queue_name(self.mq), first.queue_offset, failures, error)
            if target is None or isinstance(error, (ConnectionFailed, NotFound)):
                w.routes.request_refresh()
            try:
                await asyncio.sleep(backoff)
            except asyncio.CancelledError:
                w.stats.retry_ended(chunk)
                raise
            backoff = min(backoff * 2, w.tuning.max_backoff)
        if failures:
            w.stats.retry_ended(chunk)
        self.counters.replicated += len(chunk)
        assert self.tracker is not None
        w.stats.record_delays(chunk)
        self.tracker.done(*[m.queue_offset for m in chunk])

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
        """Commit the offset below which every message was sent and acknowledged. An unchanged
        offset is checked every ``recommit_interval`` and sent again where the broker holds less,
        as the Java client persists all its offsets every 5 s: a broker can drop a commit
        (concurrent first commits of a topic and group replace each other's offset maps), and one
        sent only on change leaves the queue behind for ever."""
        tracker = self.tracker
        if tracker is None:
            return
        offset, tuning = tracker.committable, self.worker.tuning
        since = time.monotonic() - self._last_commit
        if offset == self.committed:
            if not final and since < tuning.recommit_interval:
                return
        elif not (force or final) and since < tuning.commit_interval:
            return
        addr = self.worker.routes.source_addr(self.mq.broker)
        if addr is None:
            return
        source, group = self.worker.source, self.worker.group
        try:
            if final or offset == self.committed:
                # Sent again only where the broker holds less (the commit was lost). A released
                # queue drains for up to the drain timeout, and a worker that lost a queue without
                # knowing (listing consumers failed) keeps it: a new owner may have committed
                # further meanwhile, so never move the group's offset back.
                current = await source.query_consumer_offset(addr, group, self.mq.topic, self.mq.queue_id)
                if current is not None and current >= offset:
                    if current > offset:
                        log.info("queue %s: not committing %d below the %d a new owner committed",
                                 queue_name(self.mq), offset, current)
                    self._last_commit = time.monotonic()
                    return
            await source.update_consumer_offset(addr, group, self.mq.topic, self.mq.queue_id, offset)
        except TRANSIENT as exc:
            log.warning("queue %s: commit of offset %d failed (retried later): %s", queue_name(self.mq), offset, exc)
            return
        self.committed = offset
        self._last_commit = time.monotonic()

    async def _finish(self) -> None:
        self.active = False
        try:
            await self._drain(self.worker.tuning.drain_timeout)
            await self._commit(force=True, final=True)
        except asyncio.CancelledError:
            pass

