"""Every `shardq` CLI command as a subprocess against a real server: human and --json output,
error paths (one `shardq: ...` line on stderr, non-zero exit), and $SHARDQ_URL.

Each test starts its own server (server_factory, ~0.3 s) so that counts are exact; the tasks,
workers and dead letters the commands show are made with ``shardq.Client`` directly.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import shardq

ROOT = Path(__file__).resolve().parents[2]
NO_SERVER = "shardq://127.0.0.1:9"  # the discard port: nothing listens there


def cli(*args: str, url: str | None = None, env: dict[str, str] | None = None,
        stdin: bytes | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """``python -m shardq ARGS`` with $SHARDQ_URL = url (and nothing inherited from the caller)."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("SHARDQ_URL", "SHARDQ_API_KEY")}
    if url is not None:
        full_env["SHARDQ_URL"] = url
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "shardq", *args], input=stdin, capture_output=True,
                          env=full_env, cwd=cwd, timeout=30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(),
                                       proc.stderr.decode())


def ok(*args: str, url: str | None = None, **kw) -> str:  # type: ignore[no-untyped-def]
    proc = cli(*args, url=url, **kw)
    assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}"
    assert proc.stderr == ""
    return proc.stdout


def as_json(*args: str, url: str | None = None, **kw):  # type: ignore[no-untyped-def]
    return json.loads(ok(*args, "--json", url=url, **kw))


def fails(*args: str, url: str | None = None, code: int = 1, **kw) -> str:
    """The command exits ``code`` with exactly one `shardq: ...` line on stderr; returns that line."""
    proc = cli(*args, url=url, **kw)
    assert proc.returncode == code, f"{args}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}"
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("shardq: "), proc.stderr
    return lines[0]


def rows(table: str) -> dict[str, list[str]]:
    """A human table keyed by its first column (the header row is under 'ID'/'SHARD'/...)."""
    return {line.split()[0]: line.split() for line in table.splitlines() if line.strip()}


def dead_letter(client: shardq.Client, task_type: str, error: str = "boom") -> str:
    """A task of ``task_type`` failed for good by a worker (max_retries 0)."""
    task_id = client.submit(task_type, {"n": 1}, max_retries=0)
    [task] = client.claim("cli-test-worker", types=[task_type])
    client.fail("cli-test-worker", task, error)
    return task_id


# -- submit ---------------------------------------------------------------------------------------


def test_submit_every_option(server_factory, tmp_path) -> None:
    url = server_factory("--shards", "2").url
    client = shardq.Client(url)

    task_id = ok("submit", "send_email", "--payload", '{"to": "a@example.com"}', "--priority", "150",
                 url=url).strip()
    assert uuid.UUID(task_id) and str(uuid.UUID(task_id)) == task_id
    [task] = client.claim("w", types=["send_email"])
    assert (task.id, task.priority, task.json()) == (task_id, 150, {"to": "a@example.com"})

    # --json, --payload-text, --max-retries, --timeout-seconds
    out = as_json("submit", "note", "--payload-text", "not json {", "--max-retries", "7",
                  "--timeout-seconds", "60", url=url)
    [task] = client.claim("w", types=["note"])
    assert (out["id"], task.payload, task.max_retries, task.timeout_seconds) == (
        task.id, b"not json {", 7, 60)

    # --payload-file (raw bytes) and - for stdin
    blob = bytes(range(256))
    (tmp_path / "p.bin").write_bytes(blob)
    file_id = ok("submit", "raw", "--payload-file", str(tmp_path / "p.bin"), url=url).strip()
    stdin_id = ok("submit", "raw", "--payload-file", "-", url=url, stdin=b"from stdin").strip()
    got = {t.id: t.payload for t in client.claim("w", max=2, types=["raw"])}
    assert got == {file_id: blob, stdin_id: b"from stdin"}

    # --delay, --at, --depends-on (repeatable), --id (idempotent)
    t0 = int(time.time() * 1000)
    delayed = client.status(ok("submit", "later", "--delay", "120", url=url).strip())
    assert delayed is not None and t0 + 110_000 <= delayed.scheduled_ms <= t0 + 130_000
    at = client.status(ok("submit", "later", "--at", "2030-01-02T03:04:05+00:00", url=url).strip())
    assert at is not None and at.scheduled_ms == 1893553445000
    dep = ok("submit", "child", "--depends-on", delayed.id, "--depends-on", at.id, url=url).strip()
    assert client.status(dep).depends_on == [delayed.id, at.id]
    mine = str(uuid.uuid4())
    assert ok("submit", "once", "--id", mine, url=url).strip() == mine
    assert ok("submit", "once", "--id", mine, url=url).strip() == mine
    assert [t.id for t in client.list("pending", type="once")] == [mine]
    client.close()


