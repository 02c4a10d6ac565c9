"""Wire pieces of replication, as pure functions: stored messages, PULL_MESSAGE, SEND_MESSAGE_V2,
HEART_BEAT and the consumer list. No I/O here, so every byte layout is unit-tested without a broker.

Stored message layout (one record of a PULL body; records are concatenated)::

    totalSize int | magic int | bodyCRC int | queueId int | flag int | queueOffset long |
    physicalOffset long | sysFlag int | bornTimestamp long | bornHost (4|16) + port int |
    storeTimestamp long | storeHost (4|16) + port int | reconsumeTimes int |
    preparedTransactionOffset long | bodyLen int + body | topicLen (1 byte V1, 2 bytes V2) + topic |
    propertiesLen short + properties

Hosts are 16 bytes when sysFlag has BORNHOST_V6 (0x10) / STOREHOST_V6 (0x20). A body is
compressed when sysFlag has COMPRESSED (0x1); the algorithm is ``(sysFlag & 0x700) >> 8``
(0 and 3 zlib, 1 lz4, 2 zstd). Properties are ``key\\x01value\\x02`` pairs.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from rocketmq_core.errors import ProtocolError
from rocketmq_core.remoting.codec import RemotingCommand
from rocketmq_core.remoting.fastjson import loads
from rocketmq_core.remoting.protocol import ResponseCode

MAGIC_V1 = -626843481  # 0xDAA320A7: 1-byte topic length
MAGIC_V2 = -626843477  # 0xDAA320AB: 2-byte topic length (5.x, long topic names)

# MessageSysFlag
COMPRESSED_FLAG = 0x1
TRANSACTION_MASK = 0x3 << 2
BORNHOST_V6_FLAG = 0x10
STOREHOST_V6_FLAG = 0x20
COMPRESSION_TYPE_MASK = 0x7 << 8
COMPRESSION_ZLIB_LEGACY, COMPRESSION_LZ4, COMPRESSION_ZSTD, COMPRESSION_ZLIB = 0, 1, 2, 3

# PullSysFlag
PULL_COMMIT_OFFSET = 0x1
PULL_SUSPEND = 0x2
PULL_SUBSCRIPTION = 0x4

NAME_VALUE_SEPARATOR = "\x01"
PROPERTY_SEPARATOR = "\x02"

PROPERTY_KEYS = "KEYS"
PROPERTY_TAGS = "TAGS"
PROPERTY_UNIQ_KEY = "UNIQ_KEY"

_HEAD = struct.Struct(">iiiiiqqiq")           # totalSize .. bornTimestamp: 52 bytes
_AFTER_STORE_HOST = struct.Struct(">iqi")     # reconsumeTimes, preparedTransactionOffset, bodyLen
#: totalSize .. bodyLen in one unpack when both hosts are IPv4, as nearly every record's are.
_V4_HEAD = struct.Struct(">iiiiiqqiq4siq4siiqi")
_SHORT = struct.Struct(">h")


class PullStatus(Enum):
    FOUND = "FOUND"
    NO_NEW_MSG = "NO_NEW_MSG"
    NO_MATCHED_MSG = "NO_MATCHED_MSG"
    OFFSET_ILLEGAL = "OFFSET_ILLEGAL"


_PULL_STATUS: dict[int, PullStatus] = {
    ResponseCode.SUCCESS: PullStatus.FOUND,
    ResponseCode.PULL_NOT_FOUND: PullStatus.NO_NEW_MSG,
    ResponseCode.PULL_RETRY_IMMEDIATELY: PullStatus.NO_MATCHED_MSG,
    ResponseCode.PULL_OFFSET_MOVED: PullStatus.OFFSET_ILLEGAL,
}
#: Response codes of PULL_MESSAGE that are answers, not failures.
PULL_ACCEPT = tuple(_PULL_STATUS)

#: Send results a master gives once the message is stored (a flush or a slave lagging behind
#: does not undo the store); anything else is a failure the sender retries.
SEND_FLUSH_DISK_TIMEOUT = 10
SEND_SLAVE_NOT_AVAILABLE = 11
SEND_FLUSH_SLAVE_TIMEOUT = 12
SEND_ACCEPT = (ResponseCode.SUCCESS, SEND_FLUSH_DISK_TIMEOUT, SEND_SLAVE_NOT_AVAILABLE, SEND_FLUSH_SLAVE_TIMEOUT)


@dataclass(slots=True)
class StoredMessage:
    """One message as the broker stored it. ``body`` is decompressed unless ``compressed``
    stays true (an algorithm this process has no library for): then ``sys_flag`` still says
    how, so the body can be forwarded as it is."""

    topic: str
    queue_id: int
    queue_offset: int
    body: bytes
    properties: dict[str, str] = field(default_factory=dict)
    flag: int = 0
    sys_flag: int = 0
    born_timestamp: int = 0
    born_host: str = ""
    store_timestamp: int = 0
    store_host: str = ""
    physical_offset: int = 0
    reconsume_times: int = 0
    prepared_transaction_offset: int = 0
    body_crc: int = 0
    magic: int = MAGIC_V1
    compressed: bool = False

    @property
    def keys(self) -> list[str]:
        return [k for k in self.properties.get(PROPERTY_KEYS, "").split(" ") if k]

    @property
    def tags(self) -> str | None:
        return self.properties.get(PROPERTY_TAGS)

    @property
    def msg_id(self) -> str | None:
        """The producer's unique id (UNIQ_KEY), what clients show as the message id."""
        return self.properties.get(PROPERTY_UNIQ_KEY)


