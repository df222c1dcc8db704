"""One error tree for the whole project.

Every error the wire protocol can carry has a class here, named exactly as its
``error.code``; the server raises them from the engine and the session turns
them into NACKs, the clients turn NACKs back into them (``error_from_wire``).
"""

from __future__ import annotations

from typing import Any


class ShardqError(Exception):
    """Root of every shardq error."""


class ConfigError(ShardqError):
    """A configuration value is missing, ill-typed or out of range."""


class TLSError(ShardqError):
    """A TLS connection could not be set up: an untrusted or expired server certificate, a
    client certificate the server refused or did not get, a peer that does not speak TLS.
    Retrying cannot fix it; the message says what to change."""


class ProtocolViolation(ShardqError):
    """The peer broke the framing rules; the connection cannot continue."""


class WireError(ShardqError):
    """An error that travels in a NACK; ``code`` is its wire name."""

    code = "Internal"
    closes_connection = False

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.extra}


class BadRequest(WireError):
    """A header field is missing, ill-typed or out of range."""

    code = "BadRequest"


class TooLarge(WireError):
    """A payload, result or answer exceeds its size limit."""

    code = "TooLarge"


class QueueFull(WireError):
    """Accepting the batch would take the broker over its depth threshold."""

    code = "QueueFull"

    def __init__(self, message: str, retry_after_ms: int) -> None:
        super().__init__(message, retry_after_ms=retry_after_ms)
        self.retry_after_ms = retry_after_ms


class NotFound(WireError):
    """No task has that id."""

    code = "NotFound"


class InvalidState(WireError):
    """The task is not in a state that allows the operation."""

    code = "InvalidState"


class LeaseLost(WireError):
    """The worker no longer holds the lease with that attempt."""

    code = "LeaseLost"


class Unauthorized(WireError):
    """Auth is on and the connection has not sent a valid HELLO."""

    code = "Unauthorized"
    closes_connection = True


class Forbidden(WireError):
    """The API key lacks the permission for this message."""

    code = "Forbidden"


class Unavailable(WireError):
    """The owning shard is restarting, or the server is at its connection limit."""

    code = "Unavailable"


class Internal(WireError):
    """A bug in the server; it is logged there."""

    code = "Internal"


class ProtocolError(WireError):
    """A framing error; the server closes the connection after the NACK."""

    code = "Protocol"
    closes_connection = True


WIRE_ERRORS: dict[str, type[WireError]] = {
    cls.code: cls
    for cls in (BadRequest, TooLarge, QueueFull, NotFound, InvalidState, LeaseLost,
                Unauthorized, Forbidden, Unavailable, Internal, ProtocolError)
}


def error_from_wire(error: dict[str, Any]) -> WireError:
    """Turn a NACK's ``error`` object back into the matching exception."""
    code = error.get("code", "Internal")
    message = str(error.get("message", ""))
    cls = WIRE_ERRORS.get(code, Internal)
    if cls is QueueFull:
        return QueueFull(message, retry_after_ms=int(error.get("retry_after_ms", 0)))
    extra = {k: v for k, v in error.items() if k not in ("code", "message")}
    err = cls(message, **extra)
    return err
