"""Exact backlog of consumer groups on one cluster: what "drained" has to mean before a cutover.

A cutover may switch consumers only when nothing is left for them on the old cluster, so the
number here is the broker's own arithmetic, never an estimate, and never a silent zero: an
unreachable or silent broker, a failed request, or a store mode whose pending messages cannot be
counted raises.

What is counted, per master broker:

* ``normal`` and ``retry``: per read queue, broker max offset - committed offset, exactly as
  GET_CONSUME_STATS (the request behind ``mqadmin consumerProgress``) computes it: topics the
  group has committed offsets for, skipping topics an online group no longer subscribes to.
  ``%RETRY%<group>`` is always included, even when the group never committed an offset on it
  (clients commit retry offsets only after consuming a retry, so mqadmin omits such rows); its
  consumer offset is then 0, which is where a consumer starts on a retry queue. A topic the
  group has no committed offset on has no backlog for it (mqadmin agrees: it lists nothing);
  neither do broadcasting groups, whose offsets live in the clients. But on a cluster of several
  masters, a topic the group has offsets for on one broker and none on another is counted on
  that other broker too, from each queue's min offset (mqadmin lists nothing there, and a
  consumer still receives every one of those messages). ``%DLQ%`` messages are not
  counted: no consumer receives them unless they are sent again.
* ``delayed``: delay-level messages (4.x and 5.x), SCHEDULE_TOPIC_XXXX queue ``level - 1``, max
  offset minus the scheduler's delay offset (GET_ALL_DELAY_OFFSET). Retries pass through here
  first, for 10 s and more.
* ``timer`` (5.x): ``rmq_sys_wheel_timer`` messages the timer store has not taken into its wheel
  yet (queue 0, progress from the timer checkpoint, GET_TIMER_CHECK_POINT), plus the messages in
  the wheel not yet delivered (``timerCongestNum`` of GET_BROKER_RUNTIME_INFO), queue id -1.
* ``half``: uncommitted transactional half messages: RMQ_SYS_TRANS_HALF_TOPIC from the
  transaction checker's offset (group CID_RMQ_SYS_TRANS) to the max offset, minus the halves that
  an op message (RMQ_SYS_TRANS_OP_HALF_TOPIC, tag ``d``) marks committed or rolled back.

A broker that keeps timer or half messages in RocksDB (5.x ``timerRocksDBEnable``,
``transRocksDBEnable``) raises BacklogError: those are not countable over the admin protocol.

Delayed, timer and half messages are cluster-wide, not per group, and the report keeps them as
a separate "pending system" part (``group`` is None) that still counts towards ``total``. Their
real topic is only inside each message: SCHEDULE_TOPIC_XXXX and the half topic can hold millions,
so attributing them would mean reading every one. (5.x TimerMetrics, request 61, does count the
wheel per real topic, but not the timer messages still waiting to enter the wheel, and it is a
metric the broker revises now and then, so it is not used for an exact count.)

Two ways to read the normal rows, the same numbers either way (the broker computes both):

* ``per_group``: GET_CONSUME_STATS per group and broker, plus one naming the retry topic. To
  find a group's topics the broker scans its whole offset table for every such request, so with
  thousands of groups the broker's CPU is the limit (10,000 groups, 40,000 offset entries: 7 to
  11 s on a 2-CPU 5.5 broker). GET_BROKER_CONSUME_STATS (317) runs that scan once per group of
  the broker: 6.4 s there, no better.
* ``broker_wide``: every committed offset in one GET_ALL_CONSUMER_OFFSET, then GET_CONSUME_STATS
  per (group, topic) and per retry topic: naming the topic spares the broker its scan, and it
  still applies topic config, read queue count and online subscription itself. Thousands of
  requests in flight on one connection: 10,000 groups in 1.0 to 2.5 s on the same box.

``auto`` picks per_group up to PER_GROUP_LIMIT groups (no download of the whole offset table)
and broker_wide above.

Known gaps: 5.x static topics (logic queue mapping) and the subscription compensation table of
5.x pop consumers are not modelled. A message moving between stages (a delayed message being
delivered, a half being committed, a timer message entering the wheel) can be counted twice for
a moment, never zero times: the timer enqueue count starts from the checkpoint, which trails
the wheel. A message written to the commit log but not yet dispatched to its consume queue
(milliseconds) is invisible here, as to every consumer and to mqadmin.
"""

