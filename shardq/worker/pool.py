"""The pool that runs sync handlers: slot threads, and in the process pool a child per slot.

- **Pool slots**, one per unit of concurrency. ``thread``: the slot thread runs the handler.
  ``process``: the slot thread hands the task to its own child process over a pipe and waits for
  the answer, so a handler that holds the GIL or crashes the interpreter stalls nothing but its
  own process. Children are spawned, import the app themselves, ignore SIGINT/SIGTERM (the
  worker decides when they stop), die with the worker (PR_SET_PDEATHSIG) and are named
  ``shardq: worker <worker_id> pool-<n>`` (setproctitle).

Rules:

1. Slot threads never touch the loop's bookkeeping: an outcome goes back through ``complete``
   (the loop's thread-safe hand-off), and a run whose state is no longer RUNNING when a slot
   takes it up is skipped.
2. ``abandon`` (loop thread) stops what runs a run that ended otherwise: a thread cannot be
   stopped, so its slot is retired and replaced and its late result dropped; a child is killed
   (SIGKILL) and replaced on the next run.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from shardq.process import describe_exit, die_with_parent, set_title
from shardq.worker.app import TaskContext, load_app
from shardq.worker.outcome import RUNNING, Outcome, Run, run_sync

log = logging.getLogger("shardq.worker")

Complete = Callable[[Run, Outcome], None]


class Slot:
    """One unit of pool concurrency: a thread, plus a child process in the process pool."""

    __slots__ = ("number", "thread", "retired", "current", "child", "conn", "ready")

    def __init__(self, number: int) -> None:
        self.number = number
        self.thread: threading.Thread | None = None
        self.retired = False
        self.current: Run | None = None
        self.child: Any = None      # multiprocessing Process
        self.conn: Any = None       # its end of the pipe
        self.ready = threading.Event()


class Pool:
    """Runs sync handlers: ``kind`` "thread" (in slot threads) or "process" (one child per slot)."""

    def __init__(self, kind: str, size: int, app_spec: str | None, complete: Complete,
                 accepting: Callable[[], bool], worker_id: str = "") -> None:
        if kind == "process" and not app_spec:
            raise ValueError("the process pool needs the app's import spec (module:app)")
        self.complete = complete    # (run, outcome) from a slot thread to the loop
        self.accepting = accepting  # whether a retired thread is replaced
        self.worker_id = worker_id  # names the children's processes
        self.kind = kind
        self.size = size
        self.app_spec = app_spec
        self.q: queue.SimpleQueue[Run | None] = queue.SimpleQueue()
        self.slots: list[Slot] = []
        self.lock = threading.Lock()
        self.stopping = False
        self.retired_total = 0
        self._mp: Any = None
        self._numbers = itertools.count()

    def start(self) -> None:
        if self.kind == "process":
            import multiprocessing
            self._mp = multiprocessing.get_context("spawn")
        for _ in range(self.size):
            self._spawn_slot()

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for slot in list(self.slots):
            if not slot.ready.wait(max(0.0, deadline - time.monotonic())):
                return False
        return True

    def _spawn_slot(self) -> None:
        slot = Slot(next(self._numbers))
        target = self._thread_slot if self.kind == "thread" else self._process_slot
        slot.thread = threading.Thread(target=target, args=(slot,), daemon=True,
                                       name=f"shardq-{self.kind}-slot")
        with self.lock:
            self.slots.append(slot)
        slot.thread.start()

    def submit(self, run: Run) -> None:
        self.q.put(run)

    def abandon(self, run: Run) -> None:
        """Loop thread: ``run`` no longer counts (state already ABANDONED); stop what runs it."""
        slot = run.slot
        if slot is None:
            return  # not picked up yet: the slot that takes it will see the state and skip it
        if self.kind == "thread":
            if not slot.retired:  # the thread is stuck in the handler: replace it
                slot.retired = True
                self.retired_total += 1
                if not self.stopping and self.accepting():
                    self._spawn_slot()
        elif slot.current is run and slot.child is not None:
            try:
                os.kill(slot.child.pid, signal.SIGKILL)
            except (ProcessLookupError, OSError):
                pass

    def _thread_slot(self, slot: Slot) -> None:
        q, complete = self.q, self.complete
        slot.ready.set()
        try:
            while True:
                run = q.get()
                if run is None:
                    return
                run.slot = slot  # before reading the state: see Pool.abandon
                if run.state != RUNNING:
                    if slot.retired:
                        return
                    continue
                run.start = time.perf_counter()
                complete(run, run_sync(run.td, run.ctx))
                if slot.retired:
                    return
        finally:
            with self.lock:
                if slot in self.slots:
                    self.slots.remove(slot)

    # process pool

    def _start_child(self, slot: Slot) -> bool:
        delay = 0.2
        while not self.stopping:
            parent_end, child_end = self._mp.Pipe(duplex=True)
            title = f"worker {self.worker_id} pool-{slot.number}"
            proc = self._mp.Process(target=_child_main, args=(self.app_spec, child_end, title),
                                    name="shardq-pool", daemon=False)
            try:
                proc.start()
                child_end.close()
                if parent_end.poll(60) and parent_end.recv() == "ready":
                    slot.child, slot.conn = proc, parent_end
                    return True
                raise RuntimeError(f"exited with code {proc.exitcode} before it was ready")
            except Exception as exc:  # noqa: BLE001 -- log, back off, try again
                log.error("pool process failed to start: %s; retrying in %.1f s", exc, delay)
                _reap(proc)
                parent_end.close()
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        return False

    def _process_slot(self, slot: Slot) -> None:
        q, complete = self.q, self.complete
        try:
            if not self._start_child(slot):
                return
            slot.ready.set()
            while True:
                run = q.get()
                if run is None:
                    return
                if slot.child is None and not self._start_child(slot):
                    return
                run.slot = slot
                slot.current = run  # before reading the state: see Pool.abandon
                if run.state != RUNNING:
                    slot.current = None
                    continue
                ctx = run.ctx
                run.start = t0 = time.perf_counter()
                try:
                    slot.conn.send((ctx.id, ctx.type, ctx.attempt, ctx.retry_count, ctx.max_retries,
                                    ctx.timeout_seconds, ctx.priority, ctx.payload, ctx.worker_id,
                                    ctx._deps))
                    reply = slot.conn.recv()
                except (EOFError, OSError):
                    slot.current = None
                    pid, code = slot.child.pid, _reap(slot.child)
                    slot.conn.close()
                    slot.child = slot.conn = None
                    if run.state != RUNNING:
                        continue  # we killed it (timeout, lost lease, shutdown)
                    complete(run, Outcome(
                        "failed", b"", f"WorkerProcessDied: the pool process (pid {pid}) died while "
                        f"running the task ({describe_exit(code)})", True, time.perf_counter() - t0))
                    continue
                slot.current = None
                status, data, error, retry = reply
                complete(run, Outcome(status, data, error, retry, time.perf_counter() - t0))
        finally:
            slot.ready.set()
            self._stop_child(slot)
            with self.lock:
                if slot in self.slots:
                    self.slots.remove(slot)

    def _stop_child(self, slot: Slot) -> None:
        if slot.child is None:
            return
        try:
            slot.conn.send(None)
        except OSError:
            pass
        slot.child.join(2)
        if slot.child.is_alive():
            slot.child.kill()
        _reap(slot.child)
        slot.conn.close()
        slot.child = slot.conn = None

    def child_pids(self) -> list[int]:
        with self.lock:
            return [s.child.pid for s in self.slots if s.child is not None]

    def kill_children(self) -> None:
        for pid in self.child_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def busy(self) -> int:
        """Slot threads still inside a handler (retired ones included)."""
        with self.lock:
            slots = list(self.slots)
        return sum(1 for s in slots if s.thread is not None and s.thread.is_alive()
                   and (s.retired or s.current is not None))

    def stop(self, timeout: float = 5.0) -> None:
        """Ask every slot to finish; process children exit (or are killed) with their slot."""
        self.stopping = True
        with self.lock:
            slots = list(self.slots)
        for _ in slots:
            self.q.put(None)
        if self.kind == "process":
            deadline = time.monotonic() + timeout
            for s in slots:
                if s.thread is not None:
                    s.thread.join(max(0.0, deadline - time.monotonic()))
            self.kill_children()


def _reap(proc: Any) -> int | None:
    try:
        proc.join(1)
        if proc.is_alive():
            proc.kill()
            proc.join(1)
        return proc.exitcode
    except (AssertionError, ValueError, OSError):  # never started
        return None


def _child_main(app_spec: str, conn: Any, title: str) -> None:
    """A process-pool child: import the app, then run tasks from the pipe until told to stop."""
    set_title(title)  # ps/top show which worker and slot this is
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent decides when we stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent(signal.SIGKILL)  # even if it is killed -9: a handler must not run on alone
    app = load_app(app_spec)
    conn.send("ready")
    handlers = app.handlers
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        tid, ttype, attempt, retry_count, max_retries, timeout_s, priority, payload, worker_id, deps = msg
        ctx = TaskContext(tid, ttype, attempt, retry_count, max_retries, timeout_s, priority, payload,
                          worker_id)
        ctx._deps = deps  # dependency results (worker/dep_context.py)
        out = run_sync(handlers[ttype], ctx)
        try:
            conn.send((out.status, out.result, out.error, out.retry))
        except (OSError, ValueError):
            return


__all__ = ["Pool", "Slot"]
