"""Cancel a running task and quiet/stop a worker, end to end: one real 2-shard ``shardq serve``
for the module, real bundled workers (``python -m shardq.worker worker_apps:app``), the Python
client, the CLI and the HTTP API (extensions cancel_running and worker_control).

The server's heartbeat interval is 1 s, so a worker hears a cancel or an order within about that;
every wait is bounded by a deadline. The tests that kill -9 broker processes come last.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from test_worker import WorkerProcess, read_marks, wait_for_mark, wait_until

import shardq
from shardq.client.models import TaskInfo
from shardq.errors import InvalidState, NotFound, ShardqError
from shardq.testing import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
HB_MS = 1000  # a worker unheard of for 2 s is dead: long enough to outlive a shard restart


@pytest.fixture(scope="module")
def srv(tmp_path_factory) -> Iterator[ServerProcess]:
    server = ServerProcess(str(tmp_path_factory.mktemp("cancel") / "data"),
                           ["--shards", "2", "--lease-timeout-ms", "5000",
                            "--heartbeat-interval-ms", str(HB_MS)])
    server.start()
    yield server
    server.kill()


@pytest.fixture
def client(srv) -> Iterator[shardq.Client]:
    with shardq.Client(srv.url) as c:
        yield c


@pytest.fixture
def marks(tmp_path) -> Path:
    return tmp_path / "marks.log"


@pytest.fixture
def start_worker(srv, marks) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(worker_id: str, *args: str) -> WorkerProcess:
        w = WorkerProcess(srv.url, ("--worker-id", worker_id, *args), marks)
        started.append(w)
        w.wait_for_log(f"worker {worker_id} ready")
        return w

    yield start
    for w in started:
        w.cleanup()


def status(client: shardq.Client, tid: str) -> TaskInfo:
    task = client.status(tid)
    assert task is not None
    return task


def cli(srv: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "shardq", *args, "--server", srv.url],
                          capture_output=True, text=True, timeout=60, env=env, cwd=str(ROOT))


def http_post(srv: ServerProcess, path: str) -> tuple[int, dict]:
    req = urllib.request.Request(srv.http_url + path, data=b"", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_hello_announces_both_extensions(client) -> None:
    client.connect()
    assert {"cancel_running", "worker_control"} <= set(client.server_info["features"])


# -- cancel a running task -----------------------------------------------------------------------


def test_async_handler_is_cancelled(client, start_worker, marks) -> None:
    w = start_worker("w-async")
    tid = client.submit("async_hang")
    wait_for_mark(marks, "start", tid, 1)
    client.cancel(tid)
    # Cancelled at once, before the worker hears of it: the lease is revoked.
    task = status(client, tid)
    assert (task.status, task.worker_id, task.error) == ("cancelled", None, "cancelled while running")
    wait_for_mark(marks, "cancelled", tid, 1, timeout=10)  # asyncio.CancelledError in the handler
    w.wait_for_log(f"task {tid} async_hang cancelled by the broker")
    assert "handler cancelled" in w.log
    # The worker goes on working, and the cancelled task stays cancelled with no result.
    other = client.submit("async_echo", {"n": 1})
    client.wait(other, timeout=15)
    task = status(client, tid)
    assert (task.status, task.result_len) == ("cancelled", None)


def test_thread_handler_sees_ctx_cancelled(client, start_worker, marks) -> None:
    w = start_worker("w-thread", "--pool", "thread")
    tid = client.submit("until_cancelled")
    wait_for_mark(marks, "start", tid, 1)
    client.cancel(tid)
    wait_for_mark(marks, "saw_cancel", tid, 1, timeout=10)
    w.wait_for_log(f"task {tid} until_cancelled cancelled by the broker")
    assert "ctx.cancelled set" in w.log
    # The handler returned "stopped" after the cancel: the worker reports nothing for it, and
    # nothing it returned reaches the task.
    task = status(client, tid)
    assert (task.status, task.result_len) == ("cancelled", None)
    assert not any(m[0] == "end" for m in read_marks(marks))


def test_process_handler_is_terminated_and_replaced(client, start_worker, marks) -> None:
    w = start_worker("w-proc", "--pool", "process", "--concurrency", "1")
    tid = client.submit("hang")
    _, _, _, pid, _ = wait_for_mark(marks, "start", tid, 1, timeout=30)
    client.cancel(tid)

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(gone, 10, f"the pool process {pid} to be killed")
    w.wait_for_log(f"task {tid} hang cancelled by the broker")
    assert "pool process killed" in w.log
    # The pool replaces the child: the next task runs in a new process.
    other = client.submit("quick")
    assert json.loads(client.wait(other, timeout=30))["pid"] != pid
    assert status(client, tid).status == "cancelled"


def test_late_result_gets_the_final_status_and_cancel_crosses_shards(srv, client) -> None:
    worker = "w-raw-late"
    tid = client.submit("raw_late")
    with shardq.Client(srv.url, spread=False) as raw:
        claimed = wait_until(lambda: raw.claim(worker, 1, wait=1.0, types=["raw_late"]), 10, "a claim")
        task = claimed[0]
        assert task.id == tid
        # CANCEL sent on a connection to the shard that does not own the task: forwarded.
        other = 1 - task.shard
        with shardq.Client(srv.url, shard=other) as there:
            assert there.connect().shard == other != task.shard
            there.cancel(tid)
        # The worker finishes before it hears: its RESULT gets the final status, changes nothing.
        assert raw.complete(worker, task, {"late": True}) == {"id": tid, "status": "cancelled"}
        beat = raw.beat(worker, active=[tid])
        assert beat.cancelled == [tid] and tid in beat.lost
        # Another attempt number is still a lease error.
        stale = TaskInfo.from_wire({**_wire(task), "attempt": task.attempt + 1})
        assert "LeaseLost" == raw.complete(worker, stale)["error"]["code"]
        raw.deregister_worker(worker)
    final = status(client, tid)
    assert (final.status, final.result_len, final.attempt) == ("cancelled", None, 1)


def test_cancel_after_complete_is_invalid_state(srv, client) -> None:
    worker = "w-raw-done"
    tid = client.submit("raw_done")
    with shardq.Client(srv.url, spread=False) as raw:
        task = wait_until(lambda: raw.claim(worker, 1, wait=1.0, types=["raw_done"]), 10, "a claim")[0]
        assert raw.complete(worker, task, b"r")["status"] == "completed"
        with pytest.raises(InvalidState, match="cannot cancel a task that is completed"):
            client.cancel(tid)
        raw.deregister_worker(worker)
    assert status(client, tid).status == "completed"


def test_worker_dead_then_cancel(srv, client) -> None:
    worker = "w-raw-dead"
    tid = client.submit("raw_dead")
    with shardq.Client(srv.url, spread=False) as raw:
        task = wait_until(lambda: raw.claim(worker, 1, wait=1.0, types=["raw_dead"]), 10, "a claim")[0]
        # Silent for 2 x heartbeat: the worker is dead, its lease reclaimed (pending again).
        wait_until(lambda: status(client, tid).status == "pending", 10, "the lease to be reclaimed")
        client.cancel(tid)
        assert status(client, tid).status == "cancelled"
        assert raw.complete(worker, task, b"") == {"id": tid, "status": "cancelled"}


# -- quiet and stop ------------------------------------------------------------------------------


def _workers(client: shardq.Client) -> dict[str, dict]:
    return {w["worker_id"]: w for w in client.workers()}


def test_quiet_finishes_the_running_task_and_claims_no_more(srv, client, start_worker, marks) -> None:
    w = start_worker("w-quiet", "--concurrency", "2", "--prefetch", "0", "--types", "hold")
    first = client.submit("hold", 3.0)
    wait_for_mark(marks, "start", first, 1)
    out = cli(srv, "workers", "quiet", "w-quiet")
    assert out.returncode == 0, out.stderr
    assert "quiet ordered for worker w-quiet" in out.stdout
    w.wait_for_log("quiet (ordered by the broker): no new tasks; 1 running task(s) will finish")
    # A slot is free, but a quiet worker runs nothing new (a claim already in flight when the
    # order came hands what it gets straight back, unstarted).
    second = client.submit("hold", 0.1)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert not [m for m in read_marks(marks) if m[1] == second]
        time.sleep(0.1)
    client.wait(first, timeout=15)  # what it held, it finishes
    wait_until(lambda: _workers(client)["w-quiet"]["state"] == "quiet", 10, "state quiet in the registry")
    listed = cli(srv, "workers")
    assert "quiet" in listed.stdout and "w-quiet" in listed.stdout, listed.stdout
    as_json = json.loads(cli(srv, "workers", "--json").stdout)
    mine = next(x for x in as_json if x["worker_id"] == "w-quiet")
    assert (mine["state"], mine["command"], mine["active"]) == ("quiet", "quiet", 0)
    assert status(client, second).status == "pending"
    assert not [m for m in read_marks(marks) if m[1] == second]
    assert w.proc.poll() is None  # quiet is not stop
    # stop (over HTTP): nothing runs, so it exits at once, cleanly.
    code, body = http_post(srv, "/api/v1/workers/w-quiet/stop")
    assert (code, body["command"], body["state"]) == (200, "stop", "quiet")
    assert w.wait(15) == 0
    assert "stop (ordered by the broker)" in w.log
    wait_until(lambda: "w-quiet" not in _workers(client), 10, "the worker to leave the registry")
    assert status(client, second).status == "pending"
    client.cancel(second)


def test_stop_drains_then_exits_zero(client, start_worker, marks) -> None:
    w = start_worker("w-stop", "--concurrency", "1", "--prefetch", "0", "--types", "hold")
    tid = client.submit("hold", 2.5)
    wait_for_mark(marks, "start", tid, 1)
    answer = client.stop_worker("w-stop")
    assert answer == {"worker_id": "w-stop", "command": "stop", "state": "running"}
    w.wait_for_log("stop (ordered by the broker): draining: no new tasks; waiting up to 60 s for 1 "
                   "running task(s)")
    assert w.wait(20) == 0
    assert json.loads(client.wait(tid, timeout=5))["worker_id"] == "w-stop"  # drained, not released
    wait_for_mark(marks, "end", tid, 1, timeout=1)


def test_unknown_worker_is_not_found_everywhere(srv, client) -> None:
    with pytest.raises(NotFound, match="no worker 'nobody'"):
        client.quiet_worker("nobody")
    out = cli(srv, "workers", "stop", "nobody")
    assert out.returncode == 1 and "no worker 'nobody'" in out.stderr, out.stderr
    code, body = http_post(srv, "/api/v1/workers/nobody/quiet")
    assert code == 404, body


def _wire(task: TaskInfo) -> dict:
    return {"id": task.id, "type": task.type, "priority": task.priority, "status": task.status,
            "created_ms": task.created_ms, "updated_ms": task.updated_ms,
            "scheduled_ms": task.scheduled_ms, "max_retries": task.max_retries,
            "retry_count": task.retry_count, "timeout_seconds": task.timeout_seconds,
            "attempt": task.attempt}


# -- across kill -9 ------------------------------------------------------------------------------


def child_pid(server: ServerProcess, name: str) -> int:
    for p in psutil.Process(server.pid).children(recursive=True):
        try:
            if " ".join(p.cmdline()).startswith(f"shardq: {name}"):
                return p.pid
        except psutil.Error:  # a killed one not reaped yet
            continue
    raise AssertionError(f"no process {name}")


def serving(srv: ServerProcess, shard: int) -> bool:
    with shardq.Client(srv.url, shard=shard, timeout=2) as c:
        return c.connect().shard == shard


def answered(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` for wait_until: a broker process that is restarting is not an answer yet."""
    def call() -> object:
        try:
            return fn()
        except (ShardqError, OSError):
            return None
    return call