from __future__ import annotations

import re
import struct
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Literal

from rocketmq_core.admin import BrokerInfo, ClusterAdmin, gather_all
from rocketmq_core.errors import InvalidSpec, NotFound, ProtocolError, RocketMQError
from rocketmq_core.model import HALF_TOPIC, RETRY_PREFIX, SCHEDULE_TOPIC, TIMER_TOPIC, validate_group_name
from rocketmq_core.remoting.fastjson import loads
from rocketmq_core.remoting.protocol import RequestCode, ResponseCode
from rocketmq_core.replication.codec import decode_message

Kind = Literal["normal", "retry", "delayed", "timer", "half"]
Method = Literal["auto", "per_group", "broker_wide"]

#: Up to this many groups, GET_CONSUME_STATS per group; above, the broker-wide reconstruction.
PER_GROUP_LIMIT = 32
#: Pending system messages read one by one for their real topic; a longer range counts in full.
ATTRIBUTION_LIMIT = 20_000

OP_TOPIC = "RMQ_SYS_TRANS_OP_HALF_TOPIC"
TRANS_CHECK_GROUP = "CID_RMQ_SYS_TRANS"
#: Tag of the op messages that mark a half message committed or rolled back.
OP_REMOVE_TAG = "d"
#: The broker writes every half message to queue 0 of the half topic (parseHalfMessageInner).
HALF_QUEUE_ID = 0
#: Queue id of the timer row that counts the messages inside the time wheel.
TIMER_WHEEL_QUEUE_ID = -1
DEFAULT_DELAY_LEVELS = 18
_CQ_PAGE = 256


class BacklogError(RocketMQError):
    """The backlog cannot be counted exactly: a store mode that hides pending messages."""


@dataclass(frozen=True)
class BacklogRow:
    """One queue's undelivered messages; ``group`` is None for cluster-wide system rows.

    For normal, retry and delayed rows ``lag = broker_offset - consumer_offset``; for half rows
    the halves already committed or rolled back are subtracted too; the timer wheel row has no
    offsets.
    """

    group: str | None
    topic: str
    broker: str
    queue_id: int
    broker_offset: int | None
    consumer_offset: int | None
    lag: int
    kind: Kind

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "topic": self.topic, "broker": self.broker, "queue_id": self.queue_id,
                "broker_offset": self.broker_offset, "consumer_offset": self.consumer_offset,
                "lag": self.lag, "kind": self.kind}


@dataclass(frozen=True)
class BacklogReport:
    """Undelivered messages of some groups on one cluster at one moment; ``total`` is the cutover gate."""

    groups: tuple[str, ...]
    rows: tuple[BacklogRow, ...]
    measured_at: datetime
    cluster: str | None = None
    brokers: tuple[str, ...] = ()
    method: str = "per_group"
    elapsed: float = 0.0

    @property
    def total(self) -> int:
        return sum(r.lag for r in self.rows)

    @property
    def drained(self) -> bool:
        return self.total == 0

    @property
    def by_group(self) -> dict[str, int]:
        """Normal plus retry backlog of every group asked about, zero included."""
        result = dict.fromkeys(self.groups, 0)
        for row in self.rows:
            if row.group is not None:
                result[row.group] = result.get(row.group, 0) + row.lag
        return result

    @property
    def by_topic(self) -> dict[str, int]:
        """Per topic, summed over groups (each group gets its own copy); system topics included."""
        result: dict[str, int] = defaultdict(int)
        for row in self.rows:
            result[row.topic] += row.lag
        return dict(result)

    @property
    def by_kind(self) -> dict[str, int]:
        result = dict.fromkeys(("normal", "retry", "delayed", "timer", "half"), 0)
        for row in self.rows:
            result[row.kind] += row.lag
        return result

    @property
    def consumer_lag(self) -> int:
        """Normal plus retry backlog of the groups."""
        return sum(r.lag for r in self.rows if r.group is not None)

    @property
    def pending_system(self) -> int:
        """Delayed, timer and half messages of the whole cluster, not attributed to a group."""
        return sum(r.lag for r in self.rows if r.group is None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster, "brokers": list(self.brokers), "groups": list(self.groups),
            "measured_at": self.measured_at.isoformat(), "elapsed_s": round(self.elapsed, 3),
            "method": self.method, "total": self.total, "consumer_lag": self.consumer_lag,
            "pending_system": self.pending_system, "by_group": self.by_group, "by_topic": self.by_topic,
            "by_kind": self.by_kind, "rows": [r.to_dict() for r in self.rows],
        }

    def render(self, limit: int = 100) -> str:
        """A table of the rows with a backlog (at most ``limit``), then totals per group and kind."""
        where = f"cluster {self.cluster!r}" if self.cluster else ",".join(self.brokers) or "cluster"
        lines = [f"Backlog of {len(self.groups)} group(s) on {where} at {self.measured_at:%Y-%m-%d %H:%M:%S}Z"
                 f" ({self.method}, {self.elapsed:.2f}s): total {self.total}"
                 f" = consumer lag {self.consumer_lag} + pending system {self.pending_system}"]
        shown = sorted((r for r in self.rows if r.lag), key=lambda r: (r.group is None, r.group or "", r.topic,
                                                                     r.broker, r.queue_id))
        header = ("#Group", "#Topic", "#Broker", "#QID", "#Broker Offset", "#Consumer Offset", "#Lag", "#Kind")
        table = [header] + [(r.group or "-", r.topic, r.broker, str(r.queue_id), _opt(r.broker_offset),
                             _opt(r.consumer_offset), str(r.lag), r.kind) for r in shown[:limit]]
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
        hidden = len(self.rows) - min(len(shown), limit)
        if hidden:
            lines.append(f"({hidden} more row(s) not shown: {len(self.rows) - len(shown)} with no backlog)")
        groups = ", ".join(f"{g} {n}" for g, n in sorted(self.by_group.items(), key=lambda kv: (-kv[1], kv[0]))[:20])
        lines.append(f"Per group: {groups}" + (" ..." if len(self.groups) > 20 else ""))
        kinds = self.by_kind
        lines.append("Per kind: " + ", ".join(f"{k} {kinds[k]}" for k in kinds))
        return "\n".join(lines)


