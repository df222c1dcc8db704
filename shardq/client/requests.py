"""What the clients send and what they make of the answers: pure, no I/O.

``shardq.Client`` (blocking) and ``shardq.AsyncClient`` (asyncio) differ only in how they move
frames; every request header, every answer parser, the retry policy, the paging of LIST_TASKS
and the polling of ``wait`` live here, once, so that the two clients cannot drift apart.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from shardq import __version__
from shardq.client.models import Job, TaskCancelled, TaskFailed, TaskInfo, WaitTimeout, to_bytes
from shardq.errors import NotFound, Unavailable, error_from_wire
from shardq.protocol.frames import Message, MsgType, split_blob
from shardq.protocol.task_options import unique_owner
from shardq.task import id_to_str, new_ids

# Requests that may be sent again on a fresh connection when the old one broke after they were
# sent: reads, and SUBMIT (every task carries a client id, so a repeat stores nothing new).
RETRYABLE = frozenset((MsgType.HELLO, MsgType.SUBMIT, MsgType.QUERY_STATUS, MsgType.LIST_TASKS,
                       MsgType.GET_STATS, MsgType.PING, MsgType.HEARTBEAT, MsgType.REGISTER_WORKER))

# Reconnect backoff, in seconds: first pause, then doubled up to the cap.
BACKOFF_START = 0.05
BACKOFF_MAX = 2.0


def next_backoff(delay: float) -> float:
    return min(delay * 2, BACKOFF_MAX)


# Unavailable means the shard that owns the task is restarting (about a second) or the server is
# at its connection limit: a request that is safe to repeat is repeated, with the same backoff,
# for up to this long (and never past the call's timeout).
UNAVAILABLE_RETRY_S = 10.0


def retry_unavailable(err: BaseException, msg_type: int, started: float, now: float,
                      timeout: float | None) -> bool:
    """Whether to repeat a request that got ``err``, first sent at ``started`` (monotonic)."""
    budget = UNAVAILABLE_RETRY_S if timeout is None else min(UNAVAILABLE_RETRY_S, timeout)
    return isinstance(err, Unavailable) and msg_type in RETRYABLE and now - started < budget


def hello_header(name: str, api_key: str | None, shard: int | None = None) -> dict[str, Any]:
    """HELLO's header. ``shard``: the shard hint, moving the connection to that shard (a shard
    that is restarting, or out of range, leaves it where the acceptor put it)."""
    header: dict[str, Any] = {"client": f"{name}/{__version__}", "protocol": 1}
    if api_key is not None:
        header["api_key"] = api_key
    if shard is not None:
        header["shard"] = check_shard(shard)
    return header


def check_shard(shard: Any) -> int:
    if isinstance(shard, bool) or not isinstance(shard, int) or shard < 0:
        raise ValueError(f"shard must be an integer >= 0, got {shard!r}")
    return shard


def server_info(msg: Message) -> dict[str, Any]:
    """HELLO's answer without its rid."""
    return body(msg.header)


def check_answer(msg: Message) -> Message:
    """The message when it is an ACK; a NACK raises its ``shardq.errors`` class."""
    if msg.type == MsgType.NACK:
        raise error_from_wire(msg.header.get("error") or {})
    return msg


def body(header: dict[str, Any]) -> dict[str, Any]:
    """An answer header without its ``rid``."""
    out = dict(header)
    out.pop("rid", None)
    return out


# -- producing ------------------------------------------------------------------------------


def submit_request(jobs: Iterable[Job], server_info: dict[str, Any] | None = None) -> tuple[dict[str, Any], bytes]:
    """SUBMIT's header and blob for a batch (each job gets a client id when it has none).

    The ids are made in the partition of the shard this connection is on (HELLO
    said which), so the SUBMIT never has to cross to another shard."""
    make_id = None
    info = server_info or {}
    if type(info.get("shards")) is int and info["shards"] > 1 and type(info.get("shard")) is int:
        shard, shards = info["shard"], info["shards"]

        def make_id() -> str:
            return id_to_str(new_ids(1, shard, shards)[0])
    specs, payloads = [], []
    for job in jobs:
        if job.unique_key is not None and job.id is None and make_id is not None:
            # A unique task is made by its key's owner shard: its id goes in that partition.
            owner = unique_owner(job.type, job.unique_key, info["shards"])
            spec, payload = job.encode(lambda o=owner: id_to_str(new_ids(1, o, info["shards"])[0]))
            specs.append(spec)
            payloads.append(payload)
            continue
        spec, payload = job.encode(make_id)
        specs.append(spec)
        payloads.append(payload)
    return {"tasks": specs}, b"".join(payloads)


