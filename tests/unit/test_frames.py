"""The frame codec (shardq/protocol/frames.py): round trips, chunking, and every bad input.

Rule: no sockets here. Every test drives a FrameDecoder with bytes and checks
the one contract the server and the clients rely on: bytes in, ``Message`` /
``Malformed`` / ``None`` out, or ``ProtocolViolation`` (and a dead decoder).
Nothing else may escape, and no input makes ``next()`` loop forever.
"""

from __future__ import annotations

import struct

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardq.errors import BadRequest, ProtocolViolation
from shardq.protocol.frames import (
    MAX_FRAME,
    MAX_PAYLOAD,
    REQUEST_TYPES,
    RESPONSE_TYPES,
    FrameDecoder,
    Malformed,
    Message,
    MsgType,
    encode,
    encode_ack,
    encode_nack,
    frame_size,
    split_blob,
)

ALL_TYPES = frozenset(MsgType)
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies ------------------------------------------------------------------

# orjson round-trips: no surrogates in text, no NaN/inf, integers within 64 bits.
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
SCALARS = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | TEXT)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12)
RIDS = st.integers(0, 2**63 - 1)


@st.composite
def headers(draw) -> dict:
    h = draw(st.dictionaries(TEXT, JSON, max_size=5))
    h["rid"] = draw(RIDS)
    return h


BLOBS = st.binary(max_size=300)


@st.composite
def messages(draw, types=ALL_TYPES) -> Message:
    h = draw(headers())
    return Message(draw(st.sampled_from(sorted(types))), h, draw(BLOBS), h["rid"])


@st.composite
def chunked(draw, data: bytes) -> list[bytes]:
    """``data`` cut at random places (possibly into 1-byte pieces, possibly whole)."""
    if not data:
        return []
    cuts = sorted(draw(st.sets(st.integers(1, len(data) - 1), max_size=min(len(data), 40)))
                  if len(data) > 1 else set())
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def drain(dec: FrameDecoder, limit: int) -> list[Message | Malformed]:
    """Every complete frame now buffered. ``limit`` bounds the loop: each frame eats >= 5 bytes."""
    out = []
    for _ in range(limit):
        got = dec.next()
        if got is None:
            return out
        out.append(got)
    raise AssertionError(f"next() returned a frame {limit} times in a row: it does not advance")


def decode_all(chunks: list[bytes], accept=ALL_TYPES) -> list[Message | Malformed]:
    dec = FrameDecoder(accept=accept)
    out = []
    for c in chunks:
        dec.feed(c)
        out += drain(dec, len(c) + 1)
    assert dec.buffered == 0
    return out


def raw_frame(msg_type: int, body: bytes) -> bytes:
    """A frame with a hand-made body (header_len included or not: the caller decides)."""
    return struct.pack(">IB", 1 + len(body), msg_type) + body


def body(header: bytes, blob: bytes = b"", header_len: int | None = None) -> bytes:
    return struct.pack(">I", len(header) if header_len is None else header_len) + header + blob


PING = encode(MsgType.PING, {"rid": 7})


# -- round trips -------------------------------------------------------------------


@FAST
@given(messages())
def test_round_trip_every_type(msg: Message) -> None:
    frame = encode(msg.type, msg.header, msg.blob)
    assert struct.unpack_from(">I", frame)[0] == len(frame) - 4 == frame_size(msg.header, len(msg.blob))
    assert decode_all([frame]) == [msg]


@FAST
@given(messages(REQUEST_TYPES))
def test_round_trip_on_a_server_decoder(msg: Message) -> None:
    assert decode_all([encode(msg.type, msg.header, msg.blob)], accept=REQUEST_TYPES) == [msg]


@FAST
@given(st.one_of(RIDS, st.none()), st.dictionaries(st.sampled_from(["ids", "x", "tasks"]), JSON),
       BLOBS)
