"""A real headless browser for the dashboard's tests: Debian's chromium driven by
Selenium through chromedriver (`make services` installs both when missing). Each test's
pages are saved as screenshots in tests/browser/screenshots/ (git-ignored), and every page
the tests load is checked for errors in the browser's console."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

SCREENSHOTS = Path(
    os.environ.get("FEEDWORK_SCREENSHOTS") or Path(__file__).with_name("screenshots")
)


def _find(name: str, *candidates: str) -> str:
    for candidate in (shutil.which(name), *candidates):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise AssertionError(
        f"{name} is not installed: the dashboard's browser tests need Debian's chromium and "
        "chromium-driver (`make services` installs them, as root: apt-get install chromium "
        "chromium-driver)"
    )


@pytest.fixture(scope="session")
def chrome() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = _find("chromium", "/usr/bin/chromium")
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        "--disable-extensions",
        "--no-first-run",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(_find("chromedriver", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(chrome: webdriver.Chrome, request: pytest.FixtureRequest) -> Iterator[Browser]:
    chrome.delete_all_cookies()
    chrome.get_log("browser")  # drop what earlier tests left
    yield Browser(chrome, request.node.name)


class Browser:
    """The driver, with a screenshot per page and a console check."""

    def __init__(self, driver: webdriver.Chrome, test: str) -> None:
        self.driver = driver
        self.test = test.replace("[", "-").replace("]", "")
        self.shots = 0

    def screenshot(self, what: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.shots += 1
        path = SCREENSHOTS / f"{self.test}-{self.shots:02d}-{what}.png"
        self.driver.save_screenshot(str(path))
        return path

    def console_errors(self) -> list[str]:
        return [
            f"{entry['level']}: {entry['message']}"
            for entry in self.driver.get_log("browser")
            if entry["level"] in ("SEVERE", "ERROR")
        ]
