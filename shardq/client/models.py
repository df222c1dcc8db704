"""What the clients hand back: plain dataclasses over the protocol's task object."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from shardq.errors import ShardqError


class TaskFailed(ShardqError):
    """``wait`` found the task in dead_letter; ``task`` holds its last state and error."""

    def __init__(self, task: TaskInfo) -> None:
        super().__init__(f"task {task.id} is dead_letter: {task.error}")
        self.task = task


class TaskCancelled(ShardqError):
    """``wait`` found the task cancelled."""

    def __init__(self, task: TaskInfo) -> None:
        super().__init__(f"task {task.id} was cancelled")
        self.task = task


class WaitTimeout(ShardqError):
    """``wait`` gave up before the task finished."""


@dataclass(slots=True)
class TaskInfo:
    """A task as QUERY_STATUS / LIST_TASKS / CLAIM show it (+ its payload or result when asked)."""

    id: str
    type: str
    priority: int
    status: str
    created_ms: int
    updated_ms: int
    scheduled_ms: int
    max_retries: int
    retry_count: int
    timeout_seconds: int
    attempt: int
    worker_id: str | None = None
    lease_expires_ms: int | None = None
    depends_on: list[str] = field(default_factory=list)
    error: str | None = None
    payload_len: int = 0
    result_len: int | None = None
    shard: int = 0
    payload: bytes | None = None
    result: bytes | None = None
    # A CLAIM with dependency_results: the results it carried, and the dependencies it left out.
    dependency_results: dict[str, bytes] | None = None
    dependency_results_omitted: list[str] = field(default_factory=list)
    expires_at_ms: int | None = None  # task options, as submitted (protocol.md, "Task options")
    unique_key: str | None = None

    @classmethod
    def from_wire(cls, obj: dict[str, Any], payload: bytes | None = None,
                  result: bytes | None = None) -> TaskInfo:
        info = cls(obj["id"], obj["type"], obj["priority"], obj["status"], obj["created_ms"],
                   obj["updated_ms"], obj["scheduled_ms"], obj["max_retries"], obj["retry_count"],
                   obj["timeout_seconds"], obj["attempt"], obj.get("worker_id"),
                   obj.get("lease_expires_ms"), list(obj.get("depends_on") or ()), obj.get("error"),
                   obj.get("payload_len", 0), obj.get("result_len"), obj.get("shard", 0), payload, result)
        info.expires_at_ms = obj.get("expires_at_ms")
        info.unique_key = obj.get("unique_key")
        return info

    def json(self) -> Any:
        """The payload decoded as JSON."""
        return orjson.loads(self.payload or b"null")

    def result_json(self) -> Any:
        return orjson.loads(self.result or b"null")


@dataclass(slots=True)
class Job:
    """One task to submit; ``Client.submit_many`` takes a list of these."""

    type: str
    payload: bytes | str | dict[str, Any] | list[Any] | None = b""
    priority: int | None = None
    delay: float | None = None  # seconds from now
    at: datetime | float | None = None  # a datetime or epoch seconds
    depends_on: list[str] | None = None
    max_retries: int | None = None
    timeout: int | None = None  # timeout_seconds
    id: str | None = None
    ttl: float | None = None  # seconds: not started by then (from the server's receipt), not run
    expires_at: datetime | float | None = None  # the same as a datetime or epoch seconds
    unique_key: str | None = None  # one live task per (type, key): a duplicate gets its id
    unique_window: float | None = None  # seconds the key stays held after the task finished

    def encode(self, make_id: Callable[[], str] | None = None) -> tuple[dict[str, Any], bytes]:
        """The SUBMIT task object and its payload bytes. Every job gets a client id, so
        a SUBMIT can be retried after a lost connection without creating a second task.
        ``make_id`` makes that id (the client makes it in its shard's partition)."""
        payload = to_bytes(self.payload)
        spec: dict[str, Any] = {"type": self.type, "payload_len": len(payload),
                                "id": self.id or (make_id() if make_id is not None else str(uuid.uuid4()))}
        if self.priority is not None:
            spec["priority"] = self.priority
        if self.delay is not None and self.at is not None:
            raise ValueError("give delay or at, not both")
        if self.delay is not None:
            spec["delay_ms"] = max(0, int(self.delay * 1000))
        if self.at is not None:
            when = self.at.timestamp() if isinstance(self.at, datetime) else float(self.at)
            spec["scheduled_ms"] = max(0, int(when * 1000))
        if self.depends_on:
            spec["depends_on"] = list(self.depends_on)
        if self.max_retries is not None:
            spec["max_retries"] = self.max_retries
        if self.timeout is not None:
            spec["timeout_seconds"] = self.timeout
        if self.ttl is not None and self.expires_at is not None:
            raise ValueError("give ttl or expires_at, not both")
        if self.ttl is not None:
            spec["ttl_ms"] = max(1, int(self.ttl * 1000))
        if self.expires_at is not None:
            when = self.expires_at.timestamp() if isinstance(self.expires_at, datetime) else float(self.expires_at)
            spec["expires_at_ms"] = int(when * 1000)
        if self.unique_key is not None:
            spec["unique_key"] = self.unique_key
        if self.unique_window is not None:
            spec["unique_window_ms"] = int(self.unique_window * 1000)
        return spec, payload


def to_bytes(value: Any) -> bytes:
    """Payload helper: bytes pass through, str is UTF-8, anything else becomes JSON."""
    if value is None:
        return b""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    return orjson.dumps(value)