def test_ack_and_nack_round_trip_on_a_client_decoder(rid, body_: dict, blob: bytes) -> None:
    ack, nack = decode_all([encode_ack(rid, body_, blob),
                            encode_nack(rid, "QueueFull", "full", retry_after_ms=250)],
                           accept=RESPONSE_TYPES)
    assert ack == Message(MsgType.ACK, {"rid": rid, **body_}, blob, rid)
    assert nack == Message(MsgType.NACK, {"rid": rid, "error": {
        "code": "QueueFull", "message": "full", "retry_after_ms": 250}}, b"", rid)


def test_encode_takes_bytearray_and_memoryview_blobs() -> None:
    h = {"rid": 1}
    assert encode(MsgType.SUBMIT, h, bytearray(b"ab")) == encode(MsgType.SUBMIT, h, b"ab")
    assert encode(MsgType.SUBMIT, h, memoryview(b"ab")) == encode(MsgType.SUBMIT, h, b"ab")
    assert encode(MsgType.SUBMIT, h, b"") == encode(MsgType.SUBMIT, h)


@settings(FAST, max_examples=100)
@given(st.lists(messages(), min_size=1, max_size=8), st.data())
def test_a_stream_in_any_chunking_gives_the_same_messages_in_order(msgs, data) -> None:
    stream = b"".join(encode(m.type, m.header, m.blob) for m in msgs)
    assert decode_all(data.draw(chunked(stream))) == msgs


@settings(max_examples=30, deadline=None)
@given(st.lists(messages(), min_size=1, max_size=5))
def test_a_stream_fed_one_byte_at_a_time(msgs) -> None:
    stream = b"".join(encode(m.type, m.header, m.blob) for m in msgs)
    assert decode_all([stream[i:i + 1] for i in range(len(stream))]) == msgs


def test_feed_accepts_bytearray_and_memoryview() -> None:
    dec = FrameDecoder()
    dec.feed(bytearray(PING[:3]))
    dec.feed(memoryview(PING)[3:])
    assert dec.next() == Message(MsgType.PING, {"rid": 7}, b"", 7)


def test_many_frames_keep_the_buffer_bounded() -> None:
    """The consumed prefix is dropped as it grows: 10 MB through a decoder is not 10 MB kept."""
    dec = FrameDecoder()
    frame = encode(MsgType.SUBMIT, {"rid": 1}, b"x" * 1000)
    stream = frame * 10_000
    chunk = 1499  # never aligned with the frames: the buffer is rarely empty after a drain
    count = 0
    for i in range(0, len(stream), chunk):
        dec.feed(stream[i:i + chunk])
        count += len(drain(dec, chunk + 1))
        assert len(dec._buf) <= 65536 + chunk + len(frame)
    assert count == 10_000 and dec.buffered == 0


# -- a frame cut at every offset ------------------------------------------------------

SUBMIT_FRAME = encode(MsgType.SUBMIT, {"rid": 3, "tasks": [{"type": "t", "payload_len": 5}]}, b"hello")
SUBMIT_MSG = Message(MsgType.SUBMIT, {"rid": 3, "tasks": [{"type": "t", "payload_len": 5}]}, b"hello", 3)


@pytest.mark.parametrize("cut", range(len(SUBMIT_FRAME)))
def test_a_frame_cut_at_every_offset_waits_then_decodes(cut: int) -> None:
    dec = FrameDecoder()
    dec.feed(SUBMIT_FRAME[:cut])
    assert dec.next() is None
    assert dec.next() is None  # asking again changes nothing
    assert dec.buffered == cut
    assert not dec.dead
    dec.feed(SUBMIT_FRAME[cut:])
    assert dec.buffered == len(SUBMIT_FRAME)
    assert dec.next() == SUBMIT_MSG
    assert dec.buffered == 0
    assert dec.next() is None


