"""The pool of PostgreSQL connections: one call at a time on each, each call within a deadline.

A call takes an idle connection at once or waits its turn; one timer bounds the whole call
(the wait and the server's answer). A call whose deadline passes fails with
``DatabaseUnavailable``: while waiting it just leaves the queue; on a connection, that
connection is handed to ``on_stuck`` (which closes it, failing what runs on it, and puts a
fresh one in the pool), since a server that does not answer may never answer.

This is the path of every farm statement, so it keeps to one Deferred and one timer a call.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, TypeVar

import psycopg2
from twisted.internet import defer
from twisted.python import failure
from txpostgres import reconnection, txpostgres

from buildbot_farm.db._errors import DatabaseUnavailable, IntegrityError
from buildbot_farm.db._pg_connection import PooledConnection

T = TypeVar("T")
CONNECTION_ERRORS = (
    psycopg2.OperationalError,
    psycopg2.InterfaceError,
    reconnection.ConnectionDead,
    txpostgres.RollbackFailed,
)


class ConnectionPool:
    """The pooled connections of one database, handed to one call at a time.

    ``unavailable(reason)`` makes the error of a call that cannot reach the server;
    ``on_stuck(connection)`` is called with a connection whose call ran out of time.
    """

    def __init__(
        self,
        reactor: Any,
        timeout: float,
        unavailable: Callable[[str], DatabaseUnavailable],
        on_stuck: Callable[[PooledConnection], None],
    ) -> None:
        self.members: set[PooledConnection] = set()
        self._reactor = reactor
        self._timeout = timeout
        self._unavailable = unavailable
        self._on_stuck = on_stuck
        self._idle: list[PooledConnection] = []
        self._waiting: deque[defer.Deferred[PooledConnection]] = deque()

    def add(self, connection: PooledConnection, free: bool = True) -> None:
        """Make ``connection`` one of the pool's: free for the next call, or (``free`` False,
        while it connects) once :meth:`free` is called."""
        self.members.add(connection)
        if free:
            self._release(connection)

    def free(self, connection: PooledConnection) -> None:
        """``connection``, added while it connected, takes calls from now on (if still ours)."""
        if connection in self.members:
            self._release(connection)

    def discard(self, connection: PooledConnection) -> None:
        """Take ``connection`` out of the pool (it is being closed)."""
        self.members.discard(connection)
        if connection in self._idle:
            self._idle.remove(connection)

    def close(self, reason: DatabaseUnavailable) -> None:
        """Fail the calls still waiting for a connection with ``reason``."""
        while self._waiting:
            self._waiting.popleft().errback(failure.Failure(reason))

    def run(
        self, work: Callable[[PooledConnection], defer.Deferred[T]], doing: str
    ) -> defer.Deferred[T]:
        """Run ``work`` on a free connection once there is one; fire with its result.

        A violated constraint fails with ``IntegrityError``, an unreachable server (or no
        answer before the deadline) with ``DatabaseUnavailable``.
        """
        result: defer.Deferred[T] = defer.Deferred()
        running: list[PooledConnection] = []
        waiter: defer.Deferred[PooledConnection] | None = None

        def expire() -> None:
            if running:
                message = f"no answer within {self._timeout:g} s {doing}"
            else:
                message = f"no answer within {self._timeout:g} s waiting for a free connection"
                self._waiting.remove(waiter)  # type: ignore[arg-type]
            result.errback(failure.Failure(self._unavailable(message)))
            if running:
                self._on_stuck(running[0])

        timer = self._reactor.callLater(self._timeout, expire)

        def finish(outcome: Any, connection: PooledConnection) -> None:
            if connection in self.members:
                self._release(connection)
            if not timer.active():
                return  # expired: the caller has had its error
            timer.cancel()
            if isinstance(outcome, failure.Failure):
                result.errback(self._mapped(outcome))
            else:
                result.callback(outcome)

        def start(connection: PooledConnection) -> None:
            running.append(connection)
            try:
                started = work(connection)
            except Exception:
                started = defer.fail()
            started.addBoth(finish, connection)

        def refused(reason: failure.Failure) -> None:
            timer.cancel()
            result.errback(reason)

        if self._idle:
            start(self._idle.pop())
        else:
            waiter = defer.Deferred()
            waiter.addCallbacks(start, refused)
            self._waiting.append(waiter)
        return result

    def _release(self, connection: PooledConnection) -> None:
        if self._waiting:
            self._waiting.popleft().callback(connection)
        else:
            self._idle.append(connection)

    def _mapped(self, outcome: failure.Failure) -> failure.Failure:
        error: Exception
        if outcome.check(psycopg2.IntegrityError):
            error = IntegrityError(one_line(outcome.value))
        elif outcome.check(*CONNECTION_ERRORS):
            error = self._unavailable(one_line(outcome.value) or outcome.type.__name__)
        else:
            return outcome
        error.__cause__ = outcome.value
        return failure.Failure(error)


def one_line(error: object) -> str:
    """libpq's messages span lines; a log line or a JSON error wants one."""
    return " ".join(str(error).split())
