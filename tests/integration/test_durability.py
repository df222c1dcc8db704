"""Durability and restarts (ARCHITECTURE.md, Guarantees): nothing acknowledged is lost on kill -9,
SIGTERM drains and exits 0, the data dir keeps its shard count and its lock, the port is reusable."""

from __future__ import annotations

import random
import signal
import threading
import time
from typing import Any

import pytest

from shardq.client.connection import Connection, ConnectionClosed
from shardq.protocol.frames import MsgType
from shardq.testing import ServerProcess

STATUSES = ("pending", "in_progress", "completed", "failed", "dead_letter", "cancelled")


def query_all(conn: Connection, ids: list[str]) -> dict[str, dict[str, Any] | None]:
    out: dict[str, dict[str, Any] | None] = {}
    for i in range(0, len(ids), 1000):
        chunk = ids[i:i + 1000]
        tasks = conn.call(MsgType.QUERY_STATUS, {"ids": chunk}).header["tasks"]
        assert len(tasks) == len(chunk)
        out.update(zip(chunk, tasks))
    return out


def list_all(conn: Connection, status: str, max_pages: int = 1000) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = []
    cursor = None
    for _ in range(max_pages):
        header: dict[str, Any] = {"status": status, "limit": 1000}
        if cursor is not None:
            header["cursor"] = cursor
        page = conn.call(MsgType.LIST_TASKS, header).header
        tasks.extend(page["tasks"])
        cursor = page["cursor"]
        if cursor is None:
            return tasks
    raise AssertionError(f"LIST_TASKS {status} did not end in {max_pages} pages")


class Load:
    """A producer and a consumer on their own connections; records only what was acked."""

    def __init__(self, srv: ServerProcess, batch: int = 20, max_tasks: int = 30_000) -> None:
        self.srv = srv
        self.batch = batch
        self.max_tasks = max_tasks
        self.stop = threading.Event()
        self.acked: list[str] = []            # ids whose SUBMIT was ACKed
        self.completed: set[str] = set()      # ids whose RESULT completed was ACKed completed
        self.result_sent: set[str] = set()    # ids a RESULT was sent for (acked or not)
        self.claimed: set[str] = set()        # ids handed to the consumer by a CLAIM ACK
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._guard, args=(self._produce,), daemon=True),
                        threading.Thread(target=self._guard, args=(self._consume,), daemon=True)]

    def start(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def join(self, timeout: float = 15.0) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout)
            assert not t.is_alive(), "a load thread did not stop"

    def _guard(self, fn) -> None:  # type: ignore[no-untyped-def]
        try:
            fn()
        except (OSError, ConnectionClosed):
            pass  # the server was killed or stopped under us: expected
        except BaseException as exc:  # noqa: BLE001 - surfaced by the test
            self.errors.append(exc)

    def _produce(self) -> None:
        conn = self.srv.connect(timeout=10)
        n = 0
        while not self.stop.is_set() and len(self.acked) < self.max_tasks:
            tasks = [{"type": "dur", "payload_len": 8, "priority": (n + i) % 256}
                     for i in range(self.batch)]
            blob = b"".join(f"{n + i:08d}".encode() for i in range(self.batch))
            ids = conn.call(MsgType.SUBMIT, {"tasks": tasks}, blob).header["ids"]
            assert len(ids) == self.batch
            self.acked.extend(ids)
            n += self.batch

    def _consume(self) -> None:
        conn = self.srv.connect(timeout=10)
        k = 0
        while not self.stop.is_set():
            got = conn.call(MsgType.CLAIM, {"worker_id": "dur-w", "max": 10, "wait_ms": 50}).header["tasks"]
            for t in got:
                self.claimed.add(t["id"])
            # Complete two of every three; leave the rest in progress.
            done = [t for j, t in enumerate(got) if (k + j) % 3 != 2]
            k += len(got)
            if not done:
                continue
            for t in done:
                self.result_sent.add(t["id"])
            res = conn.call(MsgType.RESULT, {"worker_id": "dur-w", "results": [
                {"id": t["id"], "attempt": t["attempt"], "status": "completed", "result_len": 2}
                for t in done]}, b"ok" * len(done)).header["results"]
            for r in res:
                if (r.get("error") or {}).get("code") == "Unavailable":
                    # Its owner was draining (SIGTERM) when the item was forwarded to it: not
                    # acknowledged, so either outcome is right (result_sent covers it).
                    continue
                assert r.get("status") == "completed", r
                self.completed.add(r["id"])


