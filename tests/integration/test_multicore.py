"""The multi-process broker: acceptor, shard processes, coordinator, supervisor.

Every test runs a real `shardq serve --shards 2` (5 processes) and talks to it
over TCP; processes are killed with SIGKILL by pid, as a crash would.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from typing import Any

import pytest
from wire import (
    claim,
    claim_until,
    complete,
    heartbeat,
    hello,
    query,
    query_one,
    result,
    stats,
    submit,
    submit_one,
    uid,
)

from shardq.client.connection import ConnectionClosed
from shardq.errors import NotFound, WireError
from shardq.protocol.frames import MsgType
from shardq.task import id_to_str, new_ids
from shardq.testing import ServerProcess


def id_owned_by(shard: int, shards: int = 2) -> str:
    return id_to_str(new_ids(1, shard, shards)[0])


def pinned(server: ServerProcess, shard: int) -> Any:
    """A connection on ``shard`` (a shard-aware client's HELLO hint)."""
    conn = server.connect(timeout=20)
    assert hello(conn, shard=shard)["shard"] == shard
    return conn


def child_pid(server: ServerProcess, name: str, after: int = 0) -> int:
    """The pid the supervisor logged for child ``name`` (the latest start); with ``after``, the
    first start logged after that pid's (an earlier pid would be a dead one)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pids = [int(m.group(1)) for line in server.stderr_lines
                if (m := re.search(rf"supervisor .*: {name} started \(pid (\d+)\)", line))]
        if after:
            pids = pids[pids.index(after) + 1:] if after in pids else []
        if pids:
            return pids[-1]
        time.sleep(0.05)
    raise AssertionError(f"no pid logged for {name}")


def wait_restarted(server: ServerProcess, name: str, old_pid: int) -> int:
    pid = child_pid(server, name, after=old_pid)
    assert pid != old_pid
    return pid


@pytest.fixture
def two(server_factory) -> ServerProcess:
    return server_factory("--shards", "2", "--lease-timeout-ms", "3000", "--heartbeat-interval-ms", "400")


def test_connections_spread_and_shard_hint(two) -> None:
    conns = [two.connect() for _ in range(6)]
    shards = [hello(c)["shard"] for c in conns]
    # The acceptor balances by connection count (its counts are corrected by the shards' own
    # reports, so a connection may land one off).
    assert 2 <= shards.count(0) <= 4 and 2 <= shards.count(1) <= 4, shards
    assert all(hello(c)["shards"] == 2 for c in conns)
    for want in (0, 1, 1, 0):
        c = two.connect()
        conns.append(c)
        info = hello(c, shard=want)
        assert info["shard"] == want
        assert submit_one(c, uid()) and query(c, [])  == []  # the handed-over connection works
    st = stats(conns[0])
    assert st["connections"] == 10 and {r["shard"] for r in st["shards"]} == {0, 1}


def test_every_by_id_message_is_forwarded_to_the_owner(two) -> None:
    on0, on1 = pinned(two, 0), pinned(two, 1)
    t, w = uid(), uid("w")
    # SUBMIT with client ids owned by the other shard (and by both): stored on the owner.
    foreign, mine = id_owned_by(1), id_owned_by(0)
    assert submit(on0, {"type": t, "id": foreign}, {"type": t, "id": mine}) == [foreign, mine]
    assert query_one(on1, foreign)["shard"] == 1 and query_one(on1, mine)["shard"] == 0
    assert submit(on0, {"type": t, "id": foreign}) == [foreign]  # idempotent across shards
    # CANCEL of the other shard's task.
    assert on0.call(MsgType.CANCEL, {"id": foreign}).header["status"] == "cancelled"
    assert query_one(on1, foreign)["status"] == "cancelled"
    with pytest.raises(NotFound):
        on0.call(MsgType.CANCEL, {"id": id_owned_by(1)})
    # CLAIM through shard 1 of shard 0's task; RESULT and HEARTBEAT through shard 0 again.
    [(task, _)] = claim_until(on1, w, [t], 1)
    assert task["id"] == mine and task["shard"] == 0
    other = submit(on1, {"type": uid()})[0]
    hb = heartbeat(on0, w, active=[mine, other])
    assert hb["lost"] == [other]
    assert complete(on1, w, task)["status"] == "completed"
    # REQUEUE by ids across shards.
    t2 = uid()
    a, b = submit(on0, {"type": t2, "id": id_owned_by(0), "max_retries": 0},
                  {"type": t2, "id": id_owned_by(1), "max_retries": 0})
    got = claim_until(on0, w, [t2], 2)
    out = result(on1, w, *[{"id": x["id"], "attempt": x["attempt"], "status": "failed", "error": "x"}
                           for x, _ in got])
    assert [o["status"] for o in out] == ["dead_letter", "dead_letter"]
    r = on1.call(MsgType.REQUEUE, {"ids": [a, b, id_owned_by(0)]}).header
    assert r["requeued"] == 2 and r["results"][2]["error"]["code"] == "NotFound"
    assert [x["status"] for x in query(on0, [a, b])] == ["pending", "pending"]
    # LIST_TASKS sees both shards, each task once, and GET_STATS adds them up.
    listed, cursor = [], None
    while True:
        page = on1.call(MsgType.LIST_TASKS, {"status": "pending", "type": t2, "limit": 1,
                                             **({"cursor": cursor} if cursor else {})}).header
        listed += [x["id"] for x in page["tasks"]]
        cursor = page["cursor"]
        if cursor is None:
            break
    assert sorted(listed) == sorted([a, b])
    st = stats(on0)
    assert st["totals"]["pending"] == sum(r["pending"] for r in st["shards"]) >= 2


def test_dependencies_across_shards_and_their_cascade(two) -> None:
    on0, on1 = pinned(two, 0), pinned(two, 1)
    t, w = uid(), uid("w")
    parent = submit(on0, {"type": t})[0]
    child = submit(on1, {"type": t, "depends_on": [parent]})[0]
    assert (query_one(on0, child)["shard"], query_one(on0, parent)["shard"]) == (1, 0)
    [(p, _)] = claim_until(on0, w, [t], 1)
    assert p["id"] == parent
    assert claim(on1, w, types=[t]) == []  # the child waits for its parent on the other shard
    complete(on0, w, p)
    [(c, _)] = claim_until(on1, w, [t], 1, timeout=5)
    assert c["id"] == child
    complete(on1, w, c)
    # A batch whose tasks depend on each other across owners, and a failing root.
    root, leaf = id_owned_by(0), id_owned_by(1)
    submit(on1, {"type": t, "id": root}, {"type": t, "id": leaf, "depends_on": [root]})
    assert on0.call(MsgType.CANCEL, {"id": root}).header["status"] == "cancelled"
    deadline = time.monotonic() + 5
    while query_one(on0, leaf)["status"] != "dead_letter":
        assert time.monotonic() < deadline, "the dependent did not follow its cancelled dependency"
        time.sleep(0.05)
    assert query_one(on0, leaf)["error"] == f"dependency failed: {root}"
    with pytest.raises(NotFound):
        submit(on0, {"type": t, "depends_on": [id_owned_by(1)]})


def test_cross_shard_claims_drain_one_shard_from_the_other(two) -> None:
    on0, on1 = pinned(two, 0), pinned(two, 1)
    t, w = uid(), uid("w")
    ids = submit(on0, *[{"type": t, "priority": p} for p in (10, 200, 100)])
    # A waiting claim on shard 1 is woken by work that becomes ready on shard 0.
    got = claim(on1, w, max=10, wait_ms=2000, types=[t])
    assert got and all(x["shard"] == 0 for x, _ in got)
    got += claim_until(on1, w, [t], 3 - len(got))
    assert [x["priority"] for x, _ in got] == [200, 100, 10], "priority order of the owning shard"
    rid = on1.send(MsgType.CLAIM, {"worker_id": w, "wait_ms": 3000, "types": [t]})
    time.sleep(0.2)
    started = time.monotonic()
    late = submit_one(on0, t)
    msg = on1.wait_for(rid)
    assert [x["id"] for x in msg.header["tasks"]] == [late]
    assert time.monotonic() - started < 1.0
    assert sorted(ids) == sorted(x["id"] for x, _ in got)


def test_worker_registered_on_one_shard_heartbeats_through_another(two) -> None:
    on0, on1 = pinned(two, 0), pinned(two, 1)
    t, w = uid(), uid("w")
    on0.call(MsgType.REGISTER_WORKER, {"worker_id": w, "hostname": "box", "concurrency": 2})
    tid = submit(on1, {"type": t})[0]
    [(task, _)] = claim_until(on0, w, [t], 1)  # shard 1's task, leased through shard 0
    # Heartbeats only through shard 1 keep the worker alive and its lease (3 s) extended.
    for _ in range(10):
        assert "lost" not in heartbeat(on1, w, active=[tid])
        time.sleep(0.3)
    assert query_one(on0, tid)["status"] == "in_progress"
    workers = on0.call(MsgType.GET_STATS, {"workers_detail": True}).header["worker_list"]
    mine = [x for x in workers if x["worker_id"] == w]
    assert mine and mine[0]["hostname"] == "box" and mine[0]["active"] == 1
    # Silence: the coordinator declares it dead after 2 x 400 ms and shard 1 reclaims.
    deadline = time.monotonic() + 5
    while query_one(on0, tid)["status"] == "in_progress":
        assert time.monotonic() < deadline, "the silent worker's lease was not reclaimed"
        time.sleep(0.05)
    q = query_one(on0, tid)
    assert (q["status"], q["error"], q["retry_count"]) == ("pending", "worker lost", 1)
    assert complete(on1, w, task)["error"]["code"] == "LeaseLost"


def test_kill_9_of_a_shard_under_load_loses_nothing(two) -> None:
    """Producers and workers on both shards; shard 1 is killed; shard 0's clients never
    see an error; every acknowledged task exists exactly once after the restart."""
    victim = child_pid(two, "shard-1")
    acked: dict[int, list[str]] = {0: [], 1: []}
    errors: dict[int, list[str]] = {0: [], 1: []}
    stop = threading.Event()
    t = uid()

    def produce(shard: int) -> None:
        conn = None
        while not stop.is_set():
            try:
                if conn is None:
                    conn = pinned(two, shard)
                acked[shard] += submit(conn, *[{"type": t}] * 20)
            except Exception as exc:  # noqa: BLE001  (any failure of shard 1 is expected here)
                errors[shard].append(repr(exc))
                conn = None
                time.sleep(0.05)

    def work(shard: int) -> None:
        conn = None
        while not stop.is_set():
            try:
                if conn is None:
                    conn = pinned(two, shard)
                got = claim(conn, f"w{shard}", max=10, wait_ms=100, types=[t])
                if got:
                    result(conn, f"w{shard}", *[{"id": x["id"], "attempt": x["attempt"],
                                                  "status": "completed"} for x, _ in got])
            except Exception as exc:  # noqa: BLE001  (any failure of shard 1 is expected here)
                errors[shard].append(repr(exc))
                conn = None
                time.sleep(0.05)

    threads = [threading.Thread(target=f, args=(s,)) for f in (produce, work) for s in (0, 1)]
    for th in threads:
        th.start()
    try:
        time.sleep(1.0)
        before = len(acked[1])
        os.kill(victim, signal.SIGKILL)
        new_pid = wait_restarted(two, "shard-1", victim)
        deadline = time.monotonic() + 20
        while len(acked[1]) <= before + 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        stop.set()
        for th in threads:
            th.join(30)
    assert new_pid != victim
    assert len(acked[1]) > before, (f"shard 1 serves again after its restart: {errors[1][-3:]}\n"
                                    + "".join(two.stderr_lines[-40:]))
    assert errors[0] == [], f"clients of shard 0 saw errors: {errors[0][:3]}"
    assert any("killed by SIGKILL" in line and "shard-1" in line for line in two.stderr_lines)
    everything = acked[0] + acked[1]
    assert len(everything) == len(set(everything))
    conn = two.connect()
    found = []
    for start in range(0, len(everything), 1000):
        found += query(conn, everything[start:start + 1000])
    assert all(x is not None for x in found), "an acknowledged task is missing"
    assert two.stop() == 0


@pytest.mark.parametrize("name", ["acceptor", "coordinator"])
def test_kill_9_of_acceptor_or_coordinator(two, name) -> None:
    before = two.connect()
    tid = submit_one(before, uid())
    pid = child_pid(two, name)
    os.kill(pid, signal.SIGKILL)
    wait_restarted(two, name, pid)
    deadline = time.monotonic() + 10
    while True:
        try:
            conn = two.connect(timeout=5)
            assert hello(conn)["shards"] == 2
            break
        except (OSError, WireError):
            assert time.monotonic() < deadline, f"no service after the {name} restart"
            time.sleep(0.1)
    # Connections the acceptor handed over live in the shards: they never noticed.
    assert query_one(before, tid)["status"] == "pending"
    w = uid("w")
    conn.call(MsgType.REGISTER_WORKER, {"worker_id": w})
    deadline = time.monotonic() + 10
    while w not in [x["worker_id"] for x in conn.call(
            MsgType.GET_STATS, {"workers_detail": True}).header["worker_list"]]:
        assert time.monotonic() < deadline, "the worker registry did not come back"
        time.sleep(0.1)
    assert two.stop() == 0


def test_children_follow_a_killed_supervisor(two) -> None:
    """kill -9 of `shardq serve` itself: its children drain and exit rather than linger with the
    RocksDB locks, and the data dir serves again under a new supervisor."""
    import psutil

    children = [child_pid(two, name) for name in ("coordinator", "shard-0", "shard-1", "acceptor")]
    conn = two.connect()
    tid = submit_one(conn, uid())
    os.kill(two.pid, signal.SIGKILL)
    two.proc.wait(10)
    deadline = time.monotonic() + 20
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in children):
        assert time.monotonic() < deadline, "children outlived their supervisor"
        time.sleep(0.1)
    again = ServerProcess(two.data_dir, ["--shards", "2"]).start()
    try:
        assert query_one(again.connect(), tid)["status"] == "pending"
    finally:
        assert again.stop() == 0


def test_a_higher_tier_on_another_shard_is_claimed_first(two) -> None:
    on0, on1 = pinned(two, 0), pinned(two, 1)
    t, w = uid(), uid("w")
    submit(on0, *[{"type": t, "priority": 10}] * 3)  # low tier, on the worker's own shard
    high = submit(on1, *[{"type": t, "priority": 250}] * 2)  # high tier, on the other shard
    time.sleep(0.3)  # the shards' ready reports reach each other through the coordinator
    got = claim(on0, w, max=1, types=[t])
    assert [x["id"] for x, _ in got] == high[:1]
    got = claim(on0, w, max=3, types=[t])  # the rest of the high tier first, then local low
    assert [x["priority"] for x, _ in got] == [250, 10, 10]


def test_bundled_client_rides_out_the_owners_restart(two) -> None:
    """A safe request about a task whose owner is restarting is repeated until it is back; an
    unsafe one (CANCEL) raises Unavailable at once, as the protocol says."""
    import shardq
    from shardq.errors import Unavailable

    with shardq.Client(two.url, shard=0, timeout=20) as client:
        tid = id_owned_by(1)
        assert client.submit("t-restart", b"x", id=tid) == tid  # forwarded to shard 1
        pid = child_pid(two, "shard-1")
        os.kill(pid, signal.SIGKILL)
        # Shard 0 answers at once that the owner is gone...
        with pytest.raises(Unavailable):
            client.cancel(tid)
        # ...and a QUERY_STATUS waits out the restart instead of failing.
        assert client.status(tid).status == "pending"
        wait_restarted(two, "shard-1", pid)
        client.cancel(tid)
        assert client.status(tid).status == "cancelled"


def test_an_unknown_dependency_refuses_the_whole_split_batch(two) -> None:
    """Whichever shards own the tasks of a batch and its unknown dependency, nothing is stored."""
    for here in (0, 1):
        conn = pinned(two, here)
        for x_owner in (0, 1):
            for second_owner in (None, 0, 1):
                for dep_owner in (0, 1):
                    x = id_owned_by(x_owner)
                    second: dict[str, Any] = {"type": uid(), "depends_on": [id_owned_by(dep_owner)]}
                    if second_owner is not None:
                        second["id"] = id_owned_by(second_owner)
                    case = (here, x_owner, second_owner, dep_owner)
                    with pytest.raises(NotFound):
                        submit(conn, {"type": uid(), "id": x}, second)
                    assert query(conn, [x]) == [None], case
                    if second_owner is not None:
                        assert query(conn, [second["id"]]) == [None], case


def pinned_when_back(server: ServerProcess, shard: int, timeout: float = 20.0) -> Any:
    """A connection on ``shard`` once it serves again after a restart."""
    deadline = time.monotonic() + timeout
    while True:
        conn = server.connect(timeout=20)
        try:
            if hello(conn, shard=shard)["shard"] == shard:
                return conn
        except (OSError, WireError, ConnectionClosed):  # handed to a shard that was dying
            pass
        conn.close()
        assert time.monotonic() < deadline, f"shard {shard} did not come back"
        time.sleep(0.1)


def kill_and_wait(server: ServerProcess, shard: int) -> None:
    pid = child_pid(server, f"shard-{shard}")
    os.kill(pid, signal.SIGKILL)
    wait_restarted(server, f"shard-{shard}", pid)


def wait_status(conn: Any, tid: str, status: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        task = query_one(conn, tid)
        if task is not None and task["status"] == status:
            return task
        assert time.monotonic() < deadline, f"{tid} is {task and task['status']}, not {status}"
        time.sleep(0.05)


@pytest.mark.parametrize("victim", ["dependent", "dependency"])
def test_dependencies_across_shards_survive_a_crash_of_either_shard(two, victim) -> None:
    """A child on shard 1 waits for its parent on shard 0. Whichever shard is killed (while the
    parent is pending, and again right after it completed), the child runs once the parent is
    done; a parent that fails while the child's shard is down takes the child with it."""
    t, w = uid(), uid("w")
    crash = 1 if victim == "dependent" else 0
    on0 = pinned(two, 0)
    parent = submit(on0, {"type": t, "id": id_owned_by(0)})[0]
    child = submit(on0, {"type": t, "id": id_owned_by(1), "depends_on": [parent]})[0]

    kill_and_wait(two, crash)  # the parent is pending, the child waits for it
    on0, on1 = pinned_when_back(two, 0), pinned_when_back(two, 1)
    assert query_one(on1, child)["status"] == "pending"
    [(p, _)] = claim_until(on0, w, [t], 1)
    assert p["id"] == parent
    assert claim(on1, w, types=[t]) == []  # still waiting
    complete(on0, w, p)
    kill_and_wait(two, crash)  # right after the parent completed
    on0, on1 = pinned_when_back(two, 0), pinned_when_back(two, 1)
    [(c, _)] = claim_until(on1, w, [t], 1, timeout=10)
    assert c["id"] == child
    complete(on1, w, c)
    assert wait_status(on0, child, "completed")["shard"] == 1

    # A dependency that fails while the dependent's shard is down.
    root = submit(on0, {"type": t, "id": id_owned_by(0)})[0]
    leaf = submit(on0, {"type": t, "id": id_owned_by(1), "depends_on": [root]})[0]
    pid = child_pid(two, "shard-1")
    os.kill(pid, signal.SIGKILL)
    assert on0.call(MsgType.CANCEL, {"id": root}).header["status"] == "cancelled"
    wait_restarted(two, "shard-1", pid)
    on1 = pinned_when_back(two, 1)
    assert wait_status(on1, leaf, "dead_letter")["error"] == f"dependency failed: {root}"
