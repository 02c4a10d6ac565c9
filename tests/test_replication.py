"""Cross-cluster replication: the codec and the worker's decisions without a broker, then worker
processes between the real 4.9 source and 5.x target (and clusters of our own where a broker
has to restart), checked by reading what each cluster really stores."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.procutil import read_json
from rocketmq_core.errors import InvalidSpec, ProtocolError
from rocketmq_core.model import TopicConfig
from rocketmq_core.offsets import reset_to_time
from rocketmq_core.remoting.client import RemotingClient
from rocketmq_core.remoting.codec import RemotingCommand
from rocketmq_core.replication import codec, remote
from rocketmq_core.replication.codec import PullStatus, StoredMessage
from rocketmq_core.replication.config import ReplicationConfig, StartPosition, default_group
from rocketmq_core.replication.policy import (
    HOPS_PROPERTY, ORIGIN_PROPERTY, OffsetTracker, TokenBucket, allocate_averagely, chunk_messages,
    replica_properties, would_loop,
)
from rocketmq_harness import clusters as harness

from cluster_side import Side, has_route, wait_for

# === codec, no broker ===========================================================================


def _message(**overrides: Any) -> StoredMessage:
    fields: dict[str, Any] = dict(
        topic="orders", queue_id=3, queue_offset=41, body=b"hello", flag=7, sys_flag=0,
        properties={"KEYS": "k1 k2", "TAGS": "tagA", "UNIQ_KEY": "ABC", "color": "red"},
        born_timestamp=1_700_000_000_123, born_host="10.1.2.3:50000", store_timestamp=1_700_000_000_456,
        store_host="127.0.0.1:10911", physical_offset=123456, reconsume_times=2, prepared_transaction_offset=0)
    fields.update(overrides)
    return StoredMessage(**fields)


def test_decoder_reads_a_record_built_field_by_field():
    """A V1 record packed here by hand from the documented layout, independent of our encoder."""
    body, topic, props = b"payload", b"T1", "KEYS\x01a b\x02TAGS\x01t\x02"
    record = (struct.pack(">iiiiiqqiq", 0, -626843481, 99, 2, 5, 17, 9000, 0, 111)
              + bytes([192, 168, 0, 1]) + struct.pack(">i", 4242) + struct.pack(">q", 222)
              + bytes([127, 0, 0, 1]) + struct.pack(">i", 10911) + struct.pack(">iqi", 1, 0, len(body)) + body
              + bytes([len(topic)]) + topic + struct.pack(">h", len(props)) + props.encode())
    record = struct.pack(">i", len(record)) + record[4:]
    [msg] = codec.decode_messages(record)
    assert (msg.topic, msg.queue_id, msg.flag, msg.queue_offset, msg.physical_offset) == ("T1", 2, 5, 17, 9000)
    assert (msg.born_timestamp, msg.born_host, msg.store_timestamp, msg.store_host) == (
        111, "192.168.0.1:4242", 222, "127.0.0.1:10911")
    assert (msg.reconsume_times, msg.body, msg.keys, msg.tags) == (1, b"payload", ["a", "b"], "t")


@pytest.mark.parametrize("magic", [codec.MAGIC_V1, codec.MAGIC_V2])
@pytest.mark.parametrize("v6", [(False, False), (True, False), (False, True), (True, True)])
def test_stored_message_round_trip_v1_v2_ipv4_ipv6(magic, v6):
    born_v6, store_v6 = v6
    sys_flag = (codec.BORNHOST_V6_FLAG if born_v6 else 0) | (codec.STOREHOST_V6_FLAG if store_v6 else 0)
    msg = _message(magic=magic, sys_flag=sys_flag,
                   born_host="[fe80::1]:50000" if born_v6 else "10.1.2.3:50000",
                   store_host="[2001:db8::7]:10911" if store_v6 else "127.0.0.1:10911")
    decoded = codec.decode_messages(codec.encode_message(msg))
    assert len(decoded) == 1
    got = decoded[0]
    assert (got.magic, got.born_host, got.store_host) == (magic, msg.born_host, msg.store_host)
    assert (got.body, got.properties, got.queue_offset, got.store_timestamp) == (
        msg.body, msg.properties, msg.queue_offset, msg.store_timestamp)


def test_v2_record_holds_a_topic_longer_than_a_v1_byte():
    msg = _message(magic=codec.MAGIC_V2, topic="t" * 200)
    assert codec.decode_messages(codec.encode_message(msg))[0].topic == "t" * 200
    with pytest.raises(ProtocolError):
        codec.encode_message(_message(topic="t" * 200))


@pytest.mark.parametrize("kind", [codec.COMPRESSION_ZLIB_LEGACY, codec.COMPRESSION_ZLIB])
def test_zlib_compressed_bodies_are_decompressed(kind):
    body = b"0123456789" * 1000
    raw = codec.encode_message(_message(body=body), compress_with=kind)
    assert len(raw) < len(body)  # really compressed on the wire
    [got] = codec.decode_messages(raw)
    assert got.body == body and not got.compressed and got.sys_flag & codec.COMPRESSED_FLAG


def test_a_body_of_an_unavailable_algorithm_is_kept_compressed_with_its_flag(monkeypatch):
    """lz4 without its library: the body stays as stored, so it can be forwarded with its flag."""
    monkeypatch.setitem(sys.modules, "lz4", None)  # import lz4 fails, whatever is installed
    monkeypatch.setitem(sys.modules, "lz4.frame", None)
    sys_flag = codec.COMPRESSED_FLAG | (codec.COMPRESSION_LZ4 << 8)
    raw = codec.encode_message(_message(body=b"\x04\x22\x4d\x18opaque", sys_flag=sys_flag))
    [got] = codec.decode_messages(raw)
    assert got.compressed and got.body == b"\x04\x22\x4d\x18opaque" and got.sys_flag == sys_flag


def test_corrupt_bodies_are_protocol_errors():
    raw = codec.encode_message(_message(body=b"x" * 100), compress_with=codec.COMPRESSION_ZLIB)
    with pytest.raises(ProtocolError):
        codec.decode_messages(raw[:-5])  # truncated record
    with pytest.raises(ProtocolError, match="magic"):
        codec.decode_messages(raw[:4] + b"\x00\x00\x00\x01" + raw[8:])
    bad_zlib = codec.encode_message(_message(body=b"not zlib", sys_flag=codec.COMPRESSED_FLAG))
    with pytest.raises(ProtocolError, match="decompress"):
        codec.decode_messages(bad_zlib)


def test_several_records_in_one_pull_body_keep_their_order():
    raw = b"".join(codec.encode_message(_message(queue_offset=o, body=f"m{o}".encode())) for o in range(5))
    assert [(m.queue_offset, m.body) for m in codec.decode_messages(raw)] == [(o, f"m{o}".encode()) for o in range(5)]


def test_properties_encoding_and_separators():
    props = {"KEYS": "a b", "TAGS": "t", "user": "välue with spaces"}
    text = codec.encode_properties(props)
    assert text == "KEYS\x01a b\x02TAGS\x01t\x02user\x01välue with spaces\x02"
    assert codec.decode_properties(text) == props
    assert codec.decode_properties(text.rstrip("\x02")) == props  # Java tolerates a missing last separator
    # what does not split into name and value pairs is read as Java's loop reads it
    assert codec.decode_properties("a\x01b\x01c\x02d\x01e\x02") == {"a": "b\x01c", "d": "e"}
    assert codec.decode_properties("lone\x02a\x01b\x02\x01nameless\x02") == {"a": "b"}
    assert codec.decode_properties("") == {} and codec.encode_properties({}) == ""
    with pytest.raises(ProtocolError):
        codec.encode_properties({"bad": "x\x02y"})


def test_pull_request_and_response():
    fields = codec.pull_request("G", "T", 2, 40, 32, suspend_ms=5000, broker_name="b0")
    assert fields["sysFlag"] == codec.PULL_SUBSCRIPTION | codec.PULL_SUSPEND  # never commits on pull
    assert (fields["commitOffset"], fields["subscription"], fields["bname"]) == (0, "*", "b0")
    body = b"".join(codec.encode_message(_message(queue_offset=o)) for o in (40, 41))
    resp = RemotingCommand(code=0, ext_fields={"nextBeginOffset": "42", "minOffset": "0", "maxOffset": "42"},
                           body=body, flag=1)
    result = codec.parse_pull_response(resp)
    assert result.status is PullStatus.FOUND and result.next_begin_offset == 42
    assert [m.queue_offset for m in result.messages] == [40, 41]
    moved = codec.parse_pull_response(RemotingCommand(code=21, ext_fields={"nextBeginOffset": "7"}, flag=1))
    assert moved.status is PullStatus.OFFSET_ILLEGAL and moved.next_begin_offset == 7 and moved.messages == []
    with pytest.raises(ProtocolError):
        codec.parse_pull_response(RemotingCommand(code=1, flag=1))


def test_send_v2_uses_the_short_header_names():
    fields = codec.send_v2_request("PG", "T", 3, "KEYS\x01k\x02", 1234, flag=5, sys_flag=0, broker_name="b0")
    assert fields == {"a": "PG", "b": "T", "c": "TBW102", "d": 4, "e": 3, "f": 0, "g": 1234, "h": 5,
                      "i": "KEYS\x01k\x02", "j": 0, "k": "false", "m": "false", "n": "b0"}
    result = codec.parse_send_response(RemotingCommand(code=0, flag=1, ext_fields={
        "msgId": "X", "queueId": "3", "queueOffset": "17"}))
    assert (result.msg_id, result.queue_id, result.queue_offset) == ("X", 3, 17)


def test_batch_body_is_rocketmqs_encode_messages():
    messages = [(b"one", 0, "KEYS\x01a\x02"), (b"", 3, ""), (b"x" * 300, 1, "TAGS\x01t\x02UNIQ_KEY\x01U\x02")]
    raw = codec.encode_batch(messages)
    # the first record by hand: totalSize, magic 0, bodyCRC 0, flag, bodyLen, body, propsLen, props
    first = struct.pack(">iiiii", 20 + 3 + 2 + 7, 0, 0, 0, 3) + b"one" + struct.pack(">h", 7) + b"KEYS\x01a\x02"
    assert raw.startswith(first)
    assert codec.decode_batch(raw) == messages
    header = codec.send_v2_request("PG", "T", 1, "", 5, batch=True)
    assert header["m"] == "true" and header["i"] == "" and header["e"] == 1


def test_chunks_keep_order_and_respect_count_bytes_and_compression():
    msgs = [_message(queue_offset=o, body=b"x" * 100) for o in range(10)]
    assert [[m.queue_offset for m in c] for c in chunk_messages(msgs, 4, 1 << 20)] == [
        [0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert all(len(c) == 1 for c in chunk_messages(msgs, 1, 1 << 20))
    by_bytes = chunk_messages(msgs, 32, 3 * 356)  # 100 bytes of body + 256 of overhead each
    assert [len(c) for c in by_bytes] == [3, 3, 3, 1]
    mixed = msgs[:3] + [_message(queue_offset=3, compressed=True), _message(queue_offset=4, body=b"y" * 5000)] + msgs[5:7]
    assert [[m.queue_offset for m in c] for c in chunk_messages(mixed, 32, 4096)] == [[0, 1, 2], [3], [4], [5, 6]]


def test_heartbeat_body_is_the_java_heartbeat_data():
    data = json.loads(codec.heartbeat_body("ip@w1", "G", ["T2", "T1", "T1"], "earliest", 99))
    assert data["clientID"] == "ip@w1" and data["producerDataSet"] == []
    [consumer] = data["consumerDataSet"]
    assert (consumer["groupName"], consumer["consumeType"], consumer["messageModel"], consumer["consumeFromWhere"]) == (
        "G", "CONSUME_PASSIVELY", "CLUSTERING", "CONSUME_FROM_FIRST_OFFSET")
    assert [s["topic"] for s in consumer["subscriptionDataSet"]] == ["T1", "T2"]
    assert all(s["subString"] == "*" and s["expressionType"] == "TAG" for s in consumer["subscriptionDataSet"])
    resp = RemotingCommand(code=0, flag=1, body=b'{"consumerIdList":["b@2","a@1"]}')
    assert codec.parse_consumer_list(resp) == ["a@1", "b@2"]


# === policy, no broker ==========================================================================

def test_allocate_averagely_matches_rocketmq():
    queues = list(range(8))
    consumers = ["c0", "c1", "c2"]
    got = {c: allocate_averagely(queues, consumers, c) for c in consumers}
    assert got == {"c0": [0, 1, 2], "c1": [3, 4, 5], "c2": [6, 7]}  # AllocateMessageQueueAveragely's blocks
    assert allocate_averagely(queues[:2], consumers, "c2") == []  # more consumers than queues
    assert allocate_averagely(queues[:2], consumers, "c1") == [1]
    assert allocate_averagely(queues, consumers, "stranger") == []
    for n in range(1, 6):  # every queue to exactly one consumer
        ids = [f"c{i}" for i in range(n)]
        shares = [allocate_averagely(list(range(7)), ids, c) for c in ids]
        assert sorted(q for s in shares for q in s) == list(range(7))


def test_loop_detection_and_replica_properties():
    props = {"KEYS": "k", "TAGS": "t", "UNIQ_KEY": "U", "user": "v", "CLUSTER": "A", "DELAY": "3", "TRAN_MSG": "true"}
    replica = replica_properties(props, "A")
    assert replica == {"KEYS": "k", "TAGS": "t", "UNIQ_KEY": "U", "user": "v",
                       ORIGIN_PROPERTY: "A", HOPS_PROPERTY: "A"}
    assert would_loop(replica, "A") and not would_loop(replica, "B") and not would_loop(props, "A")
    onward = replica_properties(replica, "B")  # A -> B -> C keeps the origin, extends the hops
    assert (onward[ORIGIN_PROPERTY], onward[HOPS_PROPERTY]) == ("A", "A,B")
    assert would_loop(onward, "A") and would_loop(onward, "B") and not would_loop(onward, "C")


def test_token_bucket_holds_the_rate():
    bucket = TokenBucket(rate=100, burst=10, now=0.0)
    waits = [bucket.reserve(0.0) for _ in range(30)]
    assert waits[:10] == [0.0] * 10  # the burst
    assert waits[10] == pytest.approx(0.01) and waits[29] == pytest.approx(0.20)
    # after the debt is paid the bucket refills, never beyond its burst
    assert bucket.reserve(10.0) == 0.0
    assert sum(1 for _ in range(20) if bucket.reserve(10.0) == 0.0) == 9
    with pytest.raises(InvalidSpec):
        TokenBucket(rate=0)


def test_offset_tracker_never_passes_an_unacknowledged_message():
    tracker = OffsetTracker(10)
    tracker.add(10, 11)
    for offset in range(12, 15):
        tracker.add(offset)
    tracker.advance(15)
    assert tracker.committable == 10
    tracker.done(11, 12)
    tracker.done(14)
    assert tracker.committable == 10 and tracker.in_flight == 2
    tracker.done(10)
    assert tracker.committable == 13
    tracker.done(13)
    assert tracker.committable == 15 and tracker.in_flight == 0
    tracker.reset(3)
    assert tracker.committable == 3


def test_config_rejects_secrets_and_mistakes(tmp_path):
    base = {"task": "t 1", "source": {"namesrv": "a:1", "cluster_id": "A"},
            "target": {"namesrv": "b:1", "cluster_id": "B"}, "topics": ["T"]}
    cfg = ReplicationConfig.from_dict(base)
    assert cfg.consumer_group == default_group("t 1") == "rmq_replicator_t_1"
    assert cfg.start == StartPosition("latest") and cfg.rate_limit is None
    assert ReplicationConfig.from_dict({**base, "start": {"timestamp_ms": 5}}).start == StartPosition("timestamp", 5)
    bad = [
        {**base, "source": {**base["source"], "access_key": "AK", "secret_key": "SK"}},
        {**base, "source": {**base["source"], "access_key": "AK"}},
        {**base, "target": {**base["target"], "cluster_id": "A"}},
        {**base, "start": "yesterday"},
        {**base, "rate_limit": -1},
        {**base, "topics": []},
        {**base, "surprise": 1},
    ]
    for data in bad:
        with pytest.raises(InvalidSpec):
            ReplicationConfig.from_dict(data)
    env_cfg = ReplicationConfig.from_dict({**base, "source": {**base["source"], "access_key": "AK",
                                                              "secret_key_env": "RMQ_TEST_UNSET_SECRET"}})
    os.environ.pop("RMQ_TEST_UNSET_SECRET", None)
    with pytest.raises(InvalidSpec, match="RMQ_TEST_UNSET_SECRET"):
        env_cfg.source.credentials()
    os.environ["RMQ_TEST_UNSET_SECRET"] = "s3cr3t-value"
    try:
        creds = env_cfg.source.credentials()
        assert creds is not None and creds.secret_key == "s3cr3t-value" and "s3cr3t" not in repr(creds)
    finally:
        del os.environ["RMQ_TEST_UNSET_SECRET"]


# === helpers for the real clusters ==============================================================

ROOT = Path(__file__).resolve().parents[1]


NATIVE_PRODUCER = r"""
import base64, json, sys, threading, time
from rocketmq.client import Message, Producer