def check_consistent(conn: Connection, load: Load) -> dict[str, list[dict[str, Any]]]:
    """Every acked id exactly once, completed ones completed, claimed ones still leased; stats match."""
    acked = load.acked
    assert len(set(acked)) == len(acked), "the server returned an id twice"
    found = query_all(conn, acked)
    missing = [i for i, t in found.items() if t is None]
    assert not missing, f"{len(missing)} acked task(s) lost, e.g. {missing[:3]}"
    listings = {st: list_all(conn, st) for st in STATUSES}
    where: dict[str, list[str]] = {}
    for st, tasks in listings.items():
        for t in tasks:
            assert t["status"] == st
            where.setdefault(t["id"], []).append(st)
    dup = {i: w for i, w in where.items() if len(w) != 1}
    assert not dup, f"tasks listed more than once: {list(dup.items())[:3]}"
    for i in acked:
        assert i in where, f"acked {i} is in no listing"
        assert found[i]["status"] == where[i][0]  # type: ignore[index]
    for i in load.completed:
        assert found[i]["status"] == "completed", found[i]  # type: ignore[index]
    # Tasks in progress at the kill are still in progress: their leases survive the restart
    # (those with a RESULT in flight may also have completed: its write may have landed).
    for i in load.claimed - load.completed:
        st = found[i]["status"]  # type: ignore[index]
        allowed = ("in_progress", "completed") if i in load.result_sent else ("in_progress",)
        assert st in allowed, (i, st)
    # In progress and not claimed: a CLAIM whose lease was written but whose answer the kill
    # cut off. Its lease expires a lease time after the restart and the task is claimed again.
    assert {t["id"] for t in listings["in_progress"]} <= set(acked)
    # GET_STATS totals equal the listings (figures may be up to 1 s old: poll a little).
    deadline = time.monotonic() + 3
    while True:
        totals = conn.call(MsgType.GET_STATS, {}).header["totals"]
        counts = {st: totals[st] for st in STATUSES}
        expected = {st: len(tasks) for st, tasks in listings.items()}
        if counts == expected or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert counts == expected
    assert sum(totals["by_tier"].values()) == totals["pending"]
    return listings


@pytest.mark.parametrize("sync,shards", [("interval", 2), ("always", 2), ("interval", 1)])
def test_kill_9_loses_nothing_acked(server_factory, sync: str, shards: int) -> None:
    srv = server_factory("--shards", str(shards), "--sync", sync)
    rng = random.Random()
    load = Load(srv).start()
    # Let some work happen, then kill -9 at a random moment.
    deadline = time.monotonic() + 10
    while (len(load.acked) < 200 or len(load.completed) < 20) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(rng.uniform(0.05, 0.6))
    srv.kill()
    load.join()
    assert not load.errors, load.errors
    assert load.acked and load.completed, "the load did not get going before the kill"
    port = srv.port
    srv.restart()
    assert srv.port == port
    with srv.connect(timeout=30) as conn:
        assert conn.call(MsgType.HELLO, {"client": "t/1", "protocol": 1}).header["shards"] == shards
        listings = check_consistent(conn, load)
        # Pending tasks are claimable after the restart.
        if listings["pending"]:
            got = conn.call(MsgType.CLAIM, {"worker_id": "after", "max": 1}).header["tasks"]
            assert len(got) == 1 and got[0]["status"] == "in_progress"


def test_sigterm_exits_0_and_keeps_everything(server_factory) -> None:
    srv = server_factory("--shards", "2")
    load = Load(srv).start()
    deadline = time.monotonic() + 10
    while (len(load.acked) < 200 or len(load.completed) < 20) and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.monotonic()
    code = srv.stop(signal.SIGTERM, timeout=20)
    took = time.monotonic() - t0
    load.join()
    assert code == 0, "".join(srv.stderr_lines[-20:])
    assert took < 10
    assert not load.errors, load.errors
    assert not any("Traceback" in line for line in srv.stderr_lines), "".join(srv.stderr_lines)
    srv.restart()
    with srv.connect(timeout=30) as conn:
        check_consistent(conn, load)


def test_sigterm_when_idle_exits_0(server_factory) -> None:
    srv = server_factory("--shards", "1")
    with srv.connect(timeout=5) as conn:
        ids = conn.call(MsgType.SUBMIT, {"tasks": [{"type": "t", "payload_len": 1}]}, b"x").header["ids"]
        assert srv.stop(signal.SIGTERM, timeout=20) == 0
    srv.restart()
    with srv.connect(timeout=5) as conn:
        assert conn.call(MsgType.QUERY_STATUS, {"ids": ids}).header["tasks"][0]["status"] == "pending"
    assert srv.stop(signal.SIGINT, timeout=20) == 0


