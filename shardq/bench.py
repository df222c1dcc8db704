"""`shardq bench`: drive the real task lifecycle against a real server, and measure it.

Every client runs in its own process (multiprocessing, "spawn"), so the numbers are those of
the server, not of one Python interpreter juggling producers and consumers. All clients connect
first; the clock starts when every one of them is connected.

Scenarios (``--scenario``, repeatable or comma-separated; ``all`` runs every one; default
``lifecycle,unpipelined,submit-latency``). ``--tasks`` overrides each default count.

``lifecycle`` (200,000 tasks) -- name ``lifecycle_b{batch}_p{payload}B_sync-{sync}_shards{shards}``
    ``--producers`` processes SUBMIT ``--batch`` tasks of ``--payload-bytes`` each, keeping up
    to ``--inflight`` requests outstanding; ``--consumers`` processes CLAIM up to ``--batch``
    tasks (wait 500 ms) and complete them with one RESULT, sent back to back with the next CLAIM.
    Its p50/p99/p999 (and those of delayed-flood and cross-shard) are of the batched SUBMIT's
    round trip under that load: send -> ACK, which the server sends once the batch is committed.
``unpipelined`` (30,000) -- name ``unpipelined_c{clients}_p{payload}B_sync-{sync}_shards{shards}``
    ``--clients`` producers submit one task per request and wait for its ACK; ``--clients``
    consumers CLAIM one task (wait 200 ms), complete it, and wait for each ACK.
``submit-latency`` (5,000) -- name ``submit-latency_p{payload}B_sync-{sync}``
    One client submits one task per request and waits for each ACK; nothing else runs.
    Reports p50/p99/p999/max round trip in microseconds.
``group-commit`` (20,000 per run) -- names ``group-commit_c{1,8,64}_p{payload}B_sync-{sync}``
    One run each with 1, 8 and 64 concurrent producers submitting one task per request
    (``--sync`` defaults to ``always`` here: every ACK waits for an fsync, which group commit
    shares between the requests of a loop turn). Reports submits/s and p50/p99/p999 latency.
``delayed-flood`` (100,000) -- name ``delayed-flood_b{batch}_d1000ms_sync-{sync}_shards{shards}``
    The lifecycle with every task submitted with ``delay_ms`` 1000: the schedule heap takes
    the flood and releases it as it falls due; the consumers drain it.
``cross-shard`` (100,000) -- name ``cross-shard_b{batch}_p{payload}B_sync-{sync}``
    Two shards (forced); the producers ask for shard 0 and the consumers for shard 1 (HELLO
    hint), so every CLAIM is served by leasing from the other shard and every RESULT is
    forwarded: the cost of a cross-shard hop. Reports ``hops_per_task`` from GET_STATS.
``recovery`` (1,000,000) -- name ``recovery_{tasks}``
    Always on a fresh server of its own (it has to restart it, so ``--server`` does not apply):
    RSS right after the empty start; fill with N pending tasks (batches of 1000, pipelined);
    SIGTERM (the exit code must be 0); restart on the same data dir and time spawn -> READY
    (and read the server's own ``recovered ... seconds=X`` log line); GET_STATS must show
    ``pending == N``. Reports ``rss_bytes_per_queued_task`` = (RSS after restart - empty RSS) / N.

Server: by default each scenario starts its own ``shardq serve`` (``--shards``, ``--sync``) in
a temporary data dir that is removed afterwards. ``--server shardq://host:port`` uses a running,
dedicated server instead (the benchmark claims and completes whatever is ready there); its CPU
and RSS are measured only when ``--server-pid`` is given.

Measured: server CPU is user+system time of the server process and all its children, sampled
just before the clock starts and just after the last completion; peak RSS is the largest sum of
their RSS seen while sampling every 100 ms. Every loop is bounded by its count and by
``--duration-limit`` seconds: at the limit the scenario stops and reports what was done
(``timed_out``: true).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

import orjson
import psutil

from shardq import __version__
from shardq.client.connection import Connection, parse_url
from shardq.errors import QueueFull, ShardqError, error_from_wire
from shardq.protocol.frames import MAX_FRAME, MAX_PAYLOAD, Message, MsgType, frame_size
from shardq.testing import ServerProcess

SCENARIOS = ("lifecycle", "unpipelined", "submit-latency", "group-commit", "delayed-flood",
             "cross-shard", "recovery")
DEFAULT_SCENARIOS = ("lifecycle", "unpipelined", "submit-latency")
DEFAULT_TASKS = {"lifecycle": 200_000, "unpipelined": 30_000, "submit-latency": 5_000,
                 "group-commit": 20_000, "delayed-flood": 100_000, "cross-shard": 100_000,
                 "recovery": 1_000_000}
GROUP_COMMIT_PRODUCERS = (1, 8, 64)
FLOOD_DELAY_MS = 1000

TASK_TYPE = "bench"
RECOVERY_BATCH = 1000
LIFECYCLE_CLAIM_WAIT_MS = 500
UNPIPELINED_CLAIM_WAIT_MS = 200
MAX_CLAIM = 1000  # the protocol's limit on CLAIM `max`
MAX_QUEUE_FULL_SLEEP_S = 1.0
CONNECT_TIMEOUT_S = 60.0  # for every spawned client to import shardq and connect
CLIENT_GRACE_S = 5.0  # a client's own deadline runs this much past the parent's
JOIN_TIMEOUT_S = 10.0
SAMPLE_PERIOD_S = 0.1
STATS_SETTLE_S = 5.0  # GET_STATS figures may be up to 1 s old
SERVER_START_TIMEOUT_S = 60.0
RECOVERED_RE = re.compile(r"\brecovered\b.*\bseconds=([0-9.]+)")


# --- options ---------------------------------------------------------------------------------

def _int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in {low}..{high}"
            raise argparse.ArgumentTypeError(f"{value} is out of range (must be {bound})")
        return value
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} must be > 0")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n", 1)[0] if __doc__ else None
    parser.add_argument("--scenario", action="append", metavar="NAME",
                        help=f"one of {', '.join(SCENARIOS)}, or all; repeatable or comma list "
                             f"(default: {','.join(DEFAULT_SCENARIOS)})")
    parser.add_argument("--tasks", type=_int_at_least(1), default=None, metavar="N",
                        help="tasks per scenario (default: " + ", ".join(
                            f"{k} {v}" for k, v in DEFAULT_TASKS.items()) + ")")
    parser.add_argument("--payload-bytes", type=_int_at_least(0, MAX_PAYLOAD), default=100,
                        metavar="B", help="payload size of each task (default 100)")
    parser.add_argument("--batch", type=_int_at_least(1, MAX_CLAIM), default=100, metavar="N",
                        help="tasks per SUBMIT and CLAIM max in lifecycle (default 100)")
    parser.add_argument("--producers", type=_int_at_least(1), default=1, metavar="N",
                        help="producer processes in lifecycle and the recovery fill (default 1)")
    parser.add_argument("--consumers", type=_int_at_least(1), default=1, metavar="N",
                        help="consumer processes in lifecycle (default 1)")
    parser.add_argument("--clients", type=_int_at_least(1), default=4, metavar="N",
                        help="producer processes and consumer processes in unpipelined (default 4)")
    parser.add_argument("--inflight", type=_int_at_least(1), default=4, metavar="N",
                        help="outstanding SUBMITs per batched producer (default 4)")
    parser.add_argument("--shards", type=_int_at_least(1), default=1, metavar="N",
                        help="shards of the server the benchmark starts (default 1)")
    parser.add_argument("--sync", choices=("always", "interval", "none"), default=None,
                        help="sync mode of the server the benchmark starts (default interval)")
    parser.add_argument("--server", metavar="URL", default=None,
                        help="use this running server (shardq://host:port) instead of starting one")
    parser.add_argument("--server-pid", type=_int_at_least(1), default=None, metavar="PID",
                        help="with --server: measure this process (and its children)")
    parser.add_argument("--duration-limit", type=_positive_float, default=120.0, metavar="S",
                        help="stop each scenario after this many seconds (default 120)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


@dataclass(frozen=True, slots=True)
class Options:
    scenarios: tuple[str, ...]
    tasks: int | None
    payload_bytes: int
    batch: int
    producers: int
    consumers: int
    clients: int
    inflight: int
    shards: int
    sync: str | None
    server: str | None
    server_pid: int | None
    duration_limit: float
    json: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        opts = cls(scenarios=_parse_scenarios(args.scenario), tasks=args.tasks,
                   payload_bytes=args.payload_bytes, batch=args.batch, producers=args.producers,
                   consumers=args.consumers, clients=args.clients, inflight=args.inflight,
                   shards=args.shards, sync=args.sync, server=args.server,
                   server_pid=args.server_pid, duration_limit=args.duration_limit, json=args.json)
        if opts.server is not None:
            parse_url(opts.server)
        elif opts.server_pid is not None:
            raise ValueError("--server-pid needs --server")
        for scenario, batch in (("lifecycle", opts.batch), ("recovery", RECOVERY_BATCH)):
            if scenario in opts.scenarios:
                size = frame_size({"rid": 2**63 - 1, "tasks": [
                    {"type": TASK_TYPE, "payload_len": opts.payload_bytes}] * batch},
                    batch * opts.payload_bytes)
                if size > MAX_FRAME:
                    raise ValueError(f"{scenario}: a batch of {batch} tasks of {opts.payload_bytes} "
                                     f"bytes needs a {size}-byte frame (limit {MAX_FRAME})")
        return opts

    def tasks_for(self, scenario: str) -> int:
        return self.tasks if self.tasks is not None else DEFAULT_TASKS[scenario]


def _parse_scenarios(values: list[str] | None) -> tuple[str, ...]:
    names = [n.strip() for v in (values or [",".join(DEFAULT_SCENARIOS)]) for n in v.split(",")]
    out: list[str] = []
    for name in names:
        if name == "all":
            wanted: tuple[str, ...] = SCENARIOS
        elif name in SCENARIOS:
            wanted = (name,)
        else:
            raise ValueError(f"unknown scenario {name!r} (choose from {', '.join(SCENARIOS)}, all)")
        out.extend(w for w in wanted if w not in out)
    return tuple(out)


# --- the server: where it is, and what it costs ----------------------------------------------

class ServerMeter:
    """CPU and RSS of a server process and all its children; measures nothing without a pid."""

    def __init__(self, pid: int | None) -> None:
        self._proc = psutil.Process(pid) if pid is not None else None
        self.peak_rss: int | None = None

    def _tree(self) -> list[psutil.Process]:
        if self._proc is None:
            return []
        try:
            return [self._proc, *self._proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float | None:
        if self._proc is None:
            return None
        total = 0.0
        for proc in self._tree():
            try:
                times = proc.cpu_times()
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            total += times.user + times.system
        return total

    def rss(self) -> int | None:
        if self._proc is None:
            return None
        total = 0
        for proc in self._tree():
            try:
                total += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
        return total

    def sample(self) -> None:
        rss = self.rss()
        if rss is not None and (self.peak_rss is None or rss > self.peak_rss):
            self.peak_rss = rss


@dataclass(slots=True)
class Target:
    url: str
    meter: ServerMeter
    shards: int
    sync: str


def _server_args(opts: Options, tasks: int) -> list[str]:
    return ["--shards", str(opts.shards), "--sync", opts.sync or "interval",
            "--queue-depth-threshold", str(max(100_000, 2 * tasks))]


@contextmanager
def _own_server(opts: Options, tasks: int) -> Iterator[ServerProcess]:
    """A fresh server in a temp dir; stopped (SIGTERM) after, its group killed on error."""
    with tempfile.TemporaryDirectory(prefix="shardq-bench-", ignore_cleanup_errors=True) as tmp:
        srv = ServerProcess(os.path.join(tmp, "data"), _server_args(opts, tasks))
        try:
            srv.start(timeout=SERVER_START_TIMEOUT_S)
            yield srv
        except BaseException:
            srv.kill()
            raise
        srv.stop(timeout=max(30.0, opts.duration_limit))


@contextmanager
def _target(opts: Options, tasks: int) -> Iterator[Target]:
    """The server a throughput scenario runs against: --server, or a fresh one."""
    if opts.server is not None:
        with Connection.from_url(opts.server) as conn:
            hello = conn.call(MsgType.HELLO, {"client": f"shardq-bench/{__version__}",
                                              "protocol": 1}).header
        yield Target(opts.server, ServerMeter(opts.server_pid), int(hello.get("shards", 0)),
                     opts.sync or "unknown")
        return
    with _own_server(opts, tasks) as srv:
        yield Target(srv.url, ServerMeter(srv.pid), opts.shards, opts.sync or "interval")


# --- what the parent and its client processes share ------------------------------------------

@dataclass(slots=True)
class Control:
    """Shared by the parent and the client processes of one run."""

    ready: Any  # Value('i'): clients connected
    go: Any  # Event: start (the parent's clock starts here)
    stop: Any  # Event: stop now (done, time limit, or an error)
    done: Any  # Event: `count` reached `total`
    count: Any  # Value('q'): units done (completions, or acknowledged submits)
    finished_at: Any  # Value('d'): time.monotonic() when `count` reached `total`
    total: int
    limit_s: float

    @classmethod
    def create(cls, ctx: Any, total: int, limit_s: float) -> Control:
        return cls(ctx.Value("i", 0), ctx.Event(), ctx.Event(), ctx.Event(), ctx.Value("q", 0),
                   ctx.Value("d", 0.0), total, limit_s)

    def add(self, n: int) -> None:
        if not n:
            return
        with self.count.get_lock():
            self.count.value += n
            if self.count.value >= self.total and not self.done.is_set():
                self.finished_at.value = time.monotonic()  # system-wide clock on Linux
                self.done.set()

    def should_stop(self, deadline: float) -> bool:
        return self.done.is_set() or self.stop.is_set() or time.monotonic() >= deadline


@dataclass(slots=True)
class LatencySink:
    """Round trips (ns) recorded by several client processes into one shared array."""

    samples: Any  # RawArray('q')
    used: Any  # Value('q'): slots taken

    @classmethod
    def create(cls, ctx: Any, slots: int) -> LatencySink:
        return cls(ctx.RawArray("q", max(1, slots)), ctx.Value("q", 0))

    def add(self, ns: int) -> None:
        with self.used.get_lock():
            slot = self.used.value
            if slot >= len(self.samples):
                return
            self.used.value = slot + 1
        self.samples[slot] = ns

    def sorted(self) -> list[int]:
        return sorted(self.samples[:min(self.used.value, len(self.samples))])


def _percentiles(samples: list[int]) -> dict[str, float | None]:
    return {"p50_us": _percentile_us(samples, 500), "p99_us": _percentile_us(samples, 990),
            "p999_us": _percentile_us(samples, 999), "max_us": _percentile_us(samples, 1000)}


# --- client processes ------------------------------------------------------------------------

def _client_entry(fn: Callable[..., None], *args: Any) -> None:
    """Run one client; on failure print the traceback and exit 1 so the parent aborts."""
    try:
        fn(*args)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception:  # noqa: BLE001 - whatever ends a client, the parent must hear of it
        traceback.print_exc()
        sys.exit(1)


def _connect_and_wait(url: str, ctl: Control, shard: int | None = None) -> tuple[Connection, float]:
    """Connect (asking for ``shard`` when given), report ready, wait for the start; returns
    the connection and a deadline."""
    conn = Connection.from_url(url, timeout=30.0)
    if shard is not None:
        conn.call(MsgType.HELLO, {"client": f"shardq-bench/{__version__}", "protocol": 1, "shard": shard})
    with ctl.ready.get_lock():
        ctl.ready.value += 1
    if not ctl.go.wait(2 * CONNECT_TIMEOUT_S):
        conn.close()
        raise RuntimeError("the benchmark never started this client")
    return conn, time.monotonic() + ctl.limit_s + CLIENT_GRACE_S


def _answer(msg: Message) -> Message:
    if msg.type == MsgType.NACK:
        raise error_from_wire(msg.header.get("error") or {})
    return msg


def _queue_full_pause(msg: Message) -> None:
    """Sleep as a QueueFull NACK asks (capped); raise any other NACK."""
    err = error_from_wire(msg.header.get("error") or {})
    if not isinstance(err, QueueFull):
        raise err
    time.sleep(min(max(err.retry_after_ms, 1) / 1000, MAX_QUEUE_FULL_SLEEP_S))


def _completed(ack: Message) -> int:
    return sum(1 for r in _answer(ack).header["results"] if r.get("status") == "completed")


def _results(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"id": t["id"], "attempt": t["attempt"], "status": "completed", "result_len": 0}
            for t in tasks]


def _batched_producer(url: str, ctl: Control, share: int, batch: int, payload_bytes: int,
                      inflight: int, counts: bool, delay_ms: int = 0, shard: int | None = None,
                      latencies: LatencySink | None = None) -> None:
    """SUBMIT `share` tasks in batches, up to `inflight` requests outstanding; records each
    SUBMIT's round trip (send -> durable ACK) in `latencies`."""
    spec: dict[str, Any] = {"type": TASK_TYPE, "payload_len": payload_bytes}
    if delay_ms:
        spec["delay_ms"] = delay_ms
    specs = [spec] * batch
    blob = os.urandom(payload_bytes) * batch
    conn, deadline = _connect_and_wait(url, ctl, shard)
    with conn:
        outstanding: dict[int, tuple[int, int]] = {}  # rid -> (tasks in that SUBMIT, sent at ns)
        remaining = share
        while (remaining or outstanding) and not ctl.should_stop(deadline):
            while remaining and len(outstanding) < inflight:
                n = min(batch, remaining)
                header = {"tasks": specs if n == batch else specs[:n]}
                sent_ns = time.perf_counter_ns()
                rid = conn.send(MsgType.SUBMIT, header, blob if n == batch else blob[:n * payload_bytes])
                outstanding[rid] = (n, sent_ns)
                remaining -= n
            msg = conn.receive()
            if msg.rid not in outstanding:
                _answer(msg)  # a NACK that lost its rid (a framing error) raises here
                raise RuntimeError(f"answer to unknown rid {msg.rid}")
            n, sent_ns = outstanding.pop(msg.rid)
            if msg.type == MsgType.ACK:
                if latencies is not None:
                    latencies.add(time.perf_counter_ns() - sent_ns)
                if counts:
                    ctl.add(n)
            else:
                _queue_full_pause(msg)
                remaining += n


