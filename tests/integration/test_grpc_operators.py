"""The operators' gRPC services (docs/grpc.md: Operators, Insight) and the task options of Submit,
against a real 2-shard server: every RPC is called and the broker's state is checked to have
changed (a paused type is not claimed, a schedule is listed, a dead-letter group is requeued, a
worker hears its quiet order), and errors come back with the status table's codes."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest
from grpc_helpers import Api, details, failure, grpc_port, serving, until

from shardq.testing import ServerProcess
from shardq.v1 import insight_pb2 as ipb
from shardq.v1 import insight_pb2_grpc, operators_pb2_grpc, task_pb2, tasks_pb2, workers_pb2
from shardq.v1 import operators_pb2 as opb

SC = grpc.StatusCode


class Ops(Api):
    """The base stubs plus Operators (``o``) and Insight (``i``)."""

    def __init__(self, channel: grpc.Channel) -> None:
        super().__init__(channel)
        self.operators = operators_pb2_grpc.OperatorsStub(channel)
        self.insight = insight_pb2_grpc.InsightStub(channel)

    def o(self, name: str, request: Any) -> Any:
        return getattr(self.operators, name)(request, timeout=30)

    def i(self, name: str, request: Any) -> Any:
        return getattr(self.insight, name)(request, timeout=30)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    d = tmp_path_factory.mktemp("grpcops")
    srv = ServerProcess(str(d / "data"), ["--shards", "2", "--grpc-port", "0"]).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port(srv)}")
    ops = Ops(channel)
    until(lambda: serving(ops), what="health SERVING")
    yield ops
    channel.close()
    srv.kill()


def submit(api: Ops, type: str, **kw: Any) -> tasks_pb2.SubmitResponse:
    return api.t("Submit", tasks_pb2.SubmitRequest(task=task_pb2.TaskSpec(type=type, payload=b"{}", **kw)))


def claim(api: Ops, worker: str, type: str, wait_ms: int = 0, max: int = 10) -> list[task_pb2.Task]:
    got = api.w("Claim", workers_pb2.ClaimRequest(worker_id=worker, max=max, wait_ms=wait_ms, types=[type]))
    return [c.task for c in got.tasks]


def statuses(api: Ops, ids: list[str]) -> list[str]:
    return [t.task.status for t in api.t("GetTasks", tasks_pb2.GetTasksRequest(ids=ids)).tasks]


def test_every_service_is_served_and_healthy(api: Ops) -> None:
    for service in ("shardq.v1.Operators", "shardq.v1.Insight"):
        assert serving(api, service)


def test_pause_limits_and_controls(api: Ops) -> None:
    paused = api.o("PauseType", opb.PauseTypeRequest(type="ops.p"))
    assert paused.control.type == "ops.p" and paused.control.paused
    tid = submit(api, "ops.p").id
    # A paused type is not handed out, and Explain says why.
    assert claim(api, "ops-w", "ops.p", wait_ms=300) == []
    assert api.i("Explain", ipb.TaskRef(id=tid)).reason == "paused"
    answer = api.o("GetControls", opb.GetControlsRequest(type="ops.p"))
    rows = answer.controls
    assert list(answer.shards_down) == []
    assert [r.control.paused for r in rows] == [True] and rows[0].ready == 1 and len(rows[0].shards) == 2
    limited = api.o("SetLimits", opb.SetLimitsRequest(type="ops.p", max_concurrency=1, rate=50.0))
    assert limited.control.max_concurrency == 1 and limited.control.rate == 50.0 and limited.control.paused
    resumed = api.o("ResumeType", opb.ResumeTypeRequest(type="ops.p"))
    assert not resumed.control.paused and resumed.control.version > limited.control.version
    got = until(lambda: claim(api, "ops-w", "ops.p", wait_ms=1000), what="claimed once resumed")
    assert [t.id for t in got] == [tid]
    cleared = api.o("SetLimits", opb.SetLimitsRequest(type="ops.p", clear_max_concurrency=True, clear_rate=True))
    assert not cleared.control.HasField("max_concurrency") and not cleared.control.HasField("rate")
    everything = {r.control.type for r in api.o("GetControls", opb.GetControlsRequest()).controls}
    assert "ops.p" not in everything  # no control left: no row
    err = failure(lambda: api.o("ResumeType", opb.ResumeTypeRequest(type="ops.p")))
    assert err.code() is SC.FAILED_PRECONDITION and details(err)["ErrorInfo"].reason == "InvalidState"
    err = failure(lambda: api.o("SetLimits", opb.SetLimitsRequest(type="ops.p", rate=1.0, clear_rate=True)))
    assert err.code() is SC.INVALID_ARGUMENT and details(err)["BadRequest"].field_violations[0].field == "rate"
    err = failure(lambda: api.o("SetLimits", opb.SetLimitsRequest(type="ops.p", burst=5)))
    assert err.code() is SC.INVALID_ARGUMENT  # a burst without a rate: the shards' check


def test_schedules(api: Ops) -> None:
    added = api.o("AddSchedule", opb.AddScheduleRequest(name="ops-nightly", type="ops.report", payload=b'{"f":1}',
                                                        cron="30 2 * * *", timezone="Europe/Paris",
                                                        misfire="once", priority=7))
    assert added.name == "ops-nightly" and added.priority == 7 and added.next_ms > time.time() * 1000
    assert added.timezone == "Europe/Paris" and not added.paused and added.payload_len == 7
    every = api.o("AddSchedule", opb.AddScheduleRequest(name="ops-often", type="ops.tick", every_ms=60000))
    assert every.every_ms == 60000 and every.cron == ""
    answer = api.o("ListSchedules", opb.ListSchedulesRequest())
    assert list(answer.unavailable_shards) == []  # both shards answered
    listed = {s.name: s for s in answer.schedules}
    assert {"ops-nightly", "ops-often"} <= set(listed) and listed["ops-nightly"].misfire == "once"
    one = api.o("GetSchedule", opb.ScheduleName(name="ops-nightly"))
    assert one.payload == b'{"f":1}' and one.type == "ops.report"
    assert api.o("PauseSchedule", opb.ScheduleName(name="ops-often")).paused
    assert api.o("GetSchedule", opb.ScheduleName(name="ops-often")).paused
    assert not api.o("ResumeSchedule", opb.ScheduleName(name="ops-often")).paused
    err = failure(lambda: api.o("AddSchedule", opb.AddScheduleRequest(name="ops-often", type="x", every_ms=60000)))
    assert err.code() is SC.FAILED_PRECONDITION  # exists, and replace is not set
    replaced = api.o("AddSchedule", opb.AddScheduleRequest(name="ops-often", type="ops.tick", every_ms=120000,
                                                           replace=True))
    assert replaced.every_ms == 120000
    api.o("RemoveSchedule", opb.ScheduleName(name="ops-often"))
    assert "ops-often" not in {s.name for s in api.o("ListSchedules", opb.ListSchedulesRequest()).schedules}
    assert failure(lambda: api.o("GetSchedule", opb.ScheduleName(name="ops-often"))).code() is SC.NOT_FOUND
    err = failure(lambda: api.o("AddSchedule", opb.AddScheduleRequest(name="ops-bad", type="x", cron="nope")))
    assert err.code() is SC.INVALID_ARGUMENT and details(err)["BadRequest"].field_violations[0].field == "cron"


def test_quiet_and_stop_a_worker(api: Ops) -> None:
    w = "ops-quiet"
    api.w("RegisterWorker", workers_pb2.RegisterWorkerRequest(worker_id=w, hostname="h", pid=1, types=["ops.q"]))
    api.w("Heartbeat", workers_pb2.HeartbeatRequest(worker_id=w))
    quiet = api.o("QuietWorker", opb.WorkerOrder(worker_id=w))
    assert (quiet.worker_id, quiet.command) == (w, "quiet")
    # The worker hears the order in its next heartbeat, on whichever shard it beats.
    assert until(lambda: api.w("Heartbeat", workers_pb2.HeartbeatRequest(worker_id=w)).command == "quiet",
                 what="the quiet order heard")
    assert api.o("StopWorker", opb.WorkerOrder(worker_id=w)).command == "stop"
    assert until(lambda: api.w("Heartbeat", workers_pb2.HeartbeatRequest(worker_id=w)).command == "stop",
                 what="the stop order heard")
    mine = [x for x in api.t("ListWorkers", tasks_pb2.ListWorkersRequest()).workers if x.worker_id == w]
    assert mine and mine[0].command == "stop"
    err = failure(lambda: api.o("QuietWorker", opb.WorkerOrder(worker_id="no-such-worker")))
    assert err.code() is SC.NOT_FOUND
    api.w("DeregisterWorker", workers_pb2.DeregisterWorkerRequest(worker_id=w))


def _dead_letters(api: Ops, type: str, n: int) -> list[str]:
    ids = [submit(api, type).id for _ in range(n)]
    held: list[task_pb2.Task] = []
    until(lambda: held.extend(claim(api, "ops-dlq", type, wait_ms=500)) or len(held) == n, what="claimed")
    answers = api.w("ReportResults", workers_pb2.ReportResultsRequest(worker_id="ops-dlq", results=[
        workers_pb2.TaskResult(id=t.id, attempt=t.attempt,
                               failed=workers_pb2.Failure(error=f"timeout after {i}.5 s", retry=False))
        for i, t in enumerate(held)])).answers
    assert [a.status for a in answers] == ["dead_letter"] * n
    return ids


def test_triage_history_explain_bulk_search_delete(api: Ops) -> None:
    ids = _dead_letters(api, "ops.dlq", 3)
    groups = api.i("DlqGroups", ipb.DlqGroupsRequest(type="ops.dlq"))
    assert groups.total == 3 and len(groups.groups) == 1
    group = groups.groups[0]
    assert group.count == 3 and group.error == "timeout after <n> s" and group.sample in ids
    history = api.i("GetHistory", ipb.TaskRef(id=ids[0]))
    events = [e.event for e in history.events]
    assert history.status == "dead_letter" and events[0] == "submitted" and "dead_lettered" in events
    failed = next(e for e in history.events if e.event == "failed")
    assert failed.fields["error"].startswith("timeout after") and failed.fields["attempt"] == 1
    explained = api.i("Explain", ipb.TaskRef(id=ids[0]))
    assert explained.reason == "dead_lettered" and explained.details["error"].startswith("timeout after")
    assert explained.message
    # A dry run counts and changes nothing; the real one requeues the whole group.
    dry = api.i("Bulk", ipb.BulkRequest(action="requeue", group=group.group, dry_run=True))
    assert (dry.count, dry.dry_run) == (3, True) and set(statuses(api, ids)) == {"dead_letter"}
    done = api.i("Bulk", ipb.BulkRequest(action="requeue", group=group.group))
    assert (done.action, done.count, done.dry_run) == ("requeue", 3, False)
    assert set(statuses(api, ids)) == {"pending"}
    assert api.i("DlqGroups", ipb.DlqGroupsRequest(type="ops.dlq")).total == 0
    # Search pages with a cursor until it is "" (a page may hold fewer than asked).
    seen, cursor = [], ""
    while True:
        page = api.i("SearchTasks", ipb.SearchTasksRequest(type="ops.dlq", status=["pending"], page_size=2,
                                                          cursor=cursor))
        assert len(page.tasks) <= 2 and page.scanned >= len(page.tasks)
        seen += [t.id for t in page.tasks]
        cursor = page.next_cursor
        if not cursor:
            break
    assert sorted(seen) == sorted(ids)
    figures = api.i("TypeStats", ipb.TypeStatsRequest(type="ops.dlq"))
    assert list(figures.window_s) == [60, 120]
    stats = {s.type: s for s in figures.types}
    assert stats["ops.dlq"].pending == 3 and stats["ops.dlq"].dead_letter == 0
    # Delete: a pending task is refused per item; cancelled ones go.
    refused = api.i("DeleteTasks", ipb.DeleteTasksRequest(ids=[ids[0]]))
    assert refused.deleted == 0 and refused.results[0].error_code == "InvalidState"
    for tid in ids:
        api.t("CancelTask", tasks_pb2.CancelTaskRequest(id=tid))
    gone = api.i("DeleteTasks", ipb.DeleteTasksRequest(ids=ids[:2]))
    assert gone.deleted == 2 and [r.deleted for r in gone.results] == [True, True]
    assert [t.found for t in api.t("GetTasks", tasks_pb2.GetTasksRequest(ids=ids)).tasks] == [False, False, True]
    purged = api.i("Bulk", ipb.BulkRequest(action="delete", status="cancelled", type="ops.dlq"))
    assert purged.count == 1 and not api.t("GetTasks", tasks_pb2.GetTasksRequest(ids=[ids[2]])).tasks[0].found
    err = failure(lambda: api.i("Bulk", ipb.BulkRequest(action="explode")))
    assert err.code() is SC.INVALID_ARGUMENT and "action" in details(err)["BadRequest"].field_violations[0].field
    assert failure(lambda: api.i("Explain", ipb.TaskRef(id="00000000-0000-4000-8000-000000000000"))).code() \
        is SC.NOT_FOUND


def test_submit_task_options(api: Ops) -> None:
    first = submit(api, "ops.unique", unique_key="order-7", unique_window_ms=60000)
    again = submit(api, "ops.unique", unique_key="order-7")
    assert not first.duplicate and again.duplicate and again.id == first.id
    batch = api.t("SubmitBatch", tasks_pb2.SubmitBatchRequest(tasks=[
        task_pb2.TaskSpec(type="ops.unique", unique_key="order-8"),
        task_pb2.TaskSpec(type="ops.unique", unique_key="order-7")]))
    assert list(batch.duplicates) == [1] and batch.ids[1] == first.id
    before = int(time.time() * 1000)
    tid = submit(api, "ops.ttl", ttl_ms=60000).id
    task = api.t("GetTasks", tasks_pb2.GetTasksRequest(ids=[tid, first.id])).tasks
    assert before + 59000 <= task[0].task.expires_at_ms <= int(time.time() * 1000) + 61000
    assert task[1].task.unique_key == "order-7"
    err = failure(lambda: submit(api, "ops.ttl", ttl_ms=5, expires_at_ms=before + 60000))
    assert err.code() is SC.INVALID_ARGUMENT and details(err)["BadRequest"].field_violations[0].field == "task.ttl_ms"
    # Expired before it started: never run, dead_letter with the reason Explain gives.
    api.o("PauseType", opb.PauseTypeRequest(type="ops.ttl"))
    short = submit(api, "ops.ttl", ttl_ms=1).id
    until(lambda: statuses(api, [short]) == ["dead_letter"], what="expired")
    assert api.i("Explain", ipb.TaskRef(id=short)).reason == "expired"
    api.o("ResumeType", opb.ResumeTypeRequest(type="ops.ttl"))
