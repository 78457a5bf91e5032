"""The Farm pages in Buildbot's web UI, in a real headless chromium against a real master."""

from __future__ import annotations

import hashlib
import json
import re
import time
import urllib.request
from typing import Any, Callable, TypeVar

import pytest
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from tests.ui.conftest import ADMIN_PASSWORD, Browser, RunningFarm

pytestmark = pytest.mark.master
UI = "plugins/farm/ui/"
T = TypeVar("T")
# What chromedriver says, instead of StaleElementReferenceException, of an element the page's
# own reload removed between finding it and reading it (seen once in a full run).
GONE_FROM_THE_DOCUMENT = "does not belong to the document"


def reloaded_away(error: WebDriverException) -> bool:
    """Whether ``error`` says the element was taken away by the page reloading itself."""
    return isinstance(error, (StaleElementReferenceException, NoSuchElementException)) or (
        GONE_FROM_THE_DOCUMENT in (error.msg or ""))


def wait_for(browser: Browser, css: str, timeout: float = 30) -> WebElement:
    """The first element matching ``css`` once it shows up."""
    wait = WebDriverWait(browser.driver, timeout)
    element: WebElement = wait.until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css)))
    return element


def retrying(browser: Browser, action: Callable[[Any], T], timeout: float = 30) -> T:
    """``action(driver)``, again while a page reload leaves its elements stale or missing."""
    outcome: list[T] = []

    def attempt(driver: Any) -> bool:
        try:
            outcome.append(action(driver))
        except WebDriverException as error:
            if not reloaded_away(error):
                raise
            return False
        return True

    WebDriverWait(browser.driver, timeout).until(attempt)
    return outcome[0]


def click(browser: Browser, by: str, value: str) -> None:
    """Click the element once it is there, even across the page's own reloads."""
    retrying(browser, lambda driver: driver.find_element(by, value).click())


def until(browser: Browser, read: Callable[[Any], T | None], timeout: float = 60) -> T:
    """The first true ``read(driver)``, while the page reloads itself (no reload here)."""
    found: list[T] = []

    def attempt(driver: Any) -> bool:
        try:
            value = read(driver)
        except WebDriverException as error:
            if not reloaded_away(error):
                raise
            return False
        if value:
            found.append(value)
        return bool(value)

    WebDriverWait(browser.driver, timeout, poll_frequency=0.5).until(attempt)
    return found[0]


def reloads_itself(browser: Browser) -> bool:
    """Whether the page in the browser has a meta refresh."""
    return bool(browser.driver.find_elements(By.CSS_SELECTOR, 'meta[http-equiv="refresh"]'))


def job_row(driver: Any, key: str) -> dict[str, Any] | None:
    """The jobs table's row of ``key``: cells' text and the build and download links."""
    for row in driver.find_elements(By.CSS_SELECTOR, "#jobs tr"):
        keys = row.find_elements(By.CSS_SELECTOR, "a.key")
        if keys and keys[0].get_attribute("title") == key:
            links = {a.text: a.get_attribute("href") for a in row.find_elements(By.TAG_NAME, "a")}
            return {"cells": [td.text for td in row.find_elements(By.TAG_NAME, "td")],
                    "links": links}
    return None


def lease_rows(browser: Browser) -> dict[str, list[str]]:
    """The buildlets page's lease table: name -> its cells' text (read whole, across reloads)."""

    def read(driver: Any) -> dict[str, list[str]]:
        rows = driver.find_elements(By.CSS_SELECTOR, "#leases tr")[1:]
        cells = [[td.text for td in row.find_elements(By.TAG_NAME, "td")] for row in rows]
        return {row[0]: row for row in cells}

    return retrying(browser, read)


def test_the_farm_menu_entry_shows_the_buildlets_page(
    farm: RunningFarm, browser: Browser
) -> None:
    """The web UI has a "Farm" menu entry whose page embeds the farm's buildlets page."""
    browser.driver.get(farm.local.web_url + "#/farm")
    frame = wait_for(browser, "iframe#farm-dashboard")
    menu = browser.driver.find_element(By.TAG_NAME, "body").text
    assert "Farm" in menu
    browser.driver.switch_to.frame(frame)
    wait_for(browser, "#leases")
    assert any(row[6] == "leased" for row in lease_rows(browser).values())
    browser.driver.switch_to.default_content()
    time.sleep(1)
    browser.screenshot("menu")
    assert browser.console_errors() == []


