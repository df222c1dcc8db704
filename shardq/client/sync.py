"""The blocking client: ``shardq.Client``.

Rules:
1. Plain sockets and no threads, so it is safe under gevent monkey-patching
   (Locust users use it) and in any thread that owns its own Client.
2. Every call has a timeout. A broken connection is reopened on the next call with backoff;
   a call that is safe to repeat (reads, and SUBMIT, whose tasks always carry a
   client id) is retried on a fresh connection, the others raise.
3. NACKs become the typed exceptions of ``shardq.errors`` (QueueFull carries
   ``retry_after_ms``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from shardq import __version__
from shardq.client.connection import Connection, ConnectionClosed, parse_url
from shardq.client.models import Job, TaskCancelled, TaskFailed, TaskInfo, WaitTimeout, to_bytes
from shardq.errors import NotFound, error_from_wire
from shardq.protocol.frames import Message, MsgType, split_blob

_RETRYABLE = frozenset((MsgType.HELLO, MsgType.SUBMIT, MsgType.QUERY_STATUS, MsgType.LIST_TASKS,
                        MsgType.GET_STATS, MsgType.PING, MsgType.HEARTBEAT, MsgType.REGISTER_WORKER))
_BROKEN = (OSError, ConnectionClosed)


class Client:
    """A connection to a shardq server. Not shared between threads: make one per thread."""

    def __init__(self, url: str = "shardq://127.0.0.1:7070", *, timeout: float = 30.0,
                 api_key: str | None = None, retries: int = 3, name: str = "shardq-python") -> None:
        self.host, self.port = parse_url(url)
        self.url = url
        self.timeout = timeout
        self.api_key = api_key
        self.retries = retries
        self.name = name
        self._conn: Connection | None = None
        self.server_info: dict[str, Any] = {}

    # -- connection ------------------------------------------------------------

    def _connect(self) -> Connection:
        conn = Connection(self.host, self.port, timeout=self.timeout)
        hello: dict[str, Any] = {"client": f"{self.name}/{__version__}", "protocol": 1}
        if self.api_key is not None:
            hello["api_key"] = self.api_key
        try:
            self.server_info = dict(conn.call(MsgType.HELLO, hello).header)
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, msg_type: MsgType, header: dict[str, Any], blob: bytes = b"",
             timeout: float | None = None) -> Message:
        """One request; reconnects with backoff, retries what is safe to repeat."""
        attempts = self.retries + 1 if msg_type in _RETRYABLE else 1
        delay = 0.05
        for attempt in range(attempts):
            try:
                if self._conn is None:
                    self._conn = self._connect()
                conn = self._conn
                conn.sock.settimeout(timeout if timeout is not None else self.timeout)
                msg = conn.wait_for(conn.send(msg_type, dict(header), blob))
            except _BROKEN:
                self.close()
                if attempt + 1 >= attempts:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if msg.type == MsgType.NACK:
                err = error_from_wire(msg.header.get("error") or {})
                if err.closes_connection:
                    self.close()
                raise err
            return msg
        raise AssertionError("unreachable")

    def ping(self) -> float:
        """Round-trip time in seconds."""
        t = time.perf_counter()
        self.call(MsgType.PING, {})
        return time.perf_counter() - t

    # -- producing ----------------------------------------------------------------

    def submit(self, type: str, payload: Any = b"", *, priority: int | None = None,
               delay: float | None = None, at: Any = None, depends_on: list[str] | None = None,
               max_retries: int | None = None, timeout: int | None = None,
               id: str | None = None) -> str:
        """Submit one task; returns its id. ``payload``: bytes, str, or anything JSON-able."""
        return self.submit_many([Job(type, payload, priority, delay, at, depends_on, max_retries,
                                     timeout, id)])[0]

    def submit_many(self, jobs: Iterable[Job]) -> list[str]:
        """Submit a batch, all or nothing; returns the ids in order."""
        specs, payloads = [], []
        for job in jobs:
            spec, payload = job.encode()
            specs.append(spec)
            payloads.append(payload)
        return list(self.call(MsgType.SUBMIT, {"tasks": specs}, b"".join(payloads)).header["ids"])

    # -- reading ------------------------------------------------------------------------

    def status_many(self, ids: list[str], with_result: bool = False) -> list[TaskInfo | None]:
        msg = self.call(MsgType.QUERY_STATUS, {"ids": list(ids), "with_result": with_result})
        tasks = msg.header["tasks"]
        results: Iterator[bytes] = iter(())
        if with_result:
            lengths = [t["result_len"] for t in tasks if t is not None and t.get("result_len")]
            results = iter(split_blob(msg.blob, lengths)) if lengths else iter(())
        out: list[TaskInfo | None] = []
        for t in tasks:
            if t is None:
                out.append(None)
                continue
            result = next(results) if with_result and t.get("result_len") else (
                b"" if with_result and t.get("result_len") == 0 else None)
            out.append(TaskInfo.from_wire(t, result=result))
        return out

    def status(self, task_id: str, with_result: bool = False) -> TaskInfo | None:
        return self.status_many([task_id], with_result)[0]

    def wait(self, task_id: str, timeout: float | None = None, poll: float = 0.05) -> bytes:
        """Block until the task completes; returns its result.

        Raises TaskFailed (dead_letter), TaskCancelled, WaitTimeout, or NotFound."""
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = min(poll, 0.01)
        while True:
            task = self.status(task_id, with_result=True)
            if task is None:
                raise NotFound(f"no task {task_id}")
            if task.status == "completed":
                return task.result or b""
            if task.status == "dead_letter":
                raise TaskFailed(task)
            if task.status == "cancelled":
                raise TaskCancelled(task)
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"task {task_id} is still {task.status} after {timeout} s")
            sleep = interval if deadline is None else min(interval, max(0.0, deadline - time.monotonic()))
            time.sleep(sleep)
            interval = min(interval * 2, max(poll, 0.5))

    def list(self, status: str = "pending", *, type: str | None = None,
             min_priority: int | None = None, max_priority: int | None = None,
             limit: int | None = None, page_size: int = 100) -> Iterator[TaskInfo]:
        """Every matching task, following the cursors (``limit``: stop after that many)."""
        header: dict[str, Any] = {"status": status, "limit": page_size}
        if type is not None:
            header["type"] = type
        if min_priority is not None:
            header["min_priority"] = min_priority
        if max_priority is not None:
            header["max_priority"] = max_priority
        seen = 0
        while True:
            page = self.call(MsgType.LIST_TASKS, header).header
            for t in page["tasks"]:
                yield TaskInfo.from_wire(t)
                seen += 1
                if limit is not None and seen >= limit:
                    return
            if page["cursor"] is None:
                return
            header["cursor"] = page["cursor"]

    def stats(self) -> dict[str, Any]:
        header = dict(self.call(MsgType.GET_STATS, {}).header)
        header.pop("rid", None)
        return header

    def workers(self) -> list[dict[str, Any]]:
        """Live workers with their host, pid, CPU and memory (GET_STATS ``workers_detail``)."""
        return list(self.call(MsgType.GET_STATS, {"workers_detail": True}).header.get("worker_list", []))

    # -- administering ------------------------------------------------------------------

    def cancel(self, task_id: str) -> None:
        self.call(MsgType.CANCEL, {"id": task_id})

    def requeue(self, ids: list[str] | None = None, *, status: str = "dead_letter",
                type: str | None = None, limit: int | None = None) -> dict[str, Any]:
        """Back to pending; returns ``{"requeued": n, "results"?: [...]}``."""
        header: dict[str, Any] = {"status": status}
        if ids is not None:
            header["ids"] = list(ids)
        if type is not None:
            header["type"] = type
        if limit is not None:
            header["limit"] = limit
        body = dict(self.call(MsgType.REQUEUE, header).header)
        body.pop("rid", None)
        return body

    # -- working (the worker runtime is built on these) ------------------------------------

    def register_worker(self, worker_id: str, **info: Any) -> None:
        self.call(MsgType.REGISTER_WORKER, {"worker_id": worker_id, **info})

    def deregister_worker(self, worker_id: str) -> int:
        return int(self.call(MsgType.DEREGISTER_WORKER, {"worker_id": worker_id}).header["released"])

    def claim(self, worker_id: str, max: int = 1, wait: float = 0.0,
              types: list[str] | None = None) -> list[TaskInfo]:
        """Lease up to ``max`` tasks, waiting up to ``wait`` seconds for the first."""
        header: dict[str, Any] = {"worker_id": worker_id, "max": max, "wait_ms": int(wait * 1000)}
        if types is not None:
            header["types"] = list(types)
        msg = self.call(MsgType.CLAIM, header, timeout=self.timeout + wait)
        tasks = msg.header["tasks"]
        payloads = split_blob(msg.blob, [t["payload_len"] for t in tasks]) if tasks else []
        return [TaskInfo.from_wire(t, payload=p) for t, p in zip(tasks, payloads)]

    def report(self, worker_id: str, results: list[tuple[dict[str, Any], bytes]]) -> list[dict[str, Any]]:
        """RESULT for many tasks: (result object without result_len, result bytes) pairs."""
        items, blobs = [], []
        for item, data in results:
            item = dict(item)
            if item["status"] == "completed":
                item["result_len"] = len(data)
                blobs.append(data)
            items.append(item)
        msg = self.call(MsgType.RESULT, {"worker_id": worker_id, "results": items}, b"".join(blobs))
        return list(msg.header["results"])

    def complete(self, worker_id: str, task: TaskInfo, result: Any = b"") -> dict[str, Any]:
        return self.report(worker_id, [({"id": task.id, "attempt": task.attempt,
                                         "status": "completed"}, to_bytes(result))])[0]

    def fail(self, worker_id: str, task: TaskInfo, error: str, retry: bool = True) -> dict[str, Any]:
        return self.report(worker_id, [({"id": task.id, "attempt": task.attempt, "status": "failed",
                                         "error": error, "retry": retry}, b"")])[0]

    def release(self, worker_id: str, task: TaskInfo) -> dict[str, Any]:
        return self.report(worker_id, [({"id": task.id, "attempt": task.attempt,
                                         "status": "released"}, b"")])[0]

    def heartbeat(self, worker_id: str, active: list[str] | None = None,
                  **info: Any) -> tuple[int, list[str]]:
        header: dict[str, Any] = {"worker_id": worker_id, **{k: v for k, v in info.items() if v is not None}}
        if active is not None:
            header["active"] = list(active)
        body = self.call(MsgType.HEARTBEAT, header).header
        return int(body["lease_expires_ms"]), list(body.get("lost", ()))


__all__ = ["Client", "Job", "TaskInfo", "TaskFailed", "TaskCancelled", "WaitTimeout"]
