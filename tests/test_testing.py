"""The test kit that buildbot_farm ships for its users' tests."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import pytest_twisted
from buildbot.test.fake import fakemaster
from buildbot.test.reactor import TestReactorMixin
from twisted.internet import task
from twisted.trial import unittest

from buildbot_farm.artifacts.config import ArtifactRepository
from buildbot_farm.artifacts.host import JANITOR, MOUNT, ArtifactsHost
from buildbot_farm.leases.client import CoordinatorRequestError
from buildbot_farm.leases.model import ExpiryPolicy
from buildbot_farm.testing import (
    FAKE_COORDINATOR_URL,
    FakeFarmContext,
    fake_coordinator,
    local_coordinator,
    memory_database,
)
from tests.harness.stub_http import stub_request
from tests.harness.twisted_reactor import reactor


class MemoryDatabaseTests(TestReactorMixin, unittest.TestCase):
    """testing.memory_database() under Buildbot's test reactor."""

    async def test_memory_database_is_migrated_and_works_without_threads(self) -> None:
        """memory_database() gives a migrated database usable under Buildbot's test reactor."""
        self.setup_test_reactor()
        database = await memory_database(self.reactor)
        await database.execute(
            "INSERT INTO farm_masters (name, started_at, heartbeat_at, version)"
            " VALUES ('m', 1, 2, 'x')"
        )
        assert await database.fetchall("SELECT name FROM farm_masters") == [{"name": "m"}]
        await database.stop()


class FakeFarmContextTests(TestReactorMixin, unittest.TestCase):
    """testing.FakeFarmContext as the farm a capability host runs on."""

    async def test_a_capability_host_runs_on_the_fake_context(self) -> None:
        """A capability's host handed a FakeFarmContext mounts its API on the context's web
        root and adds its janitor, which the test runs; stopping takes both away."""
        self.setup_test_reactor()
        basedir = tempfile.mkdtemp(prefix="farm-testing-")
        self.addCleanup(shutil.rmtree, basedir, True)
        master = await fakemaster.make_master(self, basedir=basedir, wantMq=True)
        database = await memory_database(self.reactor)
        self.addCleanup(database.stop)
        farm = FakeFarmContext(master, database)
        host = ArtifactsHost(farm)
        await host.configure(ArtifactRepository(janitor_interval=60))
        assert host.repository is not None
        assert [m["name"] for m in farm.web_root.index("/plugins/farm/")] == [MOUNT]
        assert farm.periodic == {JANITOR: 60}

        await host.repository.index.mint(7, ("bin", "p", "1"), ttl=10)
        tokens = "SELECT build_id FROM farm_artifact_tokens"
        assert await database.fetchall(tokens) == [{"build_id": 7}]
        self.reactor.advance(11)
        await farm.run_periodic(JANITOR)
        assert await database.fetchall(tokens) == []
        with pytest.raises(KeyError, match="no periodic task 'nope'"):
            await farm.run_periodic("nope")

        await host.stop()
        assert farm.web_root.index("/plugins/farm/") == []
        assert farm.periodic == {}


class FakeCoordinatorTests(TestReactorMixin, unittest.TestCase):
    """testing.fake_coordinator(): the buildlet protocol through StubTreq, and leases expiring on
    the test reactor's clock."""

    async def test_fake_coordinator_leases_lists_and_destroys_through_stub_treq(self) -> None:
        """fake_coordinator() answers the buildlet protocol through StubTreq with no socket,
        process or thread: a create leases a fake buildlet (its agent told its deadline), the
        list shows it to its lessee only, a full pool is a 503, and /halt destroys it."""
        self.setup_test_reactor()
        farm = await fake_coordinator(self.reactor, max_count=1,
                                      policy=ExpiryPolicy(idle_timeout=60))
        self.addCleanup(farm.stop)
        bob = farm.client("user-bob")
        name = (await bob.create("local"))["Name"]
        assert farm.provider.live == [name]
        assert farm.provider.deadlines == {name: 60 + farm.coordinator.agent_grace}
        assert [b["Name"] for b in await bob.buildlets()] == [name]
        assert await farm.client("user-carol").buildlets() == []
        with pytest.raises(CoordinatorRequestError) as full:
            await farm.client("user-carol").create("local")
        assert full.value.status == 503

        # The routes as any HTTP client sends them (here treq's own StubTreq).
        listed = await stub_request(farm.http, "GET", f"{FAKE_COORDINATOR_URL}/buildlet/list",
                                    auth=("user-bob", farm.key("user-bob")))
        assert [b["Name"] for b in json.loads(await listed.content())] == [name]
        refused = await stub_request(farm.http, "GET", f"{FAKE_COORDINATOR_URL}/buildlet/list",
                                     auth=("user-bob", "0" * 64))
        assert refused.code == 401

        await bob.destroy(name)
        assert await bob.buildlets() == []
        assert farm.provider.live == []
        # Room again: the next create gets a new buildlet.
        again = (await bob.create("local"))["Name"]
        assert again != name
        assert farm.provider.live == [again]

    async def test_an_expired_fake_lease_is_swept(self) -> None:
        """The fake coordinator's leases expire on the test reactor's clock like real ones."""
        self.setup_test_reactor()
        farm = await fake_coordinator(self.reactor, policy=ExpiryPolicy(idle_timeout=60))
        self.addCleanup(farm.stop)
        name = (await farm.client().create("local"))["Name"]
        self.reactor.advance(61)
        assert await farm.coordinator.sweep() == [name]
        assert farm.provider.live == []
        assert await farm.client().buildlets() == []


@pytest_twisted.ensureDeferred
async def test_local_coordinator_leases_real_buildlets(tmp_path: Path) -> None:
    """local_coordinator() serves a coordinator whose client leases a buildlet that runs
    under the given root, lists it, and destroys it."""
    database = await memory_database(reactor)
    running = await local_coordinator(database, reactor, tmp_path / "buildlets", b"s" * 32,
                                      max_count=1)
    try:
        client = running.client("user-bob")
        name = (await client.create("local"))["Name"]
        assert [b["Name"] for b in await client.buildlets()] == [name]
        assert (tmp_path / "buildlets" / name).is_dir()
        await client.destroy(name)
        assert await client.buildlets() == []
    finally:
        await running.shutdown()
        await running.provider.reap(set())
        await database.stop()
        # Resume once from a timed call, not from the thread's callback: pytest-twisted
        # leaves the reactor mid-way through its queue of thread callbacks when a test ends
        # in one, and a trial test after it would run that callback a second time.
        await task.deferLater(reactor, 0, lambda: None)
