"""A real master and worker whose builders run container tasks, shared by one test module."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from buildbot_farm.containers._run import labels_for
from buildbot_farm.demo import LocalFarm
from tests.harness.byte_relay import CountingRelay
from tests.harness.docker_engine import DockerEngine
from tests.harness.ports import free_port

HERE = Path(__file__).parent


class BuildFarm:
    """A started LocalFarm plus helpers to force builds without waiting and read step logs."""

    def __init__(self, farm: LocalFarm, leftover: str, relay: CountingRelay | None = None,
                 ) -> None:
        self.farm = farm
        self.master_name = f"{os.uname()[1]}:{farm.master_dir}"
        self.leftover = leftover
        self.relay = relay

    def build_counting(self, builder: str) -> tuple[dict[str, Any], int, int]:
        """Force ``builder``; the finished build, and the bytes the worker's connection
        carried meanwhile to the master and from it."""
        assert self.relay is not None, "this farm's worker connection goes through no relay"
        before = self.relay.counts()
        build = self.build(builder)
        after = self.relay.counts()
        return build, after[0] - before[0], after[1] - before[1]

    def build(self, builder: str) -> dict[str, Any]:
        """Force ``builder`` and wait for the finished build."""
        return self.farm.force_build(builder)

    def start(self, builder: str) -> int:
        """Force ``builder``; return its build request id at once."""
        answer = self.farm.api(
            "forceschedulers/force",
            {"jsonrpc": "2.0", "id": 1, "method": "force",
             "params": {"builderNames": [builder], "reason": "test"}},
        )
        return int(next(iter(answer["result"][1].values())))

    def running_build(self, request: int, within: float = 60) -> dict[str, Any]:
        """The build of build request ``request``, once it exists."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            builds = self.farm.api(f"buildrequests/{request}/builds")["builds"]
            if builds:
                return dict(builds[0])
            time.sleep(0.05)
        raise AssertionError(f"build request {request} got no build within {within} s")

    def wait(self, build_id: int, within: float = 120) -> dict[str, Any]:
        """The build once it is complete."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            build = self.farm.api(f"builds/{build_id}")["builds"][0]
            if build["complete"]:
                return dict(build)
            time.sleep(0.1)
        raise AssertionError(f"build {build_id} did not finish within {within} s")

    def step(self, build: dict[str, Any], name: str) -> dict[str, Any]:
        """The step called ``name`` of ``build``."""
        steps = self.farm.api(f"builds/{build['buildid']}/steps")["steps"]
        return dict(next(s for s in steps if s["name"] == name))

    def log(self, step: dict[str, Any], name: str = "stdio") -> str:
        """A step log's text, one line per log line, without Buildbot's stream prefixes."""
        logs = self.farm.api(f"steps/{step['stepid']}/logs")["logs"]
        found = [entry for entry in logs if entry["slug"] == name.replace(".", "_")]
        if not found:
            return ""
        chunks = self.farm.api(f"logs/{found[0]['logid']}/contents")["logchunks"]
        text = "".join(chunk["content"] for chunk in chunks)
        if found[0]["type"] != "s":
            return text
        return "".join(line[1:] + "\n" for line in text.splitlines())

    def properties(self, build: dict[str, Any]) -> dict[str, Any]:
        """The build's properties as name -> value."""
        answer = self.farm.api(f"builds/{build['buildid']}/properties")["properties"][0]
        return {key: value[0] for key, value in answer.items()}

    @property
    def builddir(self) -> Path:
        """The directory holding the worker's builder directories."""
        return self.farm.worker_dir


@pytest.fixture(scope="module")
def build_farm(
    tmp_path_factory: pytest.TempPathFactory,
    base_image: str,
    busybox_image: str,
    docker_client: docker.DockerClient,
    docker_engine: DockerEngine,
) -> Iterator[BuildFarm]:
    """A master (config: tests/containers/master.cfg) and a worker, started for the module.

    The worker reaches the master through a CountingRelay, and both use the test engine
    (``DOCKER_HOST``): builders ``NAME-on-worker`` run their tasks on the worker's engine.

    Before the master starts, a container labelled as this master's is left on the engine,
    as a crash would leave it: the farm service must remove it when it starts.
    """
    basedir = tmp_path_factory.mktemp("container-farm")
    farm = LocalFarm(
        HERE / "master.cfg",
        basedir,
        env={
            "FARM_WEB_PORT": str(free_port()),
            "FARM_PB_PORT": str(free_port()),
            "FARM_TEST_BASE_IMAGE": base_image,
            "FARM_TEST_BUSYBOX_IMAGE": busybox_image,
            "FARM_TEST_OUTSIDE": str(basedir / "outside"),
            "DOCKER_HOST": f"unix://{docker_engine.socket_path}",
        },
    )
    (basedir / "outside").mkdir()
    farm.create()
    relay = CountingRelay(farm.pb_port)
    tac = farm.worker_dir / "buildbot.tac"
    text = tac.read_text()
    assert f"port = {farm.pb_port}\n" in text, "buildbot.tac names the master's port otherwise"
    tac.write_text(text.replace(f"port = {farm.pb_port}\n", f"port = {relay.port}\n"))
    master_name = f"{os.uname()[1]}:{farm.master_dir}"
    leftover = docker_client.containers.create(
        busybox_image, ["true"], labels=labels_for(master_name, build=1, step=1)
    )
    farm.start()
    try:
        yield BuildFarm(farm, leftover.id, relay)
    finally:
        farm.stop()
        relay.stop()
        with contextlib.suppress(docker.errors.NotFound):
            leftover.remove(force=True)
