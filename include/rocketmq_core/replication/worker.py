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

The pieces: ``queue_runner`` (one owned queue: pull, send, commit), ``membership`` (which queues
this worker owns), ``routes`` (where each queue is read and sent to) and ``stats`` (the figures
of the stats file); ``ReplicationWorker`` composes them, and this module is the process.

Run it as a process: ``python -m rocketmq_core.replication.worker --config FILE --worker-id ID
--stats FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import re
import signal
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.errors import InvalidSpec, RocketMQError
from rocketmq_core.model import GroupConfig, MessageQueue
from rocketmq_core.procutil import write_json
from rocketmq_core.replication import codec
from rocketmq_core.replication.config import ReplicationConfig, StartPosition
from rocketmq_core.replication.membership import Membership
from rocketmq_core.replication.policy import TokenBucket
from rocketmq_core.replication.queue_runner import QueueRunner
from rocketmq_core.replication.routes import Routes
from rocketmq_core.replication.stats import ReplicationStats, write_stats_every

log = logging.getLogger("rocketmq_core.replication")


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
        self.stats = ReplicationStats(config.topics)
        self.routes = Routes(config, self.source, self.target)
        self._bucket = (TokenBucket(config.rate_limit, self.tuning.rate_burst, time.monotonic())
                        if config.rate_limit else None)
        self.in_flight = asyncio.Semaphore(max(1, self.tuning.max_in_flight))
        # Events bind to a loop only when first awaited (3.10+): a stop asked before run() counts.
        self._stop = asyncio.Event()
        self._offset_tables: dict[str, tuple[float, asyncio.Future[dict[tuple[str, str], dict[int, int]]]]] = {}
        self._started = time.time()
        self._initial_queues: set[MessageQueue] | None = None
        self.membership = Membership(
            self.source, self.group, self.client_id,
            heartbeat_body=codec.heartbeat_body(self.client_id, self.group, config.topics, config.start.kind,
                                                int(self._started * 1000)),
            routes=self.routes, handoff_delay=self.tuning.effective_handoff_delay,
            start_runner=functools.partial(QueueRunner, self))

    # --- what the queue runners use --------------------------------------------------------

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

    def start_of(self, mq: MessageQueue) -> StartPosition:
        """Where a queue without a committed offset starts: the configured position for the
        queues the source had when this worker started; a queue that appeared since (a topic
        created later, more queues, a new broker) holds only messages written after the start,
        so from its first message, or they would be skipped."""
        if self._initial_queues is None or mq in self._initial_queues:
            return self.config.start
        return StartPosition("earliest")

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
        addr = self.routes.source_addr(broker)
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
            while await self.routes.refresh() and not self._stop.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 2.0)
            self._initial_queues = {mq for queues in self.routes.source_queues.values() for mq in queues}
            await self._heartbeat()
            await self._rebalance()
            self.state = "running"
            loop = asyncio.get_running_loop()
            background = [loop.create_task(self._every(self.tuning.heartbeat_interval, self._heartbeat)),
                          loop.create_task(self._every(self.tuning.rebalance_interval, self._rebalance)),
                          loop.create_task(self.routes.refresh_loop()),
                          loop.create_task(self._every(self.tuning.lag_interval, self._measure_lag))]
            await self._stop.wait()
        finally:
            self.state = "stopping"
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self.membership.release_all()
            await self.membership.unregister()
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

    # The periodic jobs, named as "periodic %s failed" logs them.

    async def _heartbeat(self) -> None:
        await self.membership.heartbeat()

    async def _rebalance(self) -> None:
        await self.membership.rebalance()

    async def _measure_lag(self) -> None:
        await self.stats.measure_lag(self.source, self.group, self.routes)

    def snapshot(self) -> dict[str, Any]:
        """Counters and delay figures, as the stats file holds them."""
        now_ms = int(time.time() * 1000)
        return {
            "task": self.config.task, "worker_id": self.worker_id, "client_id": self.client_id, "group": self.group,
            "pid": os.getpid(), "state": self.state, "started_at_ms": int(self._started * 1000), "updated_at_ms": now_ms,
            "source": self.config.source.cluster_id, "target": self.config.target.cluster_id,
            **self.stats.snapshot(now_ms), **self.membership.snapshot(),
            "ordered_topics": sorted(self.routes.ordered_topics),
            "rate_limit": self.config.rate_limit,
        }


def _local_ip() -> str:
    with contextlib.suppress(OSError):
        return socket.gethostbyname(socket.gethostname())
    return "127.0.0.1"


# --- the process ---------------------------------------------------------------------------------

async def run_process(worker: ReplicationWorker, stats_path: Path, interval: float = 1.0) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    stats = loop.create_task(write_stats_every(stats_path, worker.snapshot, interval))
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
