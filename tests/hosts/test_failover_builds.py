"""A host that dies under a FarmLatentWorker build costs a retry, not the build."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness.docker_hosts import DockerTestHost
from tests.harness.host_farm import RETRY, SUCCESS, HostFarm, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.master]


@pytest.fixture
def host_farm(
    tmp_path: Path, docker_hosts: list[DockerTestHost], host_worker_image: str
) -> Iterator[HostFarm]:
    """A master building on a pool over the two test hosts, started for the test."""
    farm = HostFarm(tmp_path, docker_hosts, host_worker_image)
    farm.start()
    try:
        yield farm
    finally:
        farm.stop()


def kill_engine(host: DockerTestHost) -> None:
    """The host's engine dies (``kill -9``); its containers go on running."""
    host.kill_engine()


def revive_engine(host: DockerTestHost) -> None:
    """The host reboots: everything left in it is killed, its engine starts again."""
    host.restart_engine()


def cut_link(host: DockerTestHost) -> None:
    """The host drops off the network."""
    host.set_link(up=False)


def mend_link(host: DockerTestHost) -> None:
    """The host is reachable again, with what ran on it still running."""
    host.set_link(up=True)


@pytest.mark.parametrize(
    ("die", "come_back"),
    [(kill_engine, revive_engine), (cut_link, mend_link)],
    ids=["engine killed", "link down"],
)
def test_a_build_on_a_host_that_dies_ends_retry_and_succeeds_on_the_other(
    host_farm: HostFarm, docker_hosts: list[DockerTestHost],
    die: Callable[[DockerTestHost], None], come_back: Callable[[DockerTestHost], None],
    tmp_path: Path,
) -> None:
    """The build on the dead host ends RETRY, its retry succeeds on the other host, the lost
    lease says why in `lease list` and on the Buildlets page, and the host, once back, has its
    leftovers reaped, is up again and runs the next build."""
    first = docker_hosts[0]
    request_id = host_farm.force()
    wait_for(lambda: host_farm.running_on_first_host(request_id), 180,
             "the build's step to run on the first host")
    die(first)
    try:
        wait_for(lambda: not host_farm.host_state("h1")["up"], 60, "h1 to be marked down")
        assert "<td>down since " in host_farm.host_row("h1")
        assert ": its Docker engine at " in host_farm.host_row("h1")
        assert host_farm.host_row("h2").endswith("<td>up</td></tr>")
        builds = wait_for(lambda: host_farm.retried(request_id), 300,
                          "the build to be retried and the retry to finish")
    finally:
        come_back(first)
    assert [build["results"] for build in builds] == [RETRY, SUCCESS], builds
    (lost_line,) = [line for line in host_farm.lease_list(tmp_path).splitlines()
                    if " lost with " in line]
    assert "lost with host h1: its Docker engine at " in lost_line
    assert "lost with host h1: its Docker engine at " in host_farm.buildlets_page()
    wait_for(lambda: host_farm.host_state("h1")["up"], 60, "h1 to answer again")
    assert host_farm.host_row("h1").endswith("<td>up</td></tr>")

    def no_leftovers() -> bool:
        client = first.client()
        try:
            return client.containers.list(all=True) == []
        finally:
            client.close()

    wait_for(no_leftovers, 60, "h1's leftover containers to be reaped")
    next_request = host_farm.force()
    wait_for(lambda: host_farm.running_on_first_host(next_request), 180,
             "the next build's step to run on the first host again")
    assert host_farm.host_state("h1")["buildlets"] == 1
    host_farm.stop_build(host_farm.builds(next_request)[0])


def test_an_on_demand_job_on_a_host_that_dies_gets_a_new_attempt_naming_the_host(
    host_farm: HostFarm, docker_hosts: list[DockerTestHost]
) -> None:
    """Attempt 1, on the host whose engine is killed, ends retry with the lost host in its
    error; attempt 2 succeeds on the other host and publishes the job's artifact. (The
    hosts' client keys are Buildbot secrets, written as PEM files only the master reads.)"""
    for label in ("h1", "h2"):
        key_file = host_farm.local.master_dir / "docker-tls" / "spread" / label / "key.pem"
        assert key_file.read_text().startswith("-----BEGIN ")
        assert key_file.stat().st_mode & 0o777 == 0o600
    key = host_farm.request_job()

    def attempt_one_building() -> bool:
        attempts = host_farm.job(key)["attempts"]
        return bool(attempts) and bool(attempts[0]["build_id"]) and host_farm.step_started(
            {"buildid": attempts[0]["build_id"]})

    wait_for(attempt_one_building, 180, "attempt 1 to run its step on the first host")
    docker_hosts[0].kill_engine()
    try:
        job = wait_for(lambda: (lambda j: j if j["status"] in ("succeeded", "failed") else None)(
            host_farm.job(key)), 300, "the job to finish")
    finally:
        docker_hosts[0].restart_engine()
    assert job["status"] == "succeeded", job
    first_try, second_try = job["attempts"]
    assert (first_try["attempt"], first_try["result"]) == (1, "retry"), job
    assert "lost with host h1: its Docker engine at " in first_try["error"], job
    assert (second_try["attempt"], second_try["result"]) == (2, "success"), job
    wait_for(lambda: host_farm.host_state("h1")["up"], 60, "h1 to answer again")
    assert host_farm.host_row("h1").endswith("<td>up</td></tr>")