def _batched_consumer(url: str, ctl: Control, worker_id: str, batch: int,
                      shard: int | None = None) -> None:
    """CLAIM up to `batch`, then RESULT them and the next CLAIM back to back."""
    claim = {"worker_id": worker_id, "max": batch, "wait_ms": LIFECYCLE_CLAIM_WAIT_MS}
    conn, deadline = _connect_and_wait(url, ctl, shard)
    with conn:
        claim_rid = conn.send(MsgType.CLAIM, claim)
        while not ctl.should_stop(deadline):
            tasks = _answer(conn.wait_for(claim_rid)).header["tasks"]
            result_rid = None
            if tasks:
                result_rid = conn.send(MsgType.RESULT,
                                       {"worker_id": worker_id, "results": _results(tasks)})
            claim_rid = conn.send(MsgType.CLAIM, claim)
            if result_rid is not None:
                ctl.add(_completed(conn.wait_for(result_rid)))


def _single_producer(url: str, ctl: Control, share: int, payload_bytes: int, counts: bool,
                     latencies: Any = None) -> None:
    """SUBMIT one task per request, waiting for each ACK; optionally record each round trip."""
    header = {"tasks": [{"type": TASK_TYPE, "payload_len": payload_bytes}]}
    payload = os.urandom(payload_bytes)
    conn, deadline = _connect_and_wait(url, ctl)
    with conn:
        sent = 0
        while sent < share and not ctl.should_stop(deadline):
            t0 = time.perf_counter_ns()
            msg = conn.wait_for(conn.send(MsgType.SUBMIT, header, payload))
            t1 = time.perf_counter_ns()
            if msg.type != MsgType.ACK:
                _queue_full_pause(msg)
                continue
            if latencies is not None:
                latencies[sent] = t1 - t0
            sent += 1
            if counts:
                ctl.add(1)