def test_a_frame_fed_byte_by_byte_is_none_until_its_last_byte() -> None:
    dec = FrameDecoder()
    for i, byte in enumerate(SUBMIT_FRAME[:-1]):
        dec.feed(bytes([byte]))
        assert dec.next() is None
        assert dec.buffered == i + 1
    dec.feed(SUBMIT_FRAME[-1:])
    assert dec.next() == SUBMIT_MSG
    assert dec.buffered == 0


def test_buffered_counts_a_half_sent_frame_after_complete_ones() -> None:
    dec = FrameDecoder()
    dec.feed(PING + PING + SUBMIT_FRAME[:9])
    assert dec.buffered == 2 * len(PING) + 9
    assert dec.next().type is MsgType.PING
    assert dec.buffered == len(PING) + 9
    assert dec.next().type is MsgType.PING
    assert dec.next() is None
    assert dec.buffered == 9


# -- framing errors: ProtocolViolation, then a dead decoder ------------------------------


def assert_violation(data: bytes, accept=REQUEST_TYPES, match: str | None = None) -> FrameDecoder:
    dec = FrameDecoder(accept=accept)
    dec.feed(data)
    with pytest.raises(ProtocolViolation, match=match):
        dec.next()
    assert dec.dead
    with pytest.raises(ProtocolViolation):  # and it stays dead, whatever comes next
        dec.next()
    dec.feed(PING)
    with pytest.raises(ProtocolViolation):
        dec.next()
    return dec


@pytest.mark.parametrize("tail", [b"", b"\x01", b"\x01\x00\x00\x00\x02{}"])
def test_length_zero(tail: bytes) -> None:
    assert_violation(b"\x00\x00\x00\x00" + tail, match="frame length 0 ")


@pytest.mark.parametrize("tail", [b"", b"\x01", b"\x01\x00\x00\x00\x02{}"])
def test_length_one_over_the_limit(tail: bytes) -> None:
    # Detected as soon as the 4 length bytes are in: nobody waits for 16 MiB to refuse it.
    assert_violation(struct.pack(">I", MAX_FRAME + 1) + tail, match="16777217")


def test_length_far_over_the_limit() -> None:
    assert_violation(b"\xff\xff\xff\xff", match="4294967295")


def test_length_exactly_the_limit_is_waited_for_and_decoded() -> None:
    assert MAX_FRAME == 16_777_216
    header = {"rid": 1}
    blob = bytes(MAX_FRAME - 1 - 4 - len(orjson.dumps(header)))
    frame = encode(MsgType.SUBMIT, header, blob)
    assert len(frame) == 4 + MAX_FRAME
    dec = FrameDecoder()
    dec.feed(frame[:4])
    assert dec.next() is None
    dec.feed(frame[4:100])
    assert dec.next() is None
    assert not dec.dead
    assert dec.buffered == 100
    dec.feed(frame[100:])
    got = dec.next()
    assert type(got) is Message and got.rid == 1 and len(got.blob) == len(blob)


def test_max_frame_is_configurable() -> None:
    limit = len(PING) - 4
    dec = FrameDecoder(max_frame=limit)
    dec.feed(PING)
    assert dec.next().rid == 7
    small = FrameDecoder(max_frame=limit - 1)
    small.feed(PING[:4])
    with pytest.raises(ProtocolViolation, match=f"allowed: 1..{limit - 1}"):
        small.next()
    assert small.dead


@pytest.mark.parametrize("code", [0x00, 0x0E, 0x0F, 0x7F, 0x82, 0xFF])
def test_unknown_type(code: int) -> None:
    assert_violation(raw_frame(code, body(b'{"rid":1}')), match=f"unknown message type 0x{code:02x}")


@pytest.mark.parametrize("code", [0x0E, 0x7F, 0xFF])
def test_unknown_type_is_refused_before_its_body_arrives(code: int) -> None:
    assert_violation(struct.pack(">IB", 1000, code))


@pytest.mark.parametrize("code", [0x80, 0x81])
def test_a_response_type_sent_to_the_server(code: int) -> None:
    assert_violation(encode(code, {"rid": 1}), match=f"0x{code:02x} may not be sent")


