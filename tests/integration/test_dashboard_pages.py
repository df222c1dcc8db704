"""The web dashboard over plain HTTP against live 2-shard servers: pages, live fragments, the
broker-kept history, escaping, actions, signing in with scoped keys, cross-site refusals.
(The same pages in a real browser: test_dashboard_browser.py.)"""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse

import psutil
import pytest

from shardq.client.models import Job
from shardq.client.sync import Client
from shardq.testing import ServerProcess

KEY_ADMIN = "admin-key-0123456789abcdef"
KEY_READ = "read-key-0123456789abcdef"


def csrf(srv: ServerProcess, cookie: str | None = None) -> tuple[str, str]:
    """The CSRF cookie a page sets and the token its forms carry (the same value)."""
    _, headers, _ = fetch(srv, "GET", "/login", headers={"Cookie": cookie} if cookie else None, raw=True)
    token = headers["set-cookie"].split("shardq_csrf=")[1].split(";")[0]
    return f"shardq_csrf={token}", token


def fetch(srv: ServerProcess, method: str, path: str, body: dict[str, str] | None = None,
          headers: dict[str, str] | None = None, raw: bool = False) -> tuple[int, dict[str, str], str]:
    """One request; a POST carries a valid CSRF cookie and token unless ``raw``."""
    h = dict(headers or {})
    if method == "POST" and not raw:
        pair, token = csrf(srv)
        h["Cookie"] = "; ".join(c for c in (h.get("Cookie"), pair) if c)
        body = {**(body or {}), "csrf": token}
    conn = http.client.HTTPConnection(srv.host, srv.http_port, timeout=30)
    data = None
    if body is not None:
        data = urllib.parse.urlencode(body).encode()
        h["Content-Type"] = "application/x-www-form-urlencoded"
    conn.request(method, path, body=data, headers=h)
    resp = conn.getresponse()
    text = resp.read().decode()
    out: dict[str, str] = {}
    for k, v in resp.getheaders():  # two Set-Cookie headers are joined, as a browser would see both
        out[k.lower()] = f"{out[k.lower()]}, {v}" if k.lower() in out else v
    conn.close()
    return resp.status, out, text


@pytest.fixture(scope="module")
def srv(tmp_path_factory) -> ServerProcess:
    s = ServerProcess(str(tmp_path_factory.mktemp("dash") / "data"), ["--shards", "2"])
    s.start()
    yield s
    s.kill()


@pytest.fixture(scope="module")
def client(srv) -> Client:
    c = Client(srv.url, timeout=30)
    yield c
    c.close()


def test_every_page_renders_with_the_security_headers(srv) -> None:
    for path, heading in (("/", "Overview"), ("/tasks", "Tasks"), ("/workers", "Workers"), ("/shards", "Shards")):
        code, headers, html = fetch(srv, "GET", path)
        assert code == 200, (path, html[:300])
        assert f"<h1>{heading}</h1>" in html
        assert headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
    code, _, html = fetch(srv, "GET", "/shards")
    assert html.count('<td class="num">0</td>') >= 2 and "<caption>2 shards answering</caption>" in html
    code, headers, _ = fetch(srv, "GET", "/ui/static/htmx.min.js")
    assert code == 200 and headers["content-type"] == "text/javascript"
    assert fetch(srv, "GET", "/ui/static/../app.py")[0] == 404
    code, _, html = fetch(srv, "GET", "/no/such/page")
    assert code == 404 and "no page /no/such/page" in html


def test_the_overview_counts_and_its_live_fragment(srv, client) -> None:
    client.submit_many([Job("dash.count", {"i": i}) for i in range(7)])
    code, _, html = fetch(srv, "GET", "/")
    assert code == 200 and '<span class="value" data-total="pending">7</span>' in html
    code, _, fragment = fetch(srv, "GET", "/", headers={"HX-Request": "true"})
    assert code == 200 and fragment.lstrip().startswith('<div id="overview-live"')
    assert "<html" not in fragment and 'data-total="pending">7<' in fragment
    per_shard = fragment.split("Per shard")[1].split("</tbody>")[0]
    assert per_shard.count("<tr><td") == 2  # one row per shard, live with the totals