def parse_ids(msg: Message) -> list[str]:
    return list(msg.header["ids"])


def parse_duplicates(msg: Message) -> list[int]:
    """The positions of a SUBMIT's ACK answered with the id of a task holding their unique key."""
    return list(msg.header.get("duplicates") or ())


# -- reading --------------------------------------------------------------------------------


def status_header(ids: Iterable[str], with_result: bool) -> dict[str, Any]:
    return {"ids": list(ids), "with_result": with_result}


def parse_status(msg: Message, with_result: bool) -> list[TaskInfo | None]:
    """QUERY_STATUS's answer: a TaskInfo (``result`` filled when asked) or None per id."""
    tasks = msg.header["tasks"]
    results = iter(())
    if with_result:
        lengths = [t["result_len"] for t in tasks if t is not None and t.get("result_len")]
        if lengths:
            results = iter(split_blob(msg.blob, lengths))
    out: list[TaskInfo | None] = []
    for t in tasks:
        if t is None:
            out.append(None)
            continue
        result: bytes | None = None
        if with_result and t.get("result_len") is not None:
            result = next(results) if t["result_len"] else b""
        out.append(TaskInfo.from_wire(t, result=result))
    return out


class Waiter:
    """The polling schedule and the verdicts of ``wait``: ``outcome`` after each status,
    then sleep ``pause()`` seconds (``pause`` raises WaitTimeout once the time is up)."""

    def __init__(self, task_id: str, timeout: float | None, poll: float) -> None:
        self.task_id = task_id
        self.timeout = timeout
        self.poll = poll
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.interval = min(poll, 0.01)
        self.last_status = "unknown"

    def outcome(self, task: TaskInfo | None) -> bytes | None:
        """The result when the task completed, None while it is still going; raises
        NotFound, TaskFailed (dead_letter) or TaskCancelled."""
        if task is None:
            raise NotFound(f"no task {self.task_id}")
        self.last_status = task.status
        if task.status == "completed":
            return task.result or b""
        if task.status == "dead_letter":
            raise TaskFailed(task)
        if task.status == "cancelled":
            raise TaskCancelled(task)
        return None

    def pause(self) -> float:
        """Seconds to sleep before the next poll."""
        interval = self.interval
        self.interval = min(self.interval * 2, max(self.poll, 0.5))
        if self.deadline is None:
            return interval
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise WaitTimeout(f"task {self.task_id} is still {self.last_status} after {self.timeout} s")
        return min(interval, left)


class Pager:
    """LIST_TASKS paging: send ``header``, hand each answer to ``take``, until ``done``."""

    def __init__(self, status: str, type: str | None, min_priority: int | None,
                 max_priority: int | None, limit: int | None, page_size: int) -> None:
        self.header: dict[str, Any] = {"status": status, "limit": page_size}
        if type is not None:
            self.header["type"] = type
        if min_priority is not None:
            self.header["min_priority"] = min_priority
        if max_priority is not None:
            self.header["max_priority"] = max_priority
        self.left = limit
        self.done = limit is not None and limit <= 0

    def take(self, msg: Message) -> list[TaskInfo]:
        page = msg.header
        tasks = [TaskInfo.from_wire(t) for t in page["tasks"]]
        if self.left is not None:
            tasks = tasks[:self.left]
            self.left -= len(tasks)
            if self.left <= 0:
                self.done = True
        if page["cursor"] is None:
            self.done = True
        else:
            self.header["cursor"] = page["cursor"]
        return tasks


def stats_header() -> dict[str, Any]:
    return {}


def workers_header() -> dict[str, Any]:
    return {"workers_detail": True}  # a shardq extension of GET_STATS: one entry per live worker


def parse_workers(msg: Message) -> list[dict[str, Any]]:
    return list(msg.header.get("worker_list", []))


# -- administering --------------------------------------------------------------------------


def requeue_header(ids: Iterable[str] | None, status: str, type: str | None,
                   limit: int | None) -> dict[str, Any]:
    header: dict[str, Any] = {"status": status}
    if ids is not None:
        header["ids"] = list(ids)
    if type is not None:
        header["type"] = type
    if limit is not None:
        header["limit"] = limit
    return header


