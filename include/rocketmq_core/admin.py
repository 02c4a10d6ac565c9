"""Cluster admin API over a name server list and optional ACL credentials.

Async because one broker answers thousands of requests in flight on one connection; callers
without a loop (operators, the CLI) wrap a call in ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import json
import re
from collections.abc import Awaitable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from rocketmq_core.errors import (
    BrokerUnavailable, ConnectionFailed, ConsumerNotOnline, QueryNotFound, RequestCodeNotSupported,
    RequestTimeout, RocketMQError, ServerError, TopicNotExist,
)
from rocketmq_core.model import (
    ClientConnection, ConsumerConnection, GroupConfig, MessageQueue, QueueOffsets, TopicConfig,
    validate_group_name, validate_topic_name,
)
from rocketmq_core.remoting.client import Credentials, RemotingClient
from rocketmq_core.remoting.codec import RemotingCommand
from rocketmq_core.remoting.fastjson import loads
from rocketmq_core.remoting.protocol import RequestCode

T = TypeVar("T")
C = TypeVar("C", TopicConfig, GroupConfig)
#: Requests in flight per admin client; a broker answers these on one connection.
MAX_IN_FLIGHT = 256

MASTER_ID = 0
#: The name server's KV namespace of ordered topics: topic -> ``broker:queues;broker2:queues``.
ORDER_NAMESPACE = "ORDER_TOPIC_CONFIG"


class _TopicTable(msgspec.Struct):
    """GET_ALL_TOPIC_CONFIG's body with each topic's config kept as raw bytes."""

    topicConfigTable: dict[str, msgspec.Raw] = msgspec.field(default_factory=dict)


class _TopicConfigs(msgspec.Struct):
    """GET_ALL_TOPIC_CONFIG's body, each topic decoded straight into a TopicConfig."""

    topicConfigTable: dict[str, TopicConfig] = msgspec.field(default_factory=dict)


class _GroupConfigs(msgspec.Struct):
    """GET_ALL_SUBSCRIPTIONGROUP_CONFIG's body, each group decoded straight into a GroupConfig."""

    subscriptionGroupTable: dict[str, GroupConfig] = msgspec.field(default_factory=dict)


#: Lenient as fastjson is: numbers and flags may come as strings.
_TOPIC_CONFIGS = msgspec.json.Decoder(_TopicConfigs, strict=False)
_GROUP_CONFIGS = msgspec.json.Decoder(_GroupConfigs, strict=False)


async def gather_all(*jobs: Awaitable[T]) -> list[T]:
    """``asyncio.gather``, except that when one job fails the others are cancelled and awaited
    before the error propagates: a failed request no longer leaves siblings running into the
    loop's shutdown, whose late errors asyncio then prints ahead of the real one."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Build many objects at once without the cyclic collector re-scanning them as they are made
    (about 40% of parsing 20,000 configs). Only around code that does not await: other tasks run
    with the collector on."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _config_table(body: bytes, decoder: msgspec.json.Decoder[Any], key: str, config: type[C]) -> dict[str, C]:
    """A broker's whole topic or group table, decoded straight into configs in C; a body that is
    not standard JSON, or holds a field of another type, goes the tolerant parser's way."""
    with gc_paused():
        try:
            table: dict[str, C] = getattr(decoder.decode(body), key)
            return table
        except (msgspec.DecodeError, UnicodeError):
            parsed = loads(body).get(key) or {}
            return {name: config.from_wire(cfg) for name, cfg in parsed.items()}


@dataclass(frozen=True)
class BrokerInfo:
    name: str
    cluster: str
    addrs: dict[int, str]

    @property
    def master(self) -> str | None:
        return self.addrs.get(MASTER_ID)


