"""One persistent TCP connection carrying many requests in flight, matched by opaque."""

from __future__ import annotations

import asyncio
import itertools
import logging

from rocketmq_core.errors import ConnectionFailed, ProtocolError, RequestTimeout
from rocketmq_core.remoting.codec import ONEWAY_FLAG, RemotingCommand, decode, encode, frame_length

log = logging.getLogger(__name__)


class NotSent(ConnectionFailed):
    """The connection was gone before the request was written: it never reached the server,
    so it is safe to send it again on a new connection."""


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ConnectionFailed(addr, "address must be host:port")
    return host, int(port)


class Connection:
    """A remoting connection to one address.

    A background reader resolves each response's future by its opaque. When the socket
    breaks, every pending request fails with ConnectionFailed and the connection is closed
    for good; the client opens a new one on the next request.
    """

    def __init__(self, addr: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.addr = addr
        self._reader = reader
        self._writer = writer
        self._opaques = itertools.count(1)
        self._pending: dict[int, asyncio.Future[RemotingCommand]] = {}
        self._write_lock = asyncio.Lock()
        self._closed = False
        self._reader_task = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def open(cls, addr: str, timeout: float) -> "Connection":
        host, port = split_addr(addr)
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise ConnectionFailed(addr, str(exc) or type(exc).__name__) from exc
        return cls(addr, reader, writer)

    @property
    def closed(self) -> bool:
        return self._closed

    async def request(self, cmd: RemotingCommand, timeout: float) -> RemotingCommand:
        if self._closed:
            raise NotSent(self.addr, "connection closed")
        cmd.opaque = next(self._opaques)
        future: asyncio.Future[RemotingCommand] = asyncio.get_running_loop().create_future()
        self._pending[cmd.opaque] = future
        try:
            await self._send(cmd)
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError as exc:
            raise RequestTimeout(self.addr, cmd.code, timeout) from exc
        finally:
            self._pending.pop(cmd.opaque, None)
            if future.done() and not future.cancelled():
                future.exception()  # a failed send raised already; mark the future's copy as seen

    async def oneway(self, cmd: RemotingCommand) -> None:
        cmd.opaque = next(self._opaques)
        cmd.flag |= ONEWAY_FLAG
        await self._send(cmd)

    async def _send(self, cmd: RemotingCommand) -> None:
        data = encode(cmd)
        try:
            async with self._write_lock:
                self._writer.write(data)
                await self._writer.drain()
        except (OSError, RuntimeError) as exc:
            reason = str(exc) or type(exc).__name__
            self._fail_all(reason)
            # A frame is processed only when it arrives whole, so a failed write was never handled.
            raise NotSent(self.addr, reason) from exc

    async def _read_loop(self) -> None:
        reason = "closed by peer"
        try:
            while True:
                prefix = await self._reader.readexactly(4)
                frame = await self._reader.readexactly(frame_length(prefix))
                cmd = decode(frame)
                if not cmd.is_response:
                    log.debug("ignoring server request code %s from %s", cmd.code, self.addr)
                    continue
                future = self._pending.get(cmd.opaque)
                if future is not None and not future.done():
                    future.set_result(cmd)
        except asyncio.IncompleteReadError:
            pass
        except (OSError, ProtocolError) as exc:
            reason = str(exc) or type(exc).__name__
        except asyncio.CancelledError:
            reason = "connection closed"
        finally:
            self._fail_all(reason)

    def _fail_all(self, reason: str) -> None:
        if not self._closed:
            self._closed = True
            self._writer.close()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionFailed(self.addr, reason))
        self._pending.clear()

    async def close(self) -> None:
        self._reader_task.cancel()
        try:
            await self._reader_task
        except asyncio.CancelledError:
            pass
        self._fail_all("connection closed")
