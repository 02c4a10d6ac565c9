"""Cluster admin API over a name server list and optional ACL credentials.

Async because one broker answers thousands of requests in flight on one connection; callers
without a loop (operators, the CLI) wrap a call in ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import struct
from collections.abc import Awaitable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from rocketmq_core.errors import (
    BrokerUnavailable, ConnectionFailed, ConsumerNotOnline, ProtocolError, QueryNotFound, RequestCodeNotSupported,
    RequestTimeout, RocketMQError, ServerError, TopicNotExist,
)
from rocketmq_core.model import (
    ClientConnection, ConsumerConnection, GroupConfig, MessageQueue, QueueOffsets, TopicConfig,
    validate_group_name, validate_topic_name,
)
from rocketmq_core.remoting.client import Credentials, RemotingClient
from rocketmq_core.remoting.codec import RemotingCommand
from rocketmq_core.remoting.fastjson import loads
from rocketmq_core.remoting.protocol import RequestCode, ResponseCode

T = TypeVar("T")
#: Requests in flight per admin client; a broker answers these on one connection.
MAX_IN_FLIGHT = 256

MASTER_ID = 0
#: The name server's KV namespace of ordered topics: topic -> ``broker:queues;broker2:queues``.
ORDER_NAMESPACE = "ORDER_TOPIC_CONFIG"


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
        self._server_side_reset: dict[str, bool] = {}

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

    async def gather(self, jobs: Iterable[Awaitable[T]]) -> list[T]:
        """Run many requests concurrently, at most MAX_IN_FLIGHT at a time; the first failure raises."""
        gate = asyncio.Semaphore(MAX_IN_FLIGHT)

        async def _one(job: Awaitable[T]) -> T:
            async with gate:
                return await job

        return await gather_all(*(_one(j) for j in jobs))

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
        with gc_paused():
            table = loads(resp.body).get("topicConfigTable") or {}
            return {name: TopicConfig.from_wire(cfg) for name, cfg in table.items()}

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

    async def delete_topic(self, topic: str, cluster: str | None = None) -> None:
        """Delete on every master broker, then from every name server."""
        for broker in await self.masters(cluster):
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

    async def search_offset(self, addr: str, topic: str, queue_id: int, timestamp_ms: int) -> int:
        """The first offset whose store time is at or after the timestamp (the max offset if none is).

        5.x brokers answer exactly that. 4.9 brokers answer the message whose store time is
        *closest* (possibly the one before it, or the last message when the time is after them
        all), so the broker's answer is only where to start: the store times of the messages
        around it decide.
        """
        hint = await self._broker_search_offset(addr, topic, queue_id, timestamp_ms)
        low, high = await gather_all(self.min_offset(addr, topic, queue_id),
                                         self.max_offset(addr, topic, queue_id))
        offset = min(max(hint, low), high)
        while offset > low:  # back, while the message before is at or after the time
            start = max(low, offset - _SCAN)
            before = [o for o, t in await self._store_times(addr, topic, queue_id, start, offset - start)
                      if t < timestamp_ms and o < offset]
            if before:
                offset = max(before) + 1
                break
            offset = start
        while offset < high:  # forward, past messages stored before the time
            window = await self._store_times(addr, topic, queue_id, offset, _SCAN)
            if not window:
                break
            hit = next((o for o, t in window if t >= timestamp_ms), None)
            if hit is not None:
                return hit
            offset = window[-1][0] + 1
        return offset

    async def _broker_search_offset(self, addr: str, topic: str, queue_id: int, timestamp_ms: int) -> int:
        """The broker's own SEARCH_OFFSET_BY_TIMESTAMP answer, which 4.9 also uses to reset offsets."""
        resp = await self.client.invoke(addr, RequestCode.SEARCH_OFFSET_BY_TIMESTAMP,
                                        {"topic": topic, "queueId": queue_id, "timestamp": timestamp_ms})
        return int(resp.ext_fields["offset"])

    async def _store_times(self, addr: str, topic: str, queue_id: int, offset: int,
                           count: int) -> list[tuple[int, int]]:
        """(queue offset, store timestamp) of up to ``count`` messages from ``offset``, read by a
        pull that commits nothing."""
        resp = await self.client.invoke(addr, RequestCode.PULL_MESSAGE, {
            "consumerGroup": _TOOLS_GROUP, "topic": topic, "queueId": queue_id, "queueOffset": offset,
            "maxMsgNums": count, "sysFlag": _PULL_SUBSCRIPTION, "commitOffset": 0, "suspendTimeoutMillis": 0,
            "subscription": "*", "subVersion": 0, "expressionType": "TAG"},
            accept=(ResponseCode.SUCCESS, ResponseCode.PULL_NOT_FOUND, ResponseCode.PULL_RETRY_IMMEDIATELY,
                    ResponseCode.PULL_OFFSET_MOVED))
        return _store_times(resp.body) if resp.code == ResponseCode.SUCCESS else []

    async def _resets_on_server(self, addr: str) -> bool:
        """5.x brokers reset offsets themselves, exactly, for online and offline groups alike."""
        if addr not in self._server_side_reset:
            version = (await self.broker_runtime_info(addr)).get("brokerVersionDesc", "")
            major = version.lstrip("V").split("_")[0]
            self._server_side_reset[addr] = major.isdigit() and int(major) >= 5
        return self._server_side_reset[addr]

    # --- groups ----------------------------------------------------------------------------

    async def group_configs(self, addr: str) -> dict[str, GroupConfig]:
        resp = await self.client.invoke(addr, RequestCode.GET_ALL_SUBSCRIPTIONGROUP_CONFIG, timeout=30)
        with gc_paused():
            table = loads(resp.body).get("subscriptionGroupTable") or {}
            return {name: GroupConfig.from_wire(cfg) for name, cfg in table.items()}

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
        return _offset_table(loads(resp.body))

    async def all_consumer_offsets(self, addr: str) -> dict[tuple[str, str], dict[int, int]]:
        """(topic, group) -> queue id -> committed offset, for everything one broker holds."""
        resp = await self.client.invoke(addr, RequestCode.GET_ALL_CONSUMER_OFFSET, timeout=30)
        result = {}
        for key, queues in (loads(resp.body).get("offsetTable") or {}).items():
            topic, _, group = key.rpartition("@")
            result[(topic, group)] = {int(q): int(o) for q, o in queues.items()}
        return result

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

    async def reset_offset_by_timestamp(self, group: str, topic: str, timestamp_ms: int,
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
        for broker in await self.masters(cluster):
            addr = broker.master
            header = {"topic": topic, "group": group, "timestamp": timestamp_ms, "isForce": "true"}
            if await self._resets_on_server(addr):
                resp = await self.client.invoke(addr, RequestCode.INVOKE_BROKER_TO_RESET_OFFSET, header, timeout=30)
                table = (loads(resp.body) if resp.body else {}).get("offsetTable") or {}
                result.update({MessageQueue.from_key(k): int(v) for k, v in table.items()})
                continue
            queues = sorted(await self.topic_offsets(addr, topic), key=lambda q: q.queue_id)
            exact = dict(zip(queues, await self.gather(
                self.search_offset(addr, topic, q.queue_id, timestamp_ms) for q in queues)))
            online = (await self.consumer_connection(addr, group)).clients
            if online:
                closest = dict(zip(queues, await self.gather(
                    self._broker_search_offset(addr, topic, q.queue_id, timestamp_ms) for q in queues)))
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
                    resp = await self.client.invoke(addr, RequestCode.INVOKE_BROKER_TO_RESET_OFFSET, header,
                                                    timeout=30, language=language)
                    table = (loads(resp.body) if resp.body else {}).get("offsetTable") or {}
                    result.update({MessageQueue.from_key(k): int(v) for k, v in table.items()})
                    continue
                except ConsumerNotOnline:
                    pass  # the group went offline meanwhile: write the offsets directly
            await self.update_consumer_offsets(addr, group, topic, {q.queue_id: o for q, o in exact.items()})
            result.update(exact)
        return result


_SCAN = 32
_TOOLS_GROUP = "TOOLS_CONSUMER"  # a group every broker has; pulls that commit nothing use it
_PULL_SUBSCRIPTION = 1 << 2      # PullSysFlag: the subscription travels with the pull
_BORN_HOST_V6 = 1 << 4           # MessageSysFlag: 16-byte born host address


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


def _topic_landed(wanted: TopicConfig, have: TopicConfig | None) -> bool:
    return have is not None and (have.read_queues, have.write_queues, have.perm, have.order) == (
        wanted.read_queues, wanted.write_queues, wanted.perm, wanted.order) and all(
        have.attributes.get(k) == v for k, v in wanted.attributes.items())


def _client(data: dict) -> ClientConnection:
    return ClientConnection(client_id=str(data.get("clientId", "")), client_addr=str(data.get("clientAddr", "")),
                            language=str(data.get("language", "")), version=int(data.get("version", 0)))


def _offset_table(stats: dict) -> list[QueueOffsets]:
    return [
        QueueOffsets(queue=MessageQueue.from_key(key), broker_offset=int(v.get("brokerOffset", 0)),
                     consumer_offset=int(v.get("consumerOffset", 0)), last_timestamp=int(v.get("lastTimestamp", 0)))
        for key, v in (stats.get("offsetTable") or {}).items()
    ]
