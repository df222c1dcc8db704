"""The HTTP API against live `shardq serve` processes (2 shards): its document, every route
fuzzed by schemathesis, the same tasks over HTTP and TCP, long polls, auth, CORS, bad input."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import time
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from wire import id_in_shard

from shardq.client.sync import Client
from shardq.http.openapi import build_document
from shardq.testing import ServerProcess

KEY_ADMIN = "admin-key-0123456789abcdef"
KEY_READ = "read-key-0123456789abcdef"


class Http:
    """A keep-alive HTTP/1.1 client of one server: (status, headers, JSON body) per request."""

    def __init__(self, srv: ServerProcess, token: str | None = None) -> None:
        self.conn = http.client.HTTPConnection(srv.host, srv.http_port, timeout=30)
        self.token = token

    def __call__(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                 raw: bytes | None = None) -> tuple[int, dict[str, str], Any]:
        h = {"Content-Type": "application/json"}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        h.update(headers or {})
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        self.conn.request(method, path, body=data, headers=h)
        resp = self.conn.getresponse()
        payload = resp.read()
        ctype = resp.getheader("Content-Type") or ""
        parsed = json.loads(payload) if payload and "json" in ctype else payload
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, parsed

    def close(self) -> None:
        self.conn.close()


@pytest.fixture(scope="module")
def srv(tmp_path_factory) -> ServerProcess:
    s = ServerProcess(str(tmp_path_factory.mktemp("http") / "data"), ["--shards", "2"])
    s.start()
    yield s
    s.kill()


@pytest.fixture
def api(srv) -> Http:
    client = Http(srv)
    yield client
    client.close()


def _other_shard_id(client: Http, shard: int) -> str:
    """The id of a new task owned by ``shard``: submitted with a client id of that shard's
    partition, whichever shard this client's connection is on (the acceptor places it)."""
    tid = id_in_shard(shard, 2)
    status, _, body = client("POST", "/api/v1/tasks/batch", {"tasks": [{"type": "probe", "id": tid}]})
    assert status == 201 and body["ids"] == [tid]
    _, _, page = client("POST", "/api/v1/tasks/query", {"ids": [tid]})
    assert page["tasks"][0]["shard"] == shard
    return tid


# -- the document ------------------------------------------------------------------------------

def test_the_served_document_is_valid_openapi_3_1_and_the_one_built_from_the_structs(api) -> None:
    status, headers, doc = api("GET", "/api/v1/openapi.json")
    assert status == 200 and headers["content-type"].startswith("application/json")
    validate(doc)
    assert doc["openapi"] == "3.1.0"
    assert doc == json.loads(json.dumps(build_document()))
    ops = {op["operationId"] for path in doc["paths"].values() for op in path.values()}
    for needed in ("submit_task", "submit_batch", "get_task", "query_tasks", "list_tasks", "cancel_task",
                   "requeue", "stats", "list_workers", "register_worker", "claim", "results",
                   "heartbeat", "deregister_worker", "healthz", "readyz"):
        assert needed in ops


def test_the_reference_page_and_its_assets_are_served(api) -> None:
    status, headers, page = api("GET", "/api/docs")
    assert status == 200 and b"swagger-ui-bundle.js" in page
    status, headers, js = api("GET", "/api/docs/swagger-ui-bundle.js")
    assert status == 200 and len(js) > 100_000
    status, _, _ = api("GET", "/api/docs/../../etc/passwd")
    assert status == 404


# -- schemathesis over every operation -----------------------------------------------------------

schema = schemathesis.openapi.from_dict(build_document())
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]


@schema.parametrize()
@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(case, srv) -> None:
    if isinstance(case.body, dict) and isinstance(case.body.get("wait_ms"), int):
        case.body["wait_ms"] = min(case.body["wait_ms"], 50)  # a long poll: keep the run short
    case.call_and_validate(base_url=srv.http_url, checks=CHECKS, timeout=30)


# -- one task, two transports --------------------------------------------------------------------

def test_submit_over_http_claim_over_tcp_result_over_http_query_over_both(srv, api) -> None:
    status, _, body = api("POST", "/api/v1/tasks", {"type": "xif", "payload": {"n": 7}, "priority": 200})
    assert status == 201
    tid = body["id"]
    with Client(srv.url, timeout=10) as tcp:
        tasks = tcp.claim("w-tcp", max=1, types=["xif"])
        assert [t.id for t in tasks] == [tid]
        assert json.loads(tasks[0].payload) == {"n": 7}
        attempt = tasks[0].attempt
    status, _, out = api("POST", "/api/v1/workers/w-tcp/results",
                         {"results": [{"id": tid, "attempt": attempt, "status": "completed",
                                       "result_text": "done ✓"}]})
    assert status == 200 and out["results"] == [{"id": tid, "status": "completed"}]
    status, _, task = api("GET", f"/api/v1/tasks/{tid}?with_result=true")
    assert status == 200 and task["status"] == "completed" and task["result_text"] == "done ✓"
    with Client(srv.url, timeout=10) as tcp:
        seen = tcp.status(tid, with_result=True)
        assert seen.status == "completed" and seen.result == "done ✓".encode()


