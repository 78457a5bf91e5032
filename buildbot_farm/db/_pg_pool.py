"""The pool of PostgreSQL connections: statements share them, a transaction holds one; each
call within a deadline.

The connections pipeline (``_pg_connection``): a statement on its own goes out at once on the
connection with the fewest statements in flight, among those no transaction holds. A
transaction holds a connection for itself until it ends (statements sent before it are
answered first, in order). When every connection is held, calls wait their turn. A call's
deadline bounds the whole call (the wait and the server's answer). A call whose deadline
passes fails with ``DatabaseUnavailable``: while waiting it just leaves the queue; on a
connection, that connection is handed to ``on_stuck`` (which closes it, failing what runs on
it, and puts a fresh one in the pool), since a server that does not answer may never answer.

This is the path of every farm statement, so a call costs one Deferred (the caller's) and
no timer of its own: every call of a pool has the same timeout, so the unfinished calls,
kept in the order they started, are also in the order of their deadlines, and one reactor
timer, set for the oldest's, serves them all. A call that finishes just leaves the
ordered table; when the timer fires it fails the calls whose deadline has passed and is
set again for the oldest left (a timer a call was a heap push and a cancel per statement).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, TypeVar

import psycopg
from twisted.internet import defer
from twisted.python import failure

from buildbot_farm.db._errors import DatabaseUnavailable, IntegrityError
from buildbot_farm.db._pg_answers import Finish
from buildbot_farm.db._pg_connection import PipelineConnection

T = TypeVar("T")
Work = Callable[[PipelineConnection, Finish], object]  # runs a call, calls Finish once
CONNECTION_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)


class _Call:
    """One call of the pool: waiting for a connection, then running on ``connection``."""

    __slots__ = ("connection", "deadline", "doing", "holds", "result", "work")

    def __init__(self, work: Work, doing: str, deadline: float, holds: bool) -> None:
        self.work = work
        self.doing = doing
        self.deadline = deadline
        self.holds = holds  # a transaction: the connection is its alone until it ends
        self.result: defer.Deferred[Any] = defer.Deferred()
        self.connection: PipelineConnection | None = None


class ConnectionPool:
    """The pooled connections of one database, shared by statements, held by transactions.

    ``unavailable(reason)`` makes the error of a call that cannot reach the server;
    ``on_stuck(connection)`` is called with a connection whose call ran out of time.
    """

    def __init__(
        self,
        reactor: Any,
        timeout: float,
        unavailable: Callable[[str], DatabaseUnavailable],
        on_stuck: Callable[[PipelineConnection], None],
    ) -> None:
        self.members: set[PipelineConnection] = set()
        self._reactor = reactor
        self._timeout = timeout
        self._unavailable = unavailable
        self._on_stuck = on_stuck
        self._free: list[PipelineConnection] = []  # taking calls, held by no transaction
        self._waiting: deque[_Call] = deque()
        self._calls: dict[_Call, None] = {}  # unfinished, oldest (first deadline) first
        self._timer: Any = None  # set for the oldest call's deadline while there are calls

    def add(self, connection: PipelineConnection, free: bool = True) -> None:
        """Make ``connection`` one of the pool's: taking calls now, or (``free`` False, while
        it connects) once :meth:`free` is called."""
        self.members.add(connection)
        if free:
            self._release(connection)

    def free(self, connection: PipelineConnection) -> None:
        """``connection``, added while it connected, takes calls from now on (if still ours)."""
        if connection in self.members and connection not in self._free:
            self._release(connection)

    def discard(self, connection: PipelineConnection) -> None:
        """Take ``connection`` out of the pool (it is being closed)."""
        self.members.discard(connection)
        if connection in self._free:
            self._free.remove(connection)

    def close(self, reason: DatabaseUnavailable) -> None:
        """Fail the calls still waiting for a connection with ``reason``.

        Calls still running keep their deadline; with none left, the timer stops.
        """
        while self._waiting:
            call = self._waiting.popleft()
            del self._calls[call]
            call.result.errback(failure.Failure(reason))
        if not self._calls and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def run(self, work: Work, doing: str, holds: bool = False) -> defer.Deferred[T]:
        """Run ``work(connection, finish)`` on a connection no transaction holds, once there
        is one (holding it until ``finish`` when ``holds``); fire with what ``work`` passes to
        ``finish`` (a result or a Failure).

        A violated constraint fails with ``IntegrityError``, an unreachable server (or no
        answer before the deadline) with ``DatabaseUnavailable``.
        """
        call = _Call(work, doing, self._reactor.seconds() + self._timeout, holds)
        self._calls[call] = None
        if self._timer is None:
            self._timer = self._reactor.callLater(self._timeout, self._expire)
        if self._free and not self._waiting:
            self._start(call, self._least_busy())
        else:
            self._waiting.append(call)
        return call.result

    def _least_busy(self) -> PipelineConnection:
        """The free connection to send to next: the one with the fewest statements in flight
        (one that is not ready last)."""
        best, lightest = self._free[0], self._free[0].load
        for connection in self._free:
            if not lightest:
                break
            load = connection.load
            if load < lightest:
                best, lightest = connection, load
        return best

    def _start(self, call: _Call, connection: PipelineConnection) -> None:
        call.connection = connection
        if call.holds:
            self._free.remove(connection)
        try:
            call.work(connection, lambda outcome: self._finish(call, connection, outcome))
        except Exception:
            self._finish(call, connection, failure.Failure())

    def _finish(self, call: _Call, connection: PipelineConnection, outcome: Any) -> None:
        if call.holds and connection in self.members:
            self._release(connection)
        if call not in self._calls:
            return  # expired: the caller has had its error
        del self._calls[call]
        if isinstance(outcome, failure.Failure):
            call.result.errback(self._mapped(outcome))
        else:
            call.result.callback(outcome)

    def _expire(self) -> None:
        """Fail every call whose deadline has passed; set the timer for the oldest left."""
        self._timer = None
        now = self._reactor.seconds()
        expired = []
        for call in self._calls:
            if call.deadline > now:
                break
            expired.append(call)
        for call in expired:
            del self._calls[call]
            if call.connection is None:
                self._waiting.remove(call)
        if self._calls:  # before failing any: a failed caller may call again
            oldest = next(iter(self._calls))
            self._timer = self._reactor.callLater(max(oldest.deadline - now, 0.0), self._expire)
        # each stuck connection once, and before failing any caller, who may call again at
        # once and must not land on one
        for stuck in dict.fromkeys(c.connection for c in expired if c.connection is not None):
            self._on_stuck(stuck)
        for call in expired:
            if call.connection is None:
                message = f"no answer within {self._timeout:g} s waiting for a free connection"
            else:
                message = f"no answer within {self._timeout:g} s {call.doing}"
            call.result.errback(failure.Failure(self._unavailable(message)))

    def _release(self, connection: PipelineConnection) -> None:
        """``connection`` is held no more: it takes the waiting calls, up to a transaction."""
        self._free.append(connection)
        while self._waiting and connection in self._free:
            self._start(self._waiting.popleft(), connection)

    def _mapped(self, outcome: failure.Failure) -> failure.Failure:
        error: Exception
        if outcome.check(psycopg.IntegrityError):
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
