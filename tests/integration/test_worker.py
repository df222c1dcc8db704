"""The worker runtime end to end: real ``shardq serve`` processes and real
``python -m shardq.worker worker_apps:app`` processes (handlers in worker_apps.py).

Servers run with short leases (``--lease-timeout-ms 1000 --heartbeat-interval-ms 300``: a worker
silent for 600 ms is dead) so that losing a lease takes a second, not a minute. Every wait is
bounded by a deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import worker_apps

import shardq
from shardq.client.models import TaskFailed

HERE = Path(__file__).resolve().parent
SHORT_LEASES = ("--shards", "1", "--lease-timeout-ms", "1000", "--heartbeat-interval-ms", "300")
FAST_RETRIES = {"SHARDQ_BROKER__RETRY_BACKOFF_BASE_MS": "50"}


class WorkerProcess:
    """``python -m shardq.worker worker_apps:app --server URL ...`` in its own process group."""

    def __init__(self, url: str, args: tuple[str, ...], marks: Path) -> None:
        env = dict(os.environ, SHARDQ_TEST_MARKS=str(marks),
                   PYTHONPATH=os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p))
        self.cmd = [sys.executable, "-m", "shardq.worker", "worker_apps:app", "--server", url, *args]
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, env=env, start_new_session=True)
        self.lines: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_for_log(self, text: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log:
                return
            if self.proc.poll() is not None:
                time.sleep(0.1)  # let the pump catch up
                break
            time.sleep(0.02)
        assert text in self.log, f"worker never logged {text!r}; its log:\n{self.log}"

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill9(self) -> None:
        """kill -9 the worker and anything it started."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker still running after {timeout} s; its log:\n{self.log}") from None

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)


@pytest.fixture
def marks(tmp_path) -> Path:
    return tmp_path / "marks.log"


@pytest.fixture
def worker_factory(marks) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(srv, *args: str) -> WorkerProcess:
        w = WorkerProcess(srv.url, args, marks)
        started.append(w)
        return w

    yield start
    for w in started:
        w.cleanup()


