"""The test kit that buildbot_farm ships for its users' tests."""

from __future__ import annotations

from buildbot.test.reactor import TestReactorMixin
from twisted.trial import unittest

from buildbot_farm.testing import memory_database


class MemoryDatabaseTests(TestReactorMixin, unittest.TestCase):
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
