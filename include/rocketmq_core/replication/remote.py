"""The replication requests over a RemotingClient: the I/O half of codec.py."""

from __future__ import annotations

from rocketmq_core.errors import ConnectionFailed, ProtocolError, RequestTimeout, ResponseError
from rocketmq_core.remoting.client import RemotingClient
from rocketmq_core.remoting.protocol import RequestCode
from rocketmq_core.replication import codec
from rocketmq_core.replication.codec import PullResult, SendResult, StoredMessage

#: What a request may fail with that the worker waits out and retries, never dies of.
TRANSIENT = (ConnectionFailed, RequestTimeout, ResponseError, ProtocolError)


async def pull(client: RemotingClient, addr: str, group: str, topic: str, queue_id: int, offset: int,
               max_msgs: int = 32, suspend_ms: int = 0, broker_name: str | None = None,
               timeout: float | None = None) -> PullResult:
    """Pull from ``offset`` without committing; a held (suspended) pull needs a timeout longer
    than the suspension."""
    wait = timeout if timeout is not None else max(client.timeout, suspend_ms / 1000 + 5)
    resp = await client.invoke(addr, RequestCode.PULL_MESSAGE,
                               codec.pull_request(group, topic, queue_id, offset, max_msgs, suspend_ms, broker_name),
                               timeout=wait, accept=codec.PULL_ACCEPT)
    return codec.parse_pull_response(resp)


async def send_v2(client: RemotingClient, addr: str, producer_group: str, topic: str, queue_id: int,
                  body: bytes, properties: str, born_timestamp: int, flag: int = 0, sys_flag: int = 0,
                  broker_name: str | None = None, timeout: float | None = None) -> SendResult:
    """Store one message in one queue of the broker at ``addr``; raises unless it was stored."""
    resp = await client.invoke(addr, RequestCode.SEND_MESSAGE_V2,
                               codec.send_v2_request(producer_group, topic, queue_id, properties, born_timestamp,
                                                     flag, sys_flag, broker_name),
                               body=body, timeout=timeout, accept=codec.SEND_ACCEPT)
    return codec.parse_send_response(resp)


async def send_batch(client: RemotingClient, addr: str, producer_group: str, topic: str, queue_id: int,
                     messages: list[tuple[bytes, int, str]], born_timestamp: int, broker_name: str | None = None,
                     timeout: float | None = None) -> SendResult:
    """Store several messages, in order and all or none, in one queue (SEND_BATCH_MESSAGE with
    the V2 header); each message keeps its own flag and properties."""
    resp = await client.invoke(addr, RequestCode.SEND_BATCH_MESSAGE,
                               codec.send_v2_request(producer_group, topic, queue_id, "", born_timestamp, 0, 0,
                                                     broker_name, batch=True),
                               body=codec.encode_batch(messages), timeout=timeout, accept=codec.SEND_ACCEPT)
    return codec.parse_send_response(resp)


async def heartbeat(client: RemotingClient, addr: str, body: bytes) -> None:
    await client.invoke(addr, RequestCode.HEART_BEAT, body=body)


async def consumer_ids(client: RemotingClient, addr: str, group: str) -> list[str]:
    """Client ids of the group's consumers registered at one broker, sorted."""
    resp = await client.invoke(addr, RequestCode.GET_CONSUMER_LIST_BY_GROUP, {"consumerGroup": group})
    return codec.parse_consumer_list(resp)


async def unregister(client: RemotingClient, addr: str, client_id: str, group: str) -> None:
    await client.invoke(addr, RequestCode.UNREGISTER_CLIENT, codec.unregister_request(client_id, group))


async def pull_range(client: RemotingClient, addr: str, topic: str, queue_id: int, start: int, end: int,
                     group: str = "TOOLS_CONSUMER") -> list[StoredMessage]:
    """Every message of one queue in [start, end), read without committing anything (for
    reconciliation: what a cluster really holds, duplicates included)."""
    out: list[StoredMessage] = []
    offset = start
    while offset < end:
        result = await pull(client, addr, group, topic, queue_id, offset, max_msgs=32)
        if result.status is codec.PullStatus.FOUND:
            out.extend(m for m in result.messages if m.queue_offset < end)
        if result.next_begin_offset <= offset:
            break
        offset = result.next_begin_offset
    return out
