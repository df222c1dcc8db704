"""max_connections is for the whole server (PROTOCOL.md, connection rules): the acceptor admits.

Floods of connections, sequential and from parallel threads, each sending a PING and held
open, against --max-connections 50 on two shards: the ACKed PINGs (connections served at
once) never exceed the limit, the rest get the contract's NACK, and once the connections
close new ones are admitted again. Connections moved by the HELLO shard hint keep the slot
they were admitted with, and a shard that dies gives its connections' slots back.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import psutil
import pytest

from shardq.protocol.frames import RESPONSE_TYPES, FrameDecoder, MsgType, encode
from shardq.testing import ServerProcess

LIMIT = 50
TOO_MANY = {"rid": None, "error": {"code": "Unavailable", "message": "too many connections"}}


def first_answer(sock: socket.socket, timeout: float = 10.0) -> str:
    """'served' (an ACK), 'refused' (the contract's NACK) or what else came, for the first answer."""
    decoder = FrameDecoder(RESPONSE_TYPES)
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return "eof"
            decoder.feed(data)
            msg = decoder.next()
            if msg is not None:
                break
    except OSError as exc:
        return f"error: {exc}"
    if msg.type == MsgType.ACK:
        return "served"
    return "refused" if msg.header == TOO_MANY else f"nack: {msg.header}"


def opener(port: int, first: bytes = encode(MsgType.PING, {"rid": 1})):  # type: ignore[no-untyped-def]
    def open_one() -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(first)
        return sock
    return open_one


def flood(port: int, n: int, threads: int, *firsts: bytes) -> tuple[dict[str, int], list[socket.socket]]:
    """``n`` connections from ``threads`` threads, each sending its first frame at once (thread i:
    ``firsts[i % len(firsts)]``, a PING by default) and opening the next without waiting; then
    every first answer is read. Served connections stay open."""
    firsts = firsts or (encode(MsgType.PING, {"rid": 1}),)
    socks: list[list[socket.socket]] = [[] for _ in range(threads)]

    def run(mine: list[socket.socket], count: int, first: bytes) -> None:
        open_one = opener(port, first)
        for _ in range(count):
            mine.append(open_one())

    workers = [threading.Thread(target=run, args=(socks[i], n // threads + (i < n % threads),
                                                  firsts[i % len(firsts)]))
               for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    outcomes: dict[str, int] = {}
    held = []
    for sock in (s for mine in socks for s in mine):
        got = first_answer(sock)
        outcomes[got] = outcomes.get(got, 0) + 1
        if got == "served":
            held.append(sock)
        else:
            sock.close()
    return outcomes, held


def top_up(port: int, held: list[socket.socket], limit: int, within: float = 10.0) -> None:
    """Open connections one at a time until ``limit`` are served at once and one more is refused
    (slots of closed connections may take a moment to come back)."""
    open_one = opener(port)
    deadline = time.monotonic() + within
    while True:
        assert len(held) <= limit, f"{len(held)} connections served at once, limit {limit}"
        sock = open_one()
        got = first_answer(sock)
        if got == "served":
            held.append(sock)
            continue
        sock.close()
        assert got == "refused", got
        if len(held) == limit:
            return
        assert time.monotonic() < deadline, f"only {len(held)} of {limit} slots came back"
        time.sleep(0.05)


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()
    socks.clear()


@pytest.fixture
def limited(server_factory) -> ServerProcess:
    return server_factory("--shards", "2", "--max-connections", str(LIMIT))


@pytest.mark.parametrize("threads", [1, 20])
def test_a_flood_is_held_to_the_limit_across_shards(limited: ServerProcess, threads: int) -> None:
    outcomes, held = flood(limited.port, 4 * LIMIT, threads)
    try:
        # Each shard admitted connections of its own up to the limit before the fix: ~2x in all.
        assert outcomes == {"served": LIMIT, "refused": 3 * LIMIT}, outcomes
        close_all(held)
        # Every slot comes back, and the limit still holds (top_up asserts both).
        top_up(limited.port, held, LIMIT)
        close_all(held)
        outcomes, held = flood(limited.port, 4 * LIMIT, threads)
        assert outcomes.get("served", 0) <= LIMIT and set(outcomes) <= {"served", "refused"}, outcomes
        top_up(limited.port, held, LIMIT)
    finally:
        close_all(held)


def hello(shard: int) -> bytes:
    return encode(MsgType.HELLO, {"rid": 1, "protocol": 1, "client": "test_admission", "shard": shard})


def test_a_connection_moved_by_the_shard_hint_keeps_its_slot(limited: ServerProcess) -> None:
    """Connections moved by their HELLO hint are neither refused there nor counted twice."""
    outcomes, held = flood(limited.port, 4 * LIMIT, 4, hello(0), hello(1))
    try:
        # About half of them were placed on the other shard and moved: counted twice, they
        # would leave slots unused; freed by the move, they would let more than LIMIT in.
        assert outcomes == {"served": LIMIT, "refused": 3 * LIMIT}, outcomes
        top_up(limited.port, held, LIMIT)  # the limit is reached, and holds
        close_all(held)
        # Every connection asks for shard 1 now: the receiving shard's own guard must not refuse
        # any of the LIMIT that were admitted, and the slots of the moved ones came back.
        outcomes, held = flood(limited.port, 2 * LIMIT, 4, hello(1))
        assert outcomes.get("served", 0) <= LIMIT and set(outcomes) <= {"served", "refused"}, outcomes
        top_up(limited.port, held, LIMIT)
    finally:
        close_all(held)


def child_pid(server: ServerProcess, name: str) -> int:
    for p in psutil.Process(server.pid).children(recursive=True):
        if " ".join(p.cmdline()).startswith(f"shardq: {name}"):
            return p.pid
    raise AssertionError(f"no process {name}")


def test_a_shard_that_dies_gives_its_slots_back(limited: ServerProcess) -> None:
    outcomes, held = flood(limited.port, LIMIT + 10, 1, hello(1))
    try:
        assert outcomes == {"served": LIMIT, "refused": 10}, outcomes
        os.kill(child_pid(limited, "shard-1"), signal.SIGKILL)
        for sock in held:  # its connections die with it
            assert first_answer(sock, 10) in ("eof", "error: [Errno 104] Connection reset by peer")
        close_all(held)
        # Shard 0 serves meanwhile (and shard 1 once it is back): all the slots are free again.
        top_up(limited.port, held, LIMIT, within=20)
    finally:
        close_all(held)


def test_a_restarted_acceptor_counts_the_connections_the_shards_hold(limited: ServerProcess) -> None:
    outcomes, held = flood(limited.port, LIMIT, 4, hello(0), hello(1), encode(MsgType.PING, {"rid": 1}))
    try:
        assert outcomes == {"served": LIMIT}, outcomes
        old = child_pid(limited, "acceptor")
        os.kill(old, signal.SIGKILL)
        # Connections already handed over never notice; the new acceptor learns the shards'
        # counts from their first reports, so the server is still full.
        deadline = time.monotonic() + 20
        while True:
            sock = opener(limited.port)()
            got = first_answer(sock, 20)
            sock.close()
            if got == "refused" and child_pid(limited, "acceptor") != old:
                break
            assert got != "served", "a restarted acceptor admitted past the limit"
            assert time.monotonic() < deadline, got
            time.sleep(0.1)
        for sock in held[:5]:
            sock.sendall(encode(MsgType.PING, {"rid": 2}))
            assert first_answer(sock) == "served"
        for sock in held[:5]:
            sock.close()
        del held[:5]
        top_up(limited.port, held, LIMIT)  # the five slots came back, and no more
    finally:
        close_all(held)