def test_the_broker_keeps_a_history_of_rates_and_depth(srv, client) -> None:
    deadline = time.monotonic() + 20
    while True:
        client.submit_many([Job("dash.rate") for _ in range(50)])
        code, headers, body = fetch(srv, "GET", "/ui/history.json?resolution=1s")
        assert code == 200 and headers["content-type"] == "application/json"
        series = json.loads(body)["series"]
        if series["t"] and max(series["submitted"]) > 0 and series["pending"][-1] >= 50:
            break
        assert time.monotonic() < deadline, series
        time.sleep(0.5)
    assert len(series["t"]) == len(series["completed"]) == len(series["dead_letter"])
    assert all(b > a for a, b in zip(series["t"], series["t"][1:]))  # one point a second, in order
    code, _, body = fetch(srv, "GET", "/api/v1/stats/history?resolution=10s")
    assert code == 200 and json.loads(body)["resolution"] == "10s"
    code, _, body = fetch(srv, "GET", "/api/v1/stats/history?resolution=5s")
    assert code == 400 and "resolution" in body


def test_a_task_page_escapes_what_a_producer_wrote_and_cuts_large_payloads(srv, client) -> None:
    evil = client.submit("<img src=x onerror=alert(1)>", {"x": "<script>alert(1)</script>"})
    code, _, html = fetch(srv, "GET", f"/tasks/{evil}")
    assert code == 200
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    big = client.submit("dash.big", payload=b"a" * 20000)
    code, _, html = fetch(srv, "GET", f"/tasks/{big}")
    assert "first 4.0 KiB shown" in html and "a" * 4096 in html and "a" * 4097 not in html
    binary = client.submit("dash.bin", payload=bytes(range(256)))
    code, _, html = fetch(srv, "GET", f"/tasks/{binary}")
    assert "binary (hex of the first bytes)" in html and "00 01 02 03" in html


def test_find_a_task_by_id_from_either_shard_and_list_by_status(srv, client) -> None:
    ids = [client.submit("dash.find") for _ in range(6)]  # batches take turns over the shards
    shards = set()
    for tid in ids:
        code, headers, _ = fetch(srv, "GET", f"/tasks?id={tid.upper()}")
        assert code == 303 and headers["location"] == f"/tasks/{tid}"
        code, _, html = fetch(srv, "GET", f"/tasks/{tid}")
        assert code == 200 and "dash.find" in html
        shards.add(html.split("<dt>Shard</dt><dd>")[1].split("<")[0])
    assert shards == {"0", "1"}  # the client spreads submits: both owners answered through one port
    code, _, html = fetch(srv, "GET", "/tasks?id=not-an-id")
    assert code == 400 and "id_prefix: must be the start of a task id" in html
    code, _, html = fetch(srv, "GET", "/tasks?status=pending&type=dash.find")
    assert code == 200 and sum(tid in html for tid in ids) == 6
    code, _, html = fetch(srv, "GET", "/tasks?status=nope")
    assert code == 400 and "status: &#39;nope&#39; is not one of" in html
    code, _, html = fetch(srv, "GET", "/tasks?status=pending&min_priority=300")
    assert code == 400 and "min_priority: 300 is not in 0..255" in html