def test_restart_with_other_shard_count_is_refused(server_factory, tmp_path) -> None:
    data = str(tmp_path / "resharded")
    first = server_factory("--shards", "2", data_dir=data)
    with first.connect(timeout=5) as conn:
        ids = conn.call(MsgType.SUBMIT, {"tasks": [{"type": "t", "payload_len": 0}] * 5}).header["ids"]
    assert first.stop() == 0

    wrong = server_factory("--shards", "3", data_dir=data, start=False)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError):
        wrong.start(timeout=20)
    assert time.monotonic() - t0 < 10
    assert wrong.proc is not None and wrong.proc.returncode == 2
    deadline = time.monotonic() + 2
    while not wrong.stderr_lines and time.monotonic() < deadline:
        time.sleep(0.02)
    err = "".join(wrong.stderr_lines)
    assert "2 shards" in err, err
    assert "--shards auto" in err, err
    assert "Traceback" not in err, err

    auto = server_factory("--shards", "auto", data_dir=data)
    with auto.connect(timeout=5) as conn:
        hello = conn.call(MsgType.HELLO, {"client": "t/1", "protocol": 1}).header
        assert hello["shards"] == 2
        tasks = conn.call(MsgType.QUERY_STATUS, {"ids": ids}).header["tasks"]
        assert all(t is not None and t["status"] == "pending" for t in tasks)
    assert auto.stop() == 0
    same = server_factory("--shards", "2", data_dir=data)
    with same.connect(timeout=5) as conn:
        assert conn.call(MsgType.HELLO, {"client": "t/1", "protocol": 1}).header["shards"] == 2


def test_locked_data_dir_is_refused_clearly(server_factory, tmp_path) -> None:
    data = str(tmp_path / "locked")
    first = server_factory("--shards", "1", data_dir=data)
    second = server_factory("--shards", "1", data_dir=data, start=False)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError):
        second.start(timeout=20)
    assert time.monotonic() - t0 < 10
    assert second.proc is not None and second.proc.returncode not in (0, None)
    deadline = time.monotonic() + 2
    while not second.stderr_lines and time.monotonic() < deadline:
        time.sleep(0.02)
    err = "".join(second.stderr_lines)
    assert data in err, err
    assert "another shardq" in err or "lock" in err.lower(), err
    assert "Traceback" not in err, err
    # The first one is unharmed.
    with first.connect(timeout=5) as conn:
        assert conn.call(MsgType.PING, {}).type == MsgType.ACK
        conn.call(MsgType.SUBMIT, {"tasks": [{"type": "t", "payload_len": 0}]})
    assert first.stop() == 0


def test_restart_on_same_port_right_after_sigterm(server_factory) -> None:
    srv = server_factory("--shards", "1")
    port = srv.port
    # Open connections make the server close actively: its side of them sits in TIME_WAIT.
    conns = [srv.connect(timeout=5) for _ in range(3)]
    for c in conns:
        assert c.call(MsgType.PING, {}).type == MsgType.ACK
    assert srv.stop(signal.SIGTERM) == 0
    for c in conns:
        c.close()
    t0 = time.monotonic()
    srv.restart(timeout=20)
    assert srv.port == port
    assert time.monotonic() - t0 < 10
    with srv.connect(timeout=5) as conn:
        assert conn.call(MsgType.PING, {}).type == MsgType.ACK


@pytest.mark.parametrize("how", ["sigterm", "kill9"])
def test_a_lease_survives_a_broker_restart(server_factory, how: str) -> None:
    """A worker that outlives a restart heartbeats and completes its task: the task runs once."""
    srv = server_factory("--shards", "2", "--lease-timeout-ms", "60000")
    with srv.connect(timeout=10) as conn:
        (tid,) = conn.call(MsgType.SUBMIT, {"tasks": [{"type": "long", "payload_len": 1}]},
                           b"x").header["ids"]
        (task,) = conn.call(MsgType.CLAIM, {"worker_id": "w-long", "max": 1}).header["tasks"]
        assert task["id"] == tid and task["attempt"] == 1
    if how == "sigterm":
        assert srv.stop(signal.SIGTERM, timeout=20) == 0
    else:
        srv.kill()
    srv.restart()
    with srv.connect(timeout=30) as conn:
        (st,) = conn.call(MsgType.QUERY_STATUS, {"ids": [tid]}).header["tasks"]
        assert st["status"] == "in_progress" and st["attempt"] == 1 and st["worker_id"] == "w-long"
        hb = conn.call(MsgType.HEARTBEAT, {"worker_id": "w-long", "active": [tid]}).header
        assert hb.get("lost", []) == []
        res = conn.call(MsgType.RESULT, {"worker_id": "w-long", "results": [
            {"id": tid, "attempt": 1, "status": "completed", "result_len": 0}]}).header
        assert res["results"][0]["status"] == "completed", res
        (st,) = conn.call(MsgType.QUERY_STATUS, {"ids": [tid]}).header["tasks"]
        assert st["status"] == "completed" and st["attempt"] == 1
