"""MasterTable: the farm's masters and their heartbeats."""

from __future__ import annotations

from buildbot.test.reactor import TestReactorMixin
from twisted.trial import unittest

from buildbot_farm.masters import MasterTable
from buildbot_farm.testing import memory_database


class MasterTableTests(TestReactorMixin, unittest.TestCase):
    """MasterTable on memory_database: what heartbeats record and what forget removes."""

    async def test_heartbeats_keep_the_start_and_forget_removes_one_master(self) -> None:
        """A heartbeat adds a master once, later ones move only its heartbeat and version;
        forget removes that master alone."""
        self.setup_test_reactor()
        database = await memory_database(self.reactor)
        self.addCleanup(database.stop)
        table = MasterTable(database)
        await table.heartbeat("b", 10.0, "1.0")
        await table.heartbeat("a", 11.0, "1.0")
        await table.heartbeat("b", 20.0, "1.1")
        assert await table.all() == [
            {"name": "a", "started_at": 11.0, "heartbeat_at": 11.0, "version": "1.0"},
            {"name": "b", "started_at": 10.0, "heartbeat_at": 20.0, "version": "1.1"},
        ]
        await table.forget("b")
        await table.forget("never-there")
        assert [row["name"] for row in await table.all()] == ["a"]
