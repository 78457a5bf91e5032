"""FarmLatentWorker in a real master waits in line for a full pool instead of failing, and
leaves the line when its build is cancelled."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from buildbot_farm.demo import LocalFarm
from tests.harness.master_cfg import LOOPBACK_MASTER
from tests.harness.ports import free_port
from tests.leases.test_latent_worker import wait_for

pytestmark = pytest.mark.master
SUCCESS = 0
CANCELLED = 6

MASTER_CFG = """
import os
from buildbot.plugins import schedulers, steps, util, worker

{preamble}
c["services"] = [
    util.FarmService(coordinator=util.FarmCoordinator(
        secret="latent-worker-waits-secret", pools=[util.BuildletPool("local", max_count=1)])),
]
c["workers"] = [
    worker.Worker("local-worker", os.environ["FARM_WORKER_PASSWORD"]),
    worker.FarmLatentWorker("first", buildlet_type="local"),
    worker.FarmLatentWorker("second", buildlet_type="local"),
]
slow = util.BuildFactory([steps.ShellCommand(
    command=["sleep", util.Property("seconds", default="3")], name="slow")])
c["builders"] = [
    util.BuilderConfig(name="one", workernames=["first"], factory=slow),
    util.BuilderConfig(name="two", workernames=["second"], factory=slow),
]
c["schedulers"] = [schedulers.ForceScheduler(
    name="force", builderNames=["one", "two"],
    properties=[util.StringParameter(name="seconds", default="3")])]
"""


@pytest.fixture
def farm(tmp_path: Path) -> Any:
    """A running master of MASTER_CFG on free ports (builders one and two on latent workers sharing
    a pool of one buildlet), stopped afterwards."""
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


def force(farm: LocalFarm, builders: list[str], seconds: int = 3) -> list[int]:
    """Force a build of each builder (its step sleeps ``seconds``); their request ids."""
    answer = farm.api(
        "forceschedulers/force",
        {"jsonrpc": "2.0", "id": 1, "method": "force",
         "params": {"builderNames": builders, "seconds": str(seconds)}},
    )
    return [int(r) for r in answer["result"][1].values()]


def test_two_workers_share_a_pool_of_one_by_waiting(farm: LocalFarm) -> None:
    """Two builds on a one-buildlet pool both succeed: the second worker waits in line."""
    requests = force(farm, ["one", "two"])

    def finished() -> Any:
        builds = [farm.api(f"buildrequests/{r}/builds")["builds"] for r in requests]
        return builds if all(b and b[-1]["complete"] for b in builds) else None

    builds = wait_for(finished, 90, "both builds to finish")
    assert [[b["results"] for b in per_request] for per_request in builds] == [
        [SUCCESS], [SUCCESS]
    ], "a build did not succeed on its first try"
    log = farm.master_log.read_text(errors="replace")
    assert "waiting in line for a local buildlet, 0 ahead" in log


def test_a_build_cancelled_while_waiting_leaves_the_line_at_once(farm: LocalFarm) -> None:
    """Stopping a build whose worker waits in line ends it CANCELLED in seconds, not when a
    buildlet frees up, and leases nothing for it."""
    force(farm, ["one"], seconds=120)
    wait_for(lambda: "FarmLatentWorker first: leased" in farm.master_log.read_text(), 60,
             "the first worker's lease")
    (waiting,) = force(farm, ["two"])
    wait_for(lambda: "FarmLatentWorker second: waiting in line" in farm.master_log.read_text(),
             60, "the second worker to wait in line")
    # The worker, the builder's only one, starts waiting on the request, before its build exists.
    (build,) = wait_for(lambda: farm.api(f"buildrequests/{waiting}/builds")["builds"], 60,
                        "the second build")
    stopped_at = time.monotonic()
    farm.api(f"builds/{build['buildid']}",
             {"jsonrpc": "2.0", "id": 1, "method": "stop", "params": {"reason": "test"}})
    ended = wait_for(
        lambda: farm.api(f"builds/{build['buildid']}")["builds"][0]["complete"] or None, 30,
        "the cancelled build to end",
    )
    assert ended
    assert time.monotonic() - stopped_at < 15
    assert farm.api(f"builds/{build['buildid']}")["builds"][0]["results"] == CANCELLED
    log = farm.master_log.read_text(errors="replace")
    assert "FarmLatentWorker second: stopped waiting in line" in log
    assert "FarmLatentWorker second: leased" not in log