async def measure_backlog(admin: ClusterAdmin, groups: list[str], cluster: str | None = None, *,
                          method: Method = "auto", expected_brokers: Iterable[str] = ()) -> BacklogReport:
    """The exact undelivered messages of ``groups`` on every master broker (of ``cluster`` if named).

    Raises NotFound naming the groups that exist on no broker, ConnectionFailed or
    RequestTimeout for a broker that cannot be reached or does not answer, BrokerUnavailable for
    a broker without a master or one of ``expected_brokers`` that is not registered (a run keeps
    the brokers it saw at its start: the name server forgets a dead one), BacklogError when a
    broker's pending messages cannot be counted.
    """
    names = tuple(dict.fromkeys(validate_group_name(g) for g in groups))
    if method == "auto":
        method = "per_group" if len(names) <= PER_GROUP_LIMIT else "broker_wide"
    if method not in ("per_group", "broker_wide"):
        raise InvalidSpec(f"backlog method {method!r} is not one of auto, per_group, broker_wide")
    measured_at = datetime.now(timezone.utc)
    started = time.monotonic()
    brokers = await admin.masters(cluster, expected_brokers)
    results = await admin.gather(_measure_broker(admin, b, names, method, len(brokers) > 1) for b in brokers)
    rows = [row for broker_rows, _ in results for row in broker_rows]
    if len(brokers) > 1:
        rows += await _unconsumed_rows(admin, brokers, rows)
    seen = set().union(*(known for _, known in results)) if results else set()
    missing = [g for g in names if g not in seen]
    if missing:
        await _raise_unless_exist(admin, brokers, missing)
    return BacklogReport(groups=names, rows=tuple(rows), measured_at=measured_at, cluster=cluster,
                         brokers=tuple(b.name for b in brokers), method=method,
                         elapsed=time.monotonic() - started)


async def _measure_broker(admin: ClusterAdmin, broker: BrokerInfo, groups: tuple[str, ...],
                          method: str, shared: bool) -> tuple[list[BacklogRow], set[str]]:
    """Rows of one master broker and the groups it knows from offsets; system rows included.
    ``shared``: other masters hold part of the groups' topics."""
    addr = broker.master
    assert addr is not None
    group_part = (_group_rows_per_group(admin, addr, broker.name, groups) if method == "per_group"
                  else _group_rows_broker_wide(admin, addr, broker.name, groups, shared))
    (group_rows, known), system_rows = await gather_all(group_part, _system_rows(admin, addr, broker.name))
    return group_rows + system_rows, known