@pytest.mark.parametrize("code", sorted(REQUEST_TYPES))
def test_a_client_decoder_refuses_request_types(code: int) -> None:
    assert_violation(encode(code, {"rid": 1}), accept=RESPONSE_TYPES, match="may not be sent")


def test_the_frames_before_a_violation_are_delivered() -> None:
    dec = FrameDecoder()
    dec.feed(PING + PING + b"\x00\x00\x00\x00")
    assert dec.next().rid == 7
    assert dec.next().rid == 7
    with pytest.raises(ProtocolViolation):
        dec.next()
    assert dec.dead


def test_request_and_response_type_sets() -> None:
    core = {MsgType(c) for c in range(0x01, 0x0E)}
    assert core <= REQUEST_TYPES
    # The extensions of protocol v1 (docs/protocol.md, "Extensions") take codes from 0x10 on.
    assert all(0x10 <= t < 0x40 for t in REQUEST_TYPES - core)
    assert RESPONSE_TYPES == {MsgType.ACK, MsgType.NACK}
    assert MAX_PAYLOAD == 10_485_760


# -- Malformed: a well-delimited frame with a bad body; the connection goes on -----------

MALFORMED_BODIES = {
    "empty body": b"",
    "1-byte body": b"\x00",
    "3-byte body": b"\x00\x00\x00",
    "header_len past the body": body(b'{"rid":1}', header_len=10),
    "header_len far past the body": body(b"", header_len=0xFFFFFFFF),
    "header_len past the body, with a blob": body(b'{"rid":1}', b"xy", header_len=12),
    "empty header": body(b""),
    "header not UTF-8": body(b'{"rid":1,"a":"\xff"}'),
    "header a UTF-8 surrogate": body(b'{"rid":1,"a":"\xed\xa0\x80"}'),
    "header with a BOM": body(b'\xef\xbb\xbf{"rid":1}'),
    "header not JSON": body(b"{rid:1}"),
    "header truncated JSON": body(b'{"rid":1'),
    "header JSON with trailing bytes": body(b'{"rid":1}x'),
    "header NaN": body(b"NaN"),
    "header a list": body(b'[{"rid":1}]'),
    "header a number": body(b"1"),
    "header a string": body(b'"rid"'),
    "header null": body(b"null"),
    "header true": body(b"true"),
    "header nested too deep": body(b"[" * 2000 + b"]" * 2000),
}


@pytest.mark.parametrize("name", MALFORMED_BODIES)
@pytest.mark.parametrize("separate_feeds", [False, True])
def test_malformed_frames_are_bad_requests_and_the_decoder_goes_on(name: str,
                                                                   separate_feeds: bool) -> None:
    bad = raw_frame(MsgType.SUBMIT, MALFORMED_BODIES[name])
    dec = FrameDecoder()
    dec.feed(bad if separate_feeds else bad + PING)
    got = dec.next()
    assert type(got) is Malformed
    assert got.type is MsgType.SUBMIT
    assert got.rid is None
    assert type(got.error) is BadRequest and got.error.code == "BadRequest"
    assert not dec.dead
    if separate_feeds:
        assert dec.buffered == 0
        dec.feed(PING)
    assert dec.next() == Message(MsgType.PING, {"rid": 7}, b"", 7)
    assert dec.next() is None


def test_malformed_messages_say_what_was_wrong() -> None:
    def error_of(b: bytes) -> str:
        dec = FrameDecoder()
        dec.feed(raw_frame(MsgType.HELLO, b))
        return dec.next().error.message

    assert "3 bytes" in error_of(b"\x00\x00\x00")
    assert "header_len 10 points past the body (9 bytes" in error_of(body(b'{"rid":1}', header_len=10))
    assert "not UTF-8 JSON" in error_of(body(b"{rid:1}"))
    assert "must be a JSON object, got list" in error_of(body(b"[]"))
    assert "got int" in error_of(body(b"1"))
    assert "got str" in error_of(body(b'"x"'))


