"""A farm transaction on one pipelined PostgreSQL connection, held for it alone.

BEGIN goes out in front of the transaction's first statement, in the same round trip, so a
transaction of one statement is two round trips (that statement, COMMIT), not three; a
transaction that sends nothing sends no BEGIN and no COMMIT.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Callable, TypeVar

from twisted.internet import defer
from twisted.python import failure, log

from buildbot_farm.db._api import POSTGRESQL_DIALECT, Params, Row, Transaction
from buildbot_farm.db._pg_answers import Finish, rowcount, rows
from buildbot_farm.db._pg_connection import (
    ConnectionLost,
    PipelineConnection,
    RollbackFailed,
    check_channel,
)

T = TypeVar("T")


class _PostgresTransaction(Transaction):
    dialect = POSTGRESQL_DIALECT

    def __init__(self, connection: PipelineConnection) -> None:
        self._session = connection.session
        self._connection = connection

    def session_lost(self) -> bool:
        """Whether the session the transaction began in has ended (and the transaction with it)."""
        return self._connection.session != self._session

    def _on(self) -> PipelineConnection:
        """The connection, still in the session the transaction began in (a statement sent in
        a new session would run outside any transaction)."""
        if self.session_lost():
            raise ConnectionLost("the session of this transaction ended (the server went away)")
        return self._connection

    async def execute(self, sql: str, params: Params = ()) -> int:
        return await self._on().run(sql, params, rowcount)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._on().run(sql, params, rows)

    async def fetchall_prepared(self, name: str, sql: str, params: Params = ()) -> list[Row]:
        return await self._on().run_prepared(name, sql, params, rows, in_transaction=True)

    async def executescript(self, script: str) -> None:
        await self._on().run_script(script)

    async def notify(self, channel: str, payload: str = "") -> None:
        check_channel(channel)
        await self._on().run("SELECT pg_notify(?, ?)", (channel, payload), rowcount)


def run_transaction(
    connection: PipelineConnection, fn: Callable[[Transaction], Awaitable[T]], finish: Finish
) -> None:
    """BEGIN, ``fn``, COMMIT on ``connection``; ROLLBACK when ``fn`` raises. Then call
    ``finish`` with ``fn``'s result or the Failure.

    An ``fn`` that sends no statement has no transaction to end; nor has one whose session
    was lost meanwhile (the server ended its transaction with it), which fails with its own
    error, not a ROLLBACK's. A ROLLBACK that fails leaves the session's state unknown: the
    connection then starts a new one, and the error is ``RollbackFailed``. COMMIT and
    ROLLBACK report to plain functions: only ``fn`` runs as a coroutine.
    """
    transaction = _PostgresTransaction(connection)

    async def in_transaction() -> T:
        return await fn(transaction)

    def ended(outcome: Any) -> None:
        connection.end_transaction()
        finish(outcome)

    def commit(result: T) -> None:
        if not connection.began():
            ended(result)
            return
        if transaction.session_lost() or not connection.ready:
            # its statements went with a session that is gone; a COMMIT in a new one would
            # commit nothing and say it did
            lost = ConnectionLost("the session of this transaction ended before its COMMIT")
            ended(failure.Failure(lost))
            return

        def committed(outcome: Any) -> None:
            ended(outcome if isinstance(outcome, failure.Failure) else result)

        connection.submit("COMMIT", (), rowcount, committed)

    def roll_back(reason: failure.Failure) -> None:
        if not connection.began() or not connection.ready or transaction.session_lost():
            ended(reason)
            return

        def rolled_back(outcome: Any) -> None:
            if isinstance(outcome, failure.Failure):
                log.err(outcome, "farm database: ROLLBACK failed")
                connection.end_session("a ROLLBACK failed")
                error = RollbackFailed(f"ROLLBACK failed after: {reason.getErrorMessage()}")
                ended(failure.Failure(error))
            else:
                ended(reason)

        connection.submit("ROLLBACK", (), rowcount, rolled_back)

    connection.defer_begin()
    defer.ensureDeferred(in_transaction()).addCallbacks(commit, roll_back)