def test_requests_about_tasks_of_the_other_shard(srv) -> None:
    for shard in (0, 1):
        client = Http(srv)
        try:
            tid = _other_shard_id(client, shard)
            # Whichever shard this connection landed on, the owner answers.
            status, _, task = client("GET", f"/api/v1/tasks/{tid}")
            assert status == 200 and task["shard"] == shard
            status, _, out = client("POST", f"/api/v1/tasks/{tid}/cancel")
            assert status == 200 and out == {"id": tid, "status": "cancelled"}
            status, _, problem = client("POST", f"/api/v1/tasks/{tid}/cancel")
            assert status == 409 and problem["code"] == "InvalidState"
        finally:
            client.close()


def test_worker_cycle_over_http_with_bytes_payloads(api) -> None:
    raw = bytes(range(256))
    status, _, body = api("POST", "/api/v1/tasks", {"type": "bin", "payload_b64": base64.b64encode(raw).decode()})
    tid = body["id"]
    assert api("PUT", "/api/v1/workers/wb", {"hostname": "h", "types": ["bin"]})[0] == 200
    status, _, claimed = api("POST", "/api/v1/workers/wb/claim", {"types": ["bin"], "encoding": "base64"})
    assert status == 200 and [t["id"] for t in claimed["tasks"]] == [tid]
    assert base64.b64decode(claimed["tasks"][0]["payload_b64"]) == raw
    status, _, hb = api("POST", "/api/v1/workers/wb/heartbeat", {"active": [tid]})
    assert status == 200 and hb["lease_expires_ms"] > time.time() * 1000 and "lost" not in hb
    status, _, out = api("POST", "/api/v1/workers/wb/results",
                         {"results": [{"id": tid, "attempt": 1, "status": "failed", "error": "boom",
                                       "retry": False}]})
    assert out["results"][0]["status"] == "dead_letter"
    status, _, page = api("GET", "/api/v1/tasks?status=dead_letter&type=bin")
    assert tid in [t["id"] for t in page["tasks"]]
    status, _, rq = api("POST", "/api/v1/tasks/requeue", {"ids": [tid]})
    assert status == 200 and rq["requeued"] == 1
    status, _, workers = api("GET", "/api/v1/workers")
    assert "wb" in [w["worker_id"] for w in workers["workers"]]
    status, _, gone = api("DELETE", "/api/v1/workers/wb")
    assert status == 200 and gone == {"released": 0}
    status, _, stats = api("GET", "/api/v1/stats")
    assert status == 200 and len(stats["shards"]) == 2


