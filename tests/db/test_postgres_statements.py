"""PostgreSQL: a statement run on its own goes without BEGIN and COMMIT, and keeps its errors."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor

from buildbot_farm import db
from tests.db.conftest import DbUrlFactory

pytestmark = pytest.mark.postgres
# In an explicit transaction now() is when BEGIN ran, before the statement started.
ALONE = "SELECT now() = statement_timestamp() AS alone"


@pytest_twisted.ensureDeferred
async def test_a_statement_on_its_own_is_its_own_transaction(db_url_for: DbUrlFactory) -> None:
    """``fetchone`` sends the statement alone; ``transaction`` wraps it in BEGIN ... COMMIT."""
    database = await db.connect(db_url_for("postgresql"), reactor, pool_size=1)
    try:

        async def in_transaction(txn: db.Transaction) -> db.Row | None:
            return await txn.fetchone(ALONE)

        assert await database.fetchone(ALONE) == {"alone": True}
        assert await database.transaction(in_transaction) == {"alone": False}
    finally:
        await database.stop()


@pytest_twisted.ensureDeferred
async def test_a_statement_on_its_own_reports_rows_and_constraint_errors(
    db_url_for: DbUrlFactory,
) -> None:
    """``execute`` counts changed rows and turns a violated constraint into IntegrityError."""
    database = await db.connect(db_url_for("postgresql"), reactor, pool_size=1)
    try:
        await database.execute("CREATE TABLE numbers (n INTEGER PRIMARY KEY)")
        assert await database.execute("INSERT INTO numbers VALUES (1), (2)") == 2
        with pytest.raises(db.IntegrityError, match="numbers_pkey"):
            await database.execute("INSERT INTO numbers VALUES (?)", (2,))
        assert await database.fetchall("SELECT n FROM numbers ORDER BY n") == [{"n": 1}, {"n": 2}]
    finally:
        await database.stop()


@pytest_twisted.ensureDeferred
async def test_a_prepared_statement_is_prepared_once_and_again_when_lost(
    db_url_for: DbUrlFactory,
) -> None:
    """``execute_prepared`` PREPAREs on first use, then EXECUTEs; a lost one is prepared again."""
    database = await db.connect(db_url_for("postgresql"), reactor, pool_size=1)
    try:
        await database.execute("CREATE TABLE words (w TEXT PRIMARY KEY, n INTEGER)")
        insert = "INSERT INTO words (w, n) VALUES (?, ?)"
        assert await database.execute_prepared("add_word", insert, ("a'?", 1)) == 1
        prepared = "SELECT name, statement FROM pg_prepared_statements"
        numbered = "PREPARE add_word AS INSERT INTO words (w, n) VALUES ($1, $2)"
        assert await database.fetchall(prepared) == [{"name": "add_word", "statement": numbered}]
        await database.execute("DEALLOCATE ALL")  # as a reconnected connection has none
        assert await database.execute_prepared("add_word", insert, ("b", None)) == 1
        with pytest.raises(db.IntegrityError, match="duplicate key"):
            await database.execute_prepared("add_word", insert, ("b", 2))
        assert await database.fetchall("SELECT w, n FROM words ORDER BY w") == [
            {"w": "a'?", "n": 1}, {"w": "b", "n": None}
        ]
    finally:
        await database.stop()
