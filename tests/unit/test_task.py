"""The task record: binary encoding, ids, ownership."""

from __future__ import annotations

import re
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardq.task import (
    RECORD_VERSION,
    STATUS_NAMES,
    TERMINAL,
    TIERS,
    Task,
    id_to_bytes,
    id_to_str,
    is_canonical_id,
    new_ids,
    owner_of,
    tier_of,
    tier_rank,
)

U8 = st.integers(0, 255)
U16 = st.integers(0, 2**16 - 1)
U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
# Text whose UTF-8 length stays within the u16 length fields (4 bytes per char at most).
TEXT = st.text(max_size=200)
RAW_ID = st.binary(min_size=16, max_size=16)
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.text(max_size=50),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                           max_leaves=10)

FIELDS = Task.__slots__


@st.composite
def tasks(draw) -> Task:
    return Task(
        id=draw(RAW_ID),
        type=draw(TEXT),
        priority=draw(U8),
        status=draw(st.integers(0, 5)),
        created_ms=draw(U64),
        scheduled_ms=draw(U64),
        seq=draw(U64),
        max_retries=draw(U16),
        timeout_seconds=draw(U32),
        payload_len=draw(U32),
        depends_on=tuple(draw(st.lists(RAW_ID, max_size=8))),
        updated_ms=draw(U64),
        started_ms=draw(U64),
        lease_expires_ms=draw(st.none() | U64),
        retry_count=draw(U16),
        attempt=draw(U32),
        result_len=draw(st.none() | U32),
        worker_id=draw(st.none() | TEXT),
        error=draw(st.none() | st.text(max_size=2000)),
        extras=draw(st.none() | st.dictionaries(st.text(max_size=20), JSON_VALUES, min_size=1, max_size=4)),
    )


def as_dict(task: Task) -> dict:
    return {name: getattr(task, name) for name in FIELDS}


@settings(max_examples=300, deadline=None)
@given(tasks())
def test_record_round_trip(task: Task) -> None:
    data = task.encode()
    assert data[0] == RECORD_VERSION
    back = Task.decode(task.id, data)
    assert as_dict(back) == as_dict(task)
    # Decoding is stable: encoding the decoded record gives the same bytes.
    assert back.encode() == data


def test_round_trip_keeps_none_apart_from_zero_and_empty() -> None:
    base = dict(id=b"\x01" * 16, type="t", priority=100, status=0, created_ms=5, scheduled_ms=5,
                seq=1, max_retries=3, timeout_seconds=300, payload_len=0)
    none = Task(**base)
    zero = Task(**base, lease_expires_ms=0, result_len=0, worker_id="", error="")
    a = Task.decode(none.id, none.encode())
    b = Task.decode(zero.id, zero.encode())
    assert (a.lease_expires_ms, a.result_len, a.worker_id, a.error) == (None, None, None, None)
    assert (b.lease_expires_ms, b.result_len, b.worker_id, b.error) == (0, 0, "", "")
    assert a.updated_ms == 5  # defaults to created_ms
    assert a.depends_on == ()


def test_extras_ride_after_an_inline_payload_and_cost_nothing_when_absent() -> None:
    base = dict(id=b"\x03" * 16, type="t", priority=100, status=0, created_ms=5, scheduled_ms=5,
                seq=1, max_retries=3, timeout_seconds=300, payload_len=3, inline_payload=b"abc",
                depends_on=(b"\xcc" * 16,))
    plain = Task(**base)
    rich = Task(**base, extras={"k": [1, "two", None]})
    back = Task.decode(rich.id, rich.encode())
    assert (back.inline_payload, back.depends_on, back.extras) == (b"abc", (b"\xcc" * 16,), {"k": [1, "two", None]})
    assert Task.decode(plain.id, plain.encode()).extras is None
    assert len(rich.encode()) > len(plain.encode()) == len(Task(**base, extras={}).encode())


def test_unicode_fields_round_trip() -> None:
    deps = (b"\xaa" * 16, b"\xbb" * 16, b"\x00" * 16)
    t = Task(b"\x02" * 16, "send_émail_📧", 255, 4, 1, 2, 3, 65535, 2**32 - 1, 2**32 - 1, deps,
             worker_id="wörker-日本", error="Traceback… ✗\n" * 100, result_len=7)
    back = Task.decode(t.id, t.encode())
    assert back.type == "send_émail_📧"
    assert back.worker_id == "wörker-日本"
    assert back.error == "Traceback… ✗\n" * 100
    assert back.depends_on == deps
    assert back.result_len == 7


def test_decode_refuses_other_record_version() -> None:
    t = Task(b"\x03" * 16, "t", 1, 0, 1, 1, 1, 1, 1, 0)
    data = bytearray(t.encode())
    data[0] = RECORD_VERSION + 1
    with pytest.raises(ValueError, match="version"):
        Task.decode(t.id, bytes(data))


