"""SUBMIT, CLAIM and RESULT in one pass: header bytes -> typed arguments, or None.

Rules:
1. These three requests are every task's lifecycle, so their headers are decoded and validated
   in one step: msgspec parses the JSON straight into the Structs below, checking each type and
   range as it goes (no dict in between, no second walk over it).
2. This is a fast path, not a second contract. A header it does not take returns None: any
   decoding or validation error, a rule a Struct cannot say (delay_ms and scheduled_ms both,
   a payload over the limit, a blob that does not add up), or a header that is not ASCII. The
   caller then runs the reference path (``frames.parse_header`` and ``requests.py``), which takes
   the odd-but-valid and words every error, naming the field. So every error message is
   requests.py's, by construction.
3. Hence the one rule for this file: nothing here may take what requests.py refuses, or give
   other arguments for what both take (tests/unit/test_typed.py compares the two paths).
4. Unknown fields are ignored, as the protocol says (no ``forbid_unknown_fields``). msgspec skips
   them without checking the UTF-8 of their strings: a header that is not ASCII (rare: a
   non-ASCII type or worker id) goes to the reference path, which checks it whole. One
   difference remains: a number too large for a double (``1e400``) in a field the server
   ignores is ignored here, where orjson refuses the header.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from shardq.protocol import requests as rq
from shardq.specs import ResultItem, TaskSpec

Rid = Annotated[int, Meta(ge=0, le=rq.MAX_RID - 1)]
U32 = Annotated[int, Meta(ge=0, le=2**32 - 1)]
U63 = Annotated[int, Meta(ge=0, le=2**63 - 1)]
TypeName = Annotated[str, Meta(min_length=1, max_length=rq.MAX_TYPE_LEN)]
WorkerId = Annotated[str, Meta(min_length=1, max_length=rq.MAX_WORKER_ID_LEN)]
# A task id has 36 characters; whether they are canonical is checked for all ids of a request
# at once (``_ids``), cheaper than a pattern per id.
Id36 = Annotated[str, Meta(min_length=36, max_length=36)]



class _NewTask(msgspec.Struct):
    type: TypeName
    payload_len: U32
    priority: Annotated[int, Meta(ge=0, le=255)] | None = None
    delay_ms: Annotated[int, Meta(ge=0, le=rq.MAX_DELAY_MS)] | None = None
    scheduled_ms: U63 | None = None
    max_retries: Annotated[int, Meta(ge=0, le=rq.MAX_RETRIES)] | None = None
    timeout_seconds: Annotated[int, Meta(ge=1, le=rq.MAX_TIMEOUT_SECONDS)] | None = None
    depends_on: Annotated[list[Id36], Meta(max_length=1000)] | None = None
    id: Id36 | None = None
    # Task options (task_options.py): any of them sends the task to the reference path.
    expires_at_ms: Any = None
    ttl_ms: Any = None
    unique_key: Any = None
    unique_window_ms: Any = None


class _Submit(msgspec.Struct):
    rid: Rid
    tasks: Annotated[list[_NewTask], Meta(min_length=1, max_length=100_000)]


class _Claim(msgspec.Struct):
    rid: Rid
    worker_id: WorkerId
    max: Annotated[int, Meta(ge=1, le=rq.MAX_CLAIM)] | None = None
    wait_ms: Annotated[int, Meta(ge=0, le=rq.MAX_WAIT_MS)] | None = None
    types: Annotated[list[TypeName], Meta(max_length=1000)] | None = None
    dependency_results: Any = None  # set: the reference path (task_options.py)


class _Outcome(msgspec.Struct):
    id: Id36
    attempt: U32
    status: Literal["completed", "failed", "released"]
    result_len: U32 | None = None
    error: Annotated[str, Meta(max_length=rq.MAX_ERROR_LEN)] | None = None
    retry: bool | None = None


class _Result(msgspec.Struct):
    rid: Rid
    worker_id: WorkerId
    results: Annotated[list[_Outcome], Meta(max_length=10_000)]


_SUBMIT = msgspec.json.Decoder(_Submit)
_CLAIM = msgspec.json.Decoder(_Claim)
_RESULT = msgspec.json.Decoder(_Result)
_ERRORS = (msgspec.DecodeError, msgspec.ValidationError)


def _ids(ids: list[str]) -> list[bytes] | None:
    """36-character ids as 16 bytes each, checked and converted all at once (a few C-level
    string operations for the lot, not a regex per id); None when one is not canonical."""
    joined = "".join(ids)
    dashes = "-" * len(ids)
    if (joined.count("-") != 4 * len(ids) or joined[8::36] != dashes or joined[13::36] != dashes
            or joined[18::36] != dashes or joined[23::36] != dashes):
        return None
    digits = joined.replace("-", "")
    try:
        raw = bytes.fromhex(digits)
    except ValueError:
        return None
    if raw.hex() != digits:  # lowercase only, and no whitespace (which fromhex skips)
        return None
    return [raw[i:i + 16] for i in range(0, len(raw), 16)]


def _cut(blob: bytes, lengths: list[int]) -> list[bytes] | None:
    """``frames.split_blob`` for the fast path: None when the sizes do not add up."""
    if sum(lengths) != len(blob):
        return None
    if len(lengths) == 1:
        return [blob]
    if not blob:
        return [b""] * len(lengths)
    view = memoryview(blob)
    out = []
    pos = 0
    for n in lengths:
        out.append(bytes(view[pos:pos + n]))
        pos += n
    return out


def submit(head: bytes, blob: bytes, max_payload: int) -> tuple[int, list[TaskSpec]] | None:
    """SUBMIT's rid and tasks, or None (rule 2)."""
    if not head.isascii():
        return None
    try:
        req = _SUBMIT.decode(head)
    except _ERRORS:
        return None
    specs = []
    lengths = []
    for t in req.tasks:
        n = t.payload_len
        if n > max_payload or (t.delay_ms is not None and t.scheduled_ms is not None):
            return None
        if (t.expires_at_ms is not None or t.ttl_ms is not None or t.unique_key is not None
                or t.unique_window_ms is not None):
            return None
        lengths.append(n)
        deps: tuple[bytes, ...] = ()
        if t.depends_on:
            raws = _ids(t.depends_on)
            if raws is None:
                return None
            deps = tuple(raws)
        raw_id = None
        if t.id is not None:
            one = _ids([t.id])
            if one is None:
                return None
            raw_id = one[0]
        specs.append(TaskSpec(t.type, b"", t.priority, t.delay_ms, t.scheduled_ms, t.max_retries,
                              t.timeout_seconds, deps, raw_id))
    payloads = _cut(blob, lengths)
    if payloads is None:
        return None
    for spec, payload in zip(specs, payloads):
        spec.payload = payload
    return req.rid, specs


