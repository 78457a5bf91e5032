"""FarmLatentWorker in a real master: builds on buildlets, lost leases, a dead coordinator."""

from __future__ import annotations

import base64
import json
import platform
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from buildbot_farm.demo import LocalFarm
from buildbot_farm.leases import keys
from buildbot_farm.leases.providers.isolation import default_root
from tests.harness.master_cfg import LOOPBACK_MASTER
from tests.harness.ports import free_port

pytestmark = pytest.mark.master
SECRET = "latent-worker-test-secret"
RETRY = 5

MASTER_CFG = """
import os
from buildbot.plugins import reporters, schedulers, steps, util, worker

{preamble}
c["services"] = [
    util.FarmService(
        coordinator=util.FarmCoordinator(
            secret="{secret}", pools=[util.BuildletPool("local", max_count=2)]),
        records=util.BuildRecords()),
    reporters.BuildRecorder(builders=["slow"]),
]
c["workers"] = [
    worker.Worker("local-worker", os.environ["FARM_WORKER_PASSWORD"]),
    worker.FarmLatentWorker("leased", buildlet_type="local", keepalive_interval=1),
    worker.FarmLatentWorker(
        "nowhere", coordinator_url="http://127.0.0.1:{dead_port}/", key="k" * 64,
        missing_timeout=30),
]
slow = util.BuildFactory([steps.ShellCommand(command=["sleep", "6"], name="slow")])
c["builders"] = [
    util.BuilderConfig(name="slow", workernames=["leased"], factory=slow),
    util.BuilderConfig(name="unreachable", workernames=["nowhere"], factory=slow),
]
c["schedulers"] = [schedulers.ForceScheduler(name="force", builderNames=["slow", "unreachable"])]
"""


@pytest.fixture
def farm(tmp_path: Path) -> Any:
    """A running master of MASTER_CFG on free ports (builder slow on leased buildlets, unreachable
    behind a dead coordinator), stopped afterwards."""
    config = tmp_path / "master.cfg"
    config.write_text(MASTER_CFG.format(
        preamble=LOOPBACK_MASTER, secret=SECRET, dead_port=free_port()
    ))
    local = LocalFarm(
        config, tmp_path / "farm",
        env={"FARM_WEB_PORT": str(free_port()), "FARM_PB_PORT": str(free_port())},
        build_timeout=120,
    )
    local.create()
    local.start()
    yield local
    local.stop()


def force(farm: LocalFarm, builder: str) -> int:
    """Force a build of ``builder``; the id of its build request."""
    answer = farm.api(
        "forceschedulers/force",
        {"jsonrpc": "2.0", "id": 1, "method": "force", "params": {"builderNames": [builder]}},
    )
    return int(next(iter(answer["result"][1].values())))


def wait_for(predicate: Any, within: float, what: str) -> Any:
    """Poll ``predicate`` every 0.3 s and return its first true value; fail naming ``what`` after
    ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {within:g} s waiting for {what}")


def coordinator(farm: LocalFarm, method: str, path: str, headers: dict[str, str]) -> Any:
    """One request to the master's coordinator as user-buildbot; its decoded JSON answer."""
    key = keys.user_key(SECRET.encode(), "user-buildbot")
    request = urllib.request.Request(
        f"{farm.web_url}plugins/farm/coordinator{path}", method=method, headers=headers
    )
    request.add_unredirected_header(
        "Authorization",
        "Basic " + base64.b64encode(f"user-buildbot:{key}".encode()).decode(),
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def test_a_lost_lease_ends_the_build_retry_and_it_runs_again(farm: LocalFarm) -> None:
    """Destroying the buildlet mid-build ends that build RETRY; the retry succeeds elsewhere."""
    request_id = force(farm, "slow")

    def running_step() -> Any:
        builds = farm.api(f"buildrequests/{request_id}/builds")["builds"]
        if not builds:
            return None
        steps = farm.api(f"builds/{builds[0]['buildid']}/steps")["steps"]
        return any(s["name"] == "slow" and s["started_at"] for s in steps)

    wait_for(running_step, 60, "the slow step to start on a buildlet")
    leases = coordinator(farm, "GET", "/buildlet/list", {})
    assert len(leases) == 1
    first = leases[0]["Name"]
    coordinator(farm, "POST", "/halt", {"X-Buildlet-Proxy": first})

    def two_builds() -> Any:
        builds = farm.api(f"buildrequests/{request_id}/builds")["builds"]
        return builds if len(builds) == 2 and builds[1]["complete"] else None

    builds = wait_for(two_builds, 90, "the retried build to finish")
    assert builds[0]["results"] == RETRY
    assert builds[1]["results"] == 0
    records = wait_for(
        lambda: farm.get_json(f"{farm.web_url}plugins/farm/api/builds?name=slow"),
        30, "the build record",
    )
    environment = records[0]["environment"]
    assert environment["arch"] == platform.machine(), "the buildlet's arch is not recorded"
    assert environment["python"] == platform.python_version()
    assert not (default_root(farm.master_dir, "local") / first).exists(), "lost lease left over"


def test_an_unreachable_coordinator_fails_substantiation_clearly(farm: LocalFarm) -> None:
    """With the coordinator down, the build cannot start and the log says why."""
    force(farm, "unreachable")
    log = farm.master_log

    def reported() -> bool:
        text = log.read_text(errors="replace")
        return "could not lease a local buildlet" in text and "cannot reach the coordinator" in text

    wait_for(reported, 60, "the substantiation failure in the master's log")
    builds = farm.get_json(f"{farm.web_url}api/v2/builders/unreachable/builds")["builds"]
    assert all(build["results"] != 0 for build in builds), "a build ran without a buildlet"
    worker = farm.get_json(f"{farm.web_url}api/v2/workers/nowhere")["workers"][0]
    assert worker["connected_to"] == [], "the unreachable worker connected"
