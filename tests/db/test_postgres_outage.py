"""PostgreSQL going away under a running farm database: clear errors, no hangs, reconnection."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from zope.interface import provider

from buildbot_farm import db
from tests.harness.postgres import PostgresCluster
from tests.harness.twisted_reactor import reactor

pytestmark = pytest.mark.postgres


async def sleep(seconds: float) -> None:
    """Wait ``seconds`` on the reactor without blocking it."""
    await task.deferLater(reactor, seconds, lambda: None)


async def first_success(database: db.Database, within: float) -> float:
    """Retry a trivial query until it succeeds; return how long that took."""
    start = time.monotonic()
    while True:
        try:
            await database.fetchone("SELECT 1 AS one")
            return time.monotonic() - start
        except db.DatabaseUnavailable:
            if time.monotonic() - start > within:
                raise
            await sleep(0.2)


@pytest_twisted.ensureDeferred
async def test_killed_server_fails_calls_fast_then_reconnects(
    pg_cluster_factory: Callable[[], PostgresCluster],
) -> None:
    """Kill -9 PostgreSQL: calls fail at once with a clear error; after restart all works again."""
    cluster: PostgresCluster = pg_cluster_factory()
    database = await db.connect(cluster.dsn, reactor, pool_size=2, timeout=5.0)
    heard: list[str] = []
    await database.listen("farm_outage", heard.append)
    await database.execute("CREATE TABLE kept (n INTEGER)")
    await database.execute("INSERT INTO kept VALUES (1)")

    cluster.kill()
    for _ in range(4):
        started = time.monotonic()
        with pytest.raises(db.DatabaseUnavailable) as raised:
            await database.fetchall("SELECT n FROM kept")
        assert time.monotonic() - started < 5.5, "a call during the outage hung"
        assert "reconnects by itself" in str(raised.value)
        assert "127.0.0.1" in str(raised.value)

    cluster.restart()
    waited = await first_success(database, within=20.0)
    assert await database.fetchall("SELECT n FROM kept") == [{"n": 1}]

    async def announce(txn: db.Transaction) -> None:
        await txn.notify("farm_outage", "after restart")

    for _ in range(50):
        await database.transaction(announce)
        await sleep(0.2)
        if heard:
            break
    assert "after restart" in heard, "LISTEN was not re-established after the reconnect"
    await database.stop()
    print(f"reconnected {waited:.2f} s after the restart")


@pytest_twisted.ensureDeferred
async def test_transactions_cut_off_by_a_killed_server_fail_in_the_servers_words(
    pg_cluster_factory: Callable[[], PostgresCluster],
) -> None:
    """Kill -9 PostgreSQL under two transactions: one between its statements, one at its first
    statement (whose BEGIN went out with it). Each fails with DatabaseUnavailable carrying the
    server's own message, and nothing is logged as an error: no ROLLBACK is tried on a
    connection that is gone, since the transaction went with the session."""
    cluster: PostgresCluster = pg_cluster_factory()
    cut_between = await db.connect(cluster.dsn, reactor, pool_size=1, timeout=5.0)
    cut_at_first = await db.connect(cluster.dsn, reactor, pool_size=1, timeout=5.0)
    await cut_between.execute("CREATE TABLE kept (n INTEGER)")
    await cut_at_first.fetchone("SELECT 1 AS warm")  # connected before the kill
    errors: list[str] = []

    @provider(ILogObserver)
    def keep_errors(event: LogEvent) -> None:
        if event.get("log_failure") is not None or event.get("isError"):
            errors.append(formatEvent(event))

    async def insert_kill_insert(txn: db.Transaction) -> None:
        await txn.execute("INSERT INTO kept VALUES (1)")
        cluster.kill()
        await txn.execute("INSERT INTO kept VALUES (2)")

    async def insert(txn: db.Transaction) -> None:
        await txn.execute("INSERT INTO kept VALUES (3)")

    globalLogPublisher.addObserver(keep_errors)
    try:
        with pytest.raises(db.DatabaseUnavailable) as between:
            await cut_between.transaction(insert_kill_insert)
        with pytest.raises(db.DatabaseUnavailable) as at_first:
            await cut_at_first.transaction(insert)
    finally:
        globalLogPublisher.removeObserver(keep_errors)
    for raised in (between, at_first):
        assert "unexpected" in str(raised.value), raised.value  # the server's or libpq's words
        assert "RollbackFailed" not in str(raised.value)
    assert errors == []
    cluster.restart()
    await first_success(cut_between, within=20.0)
    assert await cut_between.fetchall("SELECT n FROM kept") == []
    await cut_between.stop()
    await cut_at_first.stop()


@pytest_twisted.ensureDeferred
async def test_a_server_that_stops_answering_does_not_hang_calls(
    pg_cluster_factory: Callable[[], PostgresCluster],
) -> None:
    """A backend frozen mid-query makes the call fail at its deadline; the pool then recovers."""
    cluster: PostgresCluster = pg_cluster_factory()
    database = await db.connect(cluster.dsn, reactor, pool_size=1, timeout=1.0)
    row = await database.fetchone("SELECT pg_backend_pid() AS pid")
    assert row is not None
    backend = int(row["pid"])
    os.kill(backend, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(db.DatabaseUnavailable, match="no answer within 1 s"):
            await database.fetchone("SELECT 1")
        assert time.monotonic() - started < 3
    finally:
        os.kill(backend, signal.SIGCONT)
    await first_success(database, within=10.0)
    row = await database.fetchone("SELECT pg_backend_pid() AS pid")
    assert row is not None
    assert int(row["pid"]) != backend, "the stuck connection was reused"
    await database.stop()


@pytest_twisted.ensureDeferred
async def test_unreachable_server_at_start_names_the_url(
    pg_cluster_factory: Callable[[], PostgresCluster],
) -> None:
    """Connecting to a stopped server fails at once, naming the URL and what to check."""
    cluster: PostgresCluster = pg_cluster_factory()
    cluster.kill()
    with pytest.raises(db.DatabaseUnavailable) as raised:
        await db.connect(cluster.dsn, reactor, timeout=5.0)
    message = str(raised.value)
    assert cluster.dsn.split("@")[1].split("/")[0] in message
    assert "check that PostgreSQL is running" in message
    await defer.succeed(None)


@pytest_twisted.ensureDeferred
async def test_a_call_waiting_for_a_busy_pool_fails_at_its_deadline(
    pg_cluster_factory: Callable[[], PostgresCluster],
) -> None:
    """With the only connection held past the deadline, a waiting call fails saying it waited;
    the holder fails too, its connection is replaced, and the next call works."""
    cluster: PostgresCluster = pg_cluster_factory()
    database = await db.connect(cluster.dsn, reactor, pool_size=1, timeout=1.0)
    held: defer.Deferred[None] = defer.Deferred()

    async def hold(txn: db.Transaction) -> None:
        await txn.execute("SELECT 1")
        await held

    holder = defer.ensureDeferred(database.transaction(hold))
    with pytest.raises(db.DatabaseUnavailable, match="waiting for a free connection"):
        await database.fetchone("SELECT 1")
    with pytest.raises(db.DatabaseUnavailable, match="no answer within 1 s running a transaction"):
        await holder
    held.callback(None)
    await first_success(database, within=10.0)
    await database.stop()