def claim(head: bytes, blob: bytes) -> tuple[int, str, int, int, list[str] | None] | None:
    """CLAIM's rid, worker_id, max, wait_ms and types, or None (rule 2)."""
    if blob or not head.isascii():
        return None
    try:
        req = _CLAIM.decode(head)
    except _ERRORS:
        return None
    if req.dependency_results is not None and req.dependency_results is not False:
        return None  # asked for (or not a boolean): the reference path
    return (req.rid, req.worker_id, 1 if req.max is None else req.max,
            0 if req.wait_ms is None else req.wait_ms, req.types)


def result(head: bytes, blob: bytes) -> tuple[int, str, list[ResultItem]] | None:
    """RESULT's rid, worker_id and items, or None (rule 2)."""
    if not head.isascii():
        return None
    try:
        req = _RESULT.decode(head)
    except _ERRORS:
        return None
    outcomes = req.results
    raws = _ids([r.id for r in outcomes])
    if raws is None:
        return None
    items = []
    lengths = []
    for r, raw in zip(outcomes, raws):
        status = r.status
        item = ResultItem(raw, r.attempt, status)
        n = 0
        if status == "completed":
            n = r.result_len or 0
        elif status == "failed":
            if r.error is None:
                return None
            item.error = r.error
            item.retry = r.retry is not False
        lengths.append(n)
        items.append(item)
    results = _cut(blob, lengths)
    if results is None:
        return None
    for item, data in zip(items, results):
        item.result = data
    return req.rid, req.worker_id, items