def test_submit_errors(server_factory, tmp_path) -> None:
    url = server_factory("--queue-depth-threshold", "1").url
    proc = cli("submit", "t", "--payload", "{not json", url=url)
    assert proc.returncode == 2 and "--payload: not valid JSON" in proc.stderr
    line = fails("submit", "t", "--payload-file", str(tmp_path / "missing"), url=url)
    assert "cannot read --payload-file" in line and "No such file" in line
    proc = cli("submit", "t", "--delay", "1", "--at", "2030-01-01T00:00:00", url=url)
    assert proc.returncode == 2 and "not allowed with" in proc.stderr
    assert cli("submit", "t", "--priority", "256", url=url).returncode == 2
    assert "is not an ISO time" in cli("submit", "t", "--at", "tomorrow", url=url).stderr
    # a server-side refusal: BadRequest (unknown dependency is NotFound), QueueFull
    line = fails("submit", "t", "--depends-on", str(uuid.uuid4()), url=url)
    assert "no task" in line and "NotFound" in line
    ok("submit", "t", url=url)
    line = fails("submit", "t", url=url)
    assert "queue full" in line and "retry after" in line and " ms)" in line


# -- status, cancel, list ----------------------------------------------------------------------


def test_status_human_and_json(server_factory) -> None:
    url = server_factory().url
    client = shardq.Client(url)
    a = client.submit("send_email", b"x", priority=200)
    b = dead_letter(client, "flaky", "boom: it broke")

    table = rows(ok("status", a, b, url=url))
    assert table["ID"][:6] == ["ID", "TYPE", "STATUS", "PRIORITY", "ATTEMPT", "RETRIES"]
    assert table[a][1:6] == ["send_email", "pending", "200", "0", "0/3"]
    assert table[b][1:6] == ["flaky", "dead_letter", "100", "1", "0/0"]
    assert "boom: it broke" in ok("status", b, url=url)

    [ja, jb] = as_json("status", a, b, url=url)
    assert (ja["id"], ja["type"], ja["status"], ja["priority"], ja["payload_len"]) == (
        a, "send_email", "pending", 200, 1)
    assert (jb["status"], jb["error"], jb["attempt"]) == ("dead_letter", "boom: it broke", 1)
    assert isinstance(ja["created_ms"], int) and ja["created_ms"] > 1_600_000_000_000

    unknown = str(uuid.uuid4())
    assert fails("status", unknown, url=url) == f"shardq: no task {unknown}"
    proc = cli("status", a, unknown, "--json", url=url)  # known ones still shown, exit 1
    assert proc.returncode == 1 and proc.stderr.strip() == f"shardq: no task {unknown}"
    assert [t and t["id"] for t in json.loads(proc.stdout)] == [a, None]
    assert "is not a task id" in fails("status", "not-an-id", url=url)
    client.close()


def test_cancel(server_factory) -> None:
    url = server_factory().url
    client = shardq.Client(url)
    a, b = client.submit("t"), client.submit("t")
    assert ok("cancel", a, url=url).strip() == f"cancelled {a}"
    assert as_json("cancel", b, url=url) == {"id": b, "status": "cancelled"}
    assert [t.status for t in client.status_many([a, b])] == ["cancelled", "cancelled"]
    assert "cannot cancel a task that is cancelled" in fails("cancel", a, url=url)
    unknown = str(uuid.uuid4())
    assert f"no task {unknown}" in fails("cancel", unknown, url=url)
    client.close()


def test_list_filters_human_and_json(server_factory) -> None:
    url = server_factory("--shards", "2").url
    client = shardq.Client(url)
    low = [client.submit("img", priority=10) for _ in range(3)]
    high = client.submit("img", priority=250)
    other = client.submit("mail")
    scheduled = client.submit("img", delay=600)

    listed = as_json("list", "--type", "img", "--limit", "0", url=url)
    assert {t["id"] for t in listed} == {*low, high, scheduled}
    assert all(t["status"] == "pending" and t["type"] == "img" for t in listed)
    assert [t["id"] for t in as_json("list", "--min-priority", "200", url=url)] == [high]
    assert {t["id"] for t in as_json("list", "--max-priority", "50", url=url)} == set(low)
    assert len(as_json("list", "--limit", "2", url=url)) == 2
    assert as_json("list", "--status", "completed", url=url) == []

    out = ok("list", url=url)
    table = rows(out)
    assert table["ID"] == ["ID", "TYPE", "STATUS", "PRIORITY", "ATTEMPT", "RETRIES", "CREATED",
                           "SCHEDULED", "ERROR"]
    assert set(table) == {"ID", *low, high, other, scheduled}
    assert table[high][1:4] == ["img", "pending", "250"]
    assert "in 9m" in out or "in 10m" in out  # the delayed task, relative
    out = ok("list", "--limit", "2", url=url)
    assert len(rows(out)) == 4 and "(first 2 shown" in out  # header + 2 rows + hint
    assert ok("list", "--status", "in_progress", url=url).strip() == "no in_progress tasks"
    assert cli("list", "--status", "nope", url=url).returncode == 2
    client.close()


