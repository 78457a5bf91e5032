"""PostgreSQL: a connection sends statements without waiting for earlier answers, and each
caller still gets its own answer, or its own error, in order."""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.protocols import portforward

from buildbot_farm import db
from buildbot_farm.db._pg_answers import rows
from buildbot_farm.db._pg_connection import PipelineConnection
from tests.db.conftest import DbUrlFactory
from tests.harness.postgres import PostgresCluster
from tests.harness.twisted_reactor import reactor

pytestmark = pytest.mark.postgres
ANSWER_DELAY = 0.2  # seconds the relay holds each piece of the server's answers


class _SlowAnswerClient(portforward.ProxyClient):
    def dataReceived(self, data: bytes) -> None:
        """Pass the server's bytes on to the client ``ANSWER_DELAY`` later, in order."""
        assert self.peer is not None
        assert self.peer.transport is not None
        reactor.callLater(ANSWER_DELAY, self.peer.transport.write, data)


class _SlowAnswerClientFactory(portforward.ProxyClientFactory):
    protocol = _SlowAnswerClient


class _SlowAnswerServer(portforward.ProxyServer):
    clientProtocolFactory = _SlowAnswerClientFactory  # noqa: N815 (portforward's name)
    reactor = reactor


def slow_answers(url: str) -> tuple[str, Callable[[], Any]]:
    """``url`` through a relay on loopback that delays every answer of the server by
    ``ANSWER_DELAY`` (a server far away); and the function that stops the relay."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    factory = portforward.ProxyFactory(parts.hostname, parts.port)
    factory.protocol = _SlowAnswerServer
    listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
    netloc = f"{parts.netloc.rsplit('@', 1)[0]}@127.0.0.1:{listening.getHost().port}"
    return urlunsplit(parts._replace(netloc=netloc)), listening.stopListening


def outcomes(
    calls: Sequence[Coroutine[Any, Any, Any] | defer.Deferred[Any]],
) -> defer.Deferred[list[Any]]:
    """Each call's result or the exception it raised, in order; the calls all start now."""
    started = [defer.ensureDeferred(call) for call in calls]

    async def gather() -> list[Any]:
        results: list[Any] = []
        for call in started:
            try:
                results.append(await call)
            except Exception as e:
                results.append(e)
        return results

    return defer.ensureDeferred(gather())


@pytest_twisted.ensureDeferred
async def test_statements_on_one_connection_go_out_without_waiting(
    db_url_for: DbUrlFactory,
) -> None:
    """Twelve callers on a pool of one connection, each answer held back on its way: all
    twelve answers come in about one delay, not twelve, each to its own caller, prepared
    statements' too."""
    url, stop_relay = slow_answers(db_url_for("postgresql"))
    database = await db.connect(url, reactor, pool_size=1, timeout=10.0)
    try:
        started = time.monotonic()
        answers = await defer.gatherResults([
            defer.ensureDeferred(
                database.fetchall_prepared("echo", "SELECT ? * 2 AS n", (n,)) if n % 2
                else database.fetchone("SELECT ? * 2 AS n", (n,))
            )
            for n in range(12)
        ])
        elapsed = time.monotonic() - started
    finally:
        await database.stop()
        await stop_relay()
    assert answers == [
        [{"n": n * 2}] if n % 2 else {"n": n * 2} for n in range(12)
    ]
    assert elapsed < 4 * ANSWER_DELAY, f"{elapsed:.2f} s: the statements waited for each other"


@pytest_twisted.ensureDeferred
async def test_a_failing_statement_fails_its_caller_alone(db_url_for: DbUrlFactory) -> None:
    """In one connection's pipeline, a statement that fails (a violated key, a division by
    zero) fails its own caller; the statements around it, sent before its error came back,
    run and answer as if it were not there."""
    database = await db.connect(db_url_for("postgresql"), reactor, pool_size=1)
    try:
        await database.execute("CREATE TABLE numbers (n INTEGER PRIMARY KEY)")
        await database.execute("INSERT INTO numbers VALUES (1)")
        added, again, divided, added_too, numbers = await outcomes([
            database.execute("INSERT INTO numbers VALUES (?)", (2,)),
            database.execute("INSERT INTO numbers VALUES (?)", (1,)),
            database.fetchone("SELECT 1 / ? AS n", (0,)),
            database.execute("INSERT INTO numbers VALUES (?)", (3,)),
            database.fetchall("SELECT n FROM numbers ORDER BY n"),
        ])
        assert (added, added_too) == (1, 1)
        assert isinstance(again, db.IntegrityError)
        assert "division by zero" in str(divided)
        assert numbers == [{"n": 1}, {"n": 2}, {"n": 3}]
    finally:
        await database.stop()