def test_a_cancelled_running_task_stays_cancelled_across_kill_9_of_its_owner(srv, client) -> None:
    worker = "w-raw-k9"
    tid = client.submit("raw_k9")
    with shardq.Client(srv.url, spread=False) as raw:
        task = wait_until(lambda: raw.claim(worker, 1, wait=1.0, types=["raw_k9"]), 10, "a claim")[0]
    client.cancel(tid)  # acknowledged: on disk
    os.kill(child_pid(srv, f"shard-{task.shard}"), signal.SIGKILL)
    with shardq.Client(srv.url) as after:
        wait_until(answered(lambda: after.status(tid).status == "cancelled"), 30, "the owner back")
        # Its worker is still told, from the record (no lease was restored for it) ...
        beat = wait_until(answered(lambda: after.beat(worker, active=[tid])), 10, "a heartbeat")
        assert beat.cancelled == [tid]
        # ... and its late RESULT still gets the final status.
        assert after.complete(worker, task, b"late") == {"id": tid, "status": "cancelled"}
        after.deregister_worker(worker)
    assert status(client, tid).status == "cancelled"


def test_a_quiet_order_survives_kill_9_of_the_coordinator_and_of_a_shard(srv) -> None:
    wid = "w-raw-order"
    commands: list[str | None] = []
    home: list[int | None] = []  # the shard holding the heartbeat connection
    stop = threading.Event()

    def beat() -> None:  # a worker that heartbeats every 100 ms, as a real one would
        with shardq.Client(srv.url, spread=False, timeout=5) as raw:
            while not stop.is_set():
                try:
                    commands.append(raw.beat(wid, active=[]).command)
                    home.append(raw.shard)
                except (ShardqError, OSError):
                    commands.append("error")
                stop.wait(0.1)

    beater = threading.Thread(target=beat, daemon=True)
    beater.start()
    try:
        with shardq.Client(srv.url) as c:
            wait_until(answered(lambda: wid in _workers(c)), 10, "the worker in the registry")
            assert c.quiet_worker(wid)["command"] == "quiet"
            wait_until(lambda: commands[-3:] == ["quiet"] * 3, 10, "the order in heartbeat answers")
            # The coordinator dies: the shards still hold the order; the new coordinator gets it back.
            os.kill(child_pid(srv, "coordinator"), signal.SIGKILL)
            n = len(commands)
            wait_until(answered(lambda: _workers(c)[wid]["command"] == "quiet"), 30,
                       "the restarted coordinator to know the order")
            assert set(commands[n:]) <= {"quiet", "error"}
            # The shard holding the heartbeat connection dies: the worker reconnects (to the other
            # shard, or to this one restarted, which gets the order from the coordinator).
            victim = home[-1]
            os.kill(child_pid(srv, f"shard-{victim}"), signal.SIGKILL)
            wait_until(lambda: home[-1] != victim or "error" in commands[n:], 10, "a reconnect")
            n = len(commands)
            wait_until(lambda: commands[n:][-3:] == ["quiet"] * 3, 30, "the order after the restart")
            # Both shards restarted: the order comes back from the coordinator.
            other = 1 - victim
            wait_until(answered(lambda: serving(srv, victim)), 30, "the shard restarted")
            os.kill(child_pid(srv, f"shard-{other}"), signal.SIGKILL)
            n = len(commands)
            wait_until(lambda: commands[n:][-3:] == ["quiet"] * 3, 30, "the order after the 2nd restart")
            wait_until(answered(lambda: _workers(c)[wid]["command"] == "quiet"), 30, "the registry")
            assert c.stop_worker(wid)["command"] == "stop"  # stronger; a quiet now keeps it
            assert c.quiet_worker(wid)["command"] == "stop"
    finally:
        stop.set()
        beater.join(10)
