"""Between the gRPC messages (shardq/v1/*_pb2) and the bundled client's models: pure data,
no I/O. Checks the gateway makes itself name their field the way the protocol's do."""

from __future__ import annotations

from typing import Any, TypeVar

from google.protobuf import message_factory, struct_pb2
from google.protobuf.message import Message

from shardq.client.models import Job, TaskInfo
from shardq.errors import BadRequest
from shardq.v1 import task_pb2, tasks_pb2, workers_pb2


def job(spec: task_pb2.TaskSpec, where: str) -> Job:
    """A TaskSpec as the client's Job; ``where`` names it in errors (``task``, ``tasks[3]``)."""
    if spec.HasField("delay_ms") and spec.HasField("scheduled_ms"):
        raise BadRequest(f"{where}.delay_ms: give delay_ms or scheduled_ms, not both")
    if spec.HasField("delay_ms") and spec.delay_ms < 0:
        raise BadRequest(f"{where}.delay_ms: must be 0 or more, got {spec.delay_ms}")
    if spec.HasField("scheduled_ms") and spec.scheduled_ms < 0:
        raise BadRequest(f"{where}.scheduled_ms: must be 0 or more, got {spec.scheduled_ms}")
    if spec.HasField("ttl_ms") and spec.HasField("expires_at_ms"):
        raise BadRequest(f"{where}.ttl_ms: give ttl_ms or expires_at_ms, not both")
    return Job(
        type=spec.type,
        payload=bytes(spec.payload),
        priority=spec.priority if spec.HasField("priority") else None,
        delay=spec.delay_ms / 1000 if spec.HasField("delay_ms") else None,
        at=spec.scheduled_ms / 1000 if spec.HasField("scheduled_ms") else None,
        depends_on=list(spec.depends_on) or None,
        max_retries=spec.max_retries if spec.HasField("max_retries") else None,
        timeout=spec.timeout_seconds if spec.HasField("timeout_seconds") else None,
        id=spec.id or None,
        ttl=spec.ttl_ms / 1000 if spec.HasField("ttl_ms") else None,
        expires_at=spec.expires_at_ms / 1000 if spec.HasField("expires_at_ms") else None,
        unique_key=spec.unique_key if spec.HasField("unique_key") else None,
        unique_window=spec.unique_window_ms / 1000 if spec.HasField("unique_window_ms") else None,
    )


def task(info: TaskInfo) -> task_pb2.Task:
    out = task_pb2.Task(
        id=info.id, type=info.type, priority=info.priority, status=info.status,
        created_ms=info.created_ms, updated_ms=info.updated_ms, scheduled_ms=info.scheduled_ms,
        max_retries=info.max_retries, retry_count=info.retry_count,
        timeout_seconds=info.timeout_seconds, attempt=info.attempt,
        worker_id=info.worker_id or "", lease_expires_ms=info.lease_expires_ms or 0,
        depends_on=info.depends_on, error=info.error or "", payload_len=info.payload_len,
        shard=info.shard)
    if info.result_len is not None:
        out.result_len = info.result_len
    if info.payload is not None:
        out.payload = info.payload
    if info.result is not None:
        out.result = info.result
    if info.expires_at_ms is not None:
        out.expires_at_ms = info.expires_at_ms
    if info.unique_key is not None:
        out.unique_key = info.unique_key
    return out


def struct(data: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(data)
    return out


M = TypeVar("M", bound=Message)


def message(cls: type[M], data: dict[str, Any]) -> M:
    """A protocol answer's object as ``cls``: the fields the message has (a key it lacks is left
    out: a later server's addition), a null as the field left unset, a nested object as its
    message (a ``Struct`` field takes the object as it is)."""
    fields = cls.DESCRIPTOR.fields_by_name
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        field = fields.get(name)
        if field is None or value is None:
            continue
        nested = field.message_type
        if nested is not None and nested.full_name == "google.protobuf.Struct":
            value = struct(value)
        elif nested is not None and isinstance(value, dict):
            value = message(message_factory.GetMessageClass(nested), value)
        kwargs[name] = value
    return cls(**kwargs)


WORKER_FIELDS = tuple(tasks_pb2.Worker.DESCRIPTOR.fields_by_name)


def worker(data: dict[str, Any]) -> tasks_pb2.Worker:
    """A worker of GET_STATS ``workers_detail``; fields the message lacks are left out, and a
    null (a figure not reported yet) is the field's zero."""
    return tasks_pb2.Worker(**{k: v for k, v in data.items() if k in WORKER_FIELDS and v is not None})


def result_item(result: workers_pb2.TaskResult, where: str) -> tuple[dict[str, Any], bytes]:
    """A TaskResult as RESULT's (item, blob) pair."""
    item: dict[str, Any] = {"id": result.id, "attempt": result.attempt}
    outcome = result.WhichOneof("outcome")
    if outcome == "completed":
        return {**item, "status": "completed"}, bytes(result.completed)
    if outcome == "failed":
        return {**item, "status": "failed", "error": result.failed.error, "retry": result.failed.retry}, b""
    if outcome == "released":
        return {**item, "status": "released"}, b""
    raise BadRequest(f"{where}.outcome: set one of completed, failed, released")


def result_answer(answer: dict[str, Any]) -> workers_pb2.ResultAnswer:
    err = answer.get("error")
    if isinstance(err, dict):
        return workers_pb2.ResultAnswer(id=answer.get("id", ""), ok=False, error_code=str(err.get("code", "")),
                               error_message=str(err.get("message", "")))
    return workers_pb2.ResultAnswer(id=answer.get("id", ""), ok=True, status=str(answer.get("status", "")))


__all__ = ["job", "message", "result_answer", "result_item", "struct", "task", "worker"]
