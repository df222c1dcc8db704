"""The gRPC API (docs/grpc.md) against a real 2-shard server with auth on: every RPC, the claim
stream and the watch stream, health and reflection, keys and scopes, the error codes and their
details, deadlines, and kill -9 of the gateway under load."""

from __future__ import annotations

import os
import signal
import threading
import time

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2
from grpc_helpers import Api, claimed, details, failure, grpc_port, serving, until
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from shardq import keys as K
from shardq.testing import ServerProcess
from shardq.v1 import insight_pb2 as ipb
from shardq.v1 import insight_pb2_grpc, operators_pb2_grpc, task_pb2, tasks_pb2, workers_pb2
from shardq.v1 import operators_pb2 as opb

DEPTH = 2000  # the server's queue depth threshold: a batch over it is QueueFull
SC = grpc.StatusCode


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("grpc")
    secrets = {}
    records = []
    for name, perms, pats in (("root", ["admin"], None), ("billing", ["submit", "read", "claim"], ["billing.>"]),
                              ("reader", ["read"], None)):
        kid, secret = K.new_secret()
        records.append(K.KeyRecord(kid, name, K.hash_secret(secret), K.make_scopes(perms, pats)))
        secrets[name] = secret
    K.write_keys(str(d / "keys.yaml"), records)
    srv = ServerProcess(str(d / "data"), ["--shards", "2", "--grpc-port", "0",
                                          "--queue-depth-threshold", str(DEPTH)],
                        env={"SHARDQ_AUTH__ENABLED": "true",
                             "SHARDQ_AUTH__KEYS_FILE": str(d / "keys.yaml")}).start()
    # A client that takes payloads over grpc's 4 MiB default says so (docs/grpc.md).
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port(srv)}",
                                    options=[("grpc.max_receive_message_length", 32 * 1024 * 1024)])
    until(lambda: serving(Api(channel)), what="health SERVING")
    yield srv, channel, secrets
    channel.close()
    srv.kill()


@pytest.fixture(scope="module")
def root(server) -> Api:
    _, channel, secrets = server
    return Api(channel, secrets["root"])


def spec(type: str = "mail.send", payload: bytes = b"{}", **kw) -> task_pb2.TaskSpec:
    return task_pb2.TaskSpec(type=type, payload=payload, **kw)


def test_ready_line_health_and_reflection(server, root: Api) -> None:
    srv, channel, _ = server
    assert grpc_port(srv) > 0
    for service in ("", "shardq.v1.Tasks", "shardq.v1.Workers", "shardq.v1.Operators", "shardq.v1.Insight"):
        assert serving(root, service)
    # Health needs no key (probes have none); an unknown service is NOT_FOUND.
    assert failure(lambda: root.health.Check(health_pb2.HealthCheckRequest(service="nope"))).code() is SC.NOT_FOUND
    db = ProtoReflectionDescriptorDatabase(channel)
    services = set(db.get_services())
    assert {"shardq.v1.Tasks", "shardq.v1.Workers", "shardq.v1.Operators", "shardq.v1.Insight",
            "grpc.health.v1.Health"} <= services
    submit = db.FindFileContainingSymbol("shardq.v1.Tasks")
    assert submit.package == "shardq.v1" and "shardq/v1/task.proto" in submit.dependency


def test_producer_rpcs(root: Api) -> None:
    one = root.t("Submit", tasks_pb2.SubmitRequest(task=spec(priority=200, payload=b'{"to":"ada"}'))).id
    batch = root.t("SubmitBatch", tasks_pb2.SubmitBatchRequest(tasks=[spec(type="report.x") for _ in range(5)])).ids
    assert len(batch) == 5 and len(set(batch)) == 5
    missing = "00000000-0000-4000-8000-000000000000"
    got = root.t("GetTasks", tasks_pb2.GetTasksRequest(ids=[one, missing, *batch])).tasks
    assert [t.found for t in got] == [True, False] + [True] * 5
    assert got[0].task.priority == 200 and got[0].task.status == "pending" and got[0].task.payload_len == 12
    assert {t.task.shard for t in got[2:]} == {0, 1} or len(batch) == 5  # spread where the client put them
    # Paging with cursors over both shards: every task once.
    seen, cursor = [], ""
    while True:
        page = root.t("ListTasks", tasks_pb2.ListTasksRequest(status="pending", type="report.x", page_size=2,
                                                              cursor=cursor))
        assert len(page.tasks) <= 2
        seen += [t.id for t in page.tasks]
        cursor = page.next_cursor
        if not cursor:
            break
    assert sorted(seen) == sorted(batch)
    root.t("CancelTask", tasks_pb2.CancelTaskRequest(id=batch[0]))
    assert root.t("GetTasks", tasks_pb2.GetTasksRequest(ids=[batch[0]])).tasks[0].task.status == "cancelled"
    stats = root.t("GetStats", tasks_pb2.GetStatsRequest()).stats
    assert stats["totals"]["cancelled"] >= 1 and len(stats["shards"]) == 2


