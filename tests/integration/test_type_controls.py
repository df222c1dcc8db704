"""Per-type controls end to end on real multi-shard servers: pause and resume, concurrency caps
and rates, their bad input, the CLI, and their durability across kill -9 of a shard, of the
coordinator and of the whole server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from wire import uid

from shardq import keys as K
from shardq.client.aio import AsyncClient
from shardq.client.sync import Client, Job
from shardq.errors import BadRequest, Forbidden, InvalidState, NotFound, ShardqError, WireError
from shardq.protocol.frames import MsgType
from shardq.server.controls import control_owner
from shardq.testing import ServerProcess

SHARDS = 3


def wait_for(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = check()
        except (WireError, OSError):
            got = None
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def child_pid(server: ServerProcess, name: str, after: int = 0) -> int:
    """The pid the supervisor logged for child ``name`` (the latest start, or the first after
    ``after``)."""
    def find() -> int | None:
        pids = [int(m.group(1)) for line in server.stderr_lines
                if (m := re.search(rf"supervisor .*: {name} started \(pid (\d+)\)", line))]
        if after:
            pids = pids[pids.index(after) + 1:] if after in pids else []
        return pids[-1] if pids else None
    return int(wait_for(find, what=f"{name}'s pid"))


def kill9(server: ServerProcess, name: str) -> None:
    """kill -9 child ``name`` and wait until the supervisor has started it again."""
    pid = child_pid(server, name)
    os.kill(pid, signal.SIGKILL)
    child_pid(server, name, after=pid)


@pytest.fixture(scope="module")
def three(tmp_path_factory) -> Iterator[ServerProcess]:
    srv = ServerProcess(str(tmp_path_factory.mktemp("controls")), ["--shards", str(SHARDS)])
    srv.start()
    yield srv
    srv.kill()


def claim_types(client: Client, worker: str, n: int = 100) -> list[str]:
    return [t.type for t in client.claim(worker, max=n)]


def test_hello_announces_the_feature(three) -> None:
    with Client(three.url) as c:
        c.connect()
        assert "type-controls" in c.server_info["features"]


def test_paused_type_is_not_claimed_on_any_shard_and_resume_serves_waiting_claims(three) -> None:
    paused, other = uid("paused"), uid("other")
    with Client(three.url) as c:
        answer = c.pause_type(paused)
        assert answer["control"]["paused"] is True
        c.submit_many([Job(paused, b"p") for _ in range(6)] + [Job(other, b"o") for _ in range(3)])
        c.submit_many([Job(paused, b"p") for _ in range(6)])  # the next shard in turn
        # Every shard, and every shard's view of the others: nothing of the paused type.
        for k in range(SHARDS):
            with Client(three.url, shard=k) as pinned:
                assert paused not in claim_types(pinned, f"w{k}", 100)
        assert c.stats()["controls"][paused]["paused"] is True
        row = c.controls(paused)[0]
        assert row["ready"] == 12 and row["running"] == 0
        assert {s["blocked_by"] for s in row["shards"].values()} == {"paused"}
        # A claim that waits keeps waiting, and is served on resume.
        got: list[list[str]] = []
        waiter = threading.Thread(target=lambda: got.append(
            [t.type for t in Client(three.url, shard=1).claim("waiter", max=1, wait=20, types=[paused])]))
        waiter.start()
        time.sleep(0.3)  # not a wait for a result: the claim must still be waiting after it
        assert got == []
        t0 = time.monotonic()
        c.resume_type(paused)
        waiter.join(20)
        assert got == [[paused]] and time.monotonic() - t0 < 2
        # The other shards learn within a report period (0.1 s) that this type is ready again.
        claimed: list[str] = []
        wait_for(lambda: claimed.extend(claim_types(c, "w", 100)) or len(claimed) >= 11, what="11 claims")
        assert claimed == [paused] * 11
        with pytest.raises(InvalidState, match="is not paused"):
            c.resume_type(paused)


def test_bad_input_is_refused_naming_the_field(three) -> None:
    t = uid("bad")
    with Client(three.url) as c:
        with pytest.raises(BadRequest, match="rate: must be"):
            c.set_limits(t, rate=-1)
        with pytest.raises(BadRequest, match="max_concurrency: must be"):
            c.set_limits(t, max_concurrency=0)
        with pytest.raises(BadRequest, match="burst: needs a rate"):
            c.set_limits(t, burst=5)
        with pytest.raises(BadRequest, match="max_concurency: unknown field"):
            c._control_call(MsgType.SET_LIMITS, {"type": t, "max_concurency": 3})
        with pytest.raises(NotFound):
            c.controls(t)
        with pytest.raises(InvalidState):
            c.resume_type(t)
        # Nothing was stored by any of them; the connection still works.
        assert all(row["type"] != t for row in c.controls())


def test_limits_set_change_and_clear(three) -> None:
    t = uid("lim")
    with Client(three.url) as c:
        rec = c.set_limits(t, max_concurrency=4, rate=20)["control"]
        assert (rec["max_concurrency"], rec["rate"], rec["burst"]) == (4, 20.0, 2)
        rec = c.set_limits(t, burst=7)["control"]
        assert (rec["max_concurrency"], rec["rate"], rec["burst"]) == (4, 20.0, 7)
        rec = c.set_limits(t, rate=None)["control"]
        assert (rec["max_concurrency"], rec["rate"], rec["burst"]) == (4, None, None)
        rec = c.clear_limits(t)["control"]
        assert rec["max_concurrency"] is None
        with pytest.raises(NotFound):
            c.controls(t)


def test_cap_holds_across_shards_and_frees_slots(three) -> None:
    t = uid("cap")
    with Client(three.url) as c:
        c.set_limits(t, max_concurrency=3)
        for _ in range(SHARDS):
            c.submit_many([Job(t, b"x") for _ in range(4)])
        held = []
        pinned = [Client(three.url, shard=k) for k in range(SHARDS)]

        def claim_everywhere() -> bool:
            # The coordinator hands the slots to the shards with ready tasks a report period
            # (0.1 s) after the limit is set: claim on each shard until the 3 slots are taken.
            for k, p in enumerate(pinned):
                held.extend((f"cap-{k}", task) for task in p.claim(f"cap-{k}", max=10))
            return len(held) >= 3

        try:
            wait_for(claim_everywhere, what="the 3 slots")
            time.sleep(0.3)  # not a wait for a result: no claim may get a 4th in the meantime
            claim_everywhere()
        finally:
            for p in pinned:
                p.close()
        assert len(held) == 3
        # Each shard counts what runs of its own tasks; the merged view is exact once they all answered.
        wait_for(lambda: c.controls(t)[0]["running"] == 3, what="3 running in the merged view")
        worker, first = held[0]  # (the slots may all sit on some shards: complete as its holder)
        assert c.complete(worker, first)["status"] == "completed"
        # A slot freed on one shard goes where tasks are ready.
        more = wait_for(lambda: c.claim("cap-x", max=10), what="a freed slot")
        assert len(more) == 1


def run_cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shardq", *args, "--server", server.url],
                          capture_output=True, text=True, timeout=60, env=os.environ.copy())


def test_cli_pause_resume_limits(three) -> None:
    t = uid("cli")
    out = run_cli(three, "pause", t)
    assert out.returncode == 0 and f"paused {t}: paused" in out.stdout
    out = run_cli(three, "limits", "set", t, "--max-concurrency", "5", "--rate", "600/m", "--json")
    assert out.returncode == 0, out.stderr
    rec = json.loads(out.stdout)["control"]
    assert (rec["paused"], rec["max_concurrency"], rec["rate"], rec["burst"]) == (True, 5, 10.0, 1)
    out = run_cli(three, "limits", "show", "--json")
    assert any(r["type"] == t and r["max_concurrency"] == 5 for r in json.loads(out.stdout))
    out = run_cli(three, "limits", "show")
    assert out.returncode == 0 and t in out.stdout and "0:paused" in out.stdout
    out = run_cli(three, "stats")
    assert out.returncode == 0 and re.search(rf"paused types: .*{t}.*limited types: .*{t}", out.stdout)
    out = run_cli(three, "resume", t, "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["control"]["paused"] is False
    out = run_cli(three, "resume", t)
    assert out.returncode == 1 and "is not paused (InvalidState)" in out.stderr
    out = run_cli(three, "limits", "clear", t, "--rate")
    assert out.returncode == 0 and "max concurrency 5, no rate limit" in out.stdout
    for bad, message in ((("--rate", "-3"), "must be > 0"), (("--max-concurrency", "0"), "must be an integer >= 1"),
                         (("--rate", "5/d"), "optionally /s, /m or /h"), (("--bogus", "1"), "unrecognized arguments")):
        out = run_cli(three, "limits", "set", t, *bad)
        assert out.returncode == 2 and message in out.stderr, out.stderr
    out = run_cli(three, "limits", "set", t)
    assert out.returncode == 2 and "give --max-concurrency, --rate or both" in out.stderr


# -- durability: kill -9 ----------------------------------------------------------------------


@pytest.fixture
def two(server_factory) -> ServerProcess:
    return server_factory("--shards", "2")


def test_pause_survives_kill9_of_its_owner_and_of_the_whole_server(two) -> None:
    t = uid("durable")
    owner = control_owner(t, 2)
    with Client(two.url) as c:
        c.pause_type(t)
        c.set_limits(t, max_concurrency=2)
        c.submit_many([Job(t, b"x") for _ in range(4)])
    kill9(two, f"shard-{owner}")
    with Client(two.url) as c:
        wait_for(lambda: c.controls(t)[0]["shards"].get(str(owner)), what="the owner back")
        row = c.controls(t)[0]
        assert row["paused"] is True and row["max_concurrency"] == 2
        for k in range(2):
            with Client(two.url, shard=k) as pinned:
                assert pinned.claim("w", max=10, types=[t]) == []
        # The restarted shard opened its claims once it knew every shard's controls.
        other = uid("free")
        with Client(two.url, shard=owner) as pinned:
            pinned.submit(other, b"y")
            assert [x.type for x in wait_for(lambda: pinned.claim("w", max=10, types=[other]),
                                              what="a claim on the restarted shard")] == [other]
    two.kill()  # kill -9 of every process
    two.restart()
    with Client(two.url) as c:
        # The first claims after the restart already see the pause.
        for k in range(2):
            with Client(two.url, shard=k) as pinned:
                assert pinned.claim("w", max=10) == []
        assert c.stats()["controls"][t] == {"paused": True, "max_concurrency": 2, "rate": None, "burst": None}
        c.resume_type(t)
        got = wait_for(lambda: c.claim("w", max=10), what="tasks after resume")
        assert len(got) == 2  # the cap, also after the restart


# -- the cap under load, across kill -9 of a shard and of the coordinator -------------------------


class CapWorkers:
    """Worker threads on every shard that count their handlers running at once."""

    def __init__(self, url: str, task_type: str, n: int, shards: int) -> None:
        self.url, self.type = url, task_type
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.done = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.work, args=(f"capw-{i}", i % shards), daemon=True)
                        for i in range(n)]

    def start(self) -> None:
        for th in self.threads:
            th.start()

    def work(self, worker: str, shard: int) -> None:
        client = Client(self.url, shard=shard, retries=0, timeout=5)
        while not self.stop.is_set():
            try:
                tasks = client.claim(worker, max=2, wait=0.2, types=[self.type])
            except (ShardqError, OSError):
                time.sleep(0.05)
                continue
            for task in tasks:
                with self.lock:
                    self.running += 1
                    self.peak = max(self.peak, self.running)
                time.sleep(0.01)
                with self.lock:
                    self.running -= 1
                for _ in range(100):  # the owner may be restarting: retry the result
                    try:
                        if "status" in client.complete(worker, task):
                            with self.lock:
                                self.done += 1
                        break  # done, or LeaseLost: the task comes back when its lease expires
                    except (ShardqError, OSError):
                        time.sleep(0.05)
        client.close()

    def join(self) -> None:
        self.stop.set()
        for th in self.threads:
            th.join(30)


def test_cap_is_never_exceeded_under_load_and_across_kill9(server_factory) -> None:
    srv = server_factory("--shards", str(SHARDS), "--lease-timeout-ms", "3000")
    t, cap, total = uid("load"), 3, 180
    with Client(srv.url) as c:
        c.set_limits(t, max_concurrency=cap)
        for _ in range(SHARDS):
            c.submit_many([Job(t, b"x") for _ in range(total // SHARDS)])
    workers = CapWorkers(srv.url, t, 8, SHARDS)
    workers.start()
    try:
        wait_for(lambda: workers.done >= 40, what="work to flow")
        kill9(srv, "shard-1")
        wait_for(lambda: workers.done >= 100, what="work after a shard kill")
        kill9(srv, "coordinator")
        with Client(srv.url) as c:
            wait_for(lambda: c.stats()["totals"]["completed"] >= total, timeout=60, what="every task done")
    finally:
        workers.join()
    assert workers.peak <= cap
    assert workers.peak == cap  # the cap was reached: slots moved to where the work was


def http(server: ServerProcess, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    req = urllib.request.Request(server.http_url + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_http_routes(three) -> None:
    t = uid("http")
    status, body = http(three, "POST", f"/api/v1/controls/{t}/pause")
    assert status == 200 and body["control"]["paused"] is True
    status, body = http(three, "PATCH", f"/api/v1/controls/{t}/limits", {"max_concurrency": 2, "rate": 5})
    assert status == 200 and (body["control"]["max_concurrency"], body["control"]["burst"]) == (2, 1)
    status, body = http(three, "PATCH", f"/api/v1/controls/{t}/limits", {"rate": -1})
    assert status == 400 and "rate" in body["detail"]
    status, body = http(three, "PATCH", f"/api/v1/controls/{t}/limits", {"max_concurency": 1})
    assert status == 400 and "max_concurency" in body["detail"]
    status, body = http(three, "GET", f"/api/v1/controls?type={t}")
    assert status == 200 and len(body["controls"][0]["shards"]) == SHARDS
    assert http(three, "POST", f"/api/v1/controls/{t}/resume")[0] == 200
    status, body = http(three, "POST", f"/api/v1/controls/{t}/resume")
    assert status == 409 and body["code"] == "InvalidState"
    with Client(three.url) as c:
        assert c.controls(t)[0]["paused"] is False  # the TCP clients see what HTTP set


def test_permissions_and_type_scopes(server_factory, tmp_path) -> None:
    records, secrets = [], {}
    for name, perms, patterns in (("ops", ["admin"], ["billing.>"]), ("reader", ["read"], None),
                                  ("root", ["admin"], None)):
        kid, secret = K.new_secret()
        records.append(K.KeyRecord(kid, name, K.hash_secret(secret), K.make_scopes(perms, patterns)))
        secrets[name] = secret
    K.write_keys(str(tmp_path / "keys.yaml"), records)
    srv = server_factory("--shards", "2", env={"SHARDQ_AUTH__ENABLED": "true",
                                               "SHARDQ_AUTH__KEYS_FILE": str(tmp_path / "keys.yaml")})
    with Client(srv.url, api_key=secrets["ops"]) as ops:
        assert ops.pause_type("billing.invoice")["control"]["paused"] is True
        with pytest.raises(Forbidden, match="may not pause task type 'email'"):
            ops.pause_type("email")
        with pytest.raises(Forbidden):
            ops.set_limits("email", max_concurrency=1)
    with Client(srv.url, api_key=secrets["root"]) as root:
        root.pause_type("email")
    with Client(srv.url, api_key=secrets["reader"]) as reader:
        assert {r["type"] for r in reader.controls()} == {"billing.invoice", "email"}
        with pytest.raises(Forbidden, match="'admin' permission"):
            reader.resume_type("email")
    with Client(srv.url, api_key=secrets["ops"]) as ops:  # admin on billing.> reads only those
        assert [r["type"] for r in ops.controls()] == ["billing.invoice"]


def test_async_client(three) -> None:
    t = uid("aio")

    async def main() -> None:
        async with AsyncClient(three.url) as c:
            assert (await c.pause_type(t))["control"]["paused"] is True
            await c.submit_many([Job(t, b"a") for _ in range(3)])
            assert await c.claim("aw", max=5, types=[t]) == []
            rec = (await c.set_limits(t, max_concurrency=2, rate=100))["control"]
            assert (rec["max_concurrency"], rec["rate"]) == (2, 100.0)
            await c.resume_type(t)
            got = []
            deadline = time.monotonic() + 10
            while len(got) < 2 and time.monotonic() < deadline:
                got += await c.claim("aw", max=5, types=[t], wait=0.2)
            assert len(got) == 2  # the cap
            assert (await c.controls(t))[0]["running"] == 2
            await c.clear_limits(t)
            with pytest.raises(NotFound):
                await c.controls(t)

    asyncio.run(main())