# --- properties ------------------------------------------------------------------------------

def encode_properties(properties: Mapping[str, str]) -> str:
    """``key\\x01value\\x02`` for each pair; separators inside names or values would corrupt the
    message, so they are refused here rather than stored."""
    if not properties:
        return ""
    text = PROPERTY_SEPARATOR.join(map(NAME_VALUE_SEPARATOR.join, properties.items())) + PROPERTY_SEPARATOR
    n = len(properties)
    # each pair adds exactly one of each separator: more means one hides in a name or value
    if text.count(NAME_VALUE_SEPARATOR) != n or text.count(PROPERTY_SEPARATOR) != n or "" in properties:
        bad = [k for k, v in properties.items()
               if not k or any(sep in f"{k}{v}" for sep in (NAME_VALUE_SEPARATOR, PROPERTY_SEPARATOR))]
        raise ProtocolError(f"message property {bad[0]!r} holds a property separator (\\x01 or \\x02) or is empty")
    return text


def decode_properties(text: str) -> dict[str, str]:
    """The inverse of encode_properties; tolerant of a missing trailing separator, as Java is."""
    result: dict[str, str] = {}
    for item in text.split(PROPERTY_SEPARATOR):
        if not item:
            continue
        key, sep, value = item.partition(NAME_VALUE_SEPARATOR)
        if sep and key:
            result[key] = value
    return result


# --- stored messages -------------------------------------------------------------------------

def _host(data: bytes | memoryview, pos: int, v6: bool) -> tuple[str, int]:
    size = 16 if v6 else 4
    if pos + size + 4 > len(data):
        raise struct.error("host runs past the record")
    packed = bytes(data[pos:pos + size])
    (port,) = struct.unpack_from(">i", data, pos + size)
    text = f"[{socket.inet_ntop(socket.AF_INET6, packed)}]:{port}" if v6 else f"{socket.inet_ntoa(packed)}:{port}"
    return text, pos + size + 4


def decompress(body: bytes, sys_flag: int) -> tuple[bytes, bool]:
    """(body, still_compressed): zlib always; lz4 and zstd when their libraries are installed."""
    if not sys_flag & COMPRESSED_FLAG:
        return body, False
    kind = (sys_flag & COMPRESSION_TYPE_MASK) >> 8
    try:
        if kind in (COMPRESSION_ZLIB_LEGACY, COMPRESSION_ZLIB):
            return zlib.decompress(body), False
        if kind == COMPRESSION_LZ4:
            import lz4.frame  # type: ignore[import-not-found,unused-ignore]
            return lz4.frame.decompress(body), False
        if kind == COMPRESSION_ZSTD:
            import zstandard  # type: ignore[import-not-found,unused-ignore]
            return zstandard.ZstdDecompressor().decompressobj().decompress(body), False
    except ImportError:
        return body, True
    except Exception as exc:  # zlib.error and the libraries' own errors
        raise ProtocolError(f"compressed message body (type {kind}) does not decompress: {exc}") from exc
    raise ProtocolError(f"unknown compression type {kind} in sysFlag {sys_flag:#x}")


