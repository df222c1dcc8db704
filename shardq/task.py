"""The task: its persisted record, its binary encoding and its wire form.

Rule: this module knows the layout of one record and nothing about where it
is kept or how it changes state (that is ``engine/``). Payload and result bytes
are NOT part of the record: they are stored beside it, written once, so that a
state change rewrites ~100 bytes, never a 10 MiB payload.

Record layout (RECORD_VERSION 1), all integers big-endian:

    fixed   = version u8 | status u8 | priority u8 | flags u8
              | created_ms u64 | updated_ms u64 | scheduled_ms u64 | started_ms u64
              | lease_expires_ms u64 | seq u64
              | max_retries u16 | retry_count u16 | timeout_seconds u32 | attempt u32
              | payload_len u32 | result_len u32 | n_deps u16 | type_len u16
              | worker_len u16 | error_len u32
    tail    = type utf-8 | worker_id utf-8 | error utf-8 | n_deps x 16-byte ids
              | payload (payload_len bytes, only when flags has INLINE)
              | extras_len u32 | extras (JSON object, only when flags has EXTRAS)

``extras`` holds the optional fields of the features that most tasks do not use (expiry, unique
keys, history, ...), one key each, named in EXTRA_KEYS: a record without any pays nothing for
them, and a feature adds its key here instead of changing the fixed layout. Keep what goes there
small and bounded: the record is rewritten at every transition.

``flags`` says which optional fields are present (worker, lease, result, error,
inline payload). Payloads up to INLINE_PAYLOAD_MAX ride inside the record: one
RocksDB write fewer at SUBMIT and one read fewer at CLAIM, at the price of
copying them on each move (at most 4 KiB); larger ones are stored once beside it.

None survives a round trip. Bump RECORD_VERSION (and teach ``decode``
the old one) when the layout changes.
"""

from __future__ import annotations

import os
import re
import struct
from typing import Any

import orjson

RECORD_VERSION = 1

PENDING, IN_PROGRESS, COMPLETED, FAILED, DEAD_LETTER, CANCELLED = range(6)
STATUS_NAMES = ("pending", "in_progress", "completed", "failed", "dead_letter", "cancelled")
STATUS_CODES = {name: code for code, name in enumerate(STATUS_NAMES)}
TERMINAL = frozenset((COMPLETED, DEAD_LETTER, CANCELLED))

# Priority tiers as the protocol defines them: low 0-99, normal 100-199, high 200-255.
# In rank order: TIERS[tier_rank(p)] is the tier of priority p (a higher rank is served first).
TIERS = ("low", "normal", "high")
NORMAL_MIN_PRIORITY = 100
HIGH_MIN_PRIORITY = 200


def tier_rank(priority: int) -> int:
    """0, 1, 2 for a priority in the low, normal, high tier."""
    return 2 if priority >= HIGH_MIN_PRIORITY else 1 if priority >= NORMAL_MIN_PRIORITY else 0


def tier_of(priority: int) -> str:
    return TIERS[tier_rank(priority)]


_FIXED = struct.Struct(">BBBBQQQQQQHHIIIIHHHI")
_F_WORKER, _F_LEASE, _F_RESULT, _F_ERROR, _F_INLINE, _F_EXTRAS = 1, 2, 4, 8, 16, 32
_EXTRAS_LEN = struct.Struct(">I")
# Every key a record's ``extras`` may hold, with the feature that owns it (one line each).
EXTRA_KEYS: dict[str, str] = {
    "expires_at_ms": "expiry: not started by then (epoch ms), it is not run (engine/taskopts.py)",
    "unique_key": "unique tasks: the key it holds for its type (engine/taskopts.py)",
    "unique_window_ms": "unique tasks: how long the key stays held after it finished",
}
# The extras a task object shows (the task options a client set).
WIRE_EXTRAS = frozenset(("expires_at_ms", "unique_key", "unique_window_ms"))
INLINE_PAYLOAD_MAX = 4096