def _single_consumer(url: str, ctl: Control, worker_id: str) -> None:
    """CLAIM one task, RESULT it, wait for each ACK."""
    claim = {"worker_id": worker_id, "max": 1, "wait_ms": UNPIPELINED_CLAIM_WAIT_MS}
    conn, deadline = _connect_and_wait(url, ctl)
    with conn:
        while not ctl.should_stop(deadline):
            tasks = conn.call(MsgType.CLAIM, claim).header["tasks"]
            if tasks:
                ctl.add(_completed(conn.wait_for(conn.send(
                    MsgType.RESULT, {"worker_id": worker_id, "results": _results(tasks)}))))


# --- the parent: start clients, time them, watch the server ----------------------------------

class Progress:
    """A line a second on stderr once a run has lasted a second: `\\r`-updated on a terminal."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.next_at = 1.0
        self.printed = False

    def update(self, done: int, elapsed: float) -> None:
        if elapsed < self.next_at:
            return
        self.next_at = int(elapsed) + 1.0
        line = (f"{self.label}: {done}/{self.total} ({100 * done / self.total:.0f}%) "
                f"{done / elapsed:,.0f}/s {elapsed:.0f}s")
        self.stream.write(f"\r{line}\x1b[K" if self.tty else line + "\n")
        self.stream.flush()
        self.printed = True

    def close(self) -> None:
        if self.tty and self.printed:
            self.stream.write("\n")
            self.stream.flush()


@dataclass(slots=True)
class RunStats:
    done: int
    elapsed_s: float
    cpu_s: float | None
    timed_out: bool


def _split(total: int, parts: int) -> list[int]:
    """`total` as `parts` near-equal shares, none of them zero."""
    base, extra = divmod(total, parts)
    return [s for s in (base + (i < extra) for i in range(parts)) if s]


def _check_clients(procs: list[Any], signalled_ok: bool = False) -> None:
    """Raise if a client failed (after a run, one we had to terminate is not a failure)."""
    for p in procs:
        if p.exitcode not in (None, 0) and not (signalled_ok and p.exitcode < 0):
            raise RuntimeError(f"client process {p.name} failed with exit code {p.exitcode}"
                               " (its traceback is above)")


def _reap(procs: list[Any]) -> None:
    """Join every client, terminating (then killing) the ones that do not end in time."""
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    for p in procs:
        if p.pid is not None:
            p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.terminate()
            p.join(5)
        if p.is_alive():
            p.kill()
            p.join(5)


def _drive(ctx: Any, label: str, ctl: Control, clients: list[tuple[Callable[..., None], tuple]],
           meter: ServerMeter) -> RunStats:
    """Start the clients, wait for all to connect, start the clock, watch until done or the limit."""
    procs = [ctx.Process(target=_client_entry, args=(fn, *args), daemon=True,
                         name=f"{label}:{fn.__name__.lstrip('_')}-{i}")
             for i, (fn, args) in enumerate(clients)]
    try:
        for p in procs:
            p.start()
        connect_deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while ctl.ready.value < len(procs):
            _check_clients(procs)
            if time.monotonic() > connect_deadline:
                raise RuntimeError(f"{label}: clients did not connect within {CONNECT_TIMEOUT_S:.0f} s")
            time.sleep(0.01)
        meter.sample()
        cpu0 = meter.cpu_seconds()
        progress = Progress(label, ctl.total)
        t0 = time.monotonic()
        ctl.go.set()
        timed_out = False
        try:
            while not ctl.done.wait(SAMPLE_PERIOD_S):
                now = time.monotonic()
                meter.sample()
                progress.update(ctl.count.value, now - t0)
                _check_clients(procs)
                if now - t0 >= ctl.limit_s:
                    timed_out = True
                    break
                if all(p.exitcode == 0 for p in procs):
                    break  # every client ended; nothing can add to the count any more
        finally:
            progress.close()
        finished = ctl.done.is_set()
        end = ctl.finished_at.value if finished else time.monotonic()
        cpu1 = meter.cpu_seconds()
        meter.sample()
        ctl.stop.set()
        _reap(procs)
        _check_clients(procs, signalled_ok=True)
        return RunStats(done=ctl.count.value, elapsed_s=end - t0,
                        cpu_s=None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
                        timed_out=timed_out and not finished)
    finally:
        ctl.stop.set()
        _reap(procs)


def _server_metrics(stats: RunStats, meter: ServerMeter) -> dict[str, Any]:
    return {
        "elapsed_s": round(stats.elapsed_s, 4),
        "server_cpu_s": None if stats.cpu_s is None else round(stats.cpu_s, 4),
        "server_cpu_us_per_task": (None if stats.cpu_s is None or not stats.done
                                   else round(stats.cpu_s * 1e6 / stats.done, 2)),
        "server_cpu_s_per_10k_tasks": (None if stats.cpu_s is None or not stats.done
                                       else round(stats.cpu_s * 10_000 / stats.done, 3)),
        "peak_server_rss_bytes": meter.peak_rss,
        "timed_out": stats.timed_out,
    }


def _percentile_us(sorted_ns: list[int], per_mille: int) -> float | None:
    """Nearest-rank percentile (per_mille 500 = p50, 999 = p99.9), in microseconds."""
    if not sorted_ns:
        return None
    rank = max(1, -(-per_mille * len(sorted_ns) // 1000))  # ceil(per_mille / 1000 * n), exactly
    return round(sorted_ns[rank - 1] / 1000, 1)


# --- scenarios -------------------------------------------------------------------------------

def run_lifecycle(ctx: Any, opts: Options) -> dict[str, Any]:
    tasks = opts.tasks_for("lifecycle")
    with _target(opts, tasks) as target:
        name = (f"lifecycle_b{opts.batch}_p{opts.payload_bytes}B_sync-{target.sync}"
                f"_shards{target.shards}")
        ctl = Control.create(ctx, tasks, opts.duration_limit)
        latencies = LatencySink.create(ctx, -(-tasks // opts.batch) + opts.producers)
        clients = [(_batched_producer, (target.url, ctl, share, opts.batch, opts.payload_bytes,
                                        opts.inflight, False, 0, None, latencies))
                   for share in _split(tasks, opts.producers)]
        clients += [(_batched_consumer, (target.url, ctl, f"bench-{i}", opts.batch))
                    for i in range(opts.consumers)]
        stats = _drive(ctx, name, ctl, clients, target.meter)
        return {"scenario": name, "kind": "lifecycle", "tasks": tasks, "completed": stats.done,
                "completed_per_s": round(stats.done / stats.elapsed_s, 1),
                "latency_of": "SUBMIT batch round trip", **_percentiles(latencies.sorted()),
                "batch": opts.batch, "payload_bytes": opts.payload_bytes,
                "producers": opts.producers, "consumers": opts.consumers,
                "inflight": opts.inflight, **_server_metrics(stats, target.meter)}


def run_unpipelined(ctx: Any, opts: Options) -> dict[str, Any]:
    tasks = opts.tasks_for("unpipelined")
    with _target(opts, tasks) as target:
        name = (f"unpipelined_c{opts.clients}_p{opts.payload_bytes}B_sync-{target.sync}"
                f"_shards{target.shards}")
        ctl = Control.create(ctx, tasks, opts.duration_limit)
        clients = [(_single_producer, (target.url, ctl, share, opts.payload_bytes, False))
                   for share in _split(tasks, opts.clients)]
        clients += [(_single_consumer, (target.url, ctl, f"bench-{i}"))
                    for i in range(opts.clients)]
        stats = _drive(ctx, name, ctl, clients, target.meter)
        return {"scenario": name, "kind": "unpipelined", "tasks": tasks, "completed": stats.done,
                "completed_per_s": round(stats.done / stats.elapsed_s, 1),
                "clients": opts.clients, "payload_bytes": opts.payload_bytes,
                **_server_metrics(stats, target.meter)}


def run_submit_latency(ctx: Any, opts: Options) -> dict[str, Any]:
    tasks = opts.tasks_for("submit-latency")
    with _target(opts, tasks) as target:
        name = f"submit-latency_p{opts.payload_bytes}B_sync-{target.sync}"
        ctl = Control.create(ctx, tasks, opts.duration_limit)
        latencies = ctx.RawArray("q", tasks)
        stats = _drive(ctx, name, ctl, [(_single_producer, (target.url, ctl, tasks,
                                                            opts.payload_bytes, True, latencies))],
                       target.meter)
        samples = sorted(latencies[:stats.done])
        return {"scenario": name, "kind": "submit-latency", "tasks": tasks,
                "submitted": stats.done, "submits_per_s": round(stats.done / stats.elapsed_s, 1),
                **_percentiles(samples), "payload_bytes": opts.payload_bytes,
                **_server_metrics(stats, target.meter)}


def _recovered_seconds(srv: ServerProcess, wait_s: float = 2.0) -> float | None:
    """The server's own `recovered ... seconds=X` (logged before READY; stderr may lag)."""
    deadline = time.monotonic() + wait_s
    while True:
        for line in list(srv.stderr_lines):
            match = RECOVERED_RE.search(line)
            if match:
                return float(match.group(1))
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def _pending(srv: ServerProcess, expected: int) -> int:
    """GET_STATS totals.pending, re-asked for a few seconds until it shows `expected`."""
    deadline = time.monotonic() + STATS_SETTLE_S
    with srv.connect() as conn:
        while True:
            pending = int(conn.call(MsgType.GET_STATS, {}).header["totals"]["pending"])
            if pending == expected or time.monotonic() >= deadline:
                return pending
            time.sleep(0.2)