def decode_message(data: bytes | memoryview, pos: int = 0) -> tuple[StoredMessage, int]:
    """One stored record at ``pos``; returns it and the position of the next."""
    try:
        (total, magic, body_crc, queue_id, flag, queue_offset, physical_offset, sys_flag, born_ts, born_ip,
         born_port, store_ts, store_ip, store_port, reconsume, prepared, body_len) = _V4_HEAD.unpack_from(data, pos)
        if magic not in (MAGIC_V1, MAGIC_V2):
            raise ProtocolError(f"unknown message magic {magic:#x} at byte {pos}")
        end = pos + total
        if total < _HEAD.size or end > len(data):
            raise ProtocolError(f"message at byte {pos} claims {total} bytes; {len(data) - pos} are left")
        if sys_flag & (BORNHOST_V6_FLAG | STOREHOST_V6_FLAG):
            cur = pos + _HEAD.size
            born_host, cur = _host(data, cur, bool(sys_flag & BORNHOST_V6_FLAG))
            (store_ts,) = struct.unpack_from(">q", data, cur)
            store_host, cur = _host(data, cur + 8, bool(sys_flag & STOREHOST_V6_FLAG))
            reconsume, prepared, body_len = _AFTER_STORE_HOST.unpack_from(data, cur)
            cur += _AFTER_STORE_HOST.size
        else:
            born_host = f"{socket.inet_ntoa(born_ip)}:{born_port}"
            store_host = f"{socket.inet_ntoa(store_ip)}:{store_port}"
            cur = pos + _V4_HEAD.size
        if body_len < 0 or cur + body_len > end:
            raise ProtocolError(f"body of {body_len} bytes runs past the message at byte {pos}")
        raw_body = bytes(data[cur:cur + body_len])
        cur += body_len
        if magic == MAGIC_V1:
            topic_len = data[cur]
            cur += 1
        else:
            (topic_len,) = _SHORT.unpack_from(data, cur)
            cur += 2
        topic = str(data[cur:cur + topic_len], "utf-8")
        cur += topic_len
        (props_len,) = _SHORT.unpack_from(data, cur)
        cur += 2
        if props_len < 0 or cur + props_len > end:
            raise ProtocolError(f"properties of {props_len} bytes run past the message at byte {pos}")
        properties = decode_properties(str(data[cur:cur + props_len], "utf-8"))
    except (struct.error, IndexError, UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, ProtocolError):
            raise
        raise ProtocolError(f"malformed stored message at byte {pos}: {exc}") from exc
    body, still_compressed = decompress(raw_body, sys_flag) if sys_flag & COMPRESSED_FLAG else (raw_body, False)
    return StoredMessage(topic, queue_id, queue_offset, body, properties, flag, sys_flag, born_ts, born_host,
                         store_ts, store_host, physical_offset, reconsume, prepared, body_crc, magic,
                         still_compressed), end


def decode_messages(body: bytes) -> list[StoredMessage]:
    """Every record of a PULL body, in order."""
    view = memoryview(body)
    messages: list[StoredMessage] = []
    pos = 0
    while pos < len(view):
        message, pos = decode_message(view, pos)
        messages.append(message)
    return messages


def _pack_host(host: str, v6: bool) -> bytes:
    addr, _, port = host.rpartition(":")
    ip = ipaddress.ip_address(addr.strip("[]") or ("::" if v6 else "0.0.0.0"))
    if (ip.version == 6) != v6:
        raise ProtocolError(f"host {host!r} does not match the sysFlag's address family")
    return ip.packed + struct.pack(">i", int(port or 0))