producer = Producer(sys.argv[2], timeout=3000)
producer.set_namesrv_addr(sys.argv[1])
producer.start()
sent, stop, lock = {}, threading.Event(), threading.Lock()

def send(cmd):
    msg = Message(cmd["topic"])
    msg.set_keys(cmd["key"])
    if cmd.get("tags"):
        msg.set_tags(cmd["tags"])
    for name, value in (cmd.get("props") or {}).items():
        msg.set_property(name, value)
    msg.set_body(base64.b64decode(cmd["body"]) if cmd.get("body") else ("body of " + cmd["key"]).encode())
    end = time.monotonic() + 90
    while True:  # retried until the broker takes it, so the sent keys are exact
        try:
            if cmd.get("queue") is None:
                producer.send_sync(msg)
            else:
                producer.send_orderly(msg, cmd["queue"], retry_times=0)
            break
        except Exception:
            if time.monotonic() > end:
                raise
            time.sleep(0.2)
    with lock:
        sent.setdefault(cmd["topic"], []).append(cmd["key"])

def stream(topics, prefix, rate):
    i, next_at = 0, time.monotonic()
    while not stop.is_set():
        for topic in topics:
            send({"topic": topic, "key": f"{prefix}-{topic[-8:]}-{i}", "tags": "stream", "props": {"seq": str(i)}})
        i += 1
        next_at += len(topics) / rate
        time.sleep(max(0.0, next_at - time.monotonic()))