def test_cancel_and_requeue_from_the_task_page(srv, client) -> None:
    tid = client.submit("dash.cancel")
    code, _, html = fetch(srv, "GET", f"/tasks/{tid}")
    assert f'action="/tasks/{tid}/cancel"' in html
    code, headers, _ = fetch(srv, "POST", f"/tasks/{tid}/cancel")
    assert code == 303 and headers["location"] == f"/tasks/{tid}?done=cancelled"
    assert client.status(tid).status == "cancelled"
    code, _, html = fetch(srv, "POST", f"/tasks/{tid}/cancel")
    assert code == 409 and "cancelled" in html  # a second cancel: the state says why not
    dead = client.submit("dash.dead", max_retries=0)
    worker = Client(srv.url, timeout=30)
    try:
        claimed = worker.claim("w-dash", max=10, types=["dash.dead"], wait=5)
        assert [t.id for t in claimed] == [dead]
        worker.fail("w-dash", claimed[0], "boom", retry=False)
    finally:
        worker.close()
    assert client.status(dead).status == "dead_letter"
    code, _, html = fetch(srv, "GET", f"/tasks/{dead}")
    assert f'action="/tasks/{dead}/requeue"' in html and "boom" in html
    code, headers, _ = fetch(srv, "POST", f"/tasks/{dead}/requeue")
    assert code == 303 and client.status(dead).status == "pending"


def test_an_action_posted_from_another_site_is_refused(srv, client) -> None:
    tid = client.submit("dash.csrf")
    code, _, html = fetch(srv, "POST", f"/tasks/{tid}/cancel", headers={"Origin": "https://evil.example"})
    assert code == 403 and "another site" in html
    assert client.status(tid).status == "pending"
    code, _, _ = fetch(srv, "POST", f"/tasks/{tid}/cancel", headers={"Origin": f"http://{srv.host}:{srv.http_port}"})
    assert code == 303 and client.status(tid).status == "cancelled"


@pytest.fixture(scope="module")
def secured(tmp_path_factory) -> ServerProcess:
    d = tmp_path_factory.mktemp("dash-auth")
    cfg = d / "auth.yaml"
    cfg.write_text(f"""
auth:
  enabled: true
  api_keys:
    - {{key: "{KEY_ADMIN}", name: admin, permissions: [admin]}}
    - {{key: "{KEY_READ}", name: reader, permissions: [read]}}
""")
    s = ServerProcess(str(d / "data"), ["--shards", "2", "--config", str(cfg)])
    s.start()
    yield s
    s.kill()


def _sign_in(srv: ServerProcess, key: str, nxt: str = "/") -> str:
    code, headers, _ = fetch(srv, "POST", "/login", {"api_key": key, "next": nxt})
    assert code == 303 and headers["location"] == nxt
    cookie = next(c for c in headers["set-cookie"].split(", shardq") if "shardq_key=" in c)
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    return "shardq_" + cookie.split("shardq_")[-1].split(";")[0]


def test_a_post_without_this_browsers_csrf_token_is_refused(srv, client) -> None:
    tid = client.submit("dash.csrf-token")
    code, _, html = fetch(srv, "POST", f"/tasks/{tid}/cancel", raw=True)
    assert code == 403 and "CSRF token" in html
    pair, token = csrf(srv)
    other_pair, _ = csrf(srv)  # another browser's cookie with this one's token
    code, _, _ = fetch(srv, "POST", f"/tasks/{tid}/cancel", {"csrf": token}, headers={"Cookie": other_pair}, raw=True)
    assert code == 403 and client.status(tid).status == "pending"
    code, _, _ = fetch(srv, "POST", f"/tasks/{tid}/cancel", {"csrf": token}, headers={"Cookie": pair}, raw=True)
    assert code == 303 and client.status(tid).status == "cancelled"
    code, headers, html = fetch(srv, "GET", "/tasks", raw=True)
    assert "shardq_csrf=" in headers["set-cookie"] and "HttpOnly" in headers["set-cookie"]