def test_list_pages_with_cursors_cover_every_task_once(api) -> None:
    status, _, body = api("POST", "/api/v1/tasks/batch", {"tasks": [{"type": "pg"} for _ in range(25)]})
    seen: list[str] = []
    cursor = None
    for _ in range(100):
        path = "/api/v1/tasks?status=pending&type=pg&limit=7" + (f"&cursor={cursor}" if cursor else "")
        status, _, page = api("GET", path)
        assert status == 200
        seen += [t["id"] for t in page["tasks"]]
        cursor = page["cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(body["ids"])
    status, _, problem = api("GET", "/api/v1/tasks?status=pending&cursor=zzz")
    assert status == 400 and "cursor" in problem["detail"]


# -- long polls ------------------------------------------------------------------------------------

def test_a_long_poll_claim_gets_a_task_submitted_while_it_waits(srv, api) -> None:
    import threading
    got: dict[str, Any] = {}

    def claim() -> None:
        c = Http(srv)
        got["answer"] = c("POST", "/api/v1/workers/lp/claim", {"types": ["lp"], "wait_ms": 10_000})
        c.close()
    t = threading.Thread(target=claim)
    started = time.monotonic()
    t.start()
    time.sleep(0.3)
    status, _, body = api("POST", "/api/v1/tasks", {"type": "lp", "payload_text": "x"})
    t.join(15)
    assert got["answer"][0] == 200 and [x["id"] for x in got["answer"][2]["tasks"]] == [body["id"]]
    assert time.monotonic() - started < 5


def test_a_client_that_hangs_up_mid_wait_leases_nothing(srv, api) -> None:
    body = json.dumps({"types": ["hang"], "wait_ms": 20_000}).encode()
    socks = []
    for _ in range(4):  # on both shards, whichever the acceptor picks
        s = socket.create_connection((srv.host, srv.http_port))
        s.sendall(b"POST /api/v1/workers/gone/claim HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        socks.append(s)
    time.sleep(0.5)
    for s in socks:
        s.close()
    time.sleep(0.5)
    status, _, out = api("POST", "/api/v1/tasks/batch", {"tasks": [{"type": "hang"} for _ in range(3)]})
    assert status == 201
    time.sleep(0.3)
    with Client(srv.url, timeout=10) as tcp:
        tasks = tcp.claim("w-live", max=10, types=["hang"])
    assert sorted(t.id for t in tasks) == sorted(out["ids"])  # none was leased to the gone caller


# -- bad input -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path", "raw", "status", "names"), [
    ("POST", "/api/v1/tasks", b'{"type": "a",', 400, "JSON"),
    ("POST", "/api/v1/tasks", b'{"type": "a", "priority": "high"}', 400, "priority"),
    ("POST", "/api/v1/tasks", b'{"type": "a", "colour": 1}', 400, "colour"),
    ("POST", "/api/v1/tasks", b'{"type": "a", "payload_b64": "!!"}', 400, "payload_b64"),
    ("POST", "/api/v1/tasks", b'{"type": "a", "payload": 1, "payload_text": "1"}', 400, "payload_text"),
    ("POST", "/api/v1/tasks", b'{"type": "a", "delay_ms": 1, "scheduled_ms": 1}', 400, "scheduled_ms"),
    ("POST", "/api/v1/tasks", b'[]', 400, "object"),
    ("POST", "/api/v1/tasks", b'', 400, "body"),
    ("POST", "/api/v1/tasks/batch", b'{"tasks": []}', 400, "tasks"),
    ("POST", "/api/v1/tasks/batch", json.dumps({"tasks": [{"type": "a"}] * 100_001}).encode(), 400, "tasks"),
    ("GET", "/api/v1/tasks/not-an-id", None, 400, "id"),
    ("GET", "/api/v1/tasks?status=pending&limit=0", None, 400, "limit"),
    ("GET", "/api/v1/tasks?status=pending&bogus=1", None, 400, "bogus"),
    ("GET", "/api/v1/tasks?status=pending&min_priority=9&max_priority=3", None, 400, "min_priority"),
    ("GET", "/api/v1/tasks", None, 400, "status"),
    ("GET", "/api/v1/tasks/00000000-0000-4000-8000-000000000000", None, 404, "00000000"),
    ("GET", "/api/v1/nothing", None, 404, "/api/v1/nothing"),
    ("DELETE", "/api/v1/tasks", None, 405, "DELETE"),
    ("POST", "/api/v1/workers/w/results", b'{"results": [{"id": "00000000-0000-4000-8000-000000000000", '
                                         b'"attempt": 1, "status": "failed"}]}', 400, "error"),
])
def test_bad_input_is_a_4xx_problem_naming_what_was_wrong(api, method, path, raw, status, names) -> None:
    code, headers, problem = api(method, path, raw=raw)
    assert code == status, problem
    assert headers["content-type"] == "application/problem+json"
    assert problem["status"] == status and names in problem["detail"]


def test_a_body_over_16_mib_is_413_without_reading_it(srv) -> None:
    s = socket.create_connection((srv.host, srv.http_port))
    s.sendall(b"POST /api/v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 20000000\r\n\r\n{")
    s.settimeout(10)
    answer = s.recv(65536)
    s.close()
    assert answer.startswith(b"HTTP/1.1 413") and b"TooLarge" in answer


def test_a_wrong_content_type_is_415(api) -> None:
    code, _, problem = api("POST", "/api/v1/tasks", raw=b"type=a", headers={"Content-Type": "text/plain"})
    assert code == 415 and "Content-Type" in problem["detail"]


def test_queue_full_is_429_with_retry_after(server_factory) -> None:
    srv = server_factory("--shards", "1", "--queue-depth-threshold", "2")
    client = Http(srv)
    assert client("POST", "/api/v1/tasks/batch", {"tasks": [{"type": "a"}, {"type": "a"}]})[0] == 201
    code, headers, problem = client("POST", "/api/v1/tasks", {"type": "a"})
    assert code == 429 and problem["code"] == "QueueFull" and int(headers["retry-after"]) >= 1
    client.close()


# -- auth and CORS ----------------------------------------------------------------------------------

@pytest.fixture
def secured(server_factory, tmp_path) -> ServerProcess:
    cfg = tmp_path / "auth.yaml"
    cfg.write_text(f"""
auth:
  enabled: true
  api_keys:
    - {{key: "{KEY_ADMIN}", name: admin, permissions: [admin]}}
    - {{key: "{KEY_READ}", name: reader, permissions: [read]}}
api:
  cors_origins: ["https://app.example.com"]
""")
    return server_factory("--shards", "2", "--config", str(cfg))