thread = None
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "send":
        send(cmd)
    elif cmd["op"] == "stream":
        stop.clear()
        thread = threading.Thread(target=stream, args=(cmd["topics"], cmd["prefix"], cmd["rate"]), daemon=True)
        thread.start()
    elif cmd["op"] == "stop_stream":
        stop.set()
        if thread is not None:
            thread.join()
    elif cmd["op"] == "quit":
        break
    with lock:
        print(json.dumps({"ok": True, "sent": sent if cmd["op"] == "stop_stream" else None}), flush=True)
producer.shutdown()
"""

NATIVE_CONSUMER = r"""
import base64, json, sys, threading, time
from rocketmq.client import PushConsumer

namesrv, group, topic, expected, timeout = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
seen, lock, done = set(), threading.Lock(), threading.Event()

def on_message(msg):
    with lock:
        print(json.dumps({"keys": msg.keys.decode(), "tags": (msg.tags or b"").decode(), "id": msg.id,
                          "body": base64.b64encode(msg.body).decode()}), flush=True)
        seen.add(msg.id)
        if len(seen) >= expected:
            done.set()

consumer = PushConsumer(group)
consumer.set_namesrv_addr(namesrv)
consumer.subscribe(topic, on_message)
consumer.start()
done.wait(timeout)
time.sleep(0.5)
consumer.shutdown()
"""


class Load:
    """A native (C++ client) producer in a process of its own: the native client shares one
    connection factory, and so one name server, among every client of a process."""

    def __init__(self, namesrv: str, group: str):
        self.proc = subprocess.Popen([sys.executable, "-c", NATIVE_PRODUCER, namesrv, group], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.sent: dict[str, list[str]] = {}

    def _call(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"native producer died (exit {self.proc.poll()})"
        return json.loads(line)

    def send(self, topic: str, key: str, tags: str | None = None, properties: dict[str, str] | None = None,
             body: bytes | None = None, queue: int | None = None) -> None:
        self._call(op="send", topic=topic, key=key, tags=tags, props=properties,
                   body=base64.b64encode(body).decode() if body is not None else None, queue=queue)
        self.sent.setdefault(topic, []).append(key)

    def burst(self, topic: str, prefix: str, count: int, **kwargs: Any) -> list[str]:
        keys = [f"{prefix}-{i}" for i in range(count)]
        for key in keys:
            self.send(topic, key, **kwargs)
        return keys

    def start_stream(self, topics: list[str], prefix: str, rate: float) -> None:
        """Send to each topic in turn at about ``rate`` messages per second until stop_stream."""
        self._call(op="stream", topics=topics, prefix=prefix, rate=rate)

    def stop_stream(self) -> None:
        for topic, keys in (self._call(op="stop_stream")["sent"] or {}).items():
            have = self.sent.setdefault(topic, [])
            have.extend(k for k in keys if k not in set(have))

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self._call(op="quit")
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
            if self.proc.poll() is None:
                self.proc.kill()


def native_consume(namesrv: str, group: str, topic: str, expected: int, timeout: float = 90) -> list[dict[str, Any]]:
    """What a native push consumer of its own process receives from a cluster."""
    out = subprocess.run([sys.executable, "-c", NATIVE_CONSUMER, namesrv, group, topic, str(expected), str(timeout)],
                         capture_output=True, text=True, timeout=timeout + 60, cwd=ROOT)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


class WorkerProcess:
    """``python -m rocketmq_core.replication.worker`` as a deployment runs it."""

    def __init__(self, directory: Path, config: dict[str, Any], worker_id: str, env: dict[str, str] | None = None):
        directory.mkdir(parents=True, exist_ok=True)
        self.config_path = directory / f"{config['task']}.json"
        self.config_path.write_text(json.dumps(config))
        self.stats_path = directory / f"{worker_id}.stats.json"
        self.log_path = directory / f"{worker_id}.log"
        self.worker_id, self.env = worker_id, env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "WorkerProcess":
        self.stats_path.unlink(missing_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rocketmq_core.replication.worker", "--config", str(self.config_path),
                 "--worker-id", self.worker_id, "--stats", str(self.stats_path)],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(self.env or {})}, cwd=ROOT)
        return self

    def stats(self) -> dict[str, Any]:
        return read_json(self.stats_path) or {}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_active(self, queues: int, timeout: float = 60) -> dict[str, Any]:
        return wait_for(lambda: (s := self.stats()) and len(s.get("active_queues", [])) == queues and s,
                        f"{self.worker_id} active on {queues} queues\n{self.log()[-2000:]}", timeout)

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def spawn(tmp_path):
    """Start worker processes; whatever is still running at the end is killed (by its own pid)."""
    started: list[WorkerProcess] = []

    def _spawn(config: dict[str, Any], worker_id: str, env: dict[str, str] | None = None) -> WorkerProcess:
        worker = WorkerProcess(tmp_path / "workers", config, worker_id, env).start()
        started.append(worker)
        return worker
    yield _spawn
    for worker in started:
        worker.kill()


@pytest.fixture
def sides(rmq_clusters) -> tuple[Side, Side]:
    return Side.of(rmq_clusters["source"]), Side.of(rmq_clusters["target"])


@pytest.fixture
def loads_():
    made: list[Load] = []

    def _load(namesrv: str, group: str) -> Load:
        load = Load(namesrv, group)
        made.append(load)
        return load
    yield _load
    for load in made:
        load.close()


def topic_on_both(sides: tuple[Side, Side], names, label: str) -> str:
    """A fresh topic of 4 queues on the source and the target."""
    topic = names.topic(label)
    for side in sides:
        side.create_topic(topic)
    return topic


def task_config(task: str, source: Side, target: Side, topics: list[str], **extra: Any) -> dict[str, Any]:
    return {"task": task, "source": source.endpoint(extra.pop("source_secret_env", None)),
            "target": target.endpoint(extra.pop("target_secret_env", None)), "topics": topics,
            "start": extra.pop("start", "latest"), "tuning": {"rebalance_interval": 1.0, **extra.pop("tuning", {})},
            **extra}


def exactly_once(counts: Counter[str], keys: list[str]) -> None:
    missing = [k for k in keys if counts[k] == 0]
    doubled = {k: n for k, n in counts.items() if n > 1}
    extra = [k for k in counts if k not in set(keys)]
    assert not missing and not doubled and not extra, (
        f"missing {len(missing)} {missing[:5]}, doubled {len(doubled)} {list(doubled.items())[:5]},"
        f" unexpected {extra[:5]}")


# === the worker on the real source (4.9) and target (5.x) =========================================

def test_heartbeat_registers_consumers_the_group_lists_and_unregister_removes_one(cluster, names):
    """HeartbeatData as the worker sends it, on each version: both clients listed (sorted), seen as
    push-style clustering consumers of the topic; UNREGISTER_CLIENT removes one while its
    connection stays open (so it is the request, not a closed socket, that does it)."""
    group, topic = names.group(), names.topic()
    ids = [f"127.0.0.1@test@{i}" for i in (2, 1)]

    async def scenario():
        async with RemotingClient(cluster.credentials) as one, RemotingClient(cluster.credentials) as two:
            for client, client_id in zip((one, two), ids):
                await remote.heartbeat(client, cluster.broker, codec.heartbeat_body(client_id, group, [topic]))
            listed = await remote.consumer_ids(one, cluster.broker, group)
            async with ClusterAdmin(cluster.namesrv, cluster.credentials) as admin:
                connection = await admin.consumer_connection(cluster.broker, group)
            await remote.unregister(two, cluster.broker, ids[1], group)  # two heartbeated as ids[1]
            after = await remote.consumer_ids(one, cluster.broker, group)
            assert not two._connections[cluster.broker].closed
            return listed, connection, after
    listed, connection, after = asyncio.run(scenario())
    assert listed == sorted(ids)
    assert (connection.consume_type, connection.message_model, connection.subscriptions) == (
        "CONSUME_PASSIVELY", "CLUSTERING", (topic,))
    assert after == [ids[0]]


def test_one_way_under_continuous_load_reconciles_every_key_per_topic(sides, names, spawn, loads_):
    source, target = sides
    topics = [names.topic("a"), names.topic("b")]
    for topic in topics:
        source.create_topic(topic)
        target.create_topic(topic)
    worker = spawn(task_config(names.group("oneway"), source, target, topics), "w1")
    worker.wait_active(8)
    load = loads_(source.namesrv, names.group("pg"))
    load.start_stream(topics, "load", rate=300)
    time.sleep(6)
    load.stop_stream()
    for topic in topics:
        sent = load.sent[topic]
        assert len(sent) > 500
        wait_for(lambda: sum(target.keys(topic).values()) >= len(sent), f"{len(sent)} messages on {topic}", 60)
        exactly_once(target.keys(topic), sent)
    stats = wait_for(lambda: (s := worker.stats()).get("lag") == 0 and s, "lag 0", 30)
    for topic in topics:
        per = stats["topics"][topic]
        assert per["consumed"] == per["replicated"] == len(load.sent[topic]), per
        assert per["failed"] == per["skipped_loop"] == 0, per
    assert stats["delay"]["p99_ms"] is not None and stats["newest_replicated_age_ms"] >= 0
    assert worker.terminate() == 0
    for topic in topics:  # committed exactly to the end of every queue
        assert source.committed(stats["group"], topic) == source.max_offsets(topic)


def test_tags_keys_properties_and_bodies_arrive_as_sent(sides, names, spawn, loads_):
    source, target = sides
    topic = names.topic()
    source.create_topic(topic)
    target.create_topic(topic)
    worker = spawn(task_config(names.group("props"), source, target, [topic]), "w1")
    worker.wait_active(4)
    load = loads_(source.namesrv, names.group("pg"))
    big = bytes(range(1, 256)) * 40  # over 4 KiB: the native producer compresses it (zlib); no NUL: its C API cuts there
    sent = {}
    for i in range(12):
        key = f"p-{i}"
        sent[key] = dict(tags=f"tag{i % 3}", properties={"color": f"c{i}", "unicode": "grüße ✓"},
                         body=big if i % 4 == 0 else f"small {i}".encode())
        load.send(topic, f"{key} alt-{i}", **sent[key])

    received = native_consume(target.namesrv, names.group("verify"), topic, len(sent))
    got = {m["keys"].split(" ")[0]: {**m, "body": base64.b64decode(m["body"])} for m in received}
    assert set(got) == set(sent), f"the native consumer of the target got {sorted(got)}"
    originals = {m.keys[0]: m for m in source.read(topic)}
    replicas = {m.keys[0]: m for m in target.read(topic)}
    assert len(replicas) == len(sent)
    for key, want in sent.items():
        have, original, replica = got[key], originals[key], replicas[key]
        assert have["keys"] == f"{key} alt-{key.split('-')[1]}"
        assert (have["tags"], have["body"]) == (want["tags"], want["body"])
        assert have["id"] == original.msg_id == replica.msg_id  # the message id (UNIQ_KEY) survives
        user = {k: v for k, v in original.properties.items() if k not in ("CLUSTER",)}
        assert {k: replica.properties.get(k) for k in user} == user  # every property the producer set
        assert (replica.properties["color"], replica.properties["unicode"]) == (want["properties"]["color"], "grüße ✓")
        assert (replica.properties[ORIGIN_PROPERTY], replica.properties[HOPS_PROPERTY]) == ("source", "source")
        assert replica.flag == original.flag
    assert any(m.sys_flag & codec.COMPRESSED_FLAG for m in source.read(topic))  # a compressed one was copied


@pytest.mark.parametrize("batch", [True, False], ids=["batched-sends", "one-send-per-message"])
def test_ordered_topic_keeps_per_queue_order(sides, names, spawn, loads_, rmq_clusters, batch):
    source, target = sides
    topic = names.topic("ord")
    # an ordered topic as operators make one on 4.9: the name server's ORDER_TOPIC_CONFIG table
    made = harness.mqadmin(rmq_clusters["source"].spec, ["updateTopic", "-c", "source", "-t", topic, "-r", "4",
                                                         "-w", "4", "-o", "true"])
    assert made.returncode == 0, made.stdout + made.stderr
    wait_for(lambda: source.run(lambda a: has_route(a, topic)), "ordered topic route", 30)
    target.create_topic(topic)
    worker = spawn(task_config(names.group("ord"), source, target, [topic], start="earliest",
                               tuning={"window": 64, "batch": batch}), "w1")
    stats = worker.wait_active(4)
    assert stats["ordered_topics"] == [topic]  # detected, not configured
    load = loads_(source.namesrv, names.group("pg"))
    per_queue = 60
    for i in range(per_queue):
        for queue in range(4):
            load.send(topic, f"q{queue}-{i}", queue=queue, properties={"seq": str(i)})
    wait_for(lambda: sum(target.keys(topic).values()) >= 4 * per_queue, "all ordered messages", 60)
    def by_queue(side: Side) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for m in side.read(topic):
            out.setdefault(m.queue_id, []).append(m.keys[0])
        return out
    sent, arrived = by_queue(source), by_queue(target)
    assert sorted(sent) == [0, 1, 2, 3] and all(len(keys) == per_queue for keys in sent.values())
    for queue, keys in sent.items():  # target queue = source queue id mod 4, in the source's order
        assert arrived[queue] == keys
        assert [int(k.split("-")[1]) for k in keys] == list(range(per_queue))


def test_two_way_replication_does_not_loop(sides, names, spawn, loads_):
    source, target = sides
    topic = topic_on_both((source, target), names, "both")
    forward = spawn(task_config(names.group("fwd"), source, target, [topic]), "fwd")
    backward = spawn(task_config(names.group("rev"), target, source, [topic]), "rev")
    forward.wait_active(4)
    backward.wait_active(4)
    on_source = loads_(source.namesrv, names.group("pga"))
    on_target = loads_(target.namesrv, names.group("pgb"))  # a process of its own: see Load
    a_keys = on_source.burst(topic, "A", 60)
    b_keys = on_target.burst(topic, "B", 60)
    everything = a_keys + b_keys
    for side in (source, target):
        wait_for(lambda side=side: sum(side.keys(topic).values()) >= len(everything),
                 f"{len(everything)} messages on {side.cluster_id}", 60)
    wait_for(lambda: forward.stats().get("skipped_loop") == 60 and backward.stats().get("skipped_loop") == 60,
             "each worker skipping the other's replicas", 30)
    time.sleep(2)  # a loop would show up as more messages by now
    exactly_once(source.keys(topic), everything)
    exactly_once(target.keys(topic), everything)
    fwd, rev = forward.stats(), backward.stats()
    assert (fwd["replicated"], fwd["skipped_loop"], rev["replicated"], rev["skipped_loop"]) == (60, 60, 60, 60)
    origins = {m.keys[0]: m.properties.get(ORIGIN_PROPERTY) for m in target.read(topic)}
    assert all(origins[k] == "source" for k in a_keys) and all(origins[k] is None for k in b_keys)


def test_kill_9_mid_stream_loses_nothing(sides, names, spawn, loads_):
    source, target = sides
    topic = topic_on_both((source, target), names, "kill")
    config = task_config(names.group("kill"), source, target, [topic], tuning={"commit_interval": 1.0})
    worker = spawn(config, "w1")
    worker.wait_active(4)
    load = loads_(source.namesrv, names.group("pg"))
    load.start_stream([topic], "kill", rate=200)
    wait_for(lambda: worker.stats().get("replicated", 0) > 300, "replication under way", 30)
    worker.proc.send_signal(signal.SIGKILL)
    worker.proc.wait(10)
    replicated_before = sum(target.keys(topic).values())
    time.sleep(1)
    restarted = spawn(config, "w1")  # same worker id, new process
    time.sleep(3)
    load.stop_stream()
    sent = load.sent[topic]
    wait_for(lambda: set(target.keys(topic)) >= set(sent), f"all {len(sent)} keys after the restart", 60)
    counts = target.keys(topic)
    duplicates = sum(counts.values()) - len(counts)
    print(f"kill -9: {len(sent)} sent, {replicated_before} replicated before the kill, {duplicates} duplicates")
    assert set(counts) == set(sent)
    assert duplicates == sum(n - 1 for n in counts.values())
    # the restart resumed from the committed offsets, not from the start of the queues
    assert restarted.stats()["consumed"] < len(sent)
    assert restarted.terminate() == 0


@pytest.mark.parametrize("direction", ["4.9 to 5.x", "5.x to 4.9"])
def test_two_workers_split_the_queues_without_double_work(sides, names, spawn, loads_, direction):
    """Membership (HEART_BEAT, GET_CONSUMER_LIST_BY_GROUP) and the allocation, with the group on
    each version's broker."""
    source, target = sides if direction == "4.9 to 5.x" else sides[::-1]
    topics = [names.topic("s1"), names.topic("s2")]
    for topic in topics:
        source.create_topic(topic)
        target.create_topic(topic)
    config = task_config(names.group("split"), source, target, topics)
    first = spawn(config, "w1")
    first.wait_active(8)
    second = spawn(config, "w2")

    def settled():
        a, b = first.stats(), second.stats()
        mine, theirs = set(a.get("active_queues", [])), set(b.get("active_queues", []))
        ok = (mine and theirs and not mine & theirs and len(mine | theirs) == 8
              and set(a.get("owned_queues", [])) == mine and set(b.get("owned_queues", [])) == theirs)
        return ok and (a, b)
    a, b = wait_for(settled, "the two workers owning disjoint halves", 60)
    assert len(a["active_queues"]) == len(b["active_queues"]) == 4
    assert a["consumers"] == b["consumers"] and len(a["consumers"]) == 2
    since = {topic: target.max_offsets(topic) for topic in topics}
    before = (a["replicated"], b["replicated"])
    load = loads_(source.namesrv, names.group("pg"))
    sent = {topic: load.burst(topic, f"split-{topic[-8:]}", 100) for topic in topics}
    for topic in topics:
        wait_for(lambda topic=topic: sum(target.keys(topic, since[topic]).values()) >= 100, f"100 on {topic}", 60)
    time.sleep(1.5)
    for topic in topics:
        exactly_once(target.keys(topic, since[topic]), sent[topic])
    a, b = first.stats(), second.stats()
    done = (a["replicated"] - before[0], b["replicated"] - before[1])
    assert done[0] > 0 and done[1] > 0 and sum(done) == 200
    # one leaves cleanly: the other takes every queue back and replicates what follows
    assert second.terminate() == 0
    first.wait_active(8, timeout=30)
    since = {topics[0]: target.max_offsets(topics[0])}
    tail = load.burst(topics[0], "after", 40)
    wait_for(lambda: sum(target.keys(topics[0], since[topics[0]]).values()) >= 40, "40 after the leave", 60)
    exactly_once(target.keys(topics[0], since[topics[0]]), tail)