def test_with_auth_on_pages_need_a_key_and_a_read_key_changes_nothing(secured) -> None:
    code, headers, _ = fetch(secured, "GET", "/tasks?status=failed")
    assert code == 303 and headers["location"] == "/login?next=%2Ftasks%3Fstatus%3Dfailed"
    code, _, html = fetch(secured, "GET", "/login")
    assert code == 200 and 'type="password"' in html and '<label for="api_key">' in html
    code, _, html = fetch(secured, "POST", "/login", {"api_key": "wrong-key-0123456789", "next": "/"})
    assert code == 401 and "not valid" in html and "wrong-key" not in html
    code, headers, _ = fetch(secured, "POST", "/login", {"api_key": KEY_READ, "next": "https://evil.example/"})
    assert code == 303 and headers["location"] == "/"  # no open redirect

    with Client(secured.url, api_key=KEY_ADMIN, timeout=30) as admin:
        tid = admin.submit("dash.auth")
    reader = _sign_in(secured, KEY_READ, f"/tasks/{tid}")
    code, _, html = fetch(secured, "GET", f"/tasks/{tid}", headers={"Cookie": reader})
    assert code == 200 and "dash.auth" in html and "reader" in html
    assert "/cancel" not in html  # no button it could not use
    code, _, html = fetch(secured, "POST", f"/tasks/{tid}/cancel", headers={"Cookie": reader})
    assert code == 403 and "lacks the &#39;admin&#39; permission" in html
    code, _, body = fetch(secured, "GET", "/ui/history.json", headers={"Cookie": reader})
    assert code == 200 and "series" in json.loads(body)

    admin_cookie = _sign_in(secured, KEY_ADMIN)
    code, _, html = fetch(secured, "GET", f"/tasks/{tid}", headers={"Cookie": admin_cookie})
    assert f'action="/tasks/{tid}/cancel"' in html
    assert fetch(secured, "POST", f"/tasks/{tid}/cancel", headers={"Cookie": admin_cookie})[0] == 303
    code, headers, _ = fetch(secured, "POST", "/logout", headers={"Cookie": admin_cookie})
    assert code == 303 and headers["location"] == "/login" and 'shardq_key=""' in headers["set-cookie"]
    joined = "".join(secured.stderr_lines + secured.stdout_lines)
    assert KEY_ADMIN not in joined and KEY_READ not in joined


def test_schedules_page_shows_next_runs_and_pauses_resumes_removes(srv, client) -> None:
    client.schedule_add("dash-nightly", "dash.report", {"f": "pdf"}, cron="30 2 * * *", timezone="Europe/Paris")
    client.schedule_add("dash:odd@name", "dash.tick", every=3600)
    code, _, html = fetch(srv, "GET", "/schedules")
    assert code == 200 and "dash-nightly" in html and "30 2 * * * (Europe/Paris)" in html
    assert "every 3600.0 s" in html and ("+01:00" in html or "+02:00" in html)
    code, headers, _ = fetch(srv, "POST", "/schedules/dash-nightly/pause")
    assert code == 303 and headers["location"] == "/schedules?done=paused&name=dash-nightly"
    assert client.schedule("dash-nightly")["paused"] is True
    code, _, html = fetch(srv, "GET", headers["location"])
    assert "Schedule dash-nightly paused." in html and 'aria-label="Resume dash-nightly"' in html
    assert fetch(srv, "POST", "/schedules/dash-nightly/resume")[0] == 303
    assert client.schedule("dash-nightly")["paused"] is False
    code, _, _ = fetch(srv, "POST", "/schedules/dash%3Aodd%40name/remove")
    assert code == 303 and [s["name"] for s in client.schedules()] == ["dash-nightly"]
    code, _, html = fetch(srv, "POST", "/schedules/no-such/pause")
    assert code == 404


def wait_for_command(client: Client, worker_id: str, command: str) -> None:
    """The order reaches the worker's shard from the coordinator a moment after it is given."""
    deadline = time.monotonic() + 10
    while (got := client.beat(worker_id).command) != command:
        assert time.monotonic() < deadline, got
        time.sleep(0.05)