@pytest_twisted.ensureDeferred
async def test_a_script_goes_out_after_the_statements_before_it_and_before_those_after(
    db_url_for: DbUrlFactory,
) -> None:
    """On one connection, a script (several statements, the simple protocol) waits for the
    answers to the statements sent before it, and those sent while it runs wait for it."""
    connection = PipelineConnection(reactor, db_url_for("postgresql"))
    await connection.connect()
    try:
        before = [connection.run("SELECT ? AS n", (n,), rows) for n in range(5)]
        script = connection.run_script(
            "CREATE TABLE words (w TEXT); INSERT INTO words VALUES ('a'), ('b')"
        )
        after = [connection.run("SELECT count(*) AS n FROM words", (), rows) for _ in range(3)]
        assert await defer.gatherResults(before) == [[{"n": n}] for n in range(5)]
        await script
        assert await defer.gatherResults(after) == [[{"n": 2}]] * 3
    finally:
        connection.close()


@pytest_twisted.ensureDeferred
async def test_a_killed_server_fails_every_statement_in_flight(
    pg_cluster_factory: Callable[[], PostgresCluster],
) -> None:
    """Twenty statements in flight on one connection when PostgreSQL is killed: each fails
    at once with DatabaseUnavailable, in libpq's words, and the pool works after a restart."""
    cluster = pg_cluster_factory()
    database = await db.connect(cluster.dsn, reactor, pool_size=1, timeout=5.0)
    await database.fetchone("SELECT 1 AS warm")
    calls: list[Coroutine[Any, Any, Any]] = [database.fetchone("SELECT pg_sleep(2)")]
    calls += [database.fetchone("SELECT ? AS n", (n,)) for n in range(19)]
    started = time.monotonic()
    failed = outcomes(calls)  # all sent before the kill
    cluster.kill()
    for outcome in await failed:
        assert isinstance(outcome, db.DatabaseUnavailable), outcome
        assert "unexpectedly" in str(outcome)
    assert time.monotonic() - started < 2, "the statements in flight waited for their deadline"
    cluster.restart()
    for _ in range(100):
        try:
            assert await database.fetchone("SELECT 2 AS n") == {"n": 2}
            break
        except db.DatabaseUnavailable:
            await task.deferLater(reactor, 0.2, lambda: None)
    else:
        pytest.fail("the pool did not reconnect after the restart")
    await database.stop()



async def others_on_the_database(database: db.Database) -> int:
    """How many client sessions other than the asking one are open on the farm database."""
    row = await database.fetchone(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
        " AND backend_type = 'client backend' AND datname = current_database()"
    )
    assert row is not None
    return int(row["n"])


@pytest_twisted.ensureDeferred
async def test_a_stuck_connection_is_replaced_once_and_before_its_callers_hear(
    db_url_for: DbUrlFactory,
) -> None:
    """Five statements in flight on one connection all run out of time: the connection is
    replaced once (not once a call), and a caller that retries from its error gets the fresh
    connection, not the stuck one."""
    database = await db.connect(db_url_for("postgresql"), reactor, pool_size=1, timeout=1.0)
    retried: list[Any] = []

    def retry(_: Any) -> None:
        retried.append(defer.ensureDeferred(database.fetchone("SELECT 1 AS n")))

    try:
        stuck = [defer.ensureDeferred(database.fetchone("SELECT pg_sleep(2)")) for _ in range(5)]
        stuck[0].addErrback(retry)
        for outcome in await outcomes(stuck[1:]):
            assert isinstance(outcome, db.DatabaseUnavailable), outcome
        assert await retried[0] == {"n": 1}
        for _ in range(50):  # the stuck backend ends once its sleep does
            if await others_on_the_database(database) == 0:
                break
            await task.deferLater(reactor, 0.1, lambda: None)
        else:
            pytest.fail("sessions besides the pool's one connection stayed open")
    finally:
        await database.stop()


