"""The remoting protocol: codec, tolerant body parser and ACL signing without a broker; many
requests in flight, timeouts, dropped connections and restarts against real brokers."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import struct
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from rocketmq_core.errors import (
    RESPONSE_ERRORS, AccessDenied, ConnectionFailed, ConsumerNotOnline, NotFound, ProtocolError, QueryNotFound,
    RequestCodeNotSupported, RequestTimeout, ResponseError, ServerError, ServiceNotAvailable, SubscriptionGroupNotExist,
    SystemBusy, TopicNotExist, response_error,
)
from rocketmq_core.model import MessageQueue, QueueOffsets
from rocketmq_core.remoting import codec
from rocketmq_core.remoting.client import Credentials, RemotingClient
from rocketmq_core.remoting.codec import MAX_FRAME, RemotingCommand, decode, encode, frame_length
from rocketmq_core.remoting.fastjson import loads
from rocketmq_core.remoting.protocol import RequestCode, ResponseCode
from rocketmq_harness import clusters as harness

# --- helpers ----------------------------------------------------------------------------------

PULL_SUSPEND = 1 << 1
PULL_SUBSCRIPTION = 1 << 2


def run(coro):
    return asyncio.run(coro)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def create_topic(client: RemotingClient, addr: str, topic: str, queues: int) -> None:
    await client.invoke(addr, RequestCode.UPDATE_AND_CREATE_TOPIC, {
        "topic": topic, "defaultTopic": "TBW102", "readQueueNums": queues, "writeQueueNums": queues,
        "perm": 6, "topicFilterType": "SINGLE_TAG", "topicSysFlag": 0, "order": "false"})


async def send(client: RemotingClient, addr: str, topic: str, queue_id: int, body: bytes) -> int:
    """Store one message in one queue (SEND_MESSAGE); returns its queue offset."""
    resp = await client.invoke(addr, RequestCode.SEND_MESSAGE, {
        "producerGroup": "PG_remoting_test", "topic": topic, "defaultTopic": "TBW102",
        "defaultTopicQueueNums": 4, "queueId": queue_id, "sysFlag": 0,
        "bornTimestamp": int(time.time() * 1000), "flag": 0, "properties": "WAIT\x01true\x02",
        "reconsumeTimes": 0, "unitMode": "false", "batch": "false"}, body=body)
    return int(resp.ext_fields["queueOffset"])


async def max_offset(client: RemotingClient, addr: str, topic: str, queue_id: int) -> int:
    resp = await client.invoke(addr, RequestCode.GET_MAX_OFFSET, {"topic": topic, "queueId": queue_id})
    return int(resp.ext_fields["offset"])


async def until_max_offset(client: RemotingClient, addr: str, topic: str, queue_id: int, expected: int) -> None:
    """Wait until a stored message is in its consume queue (the broker dispatches asynchronously):
    a pull is held only at exactly the max offset, not past it."""
    deadline = time.monotonic() + 10
    while await max_offset(client, addr, topic, queue_id) != expected:
        assert time.monotonic() < deadline, f"max offset of {topic} never reached {expected}"
        await asyncio.sleep(0.01)


def held_pull(topic: str, queue_id: int, offset: int, suspend_ms: int) -> dict[str, object]:
    """A pull at the end of a queue: the broker holds it until a message arrives or suspend_ms pass."""
    return {"consumerGroup": "TOOLS_CONSUMER", "topic": topic, "queueId": queue_id, "queueOffset": offset,
            "maxMsgNums": 1, "sysFlag": PULL_SUSPEND | PULL_SUBSCRIPTION, "commitOffset": 0,
            "suspendTimeoutMillis": suspend_ms, "subscription": "*", "subVersion": 0, "expressionType": "TAG"}


PULL_CODES = (ResponseCode.SUCCESS, ResponseCode.PULL_NOT_FOUND, ResponseCode.PULL_RETRY_IMMEDIATELY,
              ResponseCode.PULL_OFFSET_MOVED)


async def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def binary_header(code: int, language: int, version: int, opaque: int, flag: int, remark: str | None,
                  ext: dict[str, str]) -> bytes:
    """The ROCKETMQ serialize type's header, written field by field as RocketMQSerializable does."""
    out = struct.pack(">hbhii", code, language, version, opaque, flag)
    remark_bytes = remark.encode() if remark is not None else b""
    out += struct.pack(">i", len(remark_bytes)) + remark_bytes
    ext_bytes = b""
    for key, value in ext.items():
        k, v = key.encode(), value.encode()
        ext_bytes += struct.pack(">h", len(k)) + k + struct.pack(">i", len(v)) + v
    return out + struct.pack(">i", len(ext_bytes)) + ext_bytes


