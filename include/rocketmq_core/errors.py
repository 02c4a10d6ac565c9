"""Typed failures of the RocketMQ core.

Every failure that reaches a caller names what was asked, of whom, and what RocketMQ said:
an on-call engineer reads these in task logs, so "error" alone is never enough. A broker's
answer becomes one class per response code that matters (``response_error``), chosen by the
code; each class says whether trying again later can help (``retriable``).
"""

from __future__ import annotations

from typing import ClassVar


class RocketMQError(Exception):
    """Base of every error raised by the core."""

    #: Whether the same request may succeed later unchanged (a busy or restarting server).
    retriable: ClassVar[bool] = False


class ProtocolError(RocketMQError):
    """A frame or body that does not follow the remoting protocol."""


class ConnectionFailed(RocketMQError):
    """An address could not be reached, or the connection broke while a request was in flight."""

    retriable = True

    def __init__(self, addr: str, reason: str):
        super().__init__(f"cannot talk to {addr}: {reason}")
        self.addr = addr
        self.reason = reason


class RequestTimeout(RocketMQError):
    """No answer within the request's deadline."""

    retriable = True

    def __init__(self, addr: str, code: int, timeout: float):
        super().__init__(f"request code {code} to {addr} got no answer within {timeout:g}s")
        self.addr = addr
        self.code = code
        self.timeout = timeout


class ResponseError(RocketMQError):
    """The server answered with a non-success response code (``errno``, for the subclasses)."""

    errno: ClassVar[int | None] = None

    def __init__(self, addr: str, request_code: int, response_code: int, remark: str | None):
        super().__init__(
            f"{addr} rejected request code {request_code}: response code {response_code}"
            f" ({remark or 'no remark'})"
        )
        self.addr = addr
        self.request_code = request_code
        self.response_code = response_code
        self.remark = remark


class ServerError(ResponseError):
    """SYSTEM_ERROR: the server failed the request; its remark says why."""

    errno = 1


class SystemBusy(ResponseError):
    """SYSTEM_BUSY: the broker sheds load (a full page cache, a long write queue)."""

    errno = 2
    retriable = True


class RequestCodeNotSupported(ResponseError):
    """REQUEST_CODE_NOT_SUPPORTED: this server's version does not know the request."""

    errno = 3


class ServiceNotAvailable(ResponseError):
    """SERVICE_NOT_AVAILABLE: the broker is starting, shutting down, or a slave asked to write."""

    errno = 14
    retriable = True


class AccessDenied(ResponseError):
    """NO_PERMISSION, or an ACL engine's refusal: wrong or missing credentials, or an account
    without the needed permission."""

    errno = 16


class NotFound(ResponseError):
    """The topic, group or other object the request names does not exist."""


class TopicNotExist(NotFound):
    errno = 17


class QueryNotFound(ResponseError):
    """QUERY_NOT_FOUND: nothing matched a query (a message id, a key, an ordered-topic table)."""

    errno = 22


class SubscriptionNotExist(NotFound):
    errno = 24


class SubscriptionGroupNotExist(NotFound):
    errno = 26


class InvalidParameter(ResponseError):
    errno = 29


class ConsumerNotOnline(ResponseError):
    """CONSUMER_NOT_ONLINE: the group has no consumer connected to this broker."""

    errno = 206


#: response code -> the class a broker's answer with that code becomes
RESPONSE_ERRORS: dict[int, type[ResponseError]] = {
    cls.errno: cls for cls in (ServerError, SystemBusy, RequestCodeNotSupported, ServiceNotAvailable, AccessDenied,
                               TopicNotExist, QueryNotFound, SubscriptionNotExist, SubscriptionGroupNotExist,
                               InvalidParameter, ConsumerNotOnline) if cls.errno is not None}

# Wrong credentials come back as SYSTEM_ERROR (or another code) with the ACL engine's exception in
# the remark: the one case where the remark, not the code, decides the class.
_ACCESS_DENIED_REMARKS = ("AclException", "AuthenticationException", "AuthorizationException",
                          "check signature failed", "No accessKey", "is not exist")


def response_error(addr: str, request_code: int, response_code: int, remark: str | None) -> ResponseError:
    """The typed error of a broker's or name server's non-success answer."""
    if any(m in (remark or "") for m in _ACCESS_DENIED_REMARKS):
        return AccessDenied(addr, request_code, response_code, remark)
    return RESPONSE_ERRORS.get(response_code, ResponseError)(addr, request_code, response_code, remark)


class InvalidSpec(RocketMQError):
    """Input rejected before anything is sent: a bad name, a bad value, a bad task spec."""


class BrokerUnavailable(RocketMQError):
    """A broker whose figures a question needs is not there: no master registered for its name,
    or a broker the caller expected (the run's broker set) missing from the name server. What it
    held is unknown, never zero."""