def test_a_header_that_fills_the_body_exactly_has_an_empty_blob() -> None:
    dec = FrameDecoder()
    dec.feed(raw_frame(MsgType.PING, body(b'{"rid":2}')))
    assert dec.next() == Message(MsgType.PING, {"rid": 2}, b"", 2)


# -- rid -----------------------------------------------------------------------------------


def decode_header(header_json: bytes) -> Message:
    dec = FrameDecoder()
    dec.feed(raw_frame(MsgType.PING, body(header_json)))
    got = dec.next()
    assert type(got) is Message
    return got


@pytest.mark.parametrize("rid", [0, 1, 12345, 2**32, 2**63 - 1])
def test_a_valid_rid_is_kept(rid: int) -> None:
    assert decode_header(b'{"rid":%d}' % rid).rid == rid


@pytest.mark.parametrize("raw", [b"-1", b"-9223372036854775808", b"9223372036854775808",
                                 b"18446744073709551615", b"99999999999999999999999", b"true",
                                 b"false", b'"5"', b"1.0", b"5e0", b"null", b"[5]", b'{"rid":5}'])
def test_an_invalid_rid_is_none(raw: bytes) -> None:
    msg = decode_header(b'{"rid":' + raw + b"}")
    assert msg.rid is None
    assert "rid" in msg.header  # the header itself is left as sent, for the error message


def test_a_missing_rid_is_none() -> None:
    assert decode_header(b'{"id":5}').rid is None


@FAST
@given(st.one_of(st.integers(-(2**70), 2**70), st.booleans(), TEXT, st.floats(allow_nan=False, allow_infinity=False)))
def test_rid_is_kept_exactly_when_it_is_an_int_in_range(rid) -> None:
    msg = decode_header(orjson.dumps({"rid": rid}) if not (type(rid) is int and abs(rid) >= 2**63)
                        else b'{"rid":%d}' % rid)
    valid = type(rid) is int and 0 <= rid < 2**63
    assert msg.rid == (rid if valid else None)


# -- arbitrary bytes: only the allowed outcomes, never a hang -------------------------------


def feed_garbage(chunks: list[bytes], accept=REQUEST_TYPES, max_frame: int = MAX_FRAME) -> None:
    dec = FrameDecoder(accept=accept, max_frame=max_frame)
    for c in chunks:
        dec.feed(c)
        before = dec.buffered
        try:
            got = drain(dec, len(c) + before + 1)
        except ProtocolViolation:
            assert dec.dead
            with pytest.raises(ProtocolViolation):
                dec.next()
            return
        for g in got:
            assert type(g) in (Message, Malformed)
            assert g.type in accept
            if type(g) is Message:
                assert type(g.header) is dict and type(g.blob) is bytes
                assert g.rid is None or (type(g.rid) is int and 0 <= g.rid < 2**63)
            else:
                assert g.rid is None and type(g.error) is BadRequest
        assert 0 <= dec.buffered <= before
        assert not dec.dead


@FAST
@given(st.binary(max_size=400), st.data())
def test_arbitrary_bytes_in_arbitrary_chunks(data: bytes, d) -> None:
    feed_garbage(d.draw(chunked(data)))


@FAST
@given(st.binary(max_size=400), st.data())
def test_arbitrary_bytes_on_a_client_decoder_with_a_small_limit(data: bytes, d) -> None:
    feed_garbage(d.draw(chunked(data)), accept=RESPONSE_TYPES, max_frame=d.draw(st.integers(1, 300)))


HEADER_BYTES = st.one_of(
    st.binary(max_size=30),
    st.just(b'{"rid":1}'), st.just(b"[]"), st.just(b"{}"), st.just(b'"x"'), st.just(b"\xff"),
    headers().map(orjson.dumps),
)
TYPE_BYTES = st.one_of(st.sampled_from([0x00, 0x0E, 0x7F, 0x80, 0x81, 0xFF]),
                       st.sampled_from(sorted(REQUEST_TYPES)))