_CANONICAL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


def is_canonical_id(value: Any) -> bool:
    return type(value) is str and len(value) == 36 and _CANONICAL_ID.match(value) is not None


def id_to_bytes(task_id: str) -> bytes:
    """Canonical UUID string -> 16 bytes (the caller has checked the form)."""
    return bytes.fromhex(task_id.replace("-", ""))


def id_to_str(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def owner_of(raw_id: bytes, shards: int) -> int:
    """The shard that owns a task: a pure function of its id and the shard count."""
    return int.from_bytes(raw_id[:4], "big") % shards


class _RandomPool:
    """os.urandom in 4 KiB draws: one getrandom syscall per 256 ids instead of per
    SUBMIT (measured at 5 % of server CPU with one task per request)."""

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0

    def take(self, n: int) -> bytes:
        if self._pos + n > len(self._buf):
            self._buf = os.urandom(max(4096, n))
            self._pos = 0
        out = self._buf[self._pos:self._pos + n]
        self._pos += n
        return out


_random = _RandomPool()


def new_ids(count: int, shard: int, shards: int) -> list[bytes]:
    """Random version-4 UUIDs whose owner is ``shard``."""
    rnd = _random.take(16 * count)
    out = []
    for i in range(count):
        b = bytearray(rnd[16 * i:16 * i + 16])
        b[6] = (b[6] & 0x0F) | 0x40
        b[8] = (b[8] & 0x3F) | 0x80
        if shards > 1:
            head = int.from_bytes(b[:4], "big")
            head = head - head % shards + shard
            if head >= 1 << 32:
                head -= shards
            b[:4] = head.to_bytes(4, "big")
        out.append(bytes(b))
    return out


class Task:
    """One task's record (everything but its payload and result bytes)."""

    __slots__ = ("id", "type", "priority", "status", "created_ms", "updated_ms", "scheduled_ms",
                 "started_ms", "lease_expires_ms", "seq", "max_retries", "retry_count",
                 "timeout_seconds", "attempt", "payload_len", "result_len", "worker_id", "error",
                 "depends_on", "inline_payload", "extras")

    def __init__(self, id: bytes, type: str, priority: int, status: int, created_ms: int,
                 scheduled_ms: int, seq: int, max_retries: int, timeout_seconds: int,
                 payload_len: int, depends_on: tuple[bytes, ...] = (), updated_ms: int | None = None,
                 started_ms: int = 0, lease_expires_ms: int | None = None, retry_count: int = 0,
                 attempt: int = 0, result_len: int | None = None, worker_id: str | None = None,
                 error: str | None = None, inline_payload: bytes | None = None,
                 extras: dict[str, Any] | None = None) -> None:
        self.id = id
        self.type = type
        self.priority = priority
        self.status = status
        self.created_ms = created_ms
        self.updated_ms = created_ms if updated_ms is None else updated_ms
        self.scheduled_ms = scheduled_ms
        self.started_ms = started_ms
        self.lease_expires_ms = lease_expires_ms
        self.seq = seq
        self.max_retries = max_retries
        self.retry_count = retry_count
        self.timeout_seconds = timeout_seconds
        self.attempt = attempt
        self.payload_len = payload_len
        self.result_len = result_len
        self.worker_id = worker_id
        self.error = error
        self.depends_on = depends_on
        self.inline_payload = inline_payload
        self.extras = extras  # None, or a non-empty dict of EXTRA_KEYS (see the module docstring)

    def __repr__(self) -> str:
        return f"Task({id_to_str(self.id)} {self.type!r} {STATUS_NAMES[self.status]} p={self.priority})"

    def encode(self) -> bytes:
        t = self.type.encode()
        w = self.worker_id.encode() if self.worker_id is not None else b""
        e = self.error.encode() if self.error is not None else b""
        flags = ((_F_WORKER if self.worker_id is not None else 0)
                 | (_F_LEASE if self.lease_expires_ms is not None else 0)
                 | (_F_RESULT if self.result_len is not None else 0)
                 | (_F_ERROR if self.error is not None else 0)
                 | (_F_INLINE if self.inline_payload is not None else 0)
                 | (_F_EXTRAS if self.extras else 0))
        fixed = _FIXED.pack(
            RECORD_VERSION, self.status, self.priority, flags, self.created_ms, self.updated_ms,
            self.scheduled_ms, self.started_ms, self.lease_expires_ms or 0, self.seq,
            self.max_retries, self.retry_count, self.timeout_seconds, self.attempt,
            self.payload_len, self.result_len or 0, len(self.depends_on), len(t), len(w), len(e))
        inline = self.inline_payload or b""
        if self.extras:
            x = orjson.dumps(self.extras)
            return b"".join((fixed, t, w, e, *self.depends_on, inline, _EXTRAS_LEN.pack(len(x)), x))
        if self.depends_on:
            return b"".join((fixed, t, w, e, *self.depends_on, inline))
        return b"".join((fixed, t, w, e, inline))

    @classmethod
    def decode(cls, raw_id: bytes, data: bytes) -> Task:
        (version, status, priority, flags, created, updated, scheduled, started, lease, seq,
         max_retries, retry_count, timeout_s, attempt, payload_len, result_len, n_deps, type_len,
         worker_len, error_len) = _FIXED.unpack_from(data)
        if version != RECORD_VERSION:
            raise ValueError(f"task record version {version} is not supported (expected {RECORD_VERSION})")
        pos = _FIXED.size
        ttype = data[pos:pos + type_len].decode()
        pos += type_len
        worker = data[pos:pos + worker_len].decode() if flags & _F_WORKER else None
        pos += worker_len
        error = data[pos:pos + error_len].decode() if flags & _F_ERROR else None
        pos += error_len
        deps = tuple(data[pos + 16 * i:pos + 16 * i + 16] for i in range(n_deps))
        pos += 16 * n_deps
        inline = None
        if flags & _F_INLINE:
            inline = data[pos:pos + payload_len]
            pos += payload_len
        extras = None
        if flags & _F_EXTRAS:
            (n,) = _EXTRAS_LEN.unpack_from(data, pos)
            extras = orjson.loads(data[pos + 4:pos + 4 + n])
        return cls(raw_id, ttype, priority, status, created, scheduled, seq, max_retries, timeout_s,
                   payload_len, deps, updated, started, lease if flags & _F_LEASE else None,
                   retry_count, attempt, result_len if flags & _F_RESULT else None, worker, error,
                   inline, extras)

    def to_wire(self, shard: int) -> dict[str, Any]:
        """The task object of the protocol (PROTOCOL.md, "The task, as the wire shows it"), with
        its task options when it has any (protocol.md, "Task options")."""
        if self.extras:
            return {**self._wire(shard), **{k: v for k, v in self.extras.items() if k in WIRE_EXTRAS}}
        return self._wire(shard)

    def _wire(self, shard: int) -> dict[str, Any]:
        return {
            "id": id_to_str(self.id), "type": self.type, "priority": self.priority,
            "status": STATUS_NAMES[self.status], "created_ms": self.created_ms,
            "updated_ms": self.updated_ms, "scheduled_ms": self.scheduled_ms,
            "max_retries": self.max_retries, "retry_count": self.retry_count,
            "timeout_seconds": self.timeout_seconds,
            "worker_id": self.worker_id if self.status == IN_PROGRESS else None,
            "lease_expires_ms": self.lease_expires_ms if self.status == IN_PROGRESS else None,
            "attempt": self.attempt, "depends_on": [id_to_str(d) for d in self.depends_on],
            "error": self.error, "payload_len": self.payload_len, "result_len": self.result_len,
            "shard": shard,
        }
