"""The client processes of a benchmark, and what they share with the parent.

Each client runs in its own process ("spawn"): it connects, reports ready, waits for the parent's
start, then submits or claims until its share is done, the parent says stop, or its own deadline
passes. `Control` and `LatencySink` live in shared memory; nothing else crosses processes.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shardq import __version__
from shardq.bench.options import TASK_TYPE
from shardq.client.connection import Connection
from shardq.errors import QueueFull, error_from_wire
from shardq.protocol.frames import Message, MsgType

LIFECYCLE_CLAIM_WAIT_MS = 500
UNPIPELINED_CLAIM_WAIT_MS = 200
MAX_QUEUE_FULL_SLEEP_S = 1.0
CONNECT_TIMEOUT_S = 60.0  # for every spawned client to import shardq and connect
CLIENT_GRACE_S = 5.0  # a client's own deadline runs this much past the parent's


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



# --- client processes ------------------------------------------------------------------------

def client_entry(fn: Callable[..., None], *args: Any) -> None:
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


def batched_producer(url: str, ctl: Control, share: int, batch: int, payload_bytes: int,
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


def batched_consumer(url: str, ctl: Control, worker_id: str, batch: int,
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


def single_producer(url: str, ctl: Control, share: int, payload_bytes: int, counts: bool,
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


def single_consumer(url: str, ctl: Control, worker_id: str) -> None:
    """CLAIM one task, RESULT it, wait for each ACK."""
    claim = {"worker_id": worker_id, "max": 1, "wait_ms": UNPIPELINED_CLAIM_WAIT_MS}
    conn, deadline = _connect_and_wait(url, ctl)
    with conn:
        while not ctl.should_stop(deadline):
            tasks = conn.call(MsgType.CLAIM, claim).header["tasks"]
            if tasks:
                ctl.add(_completed(conn.wait_for(conn.send(
                    MsgType.RESULT, {"worker_id": worker_id, "results": _results(tasks)}))))