class ClusterAdmin:
    """Admin operations on one RocketMQ cluster, reached through its name servers."""

    def __init__(self, namesrv_addrs: list[str] | str, credentials: Credentials | None = None,
                 timeout: float = 5.0, connect_timeout: float = 3.0, cluster: str | None = None):
        """``cluster`` scopes the admin to the brokers of one cluster behind shared name servers:
        every broker list, and so every operation over brokers, sees only that cluster's."""
        if isinstance(namesrv_addrs, str):
            namesrv_addrs = [a.strip() for a in namesrv_addrs.replace(",", ";").split(";") if a.strip()]
        if not namesrv_addrs:
            raise RocketMQError("no name server address given")
        self.namesrv_addrs = list(namesrv_addrs)
        self.cluster = cluster
        self.client = RemotingClient(credentials, timeout=timeout, connect_timeout=connect_timeout)
        self._majors: dict[str, int] = {}

    async def close(self) -> None:
        await self.client.close()

    async def __aenter__(self) -> "ClusterAdmin":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def namesrv_invoke(self, code: int, ext_fields: dict[str, object] | None = None,
                             body: bytes = b"") -> RemotingCommand:
        """Ask the first name server that answers; fail only when none does."""
        failures: list[str] = []
        for addr in self.namesrv_addrs:
            try:
                return await self.client.invoke(addr, code, ext_fields, body)
            except (ConnectionFailed, RequestTimeout) as exc:
                failures.append(str(exc))
        raise ConnectionFailed(",".join(self.namesrv_addrs), "; ".join(failures))

    async def brokers(self) -> list[BrokerInfo]:
        """Every broker the name servers know (of the admin's cluster, when it has one), with its
        cluster and addresses by broker id."""
        data = loads((await self.namesrv_invoke(RequestCode.GET_BROKER_CLUSTER_INFO)).body)
        brokers = [
            BrokerInfo(name=name, cluster=entry.get("cluster", ""),
                       addrs={int(k): v for k, v in (entry.get("brokerAddrs") or {}).items()})
            for name, entry in sorted((data.get("brokerAddrTable") or {}).items())
        ]
        return [b for b in brokers if self.cluster is None or b.cluster == self.cluster]

    async def broker_config(self, addr: str) -> dict[str, str]:
        """The broker's running configuration (GET_BROKER_CONFIG answers ``key=value`` lines)."""
        resp = await self.client.invoke(addr, RequestCode.GET_BROKER_CONFIG)
        config = {}
        for line in resp.body.decode("utf-8", "replace").splitlines():
            key, sep, value = line.partition("=")
            if sep:
                config[key.strip()] = value.strip()
        return config

    async def broker_runtime_info(self, addr: str) -> dict[str, str]:
        resp = await self.client.invoke(addr, RequestCode.GET_BROKER_RUNTIME_INFO)
        return dict(loads(resp.body).get("table", {}))

    async def broker_major(self, addr: str) -> int:
        """The broker's major version (``V5_5_0`` -> 5; 0 when it does not say), asked once per admin."""
        if addr not in self._majors:
            version = (await self.broker_runtime_info(addr)).get("brokerVersionDesc", "")
            major = version.lstrip("V").split("_")[0]
            self._majors[addr] = int(major) if major.isdigit() else 0
        return self._majors[addr]

    async def gather(self, jobs: Iterable[Awaitable[T]]) -> list[T]:
        """Run many requests concurrently, at most MAX_IN_FLIGHT at a time; the first failure raises.

        MAX_IN_FLIGHT workers take the jobs in turn: a task per worker, not per job."""
        pending = list(jobs)
        results: list[Any] = [None] * len(pending)
        turns = iter(enumerate(pending))

        async def worker() -> None:
            for index, job in turns:
                results[index] = await job

        try:
            await gather_all(*(worker() for _ in range(min(MAX_IN_FLIGHT, len(pending)))))
        finally:
            for job in pending:  # after a failure, the jobs no worker took (closing a finished one is a no-op)
                if inspect.iscoroutine(job):
                    job.close()
        return results

    # --- brokers ---------------------------------------------------------------------------

    async def masters(self, cluster: str | None = None, expected: Iterable[str] = ()) -> list[BrokerInfo]:
        """Every broker of the selection (one cluster when named), each with its master.

        The one policy for "which brokers hold the data": a broker name registered without a
        master (its master died, a slave is left) or an ``expected`` broker name that is not
        registered at all (the name server forgets a broker as soon as its connection drops)
        raises BrokerUnavailable naming it, and so does an empty selection, which would make
        every "nothing left" question vacuously true. Slaves are never returned to write to.
        """
        brokers = [b for b in await self.brokers() if cluster is None or b.cluster == cluster]
        where = f"{'cluster ' + repr(cluster) + ' at ' if cluster else ''}{','.join(self.namesrv_addrs)}"
        headless = sorted(b.name for b in brokers if not b.master)
        if headless:
            raise BrokerUnavailable(f"broker(s) {', '.join(headless)} of {where} have no master registered;"
                                    " what they hold is unknown")
        missing = sorted(set(expected) - {b.name for b in brokers})
        if missing:
            raise BrokerUnavailable(f"broker(s) {', '.join(missing)} expected at {where} are not registered;"
                                    " what they hold is unknown")
        if not brokers:
            raise BrokerUnavailable(f"no master broker is registered at {where}")
        return brokers

    async def system_topics(self, addr: str) -> frozenset[str]:
        resp = await self.client.invoke(addr, RequestCode.GET_SYSTEM_TOPIC_LIST_FROM_BROKER)
        return frozenset(loads(resp.body).get("topicList", []))

    # --- topics ----------------------------------------------------------------------------

    async def topic_names(self) -> list[str]:
        """Every topic the name servers know, system ones included."""
        body = loads((await self.namesrv_invoke(RequestCode.GET_ALL_TOPIC_LIST_FROM_NAMESERVER)).body)
        return sorted(body.get("topicList", []))

    async def topic_configs(self, addr: str) -> dict[str, TopicConfig]:
        resp = await self.client.invoke(addr, RequestCode.GET_ALL_TOPIC_CONFIG, timeout=30)
        return _config_table(resp.body, _TOPIC_CONFIGS, "topicConfigTable", TopicConfig)

    async def topics_held(self, addr: str) -> set[str]:
        """The names of every topic one broker holds, their configs left unparsed."""
        resp = await self.client.invoke(addr, RequestCode.GET_ALL_TOPIC_CONFIG, timeout=30)
        try:
            return set(msgspec.json.decode(resp.body, type=_TopicTable).topicConfigTable)
        except (msgspec.DecodeError, UnicodeError):  # not standard JSON: the tolerant parser's way
            return set(loads(resp.body).get("topicConfigTable") or {})

    async def create_topic(self, addr: str, topic: TopicConfig) -> None:
        """Create or update a topic on one broker. A 4.9 broker ignores ``order``: there, ordering is
        the name server's order table (``put_order``; metadata apply writes it with the topic)."""
        validate_topic_name(topic.name)
        await self.client.invoke(addr, RequestCode.UPDATE_AND_CREATE_TOPIC, topic.create_header())

    async def create_topics(self, addr: str, topics: list[TopicConfig]) -> None:
        """Create or update many topics: one batch request where the broker has it (5.3+)."""
        for topic in topics:
            validate_topic_name(topic.name)
        if not topics:
            return
        body = json.dumps({"topicConfigList": [t.to_wire(for_create=True) for t in topics]}).encode()
        try:
            await self.client.invoke(addr, RequestCode.UPDATE_AND_CREATE_TOPIC_LIST, body=body, timeout=60)
        except RequestCodeNotSupported:
            await self.gather(self.create_topic(addr, t) for t in topics)
            return
        # 5.5.0 answers a batch holding one unchanged topic with success and applies none of
        # it: read back and send what did not land, one by one.
        have = await self.topic_configs(addr)
        await self.gather(self.create_topic(addr, t) for t in topics if not _topic_landed(t, have.get(t.name)))

    async def delete_topic(self, topic: str, cluster: str | None = None, expected: Iterable[str] = ()) -> None:
        """Delete on every master broker (refused, see ``masters``, when an ``expected`` one is
        missing), then from every name server."""
        for broker in await self.masters(cluster, expected):
            await self.client.invoke(broker.master, RequestCode.DELETE_TOPIC_IN_BROKER, {"topic": topic})
        for addr in self.namesrv_addrs:
            await self.client.invoke(addr, RequestCode.DELETE_TOPIC_IN_NAMESRV,
                                     {"topic": topic, "clusterName": cluster})

    async def order_table(self) -> dict[str, str]:
        """The name server's ordered topics (``mqadmin updateTopic -o true`` writes them), empty when none."""
        try:
            resp = await self.namesrv_invoke(RequestCode.GET_KVLIST_BY_NAMESPACE, {"namespace": ORDER_NAMESPACE})
        except QueryNotFound:  # no ordered topic at all
            return {}
        table = (loads(resp.body) if resp.body else {}).get("table") or {}
        return {str(k): str(v) for k, v in table.items()}

    async def put_order(self, topic: str, value: str | None) -> None:
        """Record (or, with None, drop) an ordered topic on every name server, as mqadmin updateTopic -o does."""
        for addr in self.namesrv_addrs:
            if value is None:
                await self.client.invoke(addr, RequestCode.DELETE_KV_CONFIG,
                                         {"namespace": ORDER_NAMESPACE, "key": topic})
            else:
                await self.client.invoke(addr, RequestCode.PUT_KV_CONFIG,
                                         {"namespace": ORDER_NAMESPACE, "key": topic, "value": value})

    async def topic_route(self, topic: str) -> dict:
        resp = await self.namesrv_invoke(RequestCode.GET_ROUTEINFO_BY_TOPIC, {"topic": topic})
        return loads(resp.body)

    async def topic_offsets(self, addr: str, topic: str) -> dict[MessageQueue, tuple[int, int]]:
        """(min offset, max offset) of every queue of a topic on one broker."""
        resp = await self.client.invoke(addr, RequestCode.GET_TOPIC_STATS_INFO, {"topic": topic})
        table = loads(resp.body).get("offsetTable") or {}
        return {MessageQueue.from_key(k): (int(v["minOffset"]), int(v["maxOffset"])) for k, v in table.items()}

    async def max_offset(self, addr: str, topic: str, queue_id: int) -> int:
        resp = await self.client.invoke(addr, RequestCode.GET_MAX_OFFSET, {"topic": topic, "queueId": queue_id})
        return int(resp.ext_fields["offset"])

    async def min_offset(self, addr: str, topic: str, queue_id: int) -> int:
        resp = await self.client.invoke(addr, RequestCode.GET_MIN_OFFSET, {"topic": topic, "queueId": queue_id})
        return int(resp.ext_fields["offset"])

    # --- groups ----------------------------------------------------------------------------

    async def group_configs(self, addr: str) -> dict[str, GroupConfig]:
        resp = await self.client.invoke(addr, RequestCode.GET_ALL_SUBSCRIPTIONGROUP_CONFIG, timeout=30)
        return _config_table(resp.body, _GROUP_CONFIGS, "subscriptionGroupTable", GroupConfig)

    async def create_group(self, addr: str, group: GroupConfig) -> None:
        validate_group_name(group.name)
        await self.client.invoke(addr, RequestCode.UPDATE_AND_CREATE_SUBSCRIPTIONGROUP,
                                 body=json.dumps(group.to_wire()).encode())

    async def create_groups(self, addr: str, groups: list[GroupConfig]) -> None:
        """Create or update many groups: one batch request where the broker has it (5.3.1+)."""
        for group in groups:
            validate_group_name(group.name)
        if not groups:
            return
        body = json.dumps({"groupConfigList": [g.to_wire() for g in groups]}).encode()
        try:
            await self.client.invoke(addr, RequestCode.UPDATE_AND_CREATE_SUBSCRIPTIONGROUP_LIST, body=body,
                                     timeout=60)
        except RequestCodeNotSupported:
            await self.gather(self.create_group(addr, g) for g in groups)

    async def delete_group(self, addr: str, group: str, clean_offset: bool = True) -> None:
        # 4.9 reads removeOffset, 5.x cleanOffset: send both so offsets go on either version.
        flag = str(clean_offset).lower()
        await self.client.invoke(addr, RequestCode.DELETE_SUBSCRIPTIONGROUP,
                                 {"groupName": group, "cleanOffset": flag, "removeOffset": flag})

    # --- clients ---------------------------------------------------------------------------

    async def consumer_connection(self, addr: str, group: str) -> ConsumerConnection:
        """Consumers of a group connected to one broker; none online is an empty answer."""
        try:
            resp = await self.client.invoke(addr, RequestCode.GET_CONSUMER_CONNECTION_LIST,
                                            {"consumerGroup": group})
        except ConsumerNotOnline:
            return ConsumerConnection(group, ())
        data = loads(resp.body)
        return ConsumerConnection(
            group=group,
            clients=tuple(_client(c) for c in data.get("connectionSet", [])),
            subscriptions=tuple(sorted(data.get("subscriptionTable", {}))),
            message_model=str(data.get("messageModel", "")),
            consume_type=str(data.get("consumeType", "")),
        )

    async def producer_connections(self, addr: str, producer_group: str) -> tuple[ClientConnection, ...]:
        try:
            resp = await self.client.invoke(addr, RequestCode.GET_PRODUCER_CONNECTION_LIST,
                                            {"producerGroup": producer_group})
        except ServerError as exc:
            if "not exist" in (exc.remark or ""):  # a group with no producer: "the producer group[...] not exist"
                return ()
            raise
        return tuple(_client(c) for c in loads(resp.body).get("connectionSet", []))

    async def online_clients(self, addrs: Iterable[str], role: str, group: str) -> frozenset[str]:
        """Client ids of one group's consumers or producers connected to any of ``addrs``, each once."""
        addrs = list(addrs)
        if role == "consumer":
            answers = await self.gather(self.consumer_connection(addr, group) for addr in addrs)
            return frozenset(c.client_id for a in answers for c in a.clients)
        answers = await self.gather(self.producer_connections(addr, group) for addr in addrs)
        return frozenset(c.client_id for a in answers for c in a)

    async def topic_readers(self, addr: str, topic: str) -> frozenset[str]:
        """Groups one broker knows to read a topic: online subscriptions and committed offsets."""
        try:
            resp = await self.client.invoke(addr, RequestCode.QUERY_TOPIC_CONSUME_BY_WHO, {"topic": topic})
        except TopicNotExist:
            return frozenset()
        return frozenset(loads(resp.body).get("groupList") or ())

    async def all_producers(self, addr: str) -> dict[str, tuple[ClientConnection, ...]]:
        """Every producer group with live producers on one broker."""
        resp = await self.client.invoke(addr, RequestCode.GET_ALL_PRODUCER_INFO)
        data = loads(resp.body).get("data") or {}
        return {group: tuple(ClientConnection(c.get("clientId", ""), str(c.get("remoteIP", "")).lstrip("/"),
                                              str(c.get("language", "")), int(c.get("version", 0)))
                             for c in clients)
                for group, clients in data.items()}

    # --- offsets and consume progress ------------------------------------------------------

    async def consume_stats(self, addr: str, group: str, topic: str | None = None) -> list[QueueOffsets]:
        """A group's progress on every queue one broker holds for it (its retry topic included)."""
        resp = await self.client.invoke(addr, RequestCode.GET_CONSUME_STATS,
                                        {"consumerGroup": group, "topic": topic})
        return _consume_stats(resp.body)

    async def all_consumer_offsets(self, addr: str) -> dict[tuple[str, str], dict[int, int]]:
        """(topic, group) -> queue id -> committed offset, for everything one broker holds."""
        resp = await self.client.invoke(addr, RequestCode.GET_ALL_CONSUMER_OFFSET, timeout=60)
        return _consumer_offset_table(resp.body)

    async def delay_offsets(self, addr: str) -> dict[int, int]:
        """Delay level -> how far the broker's scheduler has delivered SCHEDULE_TOPIC_XXXX."""
        resp = await self.client.invoke(addr, RequestCode.GET_ALL_DELAY_OFFSET)
        table = loads(resp.body).get("offsetTable") or {}
        return {int(level): int(offset) for level, offset in table.items()}

    async def query_consumer_offset(self, addr: str, group: str, topic: str, queue_id: int) -> int | None:
        """The committed offset, or None when the group has none for the queue."""
        try:
            resp = await self.client.invoke(addr, RequestCode.QUERY_CONSUMER_OFFSET,
                                            {"consumerGroup": group, "topic": topic, "queueId": queue_id,
                                             "setZeroIfNotFound": "false"})
        except QueryNotFound:
            return None
        return int(resp.ext_fields["offset"])

    async def update_consumer_offset(self, addr: str, group: str, topic: str, queue_id: int,
                                     offset: int) -> None:
        await self.client.invoke(addr, RequestCode.UPDATE_CONSUMER_OFFSET,
                                 {"consumerGroup": group, "topic": topic, "queueId": queue_id,
                                  "commitOffset": offset})

    async def update_consumer_offsets(self, addr: str, group: str, topic: str, offsets: dict[int, int]) -> None:
        """Commit several queues of one (topic, group): the first alone, then the rest concurrently.

        A broker (4.9 and 5.x ConsumerOffsetManager.commitOffset) creates the offset map of a
        (topic, group) it has no offset for with get / new map / put and no lock, so concurrent
        first commits replace each other's maps and some are silently lost (seen: 3 of 8,000 queues on 5.5.0).
        """
        items = sorted(offsets.items())
        if not items:
            return
        await self.update_consumer_offset(addr, group, topic, *items[0])
        await self.gather(self.update_consumer_offset(addr, group, topic, q, o) for q, o in items[1:])



