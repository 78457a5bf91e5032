"""PostgreSQL: a statement run on its own is a transaction of its own, without BEGIN and
COMMIT, and keeps its errors; a transaction's statements share one."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_twisted

from buildbot_farm import db
from tests.db.conftest import DbUrlFactory
from tests.harness.twisted_reactor import reactor

pytestmark = pytest.mark.postgres
# The id of the transaction the statement runs in (one is assigned on first asking).
XACT = "SELECT pg_current_xact_id()::text AS xact"


@pytest_twisted.async_yield_fixture
async def database(db_url_for: DbUrlFactory) -> AsyncIterator[db.Database]:
    """Here the farm database is PostgreSQL only (a fresh schema), with a pool of one
    connection, so that every statement of a test runs on the same connection."""
    database = await db.connect(db_url_for("postgresql"), reactor, pool_size=1)
    yield database
    await database.stop()


async def xact(database: db.Database | db.Transaction) -> str:
    """The id of the transaction ``XACT`` ran in."""
    row = await database.fetchone(XACT)
    assert row is not None
    return str(row["xact"])


async def two_statements(txn: db.Transaction) -> tuple[str, str]:
    """``XACT`` twice in one transaction."""
    return await xact(txn), await xact(txn)


async def assert_each_alone(database: db.Database) -> None:
    """Three statements on their own run in three transactions; a transaction's two share
    one, not theirs (inside a transaction left open, they would all share it)."""
    ids = [await xact(database) for _ in range(3)]
    first, second = await database.transaction(two_statements)
    assert first == second
    ids.append(first)
    assert len(set(ids)) == 4, ids


@pytest_twisted.ensureDeferred
async def test_a_statement_on_its_own_is_its_own_transaction(
    database: db.Database,
) -> None:
    """``fetchone`` runs the statement in a transaction of its own; ``transaction`` keeps its
    transaction open from its first statement to its last."""
    await assert_each_alone(database)
    await assert_each_alone(database)


@pytest_twisted.ensureDeferred
async def test_a_transaction_that_sends_nothing_leaves_no_transaction_open(
    database: db.Database,
) -> None:
    """A transaction whose function sends no statement (it returns, it raises, or its first
    statement fails before it is sent) returns or raises as it did, and the statements after
    it on the same connection run on their own, not inside a BEGIN left waiting."""
    async def nothing(txn: db.Transaction) -> str:
        return "done"

    async def raises(txn: db.Transaction) -> None:
        raise LookupError("before any statement")

    async def unsendable(txn: db.Transaction) -> None:
        await txn.execute("SELECT ?", ())  # one placeholder, no value: refused before sending

    assert await database.transaction(nothing) == "done"
    with pytest.raises(LookupError, match="before any statement"):
        await database.transaction(raises)
    with pytest.raises(ValueError, match=r"1 '\?' placeholder\(s\) but 0 value"):
        await database.transaction(unsendable)
    await assert_each_alone(database)


@pytest_twisted.ensureDeferred
async def test_a_first_statement_that_fails_rolls_back_its_transaction(
    database: db.Database,
) -> None:
    """The first statement fails on the server after the BEGIN sent with it: the error is the
    statement's, the transaction is rolled back, and the connection serves the next call."""
    await database.execute("CREATE TABLE numbers (n INTEGER PRIMARY KEY)")
    await database.execute("INSERT INTO numbers VALUES (1)")

    async def duplicate_first(txn: db.Transaction) -> None:
        await txn.execute("INSERT INTO numbers VALUES (1)")

    async def one_then_duplicate(txn: db.Transaction) -> None:
        await txn.execute("INSERT INTO numbers VALUES (2)")
        await txn.execute("INSERT INTO numbers VALUES (1)")

    with pytest.raises(db.IntegrityError, match="numbers_pkey"):
        await database.transaction(duplicate_first)
    with pytest.raises(db.IntegrityError, match="numbers_pkey"):
        await database.transaction(one_then_duplicate)
    assert await database.fetchall("SELECT n FROM numbers") == [{"n": 1}]
    await assert_each_alone(database)


