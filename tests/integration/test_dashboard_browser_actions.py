"""The dashboard's actions in a real browser (Debian's chromium via Playwright) against a live
2-shard server with a real bundled worker: what each page shows is checked against the broker's
state, then an operator pauses and resumes a type, requeues a dead-letter group after its count
is confirmed, quiets the worker, and a read-only key finds no action anywhere. Every page is
screenshot; SHARDQ_SCREENSHOT_DIR=docs/screenshots refreshes the ones the docs show."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from test_dashboard_browser import chromium_browser, sync_api
from test_worker import WorkerProcess

import shardq
from shardq.testing import ServerProcess

KEY_ADMIN = "admin-key-0123456789abcdef"
KEY_READ = "read-key-0123456789abcdef"
PAGES = ("/", "/types", "/tasks", "/dlq", "/workers", "/schedules", "/shards")


@pytest.fixture(scope="module")
def srv(tmp_path_factory) -> ServerProcess:
    d = tmp_path_factory.mktemp("dash-actions")
    cfg = d / "auth.yaml"
    cfg.write_text(f"""
auth:
  enabled: true
  api_keys:
    - {{key: "{KEY_ADMIN}", name: operator, permissions: [admin]}}
    - {{key: "{KEY_READ}", name: viewer, permissions: [read]}}
""")
    s = ServerProcess(str(d / "data"), ["--shards", "2", "--heartbeat-interval-ms", "1000", "--config", str(cfg)])
    s.start()
    yield s
    s.kill()


@pytest.fixture(scope="module")
def client(srv) -> shardq.Client:
    with shardq.Client(srv.url, api_key=KEY_ADMIN, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def worker(srv, tmp_path_factory):
    w = WorkerProcess(srv.url, ("--worker-id", "w-dash", "--api-key", KEY_ADMIN, "--concurrency", "2"),
                      tmp_path_factory.mktemp("marks") / "marks.log")
    w.wait_for_log("worker w-dash ready")
    yield w
    w.cleanup()


@pytest.fixture(scope="module")
def browser():
    yield from chromium_browser()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    where = os.environ.get("SHARDQ_SCREENSHOT_DIR")
    path = Path(where) if where else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def signed_in(browser, srv: ServerProcess, key: str):
    context = browser.new_context(base_url=srv.http_url, viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto("/types")
    page.wait_for_url("**/login?next=%2Ftypes")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/types")
    return context, page


def until(check, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_an_operator_works_an_incident_from_the_dashboard(browser, srv, client, worker, shots) -> None:
    # The broker's state: work done by the real worker, dead letters of one cause, a queue.
    done = client.submit_many([shardq.Job("add", {"a": i, "b": 1}) for i in range(20)])
    dead = [client.submit("boom", max_retries=0) for _ in range(3)]
    until(lambda: all(t is not None and t.status == "dead_letter" for t in client.status_many(dead)))
    until(lambda: all(t is not None and t.status == "completed" for t in client.status_many(done)))
    client.schedule_add("nightly-report", "report", {"format": "pdf"}, cron="30 2 * * *",
                        timezone="Europe/Paris")
    context, page = signed_in(browser, srv, KEY_ADMIN)
    try:
        # Types: the figures the broker has; pause and resume a type.
        row = page.get_by_role("row").filter(has_text="boom")
        sync_api.expect(row.locator("td").nth(4)).to_have_text("3")
        page.get_by_role("button", name="Pause add").click()
        sync_api.expect(page.get_by_role("status")).to_contain_text("Type add paused")
        assert [c["type"] for c in client.controls() if c["paused"]] == ["add"]
        page.screenshot(path=str(shots / "types.png"), full_page=True)
        page.get_by_role("button", name="Resume add").click()
        sync_api.expect(page.get_by_role("status")).to_contain_text("Type add resumed")
        assert not any(c["paused"] for c in client.controls())

        # Dead letters: one group of 3, requeued after confirming the count.
        page.get_by_role("link", name="Dead letters").click()
        group = page.get_by_role("row").filter(has_text="ValueError: boom on attempt <n>")
        sync_api.expect(group.locator("td").nth(2)).to_have_text("3")
        page.screenshot(path=str(shots / "dead-letters.png"), full_page=True)
        group.get_by_role("link", name="Requeue the 3 tasks of this group").click()
        sync_api.expect(page.get_by_role("heading", level=1)).to_have_text("Requeue 3 dead letters?")
        page.get_by_role("button", name="Requeue 3 tasks").click()
        sync_api.expect(page.get_by_role("status")).to_have_text("3 tasks requeued.")
        # The worker runs them again and they fail again: back in the group, attempts 2.
        until(lambda: all(t is not None and t.status == "dead_letter" and t.attempt == 2
                          for t in client.status_many(dead)))

        # A task's page: why it ended, and its history.
        page.goto(f"/tasks/{dead[0]}")
        sync_api.expect(page.locator(".explanation")).to_contain_text("dead-lettered after 2 attempt(s)")
        lines = page.locator("ol.timeline li").all_inner_texts()
        assert sum("claimed by w-dash" in x for x in lines) == 2 and any("requeued" in x for x in lines), lines
        page.screenshot(path=str(shots / "task.png"), full_page=True)

        # Workers: the real worker, then quiet it; it hears the order at its next heartbeat.
        page.get_by_role("link", name="Workers").click()
        sync_api.expect(page.get_by_role("row").filter(has_text="w-dash").locator("td").nth(4)).to_have_text("2")
        page.screenshot(path=str(shots / "workers.png"), full_page=True)
        page.get_by_role("button", name="Quiet w-dash").click()
        sync_api.expect(page.get_by_role("status")).to_contain_text("Worker w-dash told to quiet down")
        worker.wait_for_log("quiet")
        sync_api.expect(page.get_by_role("row").filter(has_text="w-dash")).to_contain_text("quiet", timeout=10_000)

        for path in PAGES:  # every page, as it looks now
            page.goto(path)
            name = "overview" if path == "/" else path.strip("/")
            page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    finally:
        context.close()


def test_a_read_only_key_finds_no_action_anywhere(browser, srv, client) -> None:
    tid = client.submit("viewer.sees")
    context, page = signed_in(browser, srv, KEY_READ)
    try:
        for path in (*PAGES, f"/tasks/{tid}"):
            page.goto(path)
            buttons = page.locator("main button, main a.button").all_inner_texts()
            # Reading stays possible (filters, paging); nothing that changes the broker is there.
            assert not [b for b in buttons if b.split()[0] in
                        {"Cancel", "Requeue", "Requeue…", "Delete", "Delete…", "Pause", "Resume", "Quiet",
                         "Stop", "Remove"}], (path, buttons)
        sync_api.expect(page.locator("header .who")).to_contain_text("viewer")
    finally:
        context.close()
