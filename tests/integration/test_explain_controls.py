"""EXPLAIN of a ready task that a per-type control holds back (paused, at its concurrency cap,
out of rate tokens), on a live 2-shard server: the sentence names the control and its numbers."""

from __future__ import annotations

import time

import pytest

from shardq.client.sync import Client
from shardq.testing import ServerProcess


@pytest.fixture(scope="module")
def srv(tmp_path_factory) -> ServerProcess:
    s = ServerProcess(str(tmp_path_factory.mktemp("explain-controls") / "data"), ["--shards", "2"])
    s.start()
    yield s
    s.kill()


def explained(client: Client, tid: str, reason: str) -> dict:
    deadline = time.monotonic() + 10
    while (e := client.explain(tid))["reason"] != reason:
        assert time.monotonic() < deadline, e
        time.sleep(0.05)
    return e


def test_a_paused_type_and_a_capped_type_say_so(srv) -> None:
    with Client(srv.url, timeout=30) as c:
        c.pause_type("xc.paused")
        tid = c.submit("xc.paused")
        e = explained(c, tid, "paused")
        assert "is paused" in e["message"] and "shardq resume xc.paused" in e["message"]
        c.resume_type("xc.paused")
        assert c.explain(tid)["reason"] != "paused"

        c.set_limits("xc.capped", max_concurrency=1)
        first = c.submit("xc.capped")
        claimed = c.claim("w-xc", max=1, types=["xc.capped"], wait=5)
        assert [t.id for t in claimed] == [first]
        waiting = c.submit("xc.capped")
        e = explained(c, waiting, "concurrency_cap")
        assert "at its concurrency cap" in e["message"] and e["details"]["max_concurrency"] == 1
        c.complete("w-xc", claimed[0])
        c.clear_limits("xc.capped")