async def _unconsumed_rows(admin: ClusterAdmin, brokers: list[BrokerInfo],
                           rows: list[BacklogRow]) -> list[BacklogRow]:
    """Queues of a group's topics on brokers where it has no committed offset at all.

    A group that consumed a topic on one broker only (the other broker joined the topic later,
    or its consumers never reached it) has no row there: the broker and mqadmin list nothing,
    yet every message stored there is still to be delivered to it. Such a queue counts from its
    min offset to its max offset (consumer offset None).
    """
    where: dict[tuple[str, str], set[str]] = defaultdict(set)
    for row in rows:
        if row.kind == "normal" and row.group is not None:
            where[(row.group, row.topic)].add(row.broker)
    topics = sorted({topic for _, topic in where})
    routes = dict(zip(topics, await admin.gather(admin.topic_route(t) for t in topics)))
    addrs = {b.name: b.master for b in brokers}
    wanted = [(group, topic, q["brokerName"]) for (group, topic), have in sorted(where.items())
              for q in routes[topic].get("queueDatas") or [] if q["brokerName"] in addrs and q["brokerName"] not in have]
    pairs = sorted({(broker, topic) for _, topic, broker in wanted})
    tables = dict(zip(pairs, await admin.gather(admin.topic_offsets(addrs[b], t) for b, t in pairs)))
    return [BacklogRow(group, topic, broker, queue.queue_id, high, None, max(high - low, 0), "normal")
            for group, topic, broker in wanted
            for queue, (low, high) in sorted(tables[(broker, topic)].items(), key=lambda kv: kv[0].queue_id)]


async def _raise_unless_exist(admin: ClusterAdmin, brokers: list[BrokerInfo], candidates: list[str]) -> None:
    """A group without any row may still exist (configured, or online); one that does not is an error."""
    missing = set(candidates)
    for broker in brokers:
        assert broker.master is not None
        missing -= set(await admin.group_configs(broker.master))
        if not missing:
            return
        online = await admin.gather(admin.consumer_connection(broker.master, g) for g in sorted(missing))
        missing -= {c.group for c in online if c.online}
        if not missing:
            return
    where = ", ".join(b.name for b in brokers)
    raise NotFound(",".join(admin.namesrv_addrs), RequestCode.GET_ALL_SUBSCRIPTIONGROUP_CONFIG,
                   ResponseCode.SUBSCRIPTION_GROUP_NOT_EXIST,
                   f"consumer group(s) {', '.join(sorted(missing))} do not exist on broker(s) {where}")


# --- normal and retry rows -------------------------------------------------------------------

def _retry_topic(group: str) -> str:
    return RETRY_PREFIX + group


def _group_row(group: str, topic: str, broker: str, queue_id: int, broker_offset: int,
               consumer_offset: int) -> BacklogRow:
    return BacklogRow(group=group, topic=topic, broker=broker, queue_id=queue_id, broker_offset=broker_offset,
                      consumer_offset=consumer_offset, lag=max(broker_offset - max(consumer_offset, 0), 0),
                      kind="retry" if topic.startswith(RETRY_PREFIX) else "normal")


async def _group_rows_per_group(admin: ClusterAdmin, addr: str, broker: str,
                                groups: tuple[str, ...]) -> tuple[list[BacklogRow], set[str]]:
    """GET_CONSUME_STATS per group, and once more naming its retry topic (offsets or not)."""
    requests = [(g, None) for g in groups] + [(g, _retry_topic(g)) for g in groups]
    answers = await admin.gather(admin.consume_stats(addr, *req) for req in requests)
    plain_stats, retry_stats = answers[:len(groups)], answers[len(groups):]
    rows: list[BacklogRow] = []
    known: set[str] = set()
    for group, entries, retry_entries in zip(groups, plain_stats, retry_stats):
        if entries:
            known.add(group)
        retry_name = _retry_topic(group)
        if not any(q.queue.topic == retry_name for q in entries):
            entries = entries + retry_entries
        for q in entries:
            rows.append(_group_row(group, q.queue.topic, q.queue.broker or broker, q.queue.queue_id, q.broker_offset,
                                   q.consumer_offset))
    return rows, known