@pytest_twisted.ensureDeferred
async def test_a_transaction_whose_session_ended_does_not_report_a_commit(
    db_url_for: DbUrlFactory,
) -> None:
    """The session of a transaction ends after its INSERT and the connection reconnects
    before the transaction's function returns: the transaction fails instead of sending its
    COMMIT to the new session (which would commit nothing and say it did)."""
    database = await db.connect(db_url_for("postgresql"), reactor, pool_size=2)
    try:
        await database.execute("CREATE TABLE kept (n INTEGER)")

        async def insert_then_lose(txn: db.Transaction) -> str:
            row = await txn.fetchone("SELECT pg_backend_pid() AS pid")
            assert row is not None
            await txn.execute("INSERT INTO kept VALUES (1)")
            await database.execute("SELECT pg_terminate_backend(?)", (row["pid"],))
            await task.deferLater(reactor, 1.0, lambda: None)  # reconnected meanwhile
            return "committed"

        with pytest.raises(db.DatabaseUnavailable, match="ended before its COMMIT"):
            await database.transaction(insert_then_lose)
        assert await database.fetchall("SELECT n FROM kept") == []
    finally:
        await database.stop()


@pytest_twisted.ensureDeferred
async def test_a_lost_prepared_statement_is_prepared_again_outside_transactions(
    db_url_for: DbUrlFactory,
) -> None:
    """After DEALLOCATE, a prepared statement on its own is prepared again and run once the
    transaction that took the connection meanwhile has ended (not inside it, where its
    rollback would undo it); inside transactions it fails once, then is prepared again."""
    database = await db.connect(db_url_for("postgresql"), reactor, pool_size=1)
    try:
        await database.execute("CREATE TABLE kept (n INTEGER)")
        insert = "INSERT INTO kept VALUES (?)"
        assert await database.execute_prepared("keep", insert, (1,)) == 1
        await database.execute("DEALLOCATE keep")

        async def then_roll_back(txn: db.Transaction) -> None:
            await txn.execute("SELECT 1")
            await task.deferLater(reactor, 0.2, lambda: None)
            raise LookupError("roll back")

        alone, rolled_back = await outcomes(
            [database.execute_prepared("keep", insert, (2,)), database.transaction(then_roll_back)]
        )
        assert alone == 1
        assert isinstance(rolled_back, LookupError)
        assert await database.fetchall("SELECT n FROM kept ORDER BY n") == [{"n": 1}, {"n": 2}]

        async def plus_one(txn: db.Transaction) -> list[db.Row]:
            return await txn.fetchall_prepared("plus_one", "SELECT ? + 1 AS n", (1,))

        assert await database.transaction(plus_one) == [{"n": 2}]
        await database.execute("DEALLOCATE ALL")
        with pytest.raises(psycopg.errors.InvalidSqlStatementName, match="plus_one"):
            await database.transaction(plus_one)
        assert await database.transaction(plus_one) == [{"n": 2}]
    finally:
        await database.stop()


@pytest_twisted.ensureDeferred
async def test_too_many_parameters_fail_their_statement_alone(db_url_for: DbUrlFactory) -> None:
    """A statement of more parameters than the protocol carries fails with a ValueError that
    says so, before it is sent; the statement in flight before it is not disturbed."""
    database = await db.connect(db_url_for("postgresql"), reactor, pool_size=1)
    try:
        marks = ", ".join("?" for _ in range(70_000))
        slow, big = await outcomes([
            database.fetchone("SELECT pg_sleep(0.3), 7 AS n"),
            database.fetchall(f"SELECT 1 AS x WHERE 1 IN ({marks})", tuple(range(70_000))),
        ])
        assert isinstance(big, ValueError)
        assert "at most 65535" in str(big)
        assert slow is not None
        assert slow["n"] == 7
    finally:
        await database.stop()
