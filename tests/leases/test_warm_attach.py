"""Attaching on a warm buildlet: the pre-started worker is used, and the refill waits."""

from __future__ import annotations

from pathlib import Path

import docker
import pytest
import pytest_twisted
from twisted.internet import task

from benchmarks.attach_master import AttachBench
from buildbot_farm.leases.pools import REFILL_DELAY
from buildbot_farm.remote.handoff import USED_MESSAGE
from tests.harness.docker_engine import DockerEngine
from tests.harness.twisted_reactor import reactor
from tests.harness.worker_image import ensure_worker_image
from tests.leases.conftest import StartCoordinator


@pytest_twisted.ensureDeferred
async def test_the_replacement_of_a_leased_warm_buildlet_starts_after_the_refill_delay(
    start_coordinator: StartCoordinator,
) -> None:
    """Leasing the warm buildlet starts no replacement until REFILL_DELAY has passed."""
    clock = task.Clock()
    running = await start_coordinator(max_count=3, warm=1, clock=clock)
    await running.coordinator.wait_until_warm()
    lease = await running.client().create("local")
    assert lease["Name"]
    clock.advance(REFILL_DELAY * 0.9)
    await task.deferLater(reactor, 0.5, lambda: None)  # time for a refill to write its row
    assert await running.coordinator.table.count("local") == 1
    clock.advance(REFILL_DELAY * 0.2)
    await running.coordinator.wait_until_warm()
    assert await running.coordinator.table.count_idle("local") == 1
    assert await running.coordinator.table.count("local") == 2


@pytest_twisted.ensureDeferred
async def test_the_first_request_to_a_leased_warm_buildlet_writes_no_renewal(
    start_coordinator: StartCoordinator,
) -> None:
    """Leasing a warm buildlet renews it; a request soon after (within renew_every) is
    forwarded without writing the renewal again."""
    clock = task.Clock()
    clock.advance(1000.0)
    running = await start_coordinator(max_count=2, warm=1, clock=clock)
    await running.coordinator.wait_until_warm()
    name = (await running.client().create("local"))["Name"]
    leased = await running.coordinator.table.get(name)
    clock.advance(running.coordinator.renew_every / 2)
    await running.coordinator.use("user-alice", name)
    used = await running.coordinator.table.get(name)
    assert leased is not None
    assert used is not None
    assert used.renewed_at == leased.renewed_at == 1000.0
    clock.advance(running.coordinator.renew_every)
    await running.coordinator.use("user-alice", name)
    renewed = await running.coordinator.table.get(name)
    assert renewed is not None
    assert renewed.renewed_at == 1000.0 + 1.5 * running.coordinator.renew_every


@pytest.mark.docker
def test_a_warm_docker_buildlet_attaches_through_its_prestarted_worker(
    tmp_path: Path, docker_engine: DockerEngine, docker_client: docker.DockerClient
) -> None:
    """On a warm docker buildlet the master logs that the pre-started worker was used, each time."""
    image = ensure_worker_image(docker_client)
    bench = AttachBench(tmp_path, docker_client, f"unix://{docker_engine.socket_path}", image)
    try:
        bench.start()
        for _ in range(2):
            bench.force_times("farm")
        log = bench.farm.master_log.read_text(errors="replace")
    finally:
        bench.close()
    used = f"FarmLatentWorker {bench.workers['farm']}: on "
    assert log.count(USED_MESSAGE) == 2, log[-3000:]
    assert all(used in line for line in log.splitlines() if USED_MESSAGE in line)
    assert "no pre-started worker" not in log
    assert not bench.pool_containers()
