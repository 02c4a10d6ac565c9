"""Offsets by time: find the first message stored at or after a time, and move a group there.

5.x brokers answer both exactly. 4.9 brokers answer the message whose store time is *closest*,
so on 4.9 the store times of the messages around that answer decide (read by pulls that commit
nothing). Replication starts from a time and resets to one with these.
"""

from __future__ import annotations

import struct

from rocketmq_core.admin import ClusterAdmin, gather_all
from rocketmq_core.errors import ConsumerNotOnline, ProtocolError, RocketMQError
from rocketmq_core.model import MessageQueue, validate_group_name
from rocketmq_core.remoting.fastjson import loads
from rocketmq_core.remoting.protocol import RequestCode, ResponseCode

_SCAN = 32
_TOOLS_GROUP = "TOOLS_CONSUMER"  # a group every broker has; pulls that commit nothing use it
_PULL_SUBSCRIPTION = 1 << 2      # PullSysFlag: the subscription travels with the pull
_BORN_HOST_V6 = 1 << 4           # MessageSysFlag: 16-byte born host address


async def search_offset(admin: ClusterAdmin, addr: str, topic: str, queue_id: int, timestamp_ms: int) -> int:
    """The first offset whose store time is at or after the timestamp (the max offset if none is).

    5.x brokers answer exactly that. 4.9 brokers answer the message whose store time is
    *closest* (possibly the one before it, or the last message when the time is after them
    all), so the broker's answer is only where to start: the store times of the messages
    around it decide.
    """
    hint = await _broker_search_offset(admin, addr, topic, queue_id, timestamp_ms)
    low, high = await gather_all(admin.min_offset(addr, topic, queue_id), admin.max_offset(addr, topic, queue_id))
    offset = min(max(hint, low), high)
    while offset > low:  # back, while the message before is at or after the time
        start = max(low, offset - _SCAN)
        before = [o for o, t in await _read_store_times(admin, addr, topic, queue_id, start, offset - start)
                  if t < timestamp_ms and o < offset]
        if before:
            offset = max(before) + 1
            break
        offset = start
    while offset < high:  # forward, past messages stored before the time
        window = await _read_store_times(admin, addr, topic, queue_id, offset, _SCAN)
        if not window:
            break
        hit = next((o for o, t in window if t >= timestamp_ms), None)
        if hit is not None:
            return hit
        offset = window[-1][0] + 1
    return offset


async def _broker_search_offset(admin: ClusterAdmin, addr: str, topic: str, queue_id: int, timestamp_ms: int) -> int:
    """The broker's own SEARCH_OFFSET_BY_TIMESTAMP answer, which 4.9 also uses to reset offsets."""
    resp = await admin.client.invoke(addr, RequestCode.SEARCH_OFFSET_BY_TIMESTAMP,
                                     {"topic": topic, "queueId": queue_id, "timestamp": timestamp_ms})
    return int(resp.ext_fields["offset"])


async def _read_store_times(admin: ClusterAdmin, addr: str, topic: str, queue_id: int, offset: int,
                            count: int) -> list[tuple[int, int]]:
    """(queue offset, store timestamp) of up to ``count`` messages from ``offset``, read by a
    pull that commits nothing."""
    resp = await admin.client.invoke(addr, RequestCode.PULL_MESSAGE, {
        "consumerGroup": _TOOLS_GROUP, "topic": topic, "queueId": queue_id, "queueOffset": offset,
        "maxMsgNums": count, "sysFlag": _PULL_SUBSCRIPTION, "commitOffset": 0, "suspendTimeoutMillis": 0,
        "subscription": "*", "subVersion": 0, "expressionType": "TAG"},
        accept=(ResponseCode.SUCCESS, ResponseCode.PULL_NOT_FOUND, ResponseCode.PULL_RETRY_IMMEDIATELY,
                ResponseCode.PULL_OFFSET_MOVED))
    return _store_times(resp.body) if resp.code == ResponseCode.SUCCESS else []


