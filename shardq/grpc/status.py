"""shardq's errors as gRPC statuses: one table, and the details a typed client can read.

Every status carries a ``google.rpc.ErrorInfo`` detail (domain ``shardq.dev``, reason: the
protocol's error code, e.g. ``LeaseLost``), so a client can tell errors apart that share a gRPC
code. QueueFull adds ``google.rpc.RetryInfo`` (when to try again); BadRequest adds
``google.rpc.BadRequest`` naming the field (the message starts with it too:
``tasks[0].priority: ...``).
"""

from __future__ import annotations

import re
from typing import NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from shardq.errors import WireError

DOMAIN = "shardq.dev"

# Protocol error code -> gRPC status code (docs/grpc.md "Errors"). A code missing here (an error
# a later feature adds) is UNKNOWN, with the code in its ErrorInfo.
CODES = {
    "BadRequest": grpc.StatusCode.INVALID_ARGUMENT,
    "TooLarge": grpc.StatusCode.INVALID_ARGUMENT,
    "QueueFull": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "NotFound": grpc.StatusCode.NOT_FOUND,
    "InvalidState": grpc.StatusCode.FAILED_PRECONDITION,
    "LeaseLost": grpc.StatusCode.ABORTED,
    "Unauthorized": grpc.StatusCode.UNAUTHENTICATED,
    "Forbidden": grpc.StatusCode.PERMISSION_DENIED,
    "Unavailable": grpc.StatusCode.UNAVAILABLE,
    "Internal": grpc.StatusCode.INTERNAL,
    "Protocol": grpc.StatusCode.INTERNAL,
}

# The field a BadRequest message names: "tasks[2].priority: must be ..." -> "tasks[2].priority".
_FIELD = re.compile(r"^([A-Za-z_][\w.\[\]]*):\s")


def _packed(message: object) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(message)  # type: ignore[arg-type]
    return out


def status_of(code: str, message: str, retry_after_ms: int | None = None) -> grpc.Status:
    """The gRPC status for a protocol error ``code`` with its ``message``."""
    grpc_code = CODES.get(code, grpc.StatusCode.UNKNOWN)
    details = [_packed(error_details_pb2.ErrorInfo(reason=code, domain=DOMAIN))]
    if retry_after_ms is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(max(0, int(retry_after_ms)))
        details.append(_packed(error_details_pb2.RetryInfo(retry_delay=delay)))
    field = _FIELD.match(message) if grpc_code is grpc.StatusCode.INVALID_ARGUMENT else None
    if field is not None:
        violation = error_details_pb2.BadRequest.FieldViolation(field=field.group(1), description=message)
        details.append(_packed(error_details_pb2.BadRequest(field_violations=[violation])))
    return rpc_status.to_status(status_pb2.Status(
        code=getattr(code_pb2, grpc_code.name), message=message, details=details))


def status_of_error(err: WireError) -> grpc.Status:
    retry = getattr(err, "retry_after_ms", None)
    return status_of(err.code, err.message, retry if isinstance(retry, int) else None)


async def abort(context: grpc.aio.ServicerContext, status: grpc.Status) -> NoReturn:
    await context.abort(status.code, status.details, trailing_metadata=status.trailing_metadata)
    raise AssertionError("abort returns only by raising")  # pragma: no cover


def bad_argument(field: str, what: str) -> grpc.Status:
    """INVALID_ARGUMENT for a request field the gateway checks itself."""
    return status_of("BadRequest", f"{field}: {what}")


__all__ = ["CODES", "DOMAIN", "abort", "bad_argument", "status_of", "status_of_error"]