def test_pause_and_resume_continue_exactly_where_it_stopped(sides, names, spawn, loads_):
    source, target = sides
    topic = topic_on_both((source, target), names, "pause")
    config = task_config(names.group("pause"), source, target, [topic])
    group = ReplicationConfig.from_dict(config).consumer_group
    worker = spawn(config, "w1")
    worker.wait_active(4)
    load = loads_(source.namesrv, names.group("pg"))
    first = load.burst(topic, "before", 50)
    wait_for(lambda: sum(target.keys(topic).values()) >= 50, "the first 50", 60)
    assert worker.terminate() == 0
    assert worker.stats()["state"] == "stopped"
    assert source.committed(group, topic) == source.max_offsets(topic)
    offline = source.run(lambda a: a.consumer_connection(source.broker, group))
    assert offline.online == 0  # UNREGISTER_CLIENT took it off the broker at once
    second = load.burst(topic, "while-paused", 50)
    time.sleep(1)
    assert not any(k.startswith("while-paused") for k in target.keys(topic))
    resumed = spawn(config, "w1")
    wait_for(lambda: sum(target.keys(topic).values()) >= 100, "the 50 sent while paused", 60)
    time.sleep(1)
    exactly_once(target.keys(topic), first + second)
    assert resumed.stats()["consumed"] == 50
    assert resumed.terminate() == 0


