"""The worker run loop behind ``shardq worker``: ``WorkerRuntime``.

The parts: ``outcome`` (a run and how it ended), ``pool`` (where sync handlers run),
``heartbeat`` (the heartbeat thread), ``reports`` (outcomes on their way to the broker), and
``shardq.client.aio_connection`` (the broker connection). ``WorkerRuntime`` itself (its state,
``run()`` and the sweep timer) is here; its behaviour is mixed in from ``connecting`` (HELLO,
REGISTER_WORKER, reconnects), ``cycle`` (claims, runs, outcomes) and ``shutdown`` (signals, the
drain, closing).

**The loop thread** (the main thread; uvloop when installed) owns all bookkeeping and the broker
connections: the home one, and on a multi-shard broker a lane per other shard (connecting.py).
It claims, starts handlers, runs async handlers, enforces timeouts, reports results and handles
signals. Claims and results are pipelined: a CLAIM for the room that just freed and one RESULT per
owning shard for every task that finished since the last ones go out together.

Rules:

1. Bounded prefetch: the worker holds at most ``concurrency`` running tasks plus ``prefetch``
   claimed ones waiting for a slot, and only one claim is outstanding at a time. A waiting task's
   lease (and its ``timeout_seconds``, which counts from the claim) runs while it waits, so the
   prefetch in use is also capped by the handlers' measured run time R: at most
   ``concurrency * PREFETCH_WAIT_S / R`` tasks, so that none waits more than about
   PREFETCH_WAIT_S (1 s) for its slot; none before the first run is measured (R follows a slower
   run at once and a faster one slowly). HEARTBEATs keep their leases, a waiting task's timeout
   counts from its claim, and shutdown hands the waiting ones back unstarted (``released``).
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
from shardq.client.connection import check_tls_options, parse_target
from shardq.client.models import TaskInfo
from shardq.process import EXIT_FATAL, EXIT_OK
from shardq.protocol.frames import MAX_PAYLOAD
from shardq.tls import client_context
from shardq.worker.app import App
from shardq.worker.connecting import BrokerRefused, Connecting, Lane
from shardq.worker.control import WorkerControl
from shardq.worker.cycle import ClaimCycle
from shardq.worker.heartbeat import Heartbeat
from shardq.worker.outcome import RUNNING, Outcome, Run
from shardq.worker.pool import Pool
from shardq.worker.reports import Reports, flush_logs
from shardq.worker.shutdown import Shutdown

log = logging.getLogger("shardq.worker")

SWEEP_S = 0.05              # timeout and log-flush granularity
# Default prefetch per unit of concurrency. Enough tasks per round trip for short handlers
# (docs/worker.md: 4 -> 32 took no-op handlers at concurrency 4 from ~6,000 to ~10,000 tasks/s);
# the run-time cap of rule 1 keeps slow handlers from holding more than about a second of work.
PREFETCH_PER_SLOT = 8


class WorkerRuntime(Connecting, ClaimCycle, Shutdown, WorkerControl):
    """One worker process. ``run()`` blocks until it has drained and returns the exit code.

    ``run()`` owns the process while it runs: it installs SIGTERM/SIGINT handlers (so call it
    from the main thread), and if a thread-pool handler is still running when it is done (timed
    out or released), it ends the process with ``os._exit`` rather than wait for that thread."""

    def __init__(self, app: App, *, url: str = "shardq://127.0.0.1:7070", worker_id: str | None = None,
                 concurrency: int = 4, pool: str = "thread", types: list[str] | None = None,
                 burst: bool = False, heartbeat_interval_ms: int = 15000,
                 shutdown_timeout_s: float = 60.0, max_inactivity_s: float = 60.0,
                 api_key: str | None = None, app_spec: str | None = None,
                 shard: int | None = None, tls_ca: str | None = None, tls_cert: str | None = None,
                 tls_key: str | None = None, spread: bool = True, prefetch: int | None = None) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if pool not in ("thread", "process"):
            raise ValueError(f"pool must be thread or process, got {pool!r}")
        self.app = app
        self.url = url
        self.host, self.port, tls = parse_target(url)  # shardqs://: TLS (shardq/tls.py)
        check_tls_options(url, tls, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key)
        self.ssl_context = (client_context(tls_ca, tls_cert, tls_key, None if shard is None else
                                           rq.check_shard(shard)) if tls else None)
        self._tls = (tls_ca, tls_cert, tls_key)
        if prefetch is not None and prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self.concurrency = concurrency
        self.prefetch = PREFETCH_PER_SLOT * concurrency if prefetch is None else prefetch
        self.spread = spread
        self.pool_kind = pool
        self.types = list(types) if types else sorted(app.handlers)
        unknown = [t for t in self.types if t not in app.handlers]
        if unknown:
            raise ValueError(f"no handler for task type(s) {', '.join(unknown)} "
                             f"(the app has: {', '.join(sorted(app.handlers))})")
        if len(self.types) > 1000:
            raise ValueError("a worker can claim at most 1000 task types; split the app or use --types")
        self.handlers = {t: app.handlers[t] for t in self.types}
        self.wants_dependency_results = any(td.dependency_results for td in self.handlers.values())
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
        self._conn: AsyncConnection | None = None  # the home connection
        self.lanes: dict[int, Lane] = {}  # shard -> the connection to it (connecting.py)
        self._claim_turn = 0              # whose turn it is to be claimed from
        self._home_dry_until = 0.0        # the home shard lent us another's work: skip it till then
        # Claimed tasks waiting for a slot (rule 1), oldest first, and the handlers' mean run time.
        self.prefetched: dict[str, TaskInfo] = {}
        self._claimed_at: dict[str, float] = {}  # monotonic, of each prefetched task
        self.run_avg: float | None = None
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
            except BrokerRefused as exc:
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
            if self.lanes:
                where += ", claiming from every shard"
            log.info("worker %s ready: %d task type(s) %s, concurrency %d, prefetch %d, %s pool, "
                     "broker %s%s, heartbeat every %.3g s%s", self.worker_id, len(self.types),
                     ",".join(self.types[:10]) + (",..." if len(self.types) > 10 else ""),
                     self.concurrency, self.prefetch, self.pool_kind, self.url, where,
                     self.heartbeat_interval,
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

    def _internal_error(self, exc: BaseException) -> None:
        """A bug in the worker itself: say so, and shut down cleanly rather than limp on."""
        log.error("internal error, shutting down: %s", "".join(
            traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip())
        self.exit_code = EXIT_FATAL
        self.request_stop("internal error")

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
                for conn in self._all_conns():
                    if not conn.closed and conn.overdue(now):
                        conn.abort("the broker did not answer in time (worker.max_inactivity_s)")
            self.reports.write_info_lines()
            flush_logs()


__all__ = ["WorkerRuntime"]