@pytest_twisted.ensureDeferred
async def test_a_statement_on_its_own_reports_rows_and_constraint_errors(
    database: db.Database,
) -> None:
    """``execute`` counts changed rows and turns a violated constraint into IntegrityError."""
    await database.execute("CREATE TABLE numbers (n INTEGER PRIMARY KEY)")
    assert await database.execute("INSERT INTO numbers VALUES (1), (2)") == 2
    with pytest.raises(db.IntegrityError, match="numbers_pkey"):
        await database.execute("INSERT INTO numbers VALUES (?)", (2,))
    assert await database.fetchall("SELECT n FROM numbers ORDER BY n") == [{"n": 1}, {"n": 2}]


@pytest_twisted.ensureDeferred
async def test_a_prepared_statement_is_prepared_once_and_again_when_lost(
    database: db.Database,
) -> None:
    """``execute_prepared`` PREPAREs on first use, then EXECUTEs; a lost one is prepared again."""
    await database.execute("CREATE TABLE words (w TEXT PRIMARY KEY, n INTEGER)")
    insert = "INSERT INTO words (w, n) VALUES (?, ?)"
    assert await database.execute_prepared("add_word", insert, ("a'?", 1)) == 1
    prepared = "SELECT name, statement FROM pg_prepared_statements"
    numbered = "INSERT INTO words (w, n) VALUES ($1, $2)"  # prepared by protocol message
    assert await database.fetchall(prepared) == [{"name": "add_word", "statement": numbered}]
    await database.execute("DEALLOCATE ALL")  # as a reconnected connection has none
    assert await database.execute_prepared("add_word", insert, ("b", None)) == 1
    with pytest.raises(db.IntegrityError, match="duplicate key"):
        await database.execute_prepared("add_word", insert, ("b", 2))
    assert await database.fetchall("SELECT w, n FROM words ORDER BY w") == [
        {"w": "a'?", "n": 1}, {"w": "b", "n": None}
    ]


@pytest_twisted.ensureDeferred
async def test_a_prepared_query_returns_rows_alone_and_in_transactions(
    database: db.Database,
) -> None:
    """``fetchall_prepared`` PREPAREs once per connection, inside a transaction too; a
    transaction that rolls back keeps the statement prepared (PREPARE is not transactional)."""
    await database.execute("CREATE TABLE words (w TEXT PRIMARY KEY, n INTEGER)")
    await database.execute("INSERT INTO words VALUES ('a', 1), ('b', 2), ('c', 3)")
    above = "SELECT w FROM words WHERE n > ? ORDER BY w"
    assert await database.fetchall_prepared("words_above", above, (1,)) == [
        {"w": "b"}, {"w": "c"}
    ]

    async def claim_then_fail(txn: db.Transaction) -> None:
        first = "SELECT w FROM words WHERE n >= ? ORDER BY n LIMIT 1" + txn.dialect.skip_locked
        assert await txn.fetchall_prepared("first_word", first, (2,)) == [{"w": "b"}]
        assert await txn.fetchall_prepared("words_above", above, (2,)) == [{"w": "c"}]
        raise ValueError("roll back")

    with pytest.raises(ValueError, match="roll back"):
        await database.transaction(claim_then_fail)
    names = await database.fetchall("SELECT name FROM pg_prepared_statements ORDER BY name")
    assert names == [{"name": "first_word"}, {"name": "words_above"}]
    assert await database.fetchall_prepared("words_above", above, (0,)) == [
        {"w": "a"}, {"w": "b"}, {"w": "c"}
    ]
    with pytest.raises(ValueError, match="lower-case letters"):
        await database.fetchall_prepared("Bad Name", above, (0,))


@pytest_twisted.ensureDeferred
async def test_a_value_postgresql_cannot_store_is_refused_before_sending(
    database: db.Database,
) -> None:
    """Text with a NUL character or a lone surrogate fails with UnstorableValue (a ValueError
    that says why), sends nothing, and the connection serves the next statement."""
    for text in ("a\x00b", "\ud800"):

        async def select(txn: db.Transaction, text: str = text) -> db.Row | None:
            return await txn.fetchone("SELECT ? AS t", (text,))

        with pytest.raises(db.UnstorableValue, match="cannot be stored"):
            await database.fetchone("SELECT ? AS t", (text,))
        with pytest.raises(ValueError, match="cannot be stored"):
            await database.transaction(select)
    await assert_each_alone(database)
