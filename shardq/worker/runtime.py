"""The worker run loop behind ``shardq worker``.

Threads and what each owns:

- **The loop thread** (the main thread; uvloop when installed) owns all bookkeeping and one broker
  connection. It claims, starts handlers, runs async handlers, enforces timeouts, reports results
  and handles signals. Claims and results are pipelined on that connection: a CLAIM for the slots
  that just freed and one RESULT for every task that finished since the last one go out together.
- **The heartbeat thread** has its own connection (a plain ``shardq.Client``). It sends HEARTBEAT
  every interval with the ids it runs and psutil's CPU %, RSS and memory % of the worker and its
  pool processes. It never waits on the loop, so a loop busy with handlers cannot starve it; only
  a handler that holds the GIL can, which is what ``pool="process"`` is for.
- **Pool slots**, one per unit of concurrency, when the app has sync handlers. ``thread``: the slot
  runs the handler. ``process``: the slot hands the task to its own child process over a pipe and
  waits for the answer, so a handler that holds the GIL or crashes the interpreter stalls nothing
  but its own process.

Rules:

1. No prefetch: a claim asks for at most ``concurrency - running`` tasks, and only one claim is
   outstanding at a time, so the worker never holds a lease it has no slot for.
2. A run ends exactly once. The first of "the handler finished", "the timeout fired", "the lease
   was lost" and "shutdown released it" wins; whatever comes later is discarded (``Job.state``).
   A timed-out or released thread-pool handler cannot be stopped: its thread is retired and
   replaced, and its late result is dropped. Async handlers are cancelled; pool processes killed.
3. Results are batched: one RESULT carries everything finished while the previous one was in
   flight. The outcome is logged when the broker answers, one line per task.
4. Shutdown (SIGTERM/SIGINT, or the queue running dry with ``burst``): stop claiming, wait up to
   ``shutdown_timeout`` for running tasks, release the rest, deliver every outcome, deregister
   (which also releases any lease this worker still holds), exit 0. A second signal exits at
   once with code 4, leaving the broker to reclaim the leases.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import queue
import signal
import socket
import threading
import time
import traceback
from collections import deque
from typing import Any

from shardq.client.connection import ConnectionClosed, parse_url
from shardq.client.models import to_bytes
from shardq.client.requests import check_shard, hello_header
from shardq.errors import (
    Forbidden,
    Internal,
    ProtocolError,
    ProtocolViolation,
    Unauthorized,
    Unavailable,
    WireError,
    error_from_wire,
)
from shardq.protocol.frames import (
    MAX_PAYLOAD,
    RESPONSE_TYPES,
    FrameDecoder,
    Malformed,
    MsgType,
    encode,
    split_blob,
)
from shardq.protocol.requests import MAX_CLAIM, MAX_ERROR_LEN
from shardq.worker.app import App, Fail, TaskContext, TaskDef

log = logging.getLogger("shardq.worker")

CLAIM_WAIT_S = 1.0          # long-poll per CLAIM: an idle worker sends one a second
RESULT_BATCH = 1000         # items per RESULT (the protocol allows 10,000)
RESULT_BATCH_BYTES = 8 << 20  # result bytes per RESULT (a frame is at most 16 MiB)
SWEEP_S = 0.05              # timeout and log-flush granularity
EXIT_OK, EXIT_FATAL, EXIT_CONFIG, EXIT_FORCED = 0, 1, 2, 4

RUNNING, DONE, ABANDONED = 0, 1, 2


class _Fatal(Exception):
    """The worker cannot go on (bad credentials, a broker that refuses it)."""


# -- one run of one task ------------------------------------------------------------------------


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


class Job:
    __slots__ = ("ctx", "td", "state", "start", "deadline", "limit", "atask", "slot", "kind")

    def __init__(self, ctx: TaskContext, td: TaskDef, start: float) -> None:
        self.ctx = ctx
        self.td = td
        self.state = RUNNING
        self.start = start          # perf_counter when the handler began (pools reset it)
        self.deadline = 0.0         # monotonic
        self.limit = 0.0            # the timeout that applies, seconds
        self.atask: asyncio.Task[None] | None = None
        self.slot: _Slot | None = None
        self.kind = "async" if td.is_async else "sync"


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


def _may_retry(td: TaskDef, ctx: TaskContext, asked: bool) -> bool:
    """Retry unless the handler said Fail, or its own max_retries is used up."""
    if td.max_retries is not None and ctx.retry_count >= td.max_retries:
        return False
    return asked


def failure(exc: BaseException, td: TaskDef, ctx: TaskContext, elapsed: float) -> Outcome:
    retry = not isinstance(exc, Fail)
    return Outcome("failed", b"", error_text(exc), _may_retry(td, ctx, retry), elapsed)


def success(value: Any, td: TaskDef, ctx: TaskContext, elapsed: float) -> Outcome:
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
        return failure(exc, td, ctx, time.perf_counter() - t0)
    return success(value, td, ctx, time.perf_counter() - t0)


# -- pools ----------------------------------------------------------------------------------------


class _Slot:
    """One unit of pool concurrency: a thread, plus a child process in the process pool."""

    __slots__ = ("thread", "retired", "current", "child", "conn", "ready")

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.retired = False
        self.current: Job | None = None
        self.child: Any = None      # multiprocessing Process
        self.conn: Any = None       # its end of the pipe
        self.ready = threading.Event()


class Pool:
    """Runs sync handlers: ``kind`` "thread" (in slot threads) or "process" (one child per slot)."""

    def __init__(self, worker: Worker, kind: str, size: int, app_spec: str | None) -> None:
        if kind == "process" and not app_spec:
            raise ValueError("the process pool needs the app's import spec (module:app)")
        self.worker = worker
        self.kind = kind
        self.size = size
        self.app_spec = app_spec
        self.q: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.slots: list[_Slot] = []
        self.lock = threading.Lock()
        self.stopping = False
        self.retired_total = 0
        self._mp: Any = None

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
        slot = _Slot()
        target = self._thread_slot if self.kind == "thread" else self._process_slot
        slot.thread = threading.Thread(target=target, args=(slot,), daemon=True,
                                       name=f"shardq-{self.kind}-slot")
        with self.lock:
            self.slots.append(slot)
        slot.thread.start()

    def submit(self, job: Job) -> None:
        self.q.put(job)

    def abandon(self, job: Job) -> None:
        """Loop thread: ``job`` no longer counts (state already ABANDONED); stop what runs it."""
        slot = job.slot
        if slot is None:
            return  # not picked up yet: the slot that takes it will see the state and skip it
        if self.kind == "thread":
            if not slot.retired:  # the thread is stuck in the handler: replace it
                slot.retired = True
                self.retired_total += 1
                if not self.stopping and self.worker.state == "running":
                    self._spawn_slot()
        elif slot.current is job and slot.child is not None:
            try:
                os.kill(slot.child.pid, signal.SIGKILL)
            except (ProcessLookupError, OSError):
                pass

    def _thread_slot(self, slot: _Slot) -> None:
        q, complete = self.q, self.worker._complete_threadsafe
        slot.ready.set()
        try:
            while True:
                job = q.get()
                if job is None:
                    return
                job.slot = slot  # before reading the state: see Pool.abandon
                if job.state != RUNNING:
                    if slot.retired:
                        return
                    continue
                job.start = time.perf_counter()
                complete(job, run_sync(job.td, job.ctx))
                if slot.retired:
                    return
        finally:
            with self.lock:
                if slot in self.slots:
                    self.slots.remove(slot)

    # process pool

    def _start_child(self, slot: _Slot) -> bool:
        delay = 0.2
        while not self.stopping:
            parent_end, child_end = self._mp.Pipe(duplex=True)
            proc = self._mp.Process(target=_child_main, args=(self.app_spec, child_end),
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

    def _process_slot(self, slot: _Slot) -> None:
        q, complete = self.q, self.worker._complete_threadsafe
        try:
            if not self._start_child(slot):
                return
            slot.ready.set()
            while True:
                job = q.get()
                if job is None:
                    return
                if slot.child is None and not self._start_child(slot):
                    return
                job.slot = slot
                slot.current = job  # before reading the state: see Pool.abandon
                if job.state != RUNNING:
                    slot.current = None
                    continue
                ctx = job.ctx
                job.start = t0 = time.perf_counter()
                try:
                    slot.conn.send((ctx.id, ctx.type, ctx.attempt, ctx.retry_count, ctx.max_retries,
                                    ctx.timeout_seconds, ctx.priority, ctx.payload, ctx.worker_id))
                    reply = slot.conn.recv()
                except (EOFError, OSError):
                    slot.current = None
                    pid, code = slot.child.pid, _reap(slot.child)
                    slot.conn.close()
                    slot.child = slot.conn = None
                    if job.state != RUNNING:
                        continue  # we killed it (timeout, lost lease, shutdown)
                    complete(job, Outcome(
                        "failed", b"", f"WorkerProcessDied: the pool process (pid {pid}) died while "
                        f"running the task ({_describe_exit(code)})", _may_retry(job.td, ctx, True),
                        time.perf_counter() - t0))
                    continue
                slot.current = None
                status, data, error, retry = reply
                complete(job, Outcome(status, data, error, retry, time.perf_counter() - t0))
        finally:
            slot.ready.set()
            self._stop_child(slot)
            with self.lock:
                if slot in self.slots:
                    self.slots.remove(slot)

    def _stop_child(self, slot: _Slot) -> None:
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


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _child_main(app_spec: str, conn: Any) -> None:
    """A process-pool child: import the app, then run tasks from the pipe until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent decides when we stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:  # die with the parent, even if it is killed -9 (Linux)
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001, S110 -- best effort, other OSes
        pass
    from shardq.worker.app import load_app
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
        tid, ttype, attempt, retry_count, max_retries, timeout_s, priority, payload, worker_id = msg
        ctx = TaskContext(tid, ttype, attempt, retry_count, max_retries, timeout_s, priority, payload,
                          worker_id)
        out = run_sync(handlers[ttype], ctx)
        try:
            conn.send((out.status, out.result, out.error, out.retry))
        except (OSError, ValueError):
            return


