"""Cluster admin API over a name server list and optional ACL credentials.

Async because one broker answers thousands of requests in flight on one connection; callers
without a loop (operators, the CLI) wrap a call in ``asyncio.run``.
"""

from __future__ import annotations

from dataclasses import dataclass

from rocketmq_core.errors import ConnectionFailed, RequestTimeout, RocketMQError
from rocketmq_core.remoting.client import Credentials, RemotingClient
from rocketmq_core.remoting.codec import RemotingCommand
from rocketmq_core.remoting.fastjson import loads
from rocketmq_core.remoting.protocol import RequestCode

MASTER_ID = 0


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
                 timeout: float = 5.0, connect_timeout: float = 3.0):
        if isinstance(namesrv_addrs, str):
            namesrv_addrs = [a.strip() for a in namesrv_addrs.replace(",", ";").split(";") if a.strip()]
        if not namesrv_addrs:
            raise RocketMQError("no name server address given")
        self.namesrv_addrs = list(namesrv_addrs)
        self.client = RemotingClient(credentials, timeout=timeout, connect_timeout=connect_timeout)

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
        """Every broker the name servers know, with its cluster and addresses by broker id."""
        data = loads((await self.namesrv_invoke(RequestCode.GET_BROKER_CLUSTER_INFO)).body)
        return [
            BrokerInfo(name=name, cluster=entry.get("cluster", ""),
                       addrs={int(k): v for k, v in (entry.get("brokerAddrs") or {}).items()})
            for name, entry in sorted((data.get("brokerAddrTable") or {}).items())
        ]

    async def broker_runtime_info(self, addr: str) -> dict[str, str]:
        resp = await self.client.invoke(addr, RequestCode.GET_BROKER_RUNTIME_INFO)
        return dict(loads(resp.body).get("table", {}))