def read_marks(path: Path) -> list[tuple[str, str, int, int, float]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        event, tid, attempt, pid, when = line.split()
        out.append((event, tid, int(attempt), int(pid), float(when)))
    return out


def wait_for_mark(path: Path, event: str, tid: str, attempt: int, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in read_marks(path):
            if m[0] == event and m[1] == tid and m[2] == attempt:
                return m
        time.sleep(0.02)
    raise AssertionError(f"no {event!r} mark for task {tid} attempt {attempt}: {read_marks(path)}")


def wait_until(check: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# -- results -------------------------------------------------------------------------------------


def test_sync_and_async_handlers_complete_with_results(server_factory, worker_factory) -> None:
    srv = server_factory(*SHORT_LEASES)
    worker = worker_factory(srv, "--concurrency", "4", "--heartbeat-interval-ms", "200",
                            "--worker-id", "w-results")
    worker.wait_for_log(" ready: ")
    with shardq.Client(srv.url) as client:  # submitted while the worker waits on an empty queue
        add = client.submit("add", {"a": 2, "b": 40})
        echo = client.submit("async_echo", ["hi", 1])
        raw = client.submit("raw", b"\x00\x01binary")
        sync_result = orjson.loads(client.wait(add, timeout=10))
        async_result = orjson.loads(client.wait(echo, timeout=10))
        assert client.wait(raw, timeout=10) == b"yranib\x01\x00"

        assert sync_result == {"sum": 42, "id": add, "attempt": 1, "retry_count": 0,
                               "worker_id": "w-results", "pid": worker.proc.pid}
        assert async_result == {"echo": ["hi", 1], "type": "async_echo", "id": echo, "attempt": 1,
                                "retry_count": 0, "worker_id": "w-results", "pid": worker.proc.pid}
        task = client.status(add)
        assert task.status == "completed" and task.worker_id in (None, "w-results")

        # Registered with what it runs; heartbeats carry psutil's CPU and memory figures.
        def me() -> dict | None:
            found = [w for w in client.workers() if w["worker_id"] == "w-results"]
            return found[0] if found and found[0].get("memory_rss") else None
        info = wait_until(me, 5, "a heartbeat with memory figures")
        assert info["pid"] == worker.proc.pid and info["concurrency"] == 4
        assert set(info["types"]) >= {"add", "async_echo", "raw", "gil_hog"}
        assert info["memory_rss"] > 10_000_000 and 0 < info["memory_percent"] < 100
        assert info["cpu_percent"] is not None and info["state"] == "running"

    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    assert f"task {add} add completed in " in worker.log and "ms (attempt 1)" in worker.log
    assert f"task {echo} async_echo completed in " in worker.log
    with shardq.Client(srv.url) as client:
        assert not [w for w in client.workers() if w["worker_id"] == "w-results"], "not deregistered"


def test_burst_drains_the_queue_and_exits(server_factory, worker_factory) -> None:
    srv = server_factory("--shards", "1")
    with shardq.Client(srv.url) as client:
        ids = client.submit_many([shardq.Job("add", {"a": i, "b": 1}) for i in range(300)]
                                 + [shardq.Job("async_echo", i) for i in range(300)])
        worker = worker_factory(srv, "--burst", "--concurrency", "8")
        assert worker.wait(30) == 0, worker.log
        tasks = client.status_many(ids, with_result=True)
        assert [t.status for t in tasks] == ["completed"] * 600
        assert [orjson.loads(t.result)["sum"] for t in tasks[:300]] == [i + 1 for i in range(300)]
        assert [orjson.loads(t.result)["echo"] for t in tasks[300:]] == list(range(300))
    assert worker.log.count(" completed in ") == 600
    assert "burst: no ready task left" in worker.log


def test_a_worker_pinned_to_a_shard_drains_that_shards_work(server_factory, worker_factory) -> None:
    """``--shard K`` (the HELLO hint): the worker's connection is served by shard K, so the work
    submitted there by a client pinned the same way is claimed and reported without a hop."""
    srv = server_factory("--shards", "2")
    with shardq.Client(srv.url, shard=1) as producer:
        ids = producer.submit_many([shardq.Job("add", {"a": i, "b": 1}) for i in range(200)])
        assert producer.shard == 1
        assert {int(i[:8], 16) % 2 for i in ids} == {1}, "client ids are made in shard 1's partition"
        worker = worker_factory(srv, "--shard", "1", "--concurrency", "8", "--worker-id", "w-pinned")
        worker.wait_for_log(" ready: ")
        assert "broker " + srv.url + " (shard 1 of 2)" in worker.log
        wait_until(lambda: all(t.status == "completed" for t in producer.status_many(ids)),
                   30, "the 200 tasks completed")
        rows = {r["shard"]: r for r in producer.stats()["shards"]}
        assert rows[1]["connections"] >= 2, rows  # the producer and the worker's claim connection
        assert rows[0]["cross_shard_claims"] == rows[1]["cross_shard_claims"] == 0, rows
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0, worker.log
    # A hint the broker cannot honour is ignored by it; the worker says so and still works.
    stray = worker_factory(srv, "--shard", "7", "--burst")
    assert stray.wait(15) == 0, stray.log
    assert "--shard 7: the broker has 2 shard(s) (0..1); served by shard" in stray.log


@pytest.mark.parametrize("shard", ["-1", "x"])
def test_a_bad_shard_flag_is_refused(shard) -> None:
    proc = subprocess.run([sys.executable, "-m", "shardq.worker", "worker_apps:app", "--shard", shard],
                          capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, PYTHONPATH=str(HERE)))
    assert proc.returncode == 2 and "--shard" in proc.stderr, proc.stderr


# -- failures --------------------------------------------------------------------------------------


def test_raising_handler_retries_then_dead_letters_with_traceback(server_factory, worker_factory,
                                                                  marks) -> None:
    srv = server_factory("--shards", "1", env=FAST_RETRIES)
    worker_factory(srv, "--concurrency", "2")
    with shardq.Client(srv.url) as client:
        boom = client.submit("boom", b"", max_retries=2)
        give_up = client.submit("give_up", b"", max_retries=5)
        retry_once = client.submit("retry_once", b"", max_retries=5)

        with pytest.raises(TaskFailed) as info:
            client.wait(boom, timeout=20)
        task = info.value.task
        assert task.status == "dead_letter" and task.retry_count == 2 and task.attempt == 3
        assert task.error.startswith("ValueError: boom on attempt 3\nTraceback (most recent call last):")
        assert 'worker_apps.py", line' in task.error and "in boom" in task.error
        assert "raise ValueError" in task.error
        assert [m[2] for m in read_marks(marks) if m[1] == boom] == [1, 2, 3]

        with pytest.raises(TaskFailed) as info:  # Fail: dead_letter at once, retries left or not
            client.wait(give_up, timeout=10)
        assert info.value.task.retry_count == 0 and info.value.task.attempt == 1
        assert info.value.task.error.startswith("shardq.Fail: this input can never work\n")

        result = orjson.loads(client.wait(retry_once, timeout=10))  # Retry: counted, tried again
        assert result["attempt"] == 2 and result["retry_count"] == 1
        assert client.status(retry_once).retry_count == 1


def test_the_stored_task_decides_retries_not_the_decorator(server_factory, worker_factory) -> None:
    """``@app.task("boom_limited", max_retries=1)``. A task submitted plainly has the broker's
    default (3): it is retried 3 times and the log counts to 3 (the worker used to stop it after 1
    retry while logging "retry 1 of 3"). Submitted through the decorator, it has 1 retry."""
    srv = server_factory("--shards", "1", env=FAST_RETRIES)
    worker = worker_factory(srv, "--concurrency", "2")
    with shardq.Client(srv.url) as client:
        plain = client.submit("boom_limited", b"")
        stamped = worker_apps.boom_limited.submit(client)
        for tid, retries in ((plain, 3), (stamped, 1)):
            with pytest.raises(TaskFailed) as info:
                client.wait(tid, timeout=20)
            task = info.value.task
            assert (task.max_retries, task.retry_count, task.attempt) == (retries, retries, retries + 1)
            wait_until(lambda tid=tid: any(f"task {tid} " in line and line.rstrip().endswith("-> dead_letter")
                                           for line in worker.lines), 5, "the dead_letter log line")
    for tid, retries in ((plain, 3), (stamped, 1)):
        lines = [line for line in worker.lines if f"task {tid} " in line]
        thens = [line.rsplit(" -> ", 1)[1].strip() for line in lines]
        assert thens == [f"retry {n} of {retries} scheduled" for n in range(1, retries + 1)] + ["dead_letter"], lines


# -- losing a worker -------------------------------------------------------------------------------


def test_kill_9_mid_task_is_reclaimed_and_completed_by_another_worker(server_factory, worker_factory,
                                                                      marks) -> None:
    srv = server_factory(*SHORT_LEASES)
    first = worker_factory(srv, "--concurrency", "1", "--worker-id", "w-first")
    with shardq.Client(srv.url) as client:
        tid = client.submit("slow_first", {"seconds": 60})
        wait_for_mark(marks, "start", tid, 1)
        second = worker_factory(srv, "--concurrency", "1", "--worker-id", "w-second")
        second.wait_for_log(" ready: ")
        first.kill9()
        result = orjson.loads(client.wait(tid, timeout=15))
        assert result["worker_id"] == "w-second" and result["attempt"] == 2
        assert result["retry_count"] == 1  # a reclaim counts as a failure
        assert [(m[0], m[2]) for m in read_marks(marks)] == [("start", 1), ("start", 2), ("end", 2)]


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_sigterm_mid_task_finishes_it_then_exits_0(server_factory, worker_factory, marks, pool) -> None:
    srv = server_factory(*SHORT_LEASES)
    worker = worker_factory(srv, "--concurrency", "2", "--pool", pool, "--worker-id", "w-drain")
    with shardq.Client(srv.url) as client:
        tid = client.submit("slow_first", {"seconds": 1.5})
        wait_for_mark(marks, "start", tid, 1)
        worker.signal(signal.SIGTERM)
        worker.wait_for_log("SIGTERM: draining")
        later = client.submit("quick", b"")  # a claim in flight may get it, but must hand it back
        assert worker.wait(15) == 0, worker.log
        result = orjson.loads(client.wait(tid, timeout=5))  # finished by the draining worker
        assert result["attempt"] == 1 and result["worker_id"] == "w-drain"
        assert client.status(later).status == "pending"  # never run while draining
        assert not [w for w in client.workers() if w["worker_id"] == "w-drain"]
    assert "SIGTERM: draining" in worker.log


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_sigterm_past_the_shutdown_timeout_releases_the_task_and_it_runs_once_elsewhere(
        server_factory, worker_factory, marks, pool) -> None:
    srv = server_factory(*SHORT_LEASES)
    first = worker_factory(srv, "--concurrency", "1", "--pool", pool, "--shutdown-timeout", "0.3",
                           "--worker-id", "w-first")
    with shardq.Client(srv.url) as client:
        tid = client.submit("slow_first", {"seconds": 5})
        wait_for_mark(marks, "start", tid, 1)
        second = worker_factory(srv, "--concurrency", "1", "--worker-id", "w-second")
        second.wait_for_log(" ready: ")
        first.signal(signal.SIGTERM)
        assert first.wait(10) == 0, first.log
        result = orjson.loads(client.wait(tid, timeout=10))
        assert result["worker_id"] == "w-second" and result["attempt"] == 2
        assert result["retry_count"] == 0  # released, not failed: nothing counted
    assert f"task {tid} slow_first released after" in first.log
    events = read_marks(marks)
    assert [(m[0], m[2]) for m in events] == [("start", 1), ("start", 2), ("end", 2)]
    # Never twice at once: the first run did nothing more after it was released (no "end"),
    # and the second began only once the first worker had handed the task back.
    assert events[1][4] > events[0][4]


def test_second_sigterm_exits_at_once(server_factory, worker_factory, marks) -> None:
    srv = server_factory(*SHORT_LEASES)
    worker = worker_factory(srv, "--concurrency", "1")
    with shardq.Client(srv.url) as client:
        tid = client.submit("slow_first", {"seconds": 30})
        wait_for_mark(marks, "start", tid, 1)
        worker.signal(signal.SIGTERM)
        worker.wait_for_log("SIGTERM: draining")
        t = time.monotonic()
        worker.signal(signal.SIGTERM)
        assert worker.wait(5) == 4
        assert time.monotonic() - t < 2
        # Its lease is left to the broker, which reclaims it once the worker is silent.
        wait_until(lambda: client.status(tid).status == "pending", 5, "the lease to be reclaimed")


# -- heartbeats and the process pool ---------------------------------------------------------------


def test_gil_holding_handler_keeps_its_lease_with_the_process_pool(server_factory, worker_factory,
                                                                   marks) -> None:
    srv = server_factory(*SHORT_LEASES)
    with shardq.Client(srv.url) as client:
        # Thread pool: the handler holds the GIL for 2.5 s, the heartbeat thread cannot run, the
        # 1 s lease expires, and with no retries left the task is dead-lettered.
        threaded = worker_factory(srv, "--concurrency", "1", "--heartbeat-interval-ms", "200",
                                  "--types", "gil_hog")
        tid = client.submit("gil_hog", {"seconds": 2.5}, max_retries=0)
        with pytest.raises(TaskFailed) as info:
            client.wait(tid, timeout=15)
        assert info.value.task.error in ("lease expired", "worker lost")
        threaded.signal(signal.SIGTERM)
        assert threaded.wait(15) == 0

        # Process pool: the same handler holds its own process's GIL; the worker process keeps
        # heartbeating and the task completes on its first attempt.
        pooled = worker_factory(srv, "--concurrency", "1", "--pool", "process",
                                "--heartbeat-interval-ms", "200", "--types", "gil_hog")
        tid = client.submit("gil_hog", {"seconds": 2.5}, max_retries=0)
        result = orjson.loads(client.wait(tid, timeout=20))
        assert result["attempt"] == 1 and result["retry_count"] == 0
        assert result["held_s"] > 1.5  # the GIL held for longer than the 1 s lease
        assert result["pid"] != pooled.proc.pid  # it ran in a pool process
    pooled.signal(signal.SIGTERM)
    assert pooled.wait(15) == 0
    assert "lease lost" not in pooled.log and "refused" not in pooled.log


# -- timeouts --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("task_type", "pool", "how"), [
    ("hang", "thread", "abandoned"), ("async_hang", "thread", "cancelled"), ("hang", "process", "killed"),
])
def test_timeout_cancels_a_hung_handler(server_factory, worker_factory, marks, task_type, pool,
                                        how) -> None:
    srv = server_factory("--shards", "1")
    worker = worker_factory(srv, "--concurrency", "1", "--pool", pool)
    with shardq.Client(srv.url) as client:
        # Submitted through the handler: its @app.task(timeout=1) is stamped on the task.
        tid = worker_apps.app.handlers[task_type].submit(client, b"", max_retries=0)
        assert client.status(tid).timeout_seconds == 1
        after = client.submit("quick", b"")
        t = time.monotonic()
        with pytest.raises(TaskFailed) as info:
            client.wait(tid, timeout=10)
        took = time.monotonic() - t
        error = info.value.task.error
        assert error.startswith("timeout: the handler ran longer than 1 s and was " + how), error
        assert took < 5
        # The slot came back (a new thread / a new pool process): the next task runs.
        assert orjson.loads(client.wait(after, timeout=10))["attempt"] == 1
    events = [m[0] for m in read_marks(marks) if m[1] == tid]
    assert events[0] == "start" and "end" not in events
    if task_type == "async_hang":
        assert events == ["start", "cancelled"]
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    assert f"task {tid} {task_type} timed out in " in worker.log


# -- the command line ------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    (("worker_apps:nope",), "module 'worker_apps' has no attribute 'nope'"),
    (("no_such_module:app",), "cannot import 'no_such_module'"),
    (("worker_apps:app", "--types", "add,unknown"), "no handler for task type(s) unknown"),
    (("worker_apps:app", "--concurrency", "0"), "--concurrency: must be >= 1"),
])
def test_bad_app_or_flags_exit_2_with_one_clear_line(args, message) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run([sys.executable, "-m", "shardq.worker", *args, "--server", "127.0.0.1:1"],
                          capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
