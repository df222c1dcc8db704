"""Errors as HTTP answers: each WireError (errors.py) becomes an RFC 9457 problem.

Rule: one table says which status each wire error code gets; the problem's ``code`` is the TCP
protocol's, so a client handles an error the same way whatever the transport. The headers a
status needs (``Retry-After``, ``WWW-Authenticate``) are set here and nowhere else.
"""

from __future__ import annotations

import math
from http import HTTPStatus

import msgspec

from shardq.errors import Unavailable, WireError
from shardq.http.schema import Problem

PROBLEM_JSON = "application/problem+json"

# Wire error code -> HTTP status.
STATUS: dict[str, int] = {
    "BadRequest": 400, "Unauthorized": 401, "Forbidden": 403, "NotFound": 404,
    "InvalidState": 409, "LeaseLost": 409, "TooLarge": 413, "QueueFull": 429,
    "Internal": 500, "Unavailable": 503, "Protocol": 400,
}
# Statuses no wire error has, raised by the HTTP layer itself (no route, a method not allowed).
HTTP_ONLY = {404: "NotFound", 405: "BadRequest", 406: "BadRequest", 415: "BadRequest", 413: "TooLarge"}

_encode = msgspec.json.Encoder().encode


def problem(err: WireError, status: int | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of the answer that carries ``err``."""
    status = status or STATUS.get(err.code, 500)
    headers = {"Content-Type": PROBLEM_JSON}
    body = Problem(type="about:blank", title=HTTPStatus(status).phrase, status=status, code=err.code,
                   detail=err.message)
    retry_ms = err.extra.get("retry_after_ms")
    if type(retry_ms) is int and status in (429, 503):
        body.retry_after_ms = retry_ms
        headers["Retry-After"] = str(max(1, math.ceil(retry_ms / 1000)))
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="shardq"'
    not_ready = err.extra.get("not_ready")
    if isinstance(not_ready, list):
        body.not_ready = not_ready
    return status, headers, _encode(body)


def http_refusal(message: str) -> bytes:
    """The whole answer to an HTTP connection refused unread (the acceptor's, at max_connections)."""
    _, _, body = problem(Unavailable(message, retry_after_ms=1000))
    return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/problem+json\r\n"
            b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