async def _group_rows_broker_wide(admin: ClusterAdmin, addr: str, broker: str, groups: tuple[str, ...],
                                  shared: bool) -> tuple[list[BacklogRow], set[str]]:
    """The same GET_CONSUME_STATS, asked per (group, topic) with topics read from all offsets at once.

    Naming the topic spares the broker its scan of the whole offset table per request, while the
    broker still does the arithmetic: topic config, read queues, online subscription. A retry
    topic with no offset is asked too (its messages wait all the same); when the masters share
    the groups, only where the broker holds it (elsewhere the answer is empty), its topic names
    read after the other answers, so one created meanwhile (a first send-back) is still asked.
    """
    wanted = set(groups)
    topics: dict[str, list[str]] = defaultdict(list)
    for topic, group in await admin.all_consumer_offsets(addr):
        if group in wanted:
            topics[group].append(topic)
    pairs = []
    for group in groups:
        pairs += [(group, topic) for topic in topics.get(group, ())]
        if _retry_topic(group) not in topics.get(group, ()):
            pairs.append((group, _retry_topic(group)))
    if not shared:
        stats = await admin.gather(admin.consume_stats(addr, *pair) for pair in pairs)
    else:
        with_offsets = [pair for pair in pairs if pair[1] in topics.get(pair[0], ())]
        answers = dict(zip(with_offsets, await admin.gather(admin.consume_stats(addr, *p) for p in with_offsets)))
        held = await admin.topics_held(addr)
        retries = [pair for pair in pairs if pair not in answers and pair[1] in held]
        answers.update(zip(retries, await admin.gather(admin.consume_stats(addr, *p) for p in retries)))
        stats = [answers.get(pair, []) for pair in pairs]
    rows = [_group_row(group, q.queue.topic, q.queue.broker or broker, q.queue.queue_id, q.broker_offset,
                       q.consumer_offset)
            for (group, _), entries in zip(pairs, stats) for q in entries]
    return rows, set(topics)


# --- system rows: delayed, timer, half ---------------------------------------------------------

async def _system_rows(admin: ClusterAdmin, addr: str, broker: str) -> list[BacklogRow]:
    config = await admin.broker_config(addr)
    if config.get("transRocksDBEnable", "false").lower() == "true":
        raise BacklogError(f"broker {broker} ({addr}) keeps half messages in RocksDB (transRocksDBEnable);"
                           " their number is not readable over the admin protocol")
    timer_enabled = config.get("timerWheelEnable", "false").lower() == "true"  # 5.x only
    if timer_enabled and config.get("timerRocksDBEnable", "false").lower() == "true":
        raise BacklogError(f"broker {broker} ({addr}) keeps timer messages in RocksDB (timerRocksDBEnable);"
                           " their number is not readable over the admin protocol")
    levels = len((config.get("messageDelayLevel") or "").split()) or DEFAULT_DELAY_LEVELS
    parts = [_delayed_rows(admin, addr, broker, levels), _half_rows(admin, addr, broker)]
    if timer_enabled:
        parts.append(_timer_rows(admin, addr, broker))
    return [row for part in await gather_all(*parts) for row in part]


async def _delayed_rows(admin: ClusterAdmin, addr: str, broker: str, levels: int) -> list[BacklogRow]:
    """Per delay level: SCHEDULE_TOPIC_XXXX queue level-1 from the scheduler's offset to the end."""
    delay_offsets = await admin.delay_offsets(addr)
    queues = range(levels)
    maxes, mins = await gather_all(admin.gather(admin.max_offset(addr, SCHEDULE_TOPIC, q) for q in queues),
                                       admin.gather(admin.min_offset(addr, SCHEDULE_TOPIC, q) for q in queues))
    rows = []
    for queue_id, max_offset, min_offset in zip(queues, maxes, mins):
        done = max(delay_offsets.get(queue_id + 1, 0), min_offset)
        rows.append(BacklogRow(None, SCHEDULE_TOPIC, broker, queue_id, max_offset, done,
                               max(max_offset - done, 0), "delayed"))
    return rows