async def reset_to_time(admin: ClusterAdmin, group: str, topic: str, timestamp_ms: int,
                        cluster: str | None = None) -> dict[MessageQueue, int]:
    """Move a group's committed offsets on a topic to the first message at or after a time.

    5.x brokers do this themselves, exactly, online group or not. A 4.9 broker tells online
    consumers (they would otherwise overwrite the offsets) but picks the message whose store
    time is *closest* to the timestamp; so on 4.9 the exact offsets are computed here, written
    directly for a group with no consumer online, and pushed through the broker only when its
    choice is the exact one on every queue -- otherwise nothing is changed and the error says so.
    """
    validate_group_name(group)
    result: dict[MessageQueue, int] = {}
    for broker in await admin.masters(cluster):
        addr = broker.master
        header = {"topic": topic, "group": group, "timestamp": timestamp_ms, "isForce": "true"}
        if await admin.broker_major(addr) >= 5:  # 5.x resets offsets itself, exactly, online or not
            resp = await admin.client.invoke(addr, RequestCode.INVOKE_BROKER_TO_RESET_OFFSET, header, timeout=30)
            result.update(_reset_table(resp.body))
            continue
        queues = sorted(await admin.topic_offsets(addr, topic), key=lambda q: q.queue_id)
        exact = dict(zip(queues, await admin.gather(
            search_offset(admin, addr, topic, q.queue_id, timestamp_ms) for q in queues)))
        online = (await admin.consumer_connection(addr, group)).clients
        if online:
            closest = dict(zip(queues, await admin.gather(
                _broker_search_offset(admin, addr, topic, q.queue_id, timestamp_ms) for q in queues)))
            wrong = {q.queue_id: (closest[q], exact[q]) for q in queues if closest[q] != exact[q]}
            if wrong:
                raise RocketMQError(
                    f"{addr} (RocketMQ 4.x) would reset online group {group!r} on {topic!r} to the message"
                    f" closest to {timestamp_ms}, not the first at or after it, on queue(s)"
                    f" {', '.join(f'{q}: {c} instead of {e}' for q, (c, e) in sorted(wrong.items()))};"
                    " nothing was changed. Stop the group's consumers (offline groups are reset exactly)"
                    " or choose another time.")
            # C++-based clients (as the Python ones) read the reset only in the broker's C layout,
            # which it sends when the request itself says CPP.
            language = "CPP" if all(c.language == "CPP" for c in online) else "JAVA"
            try:
                resp = await admin.client.invoke(addr, RequestCode.INVOKE_BROKER_TO_RESET_OFFSET, header,
                                                 timeout=30, language=language)
                result.update(_reset_table(resp.body))
                continue
            except ConsumerNotOnline:
                pass  # the group went offline meanwhile: write the offsets directly
        await admin.update_consumer_offsets(addr, group, topic, {q.queue_id: o for q, o in exact.items()})
        result.update(exact)
    return result


def _reset_table(body: bytes | None) -> dict[MessageQueue, int]:
    """The offsets a broker reset a group to, per queue, from its answer to INVOKE_BROKER_TO_RESET_OFFSET."""
    table = (loads(body) if body else {}).get("offsetTable") or {}
    return {MessageQueue.from_key(k): int(v) for k, v in table.items()}


def _store_times(body: bytes) -> list[tuple[int, int]]:
    """(queue offset, store timestamp) of each stored message in a PULL body."""
    out: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < len(body):
            (total,) = struct.unpack_from(">i", body, pos)
            (queue_offset,) = struct.unpack_from(">q", body, pos + 20)
            (sys_flag,) = struct.unpack_from(">i", body, pos + 36)
            born_host = 16 if sys_flag & _BORN_HOST_V6 else 4
            (store_time,) = struct.unpack_from(">q", body, pos + 48 + born_host + 4)
            out.append((queue_offset, store_time))
            if total <= 0:
                break
            pos += total
    except struct.error as exc:
        raise ProtocolError(f"malformed message in a pull body at byte {pos}: {exc}") from exc
    return out
