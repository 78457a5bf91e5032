"""FarmService on Buildbot's fake master: configuration, database, heartbeat, status API."""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pytest
from buildbot import config
from buildbot.test.fake import fakemaster
from buildbot.test.reactor import TestReactorMixin
from buildbot.test.util.config import ConfigErrorsMixin
from treq.testing import StubTreq
from twisted.trial import unittest

from buildbot_farm import db
from buildbot_farm.leases.config import BuildletPool, FarmCoordinator
from buildbot_farm.ondemand.config import OnDemandBuilds
from buildbot_farm.service import FarmService
from tests.harness.stub_http import stub_request


class FarmServiceConfigTests(ConfigErrorsMixin, unittest.TestCase):
    """FarmService's arguments at config time: the defaults are valid, and each bad argument is a
    config error naming it."""

    def test_defaults_are_valid(self) -> None:
        """FarmService() with no arguments is a valid configuration (SQLite in the basedir)."""
        service = FarmService()
        assert service.name == "farm"

    def test_unknown_scheme_names_db_url(self) -> None:
        """An unknown database scheme is a config error that names db_url."""
        with self.assertRaisesConfigError("db_url 'mysql://h/db' has the unknown scheme"):
            FarmService(db_url="mysql://h/db")

    def test_missing_db_url_is_explained(self) -> None:
        """An empty db_url is a config error that shows what to write."""
        with self.assertRaisesConfigError("db_url must be a non-empty string"):
            FarmService(db_url="")

    def test_misspelled_argument_is_named(self) -> None:
        """A misspelled argument is named in the error along with the valid ones."""
        with self.assertRaisesConfigError("unknown argument 'db_ulr' (did you mean 'db_url'?)"):
            FarmService(db_ulr="sqlite:///x.sqlite")

    def test_numbers_are_checked(self) -> None:
        """Pool size and timeouts must be positive numbers, each named when wrong."""
        with self.assertRaisesConfigError("db_pool_size must be a whole number >= 1"):
            FarmService(db_pool_size=0)
        with self.assertRaisesConfigError("db_timeout must be a number of seconds > 0"):
            FarmService(db_timeout="soon")