def binary_frame(header: bytes, body: bytes = b"") -> bytes:
    """A whole frame, length prefix included, with serialize type 1 (ROCKETMQ)."""
    return struct.pack(">ii", 4 + len(header) + len(body), (1 << 24) | len(header)) + header + body


# --- codec, no broker ---------------------------------------------------------------------------


def test_encode_decode_round_trip_keeps_every_field():
    cmd = RemotingCommand(code=RequestCode.UPDATE_AND_CREATE_TOPIC,
                          ext_fields={"topic": "T", "perm": 6, "order": "false", "attributes": "+k=v,+ü=ß"},
                          body=b"\x00\x01binary\xff", opaque=123456, flag=codec.RESPONSE_FLAG,
                          remark="rémark with \"quotes\"", version=409)
    frame = encode(cmd)
    (length, mark) = struct.unpack_from(">ii", frame)
    assert length == len(frame) - 4
    assert mark >> 24 == codec.JSON_SERIALIZE
    header = json.loads(frame[8:8 + (mark & 0xFFFFFF)])
    assert header["extFields"]["perm"] == "6"  # every extField value is a string on the wire
    assert header["serializeTypeCurrentRPC"] == "JSON" and header["language"] == "PYTHON"
    back = decode(frame[4:])
    assert back == RemotingCommand(code=17, ext_fields={"topic": "T", "perm": "6", "order": "false",
                                                        "attributes": "+k=v,+ü=ß"},
                                   body=b"\x00\x01binary\xff", opaque=123456, flag=1,
                                   remark="rémark with \"quotes\"", language="PYTHON", version=409)
    assert back.is_response and not back.is_oneway


def test_encode_without_remark_or_body_and_json_header_from_a_java_server():
    frame = encode(RemotingCommand(code=RequestCode.GET_BROKER_CLUSTER_INFO, flag=codec.ONEWAY_FLAG))
    assert "remark" not in json.loads(frame[8:])
    back = decode(frame[4:])
    assert back.remark is None and back.body == b"" and back.is_oneway and not back.is_response
    # What a Java server writes: remark null, extFields null or holding nulls, language JAVA.
    header = b'{"code":17,"extFields":{"a":null,"b":"x"},"flag":1,"language":"JAVA","opaque":9,' \
             b'"serializeTypeCurrentRPC":"JSON","version":407,"remark":null}'
    cmd = decode(struct.pack(">i", len(header)) + header + b"body")
    assert (cmd.code, cmd.ext_fields, cmd.remark, cmd.language, cmd.version, cmd.body) == \
        (17, {"a": "", "b": "x"}, None, "JAVA", 407, b"body")
    header = b'{"code":0,"extFields":null,"flag":1,"opaque":3}'
    assert decode(struct.pack(">i", len(header)) + header).ext_fields == {}


def test_binary_header_decodes_a_hand_built_frame():
    header = binary_header(code=0, language=0, version=479, opaque=0x01020304, flag=1,
                           remark="ok ✓", ext={"offset": "42", "clé": "välue", "empty": ""})
    frame = binary_frame(header, b'{"x":1}')
    assert frame_length(frame[:4]) == len(frame) - 4
    cmd = decode(frame[4:])
    assert cmd.code == 0 and cmd.language == "JAVA" and cmd.version == 479
    assert cmd.opaque == 0x01020304 and cmd.is_response
    assert cmd.remark == "ok ✓"
    assert cmd.ext_fields == {"offset": "42", "clé": "välue", "empty": ""}
    assert cmd.body == b'{"x":1}'
    # No remark and no extFields; other languages by their LanguageCode ordinal.
    for lang, name in ((1, "CPP"), (3, "PYTHON"), (9, "GO"), (12, "RUST")):
        cmd = decode(binary_frame(binary_header(206, lang, 409, 7, 1, None, {}))[4:])
        assert (cmd.code, cmd.language, cmd.remark, cmd.ext_fields, cmd.body) == (206, name, None, {}, b"")


