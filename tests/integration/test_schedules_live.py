"""Periodic schedules against a real 3-shard `shardq serve`: each tick submits exactly one task
(counted through the tasks' deterministic ids), across kill -9 of the schedule's owner shard
and of the whole server; the misfire policies after a downtime; pause/resume/remove; the
client, the CLI (human and --json) and the HTTP API end to end; bad input named by field.

One server for the module; the test that kills the whole server runs last. Schedules tick
every second (``every``) so that nothing waits for a minute boundary."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from shardq.cli import main as cli_main
from shardq.client.aio import AsyncClient
from shardq.client.sync import Client
from shardq.engine.schedules import schedule_owner, tick_id
from shardq.errors import BadRequest, InvalidState, NotFound
from shardq.protocol.frames import MsgType
from shardq.testing import ServerProcess

SHARDS = 3


@pytest.fixture(scope="module")
def srv(tmp_path_factory) -> Any:
    s = ServerProcess(str(tmp_path_factory.mktemp("sched") / "data"), ["--shards", str(SHARDS)])
    s.start()
    yield s
    s.kill()


@pytest.fixture
def client(srv) -> Any:
    c = Client(srv.url, timeout=10)
    yield c
    c.close()


def wait_until(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except (OSError, ConnectionError, NotFound) as exc:  # a shard restarting
            value, last = None, exc
        else:
            last = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last error: {last})")
        time.sleep(0.05)


def schedule(srv: ServerProcess, name: str) -> dict[str, Any] | None:
    """The schedule as its owner reports it now (a fresh connection: shards may restart)."""
    with Client(srv.url, timeout=5) as c:
        try:
            return c.schedule(name)
        except Exception:
            return None


def ticks_of(client: Client, name: str, type: str, created_ms: int, until_ms: int) -> dict[int, Any]:
    """The tasks of schedule ``name`` by tick: every task of ``type`` must be one tick's."""
    by_id = {tick_id(name, t, SHARDS): t for t in range(created_ms - created_ms % 1000, until_ms + 1, 1000)}
    tasks = list(client.list("pending", type=type))
    stray = [t.id for t in tasks if bytes.fromhex(t.id.replace("-", "")) not in by_id]
    assert not stray, f"tasks of {type} that are no tick's: {stray}"
    out = {by_id[bytes.fromhex(t.id.replace("-", ""))]: t for t in tasks}
    assert len(out) == len(tasks)  # one task per tick
    return out


def shard_pid(srv: ServerProcess, shard: int) -> int | None:
    """The shard's pid, None while it is not serving."""
    with srv.connect(timeout=10) as c:
        rows = c.call(MsgType.GET_STATS, {}).header["shards"]
    return next((r.get("pid") for r in rows if r["shard"] == shard), None)


# -- end to end ----------------------------------------------------------------------------------


def test_each_schedule_fires_on_its_owner_shard(srv, client):
    names = [f"e2e-{i}" for i in range(6)]
    for n in names:
        s = client.schedule_add(n, n, {"name": n}, every=1, priority=150)
        assert s["shard"] == schedule_owner(n, SHARDS)
        assert s["next_ms"] % 1000 == 0 and s["fired"] == 0
    assert {s["shard"] for s in client.schedules() if s["name"] in names} == set(range(SHARDS))
    wait_until(lambda: all((schedule(srv, n) or {}).get("fired", 0) >= 2 for n in names), what="two ticks each")
    for n in names:
        client.schedule_pause(n)
    for n in names:
        s = client.schedule(n)
        task = client.status(s["last_task_id"], with_result=False)
        assert task is not None and task.type == n and task.priority == 150
        assert task.shard == s["shard"]  # the tick's task lives on the schedule's owner
        assert bytes.fromhex(task.id.replace("-", "")) == tick_id(n, s["last_tick_ms"], SHARDS)
        assert len(ticks_of(client, n, n, s["created_ms"], s["last_tick_ms"])) == s["fired"]
        assert client.status(s["last_task_id"], with_result=True) is not None
        client.schedule_remove(n)
    assert not [s for s in client.schedules() if s["name"] in names]


