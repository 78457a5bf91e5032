"""farm_service(master): the typed lookup of the farm service."""

from __future__ import annotations

import shutil
import tempfile
from types import SimpleNamespace

from buildbot.test.fake import fakemaster
from buildbot.test.reactor import TestReactorMixin
from buildbot.util import service
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from buildbot_farm.artifacts.build_tokens import token_builders_of
from buildbot_farm.artifacts.config import ArtifactRepository
from buildbot_farm.lookup import IFarmService, farm_service
from buildbot_farm.names import FARM_SERVICE
from buildbot_farm.service import FarmService


class FarmServiceLookupTests(TestReactorMixin, unittest.TestCase):
    """farm_service() on masters with and without a FarmService, and FarmService against
    IFarmService."""

    async def master(self) -> fakemaster.FakeMaster:
        """Buildbot's fake master on the test reactor in a temporary basedir, holding its services
        itself as a real master's service manager does."""
        self.setup_test_reactor()
        basedir = tempfile.mkdtemp(prefix="farm-lookup-")
        self.addCleanup(shutil.rmtree, basedir, True)
        master = await fakemaster.make_master(self, basedir=basedir)
        # A real master keeps its services in a service manager; the fake one holds them.
        master.service_manager = master
        return master

    async def test_finds_the_farm_service_by_its_name(self) -> None:
        """The FarmService added to the master is found under the default and its own name."""
        master = await self.master()
        farm = FarmService()
        await farm.setServiceParent(master)
        other = FarmService(name="other")
        await other.setServiceParent(master)
        assert farm.name == FARM_SERVICE
        assert farm_service(master) is farm
        assert farm_service(master, "other") is other

    async def test_none_without_a_farm_service(self) -> None:
        """A master with no FarmService, or another service under its name, has none."""
        master = await self.master()
        assert farm_service(master) is None
        impostor = service.AsyncService()
        impostor.name = FARM_SERVICE
        await impostor.setServiceParent(master)
        assert farm_service(master) is None

    def test_none_for_a_master_without_services(self) -> None:
        """Something with no service manager (a fake master, a master being built) has none."""
        assert farm_service(SimpleNamespace()) is None
        assert farm_service(SimpleNamespace(service_manager=SimpleNamespace())) is None
        assert farm_service(None) is None

    def test_the_farm_service_provides_all_of_its_interface(self) -> None:
        """FarmService has every attribute and method IFarmService names, and token_builders_of
        reads a FarmService's token_builders and nothing from anything else."""
        farm = FarmService(artifacts=ArtifactRepository(token_builders=["rel-*"]))
        assert verifyObject(IFarmService, farm)
        assert token_builders_of(farm) == ["rel-*"]
        assert token_builders_of(FarmService()) == ()
        assert token_builders_of(SimpleNamespace(requested_artifacts=lambda: None)) == ()
        assert token_builders_of(None) == ()
