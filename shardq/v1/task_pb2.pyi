from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class TaskSpec(_message.Message):
    __slots__ = ("type", "payload", "priority", "delay_ms", "scheduled_ms", "depends_on", "max_retries", "timeout_seconds", "id", "expires_at_ms", "ttl_ms", "unique_key", "unique_window_ms")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_MS_FIELD_NUMBER: _ClassVar[int]
    DEPENDS_ON_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_KEY_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_WINDOW_MS_FIELD_NUMBER: _ClassVar[int]
    type: str
    payload: bytes
    priority: int
    delay_ms: int
    scheduled_ms: int
    depends_on: _containers.RepeatedScalarFieldContainer[str]
    max_retries: int
    timeout_seconds: int
    id: str
    expires_at_ms: int
    ttl_ms: int
    unique_key: str
    unique_window_ms: int
    def __init__(self, type: _Optional[str] = ..., payload: _Optional[bytes] = ..., priority: _Optional[int] = ..., delay_ms: _Optional[int] = ..., scheduled_ms: _Optional[int] = ..., depends_on: _Optional[_Iterable[str]] = ..., max_retries: _Optional[int] = ..., timeout_seconds: _Optional[int] = ..., id: _Optional[str] = ..., expires_at_ms: _Optional[int] = ..., ttl_ms: _Optional[int] = ..., unique_key: _Optional[str] = ..., unique_window_ms: _Optional[int] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("id", "type", "priority", "status", "created_ms", "updated_ms", "scheduled_ms", "max_retries", "retry_count", "timeout_seconds", "attempt", "worker_id", "lease_expires_ms", "depends_on", "error", "payload_len", "result_len", "shard", "payload", "result", "expires_at_ms", "unique_key")
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_MS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    RETRY_COUNT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_MS_FIELD_NUMBER: _ClassVar[int]
    DEPENDS_ON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_LEN_FIELD_NUMBER: _ClassVar[int]
    RESULT_LEN_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_KEY_FIELD_NUMBER: _ClassVar[int]
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
    worker_id: str
    lease_expires_ms: int
    depends_on: _containers.RepeatedScalarFieldContainer[str]
    error: str
    payload_len: int
    result_len: int
    shard: int
    payload: bytes
    result: bytes
    expires_at_ms: int
    unique_key: str
    def __init__(self, id: _Optional[str] = ..., type: _Optional[str] = ..., priority: _Optional[int] = ..., status: _Optional[str] = ..., created_ms: _Optional[int] = ..., updated_ms: _Optional[int] = ..., scheduled_ms: _Optional[int] = ..., max_retries: _Optional[int] = ..., retry_count: _Optional[int] = ..., timeout_seconds: _Optional[int] = ..., attempt: _Optional[int] = ..., worker_id: _Optional[str] = ..., lease_expires_ms: _Optional[int] = ..., depends_on: _Optional[_Iterable[str]] = ..., error: _Optional[str] = ..., payload_len: _Optional[int] = ..., result_len: _Optional[int] = ..., shard: _Optional[int] = ..., payload: _Optional[bytes] = ..., result: _Optional[bytes] = ..., expires_at_ms: _Optional[int] = ..., unique_key: _Optional[str] = ...) -> None: ...
