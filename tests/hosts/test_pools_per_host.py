"""Warm buildlets, preemption and the reap of unowned containers, per host of a pool."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import task

from buildbot_farm.leases.model import LeaseState
from buildbot_farm.leases.preemption import SignalPreemption, preemption_notice
from buildbot_farm.leases.providers.docker import BUILDLET_LABEL
from tests.harness.docker_hosts import DockerTestHost
from tests.harness.twisted_reactor import reactor
from tests.hosts.test_pool_over_hosts import Farm, containers_on, start_farm, wait_for

pytestmark = pytest.mark.docker


async def idle_on(farm: Farm) -> list[tuple[str, str]]:
    """(host, name) of each idle (warm) buildlet of ``farm``, sorted."""
    idle = [lease for lease in await farm.coordinator.table.all()
            if lease.state is LeaseState.IDLE]
    return sorted([(await farm.host_of(lease.name), lease.name) for lease in idle])


def signal_buildlets(host: DockerTestHost, signal: str) -> int:
    """What a host's shutdown hook does: ``docker kill --signal`` to every buildlet container
    on it (docker-init, their PID 1, passes it to the agent); returns how many."""
    client = host.client()
    try:
        containers = client.containers.list(filters={"label": BUILDLET_LABEL})
        for container in containers:
            container.kill(signal=signal)
        return len(containers)
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_warm_buildlets_go_where_there_is_room_and_are_refilled_on_a_host_that_answers(
    docker_hosts: list[DockerTestHost], base_image: str, tmp_path: Path
) -> None:
    """A warm buildlet is placed like any other (the host with the most free room), leasing
    it refills the pool on the other host, a restarted coordinator re-adopts it as warm
    without starting another, and a warm buildlet lost with its host is refilled on the
    host that answers."""
    farm = await start_farm(docker_hosts, base_image, tmp_path, warm=1)
    try:
        await farm.coordinator.wait_until_warm()
        assert [host for host, _ in await idle_on(farm)] == ["h1"]  # both empty: the first
        leased = (await farm.alice.create("spread"))["Name"]
        assert await farm.host_of(leased) == "h1"
        await farm.coordinator.wait_until_warm()
        ((host, refill),) = await idle_on(farm)
        assert host == "h2"  # h1 holds the leased one

        farm = await farm.restarted(docker_hosts, base_image, tmp_path)
        await farm.coordinator.wait_until_warm()
        assert await idle_on(farm) == [("h2", refill)]
        assert [farm.host_state(label)["buildlets"] for label in ("h1", "h2")] == [1, 1]
        assert len(containers_on(docker_hosts[1])) == 1

        docker_hosts[1].kill_engine()
        try:
            await wait_for(lambda: farm.lost(refill), 60.0, "losing the warm buildlet on h2")

            async def refilled_on_h1() -> bool:
                idle = await idle_on(farm)
                return len(idle) == 1 and idle[0][0] == "h1"

            await wait_for(refilled_on_h1, 60.0, "a warm buildlet on h1")
        finally:
            docker_hosts[1].restart_engine()
        await wait_for(lambda: farm.host_state("h2")["up"], 60.0, "h2 answering again")
        await wait_for(lambda: containers_on(docker_hosts[1]) == [], 60.0,
                       "h2's old container to be reaped")
        assert [farm.host_state(label)["buildlets"] for label in ("h1", "h2")] == [2, 0]
    finally:
        await farm.stop()


@pytest_twisted.ensureDeferred
async def test_a_hosts_preemption_reaches_only_the_buildlets_on_it(
    docker_hosts: list[DockerTestHost], base_image: str, tmp_path: Path
) -> None:
    """h2's shutdown hook signals its buildlets: the leased one there reports the preemption
    through the coordinator's proxy, those on h1 do not, and the sweep drops h2's warm one
    while h1's leases stay."""
    farm = await start_farm(docker_hosts, base_image, tmp_path, warm=1,
                            preemption=SignalPreemption("SIGUSR1"))
    try:
        leased: dict[str, list[str]] = {"h1": [], "h2": []}
        for _ in range(3):  # h1, h2, h1: each time the warm one, refilled where there is room
            await farm.coordinator.wait_until_warm()
            name = (await farm.alice.create("spread"))["Name"]
            leased[await farm.host_of(name)].append(name)
        await farm.coordinator.wait_until_warm()
        ((host, warm_name),) = await idle_on(farm)
        assert (host, len(leased["h1"]), len(leased["h2"])) == ("h2", 2, 1)
        assert await farm.coordinator.sweep() == []

        assert signal_buildlets(docker_hosts[1], "SIGUSR1") == 2
        await task.deferLater(reactor, 0.5, lambda: None)
        for name in leased["h2"]:
            notice = preemption_notice(await farm.alice.status(name))
            assert notice == "preempted (signal): received SIGUSR1"
        for name in leased["h1"]:
            assert preemption_notice(await farm.alice.status(name)) is None
        assert await farm.coordinator.sweep() == [warm_name]
        assert await farm.coordinator.table.get(warm_name) is None
        for name in leased["h1"] + leased["h2"]:
            assert await farm.coordinator.table.get(name) is not None
    finally:
        await farm.stop()


@pytest_twisted.ensureDeferred
async def test_a_coordinator_starting_reaps_each_hosts_containers_no_lease_owns(
    docker_hosts: list[DockerTestHost], base_image: str, tmp_path: Path
) -> None:
    """A coordinator that starts on a new database (the old one lost) removes its pool's
    containers from every host, and leaves a container that is not its pool's alone."""
    for directory in ("first", "second"):
        (tmp_path / directory).mkdir()
    farm = await start_farm(docker_hosts, base_image, tmp_path / "first")
    client = docker_hosts[0].client()
    try:
        stranger = client.containers.create(base_image, ["sleep", "600"], name="not-the-farms")
        try:
            names = [(await farm.alice.create("spread"))["Name"] for _ in docker_hosts]
            assert sorted([await farm.host_of(name) for name in names]) == ["h1", "h2"]
            await farm.port.stopListening()
            await farm.coordinator.stop()  # its buildlets go on running
            await farm.database.stop()

            farm = await start_farm(docker_hosts, base_image, tmp_path / "second",
                                    owner=farm.owner)
            reaped = [line for line in farm.recovered if line.startswith("reaped ")]
            assert sorted(line.split(" on host ")[-1] for line in reaped) == [
                "h1, which no lease owned", "h2, which no lease owned"], farm.recovered
            assert containers_on(docker_hosts[0]) == ["not-the-farms"]
            assert containers_on(docker_hosts[1]) == []
        finally:
            stranger.remove(force=True)
    finally:
        client.close()
        await farm.stop()