def run_recovery(ctx: Any, opts: Options) -> dict[str, Any]:
    tasks = opts.tasks_for("recovery")
    name = f"recovery_{tasks}"
    errors: list[str] = []
    limit = max(SERVER_START_TIMEOUT_S, opts.duration_limit)
    with _own_server(opts, tasks) as srv:
        fill_meter = ServerMeter(srv.pid)
        empty_rss = fill_meter.rss()
        ctl = Control.create(ctx, tasks, opts.duration_limit)
        clients = [(_batched_producer, (srv.url, ctl, share, RECOVERY_BATCH, opts.payload_bytes,
                                        opts.inflight, True))
                   for share in _split(tasks, opts.producers)]
        fill = _drive(ctx, f"{name} fill", ctl, clients, fill_meter)
        filled_rss = fill_meter.rss()
        if fill.done != tasks:
            errors.append(f"filled {fill.done} of {tasks} tasks within the duration limit")

        t0 = time.monotonic()
        exit_code = srv.stop(timeout=limit)
        shutdown_s = time.monotonic() - t0
        if exit_code != 0:
            errors.append(f"SIGTERM: the server exited with {exit_code}, not 0")

        t0 = time.monotonic()
        srv.start(timeout=limit, port=0)
        ready_s = time.monotonic() - t0
        restarted_meter = ServerMeter(srv.pid)
        recovered_s = _recovered_seconds(srv)
        if recovered_s is None:
            errors.append("no `recovered ... seconds=X` line in the server's log")
        pending = _pending(srv, fill.done)
        if pending != fill.done:
            errors.append(f"GET_STATS after restart: pending={pending}, expected {fill.done}")
        restarted_rss = restarted_meter.rss()
        per_task = (None if empty_rss is None or restarted_rss is None or not fill.done
                    else round((restarted_rss - empty_rss) / fill.done, 1))
        return {"scenario": name, "kind": "recovery", "tasks": tasks, "submitted": fill.done,
                "payload_bytes": opts.payload_bytes, "producers": opts.producers,
                "fill_elapsed_s": round(fill.elapsed_s, 4),
                "fill_per_s": round(fill.done / fill.elapsed_s, 1),
                "fill_server_cpu_us_per_task": (None if fill.cpu_s is None or not fill.done
                                                else round(fill.cpu_s * 1e6 / fill.done, 2)),
                "empty_rss_bytes": empty_rss, "filled_rss_bytes": filled_rss,
                "restarted_rss_bytes": restarted_rss, "rss_bytes_per_queued_task": per_task,
                "shutdown_s": round(shutdown_s, 3), "sigterm_exit_code": exit_code,
                "restart_to_ready_s": round(ready_s, 3), "recovery_s": recovered_s,
                "pending_after_restart": pending,
                "peak_server_rss_bytes": max(filter(None, (fill_meter.peak_rss, filled_rss,
                                                           restarted_rss)), default=None),
                "timed_out": fill.timed_out, "errors": errors}


