"""The farm database API, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, task

from buildbot_farm import db
from tests.db.conftest import DbUrlFactory
from tests.harness.twisted_reactor import reactor


async def make_table(database: db.Database) -> None:
    """Create the table ``things`` (an integer id, a unique name) that the tests fill."""
    await database.execute(
        "CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL)"
    )


@pytest_twisted.ensureDeferred
async def test_rows_round_trip_as_dicts(database: db.Database) -> None:
    """Inserted rows come back as dicts keyed by column name."""
    await make_table(database)
    await database.execute("INSERT INTO things (id, name) VALUES (?, ?)", (1, "one"))
    assert await database.fetchall("SELECT id, name FROM things") == [{"id": 1, "name": "one"}]
    assert await database.fetchone("SELECT name FROM things WHERE id = ?", (2,)) is None


@pytest_twisted.ensureDeferred
async def test_question_marks_and_percent_signs_in_literals_are_text(database: db.Database) -> None:
    """'?' and '%' inside string literals are not placeholders on either backend."""
    row = await database.fetchone("SELECT '100% sure?' AS text, ? AS value", ("x",))
    assert row == {"text": "100% sure?", "value": "x"}


@pytest_twisted.ensureDeferred
async def test_a_failing_transaction_leaves_nothing_behind(database: db.Database) -> None:
    """An exception inside a transaction rolls back every statement it ran."""
    await make_table(database)

    async def half_done(txn: db.Transaction) -> None:
        await txn.execute("INSERT INTO things (id, name) VALUES (1, 'kept?')")
        raise RuntimeError("changed my mind")

    with pytest.raises(RuntimeError, match="changed my mind"):
        await database.transaction(half_done)
    assert await database.fetchall("SELECT * FROM things") == []


@pytest_twisted.ensureDeferred
async def test_constraint_violations_are_integrity_errors(database: db.Database) -> None:
    """A unique-key violation raises the farm's IntegrityError on both backends."""
    await make_table(database)
    await database.execute("INSERT INTO things (id, name) VALUES (1, 'dup')")
    with pytest.raises(db.IntegrityError):
        await database.execute("INSERT INTO things (id, name) VALUES (2, 'dup')")
    assert await database.fetchall("SELECT id FROM things") == [{"id": 1}]


@pytest_twisted.ensureDeferred
async def test_notifications_arrive_after_commit_only(database: db.Database) -> None:
    """Listeners hear a committed notification and never a rolled-back one."""
    heard: list[str] = []
    arrived: defer.Deferred[None] = defer.Deferred()

    def on_payload(payload: str) -> None:
        heard.append(payload)
        if payload == "committed" and not arrived.called:
            arrived.callback(None)

    subscription = await database.listen("farm_test", on_payload)

    async def rolled_back(txn: db.Transaction) -> None:
        await txn.notify("farm_test", "rolled back")
        raise RuntimeError("abort")

    with pytest.raises(RuntimeError):
        await database.transaction(rolled_back)

    async def committed(txn: db.Transaction) -> None:
        await txn.notify("farm_test", "committed")

    await database.transaction(committed)
    await arrived.addTimeout(10, reactor)
    assert heard == ["committed"]
    await subscription.cancel()


@pytest_twisted.ensureDeferred
async def test_eight_concurrent_claimers_get_every_row_exactly_once(
    backend: str, db_url_for: DbUrlFactory
) -> None:
    """Eight claimers, each on its own connection, share out 200 jobs with no double claim."""
    url = db_url_for(backend)
    setup = await db.connect(url, reactor)
    await setup.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, claimed_by INTEGER)")

    async def fill(txn: db.Transaction) -> None:
        for job in range(200):
            await txn.execute("INSERT INTO jobs (id) VALUES (?)", (job,))

    await setup.transaction(fill)
    claimers = [await db.connect(url, reactor, pool_size=1) for _ in range(8)]
    claims: dict[int, list[int]] = {n: [] for n in range(8)}

    async def claim_one(number: int, txn: db.Transaction) -> int | None:
        row = await txn.fetchone(
            "SELECT id FROM jobs WHERE claimed_by IS NULL ORDER BY id LIMIT 1"
            + txn.dialect.skip_locked
        )
        if row is None:
            return None
        await txn.execute("UPDATE jobs SET claimed_by = ? WHERE id = ?", (number, row["id"]))
        return int(row["id"])

    async def claimer(number: int, database: db.Database) -> None:
        while True:
            job = await database.transaction(lambda txn: claim_one(number, txn))
            if job is None:
                return
            claims[number].append(job)
            await task.deferLater(reactor, 0, lambda: None)

    await defer.gatherResults(
        [defer.ensureDeferred(claimer(n, d)) for n, d in enumerate(claimers)]
    )
    everything = sorted(job for jobs in claims.values() for job in jobs)
    assert everything == list(range(200))
    rows = await setup.fetchall("SELECT claimed_by, COUNT(*) AS n FROM jobs GROUP BY claimed_by")
    assert {row["claimed_by"]: row["n"] for row in rows} == {
        n: len(jobs) for n, jobs in claims.items() if jobs
    }
    if backend == "postgresql":
        assert sum(1 for jobs in claims.values() if jobs) > 1, "claims never overlapped"
    for database in [setup, *claimers]:
        await database.stop()


@pytest_twisted.ensureDeferred
async def test_stopped_database_refuses_calls_clearly(database: db.Database) -> None:
    """A call after stop fails with DatabaseUnavailable saying the service is stopped."""
    await database.stop()
    with pytest.raises(db.DatabaseUnavailable, match="stopped"):
        await database.fetchall("SELECT 1")


@pytest_twisted.ensureDeferred
async def test_an_abandoned_transaction_does_not_block_the_next(database: db.Database) -> None:
    """A transaction whose coroutine is closed mid-way is rolled back; later ones still work."""
    await make_table(database)
    parked: defer.Deferred[None] = defer.Deferred()

    async def never_finishes(txn: db.Transaction) -> None:
        await txn.execute("INSERT INTO things (id, name) VALUES (1, 'abandoned')")
        await parked

    coroutine = database.transaction(never_finishes)
    stuck = defer.Deferred.fromCoroutine(coroutine)
    await task.deferLater(reactor, 0.2, lambda: None)
    coroutine.close()
    stuck.addErrback(lambda _: None)
    await database.execute("INSERT INTO things (id, name) VALUES (2, 'next')")
    assert await database.fetchall("SELECT name FROM things") == [{"name": "next"}]
