"""The records API as FarmService mounts it: the /build alias, and nothing on disk unasked."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

from buildbot.test.fake import fakemaster
from buildbot.test.reactor import TestReactorMixin
from treq.testing import StubTreq
from twisted.trial import unittest

from buildbot_farm.ondemand.config import OnDemandBuilds
from buildbot_farm.records.config import BuildRecords
from buildbot_farm.service import FarmService
from tests.harness.stub_http import stub_request


class RecordsInFarmServiceTests(TestReactorMixin, unittest.TestCase):
    """The records API as FarmService mounts it under Buildbot's fake master: the signing key on
    disk only when asked, and the /build alias."""

    async def start(self, **kwargs: Any) -> tuple[str, FarmService]:
        """A FarmService of ``kwargs`` started under a fake master with its mq, data and db; the
        temporary basedir and the service."""
        self.setup_test_reactor()
        basedir = tempfile.mkdtemp(prefix="farm-master-")
        self.addCleanup(shutil.rmtree, basedir, True)
        master = await fakemaster.make_master(
            self, basedir=basedir, wantMq=True, wantData=True, wantDb=True
        )
        master.service_manager = master
        service = FarmService(**kwargs)
        await service.setServiceParent(master)
        await master.startService()
        self.addCleanup(master.stopService)
        return basedir, service

    async def test_only_a_database_creates_no_signing_key(self) -> None:
        """FarmService(db_url=...) alone writes its database and no records signing key."""
        basedir, _service = await self.start(db_url="sqlite:///farm.sqlite")
        assert "farm.sqlite" in os.listdir(basedir)
        assert not [name for name in os.listdir(basedir) if "signing-key" in name]

    async def test_configured_records_create_their_signing_key(self) -> None:
        """With records=BuildRecords() the signing key and its public key are made."""
        basedir, _service = await self.start(db_url="sqlite://", records=BuildRecords())
        assert {"records-signing-key.pem", "records-signing-key.pem.pub"} <= set(
            os.listdir(basedir)
        )

    async def test_build_name_is_the_records_alias_beside_on_demand(self) -> None:
        """/api/build/NAME lists records while /api/build/KEY stays the on-demand job status."""
        _basedir, service = await self.start(db_url="sqlite://", on_demand=OnDemandBuilds())
        assert service.database is not None
        client = StubTreq(service.web_root)
        response = await stub_request(client, "GET", "http://farm/api/build/nobody")
        assert response.code == 404
        assert "no records named 'nobody'" in json.loads(await response.content())["error"]
        response = await stub_request(client, "GET", "http://farm/api/build/" + "0" * 64)
        assert response.code == 404
        assert "no on-demand job" in json.loads(await response.content())["error"]