# -- working --------------------------------------------------------------------------------


def register_header(worker_id: str, info: dict[str, Any]) -> dict[str, Any]:
    return {"worker_id": worker_id, **info}


def claim_header(worker_id: str, max: int, wait: float, types: Iterable[str] | None,
                 dependency_results: bool = False) -> dict[str, Any]:
    header: dict[str, Any] = {"worker_id": worker_id, "max": max, "wait_ms": int(wait * 1000)}
    if types is not None:
        header["types"] = list(types)
    if dependency_results:
        header["dependency_results"] = True
    return header


def parse_claim(msg: Message) -> list[TaskInfo]:
    tasks = msg.header["tasks"]
    if not tasks:
        return []
    lengths = [t["payload_len"] for t in tasks]
    carried = [d for t in tasks for d in t.get("dependency_results") or ()]
    if "dependency_results" not in tasks[0] and not carried:
        payloads = split_blob(msg.blob, lengths)
        return [TaskInfo.from_wire(t, payload=p) for t, p in zip(tasks, payloads)]
    # Payloads first, then each task's carried dependency results in order (protocol.md).
    parts = iter(split_blob(msg.blob, lengths + [d["result_len"] for d in carried]))
    payloads = [next(parts) for _ in tasks]
    out = []
    for t, p in zip(tasks, payloads):
        info = TaskInfo.from_wire(t, payload=p)
        if "dependency_results" in t:
            info.dependency_results = {d["id"]: next(parts) for d in t["dependency_results"]}
            info.dependency_results_omitted = list(t.get("dependency_results_omitted") or ())
        out.append(info)
    return out


def report_request(worker_id: str,
                   results: Iterable[tuple[dict[str, Any], bytes]]) -> tuple[dict[str, Any], bytes]:
    """RESULT's header and blob from (result object without result_len, result bytes) pairs."""
    items, blobs = [], []
    for item, data in results:
        item = dict(item)
        if item["status"] == "completed":
            item["result_len"] = len(data)
            blobs.append(data)
        items.append(item)
    return {"worker_id": worker_id, "results": items}, b"".join(blobs)


def parse_report(msg: Message) -> list[dict[str, Any]]:
    return list(msg.header["results"])


def result_item(task_id: str, attempt: int, status: str, result: bytes = b"", error: str | None = None,
                retry: bool = True) -> tuple[dict[str, Any], bytes]:
    """One RESULT item (for ``report_request``): ``status`` completed (with ``result``), failed
    (with ``error`` and ``retry``) or released."""
    item: dict[str, Any] = {"id": task_id, "attempt": attempt, "status": status}
    if status == "failed":
        item["error"] = error or ""
        item["retry"] = retry
    return item, result if status == "completed" else b""


def completed_item(task: TaskInfo, result: Any) -> tuple[dict[str, Any], bytes]:
    return result_item(task.id, task.attempt, "completed", to_bytes(result))


def failed_item(task: TaskInfo, error: str, retry: bool) -> tuple[dict[str, Any], bytes]:
    return result_item(task.id, task.attempt, "failed", error=error, retry=retry)


def released_item(task: TaskInfo) -> tuple[dict[str, Any], bytes]:
    return result_item(task.id, task.attempt, "released")


def deregister_header(worker_id: str) -> dict[str, Any]:
    return {"worker_id": worker_id}


def heartbeat_header(worker_id: str, active: Iterable[str] | None, info: dict[str, Any]) -> dict[str, Any]:
    header: dict[str, Any] = {"worker_id": worker_id, **{k: v for k, v in info.items() if v is not None}}
    if active is not None:
        header["active"] = list(active)
    return header


def parse_heartbeat(msg: Message) -> tuple[int, list[str]]:
    return int(msg.header["lease_expires_ms"]), list(msg.header.get("lost", ()))


__all__ = [
    "RETRYABLE", "BACKOFF_START", "BACKOFF_MAX", "next_backoff", "UNAVAILABLE_RETRY_S",
    "retry_unavailable", "hello_header", "server_info",
    "check_answer", "body", "submit_request", "parse_ids", "status_header", "parse_status", "Waiter",
    "Pager", "stats_header", "workers_header", "parse_workers", "requeue_header", "register_header",
    "claim_header", "parse_claim", "report_request", "parse_report", "result_item", "completed_item",
    "failed_item", "released_item", "deregister_header", "heartbeat_header", "parse_heartbeat",
]
