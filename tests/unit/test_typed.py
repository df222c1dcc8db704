"""protocol/typed.py against the reference path (frames.parse_header + requests.py), no socket.

The one rule of typed.py: what it takes, the reference path takes too, with the same arguments;
everything else it leaves (None) to the reference path, which words the error. Hypothesis builds
headers from valid, odd and wrong values of every field and checks that rule on each.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardq.errors import WireError
from shardq.protocol import requests as rq
from shardq.protocol import typed
from shardq.protocol.frames import MAX_PAYLOAD, Message, MsgType, RawFrame, parse_header

ID = "0190a3c2-7b1e-7c3a-9d2f-5e8b6a4c1d00"

odd_ints = st.sampled_from([0, 1, 255, 256, -1, 1000, 1001, 60_000, 60_001, 2**32 - 1, 2**32,
                            2**63 - 1, 2**63, rq.MAX_DELAY_MS, rq.MAX_DELAY_MS + 1,
                            rq.MAX_TIMEOUT_SECONDS + 1])
anything = st.one_of(st.none(), st.booleans(), odd_ints, st.floats(allow_nan=False, allow_infinity=False),
                     st.text(max_size=5), st.lists(st.integers(), max_size=2), st.just({}))
ID2 = "ffffffff-0000-4000-8000-0123456789ab"
# Half valid, half each a different way not to be (the composite below adds more).
ids = st.one_of(st.sampled_from([ID, ID2]), st.sampled_from([
    ID.upper(), ID[:-1], ID + "\n", ID.replace("-", ""), " " + ID[1:], ID[:8] + "x" + ID[9:],
    ID[:9] + "-" + ID[10:], "g" + ID[1:], ID[:-1] + "\u00e9", ID[:-2] + " 0"]))
names = st.one_of(st.sampled_from(["email", "x" * 255, "\x00", "a\u2028b", "\u00e9" * 255]),
                  st.sampled_from(["", "x" * 256, "\u00e9" * 256]))


@st.composite
def mutated(draw: st.DrawFn, valid: dict[str, st.SearchStrategy[Any]]) -> dict[str, Any]:
    """An object of mostly valid fields (each present or not), then up to two of them dropped
    or given an odd value, and maybe an unknown field: near the edge, where bugs are."""
    d = {k: draw(v) for k, v in valid.items() if draw(st.booleans()) or k in ("type", "payload_len",
         "rid", "tasks", "worker_id", "results", "id", "attempt", "status")}
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        k = draw(st.sampled_from(sorted(valid)))
        if draw(st.booleans()):
            d.pop(k, None)
        else:
            d[k] = draw(anything)
    if draw(st.booleans()):
        d["some_future_field"] = draw(anything)
    return d


small = st.integers(0, 5)
tasks = mutated({"type": names, "payload_len": small, "priority": st.integers(0, 256),
                 "delay_ms": st.integers(0, 10), "scheduled_ms": st.one_of(st.none(), st.integers(0, 10)),
                 "max_retries": st.integers(0, 1001), "timeout_seconds": st.integers(1, 2),
                 "depends_on": st.lists(ids, max_size=2), "id": st.one_of(st.none(), ids)})
submits = mutated({"rid": odd_ints, "tasks": st.lists(tasks, max_size=3)})
claims = mutated({"rid": odd_ints, "worker_id": names, "max": st.integers(0, 1001),
                  "wait_ms": st.integers(0, 60_001), "types": st.lists(names, max_size=3)})
outcomes = mutated({"id": ids, "attempt": odd_ints, "status": st.sampled_from(["completed", "failed", "released", "done"]),
                    "result_len": small, "error": st.text(max_size=3), "retry": st.booleans()})
results = mutated({"rid": odd_ints, "worker_id": names, "results": st.lists(outcomes, max_size=4)})
encodings = st.sampled_from(["utf-8", "ascii"])  # UTF-8 as is, or every non-ASCII char \\u-escaped


def head(header: dict[str, Any], how: str) -> bytes:
    return json.dumps(header, ensure_ascii=how == "ascii").encode()


def blob_for(header: dict[str, Any], items: str, length: str, slack: int) -> bytes:
    """The blob the header announces (its valid lengths added up), ``slack`` bytes off."""
    listed = header.get(items)
    n = sum(x[length] for x in listed if isinstance(x, dict) and type(x.get(length)) is int
            and 0 <= x[length] <= 5 and x.get("status", "completed") == "completed"
            ) if isinstance(listed, list) else 0
    return b"b" * max(0, n + slack)


def reference(mtype: MsgType, head: bytes, blob: bytes, max_payload: int) -> tuple[Any, ...] | None:
    """The reference path's arguments, or None when it refuses the request."""
    msg = parse_header(RawFrame(mtype, head, blob))
    if not isinstance(msg, Message):
        return None
    try:
        rq.parse_rid(msg.header)
        rq.check_blob(mtype, msg.header, blob)
        if mtype is MsgType.SUBMIT:
            return msg.rid, rq.parse_submit(msg.header, blob, max_payload)
        if mtype is MsgType.CLAIM:
            return (msg.rid, *rq.parse_claim(msg.header))
        return (msg.rid, *rq.parse_result(msg.header, blob))
    except WireError:
        return None


