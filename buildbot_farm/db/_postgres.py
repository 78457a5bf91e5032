"""The PostgreSQL backend, on libpq connections in pipeline mode driven by the reactor
(psycopg's ``pq`` layer): real asynchronous I/O, no threads.

A small pool of connections (``_pg_pool``) serves transactions and single statements (those
run in autocommit, without COMMIT's round trip); statements go out without waiting for the
answers before them (``_pg_connection``). Each connection connects again in the background
after the server goes away. While it is away, calls fail at once with
``DatabaseUnavailable``; a call the server does not answer fails when its deadline passes,
and its connection is replaced, so no call hangs forever. One more connection, opened on
first :meth:`listen`, carries LISTEN/NOTIFY.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Callable, TypeVar

from twisted.internet import defer
from twisted.python import failure, log

from buildbot_farm.db._api import (
    POSTGRESQL_DIALECT,
    Database,
    NotifyCallback,
    Params,
    Row,
    Subscription,
    Transaction,
)
from buildbot_farm.db._errors import DatabaseError, DatabaseUnavailable
from buildbot_farm.db._pg_answers import rowcount, rows
from buildbot_farm.db._pg_connection import PipelineConnection, check_channel
from buildbot_farm.db._pg_pool import CONNECTION_ERRORS, ConnectionPool, Work, one_line
from buildbot_farm.db._pg_transaction import run_transaction
from buildbot_farm.db._url import DatabaseURL

T = TypeVar("T")


class _ListenSubscription(Subscription):
    def __init__(self, database: PostgresDatabase, channel: str, callback: NotifyCallback) -> None:
        self._database = database
        self._channel = channel
        self._callback = callback

    async def cancel(self) -> None:
        await self._database.unlisten(self._channel, self._callback)


class PostgresDatabase(Database):
    """The farm database on a PostgreSQL server, shared by any number of masters.

    ``pool_size`` connections serve statements (shared) and transactions (one each);
    ``timeout`` bounds how long a call may wait for a connection and for the server's answer.
    """

    dialect = POSTGRESQL_DIALECT

    def __init__(
        self, url: DatabaseURL, reactor: Any, pool_size: int = 4, timeout: float = 30.0
    ) -> None:
        self.url = url
        self._reactor = reactor
        self._pool_size = pool_size
        self._timeout = timeout
        self._pool = self._new_pool()
        self._listener: PipelineConnection | None = None
        self._listeners: dict[str, list[NotifyCallback]] = {}
        self._stopped = False

    def _new_pool(self) -> ConnectionPool:
        return ConnectionPool(self._reactor, self._timeout, self._unavailable, self._replace)

    def _new_connection(self) -> PipelineConnection:
        return PipelineConnection(self._reactor, self.url.dsn, on_recovery=self._log_recovery)

    def _log_recovery(self) -> None:
        log.msg(f"farm database: reconnected to {self.url.redacted()}")

    def _retire(self, connection: PipelineConnection) -> None:
        """Close a connection for good (a reconnection under way ends with it)."""
        self._pool.discard(connection)
        connection.close()

    def _retire_all(self, connections: list[PipelineConnection]) -> None:
        for connection in connections:
            self._retire(connection)

    def _unavailable(self, reason: object) -> DatabaseUnavailable:
        return DatabaseUnavailable(
            f"the farm database {self.url.redacted()} is unreachable ({reason}); "
            f"the farm service reconnects by itself: retry once PostgreSQL is back"
        )

    async def start(self) -> None:
        """Open the pool; fail with the server's reason when any connection cannot open."""
        self._stopped = False
        connections = [self._new_connection() for _ in range(self._pool_size)]
        try:
            await self._deadline(
                defer.gatherResults([c.connect() for c in connections], consumeErrors=True),
                "connecting",
                on_expiry=lambda: self._retire_all(connections),
            )
        except (defer.FirstError, DatabaseError) as e:
            self._retire_all(connections)
            reason = e.subFailure.value if isinstance(e, defer.FirstError) else e
            raise DatabaseUnavailable(
                f"cannot connect to the farm database {self.url.redacted()}: "
                f"{one_line(reason)}; check that PostgreSQL is running and that db_url "
                f"names the right host, port, user and database"
            ) from None
        for connection in connections:
            self._pool.add(connection)

    async def stop(self) -> None:
        """Close every connection (the listener's too)."""
        self._stopped = True
        for connection in list(self._pool.members):
            self._retire(connection)
        self._pool.close(self._closed())
        self._pool = self._new_pool()
        if self._listener is not None:
            self._retire(self._listener)
            self._listener = None
        self._listeners.clear()

    async def transaction(self, fn: Callable[[Transaction], Awaitable[T]]) -> T:
        """Run ``fn`` in a transaction on a pooled connection, within the deadline."""
        return await self._on_connection(
            lambda connection, finish: run_transaction(connection, fn, finish),
            "running a transaction",
            holds=True,
        )

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement on its own: autocommit, one round trip instead of two."""
        return await self._on_connection(
            lambda connection, finish: connection.submit(sql, params, rowcount, finish),
            "running a statement",
        )

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        """Run one query on its own: autocommit, one round trip instead of two."""
        return await self._on_connection(
            lambda connection, finish: connection.submit(sql, params, rows, finish),
            "running a statement",
        )

    async def execute_prepared(self, name: str, sql: str, params: Params = ()) -> int:
        """Run ``sql`` prepared (as ``name``) on the connection; PREPARE it there first if needed.

        A connection that reconnected has lost its prepared statements and prepares them
        again; so does one whose statement was DEALLOCATEd (its EXECUTE fails saying so).
        """
        return await self._on_connection(
            lambda connection, finish: connection.submit_prepared(
                name, sql, params, rowcount, finish, in_transaction=False
            ),
            "running a statement",
        )

    async def fetchall_prepared(self, name: str, sql: str, params: Params = ()) -> list[Row]:
        """:meth:`fetchall` of ``sql`` prepared as ``name``, as :meth:`execute_prepared` runs it."""
        return await self._on_connection(
            lambda connection, finish: connection.submit_prepared(
                name, sql, params, rows, finish, in_transaction=False
            ),
            "running a statement",
        )

    def _on_connection(self, work: Work, doing: str, holds: bool = False) -> defer.Deferred[Any]:
        """Run ``work`` on a pooled connection within the deadline; map its errors."""
        if self._stopped:
            return defer.fail(self._closed())
        return self._pool.run(work, doing, holds)

    def _closed(self) -> DatabaseUnavailable:
        return DatabaseUnavailable(
            f"the farm database {self.url.redacted()} is closed (the farm service is stopped)"
        )

    def _deadline(
        self, d: defer.Deferred[T], doing: str, on_expiry: Callable[[], object]
    ) -> defer.Deferred[T]:
        """Fire with ``d``'s result, or fail with DatabaseUnavailable after the timeout.

        For connecting and LISTEN (the pool times its calls itself): on expiry ``d`` is
        abandoned and ``on_expiry`` frees what it held.
        """
        result: defer.Deferred[T] = defer.Deferred()

        def expire() -> None:
            d.addErrback(lambda _: None)
            on_expiry()
            result.errback(
                failure.Failure(self._unavailable(f"no answer within {self._timeout:g} s {doing}"))
            )

        timer = self._reactor.callLater(self._timeout, expire)

        def finish(outcome: Any) -> None:
            if timer.active():
                timer.cancel()
                if isinstance(outcome, failure.Failure):
                    result.errback(outcome)
                else:
                    result.callback(outcome)

        d.addBoth(finish)
        return result

    def _replace(self, connection: PipelineConnection) -> None:
        """Drop a connection stuck on an unanswered call and put a fresh one in the pool.

        The fresh one takes calls once it has connected, or failed to (then it connects
        again in the background, and calls on it fail fast meanwhile).
        """
        if connection not in self._pool.members:
            return  # retired already (another of its calls ran out of time first)
        self._retire(connection)
        if self._stopped:
            return
        fresh = self._new_connection()
        self._pool.add(fresh, free=False)

        def reconnect_in_background(_: failure.Failure) -> None:
            fresh.reconnect_in_background()

        connecting = fresh.connect().addErrback(reconnect_in_background)
        connecting.addCallback(lambda _: self._pool.free(fresh))

    async def listen(self, channel: str, callback: NotifyCallback) -> Subscription:
        """LISTEN on ``channel``; ``callback(payload)`` runs for each NOTIFY from any master."""
        check_channel(channel)
        listener = await self._listening_connection()
        if channel not in self._listeners:
            try:
                await self._deadline(
                    listener.run(f"LISTEN {channel}", (), rowcount),
                    "LISTEN",
                    on_expiry=lambda: None,
                )
            except CONNECTION_ERRORS as e:
                raise self._unavailable(one_line(e)) from e
            self._listeners[channel] = []
        self._listeners[channel].append(callback)
        return _ListenSubscription(self, channel, callback)

    async def unlisten(self, channel: str, callback: NotifyCallback) -> None:
        """Remove one listener; UNLISTEN when it was the channel's last."""
        callbacks = self._listeners.get(channel, [])
        if callback in callbacks:
            callbacks.remove(callback)
        if not callbacks and channel in self._listeners:
            del self._listeners[channel]
            if self._listener is not None and self._listener.ready:
                await self._deadline(
                    self._listener.run(f"UNLISTEN {channel}", (), rowcount),
                    "UNLISTEN",
                    on_expiry=lambda: None,
                )

    async def _listening_connection(self) -> PipelineConnection:
        if self._listener is None:
            listener = PipelineConnection(
                self._reactor, self.url.dsn, on_recovery=self._relisten, on_notify=self._on_notify
            )
            try:
                await self._deadline(
                    listener.connect(),
                    "connecting the listener",
                    on_expiry=lambda: listener.close(),
                )
            except CONNECTION_ERRORS as e:
                listener.close()
                raise self._unavailable(one_line(e)) from e
            self._listener = listener
        return self._listener

    def _relisten(self) -> defer.Deferred[Any]:
        """After a reconnect, LISTEN again on every channel (the server forgot them)."""
        self._log_recovery()
        if self._listener is None:
            return defer.succeed(None)
        return defer.gatherResults(
            [self._listener.run(f"LISTEN {channel}", (), rowcount) for channel in self._listeners]
        )

    def _on_notify(self, channel: str, payload: str) -> None:
        for callback in list(self._listeners.get(channel, ())):
            try:
                callback(payload)
            except Exception:
                log.err(None, f"farm database: listener of {channel!r} failed")