def encode_message(msg: StoredMessage, compress_with: int | None = None) -> bytes:
    """The stored form of a message, as a broker writes it into the commit log and a PULL body.

    The replicator only decodes; this encoder exists so the decoder is checked against every
    variant (V1/V2, IPv4/IPv6, compressed) without a broker. ``compress_with`` compresses the
    body with zlib and marks sysFlag (0 = legacy zlib, 3 = zlib type bits).
    """
    sys_flag = msg.sys_flag
    body = msg.body
    if compress_with is not None:
        body = zlib.compress(body)
        sys_flag = (sys_flag & ~COMPRESSION_TYPE_MASK) | COMPRESSED_FLAG | (compress_with << 8)
    topic = msg.topic.encode()
    props = encode_properties(msg.properties).encode()
    if msg.magic == MAGIC_V1 and len(topic) > 127:
        raise ProtocolError("a V1 record holds topics of at most 127 bytes")
    topic_part = (bytes([len(topic)]) if msg.magic == MAGIC_V1 else struct.pack(">h", len(topic))) + topic
    tail = (_pack_host(msg.born_host, bool(sys_flag & BORNHOST_V6_FLAG)) + struct.pack(">q", msg.store_timestamp)
            + _pack_host(msg.store_host, bool(sys_flag & STOREHOST_V6_FLAG))
            + _AFTER_STORE_HOST.pack(msg.reconsume_times, msg.prepared_transaction_offset, len(body)) + body
            + topic_part + struct.pack(">h", len(props)) + props)
    total = _HEAD.size + len(tail)
    head = _HEAD.pack(total, msg.magic, zlib.crc32(body) & 0x7FFFFFFF, msg.queue_id, msg.flag, msg.queue_offset,
                      msg.physical_offset, sys_flag, msg.born_timestamp)
    return head + tail


# --- PULL_MESSAGE ----------------------------------------------------------------------------

@dataclass
class PullResult:
    status: PullStatus
    next_begin_offset: int
    min_offset: int
    max_offset: int
    messages: list[StoredMessage]


def pull_request(group: str, topic: str, queue_id: int, offset: int, max_msgs: int = 32,
                 suspend_ms: int = 0, broker_name: str | None = None) -> dict[str, object]:
    """extFields of a PULL_MESSAGE that carries its own subscription ("*") and commits nothing:
    offsets are committed separately, only after the target acknowledged."""
    flags = PULL_SUBSCRIPTION | (PULL_SUSPEND if suspend_ms > 0 else 0)
    fields: dict[str, object] = {
        "consumerGroup": group, "topic": topic, "queueId": queue_id, "queueOffset": offset,
        "maxMsgNums": max_msgs, "sysFlag": flags, "commitOffset": 0, "suspendTimeoutMillis": suspend_ms,
        "subscription": "*", "subVersion": 0, "expressionType": "TAG",
    }
    if broker_name:
        fields["bname"] = broker_name
    return fields


def parse_pull_response(response: RemotingCommand) -> PullResult:
    status = _PULL_STATUS.get(response.code)
    if status is None:
        raise ProtocolError(f"PULL_MESSAGE answered with code {response.code}, which is no pull status")
    ext = response.ext_fields
    try:
        next_begin, min_offset, max_offset = (int(ext.get(k, "0")) for k in ("nextBeginOffset", "minOffset",
                                                                              "maxOffset"))
    except ValueError as exc:
        raise ProtocolError(f"PULL_MESSAGE response header is not numeric: {ext}") from exc
    messages = decode_messages(response.body) if status is PullStatus.FOUND and response.body else []
    return PullResult(status, next_begin, min_offset, max_offset, messages)


# --- SEND_MESSAGE_V2 -------------------------------------------------------------------------

@dataclass(frozen=True)
class SendResult:
    msg_id: str
    queue_id: int
    queue_offset: int
    code: int


def send_v2_request(producer_group: str, topic: str, queue_id: int, properties: str, born_timestamp: int,
                    flag: int = 0, sys_flag: int = 0, broker_name: str | None = None,
                    default_topic: str = "TBW102", default_topic_queues: int = 4,
                    reconsume_times: int = 0, batch: bool = False) -> dict[str, object]:
    """extFields of SEND_MESSAGE_V2 (SendMessageRequestHeaderV2's one-letter names) for one
    message to an explicit queue; with ``batch`` the header of SEND_BATCH_MESSAGE, whose
    ``properties`` are the batch's own (each message carries its own in the body)."""
    fields: dict[str, object] = {
        "a": producer_group, "b": topic, "c": default_topic, "d": default_topic_queues, "e": queue_id,
        "f": sys_flag, "g": born_timestamp, "h": flag, "i": properties, "j": reconsume_times,
        "k": "false", "m": "true" if batch else "false",
    }
    if broker_name:
        fields["n"] = broker_name
    return fields


