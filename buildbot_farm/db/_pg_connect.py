"""Opening a libpq session without blocking the reactor: libpq's connect polling, driven by it.

libpq may change sockets between polls (trying the next address of a host), so the reactor
stops watching before each poll and never watches a descriptor libpq has closed.
"""

from __future__ import annotations

from typing import Any, Callable

import psycopg
from psycopg import pq
from twisted.internet import defer
from twisted.python import failure


def open_session(reactor: Any, conninfo: str) -> tuple[defer.Deferred[Any], Callable[[], None]]:
    """Start connecting to ``conninfo``: a Deferred that fires with the libpq session (a
    ``pq.PGconn``) or fails with libpq's reason, and a function that gives up (the Deferred
    then never fires)."""
    opening = _Opening(reactor)
    return opening.start(conninfo), opening.give_up


class _Opening:
    """One attempt at connecting, polled whenever the socket is ready as libpq asks."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._done: defer.Deferred[Any] = defer.Deferred()
        self._pg: pq.abc.PGconn | None = None
        self._fd = -1

    def start(self, conninfo: str) -> defer.Deferred[Any]:
        """Begin; libpq's first poll waits for the socket to be writable."""
        try:
            self._pg = pq.PGconn.connect_start(conninfo.encode())
        except psycopg.Error as e:
            self._failed(str(e))
            return self._done
        if self._pg.status == pq.ConnStatus.BAD:
            self._failed(self._pg.get_error_message())
        else:
            self._next(pq.PollingStatus.WRITING)
        return self._done

    def give_up(self) -> None:
        """Stop connecting and close the half-open session."""
        self._unwatch()
        if self._pg is not None:
            self._pg.finish()
            self._pg = None

    def _next(self, status: int) -> None:
        pg = self._pg
        if pg is None:
            return
        if status == pq.PollingStatus.OK:
            self._pg = None
            self._done.callback(pg)
        elif status == pq.PollingStatus.FAILED:
            self._failed(pg.get_error_message())
        else:
            try:
                self._fd = pg.socket
            except psycopg.Error:  # libpq has no socket to wait on: it has failed
                self._failed(pg.get_error_message() or "the connection has no socket")
                return
            if status == pq.PollingStatus.WRITING:
                self._reactor.addWriter(self)
            else:
                self._reactor.addReader(self)

    def _failed(self, why: str) -> None:
        self.give_up()
        self._done.errback(failure.Failure(psycopg.OperationalError(why.strip())))

    def _unwatch(self) -> None:
        if self._fd != -1:
            self._reactor.removeReader(self)
            self._reactor.removeWriter(self)
            self._fd = -1

    def fileno(self) -> int:
        """The socket libpq is connecting on (-1 while not watched)."""
        return self._fd

    def logPrefix(self) -> str:  # noqa: N802 - ILoggingContext
        """How the reactor's log names this attempt."""
        return "farm-postgres-connecting"

    def doRead(self) -> None:  # noqa: N802 - IReadDescriptor
        """The socket is readable: poll libpq again."""
        self._poll()

    def doWrite(self) -> None:  # noqa: N802 - IWriteDescriptor
        """The socket is writable: poll libpq again."""
        self._poll()

    def _poll(self) -> None:
        self._unwatch()
        if self._pg is None:
            return
        try:
            status = self._pg.connect_poll()
        except psycopg.Error:
            status = pq.PollingStatus.FAILED
        self._next(status)

    def connectionLost(self, reason: failure.Failure) -> None:
        """The socket failed: libpq's poll says how."""
        self._poll()