async def _timer_rows(admin: ClusterAdmin, addr: str, broker: str) -> list[BacklogRow]:
    """5.x timer messages not yet in the wheel, then those in the wheel.

    The checkpoint's queue offset trails the wheel (it is flushed every second), and it is read
    before the wheel's count: a message entering the wheel in between is counted twice, never
    missed.
    """
    checkpoint = await admin.client.invoke(addr, RequestCode.GET_TIMER_CHECK_POINT)
    if len(checkpoint.body) < 32:
        raise ProtocolError(f"timer checkpoint of {addr} is {len(checkpoint.body)} bytes, expected 56")
    _, _, entered, _ = struct.unpack_from(">4q", checkpoint.body, 0)
    max_offset = await admin.max_offset(addr, TIMER_TOPIC, 0)
    runtime = await admin.broker_runtime_info(addr)
    if "timerCongestNum" not in runtime:
        raise BacklogError(f"broker {broker} ({addr}) has the timer wheel on but reports no timerCongestNum")
    entered = max(min(entered, max_offset), 0)
    return [BacklogRow(None, TIMER_TOPIC, broker, 0, max_offset, entered, max_offset - entered, "timer"),
            BacklogRow(None, TIMER_TOPIC, broker, TIMER_WHEEL_QUEUE_ID, None, None,
                       max(int(runtime["timerCongestNum"]), 0), "timer")]


@dataclass(frozen=True)
class HalfState:
    """The half queue from the checker's offset to its end, and which of those halves are resolved."""

    queue_id: int
    start: int
    max_offset: int
    resolved: frozenset[int] = field(default_factory=frozenset)

    @property
    def pending(self) -> int:
        return self.max_offset - self.start - len(self.resolved)

    def is_pending(self, offset: int) -> bool:
        return self.start <= offset < self.max_offset and offset not in self.resolved


async def half_state(admin: ClusterAdmin, addr: str) -> HalfState:
    """Uncommitted half messages of one broker, as the transaction checker will see them.

    The checker (group CID_RMQ_SYS_TRANS) has passed every half below its offset: committed,
    rolled back, discarded, or re-put at the end of the queue to be checked again. From there on,
    a half is resolved when an op message (tag ``d``, body: half offsets, comma separated on 5.x)
    names it; those op messages all lie after the checker's op offset.
    """
    # The checker re-puts an unresolved half at the end of the queue before it moves its offset
    # past the original: reading its offsets first and the queue ends after counts such a half
    # once or twice, never zero times.
    half_done = await admin.query_consumer_offset(addr, TRANS_CHECK_GROUP, HALF_TOPIC, HALF_QUEUE_ID)
    op_done = await admin.query_consumer_offset(addr, TRANS_CHECK_GROUP, OP_TOPIC, HALF_QUEUE_ID)
    half_min, half_max, op_min, op_max = await gather_all(
        admin.min_offset(addr, HALF_TOPIC, HALF_QUEUE_ID), admin.max_offset(addr, HALF_TOPIC, HALF_QUEUE_ID),
        admin.min_offset(addr, OP_TOPIC, HALF_QUEUE_ID), admin.max_offset(addr, OP_TOPIC, HALF_QUEUE_ID))
    start = max(half_done if half_done is not None else half_min, half_min)
    if start >= half_max:
        return HalfState(HALF_QUEUE_ID, half_max, half_max)
    op_start = max(op_done if op_done is not None else op_min, op_min)
    resolved = {offset for offset in await _op_half_offsets(admin, addr, op_start, op_max)
                if start <= offset < half_max}
    return HalfState(HALF_QUEUE_ID, start, half_max, frozenset(resolved))


async def _pending_halves(admin: ClusterAdmin, addr: str,
                          state: HalfState | None = None) -> list[tuple[int, dict[str, str], bytes]]:
    """(offset, properties, body) of every half message of one broker still waiting for its commit."""
    state = state or await half_state(admin, addr)
    return [m for m in await _queue_messages(admin, addr, HALF_TOPIC, HALF_QUEUE_ID, state.start, state.max_offset)
            if state.is_pending(m[0])]


async def pending_halves_by_topic(admin: ClusterAdmin, addr: str, topics: Iterable[str],
                                  limit: int = ATTRIBUTION_LIMIT) -> dict[str, int]:
    """Per topic of ``topics``, the half messages on one broker that wait for their commit.

    A producer group that moves away while a half is pending leaves the broker's check-back
    with nobody to ask, and the half is eventually discarded. More pending halves than
    ``limit`` are not read: that raises, the figure is unknown.
    """
    state = await half_state(admin, addr)
    if state.pending > limit:
        raise BacklogError(f"{addr} holds {state.pending} pending half messages, more than the {limit} read:"
                           " which topics they belong to is unknown")
    wanted = set(topics)
    counts = dict.fromkeys(sorted(wanted), 0)
    for _, properties, _ in await _pending_halves(admin, addr, state):
        topic = properties.get("REAL_TOPIC")
        if topic in wanted:
            counts[topic] += 1
    return counts