def test_a_commit_the_broker_lost_is_sent_again(sides, names, spawn, loads_):
    """A broker can drop a commit (concurrent first commits of a topic and group replace each
    other's offset maps). The worker sends an unchanged offset again, as the Java client does,
    so a queue left behind by a lost commit catches up with no new message to move it. It never
    sends it over a higher one: a new owner of the queue (the worker lost it without knowing,
    when listing the group's consumers failed) may have committed further."""
    source, target = sides
    topic = topic_on_both((source, target), names, "recommit")
    config = task_config(names.group("recommit"), source, target, [topic], tuning={"recommit_interval": 2.0})
    group = ReplicationConfig.from_dict(config).consumer_group
    worker = spawn(config, "w1")
    worker.wait_active(4)
    load = loads_(source.namesrv, names.group("pg"))
    load.burst(topic, "once", 40)
    wait_for(lambda: source.committed(group, topic) == source.max_offsets(topic), "all 40 committed", 60)
    queue, high = max(source.max_offsets(topic).items(), key=lambda item: item[1])
    assert high > 0
    source.run(lambda a: a.update_consumer_offset(source.broker, group, topic, queue, 0))  # the lost commit
    assert source.committed(group, topic)[queue] == 0
    wait_for(lambda: source.committed(group, topic)[queue] == high, f"queue {queue} back at {high}", 20)
    assert sum(target.keys(topic).values()) == 40  # healed by a commit, not by replicating again
    source.run(lambda a: a.update_consumer_offset(source.broker, group, topic, queue, high + 5))  # a new owner's
    time.sleep(3 * 2.0)  # three recommit intervals
    assert source.committed(group, topic)[queue] == high + 5
    assert worker.terminate() == 0


