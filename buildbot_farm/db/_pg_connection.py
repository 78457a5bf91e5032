"""One pooled PostgreSQL connection that runs the pool's statements and transactions itself.

txpostgres runs each query through a cursor wrapper that takes the socket away from the
connection (two epoll changes), hands it back after (two more), and fires its result one
reactor turn later. For the many short statements of claims and inserts that is most of
the client's cost per statement. :class:`PooledConnection` keeps txpostgres for what it
does well (connecting, the ``DeadConnectionDetector`` that reconnects, closing) and runs
statements itself: the connection stays the socket's one reader, each poll result is
acted on at once, and the caller's Deferred fires in the same reactor turn.

The reactor watches a duplicate of libpq's socket descriptor: libpq closes its own
descriptor when the server hangs up in the middle of a poll, and a descriptor closed
while the reactor still watches it would leave the reactor's bookkeeping wrong (txpostgres
avoids that by unwatching before every poll, the cost this module saves).

A statement reports its outcome to a plain function (:meth:`PooledConnection.submit`): the
pool's calls of one statement need no Deferred of their own, only the caller's; inside a
transaction, :meth:`PooledConnection.run` wraps the same path in a Deferred.

It also keeps the names of the statements prepared on it (``PREPARE name AS ...`` once,
then ``EXECUTE name(...)``), forgotten whenever it connects again, since a new server
session has none. :func:`run_transaction` runs a farm transaction on it; its BEGIN travels
in the same message as the transaction's first statement, so a transaction of one statement
is two round trips (that statement, COMMIT), not three.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Awaitable
from typing import Any, Callable, TypeVar

import psycopg2
import psycopg2.errors
from twisted.internet import defer
from twisted.python import failure, log
from txpostgres import reconnection, txpostgres

from buildbot_farm.db._api import (
    POSTGRESQL_DIALECT,
    Params,
    Row,
    Transaction,
    qmark_to_numbered,
    qmark_to_pyformat,
)

T = TypeVar("T")
CursorReader = Callable[[Any], T]
Finish = Callable[[Any], None]  # called once with a statement's result, or its Failure
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PooledConnection(txpostgres.Connection):
    """A txpostgres connection of the pool whose statements skip the cursor wrapper.

    One statement at a time (the pool hands a connection to one caller); the pool's
    LISTEN runs on a plain txpostgres connection of its own.
    """

    _running: tuple[Finish, Any, CursorReader[Any]] | None = None
    _watched: int | None = None  # the duplicate descriptor the reactor watches
    _begin_deferred = False  # BEGIN goes out with the next statement

    def connect(self, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        """Connect (again, when the detector reconnects): no statement is prepared yet.

        Once connected, the reactor watches a duplicate of the socket's descriptor.
        """
        self.prepared: set[str] = set()
        self._cursor: Any = None  # one cursor a session, made on first use
        self._begin_deferred = False
        return super().connect(*args, **kwargs).addCallback(self._watch_duplicate)

    def _watch_duplicate(self, connected: T) -> T:
        self.reactor.removeReader(self)
        self._watched = os.dup(self._connection.fileno())
        self.reactor.addReader(self)
        return connected

    def fileno(self) -> int:
        """The descriptor the reactor watches: the duplicate once connected."""
        if self._watched is not None:
            return self._watched
        return int(super().fileno())

    def close(self) -> None:
        """Close the connection, then the duplicate descriptor."""
        try:
            super().close()
        finally:
            self._unwatch()

    def _unwatch(self) -> None:
        """Stop watching the socket and close the duplicate (libpq's descriptor is its own)."""
        self.reactor.removeReader(self)
        self.reactor.removeWriter(self)
        if self._watched is not None:
            os.close(self._watched)
            self._watched = None

    def submit(
        self, sql: str, params: Params | None, read: CursorReader[T], finish: Finish
    ) -> None:
        """Send ``sql`` (``?`` placeholders) with ``params``; call ``finish`` with
        ``read(cursor)`` or with the Failure, once, perhaps before returning.

        ``params`` None sends ``sql`` as it is (no placeholders, ``%`` untouched). A
        connection known dead (a reconnection is under way) fails at once.
        """
        if self.detector.connectionIsDead:  # a reconnection is under way
            finish(failure.Failure(reconnection.ConnectionDead()))
        elif params is None:
            self._send(sql, None, read, finish)
        else:
            self._send(qmark_to_pyformat(sql), tuple(params), read, finish)

    def submit_prepared(
        self,
        name: str,
        sql: str,
        params: Params,
        read: CursorReader[T],
        finish: Finish,
        in_transaction: bool,
    ) -> None:
        """:meth:`submit` ``sql`` as the prepared statement ``name``, PREPAREd first where needed.

        Outside a transaction a statement DEALLOCATEd since it was prepared here is prepared
        again and run; inside one, its failed EXECUTE has aborted the transaction already.
        """
        if self.detector.connectionIsDead:
            finish(failure.Failure(reconnection.ConnectionDead()))
            return
        numbered, count = qmark_to_numbered(sql)
        execute, values = _execute_text(name, count), tuple(params)
        if name not in self.prepared:
            self._prepare(name, numbered, lambda: self._send(execute, values, read, finish), finish)
        elif in_transaction:
            self._send(execute, values, read, finish)
        else:

            def prepare_again(outcome: Any) -> None:
                if isinstance(outcome, failure.Failure) and outcome.check(
                    psycopg2.errors.InvalidSqlStatementName  # DEALLOCATEd since
                ):
                    self._prepare(
                        name, numbered, lambda: self._send(execute, values, read, finish), finish
                    )
                else:
                    finish(outcome)

            self._send(execute, values, read, prepare_again)

    def defer_begin(self) -> None:
        """Begin a transaction with the next statement: ``BEGIN;`` goes in front of it, in
        the same message, which saves BEGIN's own round trip."""
        self._begin_deferred = True

    def began(self) -> bool:
        """Whether the BEGIN deferred by :meth:`defer_begin` has gone to the server (so a
        transaction is open there); it is not sent with later statements either way."""
        began, self._begin_deferred = not self._begin_deferred, False
        return began

    def session_lost(self) -> bool:
        """Whether libpq has closed the connection: the server session, and a transaction
        open in it, is gone (the detector reconnects)."""
        return self._connection is None or bool(self._connection.closed)

    def run(self, sql: str, params: Params | None, read: CursorReader[T]) -> defer.Deferred[T]:
        """:meth:`submit`, for a caller that awaits: fire with ``read(cursor)``."""
        done: defer.Deferred[T] = defer.Deferred()
        self.submit(sql, params, read, _settle(done))
        return done

    def run_prepared(
        self, name: str, sql: str, params: Params, read: CursorReader[T], in_transaction: bool
    ) -> defer.Deferred[T]:
        """:meth:`submit_prepared`, for a caller that awaits: fire with ``read(cursor)``."""
        done: defer.Deferred[T] = defer.Deferred()
        self.submit_prepared(name, sql, params, read, _settle(done), in_transaction)
        return done

    def _prepare(
        self, name: str, numbered: str, then: Callable[[], None], finish: Finish
    ) -> None:
        """PREPARE ``numbered`` as ``name``, then call ``then``; or ``finish`` with the Failure."""
        try:
            check_statement_name(name)
        except ValueError:
            finish(failure.Failure())
            return
        self.prepared.discard(name)

        def prepared(outcome: Any) -> None:
            if isinstance(outcome, failure.Failure):
                finish(outcome)
            else:
                self.prepared.add(name)
                then()

        self._send(f"PREPARE {name} AS {numbered}", None, _nothing, prepared)

    def _send(
        self, sql: str, params: tuple[Any, ...] | None, read: CursorReader[T], finish: Finish
    ) -> None:
        if self._running is not None:
            busy = RuntimeError("a pooled connection runs one statement at a time")
            finish(failure.Failure(busy))
            return
        if self._cursor is None:
            self._cursor = self._connection.cursor()
        cursor = self._cursor
        if self._begin_deferred:
            sql = "BEGIN; " + sql  # the server answers for the last statement of a message
        try:
            cursor.execute(sql, params)
        except Exception:
            finish(failure.Failure())
            return
        self._begin_deferred = False
        self._running = (finish, cursor, read)
        self._advance()

    def _advance(self) -> None:
        """Poll the running statement; finish it when the server's answer is complete."""
        assert self._running is not None
        finish, cursor, read = self._running
        try:
            state = self._connection.poll()
            if state == psycopg2.extensions.POLL_WRITE:
                self.reactor.addWriter(self)
                return
            if state != psycopg2.extensions.POLL_OK:
                return  # POLL_READ: this connection is the socket's reader already
            result = read(cursor)
        except Exception:
            outcome = failure.Failure()
            self._finish()
            if self._connection.closed:
                self._unwatch()
            finish(outcome)
            return
        self._finish()
        finish(result)

    def _finish(self) -> None:
        self._running = None

    def doRead(self) -> None:  # noqa: N802 - IReadDescriptor
        """The server answered: go on with the running statement (or look for a hang-up)."""
        if self._running is not None:
            self._advance()
        else:
            super().doRead()

    def doWrite(self) -> None:  # noqa: N802 - IWriteDescriptor
        """The socket takes more of a long statement."""
        self.reactor.removeWriter(self)
        if self._running is not None:
            self._advance()
        else:
            super().doWrite()

    def connectionLost(self, reason: failure.Failure) -> None:
        """Fail a running statement whose connection closed, then let txpostgres see it."""
        if self._running is not None and self._connection.closed:
            finish = self._running[0]
            self._finish()
            finish(reason)
        super().connectionLost(reason)


class _PostgresTransaction(Transaction):
    dialect = POSTGRESQL_DIALECT

    def __init__(self, connection: PooledConnection) -> None:
        self._connection = connection

    async def execute(self, sql: str, params: Params = ()) -> int:
        return await self._connection.run(sql, params, rowcount)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._connection.run(sql, params, rows)

    async def fetchall_prepared(self, name: str, sql: str, params: Params = ()) -> list[Row]:
        return await self._connection.run_prepared(name, sql, params, rows, in_transaction=True)

    async def executescript(self, script: str) -> None:
        await self._connection.run(script, None, rowcount)

    async def notify(self, channel: str, payload: str = "") -> None:
        check_channel(channel)
        await self._connection.run("SELECT pg_notify(?, ?)", (channel, payload), rowcount)


def run_transaction(
    connection: PooledConnection, fn: Callable[[Transaction], Awaitable[T]], finish: Finish
) -> None:
    """BEGIN, ``fn``, COMMIT on ``connection``; ROLLBACK when ``fn`` raises. Then call
    ``finish`` with ``fn``'s result or the Failure.

    BEGIN goes out with ``fn``'s first statement (:meth:`PooledConnection.defer_begin`); an
    ``fn`` that sends none has no transaction to end; nor has one that fails on a lost
    connection (the server ended its transaction with the session), which fails with its own
    error, not a ROLLBACK's. A ROLLBACK that fails leaves the connection's state unknown:
    the error is then ``RollbackFailed``, which the detector takes for a dead connection and
    reconnects. COMMIT and ROLLBACK report to plain functions: only ``fn`` runs as a
    coroutine.
    """

    async def in_transaction() -> T:
        return await fn(_PostgresTransaction(connection))

    def commit(result: T) -> None:
        if not connection.began():
            finish(result)
            return

        def committed(outcome: Any) -> None:
            finish(outcome if isinstance(outcome, failure.Failure) else result)

        connection.submit("COMMIT", None, rowcount, committed)

    def roll_back(reason: failure.Failure) -> None:
        if not connection.began() or connection.session_lost():
            finish(reason)
            return

        def rolled_back(outcome: Any) -> None:
            if isinstance(outcome, failure.Failure):
                log.err(outcome, "farm database: ROLLBACK failed")
                finish(failure.Failure(txpostgres.RollbackFailed(connection, reason)))
            else:
                finish(reason)

        connection.submit("ROLLBACK", None, rowcount, rolled_back)

    connection.defer_begin()
    defer.ensureDeferred(in_transaction()).addCallbacks(commit, roll_back)


def rowcount(cursor: Any) -> int:
    """How many rows the cursor's statement changed."""
    return int(cursor.rowcount)


def rows(cursor: Any) -> list[Row]:
    """The rows of the cursor's query as dicts keyed by column name."""
    names = [column[0] for column in cursor.description or ()]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def check_statement_name(name: str) -> None:
    """Refuse a prepared statement name that is not a plain lower-case identifier."""
    if not _NAME.match(name):
        raise ValueError(f"prepared statement name {name!r}: lower-case letters, digits, '_'")


def check_channel(channel: str) -> None:
    """Refuse a notification channel name that is not a plain lower-case identifier."""
    if not _NAME.match(channel):
        raise ValueError(
            f"notification channel {channel!r} must be lower-case letters, digits and '_'"
        )


@functools.lru_cache(maxsize=256)
def _execute_text(name: str, count: int) -> str:
    """``EXECUTE name(%s, ...)`` for a statement of ``count`` parameters."""
    return f"EXECUTE {name}({', '.join(['%s'] * count)})" if count else f"EXECUTE {name}"


def _nothing(cursor: Any) -> None:
    """Read nothing from a statement that returns nothing."""


def _settle(done: defer.Deferred[T]) -> Finish:
    """The :data:`Finish` that fires ``done`` with a statement's outcome."""

    def finish(outcome: Any) -> None:
        if isinstance(outcome, failure.Failure):
            done.errback(outcome)
        else:
            done.callback(outcome)

    return finish
