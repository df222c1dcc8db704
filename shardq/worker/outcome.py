"""One run of one task, and how it ended: ``Run`` and ``Outcome``. No I/O.

Rules:

1. A run ends exactly once. The first of "the handler finished", "the timeout fired", "the lease
   was lost" and "shutdown released it" wins; whatever comes later is discarded (``Run.state``
   goes from RUNNING to DONE or ABANDONED, never back).
2. A handler never raises out of here: ``run_sync``, ``failure`` and ``success`` turn whatever
   it did into an ``Outcome``.
3. Whether a failure is retried is the handler's say only through ``Fail`` (no retry) or not;
   how many retries are left is the stored task's business (its ``max_retries`` and
   ``retry_count``), and the broker decides it, not the decorator.
"""

from __future__ import annotations

import time
import traceback
from typing import TYPE_CHECKING, Any

from shardq.client.models import to_bytes
from shardq.protocol.requests import MAX_ERROR_LEN
from shardq.worker.app import Fail, TaskContext, TaskDef

if TYPE_CHECKING:
    import asyncio

    from shardq.worker.pool import Slot

RUNNING, DONE, ABANDONED = 0, 1, 2


class Outcome:
    """How a run ended: what goes into the RESULT item, plus what the log line needs."""

    __slots__ = ("status", "result", "error", "retry", "elapsed", "note", "resent")

    def __init__(self, status: str, result: bytes = b"", error: str | None = None, retry: bool = True,
                 elapsed: float = 0.0, note: str = "") -> None:
        self.status = status    # completed | failed | released
        self.result = result
        self.error = error
        self.retry = retry
        self.elapsed = elapsed  # seconds the handler ran
        self.note = note        # "timed out", "shutdown timeout reached", ...
        self.resent = False     # sent again after a broken connection


class Run:
    """One run of one claimed task: its context, its handler, and where it stands (rule 1)."""

    __slots__ = ("ctx", "td", "state", "start", "deadline", "limit", "atask", "slot", "kind", "owner")

    def __init__(self, ctx: TaskContext, td: TaskDef, start: float) -> None:
        self.ctx = ctx
        self.td = td
        self.state = RUNNING
        self.start = start          # perf_counter when the handler began (pools reset it)
        self.deadline = 0.0         # monotonic
        self.limit = 0.0            # the timeout that applies, seconds
        self.atask: asyncio.Task[None] | None = None
        self.slot: Slot | None = None
        self.kind = "async" if td.is_async else "sync"
        self.owner = 0              # the shard that owns the task (its RESULT goes there)


def error_text(exc: BaseException) -> str:
    """``error`` of a failed RESULT: ``<type>: <message>`` then the traceback (handler frames only)."""
    cls = type(exc)
    if cls.__module__ in ("builtins", "__main__"):
        name = cls.__qualname__
    elif cls.__module__.startswith("shardq.worker"):
        name = f"shardq.{cls.__qualname__}"
    else:
        name = f"{cls.__module__}.{cls.__qualname__}"
    tb = exc.__traceback__
    if tb is not None and tb.tb_next is not None:
        tb = tb.tb_next  # drop the runner's own frame
    text = f"{name}: {exc}\n" + "".join(traceback.format_exception(cls, exc, tb))
    if len(text) > MAX_ERROR_LEN:  # keep the head (what) and the tail (where it was raised)
        keep = MAX_ERROR_LEN // 2 - 20
        text = text[:keep] + "\n[... truncated ...]\n" + text[-keep:]
    return text


def failure(exc: BaseException, elapsed: float) -> Outcome:
    """A handler raised: retried unless it raised ``Fail`` (rule 3)."""
    return Outcome("failed", b"", error_text(exc), not isinstance(exc, Fail), elapsed)


def success(value: Any, elapsed: float) -> Outcome:
    try:
        data = to_bytes(value)
    except TypeError as exc:  # orjson's JSONEncodeError is a TypeError
        return Outcome("failed", b"", f"TypeError: the handler returned a {type(value).__name__}, which "
                       f"is not a result (bytes, str, or JSON-able): {exc}", False, elapsed)
    return Outcome("completed", data, elapsed=elapsed)


def run_sync(td: TaskDef, ctx: TaskContext) -> Outcome:
    """Run a sync handler here; never raises."""
    t0 = time.perf_counter()
    try:
        value = td.fn(ctx)
    except BaseException as exc:  # noqa: B036 -- a handler's SystemExit is its failure, not ours
        return failure(exc, time.perf_counter() - t0)
    return success(value, time.perf_counter() - t0)


__all__ = ["ABANDONED", "DONE", "RUNNING", "Outcome", "Run", "error_text", "failure", "run_sync",
           "success"]
