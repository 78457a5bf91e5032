"""FarmLatentWorker in a real master starts on the build request when it alone serves the
builder, and only then; a start that gets no build releases its buildlet."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from buildbot_farm.demo import LocalFarm
from tests.harness.master_cfg import LOOPBACK_MASTER
from tests.harness.ports import free_port
from tests.leases.test_latent_worker import coordinator, force, wait_for

pytestmark = pytest.mark.master
SECRET = "latent-worker-test-secret"  # test_latent_worker.coordinator's key is derived from it
SUCCESS = 0
STARTING = "starting the worker now"

MASTER_CFG = """
import os
from buildbot.plugins import schedulers, steps, util, worker

{preamble}
c["services"] = [util.FarmService(coordinator=util.FarmCoordinator(
    secret="{secret}", pools=[util.BuildletPool("local", max_count=4)]))]
c["workers"] = [
    worker.Worker("local-worker", os.environ["FARM_WORKER_PASSWORD"]),
    worker.FarmLatentWorker("alone", buildlet_type="local"),
    worker.FarmLatentWorker("pair-a", buildlet_type="local"),
    worker.FarmLatentWorker("pair-b", buildlet_type="local"),
    worker.FarmLatentWorker("asked", buildlet_type="local", start_on_request=0),
    worker.FarmLatentWorker("kept", buildlet_type="local", build_wait_timeout=-1),
    worker.FarmLatentWorker("unused", buildlet_type="local", start_on_request=1),
]
quick = util.BuildFactory([steps.ShellCommand(command=["true"], name="quick")])
c["builders"] = [
    util.BuilderConfig(name="solo", workernames=["alone"], factory=quick),
    util.BuilderConfig(name="pair", workernames=["pair-a", "pair-b"], factory=quick),
    util.BuilderConfig(name="when-asked", workernames=["asked"], factory=quick),
    util.BuilderConfig(name="kept", workernames=["kept"], factory=quick),
    util.BuilderConfig(name="held", workernames=["unused"], factory=quick,
                       canStartBuild=lambda builder, wfb, request: False),
]
c["schedulers"] = [schedulers.ForceScheduler(
    name="force", builderNames=["solo", "pair", "when-asked", "kept", "held"])]
"""


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFarm]:
    """One master for the module's tests: each uses workers of its own."""
    directory: Path = tmp_path_factory.mktemp("request-start")
    config = directory / "master.cfg"
    config.write_text(MASTER_CFG.format(preamble=LOOPBACK_MASTER, secret=SECRET))
    local = LocalFarm(
        config, directory / "farm",
        env={"FARM_WEB_PORT": str(free_port()), "FARM_PB_PORT": str(free_port())},
        build_timeout=120,
    )
    local.create()
    local.start()
    yield local
    local.stop()


def finished_build(farm: LocalFarm, request: int) -> dict[str, Any]:
    """The build of ``request``, once it is complete."""
    builds = wait_for(
        lambda: [b for b in farm.api(f"buildrequests/{request}/builds")["builds"]
                 if b["complete"]],
        90, f"the build of request {request} to finish",
    )
    return dict(builds[-1])


def test_the_only_worker_of_a_builder_starts_on_the_request_before_its_build(
    farm: LocalFarm,
) -> None:
    """The request starts the worker before Buildbot starts the build, and the build then
    runs on that worker's one buildlet."""
    request = force(farm, "solo")
    assert finished_build(farm, request)["results"] == SUCCESS
    lines = farm.master_log.read_text(errors="replace").splitlines()
    started = [i for i, line in enumerate(lines)
               if f"FarmLatentWorker alone: build request {request} for solo: {STARTING}" in line]
    build = [i for i, line in enumerate(lines)
             if "starting build <Build solo" in line and "using worker" in line]
    assert len(started) == 1, "\n".join(lines[-60:])
    assert len(build) == 1, "\n".join(lines[-60:])
    assert started[0] < build[0], "the build started before its request started the worker"
    assert sum("FarmLatentWorker alone: leased" in line for line in lines) == 1


def test_a_shared_builder_or_start_on_request_0_waits_for_the_build(farm: LocalFarm) -> None:
    """Workers that share their builder, have start_on_request=0 or are never stopped
    (build_wait_timeout=-1) start when the build asks; their builds succeed."""
    requests = [force(farm, "pair"), force(farm, "when-asked"), force(farm, "kept")]
    assert [finished_build(farm, r)["results"] for r in requests] == [SUCCESS] * 3
    log = farm.master_log.read_text(errors="replace")
    for worker in ("pair-a", "pair-b", "asked", "kept"):
        assert f"FarmLatentWorker {worker}: build request" not in log
    assert "FarmLatentWorker asked: leased" in log


def test_a_worker_started_for_a_request_that_gets_no_build_releases_its_buildlet(
    farm: LocalFarm,
) -> None:
    """When the builder will not start the build, the worker the request started gives its
    buildlet back after start_on_request seconds, and stays down."""
    request = force(farm, "held")
    released = wait_for(
        lambda: "FarmLatentWorker unused: released" in farm.master_log.read_text(), 60,
        "the unused worker to release its buildlet",
    )
    assert released
    log = farm.master_log.read_text(errors="replace")
    assert f"FarmLatentWorker unused: build request {request} for held: {STARTING}" in log
    assert f"no build came within 1 s of build request {request}" in log
    assert farm.api(f"buildrequests/{request}/builds")["builds"] == []
    wait_for(lambda: not farm.api("workers/unused")["workers"][0]["connected_to"], 30,
             "the unused worker to disconnect")
    (buildlet,) = re.findall(r"FarmLatentWorker unused: released (\S+)", log)
    names = [lease["Name"] for lease in coordinator(farm, "GET", "/buildlet/list", {})]
    assert buildlet not in names, f"{buildlet} is still leased"
    farm.api(f"buildrequests/{request}",
             {"jsonrpc": "2.0", "id": 1, "method": "cancel", "params": {"reason": "test"}})