def test_worker_rpcs_and_watch(root: Api) -> None:
    w = "grpc-w1"
    root.w("RegisterWorker", workers_pb2.RegisterWorkerRequest(worker_id=w, hostname="h1", pid=42,
                                                               types=["job.a"], concurrency=3))
    workers = root.t("ListWorkers", tasks_pb2.ListWorkersRequest()).workers
    mine = [x for x in workers if x.worker_id == w]
    assert mine and mine[0].hostname == "h1" and mine[0].concurrency == 3
    # A long poll: the claim waits, a submit wakes it.
    waiting = root.workers.Claim.future(workers_pb2.ClaimRequest(worker_id=w, max=1, wait_ms=20000,
                                                                 types=["job.a"]),
                                        metadata=root.metadata, timeout=30)
    time.sleep(0.2)  # let the claim reach the server first; the test holds either way
    tid = root.t("Submit", tasks_pb2.SubmitRequest(task=spec(type="job.a", payload=b"in"))).id
    claimed = waiting.result().tasks
    assert [c.task.id for c in claimed] == [tid] and claimed[0].task.payload == b"in"
    attempt = claimed[0].task.attempt
    watch = root.tasks.WatchTask(tasks_pb2.WatchTaskRequest(id=tid, poll_ms=10), metadata=root.metadata, timeout=30)
    first = next(watch)
    assert first.task.status == "in_progress" and not first.terminal
    hb = root.w("Heartbeat", workers_pb2.HeartbeatRequest(worker_id=w, active=[tid], cpu_percent=5.0))
    assert hb.lease_expires_ms > 0 and list(hb.lost) == []
    answers = root.w("ReportResults", workers_pb2.ReportResultsRequest(worker_id=w, results=[
        workers_pb2.TaskResult(id=tid, attempt=attempt, completed=b"done"),
        workers_pb2.TaskResult(id=tid, attempt=attempt, completed=b"again")])).answers
    assert answers[0].ok and answers[0].status == "completed"
    assert not answers[1].ok and answers[1].error_code == "LeaseLost"  # completed at most once
    events = list(watch)
    assert events[-1].terminal and events[-1].task.status == "completed" and events[-1].task.result == b"done"
    # Fail without retry -> dead_letter; requeue it by id; deregister releases what is held.
    tid2 = root.t("Submit", tasks_pb2.SubmitRequest(task=spec(type="job.a"))).id
    c2 = root.w("Claim", workers_pb2.ClaimRequest(worker_id=w, max=1, wait_ms=5000, types=["job.a"])).tasks[0]
    assert c2.task.id == tid2
    failed = root.w("ReportResults", workers_pb2.ReportResultsRequest(worker_id=w, results=[
        workers_pb2.TaskResult(id=tid2, attempt=c2.task.attempt,
                               failed=workers_pb2.Failure(error="boom", retry=False))])).answers[0]
    assert failed.ok and failed.status == "dead_letter"
    requeued = root.t("RequeueTasks", tasks_pb2.RequeueTasksRequest(ids=[tid2]))
    assert requeued.requeued == 1
    c3 = root.w("Claim", workers_pb2.ClaimRequest(worker_id=w, max=1, wait_ms=5000, types=["job.a"])).tasks[0]
    assert c3.task.id == tid2
    assert root.w("DeregisterWorker", workers_pb2.DeregisterWorkerRequest(worker_id=w)).released == 1
    assert root.t("GetTasks", tasks_pb2.GetTasksRequest(ids=[tid2])).tasks[0].task.status == "pending"


def _status(api: Api, ids: list[str]) -> list[str]:
    return [t.task.status for t in api.t("GetTasks", tasks_pb2.GetTasksRequest(ids=ids)).tasks]