def _raw_binary(header: bytes) -> bytes:
    """A frame without its length prefix whose ROCKETMQ header is exactly these bytes."""
    return struct.pack(">i", (1 << 24) | len(header)) + header


_FIXED = struct.pack(">hbhii", 0, 0, 0, 1, 1)  # code, language, version, opaque, flag


@pytest.mark.parametrize("frame, message", [
    (b"\x00\x00", "too short"),
    (struct.pack(">i", (2 << 24) | 2) + b"{}", "unknown serialize type 2"),
    (struct.pack(">i", 100) + b"{}", "exceeds frame"),
    (struct.pack(">i", 5) + b"{nope", "malformed JSON header"),
    (struct.pack(">i", 12) + b'{"code":"x"}', "malformed JSON header"),  # JSON, not a header's shape
    (struct.pack(">i", 3) + b"[1]", "malformed JSON header"),
    (_raw_binary(b"\x00\x01\x00\x00\x00\x00"), "malformed ROCKETMQ header"),
    # Lengths inside the header that run past its end: never a silently shortened value.
    (_raw_binary(_FIXED + struct.pack(">i", 40) + b"ab" + struct.pack(">i", 0)), "malformed ROCKETMQ header"),
    (_raw_binary(_FIXED + struct.pack(">ii", 0, 50) + b"\x00"), "malformed ROCKETMQ header"),
    (_raw_binary(_FIXED + struct.pack(">ii", 0, 11) + struct.pack(">h", 1) + b"k" + struct.pack(">i", 100) + b"ab"),
     "malformed ROCKETMQ header"),
    (_raw_binary(_FIXED + struct.pack(">ii", 0, 9) + struct.pack(">h", 9) + b"key" + struct.pack(">i", 0)),
     "malformed ROCKETMQ header"),
    (_raw_binary(_FIXED + struct.pack(">ii", 0, 3) + struct.pack(">h", 1) + b"k" + struct.pack(">i", 0)),
     "malformed ROCKETMQ header"),
])
def test_malformed_frames_are_protocol_errors(frame, message):
    with pytest.raises(ProtocolError, match=message):
        decode(frame)


def test_frame_length_limits_match_rocketmq_decoder():
    # RocketMQ's NettyDecoder accepts frames of at most 16 MiB, length prefix included.
    assert MAX_FRAME == 16 * 1024 * 1024
    assert frame_length(struct.pack(">i", MAX_FRAME - 4)) == MAX_FRAME - 4
    assert frame_length(struct.pack(">i", 4)) == 4
    for bad in (MAX_FRAME - 3, MAX_FRAME, 3, 0, -1, 2**31 - 1):
        with pytest.raises(ProtocolError, match="out of range"):
            frame_length(struct.pack(">i", bad))
    # Encoding refuses a frame the server would answer by closing the connection.
    probe = encode(RemotingCommand(code=30))
    fits = RemotingCommand(code=30, body=b"x" * (MAX_FRAME - len(probe)))
    assert len(encode(fits)) == MAX_FRAME
    with pytest.raises(ProtocolError, match="at most 16777216"):
        encode(RemotingCommand(code=30, body=b"x" * (MAX_FRAME - len(probe) + 1)))


# --- fastjson bodies ----------------------------------------------------------------------------


