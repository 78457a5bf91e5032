"""Buildbot's own force dialog on an OnDemandScheduler, in a real headless chromium."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from buildbot_farm.demo import LocalFarm
from tests.harness.ports import free_port
from tests.ui.conftest import ADMIN_PASSWORD, Browser
from tests.ui.test_pages import click, until

pytestmark = pytest.mark.master
MODAL = ".bb-forcebuild-modal"
# Buildbot's build page colours its favicon from f"{buildbotURL}/icon.svg", but
# buildbotURL must end with "/": the UI asks for //icon.svg (and //icon.png), which
# 404s, and its request library reports the 404 as an uncaught error. Not ours.
UPSTREAM_ICON = re.compile(r"//icon\.(svg|png)$")
UPSTREAM_CSS = "/plugins/wsgi_dashboards/styles.css"
UNCAUGHT_404 = "Uncaught Kt: Request failed with status code 404"


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalFarm, Path]]:
    """The web UI tests' master, with no build run yet, and the file that releases the
    held on-demand build of builder "ui-tool"."""
    base = tmp_path_factory.mktemp("ui-force")
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
        yield local, release
    finally:
        release.touch()
        local.stop()


def job(local: LocalFarm, key: str) -> dict[str, Any]:
    """The on-demand job of ``key`` (``GET /plugins/farm/api/build/{key}``)."""
    with urllib.request.urlopen(f"{local.web_url}plugins/farm/api/build/{key}",
                                timeout=30) as answer:
        found: dict[str, Any] = json.load(answer)
    return found


def failed_requests(browser: Browser) -> list[str]:
    """Every HTTP answer of 400 or more the page got since the last call: "STATUS URL"."""
    failed = []
    for entry in browser.driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.responseReceived":
            response = message["params"]["response"]
            if response["status"] >= 400:
                failed.append(f"{response['status']} {response['url']}")
    return failed


def start_build(browser: Browser, web_url: str, builderid: int) -> str:
    """Open the "ui-tool" force dialog, press "Start build"; "closed" or the error shown."""
    browser.driver.get(f"{web_url}#/builders/{builderid}/force/ui-tool")
    click(browser, By.XPATH, f"//*[contains(@class, '{MODAL[1:]}')]//button[.='Start build']")

    def outcome(driver: Any) -> str | None:
        alerts = driver.find_elements(By.CSS_SELECTOR, f"{MODAL} .alert-danger")
        if alerts:
            return f"error: {alerts[0].text}"
        return None if driver.find_elements(By.CSS_SELECTOR, MODAL) else "closed"

    return until(browser, outcome, timeout=60)


def test_start_build_closes_the_dialog_and_shows_the_build_for_new_joined_and_built_keys(
    held: tuple[LocalFarm, Path], browser: Browser
) -> None:
    """"Start build" for a new key, for it while it builds, and once built: each time the
    dialog closes with no error and the page shows the key's one build."""
    local, release = held
    web = local.web_url
    builderid = local.api("builders/ui-tool")["builders"][0]["builderid"]

    def shown_build(driver: Any) -> str | None:
        url: str = driver.current_url
        return url if f"#/builders/{builderid}/builds/" in url else None

    assert start_build(browser, web, builderid) == "closed"
    build_url = until(browser, shown_build)
    builds = local.api("builders/ui-tool/builds")["builds"]
    assert len(builds) == 1
    assert build_url.endswith(f"/builds/{builds[0]['number']}")
    properties = local.api(f"builds/{builds[0]['buildid']}/properties")["properties"][0]
    key = properties["farm_build_key"][0]
    browser.screenshot("force-new")

    assert start_build(browser, web, builderid) == "closed"
    assert until(browser, shown_build) == build_url
    assert job(local, key)["status"] == "running", "joined while the build is held"
    browser.screenshot("force-joined")

    release.touch()
    WebDriverWait(browser.driver, 120, poll_frequency=0.5).until(
        lambda _: job(local, key)["status"] == "succeeded")
    assert start_build(browser, web, builderid) == "closed"
    assert until(browser, shown_build) == build_url
    assert "Cannot convert" not in browser.driver.find_element(By.TAG_NAME, "body").text
    assert len(local.api("builders/ui-tool/builds")["builds"]) == 1
    browser.screenshot("force-built")
    failed = failed_requests(browser)
    ours = [f for f in failed if not (UPSTREAM_ICON.search(f) or f.endswith(UPSTREAM_CSS))]
    assert ours == [], "\n".join(failed)
    # With only the upstream icon 404s failing, its uncaught 404 errors are theirs too.
    errors = [e for e in browser.console_errors()
              if not (UPSTREAM_ICON.search(e.split(" - ")[0]) or e.endswith(UNCAUGHT_404))]
    assert errors == [], "\n".join(errors)