def test_claim_stream_keeps_max_in_flight_and_cancel_releases(root: Api) -> None:
    ids = root.t("SubmitBatch", tasks_pb2.SubmitBatchRequest(tasks=[spec(type="stream.a") for _ in range(4)])).ids
    stream = root.workers.ClaimStream(workers_pb2.ClaimStreamRequest(worker_id="sw", max_in_flight=2,
                                                                     types=["stream.a"]),
                                      metadata=root.metadata, timeout=60)
    tasks = claimed(stream)
    a, b = next(tasks), next(tasks)
    # Two delivered, not reported: nothing more is leased until one is.
    time.sleep(0.3)  # give a third claim a chance to happen if the limit were not kept
    assert sorted(_status(root, ids)).count("in_progress") == 2
    root.w("ReportResults", workers_pb2.ReportResultsRequest(worker_id="sw", results=[
        workers_pb2.TaskResult(id=a.id, attempt=a.attempt, completed=b"")]))
    c = next(tasks)
    assert c.id not in (a.id, b.id)
    stream.cancel()
    # b and c were delivered and never reported: back to pending at once, not as a retry.
    until(lambda: sorted(_status(root, [b.id, c.id])) == ["pending", "pending"], what="released")
    got = root.t("GetTasks", tasks_pb2.GetTasksRequest(ids=[b.id])).tasks[0].task
    assert got.retry_count == 0
    leftover = root.w("Claim", workers_pb2.ClaimRequest(worker_id="sw2", max=10, types=["stream.a"])).tasks
    root.w("ReportResults", workers_pb2.ReportResultsRequest(worker_id="sw2", results=[
        workers_pb2.TaskResult(id=t.task.id, attempt=t.task.attempt, completed=b"") for t in leftover]))
    assert len(leftover) == 3


def test_claim_streams_under_load_with_workers_coming_and_going(root: Api) -> None:
    n = 60
    ids = root.t("SubmitBatch", tasks_pb2.SubmitBatchRequest(tasks=[spec(type="load.a") for _ in range(n)])).ids
    done: dict[str, str] = {}
    lock = threading.Lock()
    streams = []

    def work(worker: str, quit_after: int | None) -> None:
        stream = root.workers.ClaimStream(workers_pb2.ClaimStreamRequest(worker_id=worker, max_in_flight=4,
                                                                         types=["load.a"]),
                                          metadata=root.metadata, timeout=60)
        streams.append(stream)
        try:
            for count, task in enumerate(claimed(stream)):
                if quit_after is not None and count >= quit_after:
                    stream.cancel()  # goes away holding tasks: they must come back
                    return
                answer = root.w("ReportResults", workers_pb2.ReportResultsRequest(worker_id=worker, results=[
                    workers_pb2.TaskResult(id=task.id, attempt=task.attempt, completed=b"")]))
                with lock:
                    assert answer.answers[0].ok, answer
                    assert task.id not in done  # completed at most once
                    done[task.id] = worker
        except grpc.RpcError as err:
            assert err.code() is SC.CANCELLED, err

    threads = [threading.Thread(target=work, args=(f"load-{i}", 5 if i < 2 else None), daemon=True)
               for i in range(4)]
    for t in threads:
        t.start()
    until(lambda: len(done) == n, timeout=60, what="all tasks done")
    for stream in streams:
        stream.cancel()
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    assert set(done) == set(ids)
    assert set(_status(root, ids)) == {"completed"}


def test_keys_and_scopes_as_on_tcp(server) -> None:
    srv, channel, secrets = server
    anon, bad = Api(channel), Api(channel, "sq_" + "x" * 40)
    billing, reader = Api(channel, secrets["billing"]), Api(channel, secrets["reader"])
    for api in (anon, bad):
        err = failure(lambda a=api: a.t("GetStats", tasks_pb2.GetStatsRequest()))
        assert err.code() is SC.UNAUTHENTICATED, err
    # The shards saw the gateway's address; the gateway names the caller's.
    until(lambda: any("gRPC call from ipv4:127.0.0.1:" in line and "refused" in line for line in srv.stderr_lines),
          what="the refusal logged with the caller's address")
    err = failure(lambda: Api(channel).tasks.GetStats(tasks_pb2.GetStatsRequest(),
                                                        metadata=(("authorization", "Basic abc"),)))
    assert err.code() is SC.UNAUTHENTICATED and "Bearer" in err.details()
    err = failure(lambda: reader.t("Submit", tasks_pb2.SubmitRequest(task=spec())))
    assert err.code() is SC.PERMISSION_DENIED and "'submit' permission" in err.details()
    assert details(err)["ErrorInfo"].reason == "Forbidden"
    mine = billing.t("Submit", tasks_pb2.SubmitRequest(task=spec(type="billing.invoice"))).id
    err = failure(lambda: billing.t("Submit", tasks_pb2.SubmitRequest(task=spec(type="mail.send"))))
    assert err.code() is SC.PERMISSION_DENIED and "mail.send" in err.details()
    other = Api(channel, secrets["root"]).t("Submit", tasks_pb2.SubmitRequest(task=spec(type="mail.other"))).id
    seen = billing.t("GetTasks", tasks_pb2.GetTasksRequest(ids=[mine, other])).tasks
    assert [t.found for t in seen] == [True, False]  # another type is as if it did not exist
    err = failure(lambda: billing.t("CancelTask", tasks_pb2.CancelTaskRequest(id=mine)))
    assert err.code() is SC.PERMISSION_DENIED
    assert reader.t("GetStats", tasks_pb2.GetStatsRequest()).stats["totals"]["pending"] >= 1


