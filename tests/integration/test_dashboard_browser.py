"""The web dashboard in a real browser (Debian's chromium, driven by Playwright) against a live
2-shard server: live updates without reloading, charts drawn from the broker's own history,
keyboard and screen-reader basics, a phone's width, dark mode, a background tab that stops
polling, and the find -> open -> cancel flow."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from shardq.client.models import Job
from shardq.client.sync import Client
from shardq.testing import ServerProcess

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is part of the dev extra")
CHROMIUM = os.environ.get("SHARDQ_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.fail(f"no chromium at {CHROMIUM}: scripts/test installs Debian's chromium "
                "(or set SHARDQ_CHROMIUM)", pytrace=False)


@pytest.fixture(scope="module")
def srv(tmp_path_factory) -> ServerProcess:
    s = ServerProcess(str(tmp_path_factory.mktemp("dash-browser") / "data"), ["--shards", "2"])
    s.start()
    yield s
    s.kill()


@pytest.fixture(scope="module")
def client(srv) -> Client:
    c = Client(srv.url, timeout=30)
    yield c
    c.close()


def chromium_browser():
    """Debian's chromium under Playwright, for a module's tests (a fixture's body)."""
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def browser():
    yield from chromium_browser()


@pytest.fixture
def page(browser, srv):
    context = browser.new_context(base_url=srv.http_url, viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    yield pg
    context.close()
    assert errors == [], errors  # no script error, no CSP violation


def test_the_overview_updates_itself_and_draws_the_charts(page, client) -> None:
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    page.goto("/")
    pending = page.locator('[data-total="pending"]')
    before = int(pending.inner_text().replace(",", ""))
    client.submit_many([Job("browser.live") for _ in range(25)])
    sync_api.expect(pending).to_have_text(f"{before + 25:,}", timeout=10_000)
    assert len(navigations) == 1  # htmx swapped the fragment: the page never reloaded
    sync_api.expect(page.locator("#chart-rates canvas")).to_have_count(1, timeout=10_000)
    sync_api.expect(page.locator("#chart-depth canvas")).to_have_count(1)
    page.wait_for_function("Number(document.getElementById('chart-rates').dataset.points) >= 2", timeout=10_000)
    page.get_by_role("button", name="1 hour").click()
    sync_api.expect(page.get_by_role("button", name="1 hour")).to_have_attribute("aria-pressed", "true")


def test_a_hidden_tab_stops_asking_the_server(page) -> None:
    page.goto("/")
    asked: list[str] = []
    page.on("request", lambda req: asked.append(req.url))
    page.wait_for_timeout(2500)
    assert asked, "a visible overview polls"
    page.evaluate("""() => {
        Object.defineProperty(document, 'hidden', {configurable: true, get: () => true});
        Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => 'hidden'});
        document.dispatchEvent(new Event('visibilitychange'));
    }""")
    page.wait_for_timeout(300)  # a request already in flight may finish
    asked.clear()
    page.wait_for_timeout(4500)
    assert asked == []


def test_keyboard_and_screen_reader_basics(page) -> None:
    page.goto("/tasks")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    assert page.locator("nav a[aria-current=page]").inner_text() == "Tasks"
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input:not([type=hidden]), select')]
        .filter(el => !el.labels.length && !el.getAttribute('aria-label')).map(el => el.name)""")
    assert unlabelled == []
    assert page.locator("table caption").count() == 1 and page.locator("th[scope=col]").count() >= 5


def test_a_phone_gets_no_sideways_scrolling_and_dark_mode_follows_the_system(browser, srv) -> None:
    context = browser.new_context(base_url=srv.http_url, viewport={"width": 375, "height": 740},
                                  color_scheme="dark", is_mobile=True)
    try:
        pg = context.new_page()
        for path in ("/", "/types", "/tasks", "/dlq", "/workers", "/schedules", "/shards"):
            pg.goto(path)
            assert pg.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), path
        bg = pg.evaluate("getComputedStyle(document.body).backgroundColor")
        assert bg == "rgb(13, 17, 23)"
    finally:
        context.close()
    light = browser.new_context(base_url=srv.http_url, color_scheme="light")
    try:
        pg = light.new_page()
        pg.goto("/")
        assert pg.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(255, 255, 255)"
    finally:
        light.close()


def test_find_a_task_open_it_and_cancel_it(page, client) -> None:
    tid = client.submit("browser.cancel", {"note": "<b>not bold</b>"})
    page.goto("/tasks")
    page.get_by_label("Task id").fill(tid)
    page.get_by_role("button", name="Find").click()
    page.wait_for_url(f"**/tasks/{tid}")
    assert "<b>not bold</b>" in page.locator("pre.preview").inner_text()  # shown as text
    page.get_by_role("button", name="Cancel").click()
    sync_api.expect(page.get_by_role("status")).to_have_text("The task was cancelled.")
    deadline = time.monotonic() + 5
    while client.status(tid).status != "cancelled":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert page.get_by_role("button", name="Cancel").count() == 0
