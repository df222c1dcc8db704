"""The wire framing of protocol v1: bytes in, messages out. No I/O.

Rule 1: this module knows the byte layout of a frame and nothing about what a
message means; request validation lives in ``requests.py``.
Rule 2: every malformed input ends in one of two ways: a ``Malformed`` event
(the frame was well delimited but its body was bad: the connection survives)
or a ``ProtocolViolation`` exception (the byte stream can no longer be
trusted: the connection must be closed after one NACK). Nothing else escapes.

    frame = length:u32 BE | type:u8 | body
    body  = header_len:u32 BE | header (UTF-8 JSON object) | blob
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import orjson

from shardq.errors import BadRequest, ProtocolViolation

# `length` counts the type byte and the body; 16 MiB is the largest valid value.
MAX_FRAME = 16 * 1024 * 1024
# A single payload or result; leaves headroom in a frame for the header.
MAX_PAYLOAD = 10 * 1024 * 1024
# Once a frame is consumed and nothing is left, a buffer that grew beyond this is dropped rather
# than kept for the next frame: one 16 MiB frame must not pin 16 MiB for the connection's life.
KEEP_BUFFER = 256 * 1024
PROTOCOL_VERSION = 1

_U32 = struct.Struct(">I")
_FRAME_HEAD = struct.Struct(">IBI")  # length, type, header_len


class MsgType(IntEnum):
    HELLO = 0x01
    SUBMIT = 0x02
    CLAIM = 0x03
    RESULT = 0x04
    HEARTBEAT = 0x05
    QUERY_STATUS = 0x06
    CANCEL = 0x07
    LIST_TASKS = 0x08
    GET_STATS = 0x09
    REGISTER_WORKER = 0x0A
    DEREGISTER_WORKER = 0x0B
    REQUEUE = 0x0C
    PING = 0x0D
    # insight: dead-letter triage, delete, search, per-type figures (docs/protocol.md)
    DLQ_GROUPS = 0x24
    DELETE = 0x25
    BULK = 0x26
    SEARCH = 0x27
    TYPE_STATS = 0x28
    # Per-type controls (feature "type-controls", protocol/controls.py): pause, resume, limits.
    PAUSE_TYPE = 0x10
    RESUME_TYPE = 0x11
    SET_LIMITS = 0x12
    GET_CONTROLS = 0x13
    # Periodic schedules (protocol/schedules.py, docs/protocol.md "Schedules").
    SCHEDULE_ADD = 0x1A
    SCHEDULE_LIST = 0x1B
    SCHEDULE_REMOVE = 0x1C
    SCHEDULE_PAUSE = 0x1D
    WORKER_CONTROL = 0x14  # extension worker_control: quiet or stop a worker (worker_control.py)
    EXPLAIN = 0x20  # why a task runs or not (server/insight.py)
    # Between shardq's own processes only (Unix sockets); never valid on the client port.
    REPORT = 0x40  # shard -> coordinator: depth, ready types, workers seen, stats
    STATE = 0x41  # coordinator -> shards: the others' depths and ready types
    WORKER_DEAD = 0x42  # coordinator -> shards: reclaim this worker's leases
    WORKER_ORDER = 0x46  # shard -> coordinator: quiet/stop this worker (answered: known or not)
    WORKER_ORDERS = 0x47  # coordinator -> shards: every standing quiet/stop order
    ACK = 0x80
    NACK = 0x81


# MsgType by its byte: an index instead of the enum's call (~1 µs) for every frame decoded.
_BY_BYTE: tuple[MsgType | None, ...] = tuple(
    MsgType(b) if b in MsgType._value2member_map_ else None for b in range(256))
INTERNAL_TYPES = frozenset((MsgType.REPORT, MsgType.STATE, MsgType.WORKER_DEAD,
                            MsgType.WORKER_ORDER, MsgType.WORKER_ORDERS))
REQUEST_TYPES = frozenset(t for t in MsgType if t < 0x80) - INTERNAL_TYPES
RESPONSE_TYPES = frozenset((MsgType.ACK, MsgType.NACK))


@dataclass(slots=True)
class Message:
    """One decoded frame. ``rid`` is the header's rid when it is a valid int."""

    type: MsgType
    header: dict[str, Any]
    blob: bytes = b""
    rid: int | None = field(default=None)


@dataclass(slots=True)
class RawFrame:
    """A well-delimited frame whose header is not parsed yet (``head``: its JSON, as bytes).
    ``parse_header`` makes it a Message; a server may decode the hot requests' headers
    straight into typed arguments instead (typed.py)."""

    type: MsgType
    head: bytes
    blob: bytes = b""


@dataclass(slots=True)
class Malformed:
    """A well-delimited frame whose body could not be read (answer BadRequest)."""

    type: MsgType
    rid: int | None
    error: BadRequest


def _valid_rid(value: Any) -> int | None:
    if type(value) is int and 0 <= value < 2**63:
        return value
    return None


def encode(msg_type: int, header: dict[str, Any], blob: bytes | bytearray | memoryview = b"") -> bytes:
    """One frame. The caller makes sure the result fits ``MAX_FRAME``."""
    head = orjson.dumps(header)
    length = 1 + 4 + len(head) + len(blob)
    if blob:
        return b"".join((_FRAME_HEAD.pack(length, msg_type, len(head)), head, blob))
    return _FRAME_HEAD.pack(length, msg_type, len(head)) + head


def frame_size(header: dict[str, Any], blob_len: int) -> int:
    """The `length` field a frame with this header and blob size would carry."""
    return 1 + 4 + len(orjson.dumps(header)) + blob_len


