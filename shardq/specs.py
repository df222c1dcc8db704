"""What a request asks of the engine, once validated: the typed arguments of SUBMIT and RESULT.

Rule: ``protocol/requests.py`` builds these from a header and a blob, the engine takes them; they
live here so that neither of the two imports the other. Plain data, no checks: every range was
checked by the protocol layer before one of these exists.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class TaskSpec:
    """One task of a SUBMIT, validated by protocol.requests."""

    type: str
    payload: bytes
    priority: int | None = None
    delay_ms: int | None = None
    scheduled_ms: int | None = None
    max_retries: int | None = None
    timeout_seconds: int | None = None
    depends_on: tuple[bytes, ...] = ()
    id: bytes | None = None


@dataclass(slots=True)
class ResultItem:
    """One item of a RESULT: the outcome of one leased attempt."""

    id: bytes
    attempt: int
    status: str  # completed | failed | released
    result: bytes = b""
    error: str | None = None
    retry: bool = True