class FarmServiceTests(TestReactorMixin, unittest.TestCase):
    """FarmService started under Buildbot's fake master: migration, heartbeats, a clean stop, and
    its status and index pages."""

    async def start(self, with_data: bool = False, **kwargs: Any) -> tuple[Any, FarmService]:
        """A FarmService of ``kwargs`` started under a fake master (with its mq, data and db when
        ``with_data``); the master and the service."""
        self.setup_test_reactor()
        basedir = tempfile.mkdtemp(prefix="farm-master-")
        self.addCleanup(shutil.rmtree, basedir, True)
        master = await fakemaster.make_master(
            self, basedir=basedir, wantMq=with_data, wantData=with_data, wantDb=with_data
        )
        master.service_manager = master
        service = FarmService(**kwargs)
        await service.setServiceParent(master)
        await master.startService()
        self.addCleanup(master.stopService)
        return master, service

    async def test_start_migrates_and_records_the_master(self) -> None:
        """Starting the service migrates the SQLite database and writes this master's heartbeat."""
        master, service = await self.start(db_url="sqlite://")
        assert service.database is not None
        rows = await service.database.fetchall("SELECT name, heartbeat_at FROM farm_masters")
        assert rows == [{"name": master.name, "heartbeat_at": 0.0}]

    async def test_heartbeat_follows_the_master_clock(self) -> None:
        """The heartbeat is rewritten every heartbeat_interval seconds of the master's clock."""
        _master, service = await self.start(db_url="sqlite://", heartbeat_interval=10)
        self.reactor.pump([10, 10, 5])
        assert service.database is not None
        row = await service.database.fetchone("SELECT heartbeat_at FROM farm_masters")
        assert row == {"heartbeat_at": 20.0}

    async def test_stop_removes_the_heartbeat_and_closes(self) -> None:
        """A clean stop deletes this master's row and closes the database."""
        master, service = await self.start(db_url="sqlite:///farm.sqlite")
        database = service.database
        await service.disownServiceParent()
        assert service.database is None
        # Read the file itself: a reopened service would write its own heartbeat first.
        with contextlib.closing(sqlite3.connect(Path(master.basedir, "farm.sqlite"))) as file:
            assert file.execute("SELECT name FROM farm_masters").fetchall() == []
        reopened = FarmService(db_url="sqlite:///farm.sqlite")
        await reopened.setServiceParent(master)
        assert reopened.database is not None
        assert reopened.database is not database
        rows = await reopened.database.fetchall("SELECT name FROM farm_masters")
        assert rows == [{"name": master.name}]
        await reopened.disownServiceParent()

    async def test_unopenable_database_is_a_config_error_at_start(self) -> None:
        """A SQLite path in a missing directory stops the start with a message naming db_url."""
        self.setup_test_reactor()
        basedir = tempfile.mkdtemp(prefix="farm-master-")
        self.addCleanup(shutil.rmtree, basedir, True)
        master = await fakemaster.make_master(self, basedir=basedir)
        service = FarmService(db_url="sqlite:///no/such/dir/farm.sqlite")
        await service.setServiceParent(master)
        with pytest.raises(config.ConfigErrors) as raised:
            await service.startService()
        message = raised.value.errors[0]
        assert "FarmService: db_url" in message
        assert "does not exist" in message

    async def test_status_endpoint_reports_backend_schema_and_masters(self) -> None:
        """GET status answers the backend, the schema version and the live masters as JSON."""
        master, service = await self.start(db_url="sqlite://")
        client = StubTreq(service.web_root)
        response = await stub_request(client, "GET", "http://farm/status")
        assert response.code == 200
        body = json.loads(await response.content())
        assert body["backend"] == "sqlite"
        assert body["schema_version"] == db.load_migrations("sqlite")[-1].version
        assert [m["name"] for m in body["masters"]] == [master.name]

    async def test_status_is_503_when_the_service_is_stopped(self) -> None:
        """With the database closed, status answers 503 with a readable reason."""
        _master, service = await self.start(db_url="sqlite://")
        await service.disownServiceParent()
        response = await stub_request(StubTreq(service.web_root), "GET", "http://farm/status")
        assert response.code == 503
        assert "not running" in json.loads(await response.content())["error"]

    async def test_unknown_path_lists_the_apis(self) -> None:
        """An unknown path under /plugins/farm answers a JSON 404 listing what exists."""
        _master, service = await self.start(db_url="sqlite://")
        response = await stub_request(StubTreq(service.web_root), "GET", "http://farm/nope")
        assert response.code == 404
        body = json.loads(await response.content())
        assert body["available"] == ["api", "openapi", "openapi.json", "status", "ui"]

    async def test_the_index_lists_only_what_is_configured(self) -> None:
        """GET / and /api/ list the mounted APIs; the coordinator and the on-demand API only
        when the service has them."""
        _master, service = await self.start(with_data=True, db_url="sqlite://")
        client = StubTreq(service.web_root)

        async def names(url: str) -> list[str]:
            response = await stub_request(client, "GET", url)
            assert response.code == 200
            return [api["name"] for api in json.loads(await response.content())["apis"]]

        assert await names("http://farm/") == ["api", "status", "ui"]
        assert await names("http://farm/api/") == ["builds", "records-chain"]
        await service.reconfigService(db_url="sqlite://", on_demand=OnDemandBuilds())
        assert await names("http://farm/api/") == [
            "build", "builds", "compat", "download", "records-chain"
        ]
        coordinator = FarmCoordinator(secret="index-test-coordinator-secret",
                                      pools=[BuildletPool("local", max_count=1)])
        await service.reconfigService(db_url="sqlite://", coordinator=coordinator)
        assert await names("http://farm/") == ["api", "coordinator", "status", "ui"]
        assert await names("http://farm/api/") == ["builds", "records-chain"]
        await service.reconfigService(db_url="sqlite://")
        assert await names("http://farm/") == ["api", "status", "ui"]
