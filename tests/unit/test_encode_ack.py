"""encode_ack writes the ACK header without building ``{"rid": rid, **body}``: the bytes must be
exactly those of encoding that dict, for every rid a server answers and any body."""

from __future__ import annotations

from typing import Any

import pytest

from shardq.protocol.frames import RESPONSE_TYPES, FrameDecoder, MsgType, encode, encode_ack

BODIES: list[tuple[dict[str, Any], bytes]] = [
    ({}, b""),
    ({"ids": ["0123456789abcdef0123456789abcdef"]}, b""),
    ({"tasks": [{"id": "ab", "attempt": 1, "payload_len": 3}]}, b"xyz"),
    ({"results": [], "note": "é \"quoted\""}, b""),
    ({"rid": 5, "x": 1}, b""),  # a body naming rid: the general path, as before
]


@pytest.mark.parametrize("rid", [0, 7, 2**63 - 1, None])
@pytest.mark.parametrize(("body", "blob"), BODIES)
def test_same_bytes_as_encoding_the_merged_header(rid: int | None, body: dict[str, Any], blob: bytes) -> None:
    header = {"rid": rid}
    header.update(body)
    frame = encode_ack(rid, body, blob)
    assert frame == encode(MsgType.ACK, header, blob)
    decoder = FrameDecoder(accept=RESPONSE_TYPES)
    decoder.feed(frame)
    msg = decoder.next()
    assert msg is not None and not hasattr(msg, "error")
    assert (msg.type, msg.header, msg.blob, msg.rid) == (MsgType.ACK, header, blob, rid if "rid" not in body else 5)