def test_error_codes_and_details(root: Api) -> None:
    err = failure(lambda: root.t("Submit", tasks_pb2.SubmitRequest(task=spec(priority=300))))
    assert err.code() is SC.INVALID_ARGUMENT and err.details().startswith("task")
    assert "priority" in details(err)["BadRequest"].field_violations[0].field
    cases = [
        (lambda: root.t("SubmitBatch", tasks_pb2.SubmitBatchRequest()), "tasks"),
        (lambda: root.t("Submit", tasks_pb2.SubmitRequest(task=spec(type=""))), "type"),
        (lambda: root.t("Submit", tasks_pb2.SubmitRequest(task=spec(delay_ms=5, scheduled_ms=5))), "delay_ms"),
        (lambda: root.t("GetTasks", tasks_pb2.GetTasksRequest(ids=["nope"])), "ids[0]"),
        (lambda: root.t("ListTasks", tasks_pb2.ListTasksRequest(status="bogus")), "status"),
        (lambda: root.t("ListTasks", tasks_pb2.ListTasksRequest(page_size=100000)), "limit"),
        (lambda: root.w("Claim", workers_pb2.ClaimRequest(worker_id="")), "worker_id"),
        (lambda: next(root.workers.ClaimStream(workers_pb2.ClaimStreamRequest(worker_id="x", max_in_flight=5000),
                                               metadata=root.metadata, timeout=10)), "max_in_flight"),
        (lambda: root.w("ReportResults", workers_pb2.ReportResultsRequest(
            worker_id="x", results=[workers_pb2.TaskResult(id="00000000-0000-4000-8000-000000000000")])),
         "results[0].outcome"),
    ]
    for call, field in cases:
        err = failure(call)
        assert err.code() is SC.INVALID_ARGUMENT, (field, err)
        assert field in details(err)["BadRequest"].field_violations[0].field, (field, err.details())
    err = failure(lambda: root.t("CancelTask", tasks_pb2.CancelTaskRequest(id="00000000-0000-4000-8000-000000000000")))
    assert err.code() is SC.NOT_FOUND and details(err)["ErrorInfo"].reason == "NotFound"
    err = failure(lambda: next(root.tasks.WatchTask(tasks_pb2.WatchTaskRequest(
        id="00000000-0000-4000-8000-000000000000"), metadata=root.metadata, timeout=10)))
    assert err.code() is SC.NOT_FOUND
    # QueueFull: a batch over the depth threshold is refused whole, with when to retry.
    before = root.t("GetStats", tasks_pb2.GetStatsRequest()).stats["totals"]["pending"]
    err = failure(lambda: root.t("SubmitBatch", tasks_pb2.SubmitBatchRequest(
        tasks=[spec(type="full.x") for _ in range(DEPTH + 1)])))
    assert err.code() is SC.RESOURCE_EXHAUSTED
    assert details(err)["RetryInfo"].retry_delay.ToMilliseconds() > 0
    assert root.t("GetStats", tasks_pb2.GetStatsRequest()).stats["totals"]["pending"] == before


def test_deadlines(root: Api) -> None:
    started = time.monotonic()
    got = root.w("Claim", workers_pb2.ClaimRequest(worker_id="dl", wait_ms=30000, types=["none.ever"]), timeout=1.0)
    assert list(got.tasks) == [] and time.monotonic() - started < 1.0  # answered inside the deadline
    tid = root.t("Submit", tasks_pb2.SubmitRequest(task=spec(type="never.run"))).id
    watch = root.tasks.WatchTask(tasks_pb2.WatchTaskRequest(id=tid), metadata=root.metadata, timeout=0.5)
    assert next(watch).task.status == "pending"
    assert failure(lambda: next(watch)).code() is SC.DEADLINE_EXCEEDED


def _gateway(srv: ServerProcess) -> psutil.Process | None:
    for p in psutil.Process(srv.pid).children():
        try:
            if "shardq: grpc" in " ".join(p.cmdline()):
                return p
        except psutil.Error:
            continue  # a zombie: the one just killed
    return None


