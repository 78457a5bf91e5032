"""A real master with the farm and the Farm menu, and Debian's chromium driven by Selenium."""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from buildbot_farm.demo import LocalFarm
from tests.db.conftest import backend, database, db_url_for
from tests.harness.ports import free_port

__all__ = ["backend", "database", "db_url_for"]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ADMIN_PASSWORD = "ui-test-admin-password"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "ui"
# buildbot-wsgi-dashboards 4.3 ships no styles.css, which Buildbot's web UI asks every
# plugin for: a 404 that is not ours and that we cannot serve in its place.
UPSTREAM_MISSING_CSS = "/plugins/wsgi_dashboards/styles.css - Failed to load resource"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    "--window-size=1280,900",
)


@dataclass
class RunningFarm:
    """The master under test and what its builds made."""

    local: LocalFarm
    artifact_build: dict[str, Any]
    buildlet_build: dict[str, Any]
    # Creating this file lets the held on-demand build (builder "ui-tool") finish.
    release: Path


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    """A master and worker that ran one artifact build and one build on a buildlet."""
    base = tmp_path_factory.mktemp("ui")
    release = base / "release-the-held-build"
    local = LocalFarm(
        Path(__file__).with_name("master.cfg"), base,
        env={"FARM_WEB_PORT": str(free_port()), "FARM_PB_PORT": str(free_port()),
             "FARM_UI_ADMIN_PASSWORD": ADMIN_PASSWORD, "FARM_UI_RELEASE": str(release)},
        build_timeout=180,
    )
    local.create()
    try:
        local.start()
        artifact_build = local.force_build("ui-build")
        buildlet_build = local.force_build("on-buildlet")
        assert artifact_build["results"] == 0, local.master_log
        assert buildlet_build["results"] == 0, local.master_log
        yield RunningFarm(local, artifact_build, buildlet_build, release)
    finally:
        release.touch()
        local.stop()


class Browser:
    """A headless chromium session; remembers console errors and saves screenshots."""

    def __init__(self, driver: webdriver.Chrome) -> None:
        self.driver = driver

    def console_errors(self) -> list[str]:
        """The SEVERE console messages since the last call, but the one known upstream one."""
        return [
            e["message"] for e in self.driver.get_log("browser")
            if e["level"] == "SEVERE" and UPSTREAM_MISSING_CSS not in e["message"]
        ]

    def screenshot(self, name: str) -> Path:
        """Save the page as test-output/ui/NAME.png and return the path."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        assert self.driver.save_screenshot(str(path)), f"no screenshot saved at {path}"
        return path

    def log_in(self, web_url: str, user: str, password: str) -> None:
        """Log in to Buildbot's web UI through /auth/login with HTTP Basic."""
        pair = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.driver.execute_cdp_cmd("Network.enable", {})
        self.driver.execute_cdp_cmd(
            "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {pair}"}})
        self.driver.get(f"{web_url}auth/login")
        self.driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})


@pytest.fixture
def browser() -> Iterator[Browser]:
    """A fresh, logged-out chromium (Debian's, with its chromedriver; nothing is downloaded)."""
    for tool in (CHROMIUM, CHROMEDRIVER):
        assert shutil.which(tool), (
            f"{tool} is missing: run tests/harness/install-system-packages.sh")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield Browser(driver)
    finally:
        driver.quit()