# -- the broker connection of the loop ------------------------------------------------------------


Callback = Any  # (Message | None, BaseException | None) -> None


class _Conn(asyncio.Protocol):
    """Pipelined requests on one connection; answers matched by rid and handed to a callback
    (no Task per request: the claim/result cycle is the worker's hot path); writes coalesced
    into one per loop turn."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_bug: Any) -> None:
        self.loop = loop
        self.on_bug = on_bug  # a callback raised: a bug in the worker
        self.transport: asyncio.Transport | None = None
        self.decoder = FrameDecoder(accept=RESPONSE_TYPES)
        self.pending: dict[int, tuple[Callback, float]] = {}
        self.rids = itertools.count(1)
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.lost = False
        self.lost_reason = "not connected"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.decoder.feed(data)
        pending = self.pending
        while True:
            try:
                msg = self.decoder.next()
            except ProtocolViolation as exc:
                self.abort(f"the broker sent a bad frame: {exc}")
                return
            if msg is None:
                return
            if isinstance(msg, Malformed):
                self.abort(f"the broker sent a malformed frame: {msg.error}")
                return
            entry = pending.pop(msg.rid, None) if msg.rid is not None else None
            if entry is None:
                if msg.type == MsgType.NACK and msg.rid is None:  # connection-level refusal
                    err = msg.header.get("error") or {}
                    self.abort(f"{err.get('code')}: {err.get('message')}")
                    return
                continue
            if msg.type == MsgType.NACK:
                self._call(entry[0], None, error_from_wire(msg.header.get("error") or {}))
            else:
                self._call(entry[0], msg, None)

    def _call(self, callback: Callback, msg: Any, exc: BaseException | None) -> None:
        try:
            callback(msg, exc)
        except Exception as bug:  # noqa: BLE001 -- must not take the connection down with it
            self.loop.call_soon(self.on_bug, bug)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost:
            self.lost = True
            self.lost_reason = str(exc) if exc else "closed by the broker"
        pending, self.pending = self.pending, {}
        for callback, _ in pending.values():
            self._call(callback, None, ConnectionClosed(f"connection lost: {self.lost_reason}"))

    def abort(self, reason: str) -> None:
        if not self.lost:
            self.lost = True
            self.lost_reason = reason
        if self.transport is not None:
            self.transport.abort()

    def send(self, msg_type: MsgType, header: dict[str, Any], blob: bytes, timeout: float,
             callback: Callback) -> None:
        """Queue a request; ``callback(answer, None)`` or ``callback(None, error)`` follows, once."""
        if self.lost or self.transport is None:
            raise ConnectionClosed(f"connection lost: {self.lost_reason}")
        rid = next(self.rids)
        header["rid"] = rid
        self.pending[rid] = (callback, time.monotonic() + timeout)
        self.out.append(encode(msg_type, header, blob))
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def request(self, msg_type: MsgType, header: dict[str, Any], blob: bytes = b"",
                timeout: float = 60.0) -> asyncio.Future[Any]:
        """``send`` for coroutines: the answer as a future (NACKs as their WireError)."""
        fut = self.loop.create_future()

        def done(msg: Any, exc: BaseException | None) -> None:
            if not fut.done():
                if exc is not None:
                    fut.set_exception(exc)
                else:
                    fut.set_result(msg)
        self.send(msg_type, header, blob, timeout, done)
        return fut

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.out and self.transport is not None and not self.lost:
            data = self.out[0] if len(self.out) == 1 else b"".join(self.out)
            self.out.clear()
            self.transport.write(data)

    def check_deadlines(self, now: float) -> None:
        for _cb, deadline in self.pending.values():
            if now > deadline:
                self.abort("the broker did not answer in time (worker.max_inactivity_s)")
                return

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.lost = True


# -- heartbeats ------------------------------------------------------------------------------------


class _Heartbeat(threading.Thread):
    """HEARTBEAT every interval from its own thread and connection."""

    def __init__(self, worker: Worker, interval: float) -> None:
        super().__init__(name="shardq-heartbeat", daemon=True)
        self.worker = worker
        self.interval = interval
        self.wake = threading.Event()
        self.stopping = False
        self.failures = 0
        self.last_ok = time.monotonic()

    def run(self) -> None:
        import psutil

        from shardq.client.sync import Client
        w = self.worker
        client = Client(w.url, timeout=max(2.0, min(30.0, w.max_inactivity_s)), api_key=w.api_key,
                        name="shardq-worker-heartbeat")
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
        jobs = list(w.running.values())
        # Running, and finished but not yet acknowledged: the broker extends only these leases.
        active = [j.ctx.id for j in jobs] + [tid for tid in list(w.unreported) if tid not in w.running]
        try:
            cpu, rss, mem = self._usage()
            _expires, lost = client.heartbeat(w.worker_id, active=active,
                                              cpu_percent=cpu, memory_rss=rss, memory_percent=mem,
                                              state=w.state)
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
        if lost:
            gone = set(lost)
            pairs = [(j.ctx.id, j.ctx.attempt) for j in jobs if j.ctx.id in gone]
            try:
                w.loop.call_soon_threadsafe(w._on_lost, pairs)
            except RuntimeError:  # the loop is closed: we are exiting anyway
                pass

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()


# -- the worker -----------------------------------------------------------------------------------


class Worker:
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
        self.shard_hint = None if shard is None else check_shard(shard)

        self.state = "running"
        self.running: dict[str, Job] = {}
        # Finished runs whose RESULT the broker has not acknowledged yet: HEARTBEAT lists them in
        # `active` with the running ones, since the broker extends only the leases listed there.
        self.unreported: dict[str, Job] = {}
        self.pool: Pool | None = None
        self.server_info: dict[str, Any] = {}
        self.max_result = MAX_PAYLOAD
        self.exit_code = EXIT_OK
        self.completed = self.failed = 0
        self._results: list[tuple[Job, Outcome]] = []
        self._info_lines: list[tuple[float, str]] = []  # per-task INFO lines, written every SWEEP_S
        self._reporting = False     # a RESULT is in flight
        self._claiming = False      # a CLAIM is in flight
        self._claim_idle = False
        self._burst_wait = False
        self._ticks = 0             # runs ended + RESULT answers (for --burst)
        self._claim_ticks = 0
        self._claim_not_before = self._report_not_before = 0.0
        self._pump_scheduled = False
        self._started = False
        self._done: deque[tuple[Job, Outcome]] = deque()
        self._wake_pending = False
        self._deadlines: list[tuple[float, int, Job]] = []
        self._seq = itertools.count()
        self._conn: _Conn | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._heartbeat: _Heartbeat | None = None
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
            _flush_logs()
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
                self.pool = Pool(self, self.pool_kind, self.concurrency, self.app_spec)
                self.pool.start()
                if self.pool_kind == "process":
                    ok = await self._until_stopped(asyncio.to_thread(self.pool.wait_ready, 120.0))
                    if ok is False:
                        log.error("the process pool did not start")
                        self.exit_code = EXIT_FATAL
                        self.request_stop("the process pool did not start")
            self._heartbeat = _Heartbeat(self, self.heartbeat_interval)
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

    async def _get_conn(self) -> _Conn:
        while True:
            conn = self._conn
            if conn is not None and not conn.lost:
                return conn
            if self._connect_task is None or self._connect_task.done():
                self._connect_task = self.loop.create_task(self._connect())
            await asyncio.shield(self._connect_task)

    async def _connect(self) -> None:
        delay, tries = 0.1, 0
        while True:
            tries += 1
            conn: _Conn | None = None
            try:
                _, conn = await asyncio.wait_for(self.loop.create_connection(
                    lambda: _Conn(self.loop, self._internal_error), self.host, self.port), self.max_inactivity_s)
                hello = hello_header("shardq-worker", self.api_key, self.shard_hint)
                msg = await conn.request(MsgType.HELLO, hello, timeout=self.max_inactivity_s)
                self.server_info = dict(msg.header)
                self._check_shard()
                await conn.request(MsgType.REGISTER_WORKER, {
                    "worker_id": self.worker_id, "hostname": socket.gethostname(), "pid": os.getpid(),
                    "types": self.types, "concurrency": self.concurrency},
                    timeout=self.max_inactivity_s)
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
            if conn is None or conn.lost:
                self._reconnect()
                return
            now = time.monotonic()
            if self._results and not self._reporting and now >= self._report_not_before:
                self._send_results(conn)
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

    def _send_claim(self, conn: _Conn, n: int) -> None:
        wait_ms = 0 if self.burst else int(CLAIM_WAIT_S * 1000)
        # For --burst: an empty answer means "done" only if nothing could have made a task ready
        # since this claim left (a run ending, an outcome not yet acknowledged).
        self._claim_idle = not self.running and not self._results and not self._reporting
        self._claim_ticks = self._ticks
        conn.send(MsgType.CLAIM, {"worker_id": self.worker_id, "max": n, "wait_ms": wait_ms,
                                  "types": self.types},
                  b"", wait_ms / 1000 + self.max_inactivity_s, self._on_claim)
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
        tasks = msg.header["tasks"]
        if tasks:
            payloads = split_blob(msg.blob, [t["payload_len"] for t in tasks])
            if self._stop.is_set():  # shutting down: hand them straight back
                for t, p in zip(tasks, payloads):
                    job = Job(self._context(t, p), self.handlers[t["type"]], time.perf_counter())
                    job.state = DONE
                    self._push_result(job, Outcome("released", note="not started, shutting down"))
            else:
                for t, p in zip(tasks, payloads):
                    self._start(t, p)
        elif self.burst:
            if self._claim_idle:
                self.request_stop("burst: no ready task left")
                return
            if self._ticks == self._claim_ticks:  # nothing happened since the claim left:
                self._burst_wait = True  # claim again once a run ends or a RESULT lands
        self._pump()

    def _context(self, t: dict[str, Any], payload: bytes) -> TaskContext:
        return TaskContext(t["id"], t["type"], t["attempt"], t["retry_count"], t["max_retries"],
                           t["timeout_seconds"], t["priority"], payload, self.worker_id)

    def _start(self, t: dict[str, Any], payload: bytes) -> None:
        ctx = self._context(t, payload)
        td = self.handlers[ctx.type]
        old = self.running.get(ctx.id)
        if old is not None:  # the broker took it back from us and gave it to us again
            self._abandon(old)
            self._log_lost(old)
        job = Job(ctx, td, time.perf_counter())
        # The task's own timeout counts from the claim on the broker's clock: fire a little early
        # so that the worker, which can stop the handler, is the one that fails it.
        limit = float(ctx.timeout_seconds)
        now = time.monotonic()
        deadline = now + limit - min(0.25, limit / 10)
        if td.timeout is not None and now + td.timeout < deadline:
            limit, deadline = td.timeout, now + td.timeout
        job.limit, job.deadline = limit, deadline
        self.running[ctx.id] = job
        heapq.heappush(self._deadlines, (deadline, next(self._seq), job))
        if td.is_async:
            job.atask = self.loop.create_task(self._run_async(job))
        else:
            assert self.pool is not None
            self.pool.submit(job)

    async def _run_async(self, job: Job) -> None:
        ctx, td = job.ctx, job.td
        t0 = time.perf_counter()
        try:
            value = await td.fn(ctx)
        except asyncio.CancelledError:
            if job.state == RUNNING:  # not ours: the loop itself is going away
                raise
            return
        except BaseException as exc:  # noqa: B036 -- the handler's failure, reported as such
            self._finish(job, failure(exc, td, ctx, time.perf_counter() - t0))
            return
        self._finish(job, success(value, td, ctx, time.perf_counter() - t0))

    # -- finishing ---------------------------------------------------------------------------------

    def _complete_threadsafe(self, job: Job, out: Outcome) -> None:
        """Pool threads: hand an outcome to the loop (one wake-up for a burst of them)."""
        self._done.append((job, out))
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
            job, out = done.popleft()
            self._finish(job, out)

    def _finish(self, job: Job, out: Outcome) -> None:
        if job.state != RUNNING:
            return  # timed out, lost or released first: this late outcome is discarded
        job.state = DONE
        if self.running.get(job.ctx.id) is job:
            del self.running[job.ctx.id]
        if out.status == "completed" and len(out.result) > self.max_result:
            out = Outcome("failed", b"", f"TooLarge: the result is {len(out.result)} bytes; the broker "
                          f"takes at most {self.max_result}", False, out.elapsed)
        self._push_result(job, out)

    def _push_result(self, job: Job, out: Outcome) -> None:
        self.unreported[job.ctx.id] = job
        self._results.append((job, out))
        self._ticks += 1
        self._burst_wait = False
        self._progress.set()
        self._schedule_pump()

    def _abandon(self, job: Job) -> None:
        """End a run that is still going: it no longer counts, and whatever runs it is stopped."""
        job.state = ABANDONED
        if self.running.get(job.ctx.id) is job:
            del self.running[job.ctx.id]
        job.ctx._cancelled = True
        if job.atask is not None:
            job.atask.cancel()
        elif self.pool is not None:
            self.pool.abandon(job)
        self._ticks += 1
        self._burst_wait = False
        self._progress.set()
        self._schedule_pump()

    def _timeout(self, job: Job) -> None:
        how = {"async": "cancelled", "sync": "killed" if self.pool_kind == "process" else
               "abandoned (a thread cannot be stopped; whatever it returns later is discarded)"}
        elapsed = time.perf_counter() - job.start
        self._abandon(job)
        self._push_result(job, Outcome(
            "failed", b"", f"timeout: the handler ran longer than {job.limit:g} s and was "
            f"{how[job.kind]} by worker {self.worker_id}", _may_retry(job.td, job.ctx, True), elapsed,
            note="timed out"))

    def _on_lost(self, pairs: list[tuple[str, int]]) -> None:
        """The heartbeat says these leases are no longer ours (expired, or timed out by the broker)."""
        for tid, attempt in pairs:
            job = self.running.get(tid)
            if job is not None and job.ctx.attempt == attempt:
                self._abandon(job)
                self._log_lost(job)

    def _log_lost(self, job: Job) -> None:
        log.warning("task %s %s lease lost after %.1f ms (attempt %d): run abandoned, its result "
                    "will not be reported", job.ctx.id, job.ctx.type,
                    (time.perf_counter() - job.start) * 1000, job.ctx.attempt)

    # -- reporting -----------------------------------------------------------------------------------

    def _send_results(self, conn: _Conn) -> None:
        batch = self._take_batch()
        items: list[dict[str, Any]] = []
        blobs: list[bytes] = []
        for job, out in batch:
            ctx = job.ctx
            if out.status == "completed":
                items.append({"id": ctx.id, "attempt": ctx.attempt, "status": "completed",
                              "result_len": len(out.result)})
                blobs.append(out.result)
            elif out.status == "failed":
                items.append({"id": ctx.id, "attempt": ctx.attempt, "status": "failed",
                              "error": out.error or "", "retry": out.retry})
            else:
                items.append({"id": ctx.id, "attempt": ctx.attempt, "status": "released"})
        try:
            conn.send(MsgType.RESULT, {"worker_id": self.worker_id, "results": items},
                      b"".join(blobs), self.max_inactivity_s,
                      lambda msg, exc: self._on_results(batch, msg, exc))
        except ConnectionClosed:
            self._results[:0] = batch
            raise
        self._reporting = True

    def _on_results(self, batch: list[tuple[Job, Outcome]], msg: Any, exc: BaseException | None) -> None:
        self._reporting = False
        self._ticks += 1
        self._burst_wait = False
        self._progress.set()
        if exc is None or (isinstance(exc, WireError) and not isinstance(exc, (Unavailable, Internal))):
            for job, _ in batch:  # answered (or refused for good): no longer ours to keep alive
                if self.unreported.get(job.ctx.id) is job:
                    del self.unreported[job.ctx.id]
        if exc is None:
            self._log_results(batch, msg.header.get("results") or [])
        elif isinstance(exc, (Unavailable, Internal)):
            self._results[:0] = batch
            log.warning("RESULT refused (%s: %s); retrying in 0.5 s", exc.code, exc)
            self._report_not_before = self._retry_later(0.5)
        elif isinstance(exc, WireError):
            log.error("RESULT for %d task(s) rejected as a whole (%s: %s); their leases will be "
                      "reclaimed by the broker", len(batch), exc.code, exc)
        else:  # the connection broke: send them again on the next one
            self._results[:0] = batch
            for _, out in batch:
                out.resent = True
        self._pump()

    def _take_batch(self) -> list[tuple[Job, Outcome]]:
        results = self._results
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

    def _log_results(self, batch: list[tuple[Job, Outcome]], answers: list[dict[str, Any]]) -> None:
        info = log.isEnabledFor(logging.INFO)
        now = time.time()
        lines = self._info_lines  # written by the sweeper, stamped with this time
        for (job, out), ans in zip(batch, answers):
            ctx = job.ctx
            ms = out.elapsed * 1000
            err = ans.get("error")
            if err or out.status == "failed":
                self._write_info_lines()  # keep the lines in order
            if err:
                if err.get("code") == "LeaseLost" and out.resent:
                    continue  # the first send got through before the connection broke
                log.warning("task %s %s %s in %.2f ms (attempt %d), but the broker refused the "
                            "result: %s: %s", ctx.id, ctx.type, out.status, ms, ctx.attempt,
                            err.get("code"), err.get("message"))
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

    # -- timers ---------------------------------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        last_conn_check = 0.0
        while True:
            await asyncio.sleep(SWEEP_S)
            self._drain_done()  # outcomes already in hand beat a deadline that is just passing
            now = time.monotonic()
            heap = self._deadlines
            while heap and heap[0][0] <= now:
                job = heapq.heappop(heap)[2]
                if job.state == RUNNING:
                    self._timeout(job)
            if len(heap) > 2 * len(self.running) + 1024:  # drop entries of finished runs
                self._deadlines = [e for e in heap if e[2].state == RUNNING]
                heapq.heapify(self._deadlines)
            if now - last_conn_check >= 0.5:
                last_conn_check = now
                if self._conn is not None and not self._conn.lost:
                    self._conn.check_deadlines(now)
            self._write_info_lines()
            _flush_logs()

    def _write_info_lines(self) -> None:
        if self._info_lines:
            lines, self._info_lines = self._info_lines, []
            _log_lines(logging.INFO, lines)

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
            self._write_info_lines()
            _flush_logs()
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
            for job in list(self.running.values()):
                elapsed = time.perf_counter() - job.start
                self._abandon(job)
                self._push_result(job, Outcome("released", elapsed=elapsed,
                                               note="shutdown timeout reached"))
        # The claim in flight (at most CLAIM_WAIT_S) hands back what it gets before we deregister;
        # then every outcome is delivered (bounded: a broker that is gone reclaims by itself).
        await self._wait_until(lambda: not self._claiming, CLAIM_WAIT_S + self.max_inactivity_s)
        delivered = await self._wait_until(lambda: not self._results and not self._reporting,
                                           self.max_inactivity_s)
        self._write_info_lines()
        if not delivered:
            log.error("%d outcome(s) could not be delivered; the broker will reclaim those tasks",
                      len(self._results))
            self.exit_code = self.exit_code or EXIT_FATAL
        if self._heartbeat is not None:  # before DEREGISTER: a later heartbeat would re-register us
            self._heartbeat.stop()
            await asyncio.to_thread(self._heartbeat.join, 10.0)
        connected = self._conn is not None and not self._conn.lost
        limit = min(10.0 if connected else 2.0, self.max_inactivity_s)
        try:
            msg = await asyncio.wait_for(self._request(
                MsgType.DEREGISTER_WORKER, {"worker_id": self.worker_id}, timeout=limit), limit)
            released = int(msg.header.get("released", 0))
            if released:
                log.info("deregistered; the broker released %d more lease(s)", released)
        except (TimeoutError, Exception) as exc:  # noqa: BLE001 -- the broker copes without
            log.warning("DEREGISTER failed (%s: %s); the broker will drop this worker when its "
                        "heartbeats stop", type(exc).__name__, exc)
        log.info("worker %s stopped: %d completed, %d failed", self.worker_id, self.completed,
                 self.failed)

    async def _close(self) -> None:
        if self._heartbeat is not None and self._heartbeat.is_alive():
            self._heartbeat.stop()
        if self.pool is not None:
            await asyncio.to_thread(self.pool.stop)
        if self._conn is not None:
            self._conn.close()
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()
        self._write_info_lines()
        _flush_logs()


def _log_lines(level: int, lines: list[tuple[float, str]]) -> None:
    """Log (unix time, message) pairs. In one go when the worker CLI's handler is the only one:
    a LogRecord and a handler call per line would cost more than running a no-op task."""
    handlers = logging.getLogger().handlers
    if (len(handlers) == 1 and hasattr(handlers[0], "emit_lines") and not log.handlers
            and not log.filters and not handlers[0].filters and level >= handlers[0].level):
        handlers[0].emit_lines(level, log.name, lines)
    else:
        for _, line in lines:
            log.log(level, "%s", line)


def _flush_logs() -> None:
    for h in logging.getLogger().handlers:
        try:
            h.flush()
        except Exception:  # noqa: BLE001, S110 -- a log sink that fails must not stop the worker
            pass


__all__ = ["EXIT_CONFIG", "EXIT_FATAL", "EXIT_FORCED", "EXIT_OK", "Outcome", "Pool", "Worker",
           "error_text", "run_sync"]

