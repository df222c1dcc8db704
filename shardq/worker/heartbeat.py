"""The heartbeat thread of a worker: HEARTBEAT every interval, on its own connection.

Rules:

1. It has its own connection (a plain ``shardq.Client``, ``spread=False``: a HEARTBEAT reaches
   every shard from one connection) and never waits on the loop, so a loop
   busy with handlers cannot starve it; only a handler that holds the GIL can, which is what
   ``pool="process"`` is for.
2. Each beat lists in ``active`` the runs going on and the finished ones whose RESULT the broker
   has not acknowledged: the broker extends only those leases. It reports psutil's CPU %, RSS and
   memory % of the worker and its pool processes.
3. It reads the loop's bookkeeping without locks (copies of dicts, no iteration while they
   change) and hands lost leases back to the loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import psutil

from shardq.client.sync import Client

if TYPE_CHECKING:
    from shardq.worker.runtime import WorkerRuntime

log = logging.getLogger("shardq.worker")


class Heartbeat(threading.Thread):
    """HEARTBEAT every interval from its own thread and connection."""

    def __init__(self, worker: WorkerRuntime, interval: float) -> None:
        super().__init__(name="shardq-heartbeat", daemon=True)
        self.worker = worker
        self.interval = interval
        self.wake = threading.Event()
        self.stopping = False
        self.failures = 0
        self.last_ok = time.monotonic()

    def run(self) -> None:
        w = self.worker
        client = Client(w.url, timeout=max(2.0, min(30.0, w.max_inactivity_s)), api_key=w.api_key,
                        name="shardq-worker-heartbeat", spread=False)  # one reaches every shard
        self._proc = psutil.Process()
        self._proc.cpu_percent(None)
        self._children: dict[int, Any] = {}
        self._total = psutil.virtual_memory().total or 1
        nxt = time.monotonic() + self.interval
        try:
            while not self.stopping:
                self.wake.wait(max(0.0, nxt - time.monotonic()))
                self.wake.clear()
                if self.stopping:
                    return
                nxt = time.monotonic() + self.interval
                self.beat(client)
        finally:
            client.close()

    def _usage(self) -> tuple[float, int, float]:
        import psutil
        cpu = self._proc.cpu_percent(None)
        rss = self._proc.memory_info().rss
        pids = self.worker.pool.child_pids() if self.worker.pool is not None else []
        for pid in list(self._children):
            if pid not in pids:
                del self._children[pid]
        for pid in pids:
            try:
                p = self._children.get(pid)
                if p is None:
                    p = self._children[pid] = psutil.Process(pid)
                    p.cpu_percent(None)
                cpu += p.cpu_percent(None)
                rss += p.memory_info().rss
            except psutil.Error:
                self._children.pop(pid, None)
        return round(cpu, 1), rss, round(rss * 100.0 / self._total, 2)

    def beat(self, client: Any) -> None:
        w = self.worker
        runs = list(w.running.values())
        # Running, waiting for a slot (prefetched), and finished but not yet acknowledged: the
        # broker extends only these leases.
        active = [r.ctx.id for r in runs] + list(w.prefetched) + [
            tid for tid in list(w.reports.unreported) if tid not in w.running]
        try:
            cpu, rss, mem = self._usage()
            answer = client.beat(w.worker_id, active=active, cpu_percent=cpu, memory_rss=rss,
                                 memory_percent=mem, state=w.state)
        except Exception as exc:  # noqa: BLE001 -- keep beating; the broker may come back
            self.failures += 1
            if self.failures == 1 or self.failures % 20 == 0:
                log.warning("heartbeat failed (%d in a row, last success %.1f s ago): %s: %s",
                            self.failures, time.monotonic() - self.last_ok, type(exc).__name__, exc)
            return
        if self.failures:
            log.info("heartbeat ok again after %d failures", self.failures)
        self.failures = 0
        self.last_ok = time.monotonic()
        cancelled = set(answer.cancelled)
        lost = set(answer.lost) - cancelled
        waiting = list(w.prefetched.values())
        for ids, handle in ((cancelled, w.on_cancelled), (lost, w.on_lost)):
            if ids:
                pairs = [(r.ctx.id, r.ctx.attempt) for r in runs if r.ctx.id in ids] + [
                    (t.id, t.attempt) for t in waiting if t.id in ids]
                self._to_loop(handle, pairs)
        if answer.command is not None:
            self._to_loop(w.on_command, answer.command)

    def _to_loop(self, fn: Any, arg: Any) -> None:
        try:
            self.worker.loop.call_soon_threadsafe(fn, arg)
        except RuntimeError:  # the loop is closed: we are exiting anyway
            pass

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()


__all__ = ["Heartbeat"]
