"""The bundled clients and the worker spread their work over the shards of a 2-shard server
(shardq/client/spread.py, the worker's lanes): submits land on both shards, each in the shard it
was sent to, requests about a task reach its owner, and a worker drains both shards with hardly a
hop. Hops are GET_STATS rows' ``forwarded`` (a GET_STATS itself fans out, so every count is taken
against two back-to-back reads)."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from test_worker import marks, read_marks, worker_factory  # noqa: F401 -- fixtures
from tlsfiles import TlsFiles

import shardq
from shardq.client.models import Job
from shardq.client.spread import Spread, owner


@pytest.fixture
def tls(tmp_path) -> TlsFiles:
    return TlsFiles(tmp_path / "certs")


@pytest.fixture
def two(server_factory):
    return server_factory("--shards", "2", "--lease-timeout-ms", "3000", "--heartbeat-interval-ms", "400")


def rows(client: shardq.Client) -> dict[int, dict]:
    return {r["shard"]: r for r in client.stats()["shards"]}


class Hops:
    """Requests forwarded between shards since ``start``, less what the GET_STATS reads cost."""

    def __init__(self, url: str) -> None:
        self.client = shardq.Client(url, spread=False)
        a = self._count()
        self.per_read = self._count() - a
        self.start = self._count()
        self.reads = 0

    def _count(self) -> int:
        return sum(int(r["forwarded"]) for r in self.client.stats()["shards"])

    def rows(self) -> dict[int, dict]:
        self.reads += 1
        return rows(self.client)

    def since(self) -> int:
        return self._count() - self.start - self.per_read * (1 + self.reads)


def test_spread_policy_is_pure_and_fair() -> None:
    s = Spread(home=1, shards=3)
    assert [s.submit_shard([Job("t")]) for _ in range(4)] == [1, 2, 0, 1]  # home first, in turn
    given = "00000005-0000-4000-8000-000000000000"  # owner 5 % 3 == 2
    assert owner(given, 3) == 2 and s.submit_shard([Job("t"), Job("t", id=given)]) == 2
    assert s.ids_shard([given, given, "00000003-0000-4000-8000-000000000000"]) == 2
    assert s.ids_shard(["not-an-id"]) == 1  # the server will refuse it; any connection will do
    assert s.split([given, "00000003-0000-4000-8000-000000000000", given]) == {2: [0, 2], 0: [1]}


def test_a_plain_client_submits_to_both_shards_without_hops(two) -> None:
    hops = Hops(two.url)
    with shardq.Client(two.url) as client:
        ids = [client.submit("spread-one", b"x") for _ in range(40)]
        for _ in range(10):
            ids += client.submit_many([Job("spread-batch", b"y") for _ in range(5)])
        assert client.spreading and set(client._lanes) == {1 - client.shard}
    by_shard = hops.rows()
    assert by_shard[0]["pending"] == by_shard[1]["pending"] == 45, by_shard
    owners = [owner(i, 2) for i in ids]
    assert owners[:40].count(0) == owners[:40].count(1) == 20
    assert hops.since() == 0, "no SUBMIT crossed shards"


def test_spread_false_and_a_pinned_shard_keep_to_one_shard(two) -> None:
    with shardq.Client(two.url, spread=False) as client:
        ids = [client.submit("nospread", b"x") for _ in range(10)]
        assert {owner(i, 2) for i in ids} == {client.shard} and not client._lanes
    with shardq.Client(two.url, shard=1) as client:
        ids = client.submit_many([Job("pinned") for _ in range(10)]) + [client.submit("pinned")]
        assert {owner(i, 2) for i in ids} == {1} and client.shard == 1 and not client._lanes
    by_shard = rows(shardq.Client(two.url))
    assert by_shard[1]["pending"] >= 11


def test_by_id_requests_go_to_the_owner_without_a_hop(two) -> None:
    with shardq.Client(two.url) as client:
        ids = [client.submit("byid", b"x") for _ in range(6)]
        assert {owner(i, 2) for i in ids} == {0, 1}
        hops = Hops(two.url)
        for task_id in ids:
            assert client.status(task_id).shard == owner(task_id, 2)
        client.cancel(ids[0])
        client.cancel(ids[1])
        with pytest.raises(shardq.TaskCancelled):
            client.wait(ids[1], timeout=5)
        worker = "spread-w"
        # Two left on each shard: claims in turn take each shard's own (a claim on a shard with
        # none would ask the other, a hop: the worker's lanes avoid that, test_a_worker_...).
        got = [t for _ in range(2) for t in client.claim(worker, max=2, types=["byid"])]
        assert sorted(t.id for t in got) == sorted(ids[2:])
        out = client.report(worker, [({"id": t.id, "attempt": t.attempt, "status": "completed"}, b"r")
                                     for t in got])
        assert [o["status"] for o in out] == ["completed"] * 4
        for task_id in ids[2:]:
            assert client.wait(task_id, timeout=5) == b"r"
        assert hops.since() == 0, "status, cancel, wait, claim and result all stayed on the owner"


def test_async_client_spreads_too(two) -> None:
    async def main() -> tuple[list[str], list[str]]:
        async with shardq.AsyncClient(two.url) as client:
            ids = [await client.submit("aspread", b"x") for _ in range(20)]
            ids += await client.submit_many([Job("aspread") for _ in range(4)])
            infos = await client.status_many(ids[:1])
            assert infos[0] is not None and infos[0].shard == owner(ids[0], 2)
        async with shardq.AsyncClient(two.url, spread=False) as client:
            one = [await client.submit("aspread-one", b"x") for _ in range(6)]
            assert {owner(i, 2) for i in one} == {client.shard}
        return ids, one

    hops = Hops(two.url)
    ids, _ = asyncio.run(main())
    assert [owner(i, 2) for i in ids[:20]].count(0) == 10
    assert hops.since() == 0


def test_a_worker_drains_both_shards_with_hardly_a_hop(two, worker_factory) -> None:  # noqa: F811
    for k in (0, 1):
        with shardq.Client(two.url, shard=k) as producer:
            producer.submit_many([Job("quick", {}) for _ in range(300)])
    hops = Hops(two.url)
    worker = worker_factory(two, "--burst", "--concurrency", "4")
    assert worker.wait(60) == 0, worker.log
    assert "claiming from every shard" in worker.log
    by_shard = hops.rows()
    assert by_shard[0]["completed"] == by_shard[1]["completed"] == 300, by_shard
    # Only the claims that found their shard dry (the last few) and the heartbeats may hop.
    assert hops.since() <= 30, hops.since()


def test_prefetch_stays_within_its_bound_and_goes_back_on_shutdown(server_factory, worker_factory,  # noqa: F811
                                                                  marks) -> None:  # noqa: F811
    srv = server_factory("--shards", "1", "--lease-timeout-ms", "3000", "--heartbeat-interval-ms", "400")
    with shardq.Client(srv.url) as client:
        ids = client.submit_many([Job("slow_first", {"seconds": 0.25}) for _ in range(40)])
        worker = worker_factory(srv, "--concurrency", "1", "--prefetch", "2", "--shutdown-timeout", "5")
        worker.wait_for_log(" ready: ")
        assert "prefetch 2" in worker.log
        held = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            held.append(client.stats()["totals"]["in_progress"])
            time.sleep(0.02)
        assert max(held) == 3, held  # 1 running + 2 waiting for the slot, never more
        worker.signal(signal.SIGTERM)
        assert worker.wait(15) == 0, worker.log
        started = {m[1] for m in read_marks(marks) if m[0] == "start"}
        infos = client.status_many(ids)
    assert client.stats()["totals"]["in_progress"] == 0
    released = [t for t in infos if t.status == "pending" and t.attempt > 0]
    assert released and not {t.id for t in released} & started, "the waiting ones went back unstarted"
    assert all(t.retry_count == 0 for t in released)
    assert "released after" in worker.log


def test_over_tls_each_shard_connection_is_reached_by_alpn(server_factory, tls) -> None:
    """shardqs://: a TLS session cannot move after its handshake, so the per-shard connections
    name their shard in the ClientHello's ALPN offer; each lands there and no SUBMIT hops."""
    srv = server_factory("--shards", "2", env=tls.server_env())
    url = srv.url.replace("shardq://", "shardqs://")
    hops_before = None
    with shardq.Client(url, tls_ca=tls.ca_file) as client:
        hops_before = sum(int(r["forwarded"]) for r in client.stats()["shards"])
        ids = [client.submit("tls-spread") for _ in range(10)]
        assert [lane.info["shard"] for lane in client._lanes.values()] == [1 - client.shard]
        assert [owner(i, 2) for i in ids].count(0) == 5
        rows_ = {r["shard"]: r for r in client.stats()["shards"]}
        assert rows_[0]["pending"] == rows_[1]["pending"] == 5
        # (each GET_STATS asks the other shard once; nothing else crossed)
        assert sum(int(r["forwarded"]) for r in rows_.values()) - hops_before <= 2