def test_every_page_shows_what_real_builds_made(farm: RunningFarm, browser: Browser) -> None:
    """Buildlets, artifacts (sha256, download), a record and the jobs page load cleanly."""
    web = farm.local.web_url
    browser.driver.get(web + UI + "buildlets")
    rows = lease_rows(browser)
    assert {row[1] for row in rows.values()} == {"local"}
    assert {row[6] for row in rows.values()} >= {"leased", "idle"}, rows
    assert any(row[2] == "(warm pool)" for row in rows.values())
    assert any(row[4].startswith("in ") for row in rows.values())
    pools = browser.driver.find_element(By.ID, "pools").text
    assert "local process 3 1" in pools
    browser.screenshot("buildlets")

    number = farm.artifact_build["number"]
    browser.driver.get(f"{web}{UI}artifacts/")
    click(browser, By.LINK_TEXT, "bin/")
    click(browser, By.LINK_TEXT, "ui-build/")
    click(browser, By.LINK_TEXT, f"{number}/")
    table = wait_for(browser, "#artifacts").text
    body = b"print('hello from the farm')\n"
    sha256 = hashlib.sha256(body).hexdigest()
    assert "hello.py" in table
    assert sha256 in table
    assert f"{len(body)} B" in table
    download = browser.driver.find_element(By.LINK_TEXT, "download").get_attribute("href")
    assert download is not None
    with urllib.request.urlopen(download, timeout=30) as answer:
        assert answer.read() == body
    browser.screenshot("artifacts")

    browser.driver.get(web + UI + "records")
    search = wait_for(browser, "#search")
    search.find_element(By.NAME, "name").send_keys("uiapp")
    search.find_element(By.TAG_NAME, "button").click()
    WebDriverWait(browser.driver, 30).until(expected_conditions.url_contains("name=uiapp"))
    click(browser, By.LINK_TEXT, "uiapp")
    record = wait_for(browser, "#binaries").text
    assert sha256 in record
    assert "hello.py" in record
    assert f"Record uiapp 2.0.{number}" in browser.driver.find_element(By.TAG_NAME, "h1").text
    browser.screenshot("record")
    browser.driver.get(web + UI + "records?version=no-such-version")
    assert "No record matches" in wait_for(browser, ".empty").text
    browser.screenshot("records-search")

    browser.driver.get(web + UI + "jobs")
    assert wait_for(browser, "h1").text == "On-demand jobs"
    assert browser.console_errors() == []


def test_an_anonymous_user_may_not_destroy_a_buildlet(
    farm: RunningFarm, browser: Browser
) -> None:
    """Destroy without the admin role answers 403 with a readable reason; nothing is destroyed."""
    browser.driver.get(farm.local.web_url + UI + "buildlets")
    before = lease_rows(browser)
    name = next(iter(before))
    click(browser, By.CSS_SELECTOR, f'form:has(input[value="{name}"]) button')
    error = wait_for(browser, ".error").text
    assert "you need to have role 'admins'" in error
    browser.screenshot("destroy-refused")
    browser.driver.get(farm.local.web_url + UI + "buildlets")
    assert name in lease_rows(browser)
    errors = browser.console_errors()
    assert all(re.search(r"status of 403", e) for e in errors), errors


def test_an_admin_destroys_a_buildlet(farm: RunningFarm, browser: Browser) -> None:
    """Logged in as an admin, Destroy removes the buildlet and says so."""
    browser.log_in(farm.local.web_url, "admin", ADMIN_PASSWORD)
    browser.driver.get(farm.local.web_url + UI + "buildlets")
    idle = [name for name, row in lease_rows(browser).items() if row[6] == "idle"]
    assert idle, lease_rows(browser)
    click(browser, By.CSS_SELECTOR, f'form:has(input[value="{idle[0]}"]) button')
    assert f"Destroyed {idle[0]}." in wait_for(browser, ".notice").text
    assert idle[0] not in lease_rows(browser)
    browser.screenshot("destroyed")
    assert browser.console_errors() == []


def test_a_missing_page_is_a_readable_error(farm: RunningFarm, browser: Browser) -> None:
    """An unknown dashboard page answers 404 with a message, inside the dashboard's frame."""
    browser.driver.get(farm.local.web_url + UI + "nowhere")
    assert "has no page 'nowhere'" in wait_for(browser, ".error").text
    assert browser.driver.find_element(By.LINK_TEXT, "Buildlets")


