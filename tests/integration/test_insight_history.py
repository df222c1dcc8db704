"""Task history, explain and `shardq result` against a real `shardq serve --shards 2`.

One server for the module (short leases so that reclaims happen in about a second, short retry
backoff); each test isolates itself by task type and worker id. The kill -9 test runs last and
restarts that server.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from wire import hello, nack

import shardq
from shardq import keys as K
from shardq.errors import NotFound
from shardq.protocol.frames import MsgType
from shardq.task import id_to_str, new_ids
from shardq.testing import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
SHARDS = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(str(tmp_path_factory.mktemp("data")),
                        ["--shards", str(SHARDS), "--lease-timeout-ms", "1000", "--heartbeat-interval-ms", "500"],
                        env={"SHARDQ_BROKER__RETRY_BACKOFF_BASE_MS": "200", "PYTHONPATH": str(ROOT)})
    srv.start()
    yield srv
    srv.kill()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[shardq.Client]:
    c = shardq.Client(server.url, timeout=10)
    yield c
    c.close()


def kind() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


def on_shard(shard: int) -> str:
    return id_to_str(new_ids(1, shard, SHARDS)[0])


def until(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def claim(client: shardq.Client, worker: str, task_type: str) -> Any:
    tasks = client.claim(worker, wait=5, types=[task_type])
    assert len(tasks) == 1, tasks
    return tasks[0]


def events(client: shardq.Client, task_id: str) -> list[dict[str, Any]]:
    return client.history(task_id)["history"]["events"]


def names(evs: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in evs]


def test_history_across_retries_and_a_reclaim(client: shardq.Client) -> None:
    t = kind()
    tid = client.submit(t, b"x", max_retries=3)
    client.register_worker(f"{t}-a", hostname="host-a", types=[t])
    task = claim(client, f"{t}-a", t)
    client.fail(f"{t}-a", task, "connection refused by 10.0.0.7")
    task = until(lambda: client.claim(f"{t}-a", wait=1, types=[t]), "the retry")[0]
    assert task.attempt == 2
    # Attempt 2 is abandoned: no heartbeat, its lease (1 s) runs out and it is reclaimed.
    until(lambda: client.status(tid).status == "pending" and client.status(tid).retry_count == 2,
          "the reclaim")
    task = claim(client, f"{t}-b", t)
    client.heartbeat(f"{t}-b", active=[tid])
    client.heartbeat(f"{t}-b", active=[tid])
    client.complete(f"{t}-b", task, b"done")
    evs = events(client, tid)
    assert names(evs) == ["submitted", "claimed", "failed", "retry_scheduled", "claimed", "reclaimed",
                          "claimed", "heartbeats", "completed"]
    assert evs[1]["worker_id"] == f"{t}-a" and evs[1]["hostname"] == "host-a" and evs[1]["attempt"] == 1
    assert evs[2]["error"] == "connection refused by 10.0.0.7"
    assert evs[3]["due_ms"] >= evs[3]["t_ms"] + 100
    assert evs[5]["reason"] in ("lease expired", "worker lost") and evs[5]["attempt"] == 2
    assert evs[6]["worker_id"] == f"{t}-b" and evs[7]["count"] == 2 and evs[8]["attempt"] == 3
    assert all(a["t_ms"] <= b["t_ms"] for a, b in zip(evs, evs[1:]) if b["event"] != "heartbeats")


def test_cross_shard_dependency_history_and_explain(client: shardq.Client) -> None:
    t = kind()
    parent = client.submit(f"{t}-p", b"p", id=on_shard(0))
    child = client.submit(t, b"c", id=on_shard(1), depends_on=[parent])
    why = client.explain(child)
    assert why["reason"] == "waiting_for_dependency" and why["shard"] == 1
    dep = why["details"]["dependency"]
    assert dep["id"] == parent and dep["shard"] == 0 and dep["status"] == "pending"
    assert dep["reason"] in ("next", "no_worker") and parent in why["message"]
    task = claim(client, f"{t}-w", f"{t}-p")
    running = client.explain(child)["details"]["dependency"]
    assert running["reason"] == "running" and running["details"]["worker_id"] == f"{t}-w"
    client.complete(f"{t}-w", task)
    evs = until(lambda: [e for e in events(client, child) if e["event"] == "dependencies_resolved"],
                "the child's dependency to resolve")
    assert evs[0]["last"] == parent
    assert client.explain(child)["reason"] in ("next", "no_worker")


def test_explain_each_situation(client: shardq.Client) -> None:
    t = kind()
    delayed = client.submit(t, b"", delay=60)
    why = client.explain(delayed)
    assert why["reason"] == "delayed" and why["message"].startswith("delayed until ")
    ids = client.submit_many([shardq.Job(t, b"") for _ in range(3)])  # one batch: one shard
    queued = client.explain(ids[2])
    assert queued["reason"] in ("queued", "no_worker") and queued["details"]["ahead"] == 2
    # A worker that runs other types only: once the broker has forgotten the workers of earlier
    # tests (silent for 2 x heartbeat), nobody can run this type.
    client.register_worker(f"{t}-other", types=["something-else"])
    nobody = until(lambda: (w := client.explain(ids[0]))["reason"] == "no_worker" and w, "no_worker")
    assert nobody["details"]["capable_workers"] == 0 and "no live worker" in nobody["message"]
    task = claim(client, f"{t}-w", t)
    client.heartbeat(f"{t}-w", active=[task.id])
    running = client.explain(task.id)
    assert running["reason"] == "running" and running["details"]["attempt"] == 1
    assert running["details"]["last_heartbeat_ms"] is not None
    assert f"{t}-w" in running["message"]
    queued = client.explain(ids[2])
    assert queued["reason"] == "queued" and queued["details"]["claims_last_minute"] >= 1
    assert "about" in queued["message"]
    client.fail(f"{t}-w", task, "flaky")
    backoff = client.explain(task.id)
    assert backoff["reason"] == "retry_backoff" and "flaky" in backoff["message"]
    client.cancel(ids[2])
    assert client.explain(ids[2])["reason"] == "cancelled"
    second = claim(client, f"{t}-w", t)
    client.complete(f"{t}-w", second, b"ok")
    assert client.explain(second.id)["reason"] == "completed"
    doomed = client.submit(f"{t}-d", b"", max_retries=0)
    child = client.submit(f"{t}-c", b"", depends_on=[doomed])
    last = claim(client, f"{t}-w", f"{t}-d")
    client.fail(f"{t}-w", last, "invalid address")
    dead = client.explain(doomed)
    assert dead["reason"] == "dead_lettered" and "invalid address" in dead["message"]
    assert dead["details"]["attempts"] == 1
    # (the child may be on the other shard, which hears of the failure a moment later)
    until(lambda: client.explain(child)["reason"] == "dependency_failed", "the cascade")
    with pytest.raises(NotFound):
        client.explain(str(uuid.uuid4()))


def cli(server: ServerProcess, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SHARDQ_URL": server.url}
    return subprocess.run([sys.executable, "-m", "shardq", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)


def test_cli_result_history_and_explain(server: ServerProcess, client: shardq.Client) -> None:
    t = kind()
    tid = client.submit(t, b"")
    task = claim(client, f"{t}-w", t)

    def finish_soon() -> None:
        time.sleep(0.3)
        client.complete(f"{t}-w", task, {"sent": True, "n": 2})

    worker = threading.Thread(target=finish_soon)
    worker.start()
    out = cli(server, "result", tid, "--wait", "20", "--json")
    worker.join()
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"sent": True, "n": 2}
    assert "\n  " in out.stdout  # pretty
    raw = cli(server, "result", tid)
    assert raw.returncode == 0 and raw.stdout == '{"sent":true,"n":2}'
    hist = cli(server, "history", tid)
    assert hist.returncode == 0, hist.stderr
    assert "submitted" in hist.stdout and f"claimed by {t}-w" in hist.stdout and "completed" in hist.stdout
    pending = client.submit(t, b"", delay=60)
    assert cli(server, "result", pending).returncode == 1
    waited = cli(server, "result", pending, "--wait", "0.5")
    assert waited.returncode == 5 and "still pending" in waited.stderr
    explained = cli(server, "explain", pending, "--json")
    assert explained.returncode == 0 and json.loads(explained.stdout)["reason"] == "delayed"
    client.cancel(pending)
    cancelled = cli(server, "result", pending, "--wait")
    assert cancelled.returncode == 4 and "cancelled" in cancelled.stderr
    dead = client.submit(t, b"", max_retries=0)
    client.fail(f"{t}-w", claim(client, f"{t}-w", t), "no such mailbox")
    failed = cli(server, "result", dead, "--wait", "5")
    assert failed.returncode == 3 and "no such mailbox" in failed.stderr


def test_http_history_and_explain(server: ServerProcess, client: shardq.Client) -> None:
    t = kind()
    tid = client.submit(t, b"", delay=30)
    base = f"{server.http_url}/api/v1/tasks/{tid}"
    with urllib.request.urlopen(base + "/history", timeout=10) as r:
        body = json.loads(r.read())
    assert body["id"] == tid and body["history"]["events"][0]["event"] == "submitted"
    with urllib.request.urlopen(base + "/explain", timeout=10) as r:
        body = json.loads(r.read())
    assert body["reason"] == "delayed" and body["details"]["due_ms"] > 0
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{server.http_url}/api/v1/tasks/{uuid.uuid4()}/explain", timeout=10)
    assert err.value.code == 404


def test_bad_requests_name_the_field_and_keep_the_connection(server: ServerProcess) -> None:
    conn = server.connect(timeout=10)
    try:
        assert "features" in hello(conn) and {"history", "explain"} <= set(hello(conn)["features"])
        err = nack(conn, MsgType.EXPLAIN, {"id": "not-an-id"})
        assert err["code"] == "BadRequest" and err["message"].startswith("id:")
        err = nack(conn, MsgType.QUERY_STATUS, {"ids": [], "with_history": "yes"})
        assert err["code"] == "BadRequest" and err["message"].startswith("with_history:")
        assert nack(conn, MsgType.EXPLAIN, {"id": str(uuid.uuid4())})["code"] == "NotFound"
        assert conn.call(MsgType.PING, {}).type == MsgType.ACK  # the connection is still good
    finally:
        conn.close()


def test_history_survives_kill_9(server: ServerProcess, client: shardq.Client) -> None:
    t = kind()
    done = client.submit(t, b"")
    client.complete(f"{t}-w", claim(client, f"{t}-w", t), b"ok")
    running_id = client.submit(t, b"")
    running = claim(client, f"{t}-w", t)
    before = events(client, done)
    server.kill()
    server.restart()
    with shardq.Client(server.url, timeout=10) as again:
        assert until(lambda: _history_or_none(again, done), "the restarted server") == before
        # The lease survived the restart: the same worker completes the same attempt.
        assert again.complete(f"{t}-w", running, b"late")["status"] == "completed"
        assert names(events(again, running_id)) == ["submitted", "claimed", "completed"]


def _history_or_none(client: shardq.Client, task_id: str) -> list[dict[str, Any]] | None:
    try:
        return events(client, task_id)
    except (OSError, shardq.errors.Unavailable):
        return None


def test_history_names_the_api_key_and_explain_respects_scopes(tmp_path: Path) -> None:
    records, secrets = [], {}
    for name, scope in (("ops", None), ("reader", ["mine.>"])):
        kid, secret = K.new_secret()
        perms = ["admin"] if scope is None else ["read"]
        records.append(K.KeyRecord(kid, name, K.hash_secret(secret), K.make_scopes(perms, scope)))
        secrets[name] = (kid, secret)
    K.write_keys(str(tmp_path / "keys.yaml"), records)
    srv = ServerProcess(str(tmp_path / "data"), ["--shards", str(SHARDS)],
                        env={"SHARDQ_AUTH__ENABLED": "true", "SHARDQ_AUTH__KEYS_FILE": str(tmp_path / "keys.yaml"),
                             "PYTHONPATH": str(ROOT)}).start()
    try:
        kid, secret = secrets["ops"]
        with shardq.Client(srv.url, api_key=secret, timeout=10) as ops:
            parent = ops.submit("job", b"", id=on_shard(0))
            child = ops.submit("job", b"", id=on_shard(1), depends_on=[parent])  # stored across shards
            ops.cancel(child)
            assert events(ops, parent)[0] == {"event": "submitted", "t_ms": events(ops, parent)[0]["t_ms"],
                                              "key": kid}
            evs = events(ops, child)
            assert names(evs) == ["submitted", "cancelled"]
            assert evs[0]["key"] == kid and evs[1]["key"] == kid
        with shardq.Client(srv.url, api_key=secrets["reader"][1], timeout=10) as reader:
            with pytest.raises(NotFound):
                reader.explain(parent)  # a type this key may not read: as if there were none
    finally:
        srv.kill()


def test_async_client_history_and_explain(server: ServerProcess) -> None:
    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        async with shardq.AsyncClient(server.url, timeout=10) as client:
            tid = await client.submit(kind(), b"", delay=30)
            return await client.history(tid), await client.explain(tid)

    hist, why = asyncio.run(go())
    assert names(hist["history"]["events"]) == ["submitted"] and why["reason"] == "delayed"
