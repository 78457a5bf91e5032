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

It also keeps the names of the statements prepared on it (``PREPARE name AS ...`` once,
then ``EXECUTE name(...)``), forgotten whenever it connects again, since a new server
session has none. :func:`run_transaction` runs a farm transaction on it.
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
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PooledConnection(txpostgres.Connection):
    """A txpostgres connection of the pool whose statements skip the cursor wrapper.

    One statement at a time (the pool hands a connection to one caller); the pool's
    LISTEN runs on a plain txpostgres connection of its own.
    """

    _running: tuple[defer.Deferred[Any], Any, CursorReader[Any]] | None = None
    _watched: int | None = None  # the duplicate descriptor the reactor watches

    def checked(self, work: Callable[[], defer.Deferred[T]]) -> defer.Deferred[T]:
        """Run ``work`` unless this connection is known dead; a failure that says it died
        starts its reconnection (txpostgres's ``DeadConnectionDetector``)."""
        if self.detector.connectionIsDead:  # a reconnection is under way
            return defer.fail(reconnection.ConnectionDead())
        try:
            started = work()
        except Exception:
            started = defer.fail()
        return started.addErrback(self.detector.checkForDeadConnection)

    def connect(self, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        """Connect (again, when the detector reconnects): no statement is prepared yet.

        Once connected, the reactor watches a duplicate of the socket's descriptor.
        """
        self.prepared: set[str] = set()
        self._cursor: Any = None  # one cursor a session, made on first use
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

    def run(self, sql: str, params: Params | None, read: CursorReader[T]) -> defer.Deferred[T]:
        """Send ``sql`` (``?`` placeholders) with ``params``; fire with ``read(cursor)``.

        ``params`` None sends ``sql`` as it is (no placeholders, ``%`` untouched).
        """
        if params is None:
            return self._send(sql, None, read)
        return self._send(qmark_to_pyformat(sql), tuple(params), read)

    def run_prepared(
        self, name: str, sql: str, params: Params, read: CursorReader[T], in_transaction: bool
    ) -> defer.Deferred[T]:
        """:meth:`run` ``sql`` as the prepared statement ``name``, PREPAREd first where needed.

        Outside a transaction a statement DEALLOCATEd since it was prepared here is prepared
        again and run; inside one, its failed EXECUTE has aborted the transaction already.
        """
        check_statement_name(name)
        numbered, count = qmark_to_numbered(sql)
        execute, values = _execute_text(name, count), tuple(params)
        if name in self.prepared:
            done = self._send(execute, values, read)
        else:
            done = self._prepare(name, numbered).addCallback(
                lambda _: self._send(execute, values, read)
            )
        if in_transaction:
            return done

        def prepare_again(reason: failure.Failure) -> defer.Deferred[T]:
            reason.trap(psycopg2.errors.InvalidSqlStatementName)  # DEALLOCATEd since
            return self._prepare(name, numbered).addCallback(
                lambda _: self._send(execute, values, read)
            )

        return done.addErrback(prepare_again)

    def _prepare(self, name: str, numbered: str) -> defer.Deferred[None]:
        self.prepared.discard(name)
        prepared = self._send(f"PREPARE {name} AS {numbered}", None, _nothing)
        return prepared.addCallback(lambda _: self.prepared.add(name))

    def _send(
        self, sql: str, params: tuple[Any, ...] | None, read: CursorReader[T]
    ) -> defer.Deferred[T]:
        if self._running is not None:
            return defer.fail(RuntimeError("a pooled connection runs one statement at a time"))
        if self._cursor is None:
            self._cursor = self._connection.cursor()
        cursor = self._cursor
        try:
            cursor.execute(sql, params)
        except Exception:
            return defer.fail()
        done: defer.Deferred[T] = defer.Deferred()
        self._running = (done, cursor, read)
        self._advance()
        return done

    def _advance(self) -> None:
        """Poll the running statement; finish it when the server's answer is complete."""
        assert self._running is not None
        done, cursor, read = self._running
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
            done.errback(outcome)
            return
        self._finish()
        done.callback(result)

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
            done = self._running[0]
            self._finish()
            done.errback(reason)
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
    connection: PooledConnection, fn: Callable[[Transaction], Awaitable[T]]
) -> defer.Deferred[T]:
    """BEGIN, ``fn``, COMMIT on ``connection``; ROLLBACK when ``fn`` raises.

    A ROLLBACK that fails leaves the connection's state unknown: the error is then
    ``RollbackFailed``, which the detector takes for a dead connection and reconnects.
    """

    async def run() -> T:
        await connection.run("BEGIN", None, rowcount)
        try:
            result = await fn(_PostgresTransaction(connection))
        except Exception:
            reason = failure.Failure()
            try:
                await connection.run("ROLLBACK", None, rowcount)
            except Exception:
                log.err(None, "farm database: ROLLBACK failed")
                raise txpostgres.RollbackFailed(connection, reason) from None
            raise
        await connection.run("COMMIT", None, rowcount)
        return result

    return defer.ensureDeferred(run())


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
