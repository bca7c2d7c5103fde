"""The web dashboard (`feedwork dashboard`) in a real headless browser, against real feeder
processes: one on SQLite, and two on one PostgreSQL database (the dashboard given both).

Every page loads without errors in the browser's console; the numbers it shows match
GetStats, also after its script has refreshed them; redrive, purge and cancel from the
pages take effect; behind an access list a user logs in with a key and acts with it; a
form without its token is refused. Screenshots of every page land in
tests/browser/screenshots/.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from feedwork.client import FeederClient
from feedwork.credentials import ClientSecurity
from feedwork.dashboard import Dashboard, DashboardError
from feedwork.types import TaskState
from feedwork.v1 import feeder_pb2 as pb
from tests.browser.conftest import Browser
from tests.faults.harness import FeederProc, call, feeder_stub, wait_for

pytestmark = pytest.mark.timeout(120)

ADMIN_KEY = "fwk_a0000001_admin-secret"
PRODUCER_KEY = "fwk_p0000001_producer-secret"


@dataclass
class Site:
    target: str
    url: str
    dashboard: Dashboard


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(params=["sqlite", "postgres"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    if request.param == "sqlite":
        feeders = [FeederProc(tmp_path)]
    else:
        dsn = request.getfixturevalue("postgres_dsn")
        feeders = [FeederProc(tmp_path, db=dsn, name=f"feeder{i}") for i in (1, 2)]
    for feeder in feeders:
        feeder.start()
    target = ",".join(f.target for f in feeders)
    dashboard = Dashboard(target=target, listen="127.0.0.1:0")
    dashboard.start()
    try:
        yield Site(target, dashboard.url, dashboard)
    finally:
        dashboard.close()
        for feeder in feeders:
            feeder.stop(grace=5)


def make_dead(
    target: str, queue: str, count: int, *, metadata: tuple[tuple[str, str], ...] = ()
) -> list[str]:
    """`count` tasks of `queue` that failed their only attempt (through the first feeder of
    `target`: they share the database)."""
    with feeder_stub(target.split(",")[0]) as stub:
        specs = [
            pb.TaskSpec(queue=queue, payload=b'{"n": %d}' % i, max_attempts=1) for i in range(count)
        ]
        call(lambda r, **kw: stub.Submit(r, metadata=metadata, **kw), pb.SubmitRequest(tasks=specs))
        leased = call(
            lambda r, **kw: stub.Lease(r, metadata=metadata, **kw),
            pb.LeaseRequest(queue=queue, max_tasks=count, worker_id="browser-test"),
        ).tasks
        nacks = [
            pb.NackItem(lease_token=t.lease_token, error=f"ValueError: bad image {t.task_id}")
            for t in leased
        ]
        call(lambda r, **kw: stub.Nack(r, metadata=metadata, **kw), pb.NackRequest(items=nacks))
        return [t.task_id for t in leased]


def wait_until(condition: Callable[[], Any], within: float = 15.0) -> Any:
    return wait_for(condition, within=within, what="the page to change", every=0.1)


def shown(browser: Browser, queue: str, field: str) -> str:
    return str(
        browser.driver.find_element(
            By.CSS_SELECTOR, f'[data-queue="{queue}"][data-field="{field}"]'
        ).text
    )


def load(browser: Browser, url: str, what: str, *, status: int = 200) -> None:
    """Loads `url`, saves a screenshot, and checks the console: nothing, or for a page
    meant to answer an error `status`, only the browser's note of that status."""
    browser.driver.get(url)
    wait_until(lambda: browser.driver.execute_script("return document.readyState") == "complete")
    browser.screenshot(what)
    expected = []
    if status != 200:
        expected = [
            f"SEVERE: {url} - Failed to load resource: "
            f"the server responded with a status of {status} (Not Found)"
        ]
    assert browser.console_errors() == expected, what