#: What a batch record adds to its body and properties: totalSize, magic, bodyCRC, flag, bodyLen
#: (ints) and propertiesLen (short).
_BATCH_HEAD = struct.Struct(">iiiii")


def encode_batch(messages: Iterable[tuple[bytes, int, str]]) -> bytes:
    """The body of SEND_BATCH_MESSAGE (MessageDecoder.encodeMessages): for each (body, flag,
    properties) ``totalSize | magic 0 | bodyCRC 0 | flag | bodyLen + body | propsLen + props``.
    The request header is send_v2_request's with ``m`` (batch) true."""
    parts: list[bytes] = []
    for body, flag, properties in messages:
        props = properties.encode()
        if len(props) > 32767:
            raise ProtocolError(f"message properties of {len(props)} bytes exceed a batch record's 32767")
        total = _BATCH_HEAD.size + len(body) + 2 + len(props)
        parts += (_BATCH_HEAD.pack(total, 0, 0, flag, len(body)), body, _SHORT.pack(len(props)), props)
    return b"".join(parts)


def decode_batch(data: bytes) -> list[tuple[bytes, int, str]]:
    """The inverse of encode_batch (what a broker splits a batch into)."""
    out, pos = [], 0
    try:
        while pos < len(data):
            total, _magic, _crc, flag, body_len = _BATCH_HEAD.unpack_from(data, pos)
            body_at = pos + _BATCH_HEAD.size
            body = data[body_at:body_at + body_len]
            (props_len,) = struct.unpack_from(">h", data, body_at + body_len)
            props_at = body_at + body_len + 2
            out.append((body, flag, data[props_at:props_at + props_len].decode()))
            if total <= 0:
                raise ProtocolError(f"batch record at byte {pos} claims {total} bytes")
            pos += total
    except (struct.error, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed batch record at byte {pos}: {exc}") from exc
    return out


def parse_send_response(response: RemotingCommand) -> SendResult:
    ext = response.ext_fields
    try:
        return SendResult(msg_id=ext.get("msgId", ""), queue_id=int(ext.get("queueId", "-1")),
                          queue_offset=int(ext.get("queueOffset", "-1")), code=response.code)
    except ValueError as exc:
        raise ProtocolError(f"SEND_MESSAGE_V2 response header is not numeric: {ext}") from exc


# --- HEART_BEAT, consumer list, unregister ---------------------------------------------------

CONSUME_FROM = {"latest": "CONSUME_FROM_LAST_OFFSET", "earliest": "CONSUME_FROM_FIRST_OFFSET",
                "timestamp": "CONSUME_FROM_TIMESTAMP"}


def heartbeat_body(client_id: str, group: str, topics: Iterable[str], consume_from: str = "latest",
                   sub_version: int = 0) -> bytes:
    """HeartbeatData JSON registering one push-style (CONSUME_PASSIVELY), clustering consumer of
    ``group`` subscribed to every tag of each topic; field names as in the Java classes
    HeartbeatData, ConsumerData and SubscriptionData (same in 4.9 and 5.x)."""
    subscriptions = [{"classFilterMode": False, "topic": t, "subString": "*", "tagsSet": [], "codeSet": [],
                      "subVersion": sub_version, "expressionType": "TAG"} for t in sorted(set(topics))]
    data = {"clientID": client_id, "producerDataSet": [], "consumerDataSet": [{
        "groupName": group, "consumeType": "CONSUME_PASSIVELY", "messageModel": "CLUSTERING",
        "consumeFromWhere": CONSUME_FROM.get(consume_from, CONSUME_FROM["latest"]),
        "subscriptionDataSet": subscriptions, "unitMode": False}]}
    return json.dumps(data, separators=(",", ":")).encode()


def parse_consumer_list(response: RemotingCommand) -> list[str]:
    """GET_CONSUMER_LIST_BY_GROUP's client ids, sorted as the allocation needs them."""
    data = loads(response.body) if response.body else {}
    return sorted(str(c) for c in (data.get("consumerIdList") or []))


def unregister_request(client_id: str, group: str) -> dict[str, object]:
    return {"clientID": client_id, "consumerGroup": group}
