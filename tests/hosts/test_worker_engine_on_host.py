"""ContainerTask(engine="worker") on a worker inside a test host: the host's engine runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from buildbot_farm.demo import LocalFarm
from tests.harness.byte_relay import CountingRelay
from tests.harness.docker_hosts import DockerTestHost
from tests.harness.master_cfg import LOOPBACK_MASTER
from tests.harness.ports import free_port

pytestmark = [pytest.mark.docker, pytest.mark.master]

PAYLOAD = 4 << 20
MASTER_CFG = """
import os
from buildbot.plugins import schedulers, steps, util, worker

{preamble}
c["protocols"] = {{"pb": {{"port": f"tcp:{{os.environ['FARM_PB_PORT']}}:interface={address}"}}}}
c["services"] = [util.FarmService(name="farm")]
c["workers"] = [worker.Worker("local-worker", os.environ["FARM_WORKER_PASSWORD"])]
c["builders"] = [util.BuilderConfig(name="payload", workernames=["local-worker"],
    factory=util.BuildFactory([
        steps.ShellCommand(name="make-inputs", command=[
            "sh", "-c", "mkdir -p src && head -c {payload} /dev/urandom > src/in.bin"]),
        steps.ContainerTask(name="task", image={image!r}, engine="worker", workdir="/work/src",
                            inputs={{"src": "/work/src"}},
                            command="test -s in.bin && head -c {payload} /dev/urandom > out.bin"),
    ]))]
c["schedulers"] = [schedulers.ForceScheduler(name="force", builderNames=["payload"])]
"""


@pytest.fixture
def hosted_farm(
    tmp_path: Path, docker_hosts: list[DockerTestHost], base_image: str
) -> Iterator[tuple[LocalFarm, CountingRelay, DockerTestHost]]:
    """A master on this machine whose worker runs inside the second test host (its network
    namespace, its engine's socket as DOCKER_HOST), reaching the master through a relay."""
    host = docker_hosts[1]
    config = tmp_path / "master.cfg"
    config.write_text(MASTER_CFG.format(preamble=LOOPBACK_MASTER, address=host.gateway,
                                        image=base_image, payload=PAYLOAD))
    farm = LocalFarm(config, tmp_path / "farm", env={
        "FARM_WEB_PORT": str(free_port()), "FARM_PB_PORT": str(free_port(host.gateway)),
    })
    farm.create()
    relay = CountingRelay(farm.pb_port, host.gateway)
    tac = farm.worker_dir / "buildbot.tac"
    text = tac.read_text()
    assert f"port = {farm.pb_port}\n" in text
    assert "buildmaster_host = '127.0.0.1'\n" in text
    text = text.replace(f"port = {farm.pb_port}\n", f"port = {relay.port}\n")
    tac.write_text(text.replace("buildmaster_host = '127.0.0.1'\n",
                                f"buildmaster_host = {host.gateway!r}\n"))
    farm.start_master()
    try:
        subprocess.run(
            ["nsenter", f"--net=/run/netns/{host.name}",
             str(Path(sys.executable).parent / "buildbot-worker"), "start", "--quiet",
             str(farm.worker_dir)],
            env={**os.environ, **farm.extra_env, "FARM_WORKER_PASSWORD": farm.password,
                 "DOCKER_HOST": f"unix://{host.state_dir / 'docker.sock'}"},
            check=True, capture_output=True, timeout=120)
        farm.wait_for_worker()
        yield farm, relay, host
    finally:
        farm.stop()
        relay.stop()


def test_a_worker_in_a_test_host_runs_the_task_on_that_hosts_engine(
    hosted_farm: tuple[LocalFarm, CountingRelay, DockerTestHost], docker_client: docker.DockerClient
) -> None:
    """The task's container is made on the worker's host's engine, not the master's, and its
    4 MiB of inputs and 4 MiB of outputs never cross the worker's connection to the master."""
    farm, relay, host = hosted_farm
    since = int(time.time()) - 1
    before = relay.counts()
    build = farm.force_build("payload")
    to_master, from_master = (after - first for after, first in zip(relay.counts(), before))
    assert build["results"] == 0, build["state_string"]
    out = farm.worker_dir / "payload" / "build" / "src" / "out.bin"
    assert out.stat().st_size == PAYLOAD
    assert to_master < (1 << 20), to_master
    assert from_master < (1 << 20), from_master
    until = int(time.time()) + 1
    label = {"label": [f"buildbot-farm.master={os.uname()[1]}:{farm.master_dir}"]}
    created = {"type": ["container"], "event": ["create"], **label}
    client = host.client()
    try:
        on_host = list(client.events(since=since, until=until, filters=created, decode=True))
    finally:
        client.close()
    on_master = list(docker_client.events(since=since, until=until, filters=created, decode=True))
    assert len(on_host) == 1, on_host
    assert on_master == []