def test_reset_by_timestamp_replays_exactly_from_that_time(sides, names, spawn, loads_):
    source, target = sides
    topic = topic_on_both((source, target), names, "reset")
    config = task_config(names.group("reset"), source, target, [topic])
    group = ReplicationConfig.from_dict(config).consumer_group
    worker = spawn(config, "w1")
    worker.wait_active(4)
    load = loads_(source.namesrv, names.group("pg"))
    for chunk in range(4):
        load.burst(topic, f"chunk{chunk}", 15)
        time.sleep(0.4)
    wait_for(lambda: sum(target.keys(topic).values()) >= 60, "60 replicated", 60)
    assert worker.terminate() == 0
    stored = source.read(topic)
    stamp = min(m.store_timestamp for m in stored if m.keys[0].startswith("chunk2"))
    expected = [m.keys[0] for m in stored if m.store_timestamp >= stamp]
    assert 20 <= len(expected) < 60
    since = target.max_offsets(topic)
    source.run(lambda a: reset_to_time(a, group, topic, stamp, cluster="source"))
    replay = spawn(config, "w1")
    wait_for(lambda: sum(target.keys(topic, since).values()) >= len(expected), f"{len(expected)} replayed", 60)
    time.sleep(1.5)
    exactly_once(target.keys(topic, since), expected)
    assert replay.stats()["replicated"] == len(expected)
    assert replay.terminate() == 0


