from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PauseTypeRequest(_message.Message):
    __slots__ = ("type",)
    TYPE_FIELD_NUMBER: _ClassVar[int]
    type: str
    def __init__(self, type: _Optional[str] = ...) -> None: ...

class ResumeTypeRequest(_message.Message):
    __slots__ = ("type",)
    TYPE_FIELD_NUMBER: _ClassVar[int]
    type: str
    def __init__(self, type: _Optional[str] = ...) -> None: ...

class SetLimitsRequest(_message.Message):
    __slots__ = ("type", "max_concurrency", "rate", "burst", "clear_max_concurrency", "clear_rate", "clear_burst")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    BURST_FIELD_NUMBER: _ClassVar[int]
    CLEAR_MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    CLEAR_RATE_FIELD_NUMBER: _ClassVar[int]
    CLEAR_BURST_FIELD_NUMBER: _ClassVar[int]
    type: str
    max_concurrency: int
    rate: float
    burst: int
    clear_max_concurrency: bool
    clear_rate: bool
    clear_burst: bool
    def __init__(self, type: _Optional[str] = ..., max_concurrency: _Optional[int] = ..., rate: _Optional[float] = ..., burst: _Optional[int] = ..., clear_max_concurrency: _Optional[bool] = ..., clear_rate: _Optional[bool] = ..., clear_burst: _Optional[bool] = ...) -> None: ...

class TypeControl(_message.Message):
    __slots__ = ("type", "paused", "max_concurrency", "rate", "burst", "version", "updated_ms")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    BURST_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPDATED_MS_FIELD_NUMBER: _ClassVar[int]
    type: str
    paused: bool
    max_concurrency: int
    rate: float
    burst: int
    version: int
    updated_ms: int
    def __init__(self, type: _Optional[str] = ..., paused: _Optional[bool] = ..., max_concurrency: _Optional[int] = ..., rate: _Optional[float] = ..., burst: _Optional[int] = ..., version: _Optional[int] = ..., updated_ms: _Optional[int] = ...) -> None: ...

class ControlResponse(_message.Message):
    __slots__ = ("control", "not_reached")
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    NOT_REACHED_FIELD_NUMBER: _ClassVar[int]
    control: TypeControl
    not_reached: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, control: _Optional[_Union[TypeControl, _Mapping]] = ..., not_reached: _Optional[_Iterable[int]] = ...) -> None: ...

class GetControlsRequest(_message.Message):
    __slots__ = ("type",)
    TYPE_FIELD_NUMBER: _ClassVar[int]
    type: str
    def __init__(self, type: _Optional[str] = ...) -> None: ...

class ControlState(_message.Message):
    __slots__ = ("control", "running", "ready", "shards")
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    control: TypeControl
    running: int
    ready: int
    shards: _struct_pb2.Struct
    def __init__(self, control: _Optional[_Union[TypeControl, _Mapping]] = ..., running: _Optional[int] = ..., ready: _Optional[int] = ..., shards: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class GetControlsResponse(_message.Message):
    __slots__ = ("controls", "shards_down")
    CONTROLS_FIELD_NUMBER: _ClassVar[int]
    SHARDS_DOWN_FIELD_NUMBER: _ClassVar[int]
    controls: _containers.RepeatedCompositeFieldContainer[ControlState]
    shards_down: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, controls: _Optional[_Iterable[_Union[ControlState, _Mapping]]] = ..., shards_down: _Optional[_Iterable[int]] = ...) -> None: ...