def _topic_landed(wanted: TopicConfig, have: TopicConfig | None) -> bool:
    return have is not None and (have.read_queues, have.write_queues, have.perm, have.order) == (
        wanted.read_queues, wanted.write_queues, wanted.perm, wanted.order) and all(
        have.attributes.get(k) == v for k, v in wanted.attributes.items())


def _client(data: dict) -> ClientConnection:
    return ClientConnection(client_id=str(data.get("clientId", "")), client_addr=str(data.get("clientAddr", "")),
                            language=str(data.get("language", "")), version=int(data.get("version", 0)))


_STATS_ENTRY = re.compile(
    rb'\{"brokerName":"([^"\\]*)","queueId":(\d+),"topic":"([^"\\]*)"\}'
    rb':\{"brokerOffset":(-?\d+),"consumerOffset":(-?\d+)(?:,"lastTimestamp":(-?\d+))?[,}]')


def _consume_stats(body: bytes) -> list[QueueOffsets]:
    """Every queue of a ConsumeStats body.

    Its offsetTable is keyed by whole MessageQueue objects, which only the slow tolerant parser
    reads; fastjson writes them in one fixed layout, read here by one regex and checked by count
    (one ``"queueId":`` per entry): a backlog of 10,000 groups reads tens of thousands of these.
    Anything else goes to the tolerant parser.
    """
    entries = [QueueOffsets(MessageQueue(t.decode(), b.decode(), int(q)), int(bo), int(co), int(ts or 0))
               for b, q, t, bo, co, ts in _STATS_ENTRY.findall(body)]
    if len(entries) == body.count(b'"queueId":'):
        return entries
    return [QueueOffsets(queue=MessageQueue.from_key(key), broker_offset=int(v.get("brokerOffset", 0)),
                         consumer_offset=int(v.get("consumerOffset", 0)), last_timestamp=int(v.get("lastTimestamp", 0)))
            for key, v in (loads(body).get("offsetTable") or {}).items()]


