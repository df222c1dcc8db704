"""The asyncio client: ``shardq.AsyncClient``.

Rules:
1. One TCP connection per shard it uses (``shardq.client.aio_connection.AsyncConnection`` over
   the sans-I/O ``ConnectionCore``; one in all with ``spread=False`` or ``shard=k``, and
   shardq/client/spread.py says which request goes where), shared by every coroutine that uses
   the client. Requests are pipelined:
   each gets a fresh rid and a Future; answers resolve them by rid, in whatever order the
   server answers. A waiting CLAIM holds back nothing.
2. Every call has a timeout (``asyncio.timeout``): the whole call, reconnects and retries
   included, raises ``TimeoutError`` when it runs out. A timed-out request forgets its rid; its
   late answer is dropped and the connection stays in use.
3. A broken connection fails every pending request with ``ConnectionClosed``; the next call
   reconnects, with backoff. A request that never reached the server is always retried; one
   that did is retried on the new connection only when it is safe to repeat
   (``shardq.client.requests.RETRYABLE``: reads, HELLO, HEARTBEAT, REGISTER_WORKER, and SUBMIT,
   whose tasks always carry a client id).
4. Flow control: while the transport's write buffer is over its high-water mark
   (``pause_writing`` .. ``resume_writing``), callers wait (``drain``) before they write, so a
   huge pipelined burst buffers at most the high-water mark plus one frame.
5. NACKs become the typed exceptions of ``shardq.errors``; headers and answers are built and
   read by ``shardq.client.requests``, the same code the blocking ``Client`` uses.
   ``Unavailable`` (the owning shard is restarting, or the server is at its connection limit)
   is retried with the same backoff for up to 10 s when the request is safe to repeat.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from shardq.client import insight as ins
from shardq.client import requests as rq
from shardq.client.aio_connection import AsyncConnection, open_connection
from shardq.client.connection import ConnectionClosed, check_tls_options, parse_target
from shardq.client.control import (
    HeartbeatAnswer,
    parse_beat,
    parse_commanded,
    require_feature,
    worker_control_header,
)
from shardq.client.controls import AsyncClientControls
from shardq.client.lanes import LaneRouting
from shardq.client.models import Job, TaskCancelled, TaskFailed, TaskInfo, WaitTimeout
from shardq.client.schedules import AsyncScheduleMethods
from shardq.client.spread import Spread
from shardq.client.triage import AsyncTriageMethods
from shardq.errors import ShardqError, WireError
from shardq.protocol.frames import Message, MsgType
from shardq.tls import client_context

_BROKEN = (OSError, ConnectionClosed)


class _Lane:
    """One connection of a client, to one shard (or wherever the acceptor put it: the home)."""

    __slots__ = ("hint", "ssl_context", "conn", "connecting", "info")

    def __init__(self, hint: int | None, ssl_context: ssl.SSLContext | None) -> None:
        self.hint = hint                # the shard asked for in HELLO (and the ALPN offer)
        self.ssl_context = ssl_context
        self.conn: AsyncConnection | None = None
        self.connecting: asyncio.Future[AsyncConnection] | None = None
        self.info: dict[str, Any] = {}  # HELLO's answer: ``shard`` says where it really is


class AsyncClient(LaneRouting[_Lane], AsyncScheduleMethods, AsyncTriageMethods, AsyncClientControls):
    """An asyncio connection to a shardq server, shared by any number of coroutines.

    Use it from one event loop. ``timeout`` (seconds, None for none) bounds every call;
    ``retries`` is how many times a call reconnects and tries again. On a multi-shard server it
    spreads its work over the shards as ``shardq.Client`` does (a connection per shard, opened on
    first use: shardq/client/spread.py); ``spread=False`` keeps one connection. ``shard``: every
    request to that shard (the HELLO hint), as ``shardq.Client`` does; ``shardqs://``,
    ``tls_ca``, ``tls_cert``, ``tls_key`` and ``ssl_context`` as there too (a TLS failure is a
    ``TLSError``, not retried)."""

    def __init__(self, url: str = "shardq://127.0.0.1:7070", *, timeout: float | None = 30.0,
                 api_key: str | None = None, retries: int = 3, name: str = "shardq-python-asyncio",
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
        self._epoch = 0  # bumped by close(): calls in flight then fail rather than reconnect

    # -- connections -----------------------------------------------------------

    @property
    def _conn(self) -> AsyncConnection | None:
        return self._home.conn

    async def _open(self, lane: _Lane) -> AsyncConnection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.timeout):
            conn = await open_connection(loop, lambda: AsyncConnection(loop), self.host, self.port,
                                         lane.ssl_context)
            try:
                msg = await conn.request(MsgType.HELLO, rq.hello_header(self.name, self.api_key,
                                                                        lane.hint))
                lane.info = rq.server_info(msg)
            except ConnectionClosed:
                conn.close()
                tls_error = conn.tls_error()
                if tls_error is not None:
                    raise tls_error from None
                raise
            except BaseException:
                conn.close()
                raise
        self._learned(lane)
        lane.conn = conn
        return conn

    def _new_lane(self, shard: int, ssl_context: ssl.SSLContext | None) -> _Lane:
        return _Lane(shard, ssl_context)

    async def _started(self) -> Spread | None:
        """Say HELLO on the home connection first (it tells how many shards there are)."""
        if not self._home.info and self.spreading:
            await self.connect()
        return self._spread

    @property
    def shard(self) -> int | None:
        """The shard serving the home connection (HELLO's ``shard``), once connected."""
        return self.server_info.get("shard")

    async def _connection(self, lane: _Lane) -> AsyncConnection:
        """The lane's live connection, opening one when there is none (one attempt shared by all)."""
        conn = lane.conn
        if conn is not None and not conn.closed:
            return conn
        task = lane.connecting
        if task is None or task.done():
            task = lane.connecting = asyncio.ensure_future(self._open(lane))
            task.add_done_callback(lambda t: self._opened(lane, t))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and (current is None or not current.cancelling()):
                # close() gave up the attempt: that is no reason to cancel this caller
                raise ConnectionClosed("the client was closed while connecting") from None
            raise

    @staticmethod
    def _opened(lane: _Lane, task: asyncio.Future[AsyncConnection]) -> None:
        if lane.connecting is task:
            lane.connecting = None
        if not task.cancelled():
            task.exception()  # retrieved here: the callers may all have timed out

    async def connect(self) -> AsyncClient:
        """Open the connection (and say HELLO) now rather than on the first call."""
        await self.call(MsgType.PING, {})
        return self

    async def close(self) -> None:
        """Close the connections; calls in flight fail with ConnectionClosed (none is retried).
        A later call reconnects."""
        self._epoch += 1
        for lane in (self._home, *self._lanes.values()):
            if lane.connecting is not None:
                lane.connecting.cancel()
                lane.connecting = None
            conn, lane.conn = lane.conn, None
            if conn is not None:
                conn.close()
                try:
                    async with asyncio.timeout(1.0):
                        await asyncio.shield(conn.lost)
                except TimeoutError:
                    pass

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def call(self, msg_type: MsgType, header: dict[str, Any], blob: bytes = b"",
                   timeout: float | None = None, lane: _Lane | None = None) -> Message:
        """One request (on ``lane``, else the home connection); reconnects with backoff,
        retries what is safe to repeat (module rules)."""
        async with asyncio.timeout(self.timeout if timeout is None else timeout):
            return await self._call(msg_type, header, blob, lane or self._home)

    async def _call(self, msg_type: MsgType, header: dict[str, Any], blob: bytes,
                    lane: _Lane) -> Message:
        retryable = msg_type in rq.RETRYABLE
        delay = rq.BACKOFF_START
        attempt = 0
        epoch = self._epoch
        started = time.monotonic()
        while True:
            sent = False
            fut: asyncio.Future[Message] | None = None
            try:
                conn = await self._connection(lane)
                await conn.drain()
                fut = conn.request(msg_type, dict(header), blob)
                sent = True
                return await fut
            except TimeoutError:
                raise  # opening the connection took too long: not a broken connection
            except WireError as err:  # a NACK; before sending: HELLO refused (connection limit)
                if (not rq.retry_unavailable(err, msg_type if sent else MsgType.HELLO, started,
                                             time.monotonic(), self.timeout)
                        or self._epoch != epoch):
                    raise
                await asyncio.sleep(delay)  # the owning shard is restarting: ask again shortly
                delay = rq.next_backoff(delay)
            except _BROKEN:
                attempt += 1
                if (sent and not retryable) or attempt > self.retries or self._epoch != epoch:
                    raise
                await asyncio.sleep(delay)
                delay = rq.next_backoff(delay)
            finally:
                if fut is not None:
                    if not fut.done():
                        fut.cancel()  # timed out or cancelled: a late answer is dropped
                    elif not fut.cancelled():
                        fut.exception()  # mark it retrieved whichever way we leave

    async def ping(self) -> float:
        """Round-trip time in seconds."""
        t = time.perf_counter()
        await self.call(MsgType.PING, {})
        return time.perf_counter() - t

    # -- producing ----------------------------------------------------------------

    async def submit(self, type: str, payload: Any = b"", *, priority: int | None = None,
                     delay: float | None = None, at: Any = None, depends_on: list[str] | None = None,
                     max_retries: int | None = None, timeout: int | None = None,
                     id: str | None = None, ttl: float | None = None, expires_at: Any = None,
                     unique_key: str | None = None, unique_window: float | None = None) -> str:
        """Submit one task; returns its id (``Client.submit`` says what the options do)."""
        return (await self.submit_many([Job(type, payload, priority, delay, at, depends_on,
                                            max_retries, timeout, id, ttl, expires_at, unique_key,
                                            unique_window)]))[0]

    async def submit_many(self, jobs: Iterable[Job]) -> list[str]:
        """Submit a batch, all or nothing; returns the ids in order."""
        return (await self.submit_many_detailed(jobs))[0]

    async def submit_many_detailed(self, jobs: Iterable[Job]) -> tuple[list[str], list[int]]:
        """``submit_many``, and the positions that were duplicates of a held unique key."""
        jobs = list(jobs)
        spread = await self._started()
        lane = self._home if spread is None else self._lane(spread.submit_shard(jobs))
        if not lane.info:
            await self.call(MsgType.PING, {}, lane=lane)  # HELLO first: whose partition to use
        header, blob = rq.submit_request(jobs, lane.info)
        msg = await self.call(MsgType.SUBMIT, header, blob, lane=lane)
        return rq.parse_ids(msg), rq.parse_duplicates(msg)

    # -- reading ------------------------------------------------------------------------

    async def status_many(self, ids: list[str], with_result: bool = False) -> list[TaskInfo | None]:
        await self._started()
        msg = await self.call(MsgType.QUERY_STATUS, rq.status_header(ids, with_result),
                              lane=self._by_ids(ids))
        return rq.parse_status(msg, with_result)

    async def status(self, task_id: str, with_result: bool = False) -> TaskInfo | None:
        return (await self.status_many([task_id], with_result))[0]

    async def history(self, task_id: str) -> dict[str, Any]:
        """The task's timeline (Client.history)."""
        await self._started()
        lane = self._by_ids([task_id])
        msg = await self.call(MsgType.QUERY_STATUS, ins.history_header(task_id), lane=lane)
        ins.require(lane.info or self.server_info, "history")
        return ins.parse_history(msg, task_id)

    async def explain(self, task_id: str) -> dict[str, Any]:
        """Why the task runs or does not (Client.explain)."""
        await self._started()
        if not self._home.info:
            await self.call(MsgType.PING, {})
        ins.require(self.server_info, "explain")
        return ins.parse_explain(await self.call(MsgType.EXPLAIN, ins.explain_header(task_id)))

    async def wait(self, task_id: str, timeout: float | None = None, poll: float = 0.05) -> bytes:
        """Wait until the task completes; returns its result.

        Raises TaskFailed (dead_letter), TaskCancelled, WaitTimeout, or NotFound."""
        waiter = rq.Waiter(task_id, timeout, poll)
        while True:
            result = waiter.outcome(await self.status(task_id, with_result=True))
            if result is not None:
                return result
            await asyncio.sleep(waiter.pause())

    async def list(self, status: str = "pending", *, type: str | None = None,
                   min_priority: int | None = None, max_priority: int | None = None,
                   limit: int | None = None, page_size: int = 100) -> AsyncIterator[TaskInfo]:
        """Every matching task, following the cursors (``limit``: stop after that many):
        ``async for task in client.list("pending"): ...``."""
        pager = rq.Pager(status, type, min_priority, max_priority, limit, page_size)
        while not pager.done:
            for task in pager.take(await self.call(MsgType.LIST_TASKS, pager.header)):
                yield task

    async def stats(self) -> dict[str, Any]:
        return rq.body((await self.call(MsgType.GET_STATS, rq.stats_header())).header)

    async def workers(self) -> list[dict[str, Any]]:
        """Live workers with their host, pid, CPU and memory (GET_STATS ``workers_detail``)."""
        return rq.parse_workers(await self.call(MsgType.GET_STATS, rq.workers_header()))

    # -- administering ------------------------------------------------------------------

    async def cancel(self, task_id: str) -> None:
        await self._started()
        await self.call(MsgType.CANCEL, {"id": task_id}, lane=self._by_ids([task_id]))

    async def requeue(self, ids: list[str] | None = None, *, status: str = "dead_letter",
                      type: str | None = None, limit: int | None = None) -> dict[str, Any]:
        """Back to pending; returns ``{"requeued": n, "results"?: [...]}``."""
        await self._started()
        msg = await self.call(MsgType.REQUEUE, rq.requeue_header(ids, status, type, limit),
                              lane=self._home if ids is None else self._by_ids(ids))
        return rq.body(msg.header)

    # -- working --------------------------------------------------------------------------

    async def register_worker(self, worker_id: str, **info: Any) -> None:
        await self.call(MsgType.REGISTER_WORKER, rq.register_header(worker_id, info))

    async def deregister_worker(self, worker_id: str) -> int:
        msg = await self.call(MsgType.DEREGISTER_WORKER, rq.deregister_header(worker_id))
        return int(msg.header["released"])

    async def claim(self, worker_id: str, max: int = 1, wait: float = 0.0,
                    types: list[str] | None = None, dependency_results: bool = False) -> list[TaskInfo]:
        """Lease up to ``max`` tasks, waiting up to ``wait`` seconds for the first (other calls
        on the same client go on meanwhile)."""
        timeout = None if self.timeout is None else self.timeout + wait
        spread = await self._started()
        lane = self._home if spread is None else self._lane(spread.claim_shard())
        msg = await self.call(MsgType.CLAIM, rq.claim_header(worker_id, max, wait, types, dependency_results),
                              timeout=timeout,
                              lane=lane)
        return rq.parse_claim(msg)

    async def report(self, worker_id: str,
                     results: list[tuple[dict[str, Any], bytes]]) -> list[dict[str, Any]]:
        """RESULT for many tasks: (result object without result_len, result bytes) pairs."""
        results = list(results)
        spread = await self._started()
        if spread is None:
            header, blob = rq.report_request(worker_id, results)
            return rq.parse_report(await self.call(MsgType.RESULT, header, blob))
        parts = spread.split([item["id"] for item, _ in results])

        async def part(shard: int, where: list[int]) -> list[dict[str, Any]]:
            header, blob = rq.report_request(worker_id, [results[i] for i in where])
            return rq.parse_report(await self.call(MsgType.RESULT, header, blob, lane=self._lane(shard)))
        # One RESULT per owner, at once: none crosses shards.
        answers = await asyncio.gather(*(part(k, where) for k, where in parts.items()))
        out: list[dict[str, Any]] = [{}] * len(results)
        for where, got in zip(parts.values(), answers):
            for i, answer in zip(where, got):
                out[i] = answer
        return out

    async def complete(self, worker_id: str, task: TaskInfo, result: Any = b"") -> dict[str, Any]:
        return (await self.report(worker_id, [rq.completed_item(task, result)]))[0]

    async def fail(self, worker_id: str, task: TaskInfo, error: str, retry: bool = True) -> dict[str, Any]:
        return (await self.report(worker_id, [rq.failed_item(task, error, retry)]))[0]

    async def release(self, worker_id: str, task: TaskInfo) -> dict[str, Any]:
        return (await self.report(worker_id, [rq.released_item(task)]))[0]

    async def heartbeat(self, worker_id: str, active: list[str] | None = None,
                        **info: Any) -> tuple[int, list[str]]:
        msg = await self.call(MsgType.HEARTBEAT, rq.heartbeat_header(worker_id, active, info))
        return rq.parse_heartbeat(msg)

    async def beat(self, worker_id: str, active: list[str] | None = None, **info: Any) -> HeartbeatAnswer:
        """HEARTBEAT, with all of its answer: ``lost``, ``cancelled`` (stop those handlers) and a
        quiet/stop ``command``."""
        msg = await self.call(MsgType.HEARTBEAT, rq.heartbeat_header(worker_id, active, info))
        return parse_beat(msg)

    async def quiet_worker(self, worker_id: str) -> dict[str, Any]:
        """Tell a worker to stop claiming and finish what it holds (at its next heartbeat)."""
        return await self._worker_control(worker_id, "quiet")

    async def stop_worker(self, worker_id: str) -> dict[str, Any]:
        """Quiet a worker, then have it exit once drained (or after its shutdown timeout)."""
        return await self._worker_control(worker_id, "stop")

    async def _worker_control(self, worker_id: str, action: str) -> dict[str, Any]:
        await self.connect()
        require_feature(self.server_info, "worker_control")
        msg = await self.call(MsgType.WORKER_CONTROL, worker_control_header(worker_id, action))
        return parse_commanded(msg)


__all__ = ["AsyncClient", "ConnectionClosed", "Job", "TaskInfo", "TaskFailed", "TaskCancelled",
           "WaitTimeout", "ShardqError"]