class AddScheduleRequest(_message.Message):
    __slots__ = ("name", "type", "payload", "cron", "every_ms", "timezone", "priority", "max_retries", "timeout_seconds", "misfire", "misfire_grace_ms", "paused", "replace")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CRON_FIELD_NUMBER: _ClassVar[int]
    EVERY_MS_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MISFIRE_FIELD_NUMBER: _ClassVar[int]
    MISFIRE_GRACE_MS_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    payload: bytes
    cron: str
    every_ms: int
    timezone: str
    priority: int
    max_retries: int
    timeout_seconds: int
    misfire: str
    misfire_grace_ms: int
    paused: bool
    replace: bool
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., payload: _Optional[bytes] = ..., cron: _Optional[str] = ..., every_ms: _Optional[int] = ..., timezone: _Optional[str] = ..., priority: _Optional[int] = ..., max_retries: _Optional[int] = ..., timeout_seconds: _Optional[int] = ..., misfire: _Optional[str] = ..., misfire_grace_ms: _Optional[int] = ..., paused: _Optional[bool] = ..., replace: _Optional[bool] = ...) -> None: ...

class Schedule(_message.Message):
    __slots__ = ("name", "shard", "type", "cron", "every_ms", "timezone", "priority", "max_retries", "timeout_seconds", "misfire", "misfire_grace_ms", "payload_len", "paused", "created_ms", "updated_ms", "last_tick_ms", "last_fired_ms", "last_task_id", "fired", "misfires", "next_ms", "next_local", "next_utc", "payload")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CRON_FIELD_NUMBER: _ClassVar[int]
    EVERY_MS_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MISFIRE_FIELD_NUMBER: _ClassVar[int]
    MISFIRE_GRACE_MS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_LEN_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_TICK_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_FIRED_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    FIRED_FIELD_NUMBER: _ClassVar[int]
    MISFIRES_FIELD_NUMBER: _ClassVar[int]
    NEXT_MS_FIELD_NUMBER: _ClassVar[int]
    NEXT_LOCAL_FIELD_NUMBER: _ClassVar[int]
    NEXT_UTC_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    name: str
    shard: int
    type: str
    cron: str
    every_ms: int
    timezone: str
    priority: int
    max_retries: int
    timeout_seconds: int
    misfire: str
    misfire_grace_ms: int
    payload_len: int
    paused: bool
    created_ms: int
    updated_ms: int
    last_tick_ms: int
    last_fired_ms: int
    last_task_id: str
    fired: int
    misfires: int
    next_ms: int
    next_local: str
    next_utc: str
    payload: bytes
    def __init__(self, name: _Optional[str] = ..., shard: _Optional[int] = ..., type: _Optional[str] = ..., cron: _Optional[str] = ..., every_ms: _Optional[int] = ..., timezone: _Optional[str] = ..., priority: _Optional[int] = ..., max_retries: _Optional[int] = ..., timeout_seconds: _Optional[int] = ..., misfire: _Optional[str] = ..., misfire_grace_ms: _Optional[int] = ..., payload_len: _Optional[int] = ..., paused: _Optional[bool] = ..., created_ms: _Optional[int] = ..., updated_ms: _Optional[int] = ..., last_tick_ms: _Optional[int] = ..., last_fired_ms: _Optional[int] = ..., last_task_id: _Optional[str] = ..., fired: _Optional[int] = ..., misfires: _Optional[int] = ..., next_ms: _Optional[int] = ..., next_local: _Optional[str] = ..., next_utc: _Optional[str] = ..., payload: _Optional[bytes] = ...) -> None: ...

class ListSchedulesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSchedulesResponse(_message.Message):
    __slots__ = ("schedules", "unavailable_shards")
    SCHEDULES_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_SHARDS_FIELD_NUMBER: _ClassVar[int]
    schedules: _containers.RepeatedCompositeFieldContainer[Schedule]
    unavailable_shards: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, schedules: _Optional[_Iterable[_Union[Schedule, _Mapping]]] = ..., unavailable_shards: _Optional[_Iterable[int]] = ...) -> None: ...

class ScheduleName(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RemoveScheduleResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerOrder(_message.Message):
    __slots__ = ("worker_id",)
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    def __init__(self, worker_id: _Optional[str] = ...) -> None: ...

class WorkerOrderResponse(_message.Message):
    __slots__ = ("worker_id", "command", "state")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    command: str
    state: str
    def __init__(self, worker_id: _Optional[str] = ..., command: _Optional[str] = ..., state: _Optional[str] = ...) -> None: ...
