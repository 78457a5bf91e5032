"""The farm's HTTP face in a real master: the index of /plugins/farm/, the dashboard's error
page, and the lease client pointed at the master's URLs, right and wrong."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from buildbot_farm.demo import LocalFarm
from buildbot_farm.leases import keys
from tests.harness.master_cfg import LOOPBACK_MASTER
from tests.harness.ports import free_port

pytestmark = pytest.mark.master
SECRET = "web-master-test-coordinator-secret"
MASTER_CFG = f"""
import os
from buildbot.plugins import schedulers, steps, util, worker

{LOOPBACK_MASTER}
c["services"] = [util.FarmService(coordinator=util.FarmCoordinator(
    secret={SECRET!r}, pools=[util.BuildletPool("local", max_count=1)]))]
c["workers"] = [worker.Worker("local-worker", os.environ["FARM_WORKER_PASSWORD"])]
c["builders"] = [util.BuilderConfig(name="idle", workernames=["local-worker"],
                                    factory=util.BuildFactory([steps.ShellCommand(command="true")]))]
c["schedulers"] = [schedulers.ForceScheduler(name="force", builderNames=["idle"])]
"""


@pytest.fixture(scope="module")
def master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFarm]:
    """A running master whose farm service has a coordinator and nothing else configured."""
    base = tmp_path_factory.mktemp("web-master")
    config = base / "master.cfg"
    config.write_text(MASTER_CFG)
    local = LocalFarm(config, base / "farm", env={
        "FARM_WEB_PORT": str(free_port()), "FARM_PB_PORT": str(free_port()),
    })
    local.create()
    try:
        local.start()
        yield local
    finally:
        local.stop()


def get(url: str) -> tuple[int, str, bytes]:
    """GET ``url``: (status, content type, body), error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.headers.get("content-type", ""), response.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.headers.get("content-type", ""), e.read()


def get_json(url: str) -> Any:
    """GET ``url``, which must answer 200 with JSON; the decoded body."""
    status, content_type, body = get(url)
    assert (status, content_type.split(";")[0]) == (200, "application/json"), (url, body)
    return json.loads(body)


def test_the_farm_root_and_the_api_root_list_what_is_mounted(master: LocalFarm) -> None:
    """GET /plugins/farm/ (with or without the slash) and /plugins/farm/api/ answer an index
    of the configured APIs with their OpenAPI documents; each listed path is served."""
    root = master.web_url.rstrip("/")
    index = get_json(f"{root}/plugins/farm/")
    assert get_json(f"{root}/plugins/farm") == index
    assert index == {"apis": [
        {"name": "api", "path": "/plugins/farm/api", "openapi": None},
        {"name": "coordinator", "path": "/plugins/farm/coordinator",
         "openapi": "/plugins/farm/openapi/coordinator.json"},
        {"name": "status", "path": "/plugins/farm/status",
         "openapi": "/plugins/farm/openapi.json"},
        {"name": "ui", "path": "/plugins/farm/ui", "openapi": None},
    ]}
    # No on-demand builds and no artifact repository are configured: neither is listed.
    assert get_json(f"{root}/plugins/farm/api/") == {"apis": [
        {"name": "builds", "path": "/plugins/farm/api/builds",
         "openapi": "/plugins/farm/api/openapi.json"},
        {"name": "records-chain", "path": "/plugins/farm/api/records-chain",
         "openapi": "/plugins/farm/api/openapi.json"},
    ]}
    listed = index["apis"] + get_json(f"{root}/plugins/farm/api")["apis"]
    for api in listed:
        status, _, body = get(root + api["path"])
        assert status != 404, (api, body)
        if api["openapi"] is not None:
            assert get_json(root + api["openapi"])["openapi"].startswith("3."), api


def test_a_dashboard_error_page_is_titled_once(master: LocalFarm) -> None:
    """An error page of the dashboard is titled "Farm: Error", not "Farm: Farm: error"."""
    status, content_type, body = get(f"{master.web_url}plugins/farm/ui/nowhere")
    page = body.decode()
    assert (status, content_type.split(";")[0]) == (404, "text/html"), page
    assert re.findall(r"<title>(.*?)</title>", page) == ["Farm: Error"]
    assert re.findall(r"<h1>(.*?)</h1>", page) == ["Error"]
    assert "has no page &#39;nowhere&#39;" in page
    assert "Farm: Farm" not in page


def lease(master: LocalFarm, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``buildbot-farm lease ARGS...`` as user-alice against ``url``."""
    unwanted = {"XDG_CONFIG_HOME", "FARM_COORDINATOR_URL", "FARM_USER", "FARM_KEY"}
    env = {k: v for k, v in os.environ.items() if k not in unwanted}
    env.update(FARM_COORDINATOR_URL=url, FARM_USER="user-alice",
               FARM_KEY=keys.user_key(SECRET.encode(), "user-alice"), HOME=str(master.basedir))
    return subprocess.run(
        [str(Path(sys.executable).parent / "buildbot-farm"), "lease", *args],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.mark.parametrize(("path", "command", "answer"), [
    ("", ["list"], "answered 404 to GET /buildlet/list"),
    ("plugins/farm", ["list"], "answered 404 to GET /buildlet/list"),
    ("plugins/farm/", ["ping", "user-alice-local-0"],
     "answered 200 to GET /status but is no coordinator"),
])
def test_the_lease_client_on_a_wrong_master_url_says_what_to_check(
    master: LocalFarm, path: str, command: list[str], answer: str
) -> None:
    """The master's root or its farm root, taken for the coordinator, is one line naming the
    request and the URL the coordinator usually has; no HTML page is printed."""
    url = master.web_url + path
    done = lease(master, url, *command)
    assert (done.returncode, done.stdout) == (2, ""), done
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"buildbot-farm: {url.rstrip('/')} {answer}: "), done.stderr
    assert done.stderr.endswith(
        ": is this the coordinator's URL? it usually ends in /plugins/farm/coordinator\n")
    assert "<" not in done.stderr


def test_the_lease_client_on_the_documented_url_works(master: LocalFarm) -> None:
    """With the URL the help shows (buildbotURL + plugins/farm/coordinator) the client works."""
    done = lease(master, master.web_url + "plugins/farm/coordinator", "list")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
