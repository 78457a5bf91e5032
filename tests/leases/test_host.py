"""LeasesHost: the coordinator FarmService runs, on a fake farm context."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest_twisted

from buildbot_farm.leases.config import BuildletPool, FarmCoordinator
from buildbot_farm.leases.host import MOUNT, LeasesHost
from buildbot_farm.leases.runtime import SWEEPER
from buildbot_farm.testing import FakeFarmContext, memory_database
from tests.harness.twisted_reactor import reactor


def wanted(sweep_interval: float) -> FarmCoordinator:
    """A coordinator of one local pool, sweeping every ``sweep_interval`` seconds."""
    return FarmCoordinator(secret="host-test-coordinator-secret", sweep_interval=sweep_interval,
                           pools=[BuildletPool("local", max_count=1)])


@pytest_twisted.ensureDeferred
async def test_the_host_follows_the_settings(tmp_path: Path) -> None:
    """The host serves and sweeps the coordinator asked for, keeps it while the settings and
    the database stay, replaces it when they change, and takes it away without one."""
    database = await memory_database(reactor)
    master = SimpleNamespace(reactor=reactor, basedir=str(tmp_path), name="m1")
    farm = FakeFarmContext(master, database)
    host = LeasesHost(farm)
    try:
        await host.configure(wanted(10))
        first = host.coordinator
        assert first is not None
        assert [m["name"] for m in farm.web_root.index("/")] == [MOUNT]
        assert farm.periodic == {SWEEPER: 10}
        assert await farm.run_periodic(SWEEPER) == []

        await host.configure(wanted(10))
        assert host.coordinator is first
        await host.configure(wanted(20))
        assert host.coordinator is not None
        assert host.coordinator is not first
        assert farm.periodic == {SWEEPER: 20}

        await host.configure(None)
        assert host.coordinator is None
        assert farm.web_root.index("/") == []
        assert farm.periodic == {}
        await host.configure(wanted(10))
        assert host.coordinator is not None
    finally:
        await host.stop()
        await database.stop()
    assert host.coordinator is None
    assert farm.web_root.index("/") == []
    assert farm.periodic == {}
