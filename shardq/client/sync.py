"""The blocking client: ``shardq.Client``.

Rules:
1. Plain sockets and no threads, so it is safe under gevent monkey-patching
   (Locust users use it) and in any thread that owns its own Client.
2. Every call has a timeout (``TimeoutError``, not retried). A broken connection is reopened
   on the next call with backoff (a connection the server closed while idle is noticed before
   sending); a request that never reached the server is always retried, one that did is
   retried on a fresh connection only when it is safe to repeat (reads, and SUBMIT, whose
   tasks always carry a client id), the others raise ``ConnectionClosed``. ``Unavailable`` (the
   owning shard is restarting, or the server is at its connection limit) is retried with the
   same backoff for up to 10 s when the request is safe to repeat.
3. NACKs become the typed exceptions of ``shardq.errors`` (QueueFull carries
   ``retry_after_ms``).
4. ``shardqs://`` speaks TLS and verifies the server (shardq/tls.py ``client_context``); a TLS
   failure is a ``TLSError``, raised at once (no retry can fix a certificate).
5. On a multi-shard server it spreads (shardq/client/spread.py): a connection per shard, opened
   on first use; SUBMITs and CLAIMs to the shards in turn, by-id requests to the owner. Each
   connection reconnects and retries on its own, under rules 2-4.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterable, Iterator
from typing import Any

from shardq.client import insight as ins
from shardq.client import requests as rq
from shardq.client.connection import Connection, ConnectionClosed, check_tls_options, parse_target
from shardq.client.control import (
    HeartbeatAnswer,
    parse_beat,
    parse_commanded,
    require_feature,
    worker_control_header,
)
from shardq.client.controls import ClientControls
from shardq.client.lanes import LaneRouting
from shardq.client.models import Job, TaskCancelled, TaskFailed, TaskInfo, WaitTimeout
from shardq.client.schedules import ScheduleMethods
from shardq.client.spread import Spread
from shardq.client.triage import TriageMethods
from shardq.errors import Unavailable, error_from_wire
from shardq.protocol.frames import Message, MsgType
from shardq.tls import client_context

_RETRYABLE = rq.RETRYABLE
_BROKEN = (OSError, ConnectionClosed)


class _Lane:
    """One connection of a client, to one shard (or wherever the acceptor put it: the home)."""

    __slots__ = ("hint", "ssl_context", "conn", "info")

    def __init__(self, hint: int | None, ssl_context: ssl.SSLContext | None) -> None:
        self.hint = hint                # the shard asked for in HELLO (and the ALPN offer)
        self.ssl_context = ssl_context
        self.conn: Connection | None = None
        self.info: dict[str, Any] = {}  # HELLO's answer: ``shard`` says where it really is


class Client(LaneRouting[_Lane], ScheduleMethods, TriageMethods, ClientControls):
    """A connection to a shardq server. Not shared between threads: make one per thread.

    On a multi-shard server it spreads its work over the shards (shardq/client/spread.py): one
    connection per shard, opened on first use; SUBMITs and CLAIMs go to the shards in turn, each
    with ids made in that shard's partition, and requests about tasks go to their owner, so no
    request crosses shards and no one core does all the work. ``spread=False``: one connection,
    wherever the acceptor puts it. ``shard``: every request to that shard (the HELLO hint; over
    TLS, the ALPN offer) and no spreading.

    ``shardqs://`` URLs speak TLS: ``tls_ca`` is the CA file that signed the server's certificate
    (default: the system's CAs), ``tls_cert``/``tls_key`` a client certificate for servers that
    ask for one; or pass a ready ``ssl_context`` (used as it is for every connection: it carries
    no shard's ALPN offer, so its per-shard connections land where the acceptor puts them, and
    ids are still made for the shard each one lands on)."""

    def __init__(self, url: str = "shardq://127.0.0.1:7070", *, timeout: float | None = 30.0,
                 api_key: str | None = None, retries: int = 3, name: str = "shardq-python",
                 shard: int | None = None, spread: bool = True, tls_ca: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.host, self.port, tls = parse_target(url)
        check_tls_options(url, tls, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key,
                          ssl_context=ssl_context)
        self.shard_hint = None if shard is None else rq.check_shard(shard)
        self._tls = (tls_ca, tls_cert, tls_key) if tls and ssl_context is None else None
        self._user_context = ssl_context
        self.ssl_context = (ssl_context or client_context(tls_ca, tls_cert, tls_key, self.shard_hint)
                            if tls else None)
        self.url = url
        self.timeout = timeout
        self.api_key = api_key
        self.retries = retries
        self.name = name
        self.spreading = spread and shard is None
        self._home = _Lane(self.shard_hint, self.ssl_context)
        self._lanes: dict[int, _Lane] = {}   # spreading: the other shards' connections
        self._spread: Spread | None = None

    # -- connections -----------------------------------------------------------

    @property
    def _conn(self) -> Connection | None:
        return self._home.conn

    def _connect(self, lane: _Lane) -> Connection:
        conn = Connection(self.host, self.port, timeout=self.timeout, ssl_context=lane.ssl_context)
        try:
            lane.info = rq.server_info(conn.call(MsgType.HELLO, rq.hello_header(self.name, self.api_key,
                                                                              lane.hint)))
        except BaseException:
            conn.close()
            raise
        self._learned(lane)
        return conn

    def _new_lane(self, shard: int, ssl_context: ssl.SSLContext | None) -> _Lane:
        return _Lane(shard, ssl_context)

    def _started(self) -> Spread | None:
        """Say HELLO on the home connection first (it tells how many shards there are)."""
        if self._home.conn is None and self.spreading:
            self.connect()
        return self._spread

    @property
    def shard(self) -> int | None:
        """The shard serving the home connection (HELLO's ``shard``), once connected."""
        return self.server_info.get("shard")

    def connect(self) -> Client:
        """Open the connection (and say HELLO) now rather than on the first call."""
        self.call(MsgType.PING, {})
        return self

    def close(self) -> None:
        for lane in (self._home, *self._lanes.values()):
            if lane.conn is not None:
                lane.conn.close()
                lane.conn = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _stale(conn: Connection) -> bool:
        """True when the server has closed an idle connection (or sent something unasked):
        no request is in flight between calls, so a readable socket means it is unusable.
        A non-blocking peek (no select: no fd limit, and it works under gevent). Over TLS a
        non-blocking read: records that carry no data (TLS 1.3 session tickets) are not stale."""
        try:
            conn.sock.settimeout(0)
            if conn.tls:
                conn.sock.recv(1)
            else:
                conn.sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, ssl.SSLWantReadError):
            return False
        except OSError:
            return True
        return True

    def call(self, msg_type: MsgType, header: dict[str, Any], blob: bytes = b"",
             timeout: float | None = None, lane: _Lane | None = None) -> Message:
        """One request (on ``lane``, else the home connection); reconnects with backoff,
        retries what is safe to repeat.

        A request that never reached the server (the connection could not be opened, or was
        found closed before sending) is always retried; one that was sent on a connection that
        then broke is retried only when it is safe to repeat (``RETRYABLE``). A timeout raises
        ``TimeoutError`` at once (the connection is dropped, since an answer may still come)."""
        lane = lane or self._home
        retryable = msg_type in _RETRYABLE
        delay = rq.BACKOFF_START
        attempt = 0
        started = time.monotonic()
        call_timeout = timeout if timeout is not None else self.timeout
        while True:
            sent = False
            try:
                if lane.conn is not None and self._stale(lane.conn):
                    self._drop(lane)
                if lane.conn is None:
                    lane.conn = self._connect(lane)
                conn = lane.conn
                conn.sock.settimeout(call_timeout)
                rid = conn.send(msg_type, dict(header), blob)
                sent = True
                msg = conn.wait_for(rid)
            except TimeoutError:
                self._drop(lane)
                raise
            except _BROKEN:
                self._drop(lane)
                attempt += 1
                if (sent and not retryable) or attempt > self.retries:
                    raise
                time.sleep(delay)
                delay = rq.next_backoff(delay)
                continue
            except Unavailable as exc:  # HELLO refused: at the connection limit, or draining
                self._drop(lane)
                if not rq.retry_unavailable(exc, MsgType.HELLO, started, time.monotonic(), call_timeout):
                    raise
                time.sleep(delay)
                delay = rq.next_backoff(delay)
                continue
            if msg.type == MsgType.NACK:
                err = error_from_wire(msg.header.get("error") or {})
                if err.closes_connection:
                    self._drop(lane)
                if rq.retry_unavailable(err, msg_type, started, time.monotonic(), call_timeout):
                    time.sleep(delay)  # the owning shard is restarting: ask again shortly
                    delay = rq.next_backoff(delay)
                    continue
                raise err
            return msg

    @staticmethod
    def _drop(lane: _Lane) -> None:
        if lane.conn is not None:
            lane.conn.close()
            lane.conn = None

    def ping(self) -> float:
        """Round-trip time in seconds."""
        t = time.perf_counter()
        self.call(MsgType.PING, {})
        return time.perf_counter() - t

    # -- producing ----------------------------------------------------------------

    def submit(self, type: str, payload: Any = b"", *, priority: int | None = None,
               delay: float | None = None, at: Any = None, depends_on: list[str] | None = None,
               max_retries: int | None = None, timeout: int | None = None,
               id: str | None = None, ttl: float | None = None, expires_at: Any = None,
               unique_key: str | None = None, unique_window: float | None = None) -> str:
        """Submit one task; returns its id. ``payload``: bytes, str, or anything JSON-able.
        ``ttl``/``expires_at``: not started by then, it is not run; ``unique_key``: while a task
        of this type holds the key (and ``unique_window`` s after it finished), its id is
        returned instead of a new task's (docs/protocol.md, "Task options")."""
        return self.submit_many([Job(type, payload, priority, delay, at, depends_on, max_retries,
                                     timeout, id, ttl, expires_at, unique_key, unique_window)])[0]

    def submit_many(self, jobs: Iterable[Job]) -> list[str]:
        """Submit a batch, all or nothing; returns the ids in order."""
        return self.submit_many_detailed(jobs)[0]

    def submit_many_detailed(self, jobs: Iterable[Job]) -> tuple[list[str], list[int]]:
        """``submit_many``, and the positions answered with the id of a task that already held
        their ``unique_key`` (no new task was made for those)."""
        jobs = list(jobs)
        spread = self._started()
        lane = self._home if spread is None else self._lane(spread.submit_shard(jobs))
        if lane.conn is None:
            self.call(MsgType.PING, {}, lane=lane)  # HELLO first: it says whose partition to use
        header, blob = rq.submit_request(jobs, lane.info)
        msg = self.call(MsgType.SUBMIT, header, blob, lane=lane)
        return rq.parse_ids(msg), rq.parse_duplicates(msg)

    # -- reading ------------------------------------------------------------------------

    def status_many(self, ids: list[str], with_result: bool = False) -> list[TaskInfo | None]:
        self._started()
        msg = self.call(MsgType.QUERY_STATUS, rq.status_header(ids, with_result), lane=self._by_ids(ids))
        return rq.parse_status(msg, with_result)

    def status(self, task_id: str, with_result: bool = False) -> TaskInfo | None:
        return self.status_many([task_id], with_result)[0]

    def history(self, task_id: str) -> dict[str, Any]:
        """The task's timeline: ``{"id", "type", "status", "history": {"events": [...],
        "dropped": n, "dropped_after": k | None}}`` (docs/protocol.md, "history")."""
        self._started()
        lane = self._by_ids([task_id])
        msg = self.call(MsgType.QUERY_STATUS, ins.history_header(task_id), lane=lane)
        ins.require(lane.info or self.server_info, "history")
        return ins.parse_history(msg, task_id)

    def explain(self, task_id: str) -> dict[str, Any]:
        """Why the task runs or does not: ``{"reason", "message", "details", ...}``."""
        self._started()
        if self._home.conn is None:
            self.connect()
        ins.require(self.server_info, "explain")
        return ins.parse_explain(self.call(MsgType.EXPLAIN, ins.explain_header(task_id)))

    def wait(self, task_id: str, timeout: float | None = None, poll: float = 0.05) -> bytes:
        """Block until the task completes; returns its result.

        Raises TaskFailed (dead_letter), TaskCancelled, WaitTimeout, or NotFound."""
        waiter = rq.Waiter(task_id, timeout, poll)
        while True:
            result = waiter.outcome(self.status(task_id, with_result=True))
            if result is not None:
                return result
            time.sleep(waiter.pause())

    def list(self, status: str = "pending", *, type: str | None = None,
             min_priority: int | None = None, max_priority: int | None = None,
             limit: int | None = None, page_size: int = 100) -> Iterator[TaskInfo]:
        """Every matching task, following the cursors (``limit``: stop after that many)."""
        pager = rq.Pager(status, type, min_priority, max_priority, limit, page_size)
        while not pager.done:
            yield from pager.take(self.call(MsgType.LIST_TASKS, pager.header))

    def stats(self) -> dict[str, Any]:
        return rq.body(self.call(MsgType.GET_STATS, rq.stats_header()).header)

    def workers(self) -> list[dict[str, Any]]:
        """Live workers with their host, pid, CPU and memory (GET_STATS ``workers_detail``)."""
        return rq.parse_workers(self.call(MsgType.GET_STATS, rq.workers_header()))

    # -- administering ------------------------------------------------------------------

    def cancel(self, task_id: str) -> None:
        self._started()
        self.call(MsgType.CANCEL, {"id": task_id}, lane=self._by_ids([task_id]))

    def requeue(self, ids: list[str] | None = None, *, status: str = "dead_letter",
                type: str | None = None, limit: int | None = None) -> dict[str, Any]:
        """Back to pending; returns ``{"requeued": n, "results"?: [...]}``."""
        self._started()
        lane = self._home if ids is None else self._by_ids(ids)
        return rq.body(self.call(MsgType.REQUEUE, rq.requeue_header(ids, status, type, limit),
                                 lane=lane).header)

    # -- working (the worker runtime is built on these) ------------------------------------

    def register_worker(self, worker_id: str, **info: Any) -> None:
        self.call(MsgType.REGISTER_WORKER, rq.register_header(worker_id, info))

    def deregister_worker(self, worker_id: str) -> int:
        return int(self.call(MsgType.DEREGISTER_WORKER, rq.deregister_header(worker_id)).header["released"])

    def claim(self, worker_id: str, max: int = 1, wait: float = 0.0,
              types: list[str] | None = None, dependency_results: bool = False) -> list[TaskInfo]:
        """Lease up to ``max`` tasks, waiting up to ``wait`` seconds for the first.
        ``dependency_results``: each task carries its dependencies' results (bounded:
        ``TaskInfo.dependency_results`` and ``dependency_results_omitted``)."""
        timeout = None if self.timeout is None else self.timeout + wait
        spread = self._started()
        lane = self._home if spread is None else self._lane(spread.claim_shard())
        return rq.parse_claim(self.call(MsgType.CLAIM, rq.claim_header(worker_id, max, wait, types,
                                                                       dependency_results),
                                        timeout=timeout, lane=lane))

    def report(self, worker_id: str, results: list[tuple[dict[str, Any], bytes]]) -> list[dict[str, Any]]:
        """RESULT for many tasks: (result object without result_len, result bytes) pairs."""
        results = list(results)
        spread = self._started()
        parts = {None: list(range(len(results)))} if spread is None else \
            spread.split([item["id"] for item, _ in results])
        out: list[dict[str, Any]] = [{}] * len(results)
        for shard, where in parts.items():  # one RESULT per owner: none crosses shards
            header, blob = rq.report_request(worker_id, [results[i] for i in where])
            lane = self._home if shard is None else self._lane(shard)
            for i, answer in zip(where, rq.parse_report(self.call(MsgType.RESULT, header, blob, lane=lane))):
                out[i] = answer
        return out

    def complete(self, worker_id: str, task: TaskInfo, result: Any = b"") -> dict[str, Any]:
        return self.report(worker_id, [rq.completed_item(task, result)])[0]

    def fail(self, worker_id: str, task: TaskInfo, error: str, retry: bool = True) -> dict[str, Any]:
        return self.report(worker_id, [rq.failed_item(task, error, retry)])[0]

    def release(self, worker_id: str, task: TaskInfo) -> dict[str, Any]:
        return self.report(worker_id, [rq.released_item(task)])[0]

    def heartbeat(self, worker_id: str, active: list[str] | None = None,
                  **info: Any) -> tuple[int, list[str]]:
        return rq.parse_heartbeat(self.call(MsgType.HEARTBEAT, rq.heartbeat_header(worker_id, active, info)))

    def beat(self, worker_id: str, active: list[str] | None = None, **info: Any) -> HeartbeatAnswer:
        """HEARTBEAT, with all of its answer: ``lost``, ``cancelled`` (stop those handlers) and a
        quiet/stop ``command``."""
        return parse_beat(self.call(MsgType.HEARTBEAT, rq.heartbeat_header(worker_id, active, info)))

    def quiet_worker(self, worker_id: str) -> dict[str, Any]:
        """Tell a worker to stop claiming and finish what it holds (at its next heartbeat);
        ``{"worker_id", "command", "state"}``. NotFound for a worker the broker does not know."""
        return self._worker_control(worker_id, "quiet")

    def stop_worker(self, worker_id: str) -> dict[str, Any]:
        """Quiet a worker, then have it exit once drained (or after its shutdown timeout)."""
        return self._worker_control(worker_id, "stop")

    def _worker_control(self, worker_id: str, action: str) -> dict[str, Any]:
        self.connect()
        require_feature(self.server_info, "worker_control")
        return parse_commanded(self.call(MsgType.WORKER_CONTROL, worker_control_header(worker_id, action)))


__all__ = ["Client", "Job", "TaskInfo", "TaskFailed", "TaskCancelled", "WaitTimeout"]
