"""What a request asks of the engine, once validated: the typed arguments of SUBMIT and RESULT.

Rule: ``protocol/requests.py`` builds these from a header and a blob, the engine takes them; they
live here so that neither of the two imports the other. Plain data, no checks: every range was
checked by the protocol layer before one of these exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
    options: TaskOptions | None = None  # expiry, unique key (taskopts); None for most tasks


@dataclass(slots=True)
class TaskOptions:
    """The optional SUBMIT fields of expiry and unique tasks (docs/protocol.md, "Task options"),
    validated by protocol/task_options.py. ``expires_at_ms`` is absolute (a ``ttl_ms`` was made
    absolute when the SUBMIT arrived)."""

    expires_at_ms: int | None = None
    unique_key: str | None = None
    unique_window_ms: int = 0

    def extras(self) -> dict[str, Any]:
        """What the task record keeps of them (task.py EXTRA_KEYS)."""
        out: dict[str, Any] = {}
        if self.expires_at_ms is not None:
            out["expires_at_ms"] = self.expires_at_ms
        if self.unique_key is not None:
            out["unique_key"] = self.unique_key
            if self.unique_window_ms:
                out["unique_window_ms"] = self.unique_window_ms
        return out


@dataclass(slots=True)
class ResultItem:
    """One item of a RESULT: the outcome of one leased attempt."""

    id: bytes
    attempt: int
    status: str  # completed | failed | released
    result: bytes = b""
    error: str | None = None
    retry: bool = True
