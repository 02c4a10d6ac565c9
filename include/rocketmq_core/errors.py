"""Typed failures of the RocketMQ core.

Every failure that reaches a caller names what was asked, of whom, and what RocketMQ said:
an on-call engineer reads these in task logs, so "error" alone is never enough.
"""

from __future__ import annotations


class RocketMQError(Exception):
    """Base of every error raised by the core."""


class ProtocolError(RocketMQError):
    """A frame or body that does not follow the remoting protocol."""


class ConnectionFailed(RocketMQError):
    """An address could not be reached, or the connection broke while a request was in flight."""

    def __init__(self, addr: str, reason: str):
        super().__init__(f"cannot talk to {addr}: {reason}")
        self.addr = addr
        self.reason = reason


class RequestTimeout(RocketMQError):
    """No answer within the request's deadline."""

    def __init__(self, addr: str, code: int, timeout: float):
        super().__init__(f"request code {code} to {addr} got no answer within {timeout:g}s")
        self.addr = addr
        self.code = code
        self.timeout = timeout


class ResponseError(RocketMQError):
    """The server answered with a non-success response code."""

    def __init__(self, addr: str, request_code: int, response_code: int, remark: str | None):
        super().__init__(
            f"{addr} rejected request code {request_code}: response code {response_code}"
            f" ({remark or 'no remark'})"
        )
        self.addr = addr
        self.request_code = request_code
        self.response_code = response_code
        self.remark = remark


class AccessDenied(ResponseError):
    """Wrong or missing credentials, or an account without the needed permission."""


class NotFound(ResponseError):
    """The topic, group or other object the request names does not exist."""


class InvalidSpec(RocketMQError):
    """Input rejected before anything is sent: a bad name, a bad value, a bad task spec."""


class BrokerUnavailable(RocketMQError):
    """A broker whose figures a question needs is not there: no master registered for its name,
    or a broker the caller expected (the run's broker set) missing from the name server. What it
    held is unknown, never zero."""
