"""Outcomes on their way to the broker: the RESULT batches, their answers, the log lines.

Rules:

1. One batch in flight at a time; it carries everything finished while the previous one was
   out (at most RESULT_BATCH items and about RESULT_BATCH_BYTES of results), as one RESULT per
   shard that owns some of its tasks, each on that shard's connection (``conn_for``), so that no
   RESULT crosses shards.
2. A run stays in ``unreported`` until its RESULT is answered (or refused for good): the
   heartbeat lists those in ``active``, since the broker extends only the leases listed there.
3. Unavailable/Internal: the batch goes back to the front of the queue and is sent again in
   0.5 s. A broken connection: the same, on the next connection (a LeaseLost answer to such a
   resend is then not news). Any other NACK refuses the batch for good; the broker reclaims.
4. The outcome is logged when the broker answers, one line per task, with the task's stored
   numbers (``retry n of max_retries``). INFO lines are buffered and written by the sweeper.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from shardq.client import requests as rq
from shardq.client.aio_connection import AsyncConnection
from shardq.client.core import ConnectionClosed
from shardq.errors import Internal, Unavailable, WireError
from shardq.protocol.frames import MsgType
from shardq.worker.outcome import Outcome, Run

log = logging.getLogger("shardq.worker")

RESULT_BATCH = 1000         # items per RESULT (the protocol allows 10,000)
RESULT_BATCH_BYTES = 8 << 20  # result bytes per RESULT (a frame is at most 16 MiB)


class Reports:
    """The outcomes of one worker, from the run's end to the broker's answer (module rules)."""

    def __init__(self, worker_id: str, timeout: float, retry_later: Callable[[float], float],
                 answered: Callable[[], None]) -> None:
        self.worker_id = worker_id
        self.timeout = timeout          # seconds a RESULT may wait for its answer
        self.retry_later = retry_later  # (seconds) -> the monotonic time to send again
        self.answered = answered        # a RESULT was answered or failed
        self.queue: list[tuple[Run, Outcome]] = []
        self.unreported: dict[str, Run] = {}
        self.in_flight = 0              # RESULTs sent and not answered yet
        self.not_before = 0.0
        self.completed = self.failed = 0
        self.info_lines: list[tuple[float, str]] = []  # per-task INFO lines, written every sweep

    def push(self, run: Run, out: Outcome) -> None:
        self.unreported[run.ctx.id] = run
        self.queue.append((run, out))

    def ready(self, now: float) -> bool:
        """Whether a RESULT should go out now."""
        return bool(self.queue) and not self.in_flight and now >= self.not_before

    @property
    def idle(self) -> bool:
        """Nothing waiting and nothing in flight."""
        return not self.queue and not self.in_flight

    def write_info_lines(self) -> None:
        if self.info_lines:
            lines, self.info_lines = self.info_lines, []
            log_lines(logging.INFO, lines)

    def send(self, conn_for: Callable[[int], AsyncConnection]) -> None:
        """The next batch, one RESULT per owning shard (``conn_for(shard)`` is the connection to
        send it on); each answer comes back to ``_on_answer``. Raises ConnectionClosed (what
        could not be sent is queued again) when there is no connection."""
        batch = self._take_batch()
        parts: dict[int, list[tuple[Run, Outcome]]] = {}
        for item in batch:
            parts.setdefault(item[0].owner, []).append(item)
        unsent: list[tuple[Run, Outcome]] = []
        for shard, part in parts.items():
            header, blob = rq.report_request(self.worker_id, (
                rq.result_item(run.ctx.id, run.ctx.attempt, out.status, out.result, out.error, out.retry)
                for run, out in part))
            try:
                conn_for(shard).send(MsgType.RESULT, header, blob,
                                     lambda msg, exc, part=part: self._on_answer(part, msg, exc), self.timeout)
            except ConnectionClosed:
                unsent += part
                continue
            self.in_flight += 1
        if unsent:
            self.queue[:0] = unsent
            raise ConnectionClosed("not connected")

    def _on_answer(self, batch: list[tuple[Run, Outcome]], msg: Any, exc: BaseException | None) -> None:
        self.in_flight -= 1
        if exc is None or (isinstance(exc, WireError) and not isinstance(exc, (Unavailable, Internal))):
            for run, _ in batch:  # answered (or refused for good): no longer ours to keep alive
                if self.unreported.get(run.ctx.id) is run:
                    del self.unreported[run.ctx.id]
        if exc is None:
            self._log_results(batch, rq.parse_report(msg))
        elif isinstance(exc, (Unavailable, Internal)):
            self.queue[:0] = batch
            log.warning("RESULT refused (%s: %s); retrying in 0.5 s", exc.code, exc)
            self.not_before = self.retry_later(0.5)
        elif isinstance(exc, WireError):
            log.error("RESULT for %d task(s) rejected as a whole (%s: %s); their leases will be "
                      "reclaimed by the broker", len(batch), exc.code, exc)
        else:  # the connection broke: send them again on the next one
            self.queue[:0] = batch
            for _, out in batch:
                out.resent = True
        self.answered()

    def _take_batch(self) -> list[tuple[Run, Outcome]]:
        results = self.queue
        n, size = 0, 0
        limit = min(len(results), RESULT_BATCH)
        while n < limit:
            size += len(results[n][1].result)
            if n and size > RESULT_BATCH_BYTES:
                break
            n += 1
        batch = results[:n]
        del results[:n]
        return batch

    def _log_results(self, batch: list[tuple[Run, Outcome]], answers: list[dict[str, Any]]) -> None:
        info = log.isEnabledFor(logging.INFO)
        now = time.time()
        lines = self.info_lines  # written by the sweeper, stamped with this time
        for (run, out), ans in zip(batch, answers):
            ctx = run.ctx
            ms = out.elapsed * 1000
            err = ans.get("error")
            if err or out.status == "failed":
                self.write_info_lines()  # keep the lines in order
            if err:
                if err.get("code") == "LeaseLost" and out.resent:
                    continue  # the first send got through before the connection broke
                log.warning("task %s %s %s in %.2f ms (attempt %d), but the broker refused the "
                            "result: %s: %s", ctx.id, ctx.type, out.status, ms, ctx.attempt,
                            err.get("code"), err.get("message"))
            elif ans.get("status") == "cancelled" and out.status != "released":
                # Cancelled while it ran, and it finished before the heartbeat said so: the
                # broker kept the task cancelled and discarded this outcome (cancel_running).
                log.warning("task %s %s %s in %.2f ms (attempt %d), but it had been cancelled: "
                            "the broker discarded the outcome", ctx.id, ctx.type, out.status, ms,
                            ctx.attempt)
            elif out.status == "completed":
                self.completed += 1
                if info:
                    lines.append((now, f"task {ctx.id} {ctx.type} completed in {ms:.2f} ms "
                                       f"(attempt {ctx.attempt})"))
            elif out.status == "failed":
                self.failed += 1
                status = ans.get("status")
                then = (f"retry {ctx.retry_count + 1} of {ctx.max_retries} scheduled"
                        if status == "failed" else status)
                first = (out.error or "").split("\n", 1)[0]
                log.warning("task %s %s %s in %.2f ms (attempt %d): %s -> %s", ctx.id, ctx.type,
                            out.note or "failed", ms, ctx.attempt, first, then)
            elif info:
                lines.append((now, f"task {ctx.id} {ctx.type} released after {ms:.2f} ms "
                                   f"(attempt {ctx.attempt}): {out.note or 'released'}"))


def log_lines(level: int, lines: list[tuple[float, str]]) -> None:
    """Log (unix time, message) pairs. In one go when the worker CLI's handler is the only one:
    a LogRecord and a handler call per line would cost more than running a no-op task."""
    handlers = logging.getLogger().handlers
    if (len(handlers) == 1 and hasattr(handlers[0], "emit_lines") and not log.handlers
            and not log.filters and not handlers[0].filters and level >= handlers[0].level):
        handlers[0].emit_lines(level, log.name, lines)
    else:
        for _, line in lines:
            log.log(level, "%s", line)


def flush_logs() -> None:
    for h in logging.getLogger().handlers:
        try:
            h.flush()
        except Exception:  # noqa: BLE001, S110 -- a log sink that fails must not stop the worker
            pass


__all__ = ["RESULT_BATCH", "RESULT_BATCH_BYTES", "Reports", "flush_logs", "log_lines"]
