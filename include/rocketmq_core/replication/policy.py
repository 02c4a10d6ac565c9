"""Decisions of the replication worker that need no broker: which queues a worker owns, which
messages would loop, what a replica's properties are, how fast to go, and how far it is safe
to commit. Pure (time is passed in), so each is unit-tested on its own."""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TypeVar

from rocketmq_core.errors import InvalidSpec
from rocketmq_core.replication.codec import StoredMessage

Q = TypeVar("Q")

#: The cluster a message was first produced on; kept as it is on every later hop.
ORIGIN_PROPERTY = "RMQ_REPLICATOR_ORIGIN"
#: Every cluster the message was replicated *from*, in order, comma separated.
HOPS_PROPERTY = "RMQ_REPLICATOR_HOPS"

#: Properties that describe how the source stored or scheduled a message, not the message:
#: copying them would delay, half-commit or mis-route the replica on the target.
STRIPPED_PROPERTIES = frozenset({
    "DELAY", "TIMER_DELIVER_MS", "TIMER_DELAY_SEC", "TIMER_DELAY_MS", "__STARTDELIVERTIME", "TIMER_OUT_MS",
    "TIMER_ENQUEUE_MS", "TIMER_DEQUEUE_MS", "TIMER_ROLL_TIMES", "TIMER_DEL_UNIQKEY", "TRAN_MSG", "PGROUP",
    "TRANSACTION_CHECK_TIMES", "CHECK_IMMUNITY_TIME_IN_SECONDS", "CLUSTER", "MIN_OFFSET", "MAX_OFFSET",
    "INNER_MULTI_DISPATCH", "INNER_MULTI_QUEUE_OFFSET", "INNER_NUM", "CONSUME_START_TIME",
})

_CLUSTER_ID = re.compile(r"^[A-Za-z0-9_.:-]+$")


def validate_cluster_id(cluster_id: str) -> str:
    """Cluster ids travel in a comma-separated property: keep them to a safe alphabet."""
    if not cluster_id or not _CLUSTER_ID.match(cluster_id):
        raise InvalidSpec(f"cluster_id {cluster_id!r} may contain only letters, digits, '_', '.', ':' and '-'")
    return cluster_id


def hops(properties: Mapping[str, str]) -> list[str]:
    trail = properties.get(HOPS_PROPERTY)
    return [h for h in trail.split(",") if h] if trail else []


def would_loop(properties: Mapping[str, str], target_cluster: str) -> bool:
    """True when the message came from the target (originally or on any hop): replicating it
    there again is how A<->B replication loops."""
    return properties.get(ORIGIN_PROPERTY) == target_cluster or target_cluster in hops(properties)


def replica_properties(properties: Mapping[str, str], source_cluster: str) -> dict[str, str]:
    """The replica's properties: the user's (keys, tags, UNIQ_KEY, custom ones) unchanged,
    storage-specific ones removed, origin kept or set, and the source appended to the hops."""
    out = {k: v for k, v in properties.items() if k not in STRIPPED_PROPERTIES}
    out.setdefault(ORIGIN_PROPERTY, source_cluster)
    trail = hops(properties)
    if not trail or trail[-1] != source_cluster:
        trail.append(source_cluster)
    out[HOPS_PROPERTY] = ",".join(trail)
    return out


#: Bytes a message adds to a batch besides its body (record head, properties), as an estimate.
_BATCH_OVERHEAD = 256


def chunk_messages(messages: Sequence[StoredMessage], most: int, max_bytes: int) -> list[list[StoredMessage]]:
    """Split a queue's consecutive messages into requests, order kept: at most ``most`` messages
    and about ``max_bytes`` each; a message goes alone when its body stays compressed (it needs
    its own sysFlag) or is too big to share a batch."""
    chunks: list[list[StoredMessage]] = []
    current: list[StoredMessage] = []
    size = 0
    for m in messages:
        alone = m.compressed or len(m.body) + _BATCH_OVERHEAD > max_bytes
        if current and (alone or len(current) >= most or size + len(m.body) + _BATCH_OVERHEAD > max_bytes):
            chunks.append(current)
            current, size = [], 0
        if alone:
            chunks.append([m])
            continue
        current.append(m)
        size += len(m.body) + _BATCH_OVERHEAD
    if current:
        chunks.append(current)
    return chunks


def allocate_averagely(queues: Sequence[Q], consumers: Sequence[str], me: str) -> list[Q]:
    """RocketMQ's AllocateMessageQueueAveragely: ``queues`` and ``consumers`` sorted the same way
    by every worker; each gets a contiguous block, the first ``len(queues) % len(consumers)``
    one more. A worker missing from the list gets nothing."""
    if me not in consumers or not queues:
        return []
    index, n_q, n_c = consumers.index(me), len(queues), len(consumers)
    mod = n_q % n_c
    if n_q <= n_c:
        size = 1
    elif mod > 0 and index < mod:
        size = n_q // n_c + 1
    else:
        size = n_q // n_c
    start = index * size if mod > 0 and index < mod else index * size + mod
    count = min(size, n_q - start)
    return [queues[(start + i) % n_q] for i in range(max(count, 0))]


class TokenBucket:
    """Messages per second with a small burst. ``reserve`` takes a token now, going into debt
    if there is none, and says how long the caller must wait: callers queue up in the order
    they asked, without a lock."""

    def __init__(self, rate: float, burst: float | None = None, now: float = 0.0):
        if rate <= 0:
            raise InvalidSpec(f"rate limit must be positive, not {rate}")
        self.rate = float(rate)
        self.burst = max(1.0, float(burst) if burst is not None else self.rate / 10)
        self._tokens = self.burst
        self._at = now

    def reserve(self, now: float, n: float = 1.0) -> float:
        """Take ``n`` tokens at time ``now``; the seconds to wait before using them."""
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= n
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class OffsetTracker:
    """What one queue may commit: the offset of the oldest message not yet acknowledged, or,
    when every pulled message is done, the next offset to pull. Messages finish in any order
    (sends run in parallel); the commit point never passes an unacknowledged one."""

    def __init__(self, start: int):
        self._next = start
        self._pending: OrderedDict[int, bool] = OrderedDict()  # offset -> done, in pull order

    def add(self, *offsets: int) -> None:
        self._pending.update(dict.fromkeys(offsets, False))

    def done(self, *offsets: int) -> None:
        pending = self._pending
        for offset in offsets:
            if offset in pending:
                pending[offset] = True
        while pending:
            first = next(iter(pending))
            if not pending[first]:
                break
            del pending[first]

    def advance(self, next_offset: int) -> None:
        """Every offset below ``next_offset`` has been pulled (and add-ed if it was a message)."""
        self._next = max(self._next, next_offset)

    def reset(self, offset: int) -> None:
        """The broker moved us (OFFSET_ILLEGAL): nothing pending, start over at ``offset``."""
        self._pending.clear()
        self._next = offset

    @property
    def in_flight(self) -> int:
        return sum(1 for done in self._pending.values() if not done)

    @property
    def committable(self) -> int:
        return next(iter(self._pending)) if self._pending else self._next