def test_quiet_and_stop_a_worker_from_the_workers_page(srv, client) -> None:
    client.register_worker("w-dash-q", hostname="box-1", types=["dash.q"], concurrency=2)
    code, _, html = fetch(srv, "GET", "/workers")
    assert code == 200 and "w-dash-q" in html and 'aria-label="Quiet w-dash-q"' in html
    code, headers, _ = fetch(srv, "POST", "/workers/w-dash-q/quiet")
    assert code == 303 and headers["location"] == "/workers?done=quiet&worker=w-dash-q"
    wait_for_command(client, "w-dash-q", "quiet")  # delivered in a heartbeat's answer
    code, _, html = fetch(srv, "GET", "/workers?done=quiet&worker=w-dash-q")
    assert "Worker w-dash-q told to quiet down" in html and 'aria-label="Quiet w-dash-q"' not in html
    assert fetch(srv, "POST", "/workers/w-dash-q/stop")[0] == 303
    wait_for_command(client, "w-dash-q", "stop")
    code, _, html = fetch(srv, "POST", "/workers/no-such-worker/quiet")
    assert code == 404 and "no-such-worker" in html
    client.deregister_worker("w-dash-q")


def test_a_task_page_says_why_and_shows_the_history(srv, client) -> None:
    parent = client.submit("dash.why.parent", delay=3600)
    child = client.submit("dash.why.child", depends_on=[parent])
    code, _, html = fetch(srv, "GET", f"/tasks/{child}")
    assert code == 200 and "Why it is not running" in html
    assert 'data-reason="waiting_for_dependency"' in html and parent in html.split('class="explanation"')[1]
    assert "submitted" in html.split('id="history-h"')[1]
    tid = client.submit("dash.why.fail", max_retries=0)
    worker = Client(srv.url, timeout=30)
    try:
        claimed = worker.claim("w-why", max=5, types=["dash.why.fail"], wait=5)
        worker.fail("w-why", claimed[0], "Timeout after 30.2 s on 10.0.0.7", retry=False)
    finally:
        worker.close()
    code, _, html = fetch(srv, "GET", f"/tasks/{tid}")
    history = html.split('id="history-h"')[1]
    assert "How it ended" in html and "claimed by w-why" in history and "Timeout after 30.2 s on 10.0.0.7" in history


def _dead_letters(srv: ServerProcess, client: Client, task_type: str, errors: list[str]) -> list[str]:
    ids = [client.submit(task_type, max_retries=0) for _ in errors]
    worker = Client(srv.url, timeout=30)
    try:
        got: list = []
        deadline = time.monotonic() + 10
        while len(got) < len(ids):
            assert time.monotonic() < deadline
            got += worker.claim("w-dlq", max=len(ids), types=[task_type], wait=1)
        by_id = {t.id: t for t in got}
        for tid, err in zip(ids, errors):
            worker.fail("w-dlq", by_id[tid], err, retry=False)
    finally:
        worker.close()
    return ids


def test_dead_letter_groups_requeued_after_their_count_is_confirmed(srv, client) -> None:
    ids = _dead_letters(srv, client, "dash.fetch", ["TimeoutError: timeout after 30.2 s on 10.0.0.7",
                                                     "TimeoutError: timeout after 29.8 s on 10.0.0.9",
                                                     "TimeoutError: timeout after 31 s on 10.0.0.12",
                                                     "KeyError: 'user_id'"])
    code, _, html = fetch(srv, "GET", "/dlq?type=dash.fetch")
    assert code == 200 and "TimeoutError: timeout after &lt;n&gt; s on &lt;ip&gt;" in html
    row = html.split("TimeoutError: timeout after &lt;n&gt;")[1].split("</tr>")[0]
    assert '<td class="num">3</td>' in row
    group = row.split('href="/dlq/')[1].split("/")[0]
    code, _, html = fetch(srv, "GET", f"/dlq/{group}/requeue")
    assert code == 200 and "Requeue 3 dead letters?" in html and 'name="confirmed" value="3"' in html
    code, _, html = fetch(srv, "POST", f"/dlq/{group}/requeue", {})
    assert code == 400 and "confirmed" in html  # no count confirmed: nothing done
    code, headers, _ = fetch(srv, "POST", f"/dlq/{group}/requeue", {"confirmed": "3"})
    assert code == 303 and headers["location"] == "/dlq?done=requeued&n=3"
    assert sorted(client.status(i).status for i in ids) == ["dead_letter", "pending", "pending", "pending"]


