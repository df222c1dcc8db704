from google.protobuf import struct_pb2 as _struct_pb2
from shardq.v1 import task_pb2 as _task_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskRef(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class HistoryEvent(_message.Message):
    __slots__ = ("event", "t_ms", "fields")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    T_MS_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    event: str
    t_ms: int
    fields: _struct_pb2.Struct
    def __init__(self, event: _Optional[str] = ..., t_ms: _Optional[int] = ..., fields: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class HistoryResponse(_message.Message):
    __slots__ = ("id", "type", "status", "events", "dropped", "dropped_after")
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_AFTER_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: str
    status: str
    events: _containers.RepeatedCompositeFieldContainer[HistoryEvent]
    dropped: int
    dropped_after: int
    def __init__(self, id: _Optional[str] = ..., type: _Optional[str] = ..., status: _Optional[str] = ..., events: _Optional[_Iterable[_Union[HistoryEvent, _Mapping]]] = ..., dropped: _Optional[int] = ..., dropped_after: _Optional[int] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("id", "type", "status", "shard", "reason", "message", "details")
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: str
    status: str
    shard: int
    reason: str
    message: str
    details: _struct_pb2.Struct
    def __init__(self, id: _Optional[str] = ..., type: _Optional[str] = ..., status: _Optional[str] = ..., shard: _Optional[int] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., details: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class DlqGroupsRequest(_message.Message):
    __slots__ = ("type",)
    TYPE_FIELD_NUMBER: _ClassVar[int]
    type: str
    def __init__(self, type: _Optional[str] = ...) -> None: ...

class DlqGroup(_message.Message):
    __slots__ = ("group", "type", "error", "example", "count", "first_ms", "last_ms", "sample")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    EXAMPLE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    FIRST_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_MS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    group: str
    type: str
    error: str
    example: str
    count: int
    first_ms: int
    last_ms: int
    sample: str
    def __init__(self, group: _Optional[str] = ..., type: _Optional[str] = ..., error: _Optional[str] = ..., example: _Optional[str] = ..., count: _Optional[int] = ..., first_ms: _Optional[int] = ..., last_ms: _Optional[int] = ..., sample: _Optional[str] = ...) -> None: ...

class DlqGroupsResponse(_message.Message):
    __slots__ = ("groups", "total")
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.RepeatedCompositeFieldContainer[DlqGroup]
    total: int
    def __init__(self, groups: _Optional[_Iterable[_Union[DlqGroup, _Mapping]]] = ..., total: _Optional[int] = ...) -> None: ...

class DeleteTasksRequest(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteResult(_message.Message):
    __slots__ = ("id", "deleted", "error_code", "error_message")
    ID_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    id: str
    deleted: bool
    error_code: str
    error_message: str
    def __init__(self, id: _Optional[str] = ..., deleted: _Optional[bool] = ..., error_code: _Optional[str] = ..., error_message: _Optional[str] = ...) -> None: ...

class DeleteTasksResponse(_message.Message):
    __slots__ = ("deleted", "results")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    results: _containers.RepeatedCompositeFieldContainer[DeleteResult]
    def __init__(self, deleted: _Optional[int] = ..., results: _Optional[_Iterable[_Union[DeleteResult, _Mapping]]] = ...) -> None: ...

class BulkRequest(_message.Message):
    __slots__ = ("action", "status", "group", "type", "error", "since_ms", "until_ms", "limit", "dry_run")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_MS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    action: str
    status: str
    group: str
    type: str
    error: str
    since_ms: int
    until_ms: int
    limit: int
    dry_run: bool
    def __init__(self, action: _Optional[str] = ..., status: _Optional[str] = ..., group: _Optional[str] = ..., type: _Optional[str] = ..., error: _Optional[str] = ..., since_ms: _Optional[int] = ..., until_ms: _Optional[int] = ..., limit: _Optional[int] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class BulkResponse(_message.Message):
    __slots__ = ("action", "dry_run", "count")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    action: str
    dry_run: bool
    count: int
    def __init__(self, action: _Optional[str] = ..., dry_run: _Optional[bool] = ..., count: _Optional[int] = ...) -> None: ...

class SearchTasksRequest(_message.Message):
    __slots__ = ("id_prefix", "type", "status", "min_priority", "max_priority", "created_from", "created_to", "updated_from", "updated_to", "error", "page_size", "cursor")
    ID_PREFIX_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MIN_PRIORITY_FIELD_NUMBER: _ClassVar[int]
    MAX_PRIORITY_FIELD_NUMBER: _ClassVar[int]
    CREATED_FROM_FIELD_NUMBER: _ClassVar[int]
    CREATED_TO_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FROM_FIELD_NUMBER: _ClassVar[int]
    UPDATED_TO_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    id_prefix: str
    type: str
    status: _containers.RepeatedScalarFieldContainer[str]
    min_priority: int
    max_priority: int
    created_from: int
    created_to: int
    updated_from: int
    updated_to: int
    error: str
    page_size: int
    cursor: str
    def __init__(self, id_prefix: _Optional[str] = ..., type: _Optional[str] = ..., status: _Optional[_Iterable[str]] = ..., min_priority: _Optional[int] = ..., max_priority: _Optional[int] = ..., created_from: _Optional[int] = ..., created_to: _Optional[int] = ..., updated_from: _Optional[int] = ..., updated_to: _Optional[int] = ..., error: _Optional[str] = ..., page_size: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class SearchTasksResponse(_message.Message):
    __slots__ = ("tasks", "next_cursor", "scanned")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    SCANNED_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[_task_pb2.Task]
    next_cursor: str
    scanned: int
    def __init__(self, tasks: _Optional[_Iterable[_Union[_task_pb2.Task, _Mapping]]] = ..., next_cursor: _Optional[str] = ..., scanned: _Optional[int] = ...) -> None: ...

class TypeStatsRequest(_message.Message):
    __slots__ = ("type",)
    TYPE_FIELD_NUMBER: _ClassVar[int]
    type: str
    def __init__(self, type: _Optional[str] = ...) -> None: ...

class Percentiles(_message.Message):
    __slots__ = ("p50", "p95", "p99", "count")
    P50_FIELD_NUMBER: _ClassVar[int]
    P95_FIELD_NUMBER: _ClassVar[int]
    P99_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    p50: float
    p95: float
    p99: float
    count: int
    def __init__(self, p50: _Optional[float] = ..., p95: _Optional[float] = ..., p99: _Optional[float] = ..., count: _Optional[int] = ...) -> None: ...

class TypeStat(_message.Message):
    __slots__ = ("type", "pending", "in_progress", "failed", "dead_letter", "completed_last_minute", "oldest_pending_age_s", "throughput_per_s", "run_time_s", "queue_wait_s")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    IN_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTER_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_LAST_MINUTE_FIELD_NUMBER: _ClassVar[int]
    OLDEST_PENDING_AGE_S_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_PER_S_FIELD_NUMBER: _ClassVar[int]
    RUN_TIME_S_FIELD_NUMBER: _ClassVar[int]
    QUEUE_WAIT_S_FIELD_NUMBER: _ClassVar[int]
    type: str
    pending: int
    in_progress: int
    failed: int
    dead_letter: int
    completed_last_minute: int
    oldest_pending_age_s: float
    throughput_per_s: float
    run_time_s: Percentiles
    queue_wait_s: Percentiles
    def __init__(self, type: _Optional[str] = ..., pending: _Optional[int] = ..., in_progress: _Optional[int] = ..., failed: _Optional[int] = ..., dead_letter: _Optional[int] = ..., completed_last_minute: _Optional[int] = ..., oldest_pending_age_s: _Optional[float] = ..., throughput_per_s: _Optional[float] = ..., run_time_s: _Optional[_Union[Percentiles, _Mapping]] = ..., queue_wait_s: _Optional[_Union[Percentiles, _Mapping]] = ...) -> None: ...

class TypeStatsResponse(_message.Message):
    __slots__ = ("types", "window_s")
    TYPES_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    types: _containers.RepeatedCompositeFieldContainer[TypeStat]
    window_s: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, types: _Optional[_Iterable[_Union[TypeStat, _Mapping]]] = ..., window_s: _Optional[_Iterable[int]] = ...) -> None: ...