def test_fastjson_integer_keys():
    body = b'{"brokerAddrs":{0:"127.0.0.1:10911",1:"127.0.0.1:10921"},"cluster":"c"}'
    with pytest.raises(ValueError):
        json.loads(body)  # what a standard parser does with it
    assert loads(body) == {"brokerAddrs": {0: "127.0.0.1:10911", 1: "127.0.0.1:10921"}, "cluster": "c"}
    # As the name server really writes a cluster table, whitespace and nesting included.
    body = ('{"brokerAddrTable":{"b0":{"brokerAddrs":{0:"127.0.0.1:20911", -1 : "x"},"brokerName":"b0",'
            '"cluster":"c","enableActingMaster":false}},"clusterAddrTable":{"c":["b0"]}}')
    data = loads(body)
    assert data["brokerAddrTable"]["b0"]["brokerAddrs"] == {0: "127.0.0.1:20911", -1: "x"}
    assert data["brokerAddrTable"]["b0"]["enableActingMaster"] is False
    assert data["clusterAddrTable"] == {"c": ["b0"]}


def test_fastjson_object_keys():
    body = ('{"offsetTable":{{"brokerName":"b","queueId":0,"topic":"T"}:{"brokerOffset":1},'
            '{"brokerName":"b","queueId":1,"topic":"T"}:{"brokerOffset":20,"consumerOffset":7,'
            '"lastTimestamp":1700000000000}},"consumeTps":0.5}')
    data = loads(body)
    assert data["consumeTps"] == 0.5
    table = data["offsetTable"]
    assert len(table) == 2
    by_queue = {MessageQueue.from_key(k): v for k, v in table.items()}
    assert by_queue == {
        MessageQueue("T", "b", 0): {"brokerOffset": 1},
        MessageQueue("T", "b", 1): {"brokerOffset": 20, "consumerOffset": 7, "lastTimestamp": 1700000000000},
    }
    # The key is the same however fastjson ordered the object's fields.
    other = loads('{"t":{{"topic":"T","queueId":0,"brokerName":"b"}:1}}')["t"]
    assert set(other) == {k for k in table if dict(k)["queueId"] == 0}


def test_consume_stats_read_fast_and_tolerantly_agree():
    """fastjson's own layout goes through one regex; any other order of keys through the parser."""
    from rocketmq_core.admin import _consume_stats

    as_fastjson = (b'{"consumeTps":0.0,"offsetTable":{{"brokerName":"b","queueId":0,"topic":"T"}:{"brokerOffset":5,'
                   b'"consumerOffset":3,"lastTimestamp":17},{"brokerName":"b","queueId":1,"topic":"%RETRY%G"}:'
                   b'{"brokerOffset":2,"consumerOffset":-1,"lastTimestamp":0}}}')
    reordered = (b'{"offsetTable":{{"topic":"T","queueId":0,"brokerName":"b"}:{"consumerOffset":3,"brokerOffset":5,'
                 b'"lastTimestamp":17},{"brokerName":"b","queueId":1,"topic":"%RETRY%G"}:{"brokerOffset":2,'
                 b'"consumerOffset":-1,"lastTimestamp":0}}}')
    expected = [QueueOffsets(MessageQueue("T", "b", 0), 5, 3, 17), QueueOffsets(MessageQueue("%RETRY%G", "b", 1), 2, -1, 0)]
    assert _consume_stats(as_fastjson) == expected
    assert sorted(_consume_stats(reordered), key=lambda q: q.queue.queue_id) == expected


def test_fastjson_values_of_every_kind():
    text = ('{"s":"a\\"b\\\\c\\u00e9\\n","n":-12,"f":1.5e3,"t":true,"f2":false,"z":null,"e":{},"a":[],'
            '"l":[1,{2:[true,null]},"x"],"big":9007199254740993,bare:1,"k":{{"a":[1,2]}:"v"}}')
    data = loads(text.encode())
    assert data["s"] == 'a"b\\c\u00e9\n'
    assert (data["n"], data["f"], data["t"], data["f2"], data["z"]) == (-12, 1500.0, True, False, None)
    assert data["e"] == {} and data["a"] == []
    assert data["l"] == [1, {2: [True, None]}, "x"]
    assert data["big"] == 9007199254740993  # no float rounding
    assert data["bare"] == 1
    assert data["k"] == {(("a", (1, 2)),): "v"}
    assert loads("[]") == [] and loads(b" 7 ") == 7


