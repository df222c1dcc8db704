"""The clients' side of task options (pure): the SUBMIT a Job with options makes, and the CLAIM
answer with dependency results cut into payloads and results."""

from __future__ import annotations

import pytest

from shardq.client import requests as rq
from shardq.client.models import Job
from shardq.protocol.frames import Message, MsgType
from shardq.protocol.task_options import unique_owner
from shardq.task import id_to_bytes, owner_of


def test_a_unique_job_gets_an_id_in_its_key_owners_partition():
    info = {"shard": 0, "shards": 5}
    header, _ = rq.submit_request([Job("t", unique_key=f"k{i}") for i in range(20)] + [Job("t")], info)
    for i, spec in enumerate(header["tasks"][:20]):
        assert owner_of(id_to_bytes(spec["id"]), 5) == unique_owner("t", f"k{i}", 5)
        assert spec["unique_key"] == f"k{i}"
    assert owner_of(id_to_bytes(header["tasks"][20]["id"]), 5) == 0  # a plain job: its lane's shard


def test_job_options_on_the_wire():
    spec, _ = Job("t", ttl=1.5, unique_key="k", unique_window=2).encode()
    assert (spec["ttl_ms"], spec["unique_key"], spec["unique_window_ms"]) == (1500, "k", 2000)
    spec, _ = Job("t", expires_at=1_900_000_000.25).encode()
    assert spec["expires_at_ms"] == 1_900_000_000_250 and "ttl_ms" not in spec
    with pytest.raises(ValueError, match="ttl or expires_at"):
        Job("t", ttl=1, expires_at=2).encode()


def _task(tid: str, payload_len: int, **extra):
    return {"id": tid, "type": "t", "priority": 100, "status": "in_progress", "created_ms": 0,
            "updated_ms": 0, "scheduled_ms": 0, "max_retries": 3, "retry_count": 0,
            "timeout_seconds": 300, "attempt": 1, "payload_len": payload_len, **extra}


def test_claim_answer_with_dependency_results_is_cut_payloads_first():
    a, b, c = "a" * 36, "b" * 36, "c" * 36
    tasks = [_task("1" * 36, 2, depends_on=[a, b],
                   dependency_results=[{"id": a, "result_len": 3}], dependency_results_omitted=[b]),
             _task("2" * 36, 1),
             _task("3" * 36, 0, depends_on=[c], dependency_results=[{"id": c, "result_len": 0}],
                   dependency_results_omitted=[])]
    msg = Message(MsgType.ACK, {"rid": 1, "tasks": tasks}, b"{}" + b"x" + b"AAA")
    one, two, three = rq.parse_claim(msg)
    assert (one.payload, two.payload, three.payload) == (b"{}", b"x", b"")
    assert one.dependency_results == {a: b"AAA"} and one.dependency_results_omitted == [b]
    assert two.dependency_results is None
    assert three.dependency_results == {c: b""}
    assert rq.claim_header("w", 1, 0, None, True)["dependency_results"] is True
    assert "dependency_results" not in rq.claim_header("w", 1, 0, None)