def test_exactly_one_task_per_tick_across_kill_9_of_the_owner_shard(srv, client):
    name = "exactly-once"
    created = client.schedule_add(name, "exact", every=1, misfire="once")["created_ms"]
    owner = schedule_owner(name, SHARDS)
    for _ in range(2):
        before = wait_until(lambda: schedule(srv, name), what="the schedule")["fired"]
        wait_until(lambda b=before: (schedule(srv, name) or {}).get("fired", 0) >= b + 2, what="two more ticks")
        pid = shard_pid(srv, owner)
        assert pid is not None
        os.kill(pid, 9)
        wait_until(lambda p=pid: shard_pid(srv, owner) not in (None, p), what="the shard restarted")
    fired = wait_until(lambda: schedule(srv, name), what="the schedule back")["fired"]
    wait_until(lambda: (schedule(srv, name) or {}).get("fired", 0) >= fired + 2, what="ticks after")
    s = client.schedule_pause(name)
    tasks = ticks_of(client, name, "exact", created, s["last_tick_ms"])
    assert len(tasks) == s["fired"] >= 6  # every fire is one task of its own tick, none twice
    assert s["last_tick_ms"] in tasks
    client.schedule_remove(name)


def test_pause_resume_and_bad_input(srv, client):
    client.schedule_add("paused-one", "p", every=1, paused=True)
    s = client.schedule("paused-one")
    assert s["paused"] and s["next_ms"] is None
    with pytest.raises(InvalidState, match="exists"):
        client.schedule_add("paused-one", "p", every=1)
    s = client.schedule_resume("paused-one")
    assert not s["paused"] and s["next_ms"] > s["last_tick_ms"]
    wait_until(lambda: (schedule(srv, "paused-one") or {}).get("fired", 0) >= 1, what="a tick")
    client.schedule_remove("paused-one")
    with pytest.raises(NotFound):
        client.schedule_remove("paused-one")
    for kw, field in (({"cron": "* * *"}, "cron"), ({"cron": "*/5 * * * *", "timezone": "Nowhere/City"}, "timezone"),
                      ({"every": 0.5}, "every_ms"), ({}, "cron, every_ms"), ({"every": 1, "misfire": "twice"}, "misfire"),
                      ({"every": 1, "priority": 300}, "priority")):
        with pytest.raises(BadRequest, match=f"^{field}:"):
            client.schedule_add("bad-one", "x", **kw)
    with pytest.raises(BadRequest, match="^name:"):
        client.schedule_add("no spaces", "x", every=1)
    with pytest.raises(BadRequest, match="^payload:"):
        client.schedule_add("too-big", "x", b"x" * 70_000, every=1)
    assert not [s for s in client.schedules() if s["name"] in ("bad-one", "too-big")]
    client.ping()  # the connection survived every refusal


def test_async_client(srv):
    async def run() -> None:
        async with AsyncClient(srv.url, timeout=10) as c:
            s = await c.schedule_add("async-one", "a", b"\x00\x01", cron="* * * * * *", timezone="Asia/Tokyo")
            assert s["timezone"] == "Asia/Tokyo" and s["next_local"].endswith("+09:00")
            with pytest.raises(BadRequest, match="^timezone: applies to cron only"):
                await c.schedule_add("async-two", "a", every=1, timezone="Asia/Tokyo")
            assert (await c.schedule("async-one"))["payload"] == b"\x00\x01"
            assert "async-one" in [x["name"] for x in await c.schedules()]
            assert (await c.schedule_pause("async-one"))["paused"] is True
            assert (await c.schedule_resume("async-one"))["paused"] is False
            await c.schedule_remove("async-one")
            with pytest.raises(NotFound):
                await c.schedule("async-one")

    asyncio.run(run())