# -- stats, workers -----------------------------------------------------------------------------


def test_stats_human_and_json(server_factory) -> None:
    url = server_factory("--shards", "2").url
    client = shardq.Client(url)
    for p in (10, 150, 150, 250):
        client.submit("t", priority=p)
    client.submit("t", delay=600)
    client.cancel(client.submit("t"))
    dead_letter(client, "bad")

    stats = as_json("stats", url=url)
    totals = stats["totals"]
    assert (totals["pending"], totals["cancelled"], totals["dead_letter"], totals["scheduled"]) == (5, 1, 1, 1)
    assert totals["by_tier"] == {"high": 1, "normal": 3, "low": 1}
    assert [s["shard"] for s in stats["shards"]] == [0, 1]
    assert sum(s["pending"] for s in stats["shards"]) == 5
    assert stats["workers"] == 1 and stats["uptime_s"] >= 0

    out = ok("stats", url=url)
    table = rows(out)
    assert table["pending"] == ["pending", "5"] and table["dead_letter"] == ["dead_letter", "1"]
    assert table["scheduled"] == ["scheduled", "1"]
    assert table["SHARD"][:3] == ["SHARD", "PENDING", "IN_PROGRESS"] and "RSS" in table["SHARD"]
    assert table["0"][1] != "-" and "MiB" in out and table["1"][0] == "1"
    assert "workers: 1" in out and "connections: " in out and "uptime: " in out
    client.close()


def test_workers_human_and_json(server_factory) -> None:
    url = server_factory().url
    assert ok("workers", url=url).strip() == "no live workers"
    assert as_json("workers", url=url) == []
    client = shardq.Client(url)
    client.register_worker("w-1", hostname="box1", pid=4242, types=["send_email", "img"], concurrency=8)
    client.heartbeat("w-1", cpu_percent=12.5, memory_rss=50 * 1048576, memory_percent=1.5)
    client.submit("img")
    client.claim("w-1", types=["img"])

    [w] = as_json("workers", url=url)
    assert (w["worker_id"], w["hostname"], w["pid"], w["types"], w["concurrency"]) == (
        "w-1", "box1", 4242, ["send_email", "img"], 8)
    assert (w["cpu_percent"], w["memory_rss"], w["active"]) == (12.5, 50 * 1048576, 1)
    assert isinstance(w["last_seen_ms"], int)

    out = ok("workers", url=url)
    table = rows(out)
    assert table["ID"][:6] == ["ID", "HOST", "PID", "TYPES", "CONCURRENCY", "ACTIVE"]
    assert table["w-1"][:8] == ["w-1", "box1", "4242", "send_email,img", "8", "1", "12.5", "50.0"]
    assert "MiB" in table["w-1"] and out.rstrip().endswith("ago")
    client.close()


# -- dead-letter queue -------------------------------------------------------------------------------


def test_dlq_list_requeue_purge(server_factory) -> None:
    url = server_factory().url
    assert ok("dlq", "list", url=url).strip() == "the dead-letter queue is empty"
    client = shardq.Client(url)
    a1, a2 = dead_letter(client, "a", "err one"), dead_letter(client, "a", "err two")
    b1 = dead_letter(client, "b", "err three")
    pending = client.submit("a")

    out = ok("dlq", "list", url=url)
    table = rows(out)
    assert table["ID"] == ["ID", "TYPE", "PRIORITY", "ATTEMPT", "RETRIES", "FAILED", "ERROR"]
    assert set(table) == {"ID", a1, a2, b1} and "err three" in out and table[a1][1] == "a"
    listed = as_json("dlq", "list", "--type", "a", url=url)
    assert {t["id"]: t["error"] for t in listed} == {a1: "err one", a2: "err two"}
    assert all(t["status"] == "dead_letter" for t in listed)

    # by id: per-id outcomes; one bad id makes the exit 1
    unknown = str(uuid.uuid4())
    proc = cli("dlq", "requeue", a1, pending, unknown, url=url)
    assert proc.returncode == 1 and proc.stderr.strip() == "shardq: 2 of 3 tasks not requeued"
    assert proc.stdout.splitlines()[0] == "requeued 1"
    outcomes = rows(proc.stdout)
    assert outcomes[a1][1] == "pending" and outcomes[pending][1] == "InvalidState:"
    assert outcomes[unknown][1] == "NotFound:"
    assert client.status(a1).status == "pending"
    body = as_json("dlq", "requeue", a2, url=url)
    assert body == {"requeued": 1, "results": [{"id": a2, "status": "pending"}]}

    # by type, then all
    c1 = dead_letter(client, "c")
    assert as_json("dlq", "requeue", "--type", "c", url=url) == {"requeued": 1}
    assert client.status(c1).status == "pending" and client.status(b1).status == "dead_letter"
    assert ok("dlq", "requeue", url=url).strip() == "requeued 1"
    assert as_json("dlq", "list", url=url) == []

    line = fails("dlq", "purge", url=url, code=2)  # works since insight (issue 17), with --yes
    assert line == "shardq: this would delete 0 dead_letter task(s); add --yes to delete them (or --dry-run to only count)"
    assert cli("dlq", url=url).returncode == 2  # an action is required
    client.close()