HITS: dict[MsgType, int] = {}  # how many fuzzed requests the fast path took (see the last test)


def same(mtype: MsgType, raw: bytes, blob: bytes, max_payload: int = MAX_PAYLOAD) -> None:
    if mtype is MsgType.SUBMIT:
        fast = typed.submit(raw, blob, max_payload)
    elif mtype is MsgType.CLAIM:
        fast = typed.claim(raw, blob)
    else:
        fast = typed.result(raw, blob)
    if fast is not None:
        assert fast == reference(mtype, raw, blob, max_payload), raw
    HITS[mtype] = HITS.get(mtype, 0) + (fast is not None)


FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
slack = st.sampled_from([0, 0, 0, 1, -1])


@FUZZ
@given(submits, encodings, slack, st.sampled_from([MAX_PAYLOAD, 3]))
def test_submit_agrees_with_the_reference(header: dict[str, Any], how: str, off: int,
                                          max_payload: int) -> None:
    same(MsgType.SUBMIT, head(header, how), blob_for(header, "tasks", "payload_len", off), max_payload)


@FUZZ
@given(claims, encodings, st.sampled_from([b"", b"", b"x"]))
def test_claim_agrees_with_the_reference(header: dict[str, Any], how: str, blob: bytes) -> None:
    same(MsgType.CLAIM, head(header, how), blob)


@FUZZ
@given(results, encodings, slack)
def test_result_agrees_with_the_reference(header: dict[str, Any], how: str, off: int) -> None:
    same(MsgType.RESULT, head(header, how), blob_for(header, "results", "result_len", off))


# The lifecycle's own requests must take the fast path (else it is only a slower detour).
COMMON = [
    (MsgType.SUBMIT, {"rid": 1, "tasks": [{"type": "email", "payload_len": 2}] * 3}, b"ababab"),
    (MsgType.SUBMIT, {"rid": 2, "tasks": [{"type": "t", "payload_len": 0, "priority": 9, "delay_ms": 5,
                                           "max_retries": 2, "timeout_seconds": 30, "depends_on": [ID],
                                           "id": ID, "future_field": {"a": [1]}}]}, b""),
    (MsgType.CLAIM, {"rid": 3, "worker_id": "w", "max": 100, "wait_ms": 500, "types": ["email"]}, b""),
    (MsgType.CLAIM, {"rid": 4, "worker_id": "w"}, b""),
    (MsgType.RESULT, {"rid": 5, "worker_id": "w", "results": [
        {"id": ID, "attempt": 1, "status": "completed", "result_len": 2},
        {"id": ID, "attempt": 2, "status": "failed", "error": "boom", "retry": False},
        {"id": ID, "attempt": 3, "status": "released"}]}, b"ok"),
]


@pytest.mark.parametrize("mtype,header,blob", COMMON, ids=lambda v: getattr(v, "name", ""))
def test_common_requests_take_the_fast_path(mtype: MsgType, header: dict[str, Any], blob: bytes) -> None:
    raw = orjson.dumps(header)
    fast = (typed.submit(raw, blob, MAX_PAYLOAD) if mtype is MsgType.SUBMIT else
            typed.claim(raw, blob) if mtype is MsgType.CLAIM else typed.result(raw, blob))
    assert fast is not None
    assert fast == reference(mtype, raw, blob, MAX_PAYLOAD)


@pytest.mark.parametrize("raw", [
    b'{"rid":1,"worker_id":"w","junk":"\xff"}',  # msgspec would skip the bad UTF-8 unchecked
    '{"rid":1,"worker_id":"w\u00e9"}'.encode(),  # not ASCII: the reference path checks it whole
    b'{"rid":1,"worker_id":"w"} trailing', b'{"rid":1.0,"worker_id":"w"}', b'[1]', b'',
])
def test_what_the_fast_path_leaves_to_the_reference(raw: bytes) -> None:
    assert typed.claim(raw, b"") is None


def test_the_fuzzing_reached_the_fast_path() -> None:
    """Run after the fuzz tests above (file order): a good share of their requests were valid,
    so the comparison compared something."""
    if len(HITS) < 3:
        pytest.skip("run with the fuzz tests above")
    assert all(n >= 15 for n in HITS.values()), HITS