def test_every_page_loads_and_shows_what_getstats_says(site: Site, browser: Browser) -> None:
    with FeederClient(site.target) as client:
        for i in range(12):
            client.submit(json.dumps({"image": i}), queue="images")
        client.submit(b"\xff\xfe binary", queue="images", priority=3, headers={"trace": "t-1"})
        dead = make_dead(site.target, "mail", 3)
        stats = client.stats()

    load(browser, site.url, "queues")
    for queue in ("images", "mail"):
        expected = stats.queue(queue)
        for field in ("ready", "scheduled", "leased", "completed", "dead", "cancelled"):
            assert shown(browser, queue, field) == f"{getattr(expected, field):,}", (queue, field)
    # The script refreshes the numbers from /api/stats: still GetStats's after it ran.
    wait_until(lambda: browser.driver.find_element(By.ID, "updated").text.startswith("updated"))
    with FeederClient(site.target) as client:
        client.submit(b"one more", queue="images")
        now = client.stats().queue("images")
    wait_until(lambda: shown(browser, "images", "ready") == f"{now.ready:,}")
    browser.screenshot("queues-refreshed")
    assert browser.console_errors() == []

    load(browser, f"{site.url}queues/mail", "queue-mail")
    assert shown(browser, "mail", "dead") == "3"
    rows = browser.driver.find_elements(By.CSS_SELECTOR, "#dead tbody tr")
    assert sorted(r.get_attribute("data-task") for r in rows) == sorted(dead)
    assert "ValueError: bad image" in rows[0].text
    wait_until(lambda: "/s" in shown(browser, "mail", "rate-submitted"))

    load(browser, f"{site.url}tasks/{dead[0]}", "task-dead")
    assert browser.driver.find_element(By.ID, "state").text == "DEAD"
    history = browser.driver.find_element(By.ID, "history").text
    assert f"ValueError: bad image {dead[0]}" in history and "browser-test" in history
    assert '"n"' in browser.driver.find_element(By.ID, "payload").text

    load(browser, f"{site.url}queues/nope-never-made", "queue-unknown")
    load(browser, f"{site.url}tasks/999999", "task-missing", status=404)
    assert "404" in browser.driver.find_element(By.TAG_NAME, "h1").text


def test_redrive_purge_and_cancel_from_the_pages(site: Site, browser: Browser) -> None:
    dead = make_dead(site.target, "mail", 4)
    load(browser, f"{site.url}queues/mail", "dead-before")
    row = browser.driver.find_element(By.CSS_SELECTOR, f'#dead tr[data-task="{dead[0]}"]')
    row.find_element(By.XPATH, ".//button[text()='redrive']").click()
    wait_until(lambda: "Done: 1 redriven." in browser.driver.page_source)
    browser.screenshot("redriven-one")
    with FeederClient(site.target) as client:
        assert client.get(dead[0]).state == TaskState.READY
        assert client.stats(["mail"]).queue("mail").dead == 3

    browser.driver.find_element(By.ID, "purge-all").click()
    browser.driver.switch_to.alert.accept()  # "Delete every dead task of mail for good?"
    wait_until(lambda: "Done: 3 purged." in browser.driver.page_source)
    browser.screenshot("purged-all")
    assert browser.driver.find_element(By.ID, "no-dead")
    with FeederClient(site.target) as client:
        assert client.stats(["mail"]).queue("mail").dead == 0

    load(browser, f"{site.url}tasks/{dead[0]}", "task-ready")
    browser.driver.find_element(By.ID, "cancel").click()
    browser.driver.switch_to.alert.accept()
    wait_until(lambda: browser.driver.find_element(By.ID, "state").text == "CANCELLED")
    browser.screenshot("task-cancelled")
    with FeederClient(site.target) as client:
        assert client.get(dead[0]).state == TaskState.CANCELLED
    assert browser.console_errors() == []


