"""Per task type figures, kept by each shard from its own transitions: depth by status, the oldest
pending task, completions over the last minute, and run time and queue wait over a recent window.

Rules:
1. Bounded memory per type, whatever the traffic: the live counts, one entry per second in which a
   pending task became due, a ring of 60 one-second completion counts, and two log-bucketed
   histograms (run time, queue wait) per window. The window is WINDOW_MS long, and the figures
   cover the current window and the one before it ("recent": the last 1-2 minutes).
2. Histograms are merged across shards by adding bucket counts; percentiles are read from the
   merged buckets (``percentiles``), never averaged. A bucket is a quarter of a power of two
   wide, so a percentile is within ~19 % of the true value.
3. Cheap on the hot path: ``observe`` is a few integer operations; nothing here allocates per task.
Pure: no I/O; times are passed in (epoch ms).
"""

from __future__ import annotations

from typing import Any

WINDOW_MS = 60_000
RING = 60  # seconds of completions kept: throughput over the last minute
SUB = 4  # buckets per power of two
N_BUCKETS = 4 + 40 * SUB  # up to 2^40 ms (35 years): every duration has a bucket


def bucket(ms: int) -> int:
    """The histogram bucket of a duration in ms (0..3 exact, then SUB per power of two)."""
    if ms < 4:
        return ms if ms > 0 else 0
    e = ms.bit_length()  # 2^(e-1) <= ms < 2^e, e >= 3
    idx = (e - 2) * SUB + ((ms >> (e - 3)) & 3)
    return idx if idx < N_BUCKETS else N_BUCKETS - 1


def bucket_upper(idx: int) -> float:
    """The largest duration (ms) bucket ``idx`` holds: what a percentile reports."""
    if idx < 4:
        return float(idx)
    e = idx // SUB + 2
    frac = idx % SUB
    return float(((4 + frac + 1) << (e - 3)) - 1)


class Windowed:
    """A histogram over the current window and the previous one (rule 1), and over every window
    before them since the shard started (``rolled``: with ``cur`` and ``prev``, what Prometheus
    histograms are made of, metrics.py). An observation touches ``cur`` alone (rule 3): the
    windows are added into ``rolled`` when they roll."""

    __slots__ = ("start", "cur", "prev", "rolled")

    def __init__(self, now: int) -> None:
        self.start = now - now % WINDOW_MS
        self.cur = [0] * N_BUCKETS
        self.prev = [0] * N_BUCKETS
        self.rolled = [0] * N_BUCKETS

    def roll(self, now: int) -> None:
        r = self.rolled
        for i, n in enumerate(self.prev):
            if n:
                r[i] += n
        if now - self.start >= 2 * WINDOW_MS:
            for i, n in enumerate(self.cur):
                if n:
                    r[i] += n
            self.prev = [0] * N_BUCKETS
        else:
            self.prev = self.cur
        self.cur = [0] * N_BUCKETS
        self.start = now - now % WINDOW_MS

    def observe(self, ms: int, now: int) -> None:
        if now - self.start >= WINDOW_MS:
            self.roll(now)
        self.cur[bucket(ms if ms > 0 else 0)] += 1

    def since_start(self) -> list[int]:
        return [a + b + c for a, b, c in zip(self.rolled, self.prev, self.cur)]

    def sparse(self, now: int) -> dict[int, int]:
        """The recent counts by bucket, without the empty ones (what a shard sends)."""
        if now - self.start >= WINDOW_MS:
            self.roll(now)
        return {i: a + b for i, (a, b) in enumerate(zip(self.cur, self.prev)) if a or b}


class TypeFigures:
    """One task type on one shard."""

    __slots__ = ("counts", "due_seconds", "ring", "ring_at", "run", "wait")

    def __init__(self) -> None:
        self.counts = [0] * 6  # by status code; completed and cancelled are not kept (see insight.py)
        self.due_seconds: dict[int, int] = {}  # pending tasks by the second they became due
        self.ring = [0] * RING
        self.ring_at = [0] * RING  # the second each slot counts
        self.run: Windowed | None = None
        self.wait: Windowed | None = None

    def pending_in(self, due_ms: int) -> None:
        sec = due_ms // 1000
        d = self.due_seconds
        d[sec] = d.get(sec, 0) + 1

    def pending_out(self, due_ms: int) -> None:
        sec = due_ms // 1000
        d = self.due_seconds
        n = d.get(sec, 0) - 1
        if n > 0:
            d[sec] = n
        else:
            d.pop(sec, None)

    def waited(self, ms: int, now: int) -> None:
        w = self.wait
        if w is None:
            w = self.wait = Windowed(now)
        w.observe(ms, now)

    def completed(self, run_ms: int, now: int) -> None:
        r = self.run
        if r is None:
            r = self.run = Windowed(now)
        r.observe(run_ms, now)
        sec = now // 1000
        slot = sec % RING
        if self.ring_at[slot] != sec:
            self.ring_at[slot] = sec
            self.ring[slot] = 0
        self.ring[slot] += 1

    def idle(self, now: int) -> bool:
        """Nothing live and nothing recent: the type's figures can be dropped."""
        c = self.counts  # completed and cancelled only ever grow: not a reason to keep a type
        return not (c[0] or c[1] or c[3] or c[4]) and self.last_minute(now) == 0 and \
            (self.run is None or now - self.run.start >= 2 * WINDOW_MS) and \
            (self.wait is None or now - self.wait.start >= 2 * WINDOW_MS)

    def last_minute(self, now: int) -> int:
        sec = now // 1000
        return sum(n for n, at in zip(self.ring, self.ring_at) if sec - RING < at <= sec)

    def row(self, now: int) -> dict[str, Any]:
        """This shard's part, as sent to the shard that merges (``merge``)."""
        oldest = min(self.due_seconds) * 1000 if self.due_seconds else None
        return {"pending": self.counts[0], "in_progress": self.counts[1], "failed": self.counts[3],
                "dead_letter": self.counts[4], "oldest_due_ms": oldest,
                "completed_last_minute": self.last_minute(now),
                "run": {str(k): v for k, v in (self.run.sparse(now) if self.run else {}).items()},
                "wait": {str(k): v for k, v in (self.wait.sparse(now) if self.wait else {}).items()},
                "run_total": _since_start(self.run), "wait_total": _since_start(self.wait)}


