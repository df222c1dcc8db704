"""What the broker tells a worker in HEARTBEAT answers: stop these cancelled tasks, be quiet, stop.

A mixin of ``WorkerRuntime`` (runtime.py), like cycle.py and shutdown.py; the heartbeat thread
(heartbeat.py) hands each notice to the loop thread, which runs these.

Rules (docs/worker.md, "Cancelled tasks" and "Quiet and stop"):
1. A cancelled task's run is abandoned like a timed-out one: an async handler is cancelled
   (``asyncio`` cancellation), a thread-pool handler sees ``ctx.cancelled`` turn true (and
   ``ctx.wait_cancelled`` return) and its slot thread is replaced, a process-pool handler's
   process is killed and replaced. Nothing is reported for it: the broker already made the task
   ``cancelled`` and revoked the lease, so a RESULT could only be answered ``cancelled``; sending
   none saves the round trip. One WARNING line says what was stopped.
2. ``quiet``: no more CLAIMs; tasks claimed but not started go back (released) at once; running
   ones finish and report as usual. The state reported in HEARTBEAT becomes ``quiet``; it stays
   so for the life of this process.
3. ``stop``: as SIGTERM, with state ``stopping``: quiet, wait up to ``shutdown_timeout`` for the
   running tasks, release the rest, deliver every outcome, deregister, exit 0.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

log = logging.getLogger("shardq.worker")

STOP_ORDERED = "stop ordered by the broker"


class WorkerControl:
    """The broker's notices, applied on the loop thread."""

    def on_cancelled(self, pairs: list[tuple[str, int]]) -> None:
        """The heartbeat says these (id, attempt) were cancelled by CANCEL (rule 1)."""
        for tid, attempt in pairs:
            waiting = self.prefetched.get(tid)
            if waiting is not None and waiting.attempt == attempt:
                del self.prefetched[tid]
                self._claimed_at.pop(tid, None)
                log.warning("task %s %s cancelled by the broker before it started (attempt %d)",
                            tid, waiting.type, attempt)
                continue
            run = self.running.get(tid)
            if run is None or run.ctx.attempt != attempt:
                continue  # finished meanwhile: its RESULT is answered "cancelled"
            self._abandon(run)
            how = {"async": "handler cancelled",
                   "sync": "pool process killed" if self.pool_kind == "process"
                   else "ctx.cancelled set; its thread's late result is discarded"}[run.kind]
            log.warning("task %s %s cancelled by the broker after %.1f ms (attempt %d): %s",
                        tid, run.ctx.type, (time.perf_counter() - run.start) * 1000, attempt, how)

    def on_command(self, command: str) -> None:
        """A quiet/stop order from the broker (rules 2 and 3); repeated orders are no-ops."""
        if command == "quiet" and self.state == "running":
            self.state = "quiet"
            held = len(self.prefetched)
            self.release_prefetched()
            log.info("quiet (ordered by the broker): no new tasks; %d running task(s) will finish%s",
                     len(self.running), f"; {held} not started released" if held else "")
            if self._heartbeat is not None:
                self._heartbeat.wake.set()  # report the new state now
        elif command == "stop" and not self._stop.is_set():
            log.info("stop (ordered by the broker): draining: no new tasks; waiting up to %g s for "
                     "%d running task(s), then exiting", self.shutdown_timeout, len(self.running))
            self.request_stop(STOP_ORDERED)