def run_group_commit(ctx: Any, opts: Options) -> list[dict[str, Any]]:
    tasks = opts.tasks_for("group-commit")
    sync = opts.sync or "always"
    out = []
    for producers in GROUP_COMMIT_PRODUCERS:
        run_opts = Options(**{**{f: getattr(opts, f) for f in Options.__dataclass_fields__}, "sync": sync})
        with _target(run_opts, tasks) as target:
            name = f"group-commit_c{producers}_p{opts.payload_bytes}B_sync-{target.sync}"
            ctl = Control.create(ctx, tasks, opts.duration_limit)
            shares = _split(tasks, producers)
            arrays = [ctx.RawArray("q", share) for share in shares]
            clients = [(_single_producer, (target.url, ctl, share, opts.payload_bytes, True, arr))
                       for share, arr in zip(shares, arrays)]
            stats = _drive(ctx, name, ctl, clients, target.meter)
            samples = sorted(v for arr in arrays for v in arr[:] if v)
            out.append({"scenario": name, "kind": "group-commit", "tasks": tasks, "producers": producers,
                        "submitted": stats.done, "submits_per_s": round(stats.done / stats.elapsed_s, 1),
                        **_percentiles(samples),
                        "payload_bytes": opts.payload_bytes, **_server_metrics(stats, target.meter)})
    return out