def test_cli_human_and_json(srv, capsys):
    def cli(*args: str) -> tuple[int, str, str]:
        code = cli_main(["schedule", *args, "--server", srv.url])
        out = capsys.readouterr()
        return code, out.out, out.err

    code, out, _ = cli("add", "cli-nightly", "--cron", "30 2 * * *", "--timezone", "Europe/Paris",
                       "--type", "report", "--payload", '{"k": 1}')
    assert code == 0 and out.startswith("schedule cli-nightly: cron 30 2 * * * (Europe/Paris), type report, next ")
    code, out, _ = cli("list", "--json")
    row = next(r for r in json.loads(out) if r["name"] == "cli-nightly")
    assert row["next_local"].endswith(("T02:30:00+01:00", "T02:30:00+02:00")) and row["next_utc"].endswith("Z")
    code, out, _ = cli("list")
    header, *lines = out.splitlines()
    assert header.split()[:4] == ["NAME", "WHEN", "TYPE", "NEXT"]
    assert any(line.startswith("cli-nightly ") for line in lines)
    code, out, _ = cli("show", "cli-nightly")
    assert code == 0 and 'payload: {"k": 1}' in out and "timezone: Europe/Paris" in out
    code, out, _ = cli("pause", "cli-nightly")
    assert code == 0 and out.rstrip().endswith("paused")
    code, out, err = cli("add", "cli-bad", "--cron", "61 * * * *", "--type", "x")
    assert code == 1 and err.startswith("shardq: cron: '61 * * * *' is not a valid cron expression")
    code, out, _ = cli("remove", "cli-nightly", "--json")
    assert code == 0 and json.loads(out) == {"name": "cli-nightly", "removed": True}
    code, out, err = cli("show", "cli-nightly")
    assert code == 1 and "no schedule 'cli-nightly' (NotFound)" in err
    # The installed entry point, once.
    proc = subprocess.run([sys.executable, "-m", "shardq", "schedule", "list", "--server", srv.url],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "cli-nightly" not in proc.stdout


def test_http_api(srv):
    def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(srv.http_url + "/api/v1/schedules" + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    code, body = call("POST", "", {"name": "http-one", "type": "h", "every_ms": 1000, "payload": {"a": 1}})
    assert code == 201 and body["schedule"]["shard"] == schedule_owner("http-one", SHARDS)
    assert call("POST", "", {"name": "http-one", "type": "h", "every_ms": 1000})[0] == 409
    code, body = call("POST", "", {"name": "http-two", "type": "h", "cron": "* * * * *", "timezone": "Atlantis"})
    assert code == 400 and body["detail"].startswith("timezone:")
    code, body = call("POST", "", {"name": "http-two", "type": "h", "every_ms": 10})
    assert code == 400 and "every_ms" in body["detail"]
    code, body = call("GET", "")
    assert code == 200 and "http-one" in [s["name"] for s in body["schedules"]]
    code, body = call("GET", "/http-one")
    assert code == 200 and body["payload"] == {"a": 1}
    wait_until(lambda: call("GET", "/http-one")[1]["fired"] >= 1, what="a tick")
    code, body = call("POST", "/http-one/pause")
    assert code == 200 and body["schedule"]["paused"] is True
    code, body = call("POST", "/http-one/resume")
    assert code == 200 and body["schedule"]["paused"] is False
    assert call("DELETE", "/http-one") == (200, {"name": "http-one", "removed": True})
    assert call("DELETE", "/http-one")[0] == 404


# -- last: the whole server is killed ---------------------------------------------------------------


def test_misfire_policies_after_the_whole_server_was_down(srv):
    """Each schedule's one tick of the year falls while the whole server is down (kill -9), and
    the server comes back later than the grace: ``skip`` drops it, ``once`` runs it (once, late),
    a paused schedule stays paused. Schedules survive the restart."""
    grace = 0.5
    tick = (int(time.time()) + 5) * 1000
    at = datetime.fromtimestamp(tick / 1000, UTC)
    cron = f"{at.second} {at.minute} {at.hour} {at.day} {at.month} *"  # 6 fields: seconds first
    with Client(srv.url, timeout=10) as c:
        for name, misfire in (("mis-skip", "skip"), ("mis-once", "once")):
            c.schedule_add(name, name, cron=cron, misfire=misfire, misfire_grace=grace)
            assert c.schedule(name)["next_ms"] == tick
        c.schedule_add("mis-paused", "mis-paused", every=1, paused=True)
    srv.kill()
    wait_until(lambda: time.time() * 1000 > tick + grace * 1000 + 100, what="the tick and its grace to pass")
    srv.restart()
    for name in ("mis-skip", "mis-once"):
        wait_until(lambda n=name: (schedule(srv, n) or {}).get("last_tick_ms") == tick, what=f"{name} handled")
    with Client(srv.url, timeout=10) as c:
        skip, once = c.schedule("mis-skip"), c.schedule("mis-once")
        assert (skip["fired"], skip["misfires"], skip["last_task_id"]) == (0, 1, None)
        assert not ticks_of(c, "mis-skip", "mis-skip", tick, tick)
        assert (once["fired"], once["misfires"]) == (1, 0)
        task = ticks_of(c, "mis-once", "mis-once", tick, tick)[tick]
        assert task.created_ms - tick > grace * 1000  # run once, late
        assert skip["next_ms"] > tick + 300 * 24 * 3600 * 1000  # next year
        paused = c.schedule("mis-paused")
        assert paused["paused"] and paused["fired"] == 0