def test_kill_9_of_the_gateway_under_load_loses_nothing(server, root: Api) -> None:
    srv, channel, _ = server
    acked: list[str] = []
    stop = threading.Event()
    errors: list[grpc.StatusCode] = []

    def produce() -> None:
        while not stop.is_set():
            try:
                acked.extend(root.t("SubmitBatch", tasks_pb2.SubmitBatchRequest(
                    tasks=[spec(type="chaos.x") for _ in range(5)]), timeout=5).ids)
            except grpc.RpcError as err:
                errors.append(err.code())  # the gateway is down: retry, as a client would
                time.sleep(0.05)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    until(lambda: len(acked) >= 20, what="load")
    old = _gateway(srv)
    assert old is not None
    os.kill(old.pid, signal.SIGKILL)
    until(lambda: (new := _gateway(srv)) is not None and new.pid != old.pid and serving(root), timeout=60,
          what="gateway restarted")
    count = len(acked)
    until(lambda: len(acked) >= count + 20, what="load after the restart")  # clients reconnect
    stop.set()
    producer.join(10)
    assert set(errors) <= {SC.UNAVAILABLE, SC.DEADLINE_EXCEEDED}, errors
    found = []
    for i in range(0, len(acked), 100):
        found += [t.found for t in root.t("GetTasks", tasks_pb2.GetTasksRequest(ids=acked[i:i + 100])).tasks]
    assert all(found) and len(found) == len(acked)  # every acknowledged task is there
    assert any("grpc (pid" in line and "restarting" in line for line in srv.stderr_lines)


def test_large_payloads_up_to_the_protocol_limit(root: Api) -> None:
    """grpc's default 4 MiB message limit is raised to the protocol's: a 5 MiB payload goes in and
    comes back; one over the protocol's 10 MiB is the protocol's TooLarge, as INVALID_ARGUMENT."""
    big = b"x" * (5 * 1024 * 1024)
    tid = root.t("Submit", tasks_pb2.SubmitRequest(task=spec(type="big.x", payload=big))).id
    got = root.w("Claim", workers_pb2.ClaimRequest(worker_id="big", max=1, wait_ms=5000, types=["big.x"])).tasks
    assert got[0].task.id == tid and got[0].task.payload == big
    root.w("ReportResults", workers_pb2.ReportResultsRequest(worker_id="big", results=[
        workers_pb2.TaskResult(id=tid, attempt=got[0].task.attempt, completed=b"")]))
    err = failure(lambda: root.t("Submit", tasks_pb2.SubmitRequest(
        task=spec(type="big.x", payload=b"x" * (10 * 1024 * 1024 + 1)))))
    assert err.code() is SC.INVALID_ARGUMENT and details(err)["ErrorInfo"].reason == "TooLarge", err.details()


def test_operator_rpcs_keep_permissions_and_scopes(server) -> None:
    """Operators and Insight (test_grpc_operators.py calls each) under the same keys as TCP: a
    read key reads and counts but changes nothing; a scoped key sees only its types."""
    _, channel, secrets = server
    md = {name: (("authorization", f"Bearer {secrets[name]}"),) for name in secrets}
    ops, ins = operators_pb2_grpc.OperatorsStub(channel), insight_pb2_grpc.InsightStub(channel)
    err = failure(lambda: ops.PauseType(opb.PauseTypeRequest(type="mail.send"), metadata=md["reader"], timeout=10))
    assert err.code() is SC.PERMISSION_DENIED and details(err)["ErrorInfo"].reason == "Forbidden"
    assert ops.GetControls(opb.GetControlsRequest(), metadata=md["reader"], timeout=10) is not None
    assert ins.Bulk(ipb.BulkRequest(action="requeue", dry_run=True), metadata=md["reader"], timeout=10).dry_run
    err = failure(lambda: ins.Bulk(ipb.BulkRequest(action="requeue"), metadata=md["reader"], timeout=10))
    assert err.code() is SC.PERMISSION_DENIED
    err = failure(lambda: ops.GetControls(opb.GetControlsRequest(), timeout=10))  # no key
    assert err.code() is SC.UNAUTHENTICATED
    other = Api(channel, secrets["root"]).t("Submit", tasks_pb2.SubmitRequest(task=spec(type="mail.scoped"))).id
    err = failure(lambda: ins.Explain(ipb.TaskRef(id=other), metadata=md["billing"], timeout=10))
    assert err.code() is SC.NOT_FOUND  # another type's task is as if it did not exist
    assert ins.Explain(ipb.TaskRef(id=other), metadata=md["root"], timeout=10).reason in ("next", "queued", "no_worker")