def test_a_new_group_starting_at_a_timestamp_begins_exactly_there(sides, names, spawn, loads_):
    source, target = sides
    topic = topic_on_both((source, target), names, "since")
    load = loads_(source.namesrv, names.group("pg"))
    load.burst(topic, "old", 20)
    time.sleep(0.5)
    load.burst(topic, "new", 20)
    stored = source.read(topic)
    stamp = min(m.store_timestamp for m in stored if m.keys[0].startswith("new"))
    expected = [m.keys[0] for m in stored if m.store_timestamp >= stamp]
    assert 20 <= len(expected) < 40
    worker = spawn(task_config(names.group("since"), source, target, [topic], start={"timestamp_ms": stamp}), "w1")
    wait_for(lambda: sum(target.keys(topic).values()) >= len(expected), f"{len(expected)} replicated", 60)
    time.sleep(1.5)
    exactly_once(target.keys(topic), expected)
    assert worker.stats()["consumed"] == len(expected)


def test_queues_added_after_the_start_are_replicated_from_their_first_message(sides, names, spawn):
    """start=latest skips what was there at the start, not what a queue added later holds before
    the worker's next route refresh notices it."""
    source, target = sides
    topic = names.topic("grow")
    source.create_topic(topic, queues=2)
    target.create_topic(topic, queues=4)
    for q in range(2):
        source.send(topic, q, f"old-{q}")
    worker = spawn(task_config(names.group("grow"), source, target, [topic], start="latest",
                               tuning={"route_interval": 5.0}), "w1")
    worker.wait_active(2)
    source.run(lambda a: a.create_topic(source.broker, TopicConfig(topic, 4, 4)))
    expected = [f"new-{q}" for q in range(4)]
    for q, key in enumerate(expected):  # at once: before the next route refresh
        source.send(topic, q, key)
    worker.wait_active(4, timeout=30)
    wait_for(lambda: sum(target.keys(topic).values()) >= len(expected), f"{len(expected)} replicated", 60)
    time.sleep(1.5)
    exactly_once(target.keys(topic), expected)


