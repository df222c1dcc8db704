"""Task options end to end on a real 3-shard `shardq serve`: expiry (pending, delayed, retrying,
dependency-blocked), unique keys (across shards, after completion with and without a window,
across kill -9 of the key's owner shard), dependency results (same shard, cross-shard, caps, in
the bundled worker's ctx) and bad input. One server for the module; each test uses its own types."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
from test_cli import cli
from wire import id_in_shard, uid

import shardq
from shardq.client.models import Job
from shardq.errors import BadRequest
from shardq.protocol.frames import MsgType
from shardq.protocol.task_options import DEP_RESULT_MAX, unique_owner
from shardq.testing import ServerProcess

HERE = Path(__file__).resolve().parent
SHARDS = 3


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = ServerProcess(str(tmp_path_factory.mktemp("taskopts") / "data"),
                      ["--shards", str(SHARDS), "--lease-timeout-ms", "3000", "--heartbeat-interval-ms", "500"],
                      env={"SHARDQ_BROKER__RETRY_BACKOFF_BASE_MS": "20000",
                           "SHARDQ_BROKER__RETRY_BACKOFF_MAX_MS": "20000"})
    s.start()
    yield s
    s.kill()


@pytest.fixture
def client(srv):
    with shardq.Client(srv.url) as c:
        yield c


def on_shard(srv, shard: int) -> shardq.Client:
    return shardq.Client(srv.url, shard=shard, spread=False)


def wait_status(client, tid: str, status: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        info = client.status(tid)
        if info is not None and info.status == status:
            return info
        assert time.monotonic() < deadline, f"{tid} is {info and info.status}, not {status}"
        time.sleep(0.02)


def shard_pid(client, shard: int) -> int:
    return next(r["pid"] for r in client.stats()["shards"] if r["shard"] == shard)


# -- expiry ------------------------------------------------------------------------------------

def test_pending_and_delayed_tasks_expire_without_a_claim(client):
    t = uid("exp")
    pending = client.submit(t, b"", ttl=0.3)
    delayed = client.submit(t, b"", delay=0.2, ttl=0.5)
    later = client.submit(t, b"", ttl=60)
    for tid in (pending, delayed):
        info = wait_status(client, tid, "dead_letter")
        assert info.error == "expired"
    assert client.status(later).status == "pending"
    assert sum(r["expired"] for r in client.stats()["shards"]) >= 2


def test_expired_task_is_not_claimed(client, srv):
    t = uid("exp")
    tid = client.submit(t, b"", expires_at=time.time() + 0.2)
    time.sleep(0.25)  # past its expiry: whichever sees it first (claim or timer) finishes it
    assert client.claim("w-exp", 5, types=[t]) == []
    assert wait_status(client, tid, "dead_letter").error == "expired"


def test_retrying_task_expires_during_its_backoff(client):
    t = uid("exp")
    tid = client.submit(t, b"", ttl=1.5, max_retries=3)
    (task,) = client.claim("w-exp", 1, wait=5, types=[t])
    assert task.id == tid
    client.report("w-exp", [({"id": tid, "attempt": task.attempt, "status": "failed", "error": "boom"}, b"")])
    assert client.status(tid).status == "failed"  # backoff 20 s: the expiry comes first
    assert wait_status(client, tid, "dead_letter").error == "expired"


def test_in_progress_task_runs_to_its_end(client):
    t = uid("exp")
    tid = client.submit(t, b"", ttl=0.3)
    (task,) = client.claim("w-exp", 1, wait=5, types=[t])
    time.sleep(0.4)
    assert client.status(tid).status == "in_progress"
    client.complete("w-exp", task, b"done")
    assert client.status(tid).status == "completed"


def test_dependency_blocked_task_expires_across_shards(srv):
    t = uid("exp")
    with on_shard(srv, 0) as c0, on_shard(srv, 1) as c1:
        parent = c0.submit(t + "-never", b"")  # nobody claims it
        child = c1.submit(t, b"", depends_on=[parent], ttl=0.3)
        grandchild = c0.submit(t, b"", depends_on=[child])
        assert wait_status(c1, child, "dead_letter").error == "expired"
        info = wait_status(c0, grandchild, "dead_letter")
        assert info.error == f"dependency failed: {child}"
        assert c0.status(parent).status == "pending"


# -- unique ------------------------------------------------------------------------------------

def test_unique_key_holds_across_shards(srv):
    t = uid("uniq")
    ids = []
    for shard in range(SHARDS):
        with on_shard(srv, shard) as c:
            got, dups = c.submit_many_detailed([Job(t, b"x", unique_key="order-1")])
            ids.append(got[0])
            assert dups == ([] if shard == 0 else [0])
    assert len(set(ids)) == 1
    owner = unique_owner(t, "order-1", SHARDS)
    with on_shard(srv, 0) as c:
        assert c.status(ids[0]).shard == owner
        # The same key in one batch, with a plain task between: one new task, one duplicate.
        got, dups = c.submit_many_detailed([Job(t, unique_key="k2"), Job(t), Job(t, unique_key="k2")])
        assert got[0] == got[2] != got[1] and dups == [2]


def test_unique_without_window_is_free_once_finished_and_with_window_holds(client):
    t = uid("uniq")
    first = client.submit(t, b"", unique_key="a")
    windowed = client.submit(t, b"", unique_key="b", unique_window=1.5)
    for _ in range(2):
        (task,) = client.claim("w-u", 1, wait=5, types=[t])
        client.complete("w-u", task, b"")
    assert client.submit(t, b"", unique_key="a") != first  # released at completion
    assert client.submit(t, b"", unique_key="b") == windowed  # still inside its window
    deadline = time.monotonic() + 10
    while client.submit(t, b"", unique_key="b") == windowed:
        assert time.monotonic() < deadline, "the window never ended"
        time.sleep(0.1)


def test_unique_key_holds_across_kill_9_of_its_owner(srv, client):
    t = uid("uniq")
    tid = client.submit(t, b"", unique_key="survivor")
    owner = unique_owner(t, "survivor", SHARDS)
    pid = shard_pid(client, owner)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:  # the supervisor restarts the shard; SUBMITs to it are Unavailable meanwhile
        try:
            again, dups = client.submit_many_detailed([Job(t, b"", unique_key="survivor")])
            break
        except shardq.errors.Unavailable:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert (again, dups) == ([tid], [0])
    assert shard_pid(client, owner) != pid


def test_http_submit_reports_duplicates(srv):
    t = uid("uniq")

    def post(body: dict) -> dict:
        req = urllib.request.Request(srv.http_url + "/api/v1/tasks", data=orjson.dumps(body),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return orjson.loads(resp.read())

    a = post({"type": t, "unique_key": "h"})
    b = post({"type": t, "unique_key": "h", "ttl_ms": 60_000})
    assert a.get("duplicate", False) is False and b == {"id": a["id"], "duplicate": True}


# -- dependency results ---------------------------------------------------------------------------

def _parents(srv, t: str, values: list[int], shards: list[int]) -> list[str]:
    ids = []
    for value, shard in zip(values, shards):
        with on_shard(srv, shard) as c:
            ids.append(c.submit(t + "-p", {"value": value}, id=id_in_shard(shard, SHARDS)))
    with shardq.Client(srv.url) as c:
        for _ in ids:
            (task,) = c.claim("w-dep", 1, wait=5, types=[t + "-p"])
            c.complete("w-dep", task, orjson.dumps({"value": task.json()["value"]}))
    return ids


def test_claim_carries_dependency_results_same_and_cross_shard(srv):
    t = uid("dep")
    parents = _parents(srv, t, [1, 2, 3], [0, 1, 2])
    with on_shard(srv, 0) as c0:
        child = c0.submit(t, b"", depends_on=parents, id=id_in_shard(0, SHARDS))
        plain = c0.claim("w-dep", 1, wait=5, types=[t])
        assert plain[0].id == child and plain[0].dependency_results is None  # not asked: not paid
        c0.report("w-dep", [({"id": child, "attempt": plain[0].attempt, "status": "released"}, b"")])
        (task,) = c0.claim("w-dep", 1, wait=5, types=[t], dependency_results=True)
    assert task.payload == b"" and task.dependency_results_omitted == []
    assert {k: orjson.loads(v)["value"] for k, v in task.dependency_results.items()} == dict(zip(parents, [1, 2, 3]))


def test_results_over_the_cap_are_omitted_and_fetched_on_demand(srv):
    t = uid("dep")
    with on_shard(srv, 1) as c1:
        big = c1.submit(t + "-p", b"", id=id_in_shard(1, SHARDS))
        small = c1.submit(t + "-p", b"", id=id_in_shard(2, SHARDS))
        for data in (b"x" * (DEP_RESULT_MAX + 1), b"tiny"):
            (task,) = c1.claim("w-dep", 1, wait=5, types=[t + "-p"])
            c1.complete("w-dep", task, data if task.id == big else b"tiny")
        child = c1.submit(t, b"payload", depends_on=[big, small])
        (task,) = c1.claim("w-dep", 1, wait=5, types=[t], dependency_results=True)
    assert task.id == child and task.payload == b"payload"
    assert task.dependency_results == {small: b"tiny"}
    assert task.dependency_results_omitted == [big]


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_bundled_worker_ctx_reads_dependency_results(srv, client, pool):
    t_join, t_lazy = "taskopts-join", "taskopts-join-lazy"
    parents = [client.submit("taskopts-parent", {"value": v}, id=id_in_shard(s, SHARDS))
               for v, s in ((10, 0), (20, 1), (30, 2))]
    joined = client.submit(t_join, b"", depends_on=parents)
    lazy = client.submit(t_lazy, b"", depends_on=parents)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.Popen([sys.executable, "-m", "shardq.worker", "taskopts_apps:app", "--server", srv.url,
                             "--concurrency", "2", "--pool", pool], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for tid in (joined, lazy):
            result = orjson.loads(client.wait(tid, timeout=30))
            assert result == {"sum": 60, "ids": sorted(parents)}
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_async_client_task_options(srv):
    async def go() -> None:
        t = uid("async")
        async with shardq.AsyncClient(srv.url) as c:
            ids, dups = await c.submit_many_detailed([Job(t, b"", unique_key="a", ttl=60),
                                                      Job(t, b"", unique_key="a")])
            assert ids[0] == ids[1] and dups == [1]
            parent = await c.submit(t + "-p", b"")
            (task,) = await c.claim("w-async", 1, wait=5, types=[t + "-p"])
            await c.complete("w-async", task, b"42")
            child = await c.submit(t + "-c", b"", depends_on=[parent])
            (task,) = await c.claim("w-async", 1, wait=5, types=[t + "-c"], dependency_results=True)
            assert task.id == child and task.dependency_results == {parent: b"42"}

    asyncio.run(go())


# -- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("task,message", [
    ({"ttl_ms": 1000, "expires_at_ms": 2**40}, "tasks[0]: give expires_at_ms or ttl_ms, not both"),
    ({"expires_at_ms": 1000}, "tasks[0].expires_at_ms: 1000 is not in the future"),
    ({"ttl_ms": -1}, "tasks[0].ttl_ms: must be an integer"),
    ({"ttl_ms": 100, "delay_ms": 500}, "before it is due"),
    ({"unique_key": 7}, "tasks[0].unique_key: must be a non-empty string"),
    ({"unique_window_ms": 10}, "tasks[0].unique_window_ms: only with unique_key"),
    ({"unique_key": "k", "unique_window_ms": -5}, "tasks[0].unique_window_ms: must be an integer"),
])
def test_bad_task_options_are_refused_naming_the_field(srv, task, message):
    with srv.connect() as conn:
        conn.call(MsgType.HELLO, {"protocol": 1})
        with pytest.raises(BadRequest) as err:
            conn.call(MsgType.SUBMIT, {"tasks": [{"type": uid("bad"), "payload_len": 0, **task}]})
        assert message in str(err.value)
        assert conn.call(MsgType.PING, {}).type == MsgType.ACK  # the connection goes on


def test_unique_key_with_an_id_outside_the_owners_partition_is_refused(srv):
    t = uid("bad")
    owner = unique_owner(t, "k", SHARDS)
    with srv.connect() as conn:
        conn.call(MsgType.HELLO, {"protocol": 1})
        with pytest.raises(BadRequest, match=rf"tasks\[0\]\.id: .* made by shard {owner}"):
            conn.call(MsgType.SUBMIT, {"tasks": [{"type": t, "payload_len": 0, "unique_key": "k",
                                                  "id": id_in_shard((owner + 1) % SHARDS, SHARDS)}]})
        with pytest.raises(BadRequest, match="dependency_results: must be true or false"):
            conn.call(MsgType.CLAIM, {"worker_id": "w", "dependency_results": "yes"})


def test_hello_announces_the_features(srv):
    with srv.connect() as conn:
        features = conn.call(MsgType.HELLO, {"protocol": 1}).header["features"]
    assert {"expiry", "unique", "dependency_results"} <= set(features)


# -- the CLI ----------------------------------------------------------------------------------------

def test_cli_submit_with_task_options(srv, client):
    t = uid("cli")
    first = cli("submit", t, "--unique-key", "nightly", "--ttl", "60", "--json", url=srv.url)
    assert first.returncode == 0, first.stderr
    again = cli("submit", t, "--unique-key", "nightly", "--json", url=srv.url)
    a, b = orjson.loads(first.stdout), orjson.loads(again.stdout)
    assert a["duplicate"] is False and b == {"id": a["id"], "duplicate": True}
    human = cli("submit", t, "--unique-key", "nightly", url=srv.url)
    assert human.stdout.strip() == a["id"] and "already holds unique key 'nightly'" in human.stderr
    expiring = cli("submit", t, "--expires-at", "2100-01-01T00:00:00+00:00", "--json", url=srv.url)
    assert orjson.loads(expiring.stdout) == {"id": orjson.loads(expiring.stdout)["id"]}
    bad = cli("submit", t, "--unique-window", "5", url=srv.url)
    assert bad.returncode != 0 and "--unique-window needs --unique-key" in bad.stderr
    both = cli("submit", t, "--ttl", "5", "--expires-at", "2100-01-01T00:00:00", url=srv.url)
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_task_object_shows_its_options(client, srv):
    t = uid("show")
    tid = client.submit(t, b"", ttl=60, unique_key="shown", unique_window=5)
    info = client.status(tid)
    assert info.unique_key == "shown" and info.expires_at_ms > time.time() * 1000
    out = orjson.loads(cli("status", tid, "--json", url=srv.url).stdout)
    row = out[0] if isinstance(out, list) else out
    assert row["unique_key"] == "shown" and "dependency_results" not in row
    plain = orjson.loads(cli("status", client.submit(t, b""), "--json", url=srv.url).stdout)
    row = plain[0] if isinstance(plain, list) else plain
    assert "unique_key" not in row and "expires_at_ms" not in row


def test_http_claim_carries_dependency_results(srv, client):
    t = uid("httpdep")
    parent = client.submit(t + "-p", b"", id=id_in_shard(1, SHARDS))
    (task,) = client.claim("w-h", 1, wait=5, types=[t + "-p"])
    client.complete("w-h", task, b'{"n": 5}')
    child = client.submit(t, b"", depends_on=[parent], id=id_in_shard(2, SHARDS))
    req = urllib.request.Request(srv.http_url + "/api/v1/workers/w-h/claim", method="POST",
                                 data=orjson.dumps({"types": [t], "wait_ms": 5000, "dependency_results": True}),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        (got,) = orjson.loads(resp.read())["tasks"]
    assert got["id"] == child and got["dependency_results_omitted"] == []
    assert got["dependency_results"] == [{"id": parent, "result_len": 8, "result": {"n": 5}}]