def test_a_forged_destroy_form_is_refused(farm: RunningFarm, browser: Browser) -> None:
    """Even for an admin, a destroy POST whose form token is not the page's is refused."""
    browser.log_in(farm.local.web_url, "admin", ADMIN_PASSWORD)
    browser.driver.get(farm.local.web_url + UI + "buildlets")
    name = next(iter(lease_rows(browser)))
    retrying(browser, lambda driver: driver.execute_script(
        "const form = document.querySelector(arguments[0]);"
        "form.querySelector('input[name=form_token]').value = '4102444800.forged';"
        "form.submit();", f'form:has(input[value="{name}"])'))
    error = wait_for(browser, ".error").text
    assert f"refused to destroy {name}: this form's form_token is not valid for admin" in error
    browser.screenshot("destroy-forged")
    browser.driver.get(farm.local.web_url + UI + "buildlets")
    assert name in lease_rows(browser)
    errors = browser.console_errors()
    assert all(re.search(r"status of 403", e) for e in errors), errors


def test_a_running_on_demand_job_and_its_upload_token_show_until_it_ends(
    farm: RunningFarm, browser: Browser
) -> None:
    """A held on-demand build shows as a running job with a live token; the pages reload
    themselves until it ends, then the job links its build and its artifact's download."""
    web = farm.local.web_url
    request = urllib.request.Request(
        web + "plugins/farm/api/build", data=json.dumps(
            {"scheduler": "ui-tool", "flavor": "fancy"}).encode(),
        headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 202
        key = json.load(answer)["key"]

    browser.driver.get(web + UI + "jobs")
    running = until(browser, lambda driver: (row := job_row(driver, key)) and (
        row["cells"][3] == "running") and row)
    assert reloads_itself(browser)
    assert running["cells"][1:3] == ["ui-tool", "flavor=fancy"]
    assert running["cells"][4].startswith("#1 on local-worker in progress · ui-tool #")
    browser.screenshot("jobs-running")
    with urllib.request.urlopen(f"{web}plugins/farm/api/build/{key}", timeout=30) as answer:
        build_id = json.load(answer)["attempts"][0]["build_id"]
    build = farm.local.api(f"builds/{build_id}")["builds"][0]
    number, builderid = build["number"], build["builderid"]

    def token_row(driver: Any) -> list[str] | None:
        driver.get(web + UI + "artifacts/")
        for row in driver.find_elements(By.CSS_SELECTOR, "#tokens tr")[1:]:
            cells = [td.text for td in row.find_elements(By.TAG_NAME, "td")]
            if cells[0] == f"ui-tool #{number}":
                return cells
        return None

    token = until(browser, token_row, timeout=30)
    assert token[1] == str(build_id)
    assert token[2].endswith(f"/ui-tool/{number}/")
    assert token[4].startswith("in ")
    assert reloads_itself(browser)
    browser.screenshot("artifacts-token")
    browser.driver.get(web + UI + "records")
    wait_for(browser, "#search")
    assert browser.driver.find_elements(
        By.CSS_SELECTOR, 'meta[http-equiv="refresh"][content="30"]'), "records stay still"

    browser.driver.get(web + UI + "artifacts/")
    wait_for(browser, "#tokens")
    farm.release.touch()
    until(browser, lambda driver: driver.find_elements(By.ID, "no-tokens"))
    assert not reloads_itself(browser)

    browser.driver.get(web + UI + "jobs")
    done = until(browser, lambda driver: (row := job_row(driver, key)) and (
        row["cells"][3] == "succeeded") and row)
    assert not reloads_itself(browser)
    assert done["cells"][0] == key[:12]
    assert done["cells"][4] == f"#1 on local-worker success · ui-tool #{number}"
    build_url = f"{web}#/builders/{builderid}/builds/{number}"
    assert done["links"][f"ui-tool #{number}"] == build_url
    assert done["links"]["download"] == f"{web}plugins/farm/api/download/{key}"
    with urllib.request.urlopen(done["links"]["download"], timeout=30) as answer:
        assert answer.read() == b"tool, fancy flavour\n"
    browser.screenshot("jobs")
    assert browser.console_errors() == []
    click(browser, By.LINK_TEXT, f"ui-tool #{number}")
    WebDriverWait(browser.driver, 30).until(expected_conditions.url_to_be(build_url))
