"""Stopping a worker: the signals, the drain, and closing what it holds (rule 4 of runtime.py).

SIGTERM/SIGINT (or ``--burst`` running dry) stop the claiming; the drain waits up to
``shutdown_timeout`` for the running tasks, releases the rest, delivers every outcome and
deregisters. A second signal exits at once with code 4.

A mixin of ``WorkerRuntime`` (runtime.py), like the other parts: the loop's bookkeeping
(``running``, ``reports``, the connection, the stop event) is one set of state on the runtime,
which the heartbeat thread reads too, so each part uses it as ``self.…`` and ``WorkerRuntime``
stays the one class a caller builds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import Any

from shardq.client import requests as rq
from shardq.process import EXIT_FATAL, EXIT_FORCED
from shardq.protocol.frames import MsgType
from shardq.worker.control import STOP_ORDERED
from shardq.worker.cycle import CLAIM_WAIT_S
from shardq.worker.outcome import Outcome
from shardq.worker.reports import flush_logs

log = logging.getLogger("shardq.worker")


class Shutdown:
    """Stopping: ``request_stop``, the signal handler, ``_drain`` and ``_close``."""

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
        self.state = "stopping" if self._stop_reason == STOP_ORDERED else "draining"
        self.release_prefetched()  # claimed but not started: back to the broker at once
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
        for conn in self._all_conns():
            conn.close()
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()
        self.reports.write_info_lines()
        flush_logs()

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