def test_search_by_id_prefix_and_error_text_and_delete_a_finished_task(srv, client) -> None:
    [dead] = _dead_letters(srv, client, "dash.search", ["ValueError: bad zebra 42"])
    code, _, html = fetch(srv, "GET", f"/tasks?id={dead[:6]}")
    assert code == 200 and dead in html
    code, _, html = fetch(srv, "GET", "/tasks?error=zebra")
    assert code == 200 and dead in html and "bad zebra 42" in html
    code, _, html = fetch(srv, "GET", f"/tasks/{dead}")
    assert f'action="/tasks/{dead}/delete"' in html
    code, headers, _ = fetch(srv, "POST", f"/tasks/{dead}/delete")
    assert code == 303 and client.status(dead) is None
    code, _, html = fetch(srv, "GET", headers["location"])
    assert f"Task {dead} was deleted." in html
    pending = client.submit("dash.search")
    code, _, html = fetch(srv, "POST", f"/tasks/{pending}/delete")
    assert code == 409 and "cancel" in html  # a task that has not finished: cancel it first


def test_the_types_page_shows_each_types_figures(srv, client) -> None:
    client.submit_many([Job("dash.types") for _ in range(4)])
    code, _, html = fetch(srv, "GET", "/types")
    assert code == 200 and "dash.types" in html
    row = html.split(">dash.types</a>")[1].split("</tr>")[0]
    assert '<td class="num">4</td>' in row


def test_pause_and_resume_a_type_from_the_types_page(srv, client) -> None:
    client.submit("dash/odd type")  # a "/" in a type travels as %2F in the page's paths
    code, _, html = fetch(srv, "GET", "/types")
    assert 'action="/types/dash%2Fodd%20type/pause"' in html
    code, headers, _ = fetch(srv, "POST", "/types/dash%2Fodd%20type/pause")
    assert code == 303 and headers["location"] == "/types?done=paused&type=dash%2Fodd+type"
    assert [c["type"] for c in client.controls() if c["paused"]] == ["dash/odd type"]
    code, _, html = fetch(srv, "GET", headers["location"])
    assert "Type dash/odd type paused" in html and 'action="/types/dash%2Fodd%20type/resume"' in html
    assert fetch(srv, "POST", "/types/dash%2Fodd%20type/resume")[0] == 303
    assert not any(c["paused"] for c in client.controls())


def test_the_shards_page_counts_a_restart_and_shows_recovery(tmp_path) -> None:
    s = ServerProcess(str(tmp_path / "data"), ["--shards", "2"])
    s.start()
    try:
        code, _, html = fetch(s, "GET", "/shards")
        assert code == 200 and html.count('<td class="num">0</td>\n    </tr>') == 2  # no restart yet
        shard1 = next(p for p in psutil.Process(s.pid).children(recursive=True)
                      if "shard-1" in " ".join(p.cmdline()) or p.name().endswith("shard-1"))
        shard1.kill()
        deadline = time.monotonic() + 30
        while True:
            try:
                code, _, html = fetch(s, "GET", "/shards")
            except OSError:  # handed to the shard being killed: its connections die with it
                code, html = 0, ""
            rows = html.split("<tbody>")[1].split("</tr>") if code == 200 else []
            if len(rows) > 2 and rows[1].rstrip().endswith('<td class="num">1</td>'):
                break
            assert time.monotonic() < deadline, html[-2000:]
            time.sleep(0.2)
        assert " s</td>" in rows[1]  # its recovery time
    finally:
        s.kill()


def test_repeated_failed_sign_ins_are_slowed_like_on_every_interface(secured) -> None:
    took = []
    # Each shard counts the failures it saw from an address (3 free, then 0.25 s doubling): in
    # 7 tries on 2 shards, one of them sees its 4th at the latest.
    for _ in range(7):
        t = time.monotonic()
        code, _, _ = fetch(secured, "POST", "/login", {"api_key": "wrong-key-0123456789", "next": "/"})
        took.append(time.monotonic() - t)
        assert code == 401
        if took[-1] >= 0.2:
            break
    assert max(took) >= 0.2, took
