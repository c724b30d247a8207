"""The pages in headless Chromium (Debian's package, never a downloaded browser) against a
real uvicorn server in a thread and a real ``taskflow worker`` process on one SQLite file.

Takes a screenshot of every page: into a temporary folder, or into the folder that
``TASKFLOW_SCREENSHOTS`` names (``TASKFLOW_SCREENSHOTS=docs/admin`` refreshes the ones
``docs/admin.md`` shows). A test run leaves the checkout as it was."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskflow import App
from taskflow.admin import TokenStore, create_app
from tests.conftest import IN_CI
from tests.integration.redis_helpers import ROOT

from .browser_app import make_app

CHROMIUM = "/usr/bin/chromium"
SHOTS_ENV = "TASKFLOW_SCREENSHOTS"
_shots: dict[str, Path] = {}  # "dir": where _shot writes, set per module run
OPS = "browser-ops-token"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]


def _require_chromium() -> Any:
    if not os.path.exists(CHROMIUM):
        message = f"{CHROMIUM} is missing (apt-get install -y chromium)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return pytest.importorskip("playwright.sync_api")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Site:
    """The app, the server's base URL and the worker process of one test."""

    def __init__(self, app: App, base: str, flag: Path) -> None:
        self.app, self.base, self.flag = app, base, flag


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    import uvicorn

    url = f"sqlite:///{tmp_path / 'browser.db'}"
    flag = tmp_path / "fail-now"
    flag.write_text("1")
    env = {**os.environ, "TASKFLOW_BROKER_URL": url, "ADMIN_FAIL_FLAG": str(flag),
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    worker = subprocess.Popen(
        [sys.executable, "-m", "taskflow.cli.main", "worker", "-A",
         "tests.admin_web.browser_app:app", "-Q", "orders,mail,reports", "-c", "2",
         "--loglevel", "warning"],
        cwd=ROOT, env=env,
    )  # fmt: skip
    app = make_app(url)
    port = _free_port()
    web = create_app(app, tokens=TokenStore([("ops", OPS, False)]))
    server = uvicorn.Server(
        uvicorn.Config(web, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, name="admin-uvicorn")
    thread.start()
    try:
        _wait("the server", lambda: server.started)
        _wait("the worker", lambda: len(app.admin.workers()) == 1)
        yield Site(app, f"http://127.0.0.1:{port}", flag)
    finally:
        server.should_exit = True
        thread.join(10)
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        app.close()


@pytest.fixture
def page(site: Site) -> Iterator[Any]:
    sync_api = _require_chromium()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 860})
        tab = context.new_page()
        tab.on("dialog", lambda dialog: dialog.accept())
        try:
            yield tab
        finally:
            context.close()
            browser.close()


@pytest.fixture(autouse=True, scope="module")
def _shots_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    wanted = os.environ.get(SHOTS_ENV)
    _shots["dir"] = ROOT / wanted if wanted else tmp_path_factory.mktemp("screenshots")
    yield
    _shots.clear()


def _shot(page: Any, name: str) -> None:
    folder = _shots["dir"]
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def _login(page: Any, site: Site) -> None:
    page.goto(site.base + "/")
    assert "/login" in page.url
    _shot(page, "login")
    page.get_by_label("Access token").fill(OPS)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(site.base + "/")


def test_an_operator_works_through_every_page(page: Any, site: Site) -> None:
    app = site.app
    dead = [app.send_task("orders.charge", args=[i]).id for i in range(3)]
    app.send_task("mail.send", args=["a@example.com"]).get(timeout=30)
    _wait("three dead letters", lambda: len(app.admin.dead_letters().items) == 3)

    _login(page, site)
    orders = page.locator('tr[data-queue="orders"]')
    assert orders.locator('[data-col="dead"]').inner_text() == "3"
    page.wait_for_selector("text=workers alive")
    _shot(page, "overview")

    # Pause a queue from its page; tasks sent to it then wait, and the overview's counts
    # follow without a reload (the page polls).
    page.goto(site.base + "/queues/mail")
    page.get_by_role("button", name="Pause queue").click()
    page.wait_for_selector('[data-testid="queue-state"]:text("paused")')
    assert app.admin.paused() == {"mail"}
    page.goto(site.base + "/")
    for i in range(2):
        app.send_task("mail.send", args=[f"later{i}@example.com"])
    page.wait_for_selector('tr[data-queue="mail"] [data-col="ready"]:text("2")', timeout=15000)
    page.goto(site.base + "/queues/mail")
    _shot(page, "queue")

    # Replay one dead letter once the cause is fixed: the worker runs it to success.
    site.flag.unlink()
    page.goto(site.base + "/dead-letters?queue=orders")
    _shot(page, "dead-letters")
    page.get_by_label(f"Select {dead[0]}").check()
    page.get_by_role("button", name="Replay selected").click()
    page.wait_for_selector("text=Replayed 1 of 1 dead letters.")
    page.goto(site.base + f"/tasks/{dead[0]}")
    page.wait_for_selector('[data-testid="task-status"]:text("succeeded")', timeout=20000)
    _shot(page, "task")
    assert app.result(dead[0]).get(timeout=5) == "charged 0"

    # Replay all matching: the confirmation states the count first.
    page.goto(site.base + "/dead-letters?queue=orders")
    page.get_by_role("link", name="Replay all matching…").click()
    assert (
        "This will replay 2 dead letters"
        in page.locator('[data-testid="confirm-count"]').inner_text()
    )
    _shot(page, "confirm")

    # Add a schedule through the form; the beat's store has it.
    page.goto(site.base + "/schedules")
    page.get_by_label("Name", exact=True).fill("daily-report")
    page.get_by_label("Task", exact=True).select_option("reports.daily")
    page.get_by_label("on a cron expression").check()
    page.get_by_label("Cron expression", exact=True).fill("0 6 * * *")
    page.get_by_role("button", name="Add schedule").click()
    page.wait_for_selector('tr[data-schedule="daily-report"]')
    _shot(page, "schedules")
    (info,) = app.schedules.list()
    assert (info.schedule.name, info.schedule.cron, info.source) == (
        "daily-report",
        "0 6 * * *",
        "stored",
    )

    page.goto(site.base + "/workers")
    page.wait_for_selector("text=alive")
    _shot(page, "workers")
    page.goto(site.base + "/audit")
    _shot(page, "audit")
    actions = [(e.actor, e.action) for e in app.admin.audit()]
    assert actions[:3] == [("ops", "schedule_add"), ("ops", "replay"), ("ops", "pause")]

    # The same overview on a phone.
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(site.base + "/")
    _shot(page, "overview-phone")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, "the overview scrolls sideways on a phone"


def test_forms_without_the_csrf_token_are_refused(page: Any, site: Site) -> None:
    _login(page, site)
    for data in ({}, {"csrf": "forged"}):
        response = page.request.post(site.base + "/queues/orders/pause", form=data)
        assert response.status == 403
    assert site.app.admin.paused() == set()
    # Keyboard only: the skip link is the first stop and leads to the content.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