@pytest.mark.parametrize("body", [
    b"", b"{", b'{"a":1,}', b'{"a" 1}', b'{"a":1 "b":2}', b'{0:"x"} trailing', b'[1,2', b'{"a":tru}',
    b'{"a":"unterminated}', b'{{"a":1}:}', b'{"a":"bad \\x escape"}', b'{1:"bad \\q"}',
    b"\xff\xfe{}", b'{"a":undefined}', b'{"a":1}}', b'{"a":"\xff"}',
])
def test_fastjson_malformed_bodies_are_protocol_errors(body):
    with pytest.raises(ProtocolError):
        loads(body)


# --- ACL signing --------------------------------------------------------------------------------


def test_acl_signature_is_hmac_sha1_of_values_sorted_by_key_then_body():
    fields = {"topic": "T1", "queueId": "3", "Zeta": "z", "Signature": "stale"}
    body = "bodyé".encode()
    Credentials("ak", "sk").sign(fields, body)
    # By hand: keys sorted (AccessKey < Zeta < queueId < topic, uppercase first as in Java's
    # TreeMap), Signature left out, values concatenated, then the raw body.
    content = b"ak" + b"z" + b"3" + b"T1" + body
    expected = base64.b64encode(hmac.new(b"sk", content, hashlib.sha1).digest()).decode()
    assert fields["Signature"] == expected
    assert fields["AccessKey"] == "ak"
    assert set(fields) == {"topic", "queueId", "Zeta", "AccessKey", "Signature"}
    # A known vector: the same algorithm over a fixed input has a fixed answer.
    fields = {"a": "1"}
    Credentials("AK", "s3cr3t-value").sign(fields, b"")
    assert fields["Signature"] == base64.b64encode(
        hmac.new(b"s3cr3t-value", b"AK1", hashlib.sha1).digest()).decode()
    assert "s3cr3t-value" not in repr(Credentials("AK", "s3cr3t-value"))


