"""The gRPC API's pieces that need no server: the committed stubs are what grpcio-tools makes of
proto/, the error table and its status details, the channel rule's reading of grpc peers, and
`shardq serve` without the shardq[grpc] extra."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from grpc_tools import protoc

from shardq.errors import BadRequest, QueueFull
from shardq.grpc import convert
from shardq.grpc.calls import _loopback_peer
from shardq.grpc.handlers import TasksService, WorkersService
from shardq.grpc.insight import InsightService, search_filters
from shardq.grpc.operators import OperatorsService, limits, schedule_options
from shardq.grpc.process import grpc_missing
from shardq.grpc.status import CODES, status_of, status_of_error
from shardq.v1 import (
    insight_pb2,
    insight_pb2_grpc,
    operators_pb2,
    operators_pb2_grpc,
    task_pb2,
    tasks_pb2_grpc,
    workers_pb2,
    workers_pb2_grpc,
)

ROOT = Path(__file__).resolve().parents[2]


def test_committed_stubs_are_what_the_proto_files_make(tmp_path: Path) -> None:
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    args = ["protoc", f"-I{ROOT / 'proto'}", f"-I{include}", f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", *protos]
    assert protoc.main(args) == 0
    made = {p.relative_to(tmp_path).as_posix(): p.read_bytes() for p in tmp_path.rglob("*.py*")}
    committed = {p.relative_to(ROOT).as_posix(): p.read_bytes()
                 for p in (ROOT / "shardq" / "v1").glob("*_pb2*")}
    assert set(made) == set(committed), "run scripts/gen_proto"
    stale = [name for name in made if made[name] != committed[name]]
    assert not stale, f"stale generated files (run scripts/gen_proto): {stale}"


def test_every_rpc_has_a_handler() -> None:
    for service, module, impl in (("Tasks", tasks_pb2_grpc, TasksService), ("Workers", workers_pb2_grpc, WorkersService),
                                  ("Operators", operators_pb2_grpc, OperatorsService),
                                  ("Insight", insight_pb2_grpc, InsightService)):
        base = getattr(module, f"{service}Servicer")
        rpcs = [name for name in vars(base) if not name.startswith("_")]
        assert rpcs
        for name in rpcs:
            assert getattr(impl, name) is not getattr(base, name), f"{service}.{name} has no handler"


def _details(status: grpc.Status) -> dict[str, object]:
    class Call:
        def code(self) -> grpc.StatusCode:
            return status.code

        def details(self) -> str:
            return status.details

        def trailing_metadata(self) -> tuple:
            return status.trailing_metadata

    out: dict[str, object] = {}
    for detail in rpc_status.from_call(Call()).details:  # type: ignore[arg-type]
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo, error_details_pb2.BadRequest):
            if detail.Is(kind.DESCRIPTOR):
                msg = kind()
                detail.Unpack(msg)
                out[kind.__name__] = msg
    return out


def test_queue_full_is_resource_exhausted_with_retry_info() -> None:
    status = status_of_error(QueueFull("depth 100000 reached", retry_after_ms=1500))
    assert status.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    got = _details(status)
    assert got["RetryInfo"].retry_delay.ToMilliseconds() == 1500  # type: ignore[attr-defined]
    assert got["ErrorInfo"].reason == "QueueFull"  # type: ignore[attr-defined]


def test_bad_request_names_its_field() -> None:
    status = status_of_error(BadRequest("tasks[2].priority: must be an integer 0..255, got 300"))
    assert status.code is grpc.StatusCode.INVALID_ARGUMENT
    violation = _details(status)["BadRequest"].field_violations[0]  # type: ignore[attr-defined]
    assert violation.field == "tasks[2].priority"


@pytest.mark.parametrize("code, grpc_code", [
    ("NotFound", grpc.StatusCode.NOT_FOUND), ("Forbidden", grpc.StatusCode.PERMISSION_DENIED),
    ("Unauthorized", grpc.StatusCode.UNAUTHENTICATED), ("Unavailable", grpc.StatusCode.UNAVAILABLE),
    ("BadRequest", grpc.StatusCode.INVALID_ARGUMENT), ("LeaseLost", grpc.StatusCode.ABORTED),
    ("SomethingNew", grpc.StatusCode.UNKNOWN),
])
def test_error_table(code: str, grpc_code: grpc.StatusCode) -> None:
    assert status_of(code, "x").code is grpc_code
    assert _details(status_of(code, "x"))["ErrorInfo"].reason == code  # type: ignore[attr-defined]
    assert code == "SomethingNew" or code in CODES


@pytest.mark.parametrize("peer, local", [
    ("ipv4:127.0.0.1:5000", True), ("ipv6:[::1]:5000", True), ("ipv6:[::ffff:127.0.0.1]:1", True),
    ("unix:/tmp/x.sock", True), ("ipv4:10.1.2.3:5000", False), ("ipv6:[2001:db8::1]:5000", False),
    ("garbage", False),
])
def test_loopback_peers(peer: str, local: bool) -> None:
    assert _loopback_peer(peer) is local


def test_conversions_name_their_fields() -> None:
    with pytest.raises(BadRequest, match=r"^tasks\[1\]\.delay_ms: "):
        convert.job(task_pb2.TaskSpec(type="a", delay_ms=1, scheduled_ms=2), "tasks[1]")
    job = convert.job(task_pb2.TaskSpec(type="a", payload=b"p", priority=0, delay_ms=1500), "task")
    assert (job.priority, job.delay, job.payload, job.id) == (0, 1.5, b"p", None)
    with pytest.raises(BadRequest, match=r"^results\[0\]\.outcome: "):
        convert.result_item(workers_pb2.TaskResult(id="x", attempt=1), "results[0]")
    item, blob = convert.result_item(workers_pb2.TaskResult(id="x", attempt=2, completed=b"r"), "r")
    assert item == {"id": "x", "attempt": 2, "status": "completed"} and blob == b"r"


def test_task_options_and_answers_convert() -> None:
    with pytest.raises(BadRequest, match=r"^task\.ttl_ms: "):
        convert.job(task_pb2.TaskSpec(type="a", ttl_ms=5, expires_at_ms=10**13), "task")
    job = convert.job(task_pb2.TaskSpec(type="a", ttl_ms=1500, unique_key="k", unique_window_ms=2000), "task")
    assert (job.ttl, job.expires_at, job.unique_key, job.unique_window) == (1.5, None, "k", 2.0)
    # An answer's null is the field left unset; a key a later server adds is left out.
    control = convert.message(operators_pb2.TypeControl, {"type": "t", "paused": True, "rate": None,
                                                          "burst": 3, "version": 2, "new_thing": 1})
    assert control.paused and not control.HasField("rate") and control.burst == 3
    stat = convert.message(insight_pb2.TypeStat, {"type": "t", "pending": 4, "oldest_pending_age_s": None,
                                                  "run_time_s": {"p50": None, "p95": 0.2, "p99": 0.4, "count": 9}})
    assert stat.run_time_s.count == 9 and not stat.run_time_s.HasField("p50") and not stat.HasField("oldest_pending_age_s")


def test_operator_requests_convert() -> None:
    assert limits(operators_pb2.SetLimitsRequest(type="t", max_concurrency=4, clear_rate=True)) == {
        "max_concurrency": 4, "rate": None}
    with pytest.raises(BadRequest, match=r"^rate: "):
        limits(operators_pb2.SetLimitsRequest(type="t", rate=2.0, clear_rate=True))
    options = schedule_options(operators_pb2.AddScheduleRequest(name="n", type="t", every_ms=1500,
                                                                misfire_grace_ms=250, priority=0))
    assert (options["every"], options["misfire_grace"], options["priority"], options["cron"]) == (1.5, 0.25, 0, None)
    assert options["timezone"] == "UTC" and options["misfire"] == "skip"
    found = search_filters(insight_pb2.SearchTasksRequest(status=["dead_letter"], min_priority=0))
    assert found["status"] == ["dead_letter"] and found["min_priority"] == 0 and "max_priority" not in found


def test_grpc_missing_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    assert grpc_missing() == ""
    monkeypatch.setitem(sys.modules, "grpc_reflection", None)  # find_spec: None, as if not installed
    assert "grpcio-reflection" in grpc_missing() and "pip install 'shardq[grpc]'" in grpc_missing()


def test_serve_without_grpcio_exits_2_saying_what_to_install(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['grpc'] = None; from shardq.cli import main; "
            f"sys.exit(main(['serve', '--port', '0', '--data-dir', {str(tmp_path)!r}, '--grpc-port', '0']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2, proc.stderr
    assert "grpcio" in proc.stderr and "pip install 'shardq[grpc]'" in proc.stderr
    assert "READY" not in proc.stdout