@st.composite
def near_frames(draw) -> bytes:
    """Frames that are right, or wrong in one or two places: the interesting garbage."""
    header = draw(HEADER_BYTES)
    blob = draw(st.binary(max_size=20))
    header_len = draw(st.one_of(st.just(len(header)), st.integers(0, 2**32 - 1)))
    b = struct.pack(">I", header_len) + header + blob
    b = b[:draw(st.integers(0, len(b)))] if draw(st.booleans()) else b
    length = draw(st.one_of(st.just(1 + len(b)), st.integers(0, 80), st.just(MAX_FRAME + 1)))
    return struct.pack(">IB", length, draw(TYPE_BYTES)) + b


@FAST
@given(st.lists(near_frames(), max_size=8), st.data())
def test_near_frames_in_arbitrary_chunks(frames: list[bytes], d) -> None:
    feed_garbage(d.draw(chunked(b"".join(frames))))


@FAST
@given(HEADER_BYTES, st.binary(max_size=20), st.sampled_from(sorted(REQUEST_TYPES)))
def test_a_well_delimited_frame_is_a_message_exactly_when_its_header_is_a_json_object(
        header: bytes, blob: bytes, msg_type: int) -> None:
    dec = FrameDecoder()
    dec.feed(raw_frame(msg_type, body(header, blob)) + PING)
    got = dec.next()
    try:
        parsed = orjson.loads(header)
    except orjson.JSONDecodeError:
        parsed = None
    if type(parsed) is dict:
        assert got == Message(MsgType(msg_type), parsed, blob, got.rid)
    else:
        assert type(got) is Malformed and got.rid is None
    assert dec.next().rid == 7  # the next frame starts where this one's length said


# -- split_blob ------------------------------------------------------------------------------


@FAST
@given(st.lists(st.binary(max_size=40), max_size=10))
def test_split_blob_gives_back_the_sections(sections: list[bytes]) -> None:
    blob = b"".join(sections)
    assert split_blob(blob, [len(s) for s in sections]) == sections


def test_split_blob_edge_cases() -> None:
    assert split_blob(b"", []) == []
    assert split_blob(b"", [0]) == [b""]
    assert split_blob(b"abc", [3]) == [b"abc"]
    assert split_blob(b"abc", [0, 3, 0]) == [b"", b"abc", b""]


@FAST
@given(st.binary(max_size=50), st.lists(st.integers(0, 60), max_size=6))
def test_split_blob_names_both_sizes_on_a_mismatch(blob: bytes, lengths: list[int]) -> None:
    if sum(lengths) == len(blob):
        lengths = [*lengths, 1]
    with pytest.raises(BadRequest) as info:
        split_blob(blob, lengths)
    assert info.value.code == "BadRequest"
    assert f"blob is {len(blob)} bytes" in info.value.message
    assert f"announces {sum(lengths)}" in info.value.message


def test_decoder_gives_back_the_buffer_of_a_large_frame() -> None:
    """A drained 4 MiB frame must not stay allocated for the connection's life."""
    from shardq.protocol.frames import FrameDecoder, MsgType, encode
    d = FrameDecoder()
    frame = encode(MsgType.SUBMIT, {"rid": 1}, b"x" * (4 * 1024 * 1024))
    for i in range(0, len(frame), 256 * 1024):
        d.feed(frame[i:i + 256 * 1024])
    msg = d.next()
    assert msg is not None and len(msg.blob) == 4 * 1024 * 1024
    assert d.next() is None
    assert d._buf.__alloc__() < 1024 * 1024, "the decoder kept the large frame's buffer"


def test_head_length_is_the_announced_length() -> None:
    from shardq.protocol.frames import FrameDecoder
    d = FrameDecoder()
    d.feed(b"\x00\x01")
    assert d.head_length == 0
    d.feed(b"\x00\x00\x02")
    assert d.head_length == 65536
