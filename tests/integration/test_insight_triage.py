"""Dead-letter triage, delete, purge, search and per-type figures on a real 2-shard server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardq.client.aio import AsyncClient
from shardq.client.sync import Client
from shardq.errors import BadRequest
from shardq.testing import ServerProcess

ROOT = Path(__file__).resolve().parents[2]

# Realistic error texts: three failures, each seen with different numbers, hosts, ids and quotes.
ERRORS = {
    "fetch": [
        "TimeoutError: timeout after 30.2 s on 10.0.0.7\nTraceback (most recent call last): ...",
        "TimeoutError: timeout after 29.8 s on 10.0.0.9",
        "TimeoutError: timeout after 31 s on 10.0.12.3:8080",
        "HTTPError: 503 Service Unavailable for url 'https://api.example.com/v2/items/98765'",
        "HTTPError: 503 Service Unavailable for url 'https://api.example.com/v2/items/12'",
    ],
    "db": [
        "KeyError: 'user_123'",
        "KeyError: 'user_9'",
        "IntegrityError: duplicate key value violates unique constraint \"orders_pkey\" "
        "(order 3f2a9c1e-1111-4a2b-8c3d-0123456789ab)",
        "IntegrityError: duplicate key value violates unique constraint \"orders_pkey\" "
        "(order 0b2b00b8-b2c4-4138-9f2f-a82ff2c3c3d0)",
    ],
}


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SHARDQ_URL", "SHARDQ_API_KEY")}
    env["PYTHONPATH"] = str(ROOT)  # this tree's shardq
    return subprocess.run([sys.executable, "-m", "shardq", *args, "--server", url], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(str(tmp_path_factory.mktemp("insight")), ["--shards", "2"]).start()
    yield srv
    srv.kill()


@pytest.fixture(scope="module")
def seeded(server: ServerProcess) -> dict[str, list[str]]:
    """The module server's dead letters of ERRORS, two per text: made once, by whichever test
    of the module needs them first on this pytest-xdist worker (each worker has its own server)."""
    with Client(server.url) as c:
        return _fail_all(c, ERRORS, rounds=2)


def _fail_all(c: Client, errors: dict[str, list[str]], rounds: int) -> dict[str, list[str]]:
    """Submit ``rounds`` tasks per error text (no retries) and fail each with its text; the ids
    by error text."""
    by_error: dict[str, list[str]] = {}
    jobs = [(t, e) for t, texts in errors.items() for e in texts for _ in range(rounds)]
    want = {}
    for task_type, error in jobs:
        tid = c.submit(task_type, b"{}", max_retries=0)
        want[tid] = error
        by_error.setdefault(error, []).append(tid)
    done = 0
    deadline = time.monotonic() + 30
    while done < len(jobs) and time.monotonic() < deadline:
        for task in c.claim("triage-worker", max=100, types=sorted(errors)):
            c.fail("triage-worker", task, want[task.id], retry=False)
            done += 1
    assert done == len(jobs)
    return by_error


def _full_scan(c: Client) -> Counter[str]:
    return Counter(t["status"] for t in c.search_all(page=500))


def test_dead_letters_group_by_type_and_normalised_error(server: ServerProcess, seeded: dict) -> None:
    with Client(server.url) as c:
        by_error = seeded
        groups = {(g["type"], g["error"]): g for g in c.dlq_groups()["groups"]}
        assert groups[("fetch", "TimeoutError: timeout after <n> s on <ip>")]["count"] == 6
        assert groups[("fetch", "HTTPError: <n> Service Unavailable for url <str>")]["count"] == 4
        assert groups[("db", "KeyError: <str>")]["count"] == 4
        dup = groups[("db", 'IntegrityError: duplicate key value violates unique constraint <str> (order <uuid>)')]
        assert dup["count"] == 4
        assert len(groups) == 4
        timeout = groups[("fetch", "TimeoutError: timeout after <n> s on <ip>")]
        members = [i for e, ids in by_error.items() if e.startswith("TimeoutError") for i in ids]
        assert timeout["sample"] in members
        assert timeout["first_ms"] <= timeout["last_ms"]
        assert c.dlq_groups(type="db")["total"] == 8


def test_group_requeue_and_delete_with_dry_run_counts(server: ServerProcess, seeded: dict) -> None:
    with Client(server.url) as c:
        groups = {g["error"]: g for g in c.dlq_groups()["groups"]}
        keyerr = groups["KeyError: <str>"]
        assert c.bulk("requeue", group=keyerr["group"], dry_run=True)["matched"] == 4
        dry = cli(server.url, "dlq", "requeue", "--group", keyerr["group"], "--dry-run")
        assert dry.returncode == 0 and dry.stdout.startswith("4 dead_letter task(s) would be requeued"), dry
        groups_cli = cli(server.url, "dlq", "groups", "--type", "db")
        assert groups_cli.returncode == 0 and keyerr["group"] in groups_cli.stdout
        assert c.dlq_groups(type="db")["total"] == 8  # a dry run changes nothing
        assert c.bulk("requeue", group=keyerr["group"])["requeued"] == 4
        assert "KeyError: <str>" not in {g["error"] for g in c.dlq_groups()["groups"]}
        assert len(list(c.search_all(type="db", status="pending"))) == 4
        # A filter: error text and type, through the CLI with its dry run and its --yes.
        dry = cli(server.url, "dlq", "delete", "--type", "fetch", "--error", "service unavailable",
                  "--dry-run", "--json")
        assert dry.returncode == 0, dry.stderr
        assert '"matched": 4' in dry.stdout
        refused = cli(server.url, "dlq", "delete", "--type", "fetch", "--error", "service unavailable")
        assert refused.returncode == 2 and "would delete 4" in refused.stderr
        done = cli(server.url, "dlq", "delete", "--type", "fetch", "--error", "service unavailable", "--yes")
        assert done.returncode == 0 and "deleted 4" in done.stdout
        assert c.bulk("delete", type="fetch", error="SERVICE", dry_run=True)["matched"] == 0
        # A time range that holds none of them.
        assert c.bulk("requeue", until_ms=1000, dry_run=True)["matched"] == 0


def test_delete_keeps_counts_exact_and_refuses_unfinished_tasks(server: ServerProcess) -> None:
    with Client(server.url) as c:
        pending = c.submit("keep", b"x", delay=3600)
        finished = c.submit("done", b"x")
        while not (got := c.claim("del-worker", types=["done"])):
            pass
        c.complete("del-worker", got[0], b"result")
        answer = c.delete([pending, finished])
        assert answer["deleted"] == 1
        refused = answer["results"][0]["error"]
        assert refused["code"] == "InvalidState" and "cancel" in refused["message"]
        assert c.status(finished) is None and c.status(pending).status == "pending"
        c.cancel(pending)
        assert c.delete([pending])["deleted"] == 1
        totals = c.stats()["totals"]
        scanned = _full_scan(c)
        for status in ("pending", "in_progress", "completed", "failed", "dead_letter", "cancelled"):
            assert totals[status] == scanned.get(status, 0), status
        assert c.search(type="done")["tasks"] == []  # gone from idx_type too


def test_search_pages_resume_and_find_by_prefix(server: ServerProcess) -> None:
    with Client(server.url) as c:
        ids = [c.submit("page", b"", priority=10 + i) for i in range(23)]
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            answer = c.search(type="page", limit=5, cursor=cursor)
            seen += [t["id"] for t in answer["tasks"]]
            pages += 1
            cursor = answer["cursor"]
            if cursor is None:
                break
        assert sorted(seen) == sorted(ids) and pages >= 5
        assert [t["id"] for t in c.search_all(id_prefix=ids[7][:13])] == [ids[7]]
        hi = list(c.search_all(type="page", min_priority=30, status="pending"))
        assert {t["id"] for t in hi} == set(ids[20:])
        with pytest.raises(BadRequest, match="cursor"):
            c.search(type="page", cursor="0.zz:00")
        with pytest.raises(BadRequest, match="id_prefix"):
            c.search(id_prefix="xyz")


def test_type_figures_are_plausible(server: ServerProcess) -> None:
    with Client(server.url) as c:
        for _ in range(6):
            c.submit("figures", b"")
        done = 0
        while done < 4:
            for task in c.claim("fig-worker", max=4 - done, types=["figures"]):
                c.complete("fig-worker", task)
                done += 1
        row = {t["type"]: t for t in c.type_stats()}["figures"]
        assert row["pending"] == 2 and row["in_progress"] == 0
        assert row["completed_last_minute"] == 4
        assert row["run_time_s"]["count"] == 4 and row["queue_wait_s"]["count"] == 4
        assert 0 <= row["run_time_s"]["p50"] <= row["run_time_s"]["p99"] < 60
        assert row["oldest_pending_age_s"] is not None and row["oldest_pending_age_s"] < 120
        table = cli(server.url, "types")
        assert table.returncode == 0 and "figures" in table.stdout


def test_purge_needs_yes_and_empties_the_dead_letter_queue(server: ServerProcess) -> None:
    with Client(server.url) as c:
        # Its own dead letters: under pytest-xdist this test may get a server of its own.
        _fail_all(c, {"purge-me": ["ValueError: bad input 7"]}, rounds=2)
        assert c.stats()["totals"]["dead_letter"] > 0
        refused = cli(server.url, "dlq", "purge")
        assert refused.returncode == 2 and "--yes" in refused.stderr
        assert c.stats()["totals"]["dead_letter"] > 0
        done = cli(server.url, "dlq", "purge", "--yes")
        assert done.returncode == 0, done.stderr
        assert c.stats()["totals"]["dead_letter"] == 0
        assert c.dlq_groups()["groups"] == []
        assert _full_scan(c).get("dead_letter", 0) == 0


def _http(srv: ServerProcess, method: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(srv.http_url + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as answer:
        return json.loads(answer.read())


def test_the_http_routes_answer_as_tcp_does(server: ServerProcess) -> None:
    with Client(server.url) as c:
        ids = [c.submit("httpins", b"", max_retries=0) for _ in range(3)]
        got = 0
        while got < 3:
            for task in c.claim("http-worker", max=3, types=["httpins"]):
                c.fail("http-worker", task, f"refused by 10.9.8.{got}", retry=False)
                got += 1
        groups = _http(server, "GET", "/api/v1/dlq/groups?type=httpins")
        # (sample and example are any member's: which depends on the shard that merged)
        def same(g: dict) -> tuple:
            return g["group"], g["type"], g["error"], g["count"], g["first_ms"], g["last_ms"]

        assert [same(g) for g in groups["groups"]] == [same(g) for g in c.dlq_groups(type="httpins")["groups"]]
        assert groups["groups"][0]["error"] == "refused by <ip>" and groups["total"] == 3
        page = _http(server, "POST", "/api/v1/tasks/search", {"type": "httpins", "limit": 10})
        assert sorted(t["id"] for t in page["tasks"]) == sorted(ids) and page["cursor"] is None
        dry = _http(server, "POST", "/api/v1/tasks/bulk",
                    {"action": "delete", "group": groups["groups"][0]["group"], "dry_run": True})
        assert dry == {"action": "delete", "dry_run": True, "matched": 3}
        gone = _http(server, "POST", "/api/v1/tasks/delete", {"ids": ids[:1]})
        assert gone["deleted"] == 1 and c.status(ids[0]) is None
        types = {t["type"]: t for t in _http(server, "GET", "/api/v1/types")["types"]}
        assert types["httpins"]["dead_letter"] == 2



def test_the_async_client_has_the_same_methods(server: ServerProcess) -> None:
    async def main() -> tuple[tuple, str]:
        async with AsyncClient(server.url) as ac:
            tid = await ac.submit("asyncins", b"")
            found = [t["id"] async for t in ac.search_all(type="asyncins", page=2)]
            return (await ac.dlq_groups(), found, await ac.bulk("delete", type="asyncins", dry_run=True),
                    await ac.type_stats("asyncins")), tid

    (groups, found, dry, types), tid = asyncio.run(main())
    with Client(server.url) as c:
        assert groups["total"] == c.dlq_groups()["total"]
    assert found == [tid]
    assert dry == {"action": "delete", "dry_run": True, "matched": 0}
    assert [t["type"] for t in types] == ["asyncins"] and types[0]["pending"] == 1


def test_dead_letters_have_a_retention_of_their_own(tmp_path: Path) -> None:
    srv = ServerProcess(str(tmp_path / "ret"), ["--shards", "2"],
                        env={"SHARDQ_PERSISTENCE__DEAD_LETTER_RETENTION_S": "1"}).start()
    try:
        with Client(srv.url) as c:
            dead = c.submit("ret", b"", max_retries=0)
            kept = c.submit("ret", b"", delay=3600)
            while not (got := c.claim("ret-worker", types=["ret"])):
                pass
            c.fail("ret-worker", got[0], "gone", retry=False)
            assert c.status(dead).status == "dead_letter"
            deadline = time.monotonic() + 15
            while c.status(dead) is not None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert c.status(dead) is None, "the dead letter outlived dead_letter_retention_s"
            assert c.status(kept).status == "pending"
            assert c.stats()["totals"]["dead_letter"] == 0 and c.dlq_groups()["groups"] == []
    finally:
        srv.kill()


def test_groups_and_figures_are_rebuilt_after_a_restart(server: ServerProcess) -> None:
    def key(groups: list[dict]) -> list[tuple]:
        return sorted((g["group"], g["count"], g["first_ms"], g["last_ms"]) for g in groups)

    with Client(server.url) as c:
        _fail_all(c, {"restart-me": ["OSError: disk 3 gone"]}, rounds=2)  # its own, whatever ran before
        before = c.dlq_groups()["groups"]
        depth = {t["type"]: (t["pending"], t["dead_letter"]) for t in c.type_stats()}
        assert before
    server.stop()
    server.restart()
    with Client(server.url) as c:
        assert key(c.dlq_groups()["groups"]) == key(before)
        after = {t["type"]: (t["pending"], t["dead_letter"]) for t in c.type_stats()}
        assert {k: v for k, v in after.items() if v != (0, 0)} == {k: v for k, v in depth.items() if v != (0, 0)}
