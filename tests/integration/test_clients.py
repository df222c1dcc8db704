"""``shardq.Client`` and ``shardq.AsyncClient`` against real `shardq serve` processes.

Most tests run once per client (``kind`` = sync / async): the AsyncClient is driven through
``Blocking``, which runs its coroutines on an event loop that keeps running in a thread of its
own, as an application's loop would, so that one test body checks both clients. Tests isolate
themselves on the shared server by task type and worker id; those that need exact broker-wide
figures, or kill the server, start their own.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import shardq
from shardq.client import requests as rq
from shardq.client.aio import AsyncClient
from shardq.client.aio_connection import AsyncConnection
from shardq.client.connection import ConnectionClosed
from shardq.client.models import Job, TaskCancelled, TaskFailed, WaitTimeout
from shardq.client.sync import Client
from shardq.errors import BadRequest, InvalidState, NotFound, QueueFull
from shardq.protocol.frames import REQUEST_TYPES, FrameDecoder, MsgType, encode_ack
from shardq.testing import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
KINDS = ("sync", "async")


def uid(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def new_id() -> str:
    return str(uuid.uuid4())


# -- driving the AsyncClient from a blocking test ----------------------------------------------


class Blocking:
    """An AsyncClient behind the blocking Client's interface. Its loop runs in its own thread
    all along (I/O events such as a server's close are handled between calls, as in an app)."""

    def __init__(self, client: AsyncClient) -> None:
        self.aclient = client
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def list(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        async def collect() -> list[Any]:
            return [t async for t in self.aclient.list(*args, **kwargs)]
        return iter(self.run(collect()))

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.aclient, name)
        if not asyncio.iscoroutinefunction(attr):
            return attr
        return lambda *args, **kwargs: self.run(attr(*args, **kwargs))

    def close(self) -> None:
        self.run(self.aclient.close())

    def dispose(self) -> None:
        """Close the client and stop its loop."""
        if not self.loop.is_closed():
            self.close()
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
            self.loop.close()


def open_client(kind: str, url: str, **options: Any) -> Any:
    return Client(url, **options) if kind == "sync" else Blocking(AsyncClient(url, **options))


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_client(kind: str) -> Iterator[Callable[..., Any]]:
    """Clients of this test's kind; closed at teardown."""
    made: list[Any] = []

    def make(url: str, **options: Any) -> Any:
        client = open_client(kind, url, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        getattr(client, "dispose", client.close)()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Two shards, short leases; the tests isolate themselves by task type and worker id."""
    srv = ServerProcess(str(tmp_path_factory.mktemp("data")),
                        ["--shards", "2", "--lease-timeout-ms", "3000", "--heartbeat-interval-ms", "5000"])
    srv.start()
    yield srv
    srv.kill()


@pytest.fixture
def client(shared_server: ServerProcess, make_client: Callable[..., Any]) -> Any:
    return make_client(shared_server.url, timeout=10)


def claim_one(client: Any, worker: str, task_type: str, wait: float = 5.0) -> Any:
    tasks = client.claim(worker, wait=wait, types=[task_type])
    assert len(tasks) == 1, tasks
    return tasks[0]


# -- the API, both clients --------------------------------------------------------------------


def test_ping_connect_and_close(shared_server: ServerProcess, make_client: Callable[..., Any]) -> None:
    client = make_client(shared_server.url)
    try:
        assert client.connect() is not None
        info = client.server_info
        assert info["protocol"] == 1 and info["shards"] == 2 and info["max_frame"] == 16 * 1024 * 1024
        assert "rid" not in info
        assert 0 < client.ping() < 1
    finally:
        client.close()
    client.close()  # twice is fine
    assert client.ping() > 0  # a closed client reconnects on its next call


def test_context_managers(shared_server: ServerProcess) -> None:
    with Client(shared_server.url) as client:
        assert client.ping() > 0
    assert client._conn is None

    async def main() -> None:
        async with AsyncClient(shared_server.url) as aclient:
            assert await aclient.ping() > 0
            conn = aclient._conn
        assert aclient._conn is None and conn is not None and conn.closed and conn.lost.done()

    asyncio.run(main())


def test_shard_hint_pins_the_connection(shared_server: ServerProcess,
                                        make_client: Callable[..., Any]) -> None:
    for shard in (0, 1, 1, 0):
        client = make_client(shared_server.url, shard=shard)
        client.connect()
        assert client.server_info["shard"] == shard
        ids = client.submit_many([Job(uid("pin"), b"x") for _ in range(20)])
        assert {int(i[:8], 16) % 2 for i in ids} == {shard}, "ids are made in that shard's partition"
    with pytest.raises(ValueError, match="shard must be an integer >= 0, got -1"):
        make_client(shared_server.url, shard=-1)


def test_submit_status_list_stats(client: Any) -> None:
    t = uid()
    ids = [client.submit(t, b"raw", priority=50),
           client.submit(t, "text", priority=150),
           client.submit(t, {"json": [1, 2]}, priority=250, max_retries=7, timeout=9)]
    assert len(set(ids)) == 3
    given = new_id()
    assert client.submit(t, id=given) == given
    ids.append(given)

    tasks = client.status_many(ids + [new_id()])
    assert tasks[-1] is None
    assert [x.id for x in tasks[:-1]] == ids and {x.status for x in tasks[:-1]} == {"pending"}
    assert [x.priority for x in tasks[:3]] == [50, 150, 250]
    assert tasks[2].max_retries == 7 and tasks[2].timeout_seconds == 9
    assert [x.payload_len for x in tasks[:3]] == [3, 4, len(b'{"json":[1,2]}')]
    assert client.status(new_id()) is None

    listed = [x.id for x in client.list("pending", type=t, page_size=1)]
    assert sorted(listed) == sorted(ids)
    assert len(list(client.list("pending", type=t, limit=2, page_size=1))) == 2
    assert {x.id for x in client.list("pending", type=t, min_priority=100, max_priority=199)} == {ids[1], ids[3]}
    assert list(client.list("completed", type=t)) == []

    stats = client.stats()
    assert "rid" not in stats
    assert stats["totals"]["pending"] >= 4 and len(stats["shards"]) == 2
    assert set(stats["totals"]["by_tier"]) == {"high", "normal", "low"}


def test_submit_many_and_delay_and_dependencies(client: Any) -> None:
    t = uid()
    parent = new_id()
    ids = client.submit_many([Job(t, b"p", id=parent), Job(t, b"c", depends_on=[parent]),
                              Job(t, b"later", delay=60), Job(t, b"at", at=time.time() + 60)])
    assert ids[0] == parent and len(set(ids)) == 4
    child, later, at = client.status_many(ids[1:])
    assert child.depends_on == [parent]
    assert later.scheduled_ms > time.time() * 1000 + 50_000 and at.scheduled_ms > time.time() * 1000 + 50_000
    w = uid("w")
    first = claim_one(client, w, t)
    assert first.id == parent  # the child waits for it, the others are not due
    assert client.claim(w, wait=0, types=[t]) == []
    client.complete(w, first)
    assert claim_one(client, w, t).id == ids[1]


def test_claim_heartbeat_complete_wait_json(client: Any) -> None:
    t, w = uid(), uid("w")
    payload = {"to": "a@example.com", "n": [1, 2, 3]}
    tid = client.submit(t, payload)
    task = claim_one(client, w, t)
    assert task.id == tid and task.status == "in_progress" and task.worker_id == w
    assert task.attempt == 1 and task.json() == payload
    expires, lost = client.heartbeat(w, active=[tid, new_id()], cpu_percent=3.5, memory_rss=1 << 20)
    assert expires > time.time() * 1000 and len(lost) == 1 and tid not in lost
    assert client.heartbeat(w)[1] == []
    outcome = client.complete(w, task, {"sent": True})
    assert outcome == {"id": tid, "status": "completed"}
    assert client.wait(tid, timeout=5) == b'{"sent":true}'
    done = client.status(tid, with_result=True)
    assert done.status == "completed" and done.result_json() == {"sent": True}
    assert client.status(tid).result is None  # without with_result


def test_fail_dead_letter_wait_raises_and_requeue(client: Any) -> None:
    t, w = uid(), uid("w")
    tid = client.submit(t, b"x", max_retries=3)
    task = claim_one(client, w, t)
    assert client.fail(w, task, "boom", retry=False) == {"id": tid, "status": "dead_letter"}
    with pytest.raises(TaskFailed) as failed:
        client.wait(tid, timeout=5)
    assert failed.value.task.error == "boom" and failed.value.task.status == "dead_letter"

    pending_id = client.submit(t, delay=60)
    out = client.requeue([tid, pending_id, new_id()])
    assert out["requeued"] == 1
    by_id = {r["id"]: r for r in out["results"]}
    assert by_id[tid] == {"id": tid, "status": "pending"}
    assert by_id[pending_id]["error"]["code"] == "InvalidState"
    assert [r for r in out["results"] if r["id"] not in (tid, pending_id)][0]["error"]["code"] == "NotFound"
    again = client.status(tid)
    assert again.status == "pending" and again.retry_count == 0
    assert client.requeue(type=uid("none")) == {"requeued": 0}


def test_fail_with_retry_goes_to_failed(client: Any) -> None:
    t, w = uid(), uid("w")
    tid = client.submit(t, max_retries=2)
    task = claim_one(client, w, t)
    assert client.fail(w, task, "transient") == {"id": tid, "status": "failed"}
    state = client.status(tid)
    assert state.status == "failed" and state.retry_count == 1 and state.error == "transient"
    assert client.requeue([tid], status="failed")["requeued"] == 1


def test_release_and_report_many(client: Any) -> None:
    t, w = uid(), uid("w")
    ids = client.submit_many([Job(t, str(i)) for i in range(3)])
    task = claim_one(client, w, t)
    assert client.release(w, task) == {"id": task.id, "status": "pending"}
    state = client.status(task.id)
    assert state.status == "pending" and state.retry_count == 0

    tasks = client.claim(w, max=3, wait=5, types=[t])
    assert sorted(x.id for x in tasks) == sorted(ids)
    assert sorted(x.payload for x in tasks) == [b"0", b"1", b"2"]
    a, b, c = tasks
    stale = rq.completed_item(a, b"")[0] | {"attempt": a.attempt + 5}
    results = client.report(w, [rq.completed_item(a, b"A"), rq.failed_item(b, "no", False),
                                rq.released_item(c), (stale, b"")])
    assert results[:3] == [{"id": a.id, "status": "completed"}, {"id": b.id, "status": "dead_letter"},
                           {"id": c.id, "status": "pending"}]
    assert results[3]["id"] == a.id and results[3]["error"]["code"] == "LeaseLost"
    assert client.wait(a.id, timeout=5) == b"A"


def test_cancel_wait_cancelled_and_errors(client: Any) -> None:
    t, w = uid(), uid("w")
    tid = client.submit(t, delay=60)
    assert client.cancel(tid) is None
    with pytest.raises(TaskCancelled) as cancelled:
        client.wait(tid, timeout=5)
    assert cancelled.value.task.id == tid
    with pytest.raises(InvalidState):
        client.cancel(tid)
    with pytest.raises(NotFound):
        client.cancel(new_id())
    with pytest.raises(NotFound):
        client.wait(new_id(), timeout=1)
    running = client.submit(t)
    claim_one(client, w, t)
    assert client.cancel(running) is None  # a running one too (extension cancel_running)
    with pytest.raises(TaskCancelled):
        client.wait(running, timeout=5)
    assert client.ping() > 0  # NACKs keep the connection


def test_wait_timeout(client: Any) -> None:
    tid = client.submit(uid(), delay=60)
    t0 = time.monotonic()
    with pytest.raises(WaitTimeout, match="still pending"):
        client.wait(tid, timeout=0.3, poll=0.05)
    assert 0.25 < time.monotonic() - t0 < 2


def test_bad_request_keeps_the_connection(client: Any) -> None:
    with pytest.raises(BadRequest):
        client.submit(uid(), priority=300)
    with pytest.raises(BadRequest):
        client.submit(uid(), id="NOT-A-UUID")
    with pytest.raises(BadRequest):
        client.claim(uid("w"), max=5000)
    with pytest.raises(BadRequest):
        client.status_many(["nope"])
    with pytest.raises(NotFound):
        client.submit(uid(), depends_on=[new_id()])
    assert client.ping() > 0


def test_queue_full_carries_retry_after(server_factory: Callable[..., ServerProcess],
                                        make_client: Callable[..., Any]) -> None:
    srv = server_factory("--shards", "1", "--queue-depth-threshold", "5")
    client = make_client(srv.url)
    t = uid()
    ids = client.submit_many([Job(t) for _ in range(4)])
    with pytest.raises(QueueFull) as full:
        client.submit_many([Job(t), Job(t)])  # 4 + 2 > 5: all or nothing
    assert isinstance(full.value.retry_after_ms, int) and full.value.retry_after_ms >= 0
    assert len(list(client.list("pending", type=t))) == 4
    ids.append(client.submit(t))
    with pytest.raises(QueueFull):
        client.submit(t)
    client.cancel(ids[0])
    client.submit(t)
    assert client.stats()["totals"]["pending"] == 5


def test_workers_register_deregister(client: Any) -> None:
    t, w = uid(), uid("w")
    client.register_worker(w, hostname="box", pid=4242, types=[t], concurrency=2)
    client.heartbeat(w, cpu_percent=12.5, memory_rss=123456, memory_percent=1.5)
    mine = [x for x in client.workers() if x["worker_id"] == w]
    assert len(mine) == 1
    assert mine[0]["hostname"] == "box" and mine[0]["pid"] == 4242 and mine[0]["types"] == [t]
    assert mine[0]["concurrency"] == 2 and mine[0]["cpu_percent"] == 12.5
    assert client.stats()["workers"] >= 1
    tid = client.submit(t)
    claim_one(client, w, t)
    assert client.deregister_worker(w) == 1
    assert client.status(tid).status == "pending"
    assert client.deregister_worker(uid("unknown")) == 0
    assert not [x for x in client.workers() if x["worker_id"] == w]


# -- reconnects and retries ----------------------------------------------------------------------


def test_same_client_survives_kill9_and_restart(server_factory: Callable[..., ServerProcess],
                                                make_client: Callable[..., Any]) -> None:
    srv = server_factory("--shards", "1")
    client = make_client(srv.url, timeout=10, retries=8)
    t = uid()
    tid = client.submit(t, b"before")
    cancel_me = client.submit(t, delay=60)
    srv.kill()
    srv.restart()
    assert srv.port == int(client.url.rsplit(":", 1)[1])
    assert client.status(tid).status == "pending"  # the acked task survived; the call reconnected
    client.cancel(cancel_me)  # not safe to repeat, but noticed the dead connection before sending

    # The server dies again and comes back while a SUBMIT is being retried with backoff.
    again = new_id()
    srv.kill()
    restarter = threading.Timer(0.3, srv.restart)
    restarter.start()
    try:
        assert client.submit(t, b"during", id=again) == again
    finally:
        restarter.join()
    assert client.submit(t, b"during", id=again) == again  # a repeat stores nothing new
    assert sorted(x.id for x in client.list("pending", type=t)) == sorted([tid, again])
    assert client.status(cancel_me).status == "cancelled"


class DroppingProxy:
    """A TCP proxy in front of a server that, once armed, forwards the next request but cuts the
    connection instead of forwarding the answer: the request took effect, its answer was lost."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.armed = threading.Event()
        self.dropped = 0
        self.connections = 0
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"shardq://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream)
            self.connections += 1
            self._socks += [down, up]
            threading.Thread(target=self._pump, args=(down, up, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, down, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, answers: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if answers and self.armed.is_set():
                    self.armed.clear()
                    self.dropped += 1
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()
        for s in self._socks:
            s.close()


@pytest.fixture
def proxy(shared_server: ServerProcess) -> Iterator[DroppingProxy]:
    p = DroppingProxy((shared_server.host, shared_server.port))
    yield p
    p.close()


def test_submit_whose_answer_was_lost_is_retried_without_duplicate(proxy: DroppingProxy,
                                                                   make_client: Callable[..., Any]) -> None:
    client = make_client(proxy.url, timeout=10)
    t = uid()
    client.ping()
    proxy.armed.set()
    tid = client.submit(t, b"once")  # stored, answer cut, retried on a new connection: same id
    assert proxy.dropped == 1 and proxy.connections == 2
    assert [x.id for x in client.list("pending", type=t)] == [tid]


def test_unsafe_call_whose_answer_was_lost_raises(proxy: DroppingProxy,
                                                  make_client: Callable[..., Any]) -> None:
    client = make_client(proxy.url, timeout=10)
    tid = client.submit(uid(), delay=60)
    proxy.armed.set()
    with pytest.raises(ConnectionClosed):
        client.cancel(tid)  # it did happen, but a CANCEL is not repeated blindly
    assert client.status(tid).status == "cancelled"  # and the next call reconnects


# -- timeouts -------------------------------------------------------------------------------------


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts connections (the kernel does, from the backlog) and never answers."""
    sock = socket.create_server(("127.0.0.1", 0), backlog=16)
    yield f"shardq://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def test_timeout_when_the_server_never_answers(silent_server: str, make_client: Callable[..., Any]) -> None:
    client = make_client(silent_server, timeout=0.3, retries=3)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        client.ping()  # retryable, but a timeout is not repeated: it raises after ~0.3 s
    assert time.monotonic() - t0 < 1.5
    with pytest.raises(TimeoutError):
        client.submit("x")


def test_per_call_timeout_keeps_the_client_usable(client: Any) -> None:
    w = uid("w")
    header = rq.claim_header(w, 1, 5.0, [uid("never")])
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        client.call(MsgType.CLAIM, header, timeout=0.2)
    assert time.monotonic() - t0 < 2
    assert client.ping() > 0
    t = uid()
    tid = client.submit(t)
    assert claim_one(client, uid("w"), t).id == tid


# -- AsyncClient only ----------------------------------------------------------------------------


@pytest.fixture(params=["asyncio", "uvloop"])
def run_loop(request: pytest.FixtureRequest) -> Callable[[Any], Any]:
    """asyncio.run on the default event loop, or on uvloop (the server's loop, a dependency)."""
    if request.param == "asyncio":
        return asyncio.run
    import uvloop
    return uvloop.run


def test_async_1000_concurrent_submits_on_one_connection(shared_server: ServerProcess,
                                                         run_loop: Callable[[Any], Any]) -> None:
    t = uid()

    async def main() -> None:
        async with AsyncClient(shared_server.url, timeout=30) as client:
            await client.connect()
            conn = client._conn
            given = [new_id() for _ in range(1000)]
            ids = await asyncio.gather(*(client.submit(t, {"i": i}, priority=i % 256, id=given[i])
                                         for i in range(1000)))
            assert ids == given and len(set(ids)) == 1000  # every answer went to its own caller
            assert client._conn is conn and not conn.core.pending  # one connection, nothing left over
            # Mixed requests in flight together, answered by rid.
            picks = list(range(0, 1000, 7))
            answers = await asyncio.gather(*(client.status(ids[i]) for i in picks),
                                           *(client.ping() for _ in range(50)))
            assert [a.id for a in answers[:len(picks)]] == [ids[i] for i in picks]
            assert [a.priority for a in answers[:len(picks)]] == [i % 256 for i in picks]
            assert len([x async for x in client.list("pending", type=t, page_size=1000)]) == 1000
            assert client._conn is conn

    run_loop(main())


def test_async_waiting_claim_does_not_block_other_calls(shared_server: ServerProcess,
                                                       run_loop: Callable[[Any], Any]) -> None:
    t, w = uid(), uid("w")

    async def main() -> None:
        async with AsyncClient(shared_server.url, timeout=10) as client:
            claim = asyncio.create_task(client.claim(w, wait=5, types=[t]))
            await asyncio.sleep(0.1)
            t0 = time.monotonic()
            for _ in range(20):
                await client.ping()
            await client.stats()
            tid = await client.submit(t, b"wake")
            assert time.monotonic() - t0 < 1 and client._conn is not None
            tasks = await asyncio.wait_for(claim, 3)
            assert [x.id for x in tasks] == [tid] and tasks[0].payload == b"wake"
            await client.complete(w, tasks[0], b"r")
            assert await client.wait(tid, timeout=5) == b"r"

    run_loop(main())


def test_async_call_timeout_drops_the_late_answer(shared_server: ServerProcess) -> None:
    async def main() -> None:
        async with AsyncClient(shared_server.url, timeout=10) as client:
            await client.connect()
            conn = client._conn
            with pytest.raises(TimeoutError):
                await client.call(MsgType.CLAIM, rq.claim_header(uid("w"), 1, 0.4, [uid("never")]),
                                  timeout=0.1)
            assert not conn.core.pending
            await asyncio.sleep(0.5)  # the empty CLAIM answer arrives now and is dropped
            assert await client.ping() > 0 and client._conn is conn

    asyncio.run(main())


def test_async_pending_calls_fail_with_connection_closed(server_factory: Callable[..., ServerProcess]) -> None:
    srv = server_factory("--shards", "1")

    async def main() -> None:
        async with AsyncClient(srv.url, timeout=10, retries=0) as client:
            await client.connect()
            claims = [asyncio.create_task(client.claim(uid("w"), wait=5, types=[uid()])) for _ in range(3)]
            await asyncio.sleep(0.2)
            await asyncio.to_thread(srv.kill)
            done = await asyncio.gather(*claims, return_exceptions=True)
            assert all(isinstance(x, ConnectionClosed) for x in done), done
            await asyncio.to_thread(srv.restart)
            assert await client.ping() > 0  # the next call reconnects

    asyncio.run(main())


def test_async_close_while_connecting_fails_the_callers(silent_server: str) -> None:
    async def main() -> None:
        client = AsyncClient(silent_server, timeout=5)
        calls = [asyncio.create_task(client.ping()) for _ in range(3)]
        await asyncio.sleep(0.1)  # connected, HELLO unanswered
        await client.close()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, ConnectionClosed) for r in results), results

    asyncio.run(main())


class StalledServer:
    """Answers HELLO and PING, then never reads again: the client's writes pile up."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conn: socket.socket | None = None
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        self.conn = conn
        decoder = FrameDecoder(accept=REQUEST_TYPES)
        while True:  # answer HELLO and PING; stop reading at the first SUBMIT
            while (msg := decoder.next()) is None:
                decoder.feed(conn.recv(1 << 16))
            if msg.type == MsgType.SUBMIT:
                return
            body = {"server": "stalled", "protocol": 1} if msg.type == MsgType.HELLO else {}
            conn.sendall(encode_ack(msg.rid, body))

    def close(self) -> None:
        self.listener.close()
        if self.conn is not None:
            self.conn.close()


def test_async_flow_control_bounds_the_write_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    stalled = StalledServer()
    peaks: list[int] = []
    pauses: list[int] = []
    real_send, real_pause = AsyncConnection.send, AsyncConnection.pause_writing

    def send(self: AsyncConnection, *args: Any) -> Any:
        fut = real_send(self, *args)
        assert self.transport is not None
        peaks.append(self.transport.get_write_buffer_size())
        return fut

    def pause(self: AsyncConnection) -> None:
        pauses.append(1)
        real_pause(self)

    monkeypatch.setattr(AsyncConnection, "send", send)
    monkeypatch.setattr(AsyncConnection, "pause_writing", pause)
    payload = b"x" * (128 * 1024)

    async def main() -> None:
        client = AsyncClient(f"shardq://127.0.0.1:{stalled.port}", timeout=30, retries=0)
        await client.connect()
        assert client.server_info["server"] == "stalled"
        burst = [asyncio.create_task(client.submit("t", payload)) for _ in range(2000)]  # 256 MB
        await asyncio.sleep(1.0)
        high = client._conn.transport.get_write_buffer_limits()[1]
        assert pauses, "the transport never paused"
        assert max(peaks) <= high + len(payload) + 4096  # high-water mark plus one frame
        assert len(peaks) < len(burst) / 2  # most callers wait in drain, nothing written
        stalled.close()
        results = await asyncio.gather(*burst, return_exceptions=True)
        assert all(isinstance(r, ConnectionClosed | OSError) for r in results)
        await client.close()

    try:
        asyncio.run(main())
    finally:
        stalled.close()


def test_async_big_burst_against_a_real_server(shared_server: ServerProcess) -> None:
    t = uid()
    payload = b"y" * (64 * 1024)

    async def main() -> None:
        async with AsyncClient(shared_server.url, timeout=60) as client:
            ids = await asyncio.gather(*(client.submit(t, payload) for _ in range(300)))  # ~20 MB
            assert len(set(ids)) == 300
            w = uid("w")
            got = 0
            while got < 300:
                tasks = await client.claim(w, max=100, wait=2, types=[t])
                assert tasks and all(x.payload == payload for x in tasks)
                await client.report(w, [rq.completed_item(x, b"") for x in tasks])
                got += len(tasks)

    asyncio.run(main())


def test_async_client_is_exported() -> None:
    assert shardq.AsyncClient is AsyncClient and shardq.Client is Client


# -- the blocking client under gevent -------------------------------------------------------------

GEVENT_SCRIPT = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()

    import json, socket, sys, time, uuid
    import gevent
    import gevent.socket
    from shardq import Client

    url, n = sys.argv[1], 20
    assert socket.socket is gevent.socket.socket, "not monkey-patched"
    prefix = uuid.uuid4().hex[:8]
    finished = {}

    def blocker():
        # A long waiting CLAIM in one greenlet must not hold up the others.
        with Client(url) as c:
            c.claim(f"blocker-{prefix}", wait=3, types=[f"never-{prefix}"])
        finished["blocker"] = time.monotonic()

    def work(i):
        kind, worker = f"{prefix}-{i}", f"w-{prefix}-{i}"
        with Client(url, timeout=10) as c:
            tid = c.submit(kind, {"i": i})
            [task] = c.claim(worker, wait=5, types=[kind])
            assert task.id == tid and task.json() == {"i": i}
            c.complete(worker, task, {"square": i * i})
            out = json.loads(c.wait(tid, timeout=5))
        finished[i] = time.monotonic()
        return out

    t0 = time.monotonic()
    b = gevent.spawn(blocker)
    gevent.sleep(0.05)
    workers = [gevent.spawn(work, i) for i in range(n)]
    gevent.joinall(workers + [b], raise_error=True, timeout=30)
    results = [g.value for g in workers]
    last_worker = max(finished[i] for i in range(n))
    print(json.dumps({"results": results, "workers_done_s": last_worker - t0,
                      "blocker_done_s": finished["blocker"] - t0}))
""")


def test_blocking_client_under_gevent(shared_server: ServerProcess) -> None:
    if importlib.util.find_spec("gevent") is None:
        pytest.skip("gevent is not installed (it belongs in the dev extra)")
    proc = subprocess.run([sys.executable, "-c", GEVENT_SCRIPT, shared_server.url], capture_output=True,
                          text=True, cwd=ROOT, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["results"] == [{"square": i * i} for i in range(20)]
    # All 20 finished while the blocker's 3 s CLAIM was still waiting: the sockets cooperate.
    assert out["workers_done_s"] < out["blocker_done_s"]
    assert out["blocker_done_s"] >= 2.9
