"""Background work of a real server: retention and sliced REQUEUE."""

from __future__ import annotations

import time

from shardq.protocol.frames import MsgType


def _dead_letter(conn, n: int, task_type: str) -> list[str]:
    ids: list[str] = []
    for start in range(0, n, 100):
        size = min(100, n - start)
        ids += conn.call(MsgType.SUBMIT, {"tasks": [
            {"type": task_type, "payload_len": 0, "max_retries": 0}] * size}).header["ids"]
    failed = 0
    while failed < n:
        tasks = conn.call(MsgType.CLAIM, {"worker_id": "w", "max": 100, "types": [task_type]}).header["tasks"]
        assert tasks, "every submitted task should be claimable"
        answer = conn.call(MsgType.RESULT, {"worker_id": "w", "results": [
            {"id": t["id"], "attempt": t["attempt"], "status": "failed", "error": "boom"} for t in tasks]})
        assert {r["status"] for r in answer.header["results"]} == {"dead_letter"}
        failed += len(tasks)
    return ids


def test_requeue_without_ids_runs_in_slices_and_requeues_everything(server_factory) -> None:
    srv = server_factory("--shards", "2")
    with srv.connect() as conn:
        ids = _dead_letter(conn, 450, "sliced")
        other = _dead_letter(conn, 30, "other")
        answer = conn.call(MsgType.REQUEUE, {"status": "dead_letter", "type": "sliced", "limit": 100000})
        assert answer.header["requeued"] == 450
        tasks = conn.call(MsgType.QUERY_STATUS, {"ids": ids + other}).header["tasks"]
        assert [t["status"] for t in tasks[:450]] == ["pending"] * 450
        assert all(t["retry_count"] == 0 for t in tasks[:450])
        assert [t["status"] for t in tasks[450:]] == ["dead_letter"] * 30  # other type untouched
        limited = conn.call(MsgType.REQUEUE, {"status": "dead_letter", "limit": 7})
        assert limited.header["requeued"] == 7


def test_retention_deletes_finished_tasks_and_keeps_the_rest(server_factory) -> None:
    srv = server_factory("--shards", "1", env={"SHARDQ_PERSISTENCE__COMPLETED_RETENTION_S": "1"})
    with srv.connect() as conn:
        done, cancelled, waiting = conn.call(MsgType.SUBMIT, {"tasks": [
            {"type": "keep", "payload_len": 0}, {"type": "x", "payload_len": 0},
            {"type": "y", "payload_len": 0, "delay_ms": 600_000}]}).header["ids"]
        task = conn.call(MsgType.CLAIM, {"worker_id": "w", "types": ["keep"]}).header["tasks"][0]
        conn.call(MsgType.RESULT, {"worker_id": "w", "results": [
            {"id": done, "attempt": task["attempt"], "status": "completed"}]})
        conn.call(MsgType.CANCEL, {"id": cancelled})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            found = conn.call(MsgType.QUERY_STATUS, {"ids": [done, cancelled, waiting]}).header["tasks"]
            if found[0] is None and found[1] is None:
                break
            time.sleep(0.2)
        assert found[0] is None and found[1] is None, "completed and cancelled tasks outlived retention"
        assert found[2] is not None and found[2]["status"] == "pending"
        totals = conn.call(MsgType.GET_STATS, {}).header["totals"]
        assert totals["completed"] == 0 and totals["cancelled"] == 0 and totals["pending"] == 1
