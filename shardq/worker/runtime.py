"""The worker run loop behind ``shardq worker``: ``WorkerRuntime``.

The parts: ``outcome`` (a run and how it ended), ``pool`` (where sync handlers run),
``heartbeat`` (the heartbeat thread), ``reports`` (outcomes on their way to the broker), and
``shardq.client.aio_connection`` (the broker connection).

**The loop thread** (the main thread; uvloop when installed) owns all bookkeeping and one broker
connection. It claims, starts handlers, runs async handlers, enforces timeouts, reports results
and handles signals. Claims and results are pipelined on that connection: a CLAIM for the slots
that just freed and one RESULT for every task that finished since the last one go out together.

Rules:

1. No prefetch: a claim asks for at most ``concurrency - running`` tasks, and only one claim is
   outstanding at a time, so the worker never holds a lease it has no slot for.
2. A run ends exactly once (``shardq.worker.outcome``). A timed-out or released thread-pool
   handler cannot be stopped: its thread is retired and replaced, and its late result is
   dropped. Async handlers are cancelled; pool processes killed.
3. Results are batched and logged when the broker answers (``shardq.worker.reports``).
4. Shutdown (SIGTERM/SIGINT, or the queue running dry with ``burst``): stop claiming, wait up to
   ``shutdown_timeout`` for running tasks, release the rest, deliver every outcome, deregister
   (which also releases any lease this worker still holds), exit 0. A second signal exits at
   once with code 4, leaving the broker to reclaim the leases.
5. The claimed task record is the truth about a run: its ``timeout_seconds`` bounds it, and its
   ``max_retries`` and ``retry_count`` are what the log line says; the broker decides whether a
   failure is retried. The decorator's settings are only defaults for tasks submitted through
   it (``TaskDef.job``/``submit``). Every request is built by ``shardq.client.requests``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import signal
import socket
import time
import traceback
from collections import deque
from typing import Any

from shardq.client import requests as rq
from shardq.client.aio_connection import AsyncConnection
from shardq.client.connection import ConnectionClosed, parse_url
from shardq.client.models import TaskInfo
from shardq.errors import Forbidden, ProtocolError, Unauthorized, WireError
from shardq.process import EXIT_FATAL, EXIT_FORCED, EXIT_OK
from shardq.protocol.frames import MAX_PAYLOAD, MsgType
from shardq.protocol.requests import MAX_CLAIM
from shardq.worker.app import App, TaskContext
from shardq.worker.heartbeat import Heartbeat
from shardq.worker.outcome import ABANDONED, DONE, RUNNING, Outcome, Run, failure, success
from shardq.worker.pool import Pool
from shardq.worker.reports import Reports, flush_logs

log = logging.getLogger("shardq.worker")

CLAIM_WAIT_S = 1.0          # long-poll per CLAIM: an idle worker sends one a second
SWEEP_S = 0.05              # timeout and log-flush granularity


class _Fatal(Exception):
    """The worker cannot go on (bad credentials, a broker that refuses it)."""


class WorkerRuntime:
    """One worker process. ``run()`` blocks until it has drained and returns the exit code.

    ``run()`` owns the process while it runs: it installs SIGTERM/SIGINT handlers (so call it
    from the main thread), and if a thread-pool handler is still running when it is done (timed
    out or released), it ends the process with ``os._exit`` rather than wait for that thread."""

    def __init__(self, app: App, *, url: str = "shardq://127.0.0.1:7070", worker_id: str | None = None,
                 concurrency: int = 4, pool: str = "thread", types: list[str] | None = None,
                 burst: bool = False, heartbeat_interval_ms: int = 15000,
                 shutdown_timeout_s: float = 60.0, max_inactivity_s: float = 60.0,
                 api_key: str | None = None, app_spec: str | None = None,
                 shard: int | None = None) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if pool not in ("thread", "process"):
            raise ValueError(f"pool must be thread or process, got {pool!r}")
        self.app = app
        self.url = url
        self.host, self.port = parse_url(url)
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self.concurrency = concurrency
        self.pool_kind = pool
        self.types = list(types) if types else sorted(app.handlers)
        unknown = [t for t in self.types if t not in app.handlers]
        if unknown:
            raise ValueError(f"no handler for task type(s) {', '.join(unknown)} "
                             f"(the app has: {', '.join(sorted(app.handlers))})")
        if len(self.types) > 1000:
            raise ValueError("a worker can claim at most 1000 task types; split the app or use --types")
        self.handlers = {t: app.handlers[t] for t in self.types}
        self.burst = burst
        self.heartbeat_interval = heartbeat_interval_ms / 1000
        self.shutdown_timeout = shutdown_timeout_s
        self.max_inactivity_s = max_inactivity_s
        self.api_key = api_key
        self.app_spec = app_spec
        # The HELLO shard hint: a worker per shard claims that shard's work without a hop.
        self.shard_hint = None if shard is None else rq.check_shard(shard)

        self.state = "running"
        self.running: dict[str, Run] = {}
        # Finished runs whose RESULT the broker has not acknowledged yet: HEARTBEAT lists them in
        # `active` with the running ones, since the broker extends only the leases listed there.
        self.pool: Pool | None = None
        self.server_info: dict[str, Any] = {}
        self.max_result = MAX_PAYLOAD
        self.exit_code = EXIT_OK
        self.reports = Reports(self.worker_id, max_inactivity_s, self._retry_later, self._answered)
        self._claiming = False      # a CLAIM is in flight
        self._claim_idle = False
        self._burst_wait = False
        self._ticks = 0             # runs ended + RESULT answers (for --burst)
        self._claim_ticks = 0
        self._claim_not_before = 0.0
        self._pump_scheduled = False
        self._started = False
        self._done: deque[tuple[Run, Outcome]] = deque()
        self._wake_pending = False
        self._deadlines: list[tuple[float, int, Run]] = []
        self._seq = itertools.count()
        self._conn: AsyncConnection | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._heartbeat: Heartbeat | None = None
        self._signals = 0
        self._stop_reason = ""

    # -- entry -------------------------------------------------------------------------------

    def run(self) -> int:
        try:
            import uvloop
            runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        except ImportError:  # pragma: no cover - uvloop is a dependency
            runner = asyncio.Runner()
        with runner:
            code = runner.run(self._main())
        if self.pool is not None and self.pool.busy():
            # A thread still inside a handler (timed out or released) would hold up interpreter
            # exit, and one that holds the GIL would hang it: leave now.
            log.warning("%d handler thread(s) still running; exiting without waiting for them",
                        self.pool.busy())
            flush_logs()
            os._exit(code)
        return code

    async def _main(self) -> int:
        self.loop = loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._progress = asyncio.Event()  # set whenever a run ends or an answer comes back
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            try:
                conn = await self._until_stopped(self._get_conn())
            except _Fatal as exc:
                log.error("%s", exc)
                return EXIT_FATAL
            if conn is None:
                return EXIT_OK  # stopped before the broker could be reached
            self._adapt_to_server()
            if any(not td.is_async for td in self.handlers.values()):
                self.pool = Pool(self.pool_kind, self.concurrency, self.app_spec,
                                 self._complete_threadsafe, lambda: self.state == "running",
                                 self.worker_id)
                self.pool.start()
                if self.pool_kind == "process":
                    ok = await self._until_stopped(asyncio.to_thread(self.pool.wait_ready, 120.0))
                    if ok is False:
                        log.error("the process pool did not start")
                        self.exit_code = EXIT_FATAL
                        self.request_stop("the process pool did not start")
            self._heartbeat = Heartbeat(self, self.heartbeat_interval)
            self._heartbeat.start()
            where = ""
            if self.server_info.get("shards", 1) > 1:
                where = f" (shard {self.server_info.get('shard')} of {self.server_info['shards']})"
            log.info("worker %s ready: %d task type(s) %s, concurrency %d, %s pool, broker %s%s, "
                     "heartbeat every %.3g s%s", self.worker_id, len(self.types),
                     ",".join(self.types[:10]) + (",..." if len(self.types) > 10 else ""),
                     self.concurrency, self.pool_kind, self.url, where, self.heartbeat_interval,
                     ", burst" if self.burst else "")
            self._started = True
            self._pump()
            sweeper = loop.create_task(self._sweep_loop())
            await self._stop.wait()
            await self._drain()
            sweeper.cancel()
            return self.exit_code
        finally:
            await self._close()

    async def _until_stopped(self, aw: Any) -> Any:
        """``aw``'s value, or None if a stop is requested first."""
        task = asyncio.ensure_future(aw)
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait((task, stop), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if task.done():
            return task.result()
        task.cancel()
        return None

    def _internal_error(self, exc: BaseException) -> None:
        """A bug in the worker itself: say so, and shut down cleanly rather than limp on."""
        log.error("internal error, shutting down: %s", "".join(
            traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip())
        self.exit_code = EXIT_FATAL
        self.request_stop("internal error")

    def _adapt_to_server(self) -> None:
        info = self.server_info
        self.max_result = int(info.get("max_payload") or MAX_PAYLOAD)
        limits = [int(info[k]) for k in ("heartbeat_ms",) if info.get(k)]
        if info.get("lease_ms"):
            limits.append(int(info["lease_ms"]) // 2)
        if limits and min(limits) / 1000 < self.heartbeat_interval:
            log.info("heartbeat interval lowered from %.3g s to %.3g s to fit the broker "
                     "(heartbeat %s ms, lease %s ms)", self.heartbeat_interval, min(limits) / 1000,
                     info.get("heartbeat_ms"), info.get("lease_ms"))
            self.heartbeat_interval = max(0.05, min(limits) / 1000)

    # -- connection --------------------------------------------------------------------------

    async def _get_conn(self) -> AsyncConnection:
        while True:
            conn = self._conn
            if conn is not None and not conn.closed:
                return conn
            if self._connect_task is None or self._connect_task.done():
                self._connect_task = self.loop.create_task(self._connect())
            await asyncio.shield(self._connect_task)

    async def _connect(self) -> None:
        delay, tries = 0.1, 0
        while True:
            tries += 1
            conn: AsyncConnection | None = None
            try:
                _, conn = await asyncio.wait_for(self.loop.create_connection(
                    lambda: AsyncConnection(self.loop, coalesce=True, on_bug=self._internal_error), self.host, self.port), self.max_inactivity_s)
                hello = rq.hello_header("shardq-worker", self.api_key, self.shard_hint)
                msg = await conn.request(MsgType.HELLO, hello, timeout=self.max_inactivity_s)
                self.server_info = dict(msg.header)
                self._check_shard()
                await conn.request(MsgType.REGISTER_WORKER, rq.register_header(self.worker_id, {
                    "hostname": socket.gethostname(), "pid": os.getpid(), "types": self.types,
                    "concurrency": self.concurrency}), timeout=self.max_inactivity_s)
            except (Unauthorized, Forbidden, ProtocolError) as exc:
                if conn is not None:
                    conn.close()
                raise _Fatal(f"the broker at {self.url} refused this worker: {exc.code}: {exc}") from None
            except (TimeoutError, OSError, ConnectionClosed, WireError) as exc:
                if conn is not None:
                    conn.close()
                if tries == 1 or tries % 10 == 0:
                    log.warning("cannot reach the broker at %s (%s: %s); retrying", self.url,
                                type(exc).__name__, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if tries > 1 or self._conn is not None:
                log.info("connected to the broker at %s", self.url)
            self._conn = conn
            self._progress.set()
            self._schedule_pump()
            return

    def _check_shard(self) -> None:
        """The broker ignores a shard hint it cannot honour (out of range, or that shard is
        restarting): say so, since claims will then cross shards."""
        got, shards = self.server_info.get("shard"), self.server_info.get("shards")
        if self.shard_hint is None or got == self.shard_hint:
            return
        if isinstance(shards, int) and self.shard_hint >= shards:
            log.warning("--shard %d: the broker has %d shard(s) (0..%d); served by shard %s instead",
                        self.shard_hint, shards, shards - 1, got)
        else:
            log.warning("--shard %d: that shard is not serving (restarting?); served by shard %s "
                        "for this connection", self.shard_hint, got)

    async def _request(self, msg_type: MsgType, header: dict[str, Any], blob: bytes = b"",
                       timeout: float | None = None) -> Any:
        conn = await self._get_conn()
        return await conn.request(msg_type, header, blob,
                                  self.max_inactivity_s if timeout is None else timeout)

    # -- the claim / result cycle ----------------------------------------------------------------
    #
    # Driven by callbacks, not Tasks: ``_pump`` sends a RESULT when outcomes wait and none is in
    # flight, and a CLAIM for the free slots when none is in flight; every answer, every finished
    # run and every reconnect pumps again (at most once per loop turn, so that a RESULT and a CLAIM
    # leave in one write).

    def _schedule_pump(self) -> None:
        if not self._pump_scheduled:
            self._pump_scheduled = True
            self.loop.call_soon(self._pump)

    def _pump(self) -> None:
        self._pump_scheduled = False
        if not self._started:
            return
        try:
            conn = self._conn
            if conn is None or conn.closed:
                self._reconnect()
                return
            now = time.monotonic()
            if self.reports.ready(now):
                self.reports.send(conn)
            if (not self._claiming and not self._stop.is_set() and not self._burst_wait
                    and now >= self._claim_not_before):
                free = self.concurrency - len(self.running)
                if free > 0:
                    self._send_claim(conn, min(free, MAX_CLAIM))
        except ConnectionClosed:
            self._reconnect()
        except Exception as exc:  # noqa: BLE001
            self._internal_error(exc)

    def _reconnect(self) -> None:
        if self._connect_task is None or self._connect_task.done():
            self._connect_task = self.loop.create_task(self._connect())
            self._connect_task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[None]) -> None:
        """A reconnect started by the pump ended (on success, _connect pumps itself)."""
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, _Fatal):
            log.error("%s", exc)
            self.exit_code = EXIT_FATAL
            self.request_stop(str(exc))
        elif exc is not None:
            self._internal_error(exc)

    def _retry_later(self, seconds: float) -> float:
        self.loop.call_later(seconds, self._schedule_pump)
        return time.monotonic() + seconds

    def _send_claim(self, conn: AsyncConnection, n: int) -> None:
        wait_ms = 0 if self.burst else int(CLAIM_WAIT_S * 1000)
        # For --burst: an empty answer means "done" only if nothing could have made a task ready
        # since this claim left (a run ending, an outcome not yet acknowledged).
        self._claim_idle = not self.running and self.reports.idle
        self._claim_ticks = self._ticks
        conn.send(MsgType.CLAIM, rq.claim_header(self.worker_id, n, wait_ms / 1000, self.types), b"",
                  self._on_claim, wait_ms / 1000 + self.max_inactivity_s)
        self._claiming = True

    def _on_claim(self, msg: Any, exc: BaseException | None) -> None:
        self._claiming = False
        self._progress.set()
        if exc is not None:
            if isinstance(exc, WireError):
                log.warning("claim refused (%s: %s); retrying in 1 s", exc.code, exc)
                self._claim_not_before = self._retry_later(1.0)
            self._schedule_pump()  # reconnects first if the connection broke
            return
        tasks = rq.parse_claim(msg)
        if tasks:
            if self._stop.is_set():  # shutting down: hand them straight back
                for task in tasks:
                    run = Run(self._context(task), self.handlers[task.type], time.perf_counter())
                    run.state = DONE
                    self._push_result(run, Outcome("released", note="not started, shutting down"))
            else:
                for task in tasks:
                    self._start(task)
        elif self.burst:
            if self._claim_idle:
                self.request_stop("burst: no ready task left")
                return
            if self._ticks == self._claim_ticks:  # nothing happened since the claim left:
                self._burst_wait = True  # claim again once a run ends or a RESULT lands
        self._pump()

    def _context(self, task: TaskInfo) -> TaskContext:
        """The handler's view of the claimed task record: its own stored numbers (max_retries,
        retry_count, timeout_seconds), whatever the decorator says (rule 5)."""
        return TaskContext(task.id, task.type, task.attempt, task.retry_count, task.max_retries,
                           task.timeout_seconds, task.priority, task.payload or b"", self.worker_id)

    def _start(self, task: TaskInfo) -> None:
        ctx = self._context(task)
        td = self.handlers[ctx.type]
        old = self.running.get(ctx.id)
        if old is not None:  # the broker took it back from us and gave it to us again
            self._abandon(old)
            self._log_lost(old)
        run = Run(ctx, td, time.perf_counter())
        # The task's stored timeout counts from the claim on the broker's clock: fire a little
        # early so that the worker, which can stop the handler, is the one that fails it.
        limit = float(ctx.timeout_seconds)
        deadline = time.monotonic() + limit - min(0.25, limit / 10)
        run.limit, run.deadline = limit, deadline
        self.running[ctx.id] = run
        heapq.heappush(self._deadlines, (deadline, next(self._seq), run))
        if td.is_async:
            run.atask = self.loop.create_task(self._run_async(run))
        else:
            assert self.pool is not None
            self.pool.submit(run)

    async def _run_async(self, run: Run) -> None:
        ctx, td = run.ctx, run.td
        t0 = time.perf_counter()
        try:
            value = await td.fn(ctx)
        except asyncio.CancelledError:
            if run.state == RUNNING:  # not ours: the loop itself is going away
                raise
            return
        except BaseException as exc:  # noqa: B036 -- the handler's failure, reported as such
            self._finish(run, failure(exc, time.perf_counter() - t0))
            return
        self._finish(run, success(value, time.perf_counter() - t0))

    # -- finishing ---------------------------------------------------------------------------------

    def _complete_threadsafe(self, run: Run, out: Outcome) -> None:
        """Pool threads: hand an outcome to the loop (one wake-up for a burst of them)."""
        self._done.append((run, out))
        if not self._wake_pending:
            self._wake_pending = True
            try:
                self.loop.call_soon_threadsafe(self._drain_done)
            except RuntimeError:  # loop closed: exiting
                pass

    def _drain_done(self) -> None:
        self._wake_pending = False
        done = self._done
        while done:
            run, out = done.popleft()
            self._finish(run, out)

    def _finish(self, run: Run, out: Outcome) -> None:
        if run.state != RUNNING:
            return  # timed out, lost or released first: this late outcome is discarded
        run.state = DONE
        if self.running.get(run.ctx.id) is run:
            del self.running[run.ctx.id]
        if out.status == "completed" and len(out.result) > self.max_result:
            out = Outcome("failed", b"", f"TooLarge: the result is {len(out.result)} bytes; the broker "
                          f"takes at most {self.max_result}", False, out.elapsed)
        self._push_result(run, out)

    def _push_result(self, run: Run, out: Outcome) -> None:
        self.reports.push(run, out)
        self._ticks += 1
        self._burst_wait = False
        self._progress.set()
        self._schedule_pump()

    def _answered(self) -> None:
        """A RESULT was answered (or failed): its runs may free the way for a claim."""
        self._ticks += 1
        self._burst_wait = False
        self._progress.set()
        self._pump()

    def _abandon(self, run: Run) -> None:
        """End a run that is still going: it no longer counts, and whatever runs it is stopped."""
        run.state = ABANDONED
        if self.running.get(run.ctx.id) is run:
            del self.running[run.ctx.id]
        run.ctx._cancelled = True
        if run.atask is not None:
            run.atask.cancel()
        elif self.pool is not None:
            self.pool.abandon(run)
        self._ticks += 1
        self._burst_wait = False
        self._progress.set()
        self._schedule_pump()

    def _timeout(self, run: Run) -> None:
        how = {"async": "cancelled", "sync": "killed" if self.pool_kind == "process" else
               "abandoned (a thread cannot be stopped; whatever it returns later is discarded)"}
        elapsed = time.perf_counter() - run.start
        self._abandon(run)
        self._push_result(run, Outcome(
            "failed", b"", f"timeout: the handler ran longer than {run.limit:g} s and was "
            f"{how[run.kind]} by worker {self.worker_id}", True, elapsed,
            note="timed out"))

    def on_lost(self, pairs: list[tuple[str, int]]) -> None:
        """The heartbeat says these leases are no longer ours (expired, or timed out by the broker)."""
        for tid, attempt in pairs:
            run = self.running.get(tid)
            if run is not None and run.ctx.attempt == attempt:
                self._abandon(run)
                self._log_lost(run)

    def _log_lost(self, run: Run) -> None:
        log.warning("task %s %s lease lost after %.1f ms (attempt %d): run abandoned, its result "
                    "will not be reported", run.ctx.id, run.ctx.type,
                    (time.perf_counter() - run.start) * 1000, run.ctx.attempt)

    # -- timers ---------------------------------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        last_conn_check = 0.0
        while True:
            await asyncio.sleep(SWEEP_S)
            self._drain_done()  # outcomes already in hand beat a deadline that is just passing
            now = time.monotonic()
            heap = self._deadlines
            while heap and heap[0][0] <= now:
                run = heapq.heappop(heap)[2]
                if run.state == RUNNING:
                    self._timeout(run)
            if len(heap) > 2 * len(self.running) + 1024:  # drop entries of finished runs
                self._deadlines = [e for e in heap if e[2].state == RUNNING]
                heapq.heapify(self._deadlines)
            if now - last_conn_check >= 0.5:
                last_conn_check = now
                conn = self._conn
                if conn is not None and not conn.closed and conn.overdue(now):
                    conn.abort("the broker did not answer in time (worker.max_inactivity_s)")
            self.reports.write_info_lines()
            flush_logs()

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            pass

    # -- stopping -------------------------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()
            self._progress.set()

    def _on_signal(self, sig: int) -> None:
        self._signals += 1
        name = signal.Signals(sig).name
        if self._signals > 1:
            log.warning("%s again: exiting now; the broker will reclaim %d running task(s)", name,
                        len(self.running))
            if self.pool is not None:
                self.pool.kill_children()
            self.reports.write_info_lines()
            flush_logs()
            os._exit(EXIT_FORCED)
        log.info("%s: draining: no new tasks; waiting up to %g s for %d running task(s); "
                 "send it again to exit at once", name, self.shutdown_timeout, len(self.running))
        self.request_stop(name)

    async def _wait_until(self, done: Any, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until ``done()``; re-checked whenever there is progress."""
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._progress.clear()
            if done():
                break
            try:
                await asyncio.wait_for(self._progress.wait(), left)
            except TimeoutError:
                pass
        return True

    async def _drain(self) -> None:
        self.state = "draining"
        if self._heartbeat is not None:
            self._heartbeat.wake.set()  # tell the broker now
        if self._stop_reason.startswith("burst"):
            log.info("%s; shutting down", self._stop_reason)
        if not await self._wait_until(lambda: not self.running, self.shutdown_timeout):
            log.warning("shutdown timeout: releasing %d running task(s)", len(self.running))
            for run in list(self.running.values()):
                elapsed = time.perf_counter() - run.start
                self._abandon(run)
                self._push_result(run, Outcome("released", elapsed=elapsed,
                                               note="shutdown timeout reached"))
        # The claim in flight (at most CLAIM_WAIT_S) hands back what it gets before we deregister;
        # then every outcome is delivered (bounded: a broker that is gone reclaims by itself).
        await self._wait_until(lambda: not self._claiming, CLAIM_WAIT_S + self.max_inactivity_s)
        delivered = await self._wait_until(lambda: self.reports.idle,
                                           self.max_inactivity_s)
        self.reports.write_info_lines()
        if not delivered:
            log.error("%d outcome(s) could not be delivered; the broker will reclaim those tasks",
                      len(self.reports.queue))
            self.exit_code = self.exit_code or EXIT_FATAL
        if self._heartbeat is not None:  # before DEREGISTER: a later heartbeat would re-register us
            self._heartbeat.stop()
            await asyncio.to_thread(self._heartbeat.join, 10.0)
        connected = self._conn is not None and not self._conn.closed
        limit = min(10.0 if connected else 2.0, self.max_inactivity_s)
        try:
            msg = await asyncio.wait_for(self._request(
                MsgType.DEREGISTER_WORKER, rq.deregister_header(self.worker_id), timeout=limit), limit)
            released = int(msg.header.get("released", 0))
            if released:
                log.info("deregistered; the broker released %d more lease(s)", released)
        except (TimeoutError, Exception) as exc:  # noqa: BLE001 -- the broker copes without
            log.warning("DEREGISTER failed (%s: %s); the broker will drop this worker when its "
                        "heartbeats stop", type(exc).__name__, exc)
        log.info("worker %s stopped: %d completed, %d failed", self.worker_id,
                 self.reports.completed, self.reports.failed)

    async def _close(self) -> None:
        if self._heartbeat is not None and self._heartbeat.is_alive():
            self._heartbeat.stop()
        if self.pool is not None:
            await asyncio.to_thread(self.pool.stop)
        if self._conn is not None:
            self._conn.close()
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()
        self.reports.write_info_lines()
        flush_logs()


__all__ = ["WorkerRuntime"]