async def _half_rows(admin: ClusterAdmin, addr: str, broker: str) -> list[BacklogRow]:
    state = await half_state(admin, addr)
    return [BacklogRow(None, HALF_TOPIC, broker, state.queue_id, state.max_offset, state.start,
                       max(state.pending, 0), "half")]


async def _queue_messages(admin: ClusterAdmin, addr: str, topic: str, queue_id: int, start: int,
                          end: int) -> list[tuple[int, dict[str, str], bytes]]:
    """(queue offset, properties, body) of every message in [start, end) of one queue.

    System queues have no topic config on 4.9 (a pull is refused), so the consume queue is read
    with QUERY_CONSUME_QUEUE and each message by its commit log offset (VIEW_MESSAGE_BY_ID).
    """
    entries: list[tuple[int, dict[str, Any]]] = []
    index = start
    while index < end:
        resp = await admin.client.invoke(addr, RequestCode.QUERY_CONSUME_QUEUE,
                                         {"topic": topic, "queueId": queue_id, "index": index,
                                          "count": min(_CQ_PAGE, end - index)})
        page = (loads(resp.body).get("queueData") or []) if resp.body else []
        if not page:
            raise BacklogError(f"{addr} returned no consume queue entry at index {index} of {topic}:{queue_id}"
                               f" (queue ends at {end}): {resp.remark or 'no remark'}")
        entries.extend((index + i, entry) for i, entry in enumerate(page[:end - index]))
        index += len(page)
    messages = await admin.gather(
        admin.client.invoke(addr, RequestCode.VIEW_MESSAGE_BY_ID, {"offset": int(e["physicOffset"])})
        for _, e in entries)
    return [(offset, *decode_stored_message(resp.body)) for (offset, _), resp in zip(entries, messages)]


async def _op_half_offsets(admin: ClusterAdmin, addr: str, start: int, end: int) -> list[int]:
    """Half offsets named by the op messages in [start, end) of the op queue."""
    offsets = []
    for _, properties, body in await _queue_messages(admin, addr, OP_TOPIC, HALF_QUEUE_ID, start, end):
        if properties.get("TAGS") == OP_REMOVE_TAG:
            offsets.extend(int(part) for part in body.decode("utf-8", "replace").split(",") if part.strip().isdigit())
    return offsets


async def attribute_system_rows(admin: ClusterAdmin, report: "BacklogReport",
                                limit: int = ATTRIBUTION_LIMIT) -> "BacklogReport":
    """Keep only the pending delayed and half messages bound for the groups' own topics.

    A cutover waits for what its consumers will receive, not for another team's delayed
    messages. Each pending message is read for its real topic (REAL_TOPIC); the groups' topics
    are those of their rows, retry topics included. Timer messages cannot be listed, and a
    range longer than ``limit`` is not read: both still count in full, so the figure can be too
    high, never too low.
    """
    topics = {r.topic for r in report.rows if r.group is not None}
    addrs = {b.name: b.master for b in await admin.masters(report.cluster)}
    rows = []
    for row in report.rows:
        if row.kind not in ("delayed", "half") or row.lag == 0 or row.lag > limit:
            rows.append(row)
            continue
        addr = addrs[row.broker]
        if row.kind == "half":
            messages = await _pending_halves(admin, addr)
        else:
            messages = await _queue_messages(admin, addr, SCHEDULE_TOPIC, row.queue_id, row.consumer_offset,
                                             row.broker_offset)
        ours = sum(1 for _, properties, _ in messages if properties.get("REAL_TOPIC") in topics)
        rows.append(replace(row, lag=ours))
    return replace(report, rows=tuple(rows))


# --- wire formats ------------------------------------------------------------------------------



def decode_stored_message(data: bytes) -> tuple[dict[str, str], bytes]:
    """Properties and body of one message in the broker's stored layout (V1 4.x, V2 5.x)."""
    message, _ = decode_message(data)
    return message.properties, message.body


def _opt(value: int | None) -> str:
    return "-" if value is None else str(value)


__all__ = [
    "BacklogError", "BacklogReport", "BacklogRow", "HalfState", "Kind", "PER_GROUP_LIMIT",
    "decode_stored_message", "half_state",
    "measure_backlog", "pending_halves_by_topic",
]