def test_a_form_without_its_token_is_refused(site: Site) -> None:
    make_dead(site.target, "mail", 1)
    request = urllib.request.Request(f"{site.url}queues/mail/dead/purge", data=b"", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403
    refused.value.close()
    with FeederClient(site.target) as client:
        assert client.stats(["mail"]).queue("mail").dead == 1


def test_behind_keys_each_user_logs_in_and_acts_with_their_key(
    tmp_path: Path, browser: Browser
) -> None:
    auth = tmp_path / "auth.txt"
    auth.write_text(
        f"ops sha256:{_digest(ADMIN_KEY)} admin\n"
        f"billing sha256:{_digest(PRODUCER_KEY)} producer:mail\n"
    )
    feeder = FeederProc(tmp_path, args=["--auth-file", str(auth)])
    feeder.start()
    dashboard = Dashboard(target=feeder.target, listen="127.0.0.1:0")
    dashboard.start()
    try:
        make_dead(feeder.target, "mail", 1, metadata=(("authorization", f"Bearer {ADMIN_KEY}"),))
        load(browser, dashboard.url, "login-asked")
        assert browser.driver.current_url.endswith("/login")
        key = browser.driver.find_element(By.ID, "key")
        key.send_keys("fwk_x0000001_forged")
        key.submit()
        wait_until(lambda: "does not know this key" in browser.driver.page_source)
        browser.screenshot("login-refused")
        assert [e for e in browser.console_errors() if "status of 401" not in e] == []

        browser.driver.find_element(By.ID, "key").send_keys(PRODUCER_KEY)
        browser.driver.find_element(By.ID, "key").submit()
        wait_until(lambda: "403" in browser.driver.find_element(By.TAG_NAME, "h1").text)
        browser.screenshot("producer-may-not")
        assert [e for e in browser.console_errors() if "status of 403" not in e] == []

        browser.driver.delete_all_cookies()
        load(browser, f"{dashboard.url}login", "login-again")
        browser.driver.find_element(By.ID, "key").send_keys(ADMIN_KEY)
        browser.driver.find_element(By.ID, "key").submit()
        wait_until(lambda: browser.driver.find_elements(By.ID, "queues"))
        browser.screenshot("admin-queues")
        assert shown(browser, "mail", "dead") == "1"
        assert browser.console_errors() == []
    finally:
        dashboard.close()
        feeder.stop(grace=5)


def test_clear_text_off_loopback_is_refused() -> None:
    with pytest.raises(DashboardError, match="without TLS"):
        Dashboard(target="127.0.0.1:1", listen="0.0.0.0:0")
    Dashboard(
        target="127.0.0.1:1", listen="0.0.0.0:0", insecure=True, security=ClientSecurity()
    ).close()


def test_pause_and_resume_from_the_queue_page(site: Site, browser: Browser) -> None:
    with FeederClient(site.target) as client:
        client.submit(b"waiting", queue="images")
    load(browser, f"{site.url}queues/images", "queue-running")
    browser.driver.find_element(By.ID, "pause").click()
    browser.driver.switch_to.alert.accept()
    wait_until(lambda: "Done: paused." in browser.driver.page_source)
    browser.screenshot("queue-paused")
    with FeederClient(site.target) as client:
        assert {i.queue: i.paused for i in client.list_queues()}["images"] is True
    with feeder_stub(site.target.split(",")[0]) as stub:
        request = pb.LeaseRequest(queue="images", max_tasks=1, worker_id="w")
        assert not stub.Lease(request, timeout=10).tasks  # paused: nothing handed out
    load(browser, site.url, "queues-with-paused")
    row = browser.driver.find_element(By.CSS_SELECTOR, 'tr[data-row="images"]')
    assert "paused" in row.text
    load(browser, f"{site.url}queues/images", "queue-paused-again")
    browser.driver.find_element(By.ID, "resume").click()
    wait_until(lambda: "Done: resumed." in browser.driver.page_source)
    browser.screenshot("queue-resumed")
    with FeederClient(site.target) as client:
        assert {i.queue: i.paused for i in client.list_queues()}["images"] is False
    assert browser.console_errors() == []


def test_the_task_browser_and_the_workers_page(site: Site, browser: Browser) -> None:
    dead = make_dead(site.target, "mail", 2)
    with FeederClient(site.target) as client:
        ready = [client.submit(b"r%d" % i, queue="mail").task_id for i in range(3)]
    with feeder_stub(site.target.split(",")[0]) as stub:  # a worker holding one lease
        request = pb.LeaseRequest(queue="mail", max_tasks=1, worker_id="resizer-7")
        (held,) = stub.Lease(request, timeout=10).tasks
    load(browser, f"{site.url}queues/mail#tasks", "tasks-all")

    def listed() -> list[str]:
        rows = browser.driver.find_elements(By.CSS_SELECTOR, "#tasks-table tbody tr")
        return [str(r.get_attribute("data-task")) for r in rows]

    assert listed() == sorted([*dead, *ready], key=int)  # oldest first
    browser.driver.find_element(By.LINK_TEXT, "dead").click()
    wait_until(lambda: listed() == sorted(dead, key=int))
    browser.screenshot("tasks-dead")
    browser.driver.find_element(By.LINK_TEXT, "newest first").click()
    wait_until(lambda: listed() == sorted(dead, key=int, reverse=True))
    browser.driver.find_element(By.LINK_TEXT, "leased").click()
    wait_until(lambda: listed() == [held.task_id])
    browser.screenshot("tasks-leased")
    assert browser.console_errors() == []

    load(browser, f"{site.url}workers", "workers")
    holders = browser.driver.find_element(By.ID, "holders").text
    assert "resizer-7" in holders and "mail" in holders