def run_delayed_flood(ctx: Any, opts: Options) -> dict[str, Any]:
    tasks = opts.tasks_for("delayed-flood")
    with _target(opts, tasks) as target:
        name = (f"delayed-flood_b{opts.batch}_d{FLOOD_DELAY_MS}ms_sync-{target.sync}"
                f"_shards{target.shards}")
        ctl = Control.create(ctx, tasks, opts.duration_limit)
        latencies = LatencySink.create(ctx, -(-tasks // opts.batch) + opts.producers)
        clients = [(_batched_producer, (target.url, ctl, share, opts.batch, opts.payload_bytes,
                                        opts.inflight, False, FLOOD_DELAY_MS, None, latencies))
                   for share in _split(tasks, opts.producers)]
        clients += [(_batched_consumer, (target.url, ctl, f"bench-{i}", opts.batch))
                    for i in range(opts.consumers)]
        stats = _drive(ctx, name, ctl, clients, target.meter)
        return {"scenario": name, "kind": "delayed-flood", "tasks": tasks, "completed": stats.done,
                "completed_per_s": round(stats.done / stats.elapsed_s, 1), "delay_ms": FLOOD_DELAY_MS,
                "latency_of": "SUBMIT batch round trip", **_percentiles(latencies.sorted()),
                "batch": opts.batch, **_server_metrics(stats, target.meter)}


def _forwarded(url: str) -> int:
    with Connection.from_url(url) as conn:
        return sum(int(r.get("forwarded") or 0) for r in conn.call(MsgType.GET_STATS, {}).header["shards"])


def run_cross_shard(ctx: Any, opts: Options) -> dict[str, Any]:
    tasks = opts.tasks_for("cross-shard")
    run_opts = Options(**{**{f: getattr(opts, f) for f in Options.__dataclass_fields__}, "shards": 2})
    with _target(run_opts, tasks) as target:
        if target.shards < 2:
            raise RuntimeError("cross-shard needs a server with at least 2 shards")
        name = f"cross-shard_b{opts.batch}_p{opts.payload_bytes}B_sync-{target.sync}"
        ctl = Control.create(ctx, tasks, opts.duration_limit)
        latencies = LatencySink.create(ctx, -(-tasks // opts.batch) + opts.producers)
        clients = [(_batched_producer, (target.url, ctl, share, opts.batch, opts.payload_bytes,
                                        opts.inflight, False, 0, 0, latencies))
                   for share in _split(tasks, opts.producers)]
        clients += [(_batched_consumer, (target.url, ctl, f"bench-{i}", opts.batch, 1))
                    for i in range(opts.consumers)]
        before = _forwarded(target.url)
        stats = _drive(ctx, name, ctl, clients, target.meter)
        hops = _forwarded(target.url) - before
        return {"scenario": name, "kind": "cross-shard", "tasks": tasks, "completed": stats.done,
                "completed_per_s": round(stats.done / stats.elapsed_s, 1), "batch": opts.batch,
                "latency_of": "SUBMIT batch round trip", **_percentiles(latencies.sorted()),
                "hops": hops, "hops_per_task": round(hops / max(1, stats.done), 4),
                **_server_metrics(stats, target.meter)}


RUNNERS: dict[str, Callable[[Any, Options], Any]] = {
    "lifecycle": run_lifecycle, "unpipelined": run_unpipelined,
    "submit-latency": run_submit_latency, "group-commit": run_group_commit,
    "delayed-flood": run_delayed_flood, "cross-shard": run_cross_shard, "recovery": run_recovery,
}


# --- output ----------------------------------------------------------------------------------

def _rate(result: dict[str, Any]) -> float | None:
    return result.get("completed_per_s", result.get("submits_per_s", result.get("fill_per_s")))


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}{unit}"
    return f"{value:,}{unit}"


def _cpu10k(r: dict[str, Any]) -> str:
    per_task = r.get("server_cpu_us_per_task", r.get("fill_server_cpu_us_per_task"))
    return "-" if per_task is None else f"{per_task * 10_000 / 1e6:,.3f}"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.1f} MiB"


def format_table(results: list[dict[str, Any]]) -> str:
    head = ("scenario", "tasks/s", "p50", "p99", "p999", "server CPU s/10k tasks", "peak RSS")
    rows = [head] + [(r["scenario"] + (" (timed out)" if r.get("timed_out") else ""),
                      _fmt(_rate(r)), _fmt(r.get("p50_us"), " us"), _fmt(r.get("p99_us"), " us"),
                      _fmt(r.get("p999_us"), " us"), _cpu10k(r),
                      _mib(r.get("peak_server_rss_bytes")))
                     for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [" | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                        enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    for r in results:
        if r["kind"] == "cross-shard":
            lines.append(f"{r['scenario']}: {r['hops']:,} cross-shard hops, {r['hops_per_task']} per task")
        if r["kind"] == "submit-latency":
            lines.append(f"{r['scenario']}: p999 {_fmt(r['p999_us'], ' us')}, "
                         f"max {_fmt(r['max_us'], ' us')}")
        if r["kind"] == "recovery":
            lines.append(
                f"{r['scenario']}: filled at {_fmt(r['fill_per_s'])} tasks/s; SIGTERM exit "
                f"{r['sigterm_exit_code']} in {r['shutdown_s']} s; restart to READY "
                f"{r['restart_to_ready_s']} s (recovery {r['recovery_s']} s in-process); "
                f"RSS empty {_mib(r['empty_rss_bytes'])}, filled {_mib(r['filled_rss_bytes'])}, "
                f"restarted {_mib(r['restarted_rss_bytes'])} = "
                f"{_fmt(r['rss_bytes_per_queued_task'])} B/queued task; "
                f"pending after restart {r['pending_after_restart']:,}")
        for err in r.get("errors") or ():
            lines.append(f"{r['scenario']}: CHECK FAILED: {err}")
    return "\n".join(lines)


def _report(opts: Options, results: list[dict[str, Any]]) -> None:
    if opts.json:
        doc = {"benchmark": "shardq", "version": __version__, "python": sys.version.split()[0],
               "cpus": os.cpu_count(), "server": opts.server or "own", "results": results}
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif results:
        print(format_table(results))
    sys.stdout.flush()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run(args: argparse.Namespace) -> int:
    try:
        opts = Options.from_args(args)
    except ValueError as exc:
        print(f"shardq bench: {exc}", file=sys.stderr)
        return 2
    # SIGTERM unwinds like Ctrl-C, so the servers (in their own sessions) and clients are ended.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run(opts)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(opts: Options) -> int:
    ctx = multiprocessing.get_context("spawn")
    results: list[dict[str, Any]] = []
    status = 0
    for scenario in opts.scenarios:
        try:
            outcome = RUNNERS[scenario](ctx, opts)
            results.extend(outcome if isinstance(outcome, list) else [outcome])
        except KeyboardInterrupt:
            print(f"shardq bench: {scenario}: interrupted", file=sys.stderr)
            status = 130
            break
        except (ShardqError, RuntimeError, OSError, psutil.Error, subprocess.SubprocessError) as exc:
            print(f"shardq bench: {scenario}: {type(exc).__name__}: {exc}", file=sys.stderr)
            status = 1
            break
    _report(opts, results)
    if status == 0 and any(r.get("errors") for r in results):
        status = 1
    return status


__all__ = ["Options", "ServerMeter", "add_arguments", "format_table", "run"]
