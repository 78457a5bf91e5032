"""BuildRecorder for a build on a leased buildlet, in a real master with its coordinator."""

from __future__ import annotations

import json
import platform
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from buildbot_farm.demo import LocalFarm
from tests.harness.master_cfg import LOOPBACK_MASTER
from tests.harness.ports import free_port

pytestmark = pytest.mark.master

MASTER_CFG = """
import os
from buildbot.plugins import reporters, schedulers, steps, util, worker

{preamble}
c["services"] = [
    util.FarmService(
        coordinator=util.FarmCoordinator(
            secret="recorder-buildlet-test-secret",
            pools=[util.BuildletPool("local", max_count=1)]),
        records=util.BuildRecords()),
    reporters.BuildRecorder(builders=["leased-build"], language="python",
                            toolchain=util.Interpolate("CPython of %(prop:buildername)s")),
]
c["workers"] = [
    worker.Worker("local-worker", os.environ["FARM_WORKER_PASSWORD"]),
    worker.FarmLatentWorker("leased", buildlet_type="local"),
]
factory = util.BuildFactory([steps.ShellCommand(command=["true"], name="build")])
c["builders"] = [util.BuilderConfig(name="leased-build", workernames=["leased"],
                                    factory=factory)]
c["schedulers"] = [schedulers.ForceScheduler(name="force", builderNames=["leased-build"])]
"""


@pytest.fixture
def farm(tmp_path: Path) -> Any:
    """A running master of MASTER_CFG on free ports (builder leased-build on a leased buildlet,
    recorded as Python), stopped afterwards."""
    config = tmp_path / "master.cfg"
    config.write_text(MASTER_CFG.format(preamble=LOOPBACK_MASTER))
    local = LocalFarm(
        config, tmp_path / "farm",
        env={"FARM_WEB_PORT": str(free_port()), "FARM_PB_PORT": str(free_port())},
        build_timeout=120,
    )
    local.create()
    local.start()
    yield local
    local.stop()


def test_a_buildlet_build_is_recorded_as_built_on_its_host(farm: LocalFarm) -> None:
    """builtOn is the buildlet's host name, not the worker's; a Python record has no GoVersion."""
    build = farm.force_build("leased-build")
    assert build["results"] == 0, f"the build failed; see {farm.master_log}"
    url = f"{farm.web_url}plugins/farm/api/builds/leased-build"
    deadline = time.monotonic() + 30
    records: list[dict[str, Any]] = []
    while not records and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                records = json.load(response)
        except urllib.error.HTTPError:
            time.sleep(0.3)
    [record] = records
    assert record["environment"]["worker"] == "leased"
    assert record["builtOn"] == record["Hostname"] == socket.gethostname()
    assert record["toolchain"] == "CPython of leased-build"
    assert record["environment"]["python"] == platform.python_version()
    assert "GoVersion" not in record
