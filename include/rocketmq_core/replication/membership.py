"""This worker's share of its consumer group's queues. Workers of one group register with
HEART_BEAT as consumers, read the group's members with GET_CONSUMER_LIST_BY_GROUP and split each
topic's queues with AllocateMessageQueueAveragely, the way Java consumers do; a queue changes
hands only after its old owner drained its sends and committed, and the new owner waits a
hand-off delay before reading the committed offset."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.errors import ConnectionFailed
from rocketmq_core.model import MessageQueue
from rocketmq_core.replication import remote
from rocketmq_core.replication.policy import allocate_averagely
from rocketmq_core.replication.queue_runner import QueueRunner, queue_name
from rocketmq_core.replication.remote import TRANSIENT
from rocketmq_core.replication.routes import Routes, mq_key

log = logging.getLogger("rocketmq_core.replication")

#: Starts the runner of a gained queue: (queue, start delay, the queue's earlier runner still draining).
StartRunner = Callable[[MessageQueue, float, asyncio.Task[None] | None], QueueRunner]


class Membership:
    """Registers ``client_id`` in ``group`` at every source master and runs the queues it owns."""

    def __init__(self, source: ClusterAdmin, group: str, client_id: str, heartbeat_body: bytes, routes: Routes,
                 handoff_delay: float, start_runner: StartRunner):
        self._source = source
        self._group = group
        self._client_id = client_id
        self.runners: dict[MessageQueue, QueueRunner] = {}
        self.consumers: list[str] = []
        self._heartbeat_body = heartbeat_body
        self._routes = routes
        self._handoff_delay = handoff_delay
        self._start_runner = start_runner
        self._releasing: dict[MessageQueue, asyncio.Task[None]] = {}

    async def heartbeat(self) -> None:
        for addr in self._routes.source_masters():
            try:
                await remote.heartbeat(self._source.client, addr, self._heartbeat_body)
            except TRANSIENT as exc:
                log.warning("heartbeat to %s failed: %s", addr, exc)

    async def rebalance(self) -> None:
        for mq, runner in list(self.runners.items()):
            if runner.task.done():  # ended on an unexpected error: start it again below
                del self.runners[mq]
        owned: set[MessageQueue] = set()
        # A restarted broker forgets its consumers: whoever heartbeats first sees itself alone
        # while the others still own their queues. Having seen others last time counts as others.
        others = len(self.consumers) > 1
        for topic, queues in sorted(self._routes.source_queues.items()):
            current = {mq for mq in self.runners if mq.topic == topic}
            if not queues:
                continue
            addr = self._routes.source_addr(queues[0].broker)
            try:
                if addr is None:
                    raise ConnectionFailed(queues[0].broker, "no master address in the route")
                ids = await remote.consumer_ids(self._source.client, addr, self._group)
            except TRANSIENT as exc:
                log.warning("cannot list the consumers of %s (keeping %d queues of %s): %s", self._group,
                            len(current), topic, exc)
                owned |= current
                continue
            if self._client_id not in ids:
                log.info("this worker is not (yet) registered at %s; heartbeating", addr)
                await self.heartbeat()
                owned |= current
                continue
            self.consumers = ids
            others = others or len(ids) > 1
            owned |= set(allocate_averagely(sorted(queues, key=mq_key), ids, self._client_id))
        lost = [mq for mq in self.runners if mq not in owned]
        gained = sorted((mq for mq in owned if mq not in self.runners), key=mq_key)
        if lost or gained:
            log.info("rebalance: %d queues owned (+%d -%d) among %d consumers", len(owned), len(gained), len(lost),
                     len(self.consumers))
        await self._release(lost, wait=False)
        delay = self._handoff_delay if others else 0.0
        for mq in gained:
            self.runners[mq] = self._start_runner(mq, delay, self._releasing.get(mq))

    async def release_all(self) -> None:
        """Release every owned queue and wait until each released queue drained and committed."""
        await self._release(list(self.runners))
        await asyncio.gather(*self._releasing.values(), return_exceptions=True)

    async def unregister(self) -> None:
        for addr in self._routes.source_masters():
            try:
                await remote.unregister(self._source.client, addr, self._client_id, self._group)
            except TRANSIENT as exc:
                log.warning("unregister at %s failed (the broker drops us when the connection closes): %s", addr, exc)

    def snapshot(self) -> dict[str, Any]:
        """The owned queues, as the stats file holds them."""
        return {
            "owned_queues": sorted(queue_name(mq) for mq in self.runners),
            "active_queues": sorted(queue_name(mq) for mq, r in self.runners.items() if r.active),
            "committed": {queue_name(mq): r.committed for mq, r in sorted(self.runners.items(), key=lambda i: mq_key(i[0]))
                          if r.committed is not None},
            "consumers": list(self.consumers),
        }

    async def _release(self, queues: list[MessageQueue], wait: bool = True) -> None:
        tasks = []
        for mq in queues:
            runner = self.runners.pop(mq, None)
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