_OFFSET_TABLE_KEY = '"offsetTable":{'
_TOPIC_GROUP_ENTRY = re.compile(r'"([^"\\]*)":\{([^{}]*)\}')


def _consumer_offset_table(body: bytes) -> dict[tuple[str, str], dict[int, int]]:
    """(topic, group) -> queue id -> committed offset from GET_ALL_CONSUMER_OFFSET's ``offsetTable``.

    A broker with thousands of groups answers megabytes: fastjson's fixed layout is read with one
    regex per entry, and anything else falls back to the tolerant parser.
    """
    text = body.decode("utf-8")
    start = text.find(_OFFSET_TABLE_KEY)
    result: dict[tuple[str, str], dict[int, int]] = {}
    if start >= 0:
        pos = start + len(_OFFSET_TABLE_KEY)
        try:
            while True:
                match = _TOPIC_GROUP_ENTRY.match(text, pos)
                if match is None:
                    break
                topic, _, group = match.group(1).rpartition("@")
                queues = {}
                for pair in filter(None, match.group(2).split(",")):
                    queue_id, _, offset = pair.partition(":")
                    queues[int(queue_id.strip('"'))] = int(offset)
                result[(topic, group)] = queues
                pos = match.end()
                if text.startswith(",", pos):
                    pos += 1
                    continue
                break
            if text.startswith("}", pos):
                return result
        except ValueError:
            pass
    result = {}
    for key, queues in (loads(text).get("offsetTable") or {}).items():
        topic, _, group = key.rpartition("@")
        result[(topic, group)] = {int(q): int(o) for q, o in queues.items()}
    return result