def test_auth_401_403_and_the_health_checks_need_none(secured) -> None:
    anon = Http(secured)
    code, headers, problem = anon("GET", "/api/v1/stats")
    assert code == 401 and headers["www-authenticate"].startswith("Bearer") and problem["code"] == "Unauthorized"
    code, _, _ = anon("GET", "/api/v1/stats", headers={"Authorization": "Basic eDp5"})
    assert code == 401
    assert Http(secured, "wrong-key-0123456789")("GET", "/api/v1/stats")[0] == 401
    assert anon("GET", "/healthz")[0] == 200
    code, _, ready = anon("GET", "/readyz")
    assert code == 200 and ready == {"status": "ready", "shards": 2, "not_ready": []}
    reader = Http(secured, KEY_READ)
    assert reader("GET", "/api/v1/stats")[0] == 200
    code, _, problem = reader("POST", "/api/v1/tasks", {"type": "a"})
    assert code == 403 and problem["code"] == "Forbidden" and "submit" in problem["detail"]
    assert Http(secured, KEY_ADMIN)("POST", "/api/v1/tasks", {"type": "a"})[0] == 201
    joined = "".join(secured.stderr_lines + secured.stdout_lines)
    assert KEY_ADMIN not in joined and KEY_READ not in joined


def test_cors_preflight_and_a_disallowed_origin(secured) -> None:
    c = Http(secured)
    pre = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization, content-type"}
    code, headers, _ = c("OPTIONS", "/api/v1/tasks", headers=pre)
    assert code == 204 and headers["access-control-allow-origin"] == "https://app.example.com"
    assert "POST" in headers["access-control-allow-methods"]
    assert "Authorization" in headers["access-control-allow-headers"]
    code, headers, _ = c("GET", "/api/v1/stats", headers={"Origin": "https://app.example.com",
                                                           "Authorization": f"Bearer {KEY_READ}"})
    assert code == 200 and headers["access-control-allow-origin"] == "https://app.example.com"
    code, headers, problem = c("OPTIONS", "/api/v1/tasks", headers={**pre, "Origin": "https://evil.example"})
    assert code == 403 and "access-control-allow-origin" not in headers
    code, headers, _ = c("GET", "/api/v1/stats", headers={"Origin": "https://evil.example",
                                                           "Authorization": f"Bearer {KEY_READ}"})
    assert "access-control-allow-origin" not in headers


def test_cors_is_off_by_default(api) -> None:
    code, headers, _ = api("GET", "/api/v1/stats", headers={"Origin": "https://app.example.com"})
    assert code == 200 and "access-control-allow-origin" not in headers


# -- connections ---------------------------------------------------------------------------------------

def test_http_and_tcp_share_max_connections(server_factory) -> None:
    srv = server_factory("--shards", "1", "--max-connections", "2")
    a, b = Http(srv), Http(srv)
    assert a("GET", "/healthz")[0] == 200 and b("GET", "/healthz")[0] == 200
    s = socket.create_connection((srv.host, srv.http_port))
    s.settimeout(10)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = s.recv(65536)
    s.close()
    assert answer.startswith(b"HTTP/1.1 503") and b"too many connections" in answer
    a.close()
    time.sleep(0.3)
    with Client(srv.url, timeout=10) as tcp:  # a's slot came back: a TCP client gets it
        tcp.ping()
    b.close()


def test_an_idle_http_connection_is_closed_after_connection_timeout(server_factory) -> None:
    srv = server_factory("--shards", "1", "--connection-timeout-ms", "500")
    s = socket.create_connection((srv.host, srv.http_port))
    s.settimeout(10)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # half-sent: never finished
    started = time.monotonic()
    assert s.recv(65536) == b""  # closed by the server
    assert time.monotonic() - started < 5
    s.close()


def test_a_request_line_over_the_limit_is_a_problem_not_plain_text(srv) -> None:
    """aiohttp refuses a request line over 8190 bytes before any handler runs; the answer is
    still an RFC 9457 problem (schemathesis found it answered text/plain)."""
    with socket.create_connection((srv.host, srv.http_port), timeout=10) as sock:
        sock.sendall(b"GET /api/v1/tasks?cursor=" + b"x" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n\r\n")[0].decode().lower()
    assert head.split()[1] == "400", head  # aiohttp answers HTTP/1.0: the request line was never read
    assert "content-type: application/problem+json" in head


def test_the_http_api_can_be_turned_off(server_factory) -> None:
    srv = server_factory("--shards", "1", env={"SHARDQ_API__REST_ENABLED": "false"})
    assert "http_port" not in srv.ready_fields
    with Client(srv.url, timeout=10) as c:  # the protocol port serves as ever
        assert c.stats()["totals"]["pending"] == 0
