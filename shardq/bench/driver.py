"""The parent side of one run: start the clients, wait until all are connected, start the clock,
watch the count and the server until done or the limit, then reap the clients.

Also what a run's numbers become: the server's CPU per task, and nearest-rank percentiles.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from shardq.bench.clients import CONNECT_TIMEOUT_S, Control, client_entry
from shardq.bench.target import ServerMeter

JOIN_TIMEOUT_S = 10.0
SAMPLE_PERIOD_S = 0.1


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


def split(total: int, parts: int) -> list[int]:
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


def drive(ctx: Any, label: str, ctl: Control, clients: list[tuple[Callable[..., None], tuple]],
           meter: ServerMeter) -> RunStats:
    """Start the clients, wait for all to connect, start the clock, watch until done or the limit."""
    procs = [ctx.Process(target=client_entry, args=(fn, *args), daemon=True,
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


def server_metrics(stats: RunStats, meter: ServerMeter) -> dict[str, Any]:
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



def percentiles(samples: list[int]) -> dict[str, float | None]:
    return {"p50_us": _percentile_us(samples, 500), "p99_us": _percentile_us(samples, 990),
            "p999_us": _percentile_us(samples, 999), "max_us": _percentile_us(samples, 1000)}
