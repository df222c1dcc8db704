"""The claim/result cycle of a worker: claim for the free slots, start a run for each task, and
carry each run's one outcome (rule 2 of runtime.py) to the RESULT batch (reports.py).

Rule 1 of runtime.py (bounded prefetch) is kept here: ``_pump`` claims at most
``concurrency + prefetch_now() - running - prefetched`` tasks, with one CLAIM in flight at a time.
On a multi-shard broker the claims go to the shards' lanes in turn (connecting.py), skipping for
DRY_S a shard that answered with another shard's work (it had none of its own); each RESULT goes
to the owner of its tasks (reports.py).

A mixin of ``WorkerRuntime`` (runtime.py), like the other parts: the loop's bookkeeping
(``running``, ``reports``, the connection, the stop event) is one set of state on the runtime,
which the heartbeat thread reads too, so each part uses it as ``self.…`` and ``WorkerRuntime``
stays the one class a caller builds.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from typing import Any

from shardq.client import requests as rq
from shardq.client.connection import ConnectionClosed
from shardq.client.models import TaskInfo
from shardq.errors import WireError
from shardq.protocol.frames import MsgType
from shardq.protocol.requests import MAX_CLAIM
from shardq.worker.app import TaskContext
from shardq.worker.dep_context import DependencyResults
from shardq.worker.outcome import ABANDONED, DONE, RUNNING, Outcome, Run, failure, success

log = logging.getLogger("shardq.worker")

CLAIM_WAIT_S = 1.0          # long-poll per CLAIM: an idle worker sends one a second
PREFETCH_WAIT_S = 1.0       # a prefetched task waits about this long for its slot at most
RUN_AVG_WEIGHT = 0.05       # of a faster run in the moving mean of run times (a slower one: all)
DRY_S = 0.5                 # a shard found without work of ours is asked again after this


class ClaimCycle:
    """Claims, the runs they start, and the outcomes the runs end with."""

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
            if self.prefetched and not self._stop.is_set():
                self._start_prefetched()
            if self.reports.ready(now):
                self.reports.send(self._lane_conn)
            if (not self._claiming and not self._stop.is_set() and not self._burst_wait
                    and now >= self._claim_not_before and self.state == "running"):
                room = self.concurrency + self.prefetch_now() - len(self.running) - len(self.prefetched)
                if room > 0:
                    self._send_claim(self._claim_shard(now), min(room, MAX_CLAIM))
        except ConnectionClosed:
            self._reconnect()
        except Exception as exc:  # noqa: BLE001
            self._internal_error(exc)

    def prefetch_now(self) -> int:
        """How many claimed tasks may wait for a slot now (runtime.py rule 1)."""
        if not self.prefetch or self.run_avg is None:
            return 0
        return min(self.prefetch, int(self.concurrency * PREFETCH_WAIT_S / max(self.run_avg, 1e-6)))

    def _claim_shard(self, now: float) -> int | None:
        """The shard to claim from next: the lanes (and home) in turn, skipping dry ones."""
        if not self.lanes:
            return None
        order = [None, *self.lanes]  # None: the home connection
        n = len(order)
        for i in range(n):
            k = order[(self._claim_turn + i) % n]
            if (self._home_dry_until if k is None else self.lanes[k].dry_until) <= now:
                self._claim_turn = (self._claim_turn + i + 1) % n
                return k
        return None

    def _retry_later(self, seconds: float) -> float:
        self.loop.call_later(seconds, self._schedule_pump)
        return time.monotonic() + seconds

    def _send_claim(self, shard: int | None, n: int) -> None:
        conn = self._conn if shard is None else self._lane_conn(shard)
        if conn is self._conn:
            shard = None
        wait_ms = 0 if self.burst else int(CLAIM_WAIT_S * 1000)
        # For --burst: an empty answer means "done" only if nothing could have made a task ready
        # since this claim left (a run ending, an outcome not yet acknowledged).
        self._claim_idle = not self.running and not self.prefetched and self.reports.idle
        self._claim_ticks = self._ticks
        assert conn is not None
        conn.send(MsgType.CLAIM, rq.claim_header(self.worker_id, n, wait_ms / 1000, self.types,
                                                 self.wants_dependency_results), b"",
                  lambda msg, exc: self._on_claim(shard, msg, exc), wait_ms / 1000 + self.max_inactivity_s)
        self._claiming = True

    def _on_claim(self, shard: int | None, msg: Any, exc: BaseException | None) -> None:
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
            if self.lanes:
                own = self.server_info.get("shard") if shard is None else shard
                if any(t.shard != own for t in tasks):  # lent another's work: it has none left
                    if shard is None:
                        self._home_dry_until = time.monotonic() + DRY_S
                    else:
                        self.lanes[shard].dry_until = time.monotonic() + DRY_S
            if self._stop.is_set() or self.state != "running":  # quiet or stopping: hand them back
                for task in tasks:
                    self._release_unstarted(task)
            else:
                free = self.concurrency - len(self.running)
                for task in tasks:
                    if free > 0:
                        self._start(task)
                        free -= 1
                    else:
                        self.prefetched[task.id] = task
                        self._claimed_at[task.id] = time.monotonic()
        elif self.burst:
            if self._claim_idle:
                self.request_stop("burst: no ready task left")
                return
            if self._ticks == self._claim_ticks:  # nothing happened since the claim left:
                self._burst_wait = True  # claim again once a run ends or a RESULT lands
        self._pump()

    def _start_prefetched(self) -> None:
        free = self.concurrency - len(self.running)
        waiting = self.prefetched
        while free > 0 and waiting:
            task = waiting.pop(next(iter(waiting)))
            self._start(task, self._claimed_at.pop(task.id, None))
            free -= 1

    def _release_unstarted(self, task: TaskInfo, note: str = "not started, shutting down") -> None:
        run = Run(self._context(task), self.handlers[task.type], time.perf_counter())
        run.owner = task.shard
        run.state = DONE
        self._push_result(run, Outcome("released", note=note))

    def release_prefetched(self) -> None:
        """Shutdown: the tasks still waiting for a slot go back to the broker unstarted."""
        waiting, self.prefetched = self.prefetched, {}
        self._claimed_at.clear()
        for task in waiting.values():
            self._release_unstarted(task)

    def _context(self, task: TaskInfo) -> TaskContext:
        """The handler's view of the claimed task record: its own stored numbers (max_retries,
        retry_count, timeout_seconds), whatever the decorator says (rule 5)."""
        ctx = TaskContext(task.id, task.type, task.attempt, task.retry_count, task.max_retries,
                          task.timeout_seconds, task.priority, task.payload or b"", self.worker_id)
        if task.depends_on:
            ctx._deps = DependencyResults(task.depends_on, dict(task.dependency_results or {}),
                                          (self.url, self.api_key, *self._tls))
        return ctx

    def _start(self, task: TaskInfo, claimed_at: float | None = None) -> None:
        ctx = self._context(task)
        td = self.handlers[ctx.type]
        old = self.running.get(ctx.id)
        if old is not None:  # the broker took it back from us and gave it to us again
            self._abandon(old)
            self._log_lost(old)
        run = Run(ctx, td, time.perf_counter())
        run.owner = task.shard
        # The task's stored timeout counts from the claim on the broker's clock: fire a little
        # early so that the worker, which can stop the handler, is the one that fails it.
        limit = float(ctx.timeout_seconds)
        # A prefetched task's time counts from its claim too, not from when a slot freed.
        deadline = (claimed_at or time.monotonic()) + limit - min(0.25, limit / 10)
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
        avg = self.run_avg  # up at once to a slower run, down slowly: prefetch errs on the safe side
        self.run_avg = out.elapsed if avg is None or out.elapsed > avg else \
            avg + RUN_AVG_WEIGHT * (out.elapsed - avg)
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
        run.ctx.cancel()
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
            waiting = self.prefetched.get(tid)
            if waiting is not None and waiting.attempt == attempt:
                del self.prefetched[tid]  # not started: nothing to stop, nothing to report
                self._claimed_at.pop(tid, None)
                log.warning("task %s %s lease lost while it waited for a slot (attempt %d)",
                            tid, waiting.type, attempt)
                continue
            run = self.running.get(tid)
            if run is not None and run.ctx.attempt == attempt:
                self._abandon(run)
                self._log_lost(run)

    def _log_lost(self, run: Run) -> None:
        log.warning("task %s %s lease lost after %.1f ms (attempt %d): run abandoned, its result "
                    "will not be reported", run.ctx.id, run.ctx.type,
                    (time.perf_counter() - run.start) * 1000, run.ctx.attempt)