def test_to_wire_hides_lease_unless_in_progress() -> None:
    t = Task(b"\x04" * 16, "t", 150, 0, 10, 10, 1, 3, 300, 12, (b"\x05" * 16,),
             worker_id="w", lease_expires_ms=99)
    wire = t.to_wire(shard=1)
    assert wire["status"] == "pending"
    assert wire["worker_id"] is None and wire["lease_expires_ms"] is None
    assert wire["depends_on"] == [id_to_str(b"\x05" * 16)]
    assert wire["shard"] == 1 and wire["payload_len"] == 12
    t.status = 1
    wire = t.to_wire(shard=0)
    assert wire["status"] == "in_progress"
    assert wire["worker_id"] == "w" and wire["lease_expires_ms"] == 99


def test_status_names_and_tiers() -> None:
    assert STATUS_NAMES == ("pending", "in_progress", "completed", "failed", "dead_letter", "cancelled")
    assert TERMINAL == {2, 4, 5}
    assert [tier_of(p) for p in (0, 99, 100, 199, 200, 255)] == ["low", "low", "normal", "normal",
                                                                   "high", "high"]
    assert [tier_rank(p) for p in (0, 99, 100, 199, 200, 255)] == [0, 0, 1, 1, 2, 2]
    assert all(TIERS[tier_rank(p)] == tier_of(p) for p in range(256))


# -- ids -----------------------------------------------------------------------

CANONICAL_V4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")


@pytest.mark.parametrize("shards", range(1, 17))
def test_new_ids_are_v4_and_owned_by_the_requested_shard(shards: int) -> None:
    for shard in range(shards):
        ids = new_ids(200, shard, shards)
        assert len(ids) == 200
        assert len(set(ids)) == 200
        for raw in ids:
            assert len(raw) == 16
            s = id_to_str(raw)
            assert CANONICAL_V4.match(s), s
            assert is_canonical_id(s)
            u = uuid.UUID(s)
            assert u.version == 4 and u.variant == uuid.RFC_4122
            assert owner_of(raw, shards) == shard


def test_new_ids_count_zero() -> None:
    assert new_ids(0, 0, 4) == []


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 16).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))))
def test_new_ids_ownership_any_shard(shards_and_shard) -> None:
    shards, shard = shards_and_shard
    for raw in new_ids(20, shard, shards):
        assert owner_of(raw, shards) == shard


def test_new_ids_head_near_top_of_range(monkeypatch) -> None:
    """A random head close to 2^32 must not overflow 4 bytes and still be owned."""
    import shardq.task as task_mod
    monkeypatch.setattr(task_mod.os, "urandom", lambda n: b"\xff" * n)
    monkeypatch.setattr(task_mod, "_random", task_mod._RandomPool())  # drop buffered bytes
    for shards in range(1, 17):
        for shard in range(shards):
            (raw,) = task_mod.new_ids(1, shard, shards)
            assert owner_of(raw, shards) == shard
            assert CANONICAL_V4.match(id_to_str(raw))
    monkeypatch.setattr(task_mod.os, "urandom", lambda n: b"\x00" * n)
    monkeypatch.setattr(task_mod, "_random", task_mod._RandomPool())
    for shards in range(1, 17):
        for shard in range(shards):
            (raw,) = task_mod.new_ids(1, shard, shards)
            assert owner_of(raw, shards) == shard


def test_owner_of_is_head_mod_shards() -> None:
    raw = (1000).to_bytes(4, "big") + b"\x00" * 12
    assert owner_of(raw, 1) == 0
    assert owner_of(raw, 7) == 1000 % 7
    assert owner_of(raw, 16) == 1000 % 16


@settings(max_examples=300, deadline=None)
@given(RAW_ID)
def test_id_round_trip(raw: bytes) -> None:
    s = id_to_str(raw)
    assert is_canonical_id(s)
    assert s == str(uuid.UUID(bytes=raw))
    assert id_to_bytes(s) == raw


@settings(max_examples=100, deadline=None)
@given(st.uuids())
def test_id_round_trip_from_str(u: uuid.UUID) -> None:
    s = str(u)
    assert id_to_str(id_to_bytes(s)) == s


@pytest.mark.parametrize("value", [
    "0123ABCD-0000-4000-8000-000000000000",        # uppercase
    "0123abcd-0000-4000-8000-00000000000A",
    "{0123abcd-0000-4000-8000-000000000000}",      # braces
    "0123abcd-0000-4000-8000-00000000000",         # short
    "0123abcd-0000-4000-8000-0000000000000",       # long
    "0123abcd00004000800000000000000000000",       # no dashes, 36 chars
    "0123abcd000040008000000000000000",            # hex only
    "urn:uuid:0123abcd-0000-4000-8000-000000000000",
    "0123abcd-0000-4000-8000-00000000000g",        # not hex
    "0123abcd-0000-4000-8000-000000000000\n",      # trailing newline
    " 0123abcd-0000-4000-8000-00000000000",
    "",
    None,
    123,
    b"0123abcd-0000-4000-8000-000000000000",       # bytes, not str
    uuid.UUID("0123abcd-0000-4000-8000-000000000000"),
])
def test_is_canonical_id_rejects(value) -> None:
    assert is_canonical_id(value) is False


def test_is_canonical_id_accepts_lowercase() -> None:
    assert is_canonical_id("0123abcd-0000-4000-8000-000000000000") is True
    assert is_canonical_id(str(uuid.uuid4())) is True