def test_rate_limit_holds_over_a_window(sides, names, spawn, loads_):
    source, target = sides
    topic = topic_on_both((source, target), names, "rate")
    load = loads_(source.namesrv, names.group("pg"))
    load.burst(topic, "backlog", 600)
    worker = spawn(task_config(names.group("rate"), source, target, [topic], start="earliest", rate_limit=40), "w1")
    first = wait_for(lambda: (s := worker.stats()).get("replicated", 0) >= 20 and s, "replication started", 60)
    second = wait_for(lambda: (s := worker.stats())["updated_at_ms"] - first["updated_at_ms"] >= 6000 and s,
                      "a six-second window", 30)
    rate = (second["replicated"] - first["replicated"]) / ((second["updated_at_ms"] - first["updated_at_ms"]) / 1000)
    print(f"rate limit 40/s: measured {rate:.1f}/s")
    assert 40 * 0.8 <= rate <= 40 * 1.1
    assert second["lag"] > 100  # held back by the limit, not by a lack of messages


def test_a_target_without_the_topic_fails_counts_and_retries_until_it_exists(sides, names, spawn, loads_):
    source, target = sides
    topic = names.topic("late")
    source.create_topic(topic)
    config = task_config(names.group("late"), source, target, [topic], start="earliest",
                         tuning={"max_backoff": 1.0})
    group = ReplicationConfig.from_dict(config).consumer_group
    load = loads_(source.namesrv, names.group("pg"))
    keys = load.burst(topic, "late", 20)
    worker = spawn(config, "w1")
    stats = wait_for(lambda: (s := worker.stats()).get("failed", 0) >= 10 and s, "failed sends counted", 60)
    assert stats["replicated"] == 0 and stats["retrying"] > 0
    first_age = stats["oldest_retry_age_ms"]
    assert first_age > 0 and wait_for(lambda: (worker.stats()["oldest_retry_age_ms"] or 0) > first_age + 1000,
                                      "the retry age growing (what the monitor alerts on)", 10)
    assert all(v in (0, None) for v in source.committed(group, topic).values())  # nothing committed past them
    target.create_topic(topic)
    wait_for(lambda: sum(target.keys(topic).values()) >= 20, "all 20 once the topic exists", 60)
    exactly_once(target.keys(topic), keys)
    # The worker reports lag 0 once it has committed, on its own interval: slow on a loaded machine.
    try:
        stats = wait_for(lambda: (s := worker.stats())["retrying"] == 0 and s["lag"] == 0 and s, "retries done", 90)
    except AssertionError as exc:
        periodic = [line for line in worker.log().splitlines() if "periodic" in line][-5:]
        raise AssertionError(f"{exc}; the worker's stats: {worker.stats()}; on the broker: committed"
                             f" {source.committed(group, topic)}, max {source.max_offsets(topic)};"
                             f" periodic job errors: {periodic}") from None
    assert stats["replicated"] == 20 and stats["failed"] >= 10 and stats["oldest_retry_age_ms"] is None


def test_acl_clusters_with_secrets_from_the_environment(acl_clusters, names, spawn):
    source, target = Side.of(acl_clusters["source-acl"]), Side.of(acl_clusters["target-acl"])
    topic = topic_on_both((source, target), names, "acl")
    env = {"RMQ_TEST_SRC_SECRET": source.credentials.secret_key, "RMQ_TEST_DST_SECRET": target.credentials.secret_key}
    config = task_config(names.group("acl"), source, target, [topic], source_secret_env="RMQ_TEST_SRC_SECRET",
                         target_secret_env="RMQ_TEST_DST_SECRET")
    worker = spawn(config, "w1", env=env)
    worker.wait_active(4)
    keys = [f"acl-{i}" for i in range(20)]
    for i, key in enumerate(keys):
        source.send(topic, i % 4, key, {"who": "acl"})
    wait_for(lambda: sum(target.keys(topic).values()) >= 20, "20 on the ACL target", 60)
    exactly_once(target.keys(topic), keys)
    assert worker.terminate() == 0
    for secret in env.values():
        for text in (worker.config_path.read_text(), worker.stats_path.read_text(), worker.log()):
            assert secret not in text


# === broker restarts, on clusters of our own ======================================================

# Below the kernel's ephemeral range (32768+): a client's port there can block a broker's bind.
REPL_A = harness.ClusterSpec("repl-a", harness.SOURCE_VERSION, 21876, 22911)
REPL_B = harness.ClusterSpec("repl-b", harness.TARGET_VERSION, 27876, 28911)


@pytest.fixture
def own_clusters():
    started = []
    try:
        for spec in (REPL_A, REPL_B):
            started.append(spec)
            harness.start(spec, timeout=180)
        yield Side(REPL_A.namesrv, REPL_A.broker, "repl-a"), Side(REPL_B.namesrv, REPL_B.broker, "repl-b")
    finally:
        for spec in started:
            harness.stop(spec)


def _restart_broker(spec: harness.ClusterSpec) -> None:
    harness.stop(spec, roles=("broker",))
    try:
        wait_for(lambda: not harness.is_up(spec), f"{spec.name}'s broker gone from its name server", 20)
    except AssertionError:
        harness.stop(spec)  # the name server still lists it: restart that too
    harness.start(spec, timeout=180)  # brings the broker back (and a fresh name server)


def test_broker_restarts_on_either_side_lose_nothing(own_clusters, names, spawn, loads_):
    source, target = own_clusters
    topic = topic_on_both((source, target), names, "restart")
    worker = spawn(task_config(names.group("restart"), source, target, [topic], tuning={"max_backoff": 1.0}), "w1")
    worker.wait_active(4, timeout=90)
    load = loads_(source.namesrv, names.group("pg"))
    load.start_stream([topic], "rs", rate=100)
    wait_for(lambda: worker.stats().get("replicated", 0) > 100, "replication under way", 60)
    _restart_broker(REPL_B)
    wait_for(lambda: worker.stats().get("failed", 0) > 0, "sends failing while the target was down", 30)
    replicated = worker.stats()["replicated"]
    wait_for(lambda: worker.stats()["replicated"] > replicated + 100, "replication resumed to the target", 90)
    _restart_broker(REPL_A)
    replicated = worker.stats()["replicated"]
    wait_for(lambda: worker.stats()["replicated"] > replicated + 100, "replication resumed from the source", 120)
    load.stop_stream()
    sent = load.sent[topic]
    wait_for(lambda: set(target.keys(topic)) >= set(sent), f"all {len(sent)} keys", 120)
    counts = target.keys(topic)
    print(f"broker restarts: {len(sent)} sent, {sum(counts.values()) - len(counts)} duplicates")
    assert set(counts) == set(sent)
    assert worker.alive and worker.terminate() == 0