def _since_start(w: Windowed | None) -> dict[str, Any]:
    """Counts by bucket since the start, and their sum estimated from the buckets (the middle of
    each: an observation's own value is not kept, rule 3)."""
    if w is None:
        return {"buckets": {}, "sum_ms": 0}
    counts = w.since_start()
    est = sum(n * (bucket_upper(i) + (bucket_upper(i - 1) if i else 0)) / 2 for i, n in enumerate(counts) if n)
    return {"buckets": {str(i): n for i, n in enumerate(counts) if n}, "sum_ms": round(est)}


# Prometheus bucket bounds (seconds) for the per-type histograms: a fine bucket is counted under a
# bound when its whole range is below it (metrics.py).
PROM_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)


def prometheus_buckets(fine: dict[str, int]) -> list[tuple[float, int]]:
    """Cumulative (upper bound s, count) pairs, +Inf last, from a row's fine bucket counts."""
    items = sorted((bucket_upper(int(k)) / 1000, n) for k, n in fine.items())
    out = []
    for bound in PROM_BOUNDS:
        out.append((bound, sum(n for upper, n in items if upper <= bound)))
    out.append((float("inf"), sum(n for _, n in items)))
    return out


COUNT_KEYS = ("pending", "in_progress", "failed", "dead_letter")


def percentiles(hist: dict[int, int], qs: tuple[float, ...] = (0.5, 0.95, 0.99)) -> dict[str, float | None]:
    """p50/p95/p99 (in seconds) of a merged histogram (rule 2); None without observations."""
    total = sum(hist.values())
    names = [f"p{round(q * 100)}" for q in qs]
    if not total:
        return dict.fromkeys(names, None)
    out: dict[str, float | None] = {}
    ordered = sorted(hist.items())
    for name, q in zip(names, qs):
        need = q * total
        seen = 0
        for idx, n in ordered:
            seen += n
            if seen >= need:
                out[name] = bucket_upper(idx) / 1000
                break
    return out


def merge(rows: list[dict[str, dict[str, Any]]], now: int) -> list[dict[str, Any]]:
    """Every shard's rows by type -> one figure per type (rule 2), sorted by type."""
    by_type: dict[str, dict[str, Any]] = {}
    for shard_rows in rows:
        for task_type, r in shard_rows.items():
            m = by_type.get(task_type)
            if m is None:
                m = by_type[task_type] = {"type": task_type, **dict.fromkeys(COUNT_KEYS, 0),
                                          "oldest_due_ms": None, "completed_last_minute": 0,
                                          "_run": {}, "_wait": {}}
            for k in COUNT_KEYS:
                m[k] += r.get(k, 0)
            due = r.get("oldest_due_ms")
            if due is not None and (m["oldest_due_ms"] is None or due < m["oldest_due_ms"]):
                m["oldest_due_ms"] = due
            m["completed_last_minute"] += r.get("completed_last_minute", 0)
            for key in ("run", "wait"):
                acc = m["_" + key]
                for idx, n in (r.get(key) or {}).items():
                    acc[int(idx)] = acc.get(int(idx), 0) + n
    out = []
    for task_type in sorted(by_type):
        m = by_type[task_type]
        due = m.pop("oldest_due_ms")
        m["oldest_pending_age_s"] = None if due is None else max(0.0, (now - due) / 1000)
        m["throughput_per_s"] = round(m["completed_last_minute"] / 60, 3)
        run, wait = m.pop("_run"), m.pop("_wait")
        m["run_time_s"] = {**percentiles(run), "count": sum(run.values())}
        m["queue_wait_s"] = {**percentiles(wait), "count": sum(wait.values())}
        out.append(m)
    return out
