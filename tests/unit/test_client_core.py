"""ConnectionCore without sockets: bytes in, (waiter, answer, error) out."""

from __future__ import annotations

import pytest

from shardq.client.core import ConnectionClosed, ConnectionCore
from shardq.protocol.frames import MsgType, encode, encode_ack, encode_nack


def core_with(*names: str) -> tuple[ConnectionCore[str], dict[str, int]]:
    core: ConnectionCore[str] = ConnectionCore()
    rids = {name: core.request(MsgType.PING, {}, b"", name)[0] for name in names}
    return core, rids


def test_rids_are_fresh_and_the_frame_carries_them() -> None:
    core: ConnectionCore[str] = ConnectionCore()
    header: dict = {}
    rid1, data = core.request(MsgType.PING, header, b"", "a")
    rid2, _ = core.request(MsgType.PING, {}, b"", "b")
    assert (rid1, rid2) == (1, 2) and header["rid"] == 1
    assert data == encode(MsgType.PING, {"rid": 1})
    assert core.pending == {1: "a", 2: "b"}


def test_answers_resolve_by_rid_in_any_order() -> None:
    core, rids = core_with("a", "b")
    got = core.receive_data(encode_ack(rids["b"], {"x": 2}) + encode_ack(rids["a"], {"x": 1}))
    assert [(w, m.header["x"], e) for w, m, e in got] == [("b", 2, None), ("a", 1, None)]
    assert core.pending == {} and core.closed is None


def test_frames_split_anywhere_still_resolve() -> None:
    core, rids = core_with("a")
    data = encode_ack(rids["a"], {"pong": True})
    assert core.receive_data(data[:3]) == []
    (waiter, msg, exc), = core.receive_data(data[3:])
    assert waiter == "a" and msg is not None and msg.header["pong"] and exc is None


def test_a_nack_with_a_rid_resolves_only_its_request() -> None:
    core, rids = core_with("a", "b")
    (waiter, msg, _), = core.receive_data(encode_nack(rids["a"], "NotFound", "no task"))
    assert waiter == "a" and msg is not None and msg.type == MsgType.NACK
    assert list(core.pending.values()) == ["b"] and core.closed is None


def test_an_answer_to_a_forgotten_rid_is_dropped() -> None:
    core, rids = core_with("a")
    assert core.forget(rids["a"]) == "a"
    assert core.receive_data(encode_ack(rids["a"], {})) == []


def test_a_ridless_nack_fails_every_pending_request_and_a_non_closing_one_keeps_the_connection() -> None:
    core, _ = core_with("a", "b")
    got = core.receive_data(encode_nack(None, "BadRequest", "rid unreadable"))
    assert sorted(w for w, _, _ in got) == ["a", "b"]
    assert all(m is not None and m.header["error"]["code"] == "BadRequest" for _, m, _ in got)
    assert core.pending == {} and core.closed is None
    core.request(MsgType.PING, {}, b"", "c")  # still usable


@pytest.mark.parametrize("code", ["Unavailable"])
def test_too_many_connections_reaches_every_request(code: str) -> None:
    core, _ = core_with("hello")
    (waiter, msg, exc), = core.receive_data(encode_nack(None, code, "too many connections"))
    assert waiter == "hello" and msg is not None and msg.header["error"]["code"] == code and exc is None


@pytest.mark.parametrize("rid", [None, 1])
def test_a_closing_nack_closes_the_connection(rid: int | None) -> None:
    core, _ = core_with("a", "b")
    got = core.receive_data(encode_nack(rid, "Protocol", "bad frame"))
    by = {w: (m, e) for w, m, e in got}
    assert by["a"][0] is not None and by["a"][0].header["error"]["code"] == "Protocol"
    if rid is None:  # rid-less: every request gets the error itself
        assert by["b"][0] is not None and by["b"][0].header["error"]["code"] == "Protocol"
    else:  # the others fail because the connection is closing
        assert isinstance(by["b"][1], ConnectionClosed)
    assert core.closed is not None and "Protocol" in core.closed and core.pending == {}
    with pytest.raises(ConnectionClosed):
        core.request(MsgType.PING, {}, b"", "c")


def test_a_malformed_frame_closes_and_fails_all() -> None:
    core, _ = core_with("a")
    bad = b"\x00\x00\x00\x05" + bytes([MsgType.ACK]) + b"\xff\xff\xff\xff"
    got = core.receive_data(bad)
    assert core.closed is not None
    assert [(w, type(e)) for w, _, e in got] == [("a", ConnectionClosed)]


def test_lose_fails_every_pending_request() -> None:
    core, _ = core_with("a", "b")
    got = core.lose("connection lost: reset")
    assert sorted(w for w, _, _ in got) == ["a", "b"]
    assert all(isinstance(e, ConnectionClosed) and "reset" in str(e) for _, _, e in got)
    assert core.lose("again") == [] and core.closed == "connection lost: reset"
