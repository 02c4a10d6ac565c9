"""One member of the demo fleet: a producer or a consumer process on the C++ client.

It follows one of two things. With ``--config-url`` it asks the config service every half
second which cluster it belongs to. With ``--address-url`` it asks a name-server address
service (``http://DOMAIN/rocketmq/SUBGROUP``, what the Java client asks by itself) every
``--address-poll`` seconds: the C++ client reads that address only when it starts, so an
application on it must ask again itself to be moved. Either way, when the answer changes it
shuts its client down and starts a new one on the other cluster. Every message sent (with a
unique key) and received is appended to a JSON-lines log, which the accounting reads.

    python -m rocketmq_demo.member (--config-url URL | --address-url URL [--address-poll 30])
                                   --member ID --role producer|consumer --group G --topic T
                                   --log FILE [--rate 20]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import signal
import threading
import time
import urllib.request
from typing import Any

from rocketmq.client import Message, Producer, PushConsumer
from rocketmq.ffi import dll

#: rocketmq-client-cpp's ConsumeFromWhere.CONSUME_FROM_FIRST_OFFSET.
CONSUME_FROM_FIRST_OFFSET = 4
#: The client's own DefaultMQPushConsumer::set/getConsumeFromWhere, which the C API leaves out.
_set_consume_from_where = getattr(
    dll, "_ZN8rocketmq21DefaultMQPushConsumer19setConsumeFromWhereENS_16ConsumeFromWhereE")
_set_consume_from_where.argtypes, _set_consume_from_where.restype = [ctypes.c_void_p, ctypes.c_int], None
_get_consume_from_where = getattr(dll, "_ZN8rocketmq21DefaultMQPushConsumer19getConsumeFromWhereEv")
_get_consume_from_where.argtypes, _get_consume_from_where.restype = [ctypes.c_void_p], ctypes.c_int


def consume_from_first_offset(consumer: PushConsumer) -> None:
    """Make a queue whose committed offset cannot be read start at its first message, not its last.

    The C API fixes CONSUME_FROM_LAST_OFFSET, and under it this client (every release through
    2.2.0) takes a failed offset query, a timeout included, for "no offset yet" and starts the
    queue at its end: the rebalance a migration's canary causes then skips what was waiting.
    From the first offset the same failure replays the queue, which idempotent consumers absorb;
    a group new to a cluster reads what is already there, as a migration's target needs. The
    handle the C API returns is the client's push consumer, so its own setter applies."""
    _set_consume_from_where(consumer._handle, CONSUME_FROM_FIRST_OFFSET)
    if _get_consume_from_where(consumer._handle) != CONSUME_FROM_FIRST_OFFSET:
        raise RuntimeError("the C++ client did not take CONSUME_FROM_FIRST_OFFSET")


class Recorder:
    def __init__(self, path: str):
        self._file = open(path, "a", buffering=1)
        self._lock = threading.Lock()

    def write(self, **entry: Any) -> None:
        with self._lock:
            self._file.write(json.dumps({"t": time.time(), **entry}) + "\n")


def fetch(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.read()
    except OSError:
        return None


class Member:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.log = Recorder(args.log)
        self.namesrv: str | None = None
        self.cluster: str | None = None
        self.client: Any = None
        self.incarnation = 0
        self.stopping = threading.Event()
        self.seq = 0

    def _start_client(self) -> None:
        a = self.args
        self.incarnation += 1
        if a.role == "producer":
            client = Producer(a.group)
            client.set_namesrv_addr(self.namesrv)
        else:
            client = PushConsumer(a.group)
            consume_from_first_offset(client)
            client.set_namesrv_addr(self.namesrv)
            client.set_instance_name(f"{a.member}-{self.incarnation}")
            cluster = self.cluster
            client.subscribe(a.topic, lambda msg: self.log.write(
                e="recv", key=msg.keys.decode(), group=a.group, cluster=cluster, member=a.member,
                queue=msg.queue_id, offset=msg.queue_offset))
        client.start()
        self.client = client

    def _stop_client(self) -> None:
        if self.client is not None:
            self.client.shutdown()
            self.client = None

    def follow(self) -> None:
        """Ask where to be; move there when it is somewhere else. In address mode the cluster
        is known only by its name servers, which the accounting relabels."""
        if self.args.address_url:
            answer = fetch(self.args.address_url)
            namesrv = answer.decode().strip() if answer else None
            cluster = namesrv
        else:
            answer = fetch(f"{self.args.config_url}/members/{self.args.member}")
            config = json.loads(answer) if answer else {}
            namesrv, cluster = config.get("namesrv"), config.get("cluster")
        if namesrv and namesrv != self.namesrv:
            self._stop_client()
            self.namesrv, self.cluster = namesrv, cluster
            self._start_client()
            self.log.write(e="switch", cluster=self.cluster, member=self.args.member)

    def produce_one(self) -> None:
        key = f"{self.args.member}-{self.seq}"
        msg = Message(self.args.topic)
        msg.set_keys(key)
        msg.set_body(key.encode())
        try:
            result = self.client.send_sync(msg)
        except Exception as exc:  # the C++ client raises its own types; record and go on
            self.log.write(e="fail", key=key, cluster=self.cluster, error=str(exc)[:200])
            return
        self.seq += 1
        self.log.write(e="sent", key=key, cluster=self.cluster, msg_id=result.msg_id)

    def run(self) -> None:
        next_poll = 0.0
        interval = self.args.address_poll if self.args.address_url else 0.5
        while not self.stopping.is_set():
            if time.monotonic() >= next_poll:
                self.follow()
                next_poll = time.monotonic() + interval
            if self.args.role == "producer" and self.client is not None:
                self.produce_one()
                self.stopping.wait(1 / self.args.rate)
            else:
                self.stopping.wait(0.2)
        self._stop_client()
        self.log.write(e="stopped", member=self.args.member)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    follows = parser.add_mutually_exclusive_group(required=True)
    follows.add_argument("--config-url")
    follows.add_argument("--address-url")
    parser.add_argument("--address-poll", type=float, default=30.0)
    parser.add_argument("--member", required=True)
    parser.add_argument("--role", choices=["producer", "consumer"], required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--rate", type=float, default=20.0)
    member = Member(parser.parse_args())
    signal.signal(signal.SIGTERM, lambda *_: member.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: member.stopping.set())
    member.run()


if __name__ == "__main__":
    main()