# -- connection, environment, other commands ----------------------------------------------------------


def test_server_flag_env_and_connection_errors(server_factory) -> None:
    srv = server_factory()
    # $SHARDQ_URL is honoured; --server wins over it
    task_id = ok("submit", "t", url=srv.url).strip()
    [task] = as_json("status", task_id, "--server", srv.url, url=NO_SERVER)
    assert task["id"] == task_id
    line = fails("stats", url=NO_SERVER)
    assert line == f"shardq: cannot connect to {NO_SERVER}: Connection refused"
    line = fails("list", "--server", "shardq://127.0.0.1:9", url=srv.url)
    assert "cannot connect to shardq://127.0.0.1:9" in line
    assert "is not a shardq URL" in fails("stats", "--server", "http://x", code=2)
    assert "pending" in ok("stats", "--server", srv.url.removeprefix("shardq://"))  # host:port
    # with neither $SHARDQ_URL nor --server: the default address
    proc = cli("stats")
    assert proc.returncode == 0 or proc.stderr.startswith(
        "shardq: cannot connect to shardq://127.0.0.1:7070: "), proc.stderr
    # something that accepts but never answers: --timeout
    with socket.create_server(("127.0.0.1", 0)) as mute:
        line = fails("stats", "--timeout", "0.3", url=f"shardq://127.0.0.1:{mute.getsockname()[1]}")
        assert line.endswith(": no answer within 0.3 s") and "cannot connect to" in line
    # a server that goes away: connection refused again
    srv.kill()
    assert "cannot connect to" in fails("status", task_id, url=srv.url)


def test_api_key(server_factory, tmp_path) -> None:
    (tmp_path / "auth.yaml").write_text(
        "auth:\n  enabled: true\n  api_keys:\n"
        "    - {key: admin-key-0123456789, name: ops, permissions: [admin]}\n"
        "    - {key: reader-key-0123456789, name: dash, permissions: [read]}\n")
    url = server_factory("--config", str(tmp_path / "auth.yaml")).url
    assert "Unauthorized" in fails("stats", url=url)
    assert "pending" in ok("stats", "--api-key", "admin-key-0123456789", url=url)
    env = {"SHARDQ_API_KEY": "reader-key-0123456789"}
    assert "pending" in ok("stats", url=url, env=env)
    assert "lacks the 'submit' permission" in fails("submit", "t", url=url, env=env)


TASKS_PY = """
import shardq

app = shardq.App()


@app.task("send_email")
def send_email(ctx):
    data = ctx.json()
    if "@" not in data["to"]:
        raise shardq.Fail("not an email address: " + data["to"])
    return {"sent": True}
"""


def test_worker_command_runs_an_app(server_factory, tmp_path) -> None:
    if not (ROOT / "shardq" / "worker" / "cli.py").exists():  # the worker runtime is not in yet
        assert "worker runtime is not installed" in fails("worker", "tasks:app")
        return
    url = server_factory().url
    (tmp_path / "tasks.py").write_text(TASKS_PY)
    good = ok("submit", "send_email", "--payload", '{"to": "ada@example.com"}', url=url).strip()
    bad = ok("submit", "send_email", "--payload", '{"to": "nobody"}', url=url).strip()
    proc = cli("worker", "tasks:app", "--burst", url=url, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    client = shardq.Client(url)
    assert client.wait(good, timeout=10) == b'{"sent":true}'
    [dead] = as_json("dlq", "list", url=url)
    assert dead["id"] == bad and "not an email address: nobody" in dead["error"]
    assert "usage: shardq worker" in ok("worker", "--help")
    client.close()


def test_config_and_help_still_work(tmp_path) -> None:
    assert ok("config", "check").strip() == "config ok"
    assert "port: 7070" in ok("config", "show")
    (tmp_path / "c.yaml").write_text("broker:\n  prot: 1\n")
    proc = cli("config", "check", "--config", str(tmp_path / "c.yaml"))
    assert proc.returncode == 2 and "unknown key 'prot'" in proc.stderr
    out = ok("--help")
    for command in ("serve", "config", "bench", "submit", "status", "cancel", "list", "stats",
                    "workers", "dlq", "worker"):
        assert command in out
    assert "--payload-file" in ok("submit", "--help")
