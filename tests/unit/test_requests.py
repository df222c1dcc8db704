"""protocol/requests.py: the blob rule, which holds for every request type (no socket)."""

from __future__ import annotations

import pytest

from shardq.errors import BadRequest, ProtocolError
from shardq.protocol import requests as rq
from shardq.protocol import schedules as _schedules  # noqa: F401  (registers its field checks)
from shardq.protocol.frames import REQUEST_TYPES, MsgType

BLOBLESS = sorted(REQUEST_TYPES - rq.BLOB_REQUESTS)
VALID = {
    MsgType.HELLO: {"protocol": 1}, MsgType.PING: {}, MsgType.GET_STATS: {},
    MsgType.QUERY_STATUS: {"ids": []}, MsgType.CANCEL: {"id": "0" * 8 + "-0000-4000-8000-" + "0" * 12},
    MsgType.LIST_TASKS: {"status": "pending"}, MsgType.CLAIM: {"worker_id": "w"},
    MsgType.HEARTBEAT: {"worker_id": "w"}, MsgType.REGISTER_WORKER: {"worker_id": "w"},
    MsgType.DEREGISTER_WORKER: {"worker_id": "w"}, MsgType.REQUEUE: {},
    # insight (protocol/insight.py)
    MsgType.DLQ_GROUPS: {}, MsgType.DELETE: {"ids": ["0" * 8 + "-0000-4000-8000-" + "0" * 12]},
    MsgType.BULK: {"action": "requeue"}, MsgType.SEARCH: {}, MsgType.TYPE_STATS: {},
    MsgType.SCHEDULE_LIST: {}, MsgType.SCHEDULE_REMOVE: {"name": "n"},
    MsgType.SCHEDULE_PAUSE: {"name": "n", "paused": True},
    MsgType.WORKER_CONTROL: {"worker_id": "w", "action": "quiet"},
    MsgType.EXPLAIN: {"id": "0" * 8 + "-0000-4000-8000-" + "0" * 12},  # insight
}
VALID.update({MsgType.PAUSE_TYPE: {"type": "t"}, MsgType.RESUME_TYPE: {"type": "t"},  # type-controls
              MsgType.SET_LIMITS: {"type": "t", "rate": 1}, MsgType.GET_CONTROLS: {}})


def test_every_request_type_is_covered() -> None:
    assert rq.BLOB_REQUESTS == {MsgType.SUBMIT, MsgType.RESULT, MsgType.SCHEDULE_ADD}
    assert set(BLOBLESS) == set(VALID)


@pytest.mark.parametrize("mtype", BLOBLESS, ids=[m.name for m in BLOBLESS])
def test_blob_on_a_request_that_announces_none(mtype: MsgType) -> None:
    rq.check_blob(mtype, VALID[mtype], b"")
    with pytest.raises(BadRequest, match=r"^blob is 3 bytes but the header announces 0$"):
        rq.check_blob(mtype, VALID[mtype], b"abc")


@pytest.mark.parametrize("mtype", sorted(rq.BLOB_REQUESTS), ids=lambda m: m.name)
def test_blob_carriers_are_left_to_their_parsers(mtype: MsgType) -> None:
    rq.check_blob(mtype, {}, b"anything")  # parse_submit / parse_result cut and check it


def test_a_bad_field_is_reported_before_the_blob() -> None:
    with pytest.raises(BadRequest, match=r"^worker_id:"):
        rq.check_blob(MsgType.CLAIM, {}, b"x")
    with pytest.raises(BadRequest, match=r"^status:"):
        rq.check_blob(MsgType.LIST_TASKS, {"status": "nope"}, b"x")
    with pytest.raises(BadRequest, match=r"^paused:"):
        rq.check_blob(MsgType.SCHEDULE_PAUSE, {"name": "n"}, b"x")
    with pytest.raises(ProtocolError):
        rq.check_blob(MsgType.HELLO, {"protocol": 2}, b"x")
