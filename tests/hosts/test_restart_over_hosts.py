"""A coordinator restarted with leases on both test hosts, and after one host was lost."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted

from buildbot_farm.leases.client import CoordinatorRequestError
from tests.harness.docker_hosts import DockerTestHost
from tests.hosts.test_pool_over_hosts import containers_on, start_farm, wait_for

pytestmark = pytest.mark.docker


@pytest_twisted.ensureDeferred
async def test_a_restart_re_adopts_leases_on_both_hosts_and_remembers_a_lost_one(
    docker_hosts: list[DockerTestHost], base_image: str, tmp_path: Path
) -> None:
    """Both hosts' leases survive a restart; once h1 dies, its lease is lost with the reason,
    which a second restart still gives, and h1's container is reaped on its return, not
    re-adopted."""
    farm = await start_farm(docker_hosts, base_image, tmp_path)
    try:
        names = [(await farm.alice.create("spread"))["Name"] for _ in docker_hosts]
        hosts = {await farm.host_of(name): name for name in names}
        assert sorted(hosts) == ["h1", "h2"]

        farm = await farm.restarted(docker_hosts, base_image, tmp_path)
        assert sorted(lease["Name"] for lease in await farm.alice.buildlets()) == sorted(names)
        for name in names:
            assert (await farm.alice.exec(name, "true", [])).exit_code == 0
        # The restarted coordinator counts each host's buildlet (placement relies on it).
        assert [farm.host_state(label)["buildlets"] for label in ("h1", "h2")] == [1, 1]

        docker_hosts[0].kill_engine()
        try:
            await wait_for(lambda: farm.lost(hosts["h1"]), 60.0, "losing the lease on h1")
            farm = await farm.restarted(docker_hosts, base_image, tmp_path)
            with pytest.raises(CoordinatorRequestError, match="was lost with host h1: its Docker"):
                await farm.alice.exec(hosts["h1"], "true", [])
            (lost,) = await farm.alice.lost_buildlets()
            assert (lost["Name"], lost["Type"]) == (hosts["h1"], "spread")
            assert lost["Reason"].startswith("host h1: its Docker engine at ")
            assert (await farm.alice.exec(hosts["h2"], "true", [])).exit_code == 0
        finally:
            docker_hosts[0].restart_engine()
        await wait_for(lambda: farm.host_state("h1")["up"], 60.0, "h1 answering again")
        await wait_for(lambda: containers_on(docker_hosts[0]) == [], 60.0,
                       "h1's old container to be reaped")
        assert [lease["Name"] for lease in await farm.alice.buildlets()] == [hosts["h2"]]
        assert farm.host_state("h1")["buildlets"] == 0
    finally:
        await farm.stop()
