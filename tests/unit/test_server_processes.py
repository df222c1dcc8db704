"""Decisions of the supervisor and the acceptor that a live server hits only by chance: a starting
child's ready pipe, and a handoff to a shard that just died (the rest runs in integration)."""

from __future__ import annotations

from typing import Any

from shardq.server.supervisor import read_ready


class FakePipe:
    def __init__(self, *messages: Any) -> None:
        self.messages = list(messages)

    def poll(self) -> bool:
        return bool(self.messages)

    def recv(self) -> Any:
        said = self.messages.pop(0)
        if isinstance(said, BaseException):
            raise said
        return said


def test_a_ready_sent_between_poll_and_liveness_check_is_not_a_death() -> None:
    pipe = FakePipe()

    def alive_and_says_ready_now() -> bool:
        pipe.messages.append("ready")  # arrives just after the poll
        return True

    assert read_ready(pipe, alive_and_says_ready_now) == ("starting", None)
    assert read_ready(pipe, lambda: True) == ("ready", "ready")


def test_ready_messages_and_deaths() -> None:
    assert read_ready(FakePipe({"metrics_port": 9091}), lambda: True) == ("ready", {"metrics_port": 9091})
    assert read_ready(FakePipe(EOFError()), lambda: True) == ("dead", None)
    assert read_ready(FakePipe("something else"), lambda: True) == ("dead", None)
    assert read_ready(FakePipe(), lambda: False) == ("dead", None)
    assert read_ready(FakePipe(), lambda: True) == ("starting", None)


# -- the acceptor's placement ------------------------------------------------------------------


def test_acceptor_places_on_the_next_shard_when_a_send_fails(monkeypatch) -> None:
    """A shard that died before the acceptor noticed fails the handoff; the connection goes to
    the next live shard instead of being refused."""
    import socket

    from shardq.config import load_config
    from shardq.server import acceptor as acceptor_mod

    sent: list[int] = []

    def send(channel: Any, fd: int, carried: bytes = b"", listener: int = 0) -> bool:
        sent.append(channel)
        return channel != 0  # "channel" 0 is the dead shard's

    monkeypatch.setattr(acceptor_mod, "send_connection", send)
    acc = acceptor_mod.Acceptor(load_config(env={}).broker.max_connections, None, "/nonexistent", 3)  # type: ignore[arg-type]
    acc.channels = [0, 1, None]  # type: ignore[list-item]  # shard 2 is not linked
    acc.counts = [0, 5, 0]
    a, b = socket.socketpair()
    with b:
        acc._place(a)
    assert sent == [0, 1] and acc.counts == [0, 6, 0] and acc.accepted == 1 and acc.refused == 0

    acc.channels = [0, None, None]  # type: ignore[list-item]
    a, b = socket.socketpair()
    with b:
        acc._place(a)
        assert b.recv(1024)  # the Unavailable NACK
    assert acc.refused == 1


def test_acceptor_counts_at_handoff_and_applies_the_shards_reports(monkeypatch) -> None:
    """The acceptor admits: a handoff takes a slot at once (a burst cannot outrun the count);
    a shard's reports free slots (closes) and move them (HELLO hints) without counting twice."""
    import socket

    from shardq.server import acceptor as acceptor_mod
    from shardq.server.handoff import Slots

    monkeypatch.setattr(acceptor_mod, "send_connection", lambda channel, fd, carried=b"", listener=0: True)
    acc = acceptor_mod.Acceptor(3, None, "/nonexistent", 2)  # type: ignore[arg-type]
    acc.channels = [0, 1]  # type: ignore[list-item]
    acc._account(0, Slots(0, 0, (0, 0)))  # first reports: the baselines
    acc._account(1, Slots(0, 0, (0, 0)))
    answers = []
    for _ in range(4):  # a burst: no report arrives in between
        a, b = socket.socketpair()
        with b:
            acc._place(a)
            b.setblocking(False)
            try:
                answers.append(b.recv(1024))
            except BlockingIOError:
                answers.append(b"")
    assert acc.accepted == 3 and acc.refused == 1 and sorted(acc.counts) == [1, 2]
    assert answers[:3] == [b"", b"", b""] and b"too many connections" in answers[3]

    acc.counts = [2, 1]
    acc._account(0, Slots(0, 0, (0, 1)))  # shard 0 passed one to shard 1: the slot moves
    assert acc.counts == [1, 2]
    acc._account(1, Slots(1, 1, (0, 0)))  # one closed on shard 1
    assert acc.counts == [1, 1]
    acc._account(1, Slots(1, 1, (0, 0)))  # a repeated report changes nothing
    assert acc.counts == [1, 1]
    acc.counts[1], acc.reports[1] = 0, None  # shard 1 went away (_keep_linked)...
    acc._account(0, Slots(0, 0, (0, 2)))  # ...so a connection passed to it is gone: slot freed
    assert acc.counts == [0, 0]
    acc._account(1, Slots(5, 0, (0, 0)))  # shard 1 linked again: its count is its baseline
    assert acc.counts == [0, 5]
