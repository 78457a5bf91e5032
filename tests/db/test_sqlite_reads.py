"""SQLite's lone queries: a read-only connection of their own, beside the writer."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer

from buildbot_farm import db
from tests.harness.twisted_reactor import reactor


@pytest_twisted.ensureDeferred
async def test_a_lone_query_does_not_wait_for_a_running_transaction(tmp_path: Path) -> None:
    """A SELECT answers while a write transaction is open, with committed rows only."""
    database = await db.connect(f"sqlite:///{tmp_path / 'farm.sqlite'}", reactor)
    try:
        await database.execute("CREATE TABLE things (id INTEGER PRIMARY KEY)")
        await database.execute("INSERT INTO things (id) VALUES (1)")

        async def read_while_writing(txn: db.Transaction) -> list[db.Row]:
            await txn.execute("INSERT INTO things (id) VALUES (2)")
            return await database.fetchall("SELECT id FROM things ORDER BY id")

        seen = database.transaction(read_while_writing)
        assert await defer.Deferred.fromCoroutine(seen).addTimeout(
            10, reactor
        ) == [{"id": 1}]
        assert await database.fetchall("SELECT id FROM things ORDER BY id") == [
            {"id": 1}, {"id": 2},
        ]
    finally:
        await database.stop()


@pytest_twisted.ensureDeferred
async def test_statements_other_than_select_still_write(tmp_path: Path) -> None:
    """A fetchall of a statement that writes runs on the writer, not the read-only reader."""
    database = await db.connect(f"sqlite:///{tmp_path / 'farm.sqlite'}", reactor)
    try:
        await database.execute("CREATE TABLE things (id INTEGER PRIMARY KEY)")
        rows = await database.fetchall("INSERT INTO things (id) VALUES (7) RETURNING id")
        assert rows == [{"id": 7}]
        assert await database.fetchall("SELECT id FROM things") == [{"id": 7}]
    finally:
        await database.stop()


@pytest_twisted.ensureDeferred
async def test_a_stopped_database_refuses_lone_queries(tmp_path: Path) -> None:
    """After stop, a SELECT fails with DatabaseUnavailable, as every other call does."""
    database = await db.connect(f"sqlite:///{tmp_path / 'farm.sqlite'}", reactor)
    await database.stop()
    with pytest.raises(db.DatabaseUnavailable):
        await database.fetchall("SELECT 1")
