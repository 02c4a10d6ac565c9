"""One persistent TCP connection carrying many requests in flight, matched by opaque."""

from __future__ import annotations

import asyncio
import itertools
import logging

from rocketmq_core.errors import ConnectionFailed, ProtocolError, RequestTimeout
from rocketmq_core.remoting.codec import RemotingCommand, decode, encode, frame_length

log = logging.getLogger(__name__)

#: Frames up to this size are coalesced; a bigger one is written alone (see _write_alone).
COALESCE_LIMIT = 64 * 1024
#: Most bytes taken from the socket at once.
READ_CHUNK = 256 * 1024


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
        self._outbox: list[tuple[int, bytes]] = []
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
        frame = encode(cmd)  # refuses a frame RocketMQ would drop the connection for, before it is pending
        loop = asyncio.get_running_loop()
        future: asyncio.Future[RemotingCommand] = loop.create_future()
        self._pending[cmd.opaque] = future
        timer = None
        try:
            if len(frame) <= COALESCE_LIMIT:
                self._queue(cmd.opaque, frame)
            else:
                await self._write_alone(frame)
            # One timer per request, not a wait_for; it runs from when the frame is on its way
            timer = loop.call_later(timeout, self._expire, future, cmd.code, timeout)
            return await future
        finally:
            if timer is not None:
                timer.cancel()
            self._pending.pop(cmd.opaque, None)
            if future.done() and not future.cancelled():
                future.exception()  # a failed send raised already; mark the future's copy as seen

    def _expire(self, future: asyncio.Future[RemotingCommand], code: int, timeout: float) -> None:
        if not future.done():
            future.set_exception(RequestTimeout(self.addr, code, timeout))

    def _queue(self, opaque: int, frame: bytes) -> None:
        """Small frames queued in one turn of the loop leave in one write: many requests in
        flight cost one send, not one each."""
        self._outbox.append((opaque, frame))
        if len(self._outbox) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, []
        frames = [frame for opaque, frame in outbox if opaque in self._pending]  # given up before its turn: not sent
        if not frames:
            return
        transport = self._writer.transport
        if not transport.is_closing():
            try:
                self._writer.write(b"".join(frames))
            except (OSError, RuntimeError) as exc:
                self._fail_all(str(exc) or type(exc).__name__, unsent=outbox)
                return
        if transport.is_closing():
            # A frame is processed only when it arrives whole, so a failed write was never handled.
            self._fail_all("connection closed before the request was written", unsent=outbox)

    async def _write_alone(self, frame: bytes) -> None:
        """A big frame (a batch of messages) is written by itself and waited out, so the socket's
        buffer stays small and the request's timeout counts from when it left, not while it queued."""
        try:
            async with self._write_lock:
                self._writer.write(frame)
                await self._writer.drain()
        except (OSError, RuntimeError) as exc:
            reason = str(exc) or type(exc).__name__
            self._fail_all(reason)
            raise NotSent(self.addr, reason) from exc

    async def _read_loop(self) -> None:
        """Read what the socket has, answer every whole frame in it, keep the rest: one read
        serves many responses when many requests are in flight."""
        reason = "closed by peer"
        buffer = bytearray()
        try:
            while chunk := await self._reader.read(READ_CHUNK):
                buffer += chunk
                start = 0
                while len(buffer) - start >= 4:
                    end = start + 4 + frame_length(buffer[start:start + 4])
                    if end > len(buffer):
                        break
                    self._answer(decode(buffer[start + 4:end]))
                    start = end
                del buffer[:start]
        except (OSError, ProtocolError) as exc:
            reason = str(exc) or type(exc).__name__
        except asyncio.CancelledError:
            reason = "connection closed"
        finally:
            self._fail_all(reason)

    def _answer(self, cmd: RemotingCommand) -> None:
        if not cmd.is_response:
            log.debug("ignoring server request code %s from %s", cmd.code, self.addr)
            return
        future = self._pending.get(cmd.opaque)
        if future is not None and not future.done():
            future.set_result(cmd)

    def _fail_all(self, reason: str, unsent: list[tuple[int, bytes]] | None = None) -> None:
        """Close for good. Requests whose frames never left (``unsent``, and what still waits in
        the outbox) fail with NotSent, so the client may send them again; the others with
        ConnectionFailed: they may have reached the server."""
        for opaque, _ in [*(unsent or ()), *self._outbox]:
            future = self._pending.get(opaque)
            if future is not None and not future.done():
                future.set_exception(NotSent(self.addr, reason))
        self._outbox = []
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
