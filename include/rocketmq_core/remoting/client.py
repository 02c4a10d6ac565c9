"""Remoting client: connections per address, reconnect, ACL signing, typed failures."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from dataclasses import dataclass

from rocketmq_core.errors import response_error
from rocketmq_core.remoting.codec import RemotingCommand
from rocketmq_core.remoting.connection import Connection, NotSent
from rocketmq_core.remoting.protocol import ResponseCode

@dataclass(frozen=True)
class Credentials:
    """An access key pair; repr hides the secret so it never lands in a log."""

    access_key: str
    secret_key: str

    def __repr__(self) -> str:
        return f"Credentials(access_key={self.access_key!r}, secret_key='***')"

    def sign(self, ext_fields: dict[str, str], body: bytes) -> None:
        """Add AccessKey and Signature the way RocketMQ's AclClientRPCHook does."""
        ext_fields["AccessKey"] = self.access_key
        ext_fields.pop("Signature", None)
        content = "".join(ext_fields[k] for k in sorted(ext_fields)).encode() + body
        digest = hmac.new(self.secret_key.encode(), content, hashlib.sha1).digest()
        ext_fields["Signature"] = base64.b64encode(digest).decode()


class RemotingClient:
    """Sends requests to name servers and brokers, one persistent connection per address."""

    def __init__(self, credentials: Credentials | None = None, timeout: float = 5.0,
                 connect_timeout: float = 3.0):
        self.credentials = credentials
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._connections: dict[str, Connection] = {}
        self._opening: dict[str, asyncio.Lock] = {}

    async def _connection(self, addr: str) -> Connection:
        lock = self._opening.setdefault(addr, asyncio.Lock())
        async with lock:
            conn = self._connections.get(addr)
            if conn is None or conn.closed:
                conn = await Connection.open(addr, self.connect_timeout)
                self._connections[addr] = conn
            return conn

    async def invoke(self, addr: str, code: int, ext_fields: dict[str, object] | None = None,
                     body: bytes = b"", timeout: float | None = None,
                     accept: tuple[int, ...] = (ResponseCode.SUCCESS,),
                     language: str = "PYTHON") -> RemotingCommand:
        """Send a request and return the response; raise unless its code is in ``accept``.

        ``language`` is the LanguageCode the request announces; servers change a few answers by it.
        """
        fields = {k: str(v) for k, v in (ext_fields or {}).items() if v is not None}
        if self.credentials is not None:
            self.credentials.sign(fields, body)
        def command() -> RemotingCommand:
            return RemotingCommand(code=code, ext_fields=fields, body=body, language=language)

        conn = self._connections.get(addr)
        if conn is None or conn.closed:
            conn = await self._connection(addr)
        try:
            response = await conn.request(command(), timeout or self.timeout)
        except NotSent:
            # The connection died under us (a dropped socket, a restarted server) before the
            # request left: it never reached the server, so one try on a new connection is safe.
            response = await (await self._connection(addr)).request(command(), timeout or self.timeout)
        if response.code not in accept:
            raise response_error(addr, code, response.code, response.remark)
        return response

    async def close(self) -> None:
        conns, self._connections = list(self._connections.values()), {}
        for conn in conns:
            await conn.close()

    async def __aenter__(self) -> "RemotingClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
