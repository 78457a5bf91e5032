"""Migration 0010: a coordinator's buildlet queries find its rows through an index that
starts with the coordinator, not by walking every master's buildlets of a type."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted

from buildbot_farm import db
from tests.harness.twisted_reactor import reactor

COUNT = "SELECT COUNT(*) AS n FROM farm_buildlets WHERE type = ? AND coordinator = ?"


@pytest_twisted.ensureDeferred
async def test_the_coordinator_index_exists_on_both_backends(database: db.Database) -> None:
    """0010 indexes farm_buildlets by (coordinator, type, state) on either backend."""
    if database.dialect.name == "sqlite":
        rows = await database.fetchall(
            "SELECT name FROM pragma_index_info('farm_buildlets_coordinator') ORDER BY seqno"
        )
        assert [row["name"] for row in rows] == ["coordinator", "type", "state"]
    else:
        row = await database.fetchone(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'farm_buildlets_coordinator'"
        )
        assert row is not None
        assert row["indexdef"].endswith("(coordinator, type, state)")


@pytest_twisted.ensureDeferred
async def test_counting_a_coordinators_buildlets_uses_the_index(tmp_path: Path) -> None:
    """SQLite plans the pool's count (type and coordinator) through the coordinator index."""
    database = await db.connect(f"sqlite:///{tmp_path / 'farm.sqlite'}", reactor)
    try:
        plan = await database.fetchall("EXPLAIN QUERY PLAN " + COUNT, ("warm", "master-1"))
        assert any("farm_buildlets_coordinator" in row["detail"] for row in plan), plan
    finally:
        await database.stop()
