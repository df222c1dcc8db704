"""Every request type of protocol v1 against a real `shardq serve` process.

The contract is /work/shared/PROTOCOL.md. Two module-scoped servers (one and two
shards, short leases) serve the tests that isolate themselves by task type and
worker id; tests that need exact broker-wide figures or other flags start a fresh
server. Waits poll with a deadline (or use waiting CLAIMs) rather than sleep.
"""

from __future__ import annotations

import os
import select
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from wire import (
    STATUSES,
    cancel,
    check_task,
    claim,
    claim_until,
    complete,
    deregister,
    fail,
    heartbeat,
    hello,
    id_in_shard,
    is_canonical_id,
    list_tasks,
    nack,
    new_id,
    now_ms,
    ping,
    poll,
    poll_task,
    query,
    query_one,
    query_results,
    register,
    release,
    requeue,
    result,
    split_tasks,
    spread_ids,
    stats,
    submit,
    submit_one,
    total_tasks,
    uid,
    walk,
)

from shardq.client.connection import Connection
from shardq.errors import BadRequest, InvalidState, NotFound, QueueFull
from shardq.protocol.frames import MsgType, encode
from shardq.testing import ServerProcess

LEASE_MS = 500
SHORT_LEASES = ("--lease-timeout-ms", str(LEASE_MS), "--heartbeat-interval-ms", "5000")


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def module_server(tmp_path_factory) -> Iterator[Callable[..., ServerProcess]]:
    """Servers shared by the tests of this module; killed (process group) at teardown."""
    started: list[ServerProcess] = []

    def make(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
        srv = ServerProcess(str(tmp_path_factory.mktemp("data")), args, env=env)
        started.append(srv)
        return srv.start()

    yield make
    for srv in started:
        srv.kill()


@pytest.fixture(scope="module")
def srv1(module_server) -> ServerProcess:
    srv = module_server("--shards", "1", *SHORT_LEASES)
    srv.nshards = 1  # type: ignore[attr-defined]
    return srv


@pytest.fixture(scope="module")
def srv2(module_server) -> ServerProcess:
    srv = module_server("--shards", "2", *SHORT_LEASES)
    srv.nshards = 2  # type: ignore[attr-defined]
    return srv


@pytest.fixture(params=["1shard", "2shards"])
def srv(request) -> ServerProcess:
    """The shared one-shard server, then the shared two-shard one (routing by id)."""
    return request.getfixturevalue("srv1" if request.param == "1shard" else "srv2")


@pytest.fixture
def connect() -> Iterator[Callable[[ServerProcess], Connection]]:
    conns: list[Connection] = []

    def make(server: ServerProcess) -> Connection:
        conn = server.connect(timeout=20)
        conns.append(conn)
        return conn

    yield make
    for conn in conns:
        conn.close()


def body(header: dict) -> dict:
    """An ACK header without its rid."""
    return {k: v for k, v in header.items() if k != "rid"}


def complete_all(conn: Connection, worker: str, got: list) -> None:
    items = [{"id": t["id"], "attempt": t["attempt"], "status": "completed", "result_len": 0}
             for t, _ in got]
    if items:
        out = result(conn, worker, *items)
        assert [r.get("status") for r in out] == ["completed"] * len(items), out


# -- HELLO / PING -------------------------------------------------------------------------------


def test_hello_answer_and_ping(srv1, srv2, connect):
    c = connect(srv1)
    h = hello(c)
    assert type(h["server"]) is str and h["server"].startswith("shardq/")
    assert h["protocol"] == 1
    assert (h["shard"], h["shards"]) == (0, 1)
    assert h["max_frame"] == 16_777_216
    assert h["max_payload"] == 10_485_760
    assert h["lease_ms"] == LEASE_MS and type(h["lease_ms"]) is int
    assert h["heartbeat_ms"] == 5000 and type(h["heartbeat_ms"]) is int

    # The two-shard server: each connection names the shard that serves it, and
    # connections are spread over both.
    homes = set()
    for _ in range(2):
        h2 = hello(connect(srv2))
        assert h2["shards"] == 2 and h2["protocol"] == 1
        homes.add(h2["shard"])
    assert homes == {0, 1}

    # PING: an empty ACK with the same rid, before or without HELLO too.
    for conn in (c, connect(srv1)):
        rid = conn.send(MsgType.PING, {"rid": 987_654_321})
        msg = conn.wait_for(rid)
        assert msg.type == MsgType.ACK
        assert msg.header == {"rid": 987_654_321}
        assert msg.blob == b""
        assert rid == msg.rid


# -- SUBMIT / CLAIM / QUERY_STATUS ------------------------------------------------------------


def test_submit_single_and_batch_claim_payloads_exact(srv, connect):
    c = connect(srv)
    t, w = uid(), uid("w")
    single_payload = b"\x00single\xff"
    single = submit(c, {"type": t}, payloads=[single_payload])
    payloads = [bytes(range(256)), b"", b"x" * 1000, os.urandom(4096), b"\n\r\x00"]
    batch = submit(c, *[{"type": t} for _ in payloads], payloads=payloads)
    assert all(is_canonical_id(i) for i in single + batch)
    assert len(set(single + batch)) == 6

    # The ACK's ids are in the batch's order: each id carries its own payload's length.
    tasks = query(c, batch)
    assert [x["id"] for x in tasks] == batch
    assert [x["payload_len"] for x in tasks] == [len(p) for p in payloads]

    got = claim(c, w, max=10, types=[t])
    assert [x["id"] for x, _ in got] == single + batch
    assert [p for _, p in got] == [single_payload] + payloads
    before = now_ms()
    for task, _ in got:
        check_task(task)
        assert task["status"] == "in_progress"
        assert task["worker_id"] == w
        assert task["attempt"] == 1
        assert task["lease_expires_ms"] > before - LEASE_MS
    complete_all(c, w, got)
    assert [x["status"] for x in query(c, single + batch)] == ["completed"] * 6


def test_query_status_task_object_and_results(srv, connect):
    c = connect(srv)
    t, w = uid(), uid("w")
    t0 = now_ms()
    a = submit_one(c, t, b"p" * 120, priority=150, max_retries=2, timeout_seconds=60)
    t1 = now_ms()
    b, cc, d = submit(c, {"type": t}, {"type": t}, {"type": t}, payloads=[b"b", b"c", b""])

    task = check_task(query_one(c, a))
    assert task["id"] == a and task["type"] == t and task["priority"] == 150
    assert task["status"] == "pending"
    assert t0 <= task["created_ms"] <= t1
    assert task["created_ms"] <= task["updated_ms"] <= t1
    assert t0 <= task["scheduled_ms"] <= t1
    assert (task["max_retries"], task["retry_count"], task["timeout_seconds"]) == (2, 0, 60)
    assert (task["worker_id"], task["lease_expires_ms"], task["attempt"]) == (None, None, 0)
    assert (task["depends_on"], task["error"]) == ([], None)
    assert (task["payload_len"], task["result_len"]) == (120, None)
    assert task["shard"] in range(srv.nshards)
    defaults = check_task(query_one(c, d))
    assert (defaults["priority"], defaults["max_retries"], defaults["timeout_seconds"]) == (100, 3, 300)
    assert defaults["payload_len"] == 0

    # Unknown ids are null, in place.
    unknown = new_id()
    assert query(c, [unknown]) == [None]
    mixed = query(c, [b, unknown, a])
    assert mixed[1] is None and mixed[0]["id"] == b and mixed[2]["id"] == a

    # In progress: worker and lease show.
    t2 = now_ms()
    got = claim(c, w, max=3, types=[t])
    assert [x["id"] for x, _ in got] == [a, b, cc]
    running = check_task(query_one(c, a))
    assert running["status"] == "in_progress" and running["worker_id"] == w
    assert running["attempt"] == 1
    assert t2 + LEASE_MS <= running["lease_expires_ms"] <= now_ms() + LEASE_MS

    # Results: a non-empty, an empty (result_len 0), a binary one; d never ran.
    ra, rc = b"result-A\x00\xff", os.urandom(3000)
    out = result(c, w,
                 {"id": a, "attempt": 1, "status": "completed", "result_len": len(ra)},
                 {"id": b, "attempt": 1, "status": "completed", "result_len": 0},
                 {"id": cc, "attempt": 1, "status": "completed", "result_len": len(rc)},
                 blobs=[ra, rc])
    assert out == [{"id": a, "status": "completed"}, {"id": b, "status": "completed"},
                   {"id": cc, "status": "completed"}]
    rows = query_results(c, [a, unknown, d, cc, b])
    assert rows[0][0]["result_len"] == len(ra) and rows[0][1] == ra
    assert rows[1] == (None, None)
    assert rows[2][0]["result_len"] is None and rows[2][1] is None
    assert rows[3][0]["result_len"] == len(rc) and rows[3][1] == rc
    assert rows[4][0]["result_len"] == 0 and rows[4][1] == b""
    done = check_task(rows[0][0])
    assert done["status"] == "completed" and done["worker_id"] is None
    assert done["lease_expires_ms"] is None and done["error"] is None
    # Without with_result there is no blob.
    msg = c.call(MsgType.QUERY_STATUS, {"ids": [a, cc]})
    assert msg.blob == b"" and len(msg.header["tasks"]) == 2


def test_priority_order_fifo_across_batches_and_connections(srv, connect):
    # Strict order holds within a shard: both connections ask for shard 0 (a HELLO hint).
    ca, cb = connect(srv), connect(srv)
    assert hello(ca, shard=0)["shard"] == 0 and hello(cb, shard=0)["shard"] == 0
    t, w = uid(), uid("w")
    a1 = submit(ca, {"type": t, "priority": 100}, {"type": t, "priority": 200}, {"type": t, "priority": 50})
    b1 = submit(cb, {"type": t, "priority": 100}, {"type": t, "priority": 200})
    a2 = submit(ca, {"type": t, "priority": 100}, {"type": t})  # default priority 100
    b2 = submit(cb, {"type": t, "priority": 255}, {"type": t, "priority": 0})
    expected = [b2[0], a1[1], b1[1], a1[0], b1[0], a2[0], a2[1], a1[2], b2[1]]

    first = claim(ca, w, max=2, types=[t])  # `max` is respected
    assert [x["id"] for x, _ in first] == expected[:2]
    one = claim(cb, w, max=1, types=[t])
    assert [x["id"] for x, _ in one] == expected[2:3]
    rest = claim(ca, w, max=100, types=[t])
    assert [x["id"] for x, _ in rest] == expected[3:]
    assert claim(ca, w, max=100, types=[t]) == []
    complete_all(ca, w, first + one + rest)


def test_claim_types_filter(srv, connect):
    c = connect(srv)
    t1, t2, t3, w = uid(), uid(), uid(), uid("w")
    ids = submit(c, {"type": t1}, {"type": t2}, {"type": t1}, {"type": t2})
    got2 = claim(c, w, max=10, types=[t2])
    assert [x["id"] for x, _ in got2] == [ids[1], ids[3]]
    assert all(x["type"] == t2 for x, _ in got2)
    assert claim(c, w, max=10, types=[t3]) == []
    got1 = claim(c, w, max=10, types=[t3, t1, t2])
    assert [x["id"] for x, _ in got1] == [ids[0], ids[2]]
    complete_all(c, w, got1 + got2)


def test_delay_and_scheduled_ms(srv, connect):
    c = connect(srv)
    t, w = uid(), uid("w")
    now = now_ms()
    d = submit_one(c, t, b"delayed", delay_ms=300)
    s = submit_one(c, t, b"scheduled", scheduled_ms=now + 300)
    with pytest.raises(BadRequest):
        submit(c, {"type": t, "delay_ms": 10, "scheduled_ms": now})
    assert claim(c, w, max=2, types=[t]) == []  # not claimable before
    qd, qs = query(c, [d, s])
    assert qd["status"] == qs["status"] == "pending"
    assert qd["scheduled_ms"] >= qd["created_ms"] + 300
    assert qs["scheduled_ms"] == now + 300

    got: dict[str, tuple[dict, bytes, int]] = {}
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        for task, payload in claim(c, w, max=2, wait_ms=2000, types=[t]):
            got[task["id"]] = (task, payload, now_ms())
    assert set(got) == {d, s}, "scheduled tasks did not become claimable"
    for task, _payload, received in got.values():
        assert received >= task["scheduled_ms"], "claimed before its scheduled time"
        assert received <= task["scheduled_ms"] + 1000, "claimable long after its scheduled time"
    assert got[d][1] == b"delayed" and got[s][1] == b"scheduled"
    complete_all(c, w, [(x, p) for x, p, _ in got.values()])


# -- RESULT: retries, dead letters --------------------------------------------------------------


def test_retry_backoff_then_dead_letter(server_factory, connect):
    server = server_factory("--shards", "1", env={"SHARDQ_BROKER__RETRY_BACKOFF_BASE_MS": "200",
                                                  "SHARDQ_BROKER__RETRY_BACKOFF_MAX_MS": "60000"})
    c = connect(server)
    t, w = uid(), uid("w")
    tid = submit_one(c, t, b"work", max_retries=2)

    task = claim(c, w, types=[t])[0][0]
    for n, (lo, hi) in enumerate([(160, 240), (320, 480)], start=1):
        before = now_ms()
        assert fail(c, w, task, f"boom{n}") == {"id": tid, "status": "failed"}
        after = now_ms()
        q = check_task(query_one(c, tid))
        assert q["status"] == "failed" and q["retry_count"] == n and q["error"] == f"boom{n}"
        assert before + lo <= q["scheduled_ms"] <= after + hi, (n, q["scheduled_ms"] - before)
        assert claim(c, w, types=[t]) == []  # not before its retry time
        [(task, payload)] = claim_until(c, w, [t], 1, timeout=5)
        assert now_ms() >= q["scheduled_ms"]
        assert task["id"] == tid and task["attempt"] == n + 1 and payload == b"work"

    # The third failure exhausts max_retries=2: dead letter with the error.
    assert fail(c, w, task, "boom3") == {"id": tid, "status": "dead_letter"}
    q = query_one(c, tid)
    assert (q["status"], q["error"], q["retry_count"]) == ("dead_letter", "boom3", 2)
    assert claim(c, w, types=[t]) == []

    # retry=false dead-letters at once, whatever retries remain.
    tid2 = submit_one(c, t)
    task2 = claim(c, w, types=[t])[0][0]
    assert fail(c, w, task2, "fatal", retry=False) == {"id": tid2, "status": "dead_letter"}
    q2 = query_one(c, tid2)
    assert (q2["status"], q2["error"], q2["retry_count"]) == ("dead_letter", "fatal", 0)

    # REQUEUE resets retry_count; the task is claimable at once.
    r = requeue(c, ids=[tid])
    assert r["requeued"] == 1 and r["results"] == [{"id": tid, "status": "pending"}]
    q = query_one(c, tid)
    assert (q["status"], q["retry_count"]) == ("pending", 0)
    assert q["scheduled_ms"] <= now_ms()
    [(again, _)] = claim(c, w, types=[t])
    assert again["id"] == tid and again["attempt"] == 4
    assert complete(c, w, again) == {"id": tid, "status": "completed"}


# -- REQUEUE -------------------------------------------------------------------------------------


def test_requeue_by_ids(srv, connect):
    c = connect(srv)
    t, u, w = uid(), uid(), uid("w")
    dead_id, pend_id, done_id = spread_ids(3, srv.nshards)
    dead = submit_one(c, t, b"d", id=dead_id)
    pend = submit_one(c, u, id=pend_id)
    task = claim(c, w, types=[t])[0][0]
    assert fail(c, w, task, "nope", retry=False)["status"] == "dead_letter"
    unknown = new_id()

    r = requeue(c, ids=[dead, pend, unknown])
    assert r["requeued"] == 1
    res = r["results"]
    assert [x["id"] for x in res] == [dead, pend, unknown]
    assert res[0] == {"id": dead, "status": "pending"}
    assert res[1]["error"]["code"] == "InvalidState" and "status" not in res[1]
    assert res[2]["error"]["code"] == "NotFound" and "status" not in res[2]
    q = query_one(c, dead)
    assert (q["status"], q["retry_count"]) == ("pending", 0)
    assert query_one(c, pend)["status"] == "pending"

    [(again, payload)] = claim(c, w, types=[t])
    assert again["id"] == dead and again["attempt"] == 2 and payload == b"d"
    assert complete(c, w, again)["status"] == "completed"
    r = requeue(c, ids=[dead])
    assert r["requeued"] == 0 and r["results"][0]["error"]["code"] == "InvalidState"
    assert query_one(c, dead)["status"] == "completed"
    with pytest.raises(BadRequest):
        requeue(c, ids=[done_id.upper() if done_id.upper() != done_id else "not-an-id"])


def test_requeue_by_status_type_limit(srv, connect):
    c = connect(srv)
    t, u, f, w = uid(), uid(), uid(), uid("w")
    tids = submit(c, *[{"type": t, "id": i} for i in spread_ids(3, srv.nshards)])
    uid_ = submit_one(c, u)
    # Spread over the shards: a claim may take them in more than one answer.
    got = claim_until(c, w, [t], 3, timeout=5) + claim(c, w, types=[u])
    out = result(c, w, *[{"id": x["id"], "attempt": x["attempt"], "status": "failed",
                          "error": "bad", "retry": False} for x, _ in got])
    assert [x["status"] for x in out] == ["dead_letter"] * 4

    r = requeue(c, status="dead_letter", type=t, limit=2)
    assert r["requeued"] == 2
    states = Counter(x["status"] for x in query(c, tids))
    assert states == {"pending": 2, "dead_letter": 1}
    assert requeue(c, type=t)["requeued"] == 1  # status defaults to dead_letter
    assert all(x["status"] == "pending" and x["retry_count"] == 0 for x in query(c, tids))
    assert query_one(c, uid_)["status"] == "dead_letter"  # another type: untouched
    assert requeue(c, type=t)["requeued"] == 0

    again = claim_until(c, w, [t], 3, timeout=5)
    assert sorted(x["id"] for x, _ in again) == sorted(tids)
    assert all(x["attempt"] == 2 for x, _ in again)
    complete_all(c, w, again)

    # status=failed: a task waiting for its retry (default backoff: ~1 s) is due at once.
    fid = submit_one(c, f)
    task = claim(c, w, types=[f])[0][0]
    assert fail(c, w, task, "transient")["status"] == "failed"
    assert claim(c, w, types=[f]) == []
    assert requeue(c, status="failed", type=f)["requeued"] == 1
    q = query_one(c, fid)
    assert (q["status"], q["retry_count"]) == ("pending", 0)
    [(back, _)] = claim(c, w, types=[f])
    assert back["id"] == fid and back["attempt"] == 2
    assert complete(c, w, back)["status"] == "completed"
    with pytest.raises(BadRequest):
        requeue(c, status="completed")


# -- leases, heartbeats, timeouts, workers ----------------------------------------------------


def test_lease_expiry_reclaims_and_old_attempt_gets_lease_lost(srv, connect):
    c = connect(srv)
    t, w = uid(), uid("w")
    tid = submit_one(c, t, b"job", max_retries=3)
    started = time.monotonic()
    [(task, _)] = claim(c, w, types=[t])
    assert task["lease_expires_ms"] <= now_ms() + LEASE_MS

    q = poll_task(c, tid, lambda x: x["status"] != "in_progress", timeout=5, what="lease expiry")
    assert time.monotonic() - started >= (LEASE_MS - 50) / 1000
    assert (q["status"], q["retry_count"], q["error"]) == ("pending", 1, "lease expired")
    assert q["worker_id"] is None and q["attempt"] == 1

    hb = heartbeat(c, w, active=[tid])
    assert hb.get("lost") == [tid]
    r = complete(c, w, task, b"late")
    assert r["id"] == tid and r["error"]["code"] == "LeaseLost" and "status" not in r
    assert query_one(c, tid)["status"] == "pending"

    [(task2, payload)] = claim(c, w, types=[t])
    assert task2["id"] == tid and task2["attempt"] == 2 and payload == b"job"
    assert complete(c, w, task)["error"]["code"] == "LeaseLost"  # stale attempt, same worker
    assert complete(c, uid("other"), task2)["error"]["code"] == "LeaseLost"  # another worker
    assert complete(c, w, task2, b"ok") == {"id": tid, "status": "completed"}
    assert complete(c, w, task2, b"twice")["error"]["code"] == "LeaseLost"  # completed at most once
    [(q, res)] = query_results(c, [tid])
    assert q["status"] == "completed" and res == b"ok"
    missing = {"id": new_id(), "attempt": 1, "status": "completed"}
    [r] = result(c, w, missing)
    assert r["id"] == missing["id"] and r["error"]["code"] == "NotFound"


def test_heartbeat_keeps_lease_and_reports_lost(srv, connect):
    c = connect(srv)
    t, w, w2 = uid(), uid("w"), uid("w2")
    tid, other = submit(c, {"type": t}, {"type": t})
    [(task, _)] = claim(c, w, types=[t])
    [(otask, _)] = claim(c, w2, types=[t])  # held by another worker, never heartbeated
    assert (task["id"], otask["id"]) == (tid, other)
    never = new_id()

    start = time.monotonic()
    beats = 0
    while time.monotonic() - start < 1.5:
        t0 = now_ms()
        hb = heartbeat(c, w, active=[tid, other, never], cpu_percent=12.5, memory_rss=1 << 20,
                       memory_percent=0.5, state="running")
        t1 = now_ms()
        beats += 1
        assert type(hb["lease_expires_ms"]) is int
        assert t0 + LEASE_MS <= hb["lease_expires_ms"] <= t1 + LEASE_MS
        assert sorted(hb.get("lost", [])) == sorted([other, never])
        q = query_one(c, tid)
        assert q["status"] == "in_progress" and q["attempt"] == 1, q
        assert q["lease_expires_ms"] == hb["lease_expires_ms"]
        time.sleep(0.2)
    assert beats >= 5
    assert complete(c, w, task) == {"id": tid, "status": "completed"}
    # The other worker's lease lapsed meanwhile: the lease time really was short.
    q = query_one(c, other)
    assert q["error"] == "lease expired" and q["retry_count"] == 1
    assert heartbeat(c, w, active=[tid]).get("lost", []) == [tid]  # completed: no longer held


def test_timeout_fails_task_even_while_heartbeating(srv, connect):
    c = connect(srv)
    t, w = uid(), uid("w")
    tid = submit_one(c, t, timeout_seconds=1)
    [(task, _)] = claim(c, w, types=[t])
    started = time.monotonic()

    def beat_then_look():
        heartbeat(c, w, active=[tid])
        q = query_one(c, tid)
        return q if q["status"] != "in_progress" else None

    q = poll(beat_then_look, timeout=4, interval=0.15, what="timeout")
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 3.0, elapsed
    # Retried with backoff like any failure (default base 1 s): failed, not yet pending.
    assert (q["status"], q["error"], q["retry_count"]) == ("failed", "timeout", 1)
    assert q["scheduled_ms"] > q["updated_ms"]
    assert heartbeat(c, w, active=[tid]).get("lost") == [tid]
    assert complete(c, w, task)["error"]["code"] == "LeaseLost"


def test_dead_worker_tasks_reclaimed(server_factory, connect):
    server = server_factory("--shards", "1", "--heartbeat-interval-ms", "300",
                            "--lease-timeout-ms", "60000")
    c = connect(server)
    assert hello(c)["heartbeat_ms"] == 300
    t, live = uid(), uid()
    silent_tid = submit_one(c, t)
    live_tid = submit_one(c, live)
    [(task, _)] = claim(c, "silent", types=[t])
    claimed = time.monotonic()
    [(ltask, _)] = claim(c, "alive", types=[live])
    assert stats(c)["workers"] == 2

    def beat_then_look():
        heartbeat(c, "alive", active=[live_tid])  # the other worker stays alive
        q = query_one(c, silent_tid)
        return q if q["status"] != "in_progress" else None

    q = poll(beat_then_look, timeout=5, interval=0.1, what="dead worker reclaim")
    elapsed = time.monotonic() - claimed
    assert 0.5 <= elapsed <= 1.5, f"reclaimed {elapsed:.2f}s after the claim (2 x heartbeat = 0.6s)"
    assert (q["status"], q["retry_count"], q["error"]) == ("pending", 1, "worker lost")
    assert query_one(c, live_tid)["status"] == "in_progress"
    poll(lambda: stats(c)["workers"] == 1, timeout=2, what="workers count drop")
    assert complete(c, "silent", task)["error"]["code"] == "LeaseLost"
    assert complete(c, "alive", ltask)["status"] == "completed"


def test_register_deregister_and_workers_count(server_factory, connect):
    server = server_factory("--shards", "1")
    c = connect(server)
    t = uid()
    assert stats(c)["workers"] == 0
    assert body(register(c, "w1", hostname="host-a", pid=4242, types=[t], concurrency=4)) == {}
    poll(lambda: stats(c)["workers"] == 1, timeout=2, what="registered worker counted")
    assert claim(c, "w2", types=[t]) == []  # a first CLAIM registers its worker
    poll(lambda: stats(c)["workers"] == 2, timeout=2, what="claiming worker counted")
    heartbeat(c, "w3")  # so does a first HEARTBEAT
    poll(lambda: stats(c)["workers"] == 3, timeout=2, what="heartbeating worker counted")

    ids = submit(c, {"type": t}, {"type": t}, {"type": t})
    got = claim(c, "w1", max=2, types=[t])
    assert [x["id"] for x, _ in got] == ids[:2]
    assert body(deregister(c, "w1")) == {"released": 2}
    for q in query(c, ids[:2]):
        assert (q["status"], q["retry_count"], q["worker_id"], q["attempt"]) == ("pending", 0, None, 1)
    poll(lambda: stats(c)["workers"] == 2, timeout=2, what="deregistered worker dropped")
    assert body(deregister(c, "never-seen")) == {"released": 0}
    assert body(deregister(c, "w3")) == {"released": 0}
    poll(lambda: stats(c)["workers"] == 1, timeout=2, what="w3 dropped")

    again = claim(c, "w2", max=3, types=[t])
    assert [x["id"] for x, _ in again] == ids  # released tasks keep their place
    assert [x["attempt"] for x, _ in again] == [2, 2, 1]
    assert complete(c, "w1", got[0][0])["error"]["code"] == "LeaseLost"
    complete_all(c, "w2", again)


# -- CANCEL --------------------------------------------------------------------------------------


def test_cancel(srv, connect):
    c = connect(srv)
    t, r, w = uid(), uid(), uid("w")
    ids = spread_ids(4, srv.nshards)
    f = submit_one(c, t, id=ids[0])
    ftask = claim(c, w, types=[t])[0][0]
    assert fail(c, w, ftask, "try later")["status"] == "failed"  # ~1 s backoff
    p = submit_one(c, t, id=ids[1])
    s = submit_one(c, t, id=ids[2], delay_ms=300)
    for tid, before in ((f, "failed"), (p, "pending"), (s, "pending")):
        assert query_one(c, tid)["status"] == before
        assert body(cancel(c, tid)) == {"id": tid, "status": "cancelled"}
        assert query_one(c, tid)["status"] == "cancelled"

    running, done = submit(c, {"type": r, "id": ids[3]}, {"type": r})
    got = claim_until(c, w, [r], 2, timeout=5)
    got.sort(key=lambda g: [running, done].index(g[0]["id"]))
    assert complete(c, w, got[1][0])["status"] == "completed"
    for tid in (done, p):  # completed, already cancelled
        with pytest.raises(InvalidState):
            cancel(c, tid)
    assert query_one(c, done)["status"] == "completed"
    with pytest.raises(NotFound):
        cancel(c, new_id())
    with pytest.raises(BadRequest):
        cancel(c, "not-a-uuid")
    # In progress (extension cancel_running): cancelled at once; the late RESULT of that attempt
    # is answered with the final status and changes nothing.
    assert body(cancel(c, running)) == {"id": running, "status": "cancelled"}
    assert complete(c, w, got[0][0]) == {"id": running, "status": "cancelled"}
    assert query_one(c, running)["status"] == "cancelled"

    # Never claimed: not the pending one, not the scheduled one once due (300 ms),
    # not the failed one once its backoff (<= 1.2 s) has passed.
    assert claim(c, w, max=3, wait_ms=1300, types=[t]) == []
    assert [x["status"] for x in query(c, [f, p, s])] == ["cancelled"] * 3


# -- dependencies -----------------------------------------------------------------------------


def test_dependencies(srv, connect):
    c = connect(srv)
    n = srv.nshards
    pt, ct, dt, w = uid("p"), uid("c"), uid("d"), uid("w")
    p1, p2, child = id_in_shard(0, n), id_in_shard(n - 1, n), id_in_shard(1 % n, n)
    submit(c, {"type": pt, "id": p1}, {"type": pt, "id": p2})
    assert submit(c, {"type": ct, "id": child, "depends_on": [p1, p2]}) == [child]
    assert check_task(query_one(c, child))["depends_on"] == [p1, p2]
    assert claim(c, w, types=[ct]) == []
    parents = claim_until(c, w, [pt], 2)  # two shards: maybe in two answers
    parents.sort(key=lambda g: [p1, p2].index(g[0]["id"]))
    assert [x["id"] for x, _ in parents] == [p1, p2]
    complete_all(c, w, parents[:1])
    assert claim(c, w, types=[ct]) == [], "claimable before every dependency completed"
    complete_all(c, w, parents[1:])
    got = claim_until(c, w, [ct], 1, timeout=3)
    assert got[0][0]["id"] == child
    complete_all(c, w, got)

    # A dependency on an earlier task of the same batch, by client id.
    a = id_in_shard(1 % n, n)
    ids = submit(c, {"type": pt, "id": a}, {"type": ct, "depends_on": [a]})
    assert ids[0] == a
    assert claim(c, w, types=[ct]) == []
    parent = claim(c, w, types=[pt])
    assert parent[0][0]["id"] == a
    complete_all(c, w, parent)
    got = claim_until(c, w, [ct], 1, timeout=3)
    assert got[0][0]["id"] == ids[1]
    complete_all(c, w, got)

    # A parent that ends dead_letter takes its dependents (transitively) with it.
    dp = submit_one(c, dt, id=id_in_shard(0, n))
    dc = submit_one(c, ct, id=id_in_shard(n - 1, n), depends_on=[dp])
    dg = submit_one(c, ct, depends_on=[dc])
    dtask = claim(c, w, types=[dt])[0][0]
    assert fail(c, w, dtask, "fatal", retry=False)["status"] == "dead_letter"
    qc = poll_task(c, dc, lambda x: x["status"] == "dead_letter", timeout=2)
    assert qc["error"] == f"dependency failed: {dp}"
    qg = poll_task(c, dg, lambda x: x["status"] == "dead_letter", timeout=2)
    assert qg["error"] == f"dependency failed: {dc}"
    # ... at once when that is already so at submit time; a cancelled one too.
    late = submit_one(c, ct, depends_on=[dp])
    q = query_one(c, late)
    assert (q["status"], q["error"]) == ("dead_letter", f"dependency failed: {dp}")
    cp = submit_one(c, dt, delay_ms=60_000)
    cc = submit_one(c, ct, depends_on=[cp])
    cancel(c, cp)
    q = poll_task(c, cc, lambda x: x["status"] == "dead_letter", timeout=2)
    assert q["error"] == f"dependency failed: {cp}"
    assert claim(c, w, max=10, types=[ct]) == []

    # Unknown dependency: NotFound for the whole batch, nothing stored.
    before = total_tasks(c)
    x = new_id()
    with pytest.raises(NotFound):
        submit(c, {"type": ct, "id": x}, {"type": ct, "depends_on": [new_id()]})
    assert query(c, [x]) == [None]
    assert total_tasks(c) == before
    assert list_tasks(c, "pending", type=ct)["tasks"] == []
    # A cycle inside a batch, or a task depending on itself: BadRequest, nothing stored.
    a, b = new_id(), new_id()
    with pytest.raises(BadRequest):
        submit(c, {"type": ct, "id": a, "depends_on": [b]}, {"type": ct, "id": b, "depends_on": [a]})
    with pytest.raises(BadRequest):
        submit(c, {"type": ct, "id": a, "depends_on": [a]})
    assert query(c, [a, b]) == [None, None]
    assert total_tasks(c) == before


# -- idempotent SUBMIT ---------------------------------------------------------------------------


def test_idempotent_submit_with_client_id(srv, connect):
    c, c2 = connect(srv), connect(srv)
    n = srv.nshards
    t, w = uid(), uid("w")
    cid = id_in_shard(1 % n, n)
    before = total_tasks(c)
    assert submit(c, {"type": t, "id": cid}, payloads=[b"first"]) == [cid]
    assert total_tasks(c) == before + 1
    # Again (from another connection, with other fields): the same id, nothing new.
    assert submit(c2, {"type": uid(), "id": cid, "priority": 250}, payloads=[b"second!"]) == [cid]
    assert total_tasks(c) == before + 1
    q = query_one(c, cid)
    assert (q["type"], q["payload_len"], q["priority"]) == (t, 5, 100)
    # An existing id in a batch with new tasks: only the new ones are stored.
    fresh = id_in_shard(0, n)
    ids = submit(c, {"type": t, "id": cid}, {"type": t, "id": fresh}, {"type": t},
                 payloads=[b"x", b"y", b"z"])
    assert ids[:2] == [cid, fresh] and is_canonical_id(ids[2]) and ids[2] not in (cid, fresh)
    assert total_tasks(c) == before + 3

    dup = new_id()
    with pytest.raises(BadRequest):
        submit(c, {"type": t, "id": dup}, {"type": t, "id": dup})
    upper = new_id()
    while upper.upper() == upper:
        upper = new_id()
    with pytest.raises(BadRequest):
        submit(c, {"type": t, "id": upper.upper()})
    with pytest.raises(BadRequest):
        submit(c, {"type": t, "id": upper.replace("-", "")})
    assert query(c, [dup, upper]) == [None, None]
    assert total_tasks(c) == before + 3

    got = claim_until(c, w, [t], 3, timeout=5)  # with two shards, maybe in two answers
    assert {x["id"]: p for x, p in got} == {ids[0]: b"first", ids[1]: b"y", ids[2]: b"z"}
    complete_all(c, w, got)


# -- backpressure -------------------------------------------------------------------------------


def test_backpressure_queue_full(server_factory, connect):
    server = server_factory("--shards", "1", "--queue-depth-threshold", "10")
    c = connect(server)
    t, w = uid(), uid("w")
    ids = submit(c, *[{"type": t}] * 6) + submit(c, *[{"type": t}] * 4)
    assert len(set(ids)) == 10
    for size in (1, 3):
        err = nack(c, MsgType.SUBMIT, {"tasks": [{"type": t, "payload_len": 0}] * size})
        assert err["code"] == "QueueFull", err
        assert type(err["retry_after_ms"]) is int and err["retry_after_ms"] > 0, err
    with pytest.raises(QueueFull):
        submit(c, {"type": t, "id": new_id()})
    totals = stats(c)["totals"]
    assert (totals["pending"], sum(totals[s] for s in STATUSES)) == (10, 10)

    got = claim(c, w, max=3, types=[t])
    complete_all(c, w, got)
    more = submit(c, *[{"type": t}] * 3)
    assert len(more) == 3
    assert nack(c, MsgType.SUBMIT, {"tasks": [{"type": t, "payload_len": 0}]})["code"] == "QueueFull"
    # failed tasks (waiting for a retry) count toward the depth too.
    task = claim(c, w, types=[t])[0][0]
    assert fail(c, w, task, "again")["status"] == "failed"
    assert nack(c, MsgType.SUBMIT, {"tasks": [{"type": t, "payload_len": 0}]})["code"] == "QueueFull"
    totals = stats(c)["totals"]
    assert (totals["pending"], totals["failed"], totals["completed"]) == (9, 1, 3)


# -- LIST_TASKS --------------------------------------------------------------------------------


def test_list_tasks_cursor_walk_and_filters(srv, connect):
    c = connect(srv)
    t, u, w = uid(), uid(), uid("w")
    prios = [50, 150, 250, 100, 0] * 4
    ids = submit(c, *[{"type": t, "priority": p, "id": i}
                      for p, i in zip(prios, spread_ids(20, srv.nshards))])
    prio_of = dict(zip(ids, prios))
    u_ids = submit(c, *[{"type": u}] * 5)

    tasks, pages = walk(c, "pending", type=t, limit=3)
    seen = [x["id"] for x in tasks]
    assert len(seen) == len(set(seen)) == 20 and set(seen) == set(ids)
    assert pages >= 7
    for x in tasks:
        check_task(x)
        assert x["type"] == t and x["status"] == "pending"

    for lo, hi in ((100, 199), (200, 255), (0, 99)):
        tasks, _ = walk(c, "pending", type=t, min_priority=lo, max_priority=hi, limit=3)
        seen = [x["id"] for x in tasks]
        assert len(seen) == len(set(seen))
        assert set(seen) == {i for i in ids if lo <= prio_of[i] <= hi}
    tasks, _ = walk(c, "pending", type=u, limit=2)
    assert sorted(x["id"] for x in tasks) == sorted(u_ids)
    # Without a type: every pending task once, ours among them.
    tasks, _ = walk(c, "pending", limit=50)
    seen = [x["id"] for x in tasks]
    assert len(seen) == len(set(seen))
    assert set(ids) | set(u_ids) <= set(seen)

    # Status filter.
    done = claim(c, w, max=4, types=[t])
    complete_all(c, w, done)
    tasks, _ = walk(c, "completed", type=t, limit=3)
    assert sorted(x["id"] for x in tasks) == sorted(x["id"] for x, _ in done)
    assert all(x["status"] == "completed" for x in tasks)
    running = claim(c, w, max=2, types=[t])
    tasks, _ = walk(c, "in_progress", type=t, limit=3)
    assert sorted(x["id"] for x in tasks) == sorted(x["id"] for x, _ in running)
    assert all(x["worker_id"] == w for x in tasks)
    complete_all(c, w, running)
    tasks, _ = walk(c, "pending", type=t, limit=3)
    assert len(tasks) == 14
    assert walk(c, "dead_letter", type=t, limit=3)[0] == []

    with pytest.raises(BadRequest):
        list_tasks(c, "nope")
    with pytest.raises(BadRequest):
        list_tasks(c, "pending", min_priority=200, max_priority=100)
    with pytest.raises(BadRequest):
        list_tasks(c, "pending", cursor="zz-not-a-cursor")


# -- GET_STATS ----------------------------------------------------------------------------------


def test_get_stats(server_factory, connect):
    server = server_factory("--shards", "2", env={"SHARDQ_BROKER__RETRY_BACKOFF_BASE_MS": "60000"})
    c = connect(server)
    s0 = stats(c)
    assert all(s0["totals"][k] == 0 for k in (*STATUSES, "scheduled"))
    assert s0["totals"]["by_tier"] == {"high": 0, "normal": 0, "low": 0}
    assert s0["workers"] == 0 and s0["connections"] == 1
    assert type(s0["uptime_s"]) is int and s0["uptime_s"] >= 0

    w = "stats-worker"
    for kind in ("done", "fail", "dead", "run", "gone"):
        submit_one(c, kind)
    submit_one(c, "back", priority=210)
    submit(c, {"type": "pend", "priority": 250}, {"type": "pend", "priority": 150},
           {"type": "pend", "priority": 50}, {"type": "pend", "priority": 100, "delay_ms": 600_000})
    complete_all(c, w, claim(c, w, types=["done"]))
    assert fail(c, w, claim(c, w, types=["fail"])[0][0], "x")["status"] == "failed"
    assert fail(c, w, claim(c, w, types=["dead"])[0][0], "x", retry=False)["status"] == "dead_letter"
    running = claim(c, w, types=["run"])[0][0]
    assert release(c, w, claim(c, w, types=["back"])[0][0])["status"] == "pending"
    submit_one(c, "pend", priority=120, depends_on=[running["id"]])  # pending, waiting
    [gone] = [x["id"] for x in list_tasks(c, "pending", type="gone")["tasks"]]
    cancel(c, gone)
    c2 = connect(server)
    ping(c2)

    expected = {"pending": 6, "in_progress": 1, "completed": 1, "failed": 1, "dead_letter": 1,
                "cancelled": 1, "scheduled": 1, "by_tier": {"high": 2, "normal": 3, "low": 1}}
    s = poll(lambda: (lambda st: st if st["totals"] == expected and st["connections"] == 2
                      and st["workers"] == 1 else None)(stats(c)),
             timeout=3, what=f"stats == {expected}")
    shards = s["shards"]
    assert sorted(x["shard"] for x in shards) == [0, 1]
    for status in STATUSES:
        assert sum(x[status] for x in shards) == expected[status], status
    for x in shards:
        assert type(x["connections"]) is int and x["connections"] >= 0
        assert type(x["rss"]) is int and x["rss"] > 0
    assert type(s["uptime_s"]) is int and s["uptime_s"] >= s0["uptime_s"]


# -- pipelining and waiting CLAIMs ------------------------------------------------------------


def test_pipelining_out_of_order_answers(srv, connect):
    c = connect(srv)
    t, nothing, w = uid(), uid("none"), uid("w")
    frames = [encode(MsgType.CLAIM, {"rid": 1, "worker_id": w, "wait_ms": 2000, "types": [nothing]})]
    kinds: dict[int, tuple[str, int]] = {1: ("claim", 0)}
    for rid in range(2, 201):
        if rid % 5 == 0:
            frames.append(encode(MsgType.PING, {"rid": rid}))
            kinds[rid] = ("ping", 0)
        elif rid % 7 == 0:
            frames.append(encode(MsgType.GET_STATS, {"rid": rid}))
            kinds[rid] = ("stats", 0)
        else:
            n = rid % 4 + 1
            payload = bytes([rid % 256]) * rid
            frames.append(encode(MsgType.SUBMIT, {"rid": rid, "tasks": [
                {"type": t, "payload_len": rid} for _ in range(n)]}, payload * n))
            kinds[rid] = ("submit", n)

    sent = time.monotonic()
    c.send_raw(b"".join(frames))
    arrivals = []
    for _ in range(200):
        msg = c.receive()
        arrivals.append((msg, time.monotonic() - sent))

    rids = [m.rid for m, _ in arrivals]
    assert sorted(rids) == list(range(1, 201)), "every rid answered exactly once"
    assert all(m.type == MsgType.ACK for m, _ in arrivals), [m.header for m, _ in arrivals
                                                             if m.type != MsgType.ACK][:3]
    last, claim_at = arrivals[-1]
    assert last.rid == 1, "the waiting CLAIM held back later answers"
    assert last.header["tasks"] == [] and claim_at >= 1.9
    assert max(at for _, at in arrivals[:-1]) < 1.5

    owner: dict[str, int] = {}
    for msg, _ in arrivals:
        kind, n = kinds[msg.rid]
        if kind == "ping":
            assert msg.header == {"rid": msg.rid}
        elif kind == "stats":
            assert "totals" in msg.header and "workers" in msg.header
        elif kind == "submit":
            assert len(msg.header["ids"]) == n, (msg.rid, msg.header)
            for tid in msg.header["ids"]:
                owner[tid] = msg.rid
    assert len(owner) == sum(n for k, n in kinds.values() if k == "submit")
    # Matched by rid: each id's task has the payload length its request gave.
    all_ids = list(owner)
    for i in range(0, len(all_ids), 500):
        chunk = all_ids[i:i + 500]
        for tid, task in zip(chunk, query(c, chunk)):
            assert task["type"] == t and task["payload_len"] == owner[tid]
    ping(c)  # the connection is still in step


def test_waiting_claim_woken_by_other_connection(srv, connect, request):
    waiter, submitter = connect(srv), connect(srv)
    t, other, w = uid(), uid(), uid("w")
    crid = waiter.send(MsgType.CLAIM, {"worker_id": w, "wait_ms": 5000, "types": [t]})
    # A later request on the same connection is answered while the CLAIM waits.
    prid = waiter.send(MsgType.PING, {})
    assert waiter.wait_for(prid).header == {"rid": prid}

    submit_one(submitter, other, b"not for you")
    readable, _, _ = select.select([waiter.sock], [], [], 0.3)
    assert not readable and not waiter._answers, "a non-matching task woke the waiting CLAIM"

    started = time.monotonic()
    tid = submit_one(submitter, t, b"wake up")
    msg = waiter.wait_for(crid)
    latency = time.monotonic() - started
    request.node.user_properties.append(("claim_wake_ms", round(latency * 1000, 1)))
    print(f"claim wake latency: {latency * 1000:.1f} ms")
    assert msg.type == MsgType.ACK
    [(task, payload)] = split_tasks(msg, "payload_len")
    assert task["id"] == tid and payload == b"wake up" and task["worker_id"] == w
    assert latency < 1.0, f"woken after {latency * 1000:.0f} ms (contract: 100 ms)"
    assert complete(waiter, w, task)["status"] == "completed"
    assert query_one(submitter, tid)["status"] == "completed"


# -- two shards --------------------------------------------------------------------------------


def test_two_shards_partitions_and_cross_shard_claims(srv2, connect):
    conns = [connect(srv2) for _ in range(4)]
    t, w = uid(), uid("w")
    assert {hello(c)["shard"] for c in conns} == {0, 1}
    ids: list[str] = []
    for i, c in enumerate(conns):
        ids += submit(c, *[{"type": t}] * 3, payloads=[f"{i}-{k}".encode() for k in range(3)])
    tasks = query(conns[0], ids)
    assert {x["shard"] for x in tasks} == {0, 1}, "every submit landed in one partition"
    assert all(x["shard"] in (0, 1) for x in tasks)
    # Client ids of either partition.
    for shard in (0, 1):
        cid = id_in_shard(shard, 2)
        assert submit(conns[1], {"type": uid(), "id": cid}) == [cid]
        assert query_one(conns[2], cid)["shard"] in (0, 1)

    # One worker connection drains both shards (cross-shard claims), FIFO within each shard.
    got = claim_until(conns[0], w, [t], 12, timeout=5)
    assert sorted(x["id"] for x, _ in got) == sorted(ids)
    payload_of = dict(zip(ids, [f"{i}-{k}".encode() for i in range(4) for k in range(3)]))
    assert all(p == payload_of[x["id"]] for x, p in got)
    assert {x["shard"] for x, _ in got} == {0, 1}
    for shard in (0, 1):
        owner = {x["id"]: x["shard"] for x in tasks}
        assert [x["id"] for x, _ in got if x["shard"] == shard] == [i for i in ids if owner[i] == shard]
    # Results through another connection reach each task's owner.
    blobs = [x["id"].encode() for x, _ in got]
    out = result(conns[3], w, *[{"id": x["id"], "attempt": x["attempt"], "status": "completed",
                                 "result_len": len(b)} for (x, _), b in zip(got, blobs)], blobs=blobs)
    assert [r["status"] for r in out] == ["completed"] * 12
    rows = query_results(conns[1], ids)
    assert [r for _, r in rows] == [i.encode() for i in ids]
    st = stats(conns[2])
    assert len(st["shards"]) == 2
    assert sum(x["completed"] for x in st["shards"]) == st["totals"]["completed"] >= 12