def encode_ack(rid: int | None, body: dict[str, Any], blob: bytes = b"") -> bytes:
    header = {"rid": rid}
    header.update(body)
    return encode(MsgType.ACK, header, blob)


def encode_nack(rid: int | None, code: str, message: str, **extra: Any) -> bytes:
    error = {"code": code, "message": message}
    error.update(extra)
    return encode(MsgType.NACK, {"rid": rid, "error": error})


class FrameDecoder:
    """Incremental decoder: ``feed`` bytes, then call ``next`` until it returns None.

    ``accept`` is the set of message types this side may receive: a server
    accepts requests, a client accepts ACK/NACK. Anything else, and any bad
    length, raises ``ProtocolViolation``; afterwards the decoder is dead.
    """

    __slots__ = ("_buf", "_pos", "_accept", "_max_frame", "dead")

    def __init__(self, accept: frozenset[int] = REQUEST_TYPES, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._accept = accept
        self._max_frame = max_frame
        self.dead = False

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes (they are decoded by ``next``)."""
        if self._pos:
            # Compact only when the consumed prefix is large, to keep feed O(n).
            if self._pos > 65536 or self._pos == len(self._buf):
                del self._buf[: self._pos]
                self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet decoded (a half-sent frame when > 0)."""
        return len(self._buf) - self._pos

    @property
    def head_length(self) -> int:
        """The `length` the next undecoded frame announces, 0 while fewer than 4 bytes of it
        are here (a server uses it to decide whether it will buffer that frame)."""
        if len(self._buf) - self._pos < 4:
            return 0
        return int(_U32.unpack_from(self._buf, self._pos)[0])

    @property
    def allocated(self) -> int:
        """Bytes the buffer holds from the allocator (for memory accounting)."""
        return self._buf.__alloc__()

    def buffered_bytes(self) -> bytes:
        """A copy of the bytes not decoded yet."""
        return bytes(self._buf[self._pos:])

    def take_rest(self) -> bytes:
        """Remove and return the bytes not decoded yet (a connection handed elsewhere)."""
        rest = bytes(self._buf[self._pos:])
        self._buf = bytearray()
        self._pos = 0
        return rest

    def next(self) -> Message | Malformed | None:
        """The next complete frame, or None when more bytes are needed."""
        frame = self.next_raw()
        if isinstance(frame, RawFrame):
            return parse_header(frame)
        return frame

    def next_raw(self) -> RawFrame | Malformed | None:
        """The next complete frame with its header left as bytes, or None when more bytes are
        needed. Bad lengths raise ``ProtocolViolation`` as in ``next``."""
        if self.dead:
            raise ProtocolViolation("decoder already failed")
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail < 5:
            if avail >= 4:
                self._check_length(_U32.unpack_from(buf, pos)[0])
            return None
        length = _U32.unpack_from(buf, pos)[0]
        self._check_length(length)
        msg_type = buf[pos + 4]
        if msg_type not in self._accept:
            self.dead = True
            if msg_type in RESPONSE_TYPES or msg_type in REQUEST_TYPES:
                raise ProtocolViolation(f"message type 0x{msg_type:02x} may not be sent by this side")
            raise ProtocolViolation(f"unknown message type 0x{msg_type:02x}")
        end = pos + 4 + length
        if len(buf) < end:
            return None
        self._pos = end
        if end == len(buf) and buf.__alloc__() > KEEP_BUFFER:
            self._buf = bytearray()  # the frame is cut below from ``buf``; then it is freed
            self._pos = 0
        # Accepted above, so a member: the table holds None only for bytes no MsgType has.
        mtype: MsgType = _BY_BYTE[msg_type]  # type: ignore[assignment]
        body_start = pos + 5
        body_len = length - 1
        if body_len < 4:
            return Malformed(mtype, None, BadRequest(f"frame body is {body_len} bytes; it needs at least 4 for header_len"))
        header_len = _U32.unpack_from(buf, body_start)[0]
        if header_len > body_len - 4:
            return Malformed(mtype, None, BadRequest(
                f"header_len {header_len} points past the body ({body_len - 4} bytes after header_len)"))
        h_start = body_start + 4
        blob_start = h_start + header_len
        view = memoryview(buf)  # one copy of each part (a bytearray slice would make two)
        head = bytes(view[h_start:blob_start])
        blob = bytes(view[blob_start:end]) if blob_start < end else b""
        view.release()  # ``buf`` may grow again on the next feed
        return RawFrame(mtype, head, blob)

    def _check_length(self, length: int) -> None:
        if length == 0 or length > self._max_frame:
            self.dead = True
            raise ProtocolViolation(
                f"frame length {length} is out of range (allowed: 1..{self._max_frame})")


def parse_header(frame: RawFrame) -> Message | Malformed:
    """A frame's header parsed as a JSON object (Malformed when it is not one)."""
    try:
        header = orjson.loads(frame.head)
    except orjson.JSONDecodeError as exc:
        return Malformed(frame.type, None, BadRequest(f"header is not UTF-8 JSON: {exc}"))
    if type(header) is not dict:
        return Malformed(frame.type, None, BadRequest(f"header must be a JSON object, got {type(header).__name__}"))
    return Message(frame.type, header, frame.blob, _valid_rid(header.get("rid")))


def split_blob(blob: bytes, lengths: list[int]) -> list[bytes]:
    """Cut a blob into the sections a header announced; sizes must add up exactly."""
    total = sum(lengths)
    if total != len(blob):
        raise BadRequest(f"blob is {len(blob)} bytes but the header announces {total}")
    if len(lengths) == 1:
        return [blob]
    out = []
    view = memoryview(blob)
    pos = 0
    for n in lengths:
        out.append(bytes(view[pos:pos + n]))
        pos += n
    return out