def test_acl_signature_equals_rocketmqs_own_acl_client_rpc_hook(tmp_path: Path):
    """RocketMQ's AclClientRPCHook (the 4.9.x jar the source cluster runs) signs the same request."""
    source = tmp_path / "Sign.java"
    source.write_text("""
import org.apache.rocketmq.acl.common.AclClientRPCHook;
import org.apache.rocketmq.acl.common.SessionCredentials;
import org.apache.rocketmq.remoting.protocol.RemotingCommand;
public class Sign {
    public static void main(String[] args) throws Exception {
        RemotingCommand cmd = RemotingCommand.createRequestCommand(17, null);
        cmd.addExtField("topic", "Tópic_1");
        cmd.addExtField("queueId", "3");
        cmd.addExtField("Zeta", "z");
        cmd.addExtField("perm", "6");
        cmd.setBody("body \\u00e9 {}".getBytes("UTF-8"));
        new AclClientRPCHook(new SessionCredentials("rocketmq-admin", "s3cr3t/+=")).doBeforeRequest("x", cmd);
        System.out.println(cmd.getExtFields().get("Signature"));
    }
}
""", encoding="utf-8")
    cp = harness.classpath(harness.SOURCE_VERSION)
    out = subprocess.run(["java", "-Dfile.encoding=UTF-8", "-cp", cp, str(source)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    fields = {"topic": "Tópic_1", "queueId": "3", "Zeta": "z", "perm": "6"}
    Credentials("rocketmq-admin", "s3cr3t/+=").sign(fields, "body é {}".encode())
    assert fields["Signature"] == out.stdout.strip()


# --- against real brokers -----------------------------------------------------------------------


def test_thousands_of_requests_in_flight_on_one_connection_are_matched_by_opaque(cluster, names):
    topic = names.topic()
    queues = 8

    async def scenario():
        async with RemotingClient(timeout=30) as client:
            await create_topic(client, cluster.broker, topic, queues)
            # Queue q holds q + 1 messages, so every queue has its own answer.
            await asyncio.gather(*(send(client, cluster.broker, topic, q, f"m{q}-{i}".encode())
                                   for q in range(queues) for i in range(q + 1)))
            for q in range(queues):
                await until_max_offset(client, cluster.broker, topic, q, q + 1)
            conn = client._connections[cluster.broker]
            peak = 0

            async def watch():
                nonlocal peak
                while True:
                    peak = max(peak, len(conn._pending))
                    await asyncio.sleep(0)

            watcher = asyncio.create_task(watch())
            answers = await asyncio.gather(*(max_offset(client, cluster.broker, topic, i % queues)
                                             for i in range(2000)))
            watcher.cancel()
            return answers, peak, client._connections[cluster.broker] is conn, len(client._connections)

    answers, peak, same_connection, connections = run(scenario())
    assert answers == [i % queues + 1 for i in range(2000)]
    assert same_connection and connections == 1
    assert peak >= 500, f"at most {peak} requests were in flight at once"


def test_responses_out_of_order_and_a_timed_out_request_leave_the_connection_usable(cluster, names):
    topic = names.topic()

    async def scenario():
        async with RemotingClient(timeout=10) as client:
            await create_topic(client, cluster.broker, topic, 1)
            conn = client._connections[cluster.broker]
            # A pull the broker holds; 100 later requests are answered while it waits.
            held = asyncio.create_task(client.invoke(cluster.broker, RequestCode.PULL_MESSAGE,
                                                     held_pull(topic, 0, 0, 20000), accept=PULL_CODES))
            await wait_until(lambda: len(conn._pending) == 1)
            later = await asyncio.gather(*(max_offset(client, cluster.broker, topic, 0) for _ in range(100)))
            held_was_pending = not held.done()
            await send(client, cluster.broker, topic, 0, b"wakes the held pull")
            pulled = await asyncio.wait_for(held, 10)
            await until_max_offset(client, cluster.broker, topic, 0, 1)

            # A request whose answer does not come in time raises RequestTimeout ...
            started = time.monotonic()
            with pytest.raises(RequestTimeout) as timed_out:
                await client.invoke(cluster.broker, RequestCode.PULL_MESSAGE, held_pull(topic, 0, 1, 20000),
                                    timeout=0.5, accept=PULL_CODES)
            waited = time.monotonic() - started
            # ... and its late answer (the broker releases the pull when a message arrives)
            # is dropped, not handed to the next request.
            await send(client, cluster.broker, topic, 0, b"releases the timed-out pull")
            await asyncio.sleep(0.3)
            after = await max_offset(client, cluster.broker, topic, 0)
            return (later, held_was_pending, pulled, timed_out.value, waited, after,
                    client._connections[cluster.broker] is conn, conn.closed, len(conn._pending))

    later, held_was_pending, pulled, error, waited, after, same, closed, pending = run(scenario())
    assert later == [0] * 100 and held_was_pending
    assert pulled.code == ResponseCode.SUCCESS and pulled.ext_fields["nextBeginOffset"] == "1"
    assert b"wakes the held pull" in pulled.body
    assert isinstance(error, RequestTimeout) and error.code == RequestCode.PULL_MESSAGE
    assert error.addr == cluster.broker and error.timeout == 0.5
    assert cluster.broker in str(error) and "0.5s" in str(error)
    assert 0.5 <= waited < 2
    assert after == 2 and same and not closed and pending == 0


def test_a_dropped_connection_fails_requests_in_flight_and_the_next_request_reconnects(cluster, names):
    topic = names.topic()

    async def scenario():
        async with RemotingClient(timeout=15) as client:
            await create_topic(client, cluster.broker, topic, 1)
            await send(client, cluster.broker, topic, 0, b"one")
            await until_max_offset(client, cluster.broker, topic, 0, 1)
            first = client._connections[cluster.broker]
            held = asyncio.create_task(client.invoke(cluster.broker, RequestCode.PULL_MESSAGE,
                                                     held_pull(topic, 0, 1, 20000), accept=PULL_CODES))
            await wait_until(lambda: len(first._pending) == 1)
            # Close the socket under the client, as a network failure or a broker going away would.
            first._writer.get_extra_info("socket").shutdown(socket.SHUT_RDWR)
            started = time.monotonic()
            with pytest.raises(ConnectionFailed) as failed:
                await held
            failed_after = time.monotonic() - started
            answer = await max_offset(client, cluster.broker, topic, 0)
            second = client._connections[cluster.broker]
            # And once more with no pause at all between the drop and the next request.
            second._writer.get_extra_info("socket").shutdown(socket.SHUT_RDWR)
            again = await max_offset(client, cluster.broker, topic, 0)
            return failed.value, failed_after, first.closed, answer, second is not first, again

    error, failed_after, first_closed, answer, new_connection, again = run(scenario())
    assert error.addr == cluster.broker and failed_after < 2
    assert first_closed and new_connection
    assert answer == 1 and again == 1


def test_nothing_listening_is_connection_failed_naming_the_address():
    addr = f"127.0.0.1:{free_port()}"

    async def scenario():
        async with RemotingClient(connect_timeout=2) as client:
            errors = []
            for _ in range(2):  # a failed connect is not cached: the second attempt tries again
                started = time.monotonic()
                with pytest.raises(ConnectionFailed) as failed:
                    await client.invoke(addr, RequestCode.GET_BROKER_CLUSTER_INFO)
                errors.append((failed.value, time.monotonic() - started))
            with pytest.raises(ConnectionFailed, match="host:port"):
                await client.invoke("no-port-here", RequestCode.GET_BROKER_CLUSTER_INFO)
            return errors, dict(client._connections)

    errors, connections = run(scenario())
    for error, took in errors:
        assert error.addr == addr and addr in str(error) and took < 2 and error.retriable
    assert connections == {}


def test_every_typed_error_carries_the_code_rocketmq_defines_for_it():
    for errno, cls in RESPONSE_ERRORS.items():
        assert cls.errno == errno and issubclass(cls, ResponseError)
    names = {ServerError: "SYSTEM_ERROR", SystemBusy: "SYSTEM_BUSY", AccessDenied: "NO_PERMISSION",
             TopicNotExist: "TOPIC_NOT_EXIST", QueryNotFound: "QUERY_NOT_FOUND",
             SubscriptionGroupNotExist: "SUBSCRIPTION_GROUP_NOT_EXIST", ConsumerNotOnline: "CONSUMER_NOT_ONLINE",
             RequestCodeNotSupported: "REQUEST_CODE_NOT_SUPPORTED", ServiceNotAvailable: "SERVICE_NOT_AVAILABLE"}
    for cls, name in names.items():
        assert cls.errno == ResponseCode[name], cls
    assert {cls for cls in RESPONSE_ERRORS.values() if cls.retriable} == {SystemBusy, ServiceNotAvailable}
    # an ACL engine's refusal arrives as SYSTEM_ERROR: the remark decides, and only there
    denied = response_error("b:1", 10, ResponseCode.SYSTEM_ERROR, "org.apache.rocketmq.acl.common.AclException: x")
    assert type(denied) is AccessDenied and not denied.retriable
    assert type(response_error("b:1", 10, 9876, "new code")) is ResponseError


def test_broker_and_name_server_refusals_are_typed_by_their_code(cluster, names):
    async def scenario():
        async with RemotingClient() as client:
            failures = {}
            for label, addr, code, header in (
                    ("route", cluster.namesrv, RequestCode.GET_ROUTEINFO_BY_TOPIC, {"topic": names.topic()}),
                    ("unknown", cluster.broker, 9999, {}),
                    ("offline", cluster.broker, RequestCode.GET_CONSUMER_CONNECTION_LIST,
                     {"consumerGroup": names.group()})):
                with pytest.raises(ResponseError) as failed:
                    await client.invoke(addr, code, header)
                failures[label] = failed.value
            return failures

    failures = run(scenario())
    assert type(failures["route"]) is TopicNotExist and isinstance(failures["route"], NotFound)
    assert type(failures["unknown"]) is RequestCodeNotSupported and "9999" in str(failures["unknown"])
    assert type(failures["offline"]) is ConsumerNotOnline
    assert not any(f.retriable for f in failures.values())


def test_oversized_request_is_refused_before_sending_and_the_connection_survives(cluster, names):
    """A frame over 16 MiB makes the server drop the connection (and every request in flight on
    it): the client refuses it instead. (No frame near the limit is sent to the shared brokers:
    each costs them 16 MiB of direct memory, of which they have 128 MiB.)"""
    topic = names.topic()

    async def scenario():
        async with RemotingClient(timeout=30) as client:
            await create_topic(client, cluster.broker, topic, 1)
            conn = client._connections[cluster.broker]
            in_flight = asyncio.create_task(client.invoke(cluster.broker, RequestCode.PULL_MESSAGE,
                                                          held_pull(topic, 0, 0, 3000), accept=PULL_CODES))
            await wait_until(lambda: len(conn._pending) == 1)
            with pytest.raises(ProtocolError, match="at most 16777216"):
                await client.invoke(cluster.broker, RequestCode.GET_MAX_OFFSET, {"topic": topic, "queueId": 0},
                                    body=bytes(MAX_FRAME))
            pending_after_refusal = len(conn._pending)
            await send(client, cluster.broker, topic, 0, b"m")
            pulled = await in_flight
            return pending_after_refusal, pulled, conn.closed, client._connections[cluster.broker] is conn

    pending, pulled, closed, same = run(scenario())
    assert pending == 1  # only the held pull: the refused request left nothing behind
    assert pulled.code == ResponseCode.SUCCESS and not closed and same


def test_broker_answers_a_binary_header_request_in_kind(cluster, names):
    """A request in the ROCKETMQ serialize type is answered in it: our binary decoder reads it."""
    topic = names.topic()

    async def scenario():
        async with RemotingClient() as client:
            await create_topic(client, cluster.broker, topic, 2)
            for i in range(3):
                await send(client, cluster.broker, topic, 1, b"m%d" % i)
            await until_max_offset(client, cluster.broker, topic, 1, 3)
        host, port = cluster.broker.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            answers = []
            for opaque, ext in ((77, {"topic": topic, "queueId": "1"}), (78, {"topic": "T_missing_" + uuid.uuid4().hex,
                                                                         "queueId": "0"})):
                writer.write(binary_frame(binary_header(RequestCode.GET_MAX_OFFSET, 3, 409, opaque, 0, None, ext)))
                await writer.drain()
                prefix = await asyncio.wait_for(reader.readexactly(4), 10)
                frame = await reader.readexactly(frame_length(prefix))
                answers.append((struct.unpack_from(">i", frame)[0] >> 24, decode(frame)))
            return answers
        finally:
            writer.close()

    (kind, ok), (kind2, other) = run(scenario())
    # 4.9 answers in the request's serialize type, 5.x in its own (JSON): decode reads either.
    expected_kind = codec.ROCKETMQ_SERIALIZE if cluster.spec.major == 4 else codec.JSON_SERIALIZE
    assert kind == expected_kind and kind2 == expected_kind
    assert ok.code == ResponseCode.SUCCESS and ok.opaque == 77 and ok.is_response
    assert ok.ext_fields["offset"] == "3" and ok.language == "JAVA"
    assert other.opaque == 78 and other.is_response and other.ext_fields.get("offset") == "0"


RESTART_PROBE = harness.ClusterSpec("restart-probe", harness.SOURCE_VERSION, 15876, 16911)


def test_reconnect_after_the_broker_restarts():
    """A cluster of our own on spare ports: stop it under a client, start it again."""
    spec = RESTART_PROBE
    topic = f"T_restart_{uuid.uuid4().hex[:8]}"
    try:
        harness.start(spec)

        async def before(client: RemotingClient):
            await create_topic(client, spec.broker, topic, 1)
            await send(client, spec.broker, topic, 0, b"before the restart")
            return await max_offset(client, spec.broker, topic, 0)

        async def down(client: RemotingClient):
            conn = client._connections[spec.broker]
            await wait_until(lambda: conn.closed, 30)
            with pytest.raises(ConnectionFailed) as failed:
                await max_offset(client, spec.broker, topic, 0)
            return failed.value

        async def scenario():
            async with RemotingClient(timeout=10, connect_timeout=3) as client:
                first = await before(client)
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, harness.stop, spec)
                error = await down(client)
                await loop.run_in_executor(None, harness.start, spec)
                after = await max_offset(client, spec.broker, topic, 0)
                return first, error, after

        first, error, after = run(scenario())
        assert first == 1
        assert error.addr == spec.broker and spec.broker in str(error)
        assert after == 1  # same client, new connection, the stored message survived the restart
    finally:
        harness.stop(spec)
