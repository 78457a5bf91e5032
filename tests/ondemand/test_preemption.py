"""Preemption end to end: a real master, two leased workers on spot pools, a job preempted
mid-build, and the janitor finishing it on the other worker."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from buildbot_farm.demo import LocalFarm
from tests.harness.master_cfg import LOOPBACK_MASTER
from tests.harness.ports import free_port
from tests.ondemand.test_master import api, call
from tests.remote.metadata_stub import MetadataStub

pytestmark = pytest.mark.master
PREEMPTED = "/computeMetadata/v1/instance/preempted"
WORKERS = ("spot-a", "spot-b")

# Two pools whose agents ask their own GCE metadata stub; a worker on each; one builder
# that waits for the GO file (so the test decides when a build may finish), then publishes.
MASTER_CFG = """
import os
from buildbot.plugins import schedulers, steps, util, worker

{preamble}
c["services"] = [util.FarmService(
    name="farm",
    coordinator=util.FarmCoordinator(secret="preemption-test-secret", pools=[
        # No sandbox: the build waits for a file of this test's, outside any buildlet.
        util.BuildletPool(name, max_count=2, sandbox="none",
                          preemption=util.GCEPreemption(url=url, interval=0.2))
        for name, url in {stubs!r}.items()
    ]),
    artifacts=util.ArtifactRepository(),
    on_demand=util.OnDemandBuilds(janitor_interval=1),
)]
c["workers"] = [worker.Worker("local-worker", os.environ["FARM_WORKER_PASSWORD"])] + [
    worker.FarmLatentWorker(name, buildlet_type=name, keepalive_interval=0.5)
    for name in {stubs!r}
]
factory = util.BuildFactory([
    steps.ShellCommand(name="wait for go", timeout=300,
                       command=["sh", "-c", "while [ ! -e {go} ]; do sleep 0.2; done"]),
    steps.StringDownload(util.Interpolate("built on %(prop:workername)s\\n"),
                         workerdest="out/tool"),
    steps.ArtifactUpload(name="publish", workersrc="out/tool"),
])
c["builders"] = [util.BuilderConfig(name="tool", workernames={workers!r}, factory=factory)]
c["schedulers"] = [schedulers.OnDemandScheduler(name="tool", builder="tool")]
"""


@pytest.fixture
def stubs() -> Iterator[dict[str, MetadataStub]]:
    """One GCE metadata stub per spot pool, answering 'not preempted' to begin with."""
    running = {name: MetadataStub() for name in WORKERS}
    for stub in running.values():
        stub.answer("GET", PREEMPTED, 200, "FALSE")
    yield running
    for stub in running.values():
        stub.stop()


@pytest.fixture
def farm(tmp_path: Path, stubs: dict[str, MetadataStub]) -> Iterator[LocalFarm]:
    """A master with the two spot workers, started for the test."""
    config = tmp_path / "master.cfg"
    config.write_text(MASTER_CFG.format(
        preamble=LOOPBACK_MASTER, stubs={name: stub.url for name, stub in stubs.items()},
        workers=list(WORKERS), go=tmp_path / "GO",
    ))
    local = LocalFarm(config, tmp_path / "farm",
                      env={"FARM_WEB_PORT": str(free_port()), "FARM_PB_PORT": str(free_port())})
    local.create()
    local.start()
    try:
        yield local
    finally:
        local.stop()


def wait_for(predicate: Any, within: float, what: str) -> Any:
    """Poll ``predicate`` until it returns something true; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {within:g} s waiting for {what}")


def test_a_job_preempted_mid_build_completes_on_the_other_worker(
    farm: LocalFarm, stubs: dict[str, MetadataStub], tmp_path: Path
) -> None:
    """Preempting the buildlet of a running build ends it RETRY; attempt 2 finishes elsewhere."""
    code, body, _ = call(api(farm, "build"), {"scheduler": "tool"})
    assert code == 202, body
    key = json.loads(body)["key"]

    def job() -> dict[str, Any]:
        return dict(json.loads(call(api(farm, f"build/{key}"))[1]))

    def waiting_step_runs() -> Any:
        attempts = job()["attempts"]
        if not attempts or not attempts[0]["build_id"]:
            return None
        steps = farm.api(f"builds/{attempts[0]['build_id']}/steps")["steps"]
        running = any(s["name"] == "wait for go" and s["started_at"] for s in steps)
        return attempts[0]["worker"] if running else None

    first = wait_for(waiting_step_runs, 90, "attempt 1 to be building on a spot worker")
    (second,) = set(WORKERS) - {first}
    stubs[first].answer("GET", PREEMPTED, 200, "TRUE")

    def attempt_one_over() -> Any:
        attempts = job()["attempts"]
        return attempts if attempts[0]["result"] else None

    attempts = wait_for(attempt_one_over, 60, "the preempted build to end")
    assert attempts[0]["result"] == "retry", attempts
    (tmp_path / "GO").touch()

    finished = wait_for(lambda: job() if job()["status"] in ("succeeded", "failed") else None,
                        120, "the job to finish")
    assert finished["status"] == "succeeded", finished
    first_try, second_try = finished["attempts"]
    assert (first_try["attempt"], first_try["worker"], first_try["result"]) == (1, first, "retry")
    assert "preempted (gce): GCE metadata says instance/preempted is TRUE" in first_try["error"]
    assert (second_try["attempt"], second_try["worker"], second_try["result"]) == (
        2, second, "success")
    assert call(finished["artifact"]["download"])[1] == f"built on {second}\n".encode()
    results = [b["results"] for b in farm.api("builders/tool/builds")["builds"]]
    assert results.count(0) == 1, f"more than one build succeeded: {results}"
