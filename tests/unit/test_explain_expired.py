"""The explanation of a task its expiry dead-lettered (engine/explain.py ``expired``)."""

from __future__ import annotations

from shardq.engine.explain import explain


def facts(**over: object) -> dict:
    base = {"id": "7c16fdd2-c218-42d9-bf29-d33c66b3f7ac", "type": "offer", "status": "dead_letter",
            "shard": 0, "now_ms": 2_000_000, "priority": 100, "created_ms": 1_000_000,
            "updated_ms": 1_500_000, "scheduled_ms": 1_000_000, "started_ms": 0, "attempt": 0,
            "retry_count": 0, "max_retries": 3, "error": "expired", "result_len": None,
            "expires_at_ms": 1_500_000}
    base.update(over)
    return base


def test_an_expired_task_says_so_and_how_to_run_it_anyway() -> None:
    e = explain(facts())
    assert e["reason"] == "expired" and "without having started" in e["message"]
    assert "requeue" in e["message"] and e["details"]["expires_at_ms"] == 1_500_000


def test_other_dead_letters_keep_their_explanation() -> None:
    e = explain(facts(error="boom", attempt=4, retry_count=3))
    assert e["reason"] == "dead_lettered" and "last error: boom" in e["message"]
