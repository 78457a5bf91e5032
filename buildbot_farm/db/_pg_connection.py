"""One PostgreSQL connection in libpq's pipeline mode, driven by the reactor (psycopg's ``pq``).

Every statement goes out as a group of its own (the statement, then a Sync) without waiting
for the answers to the groups before it. The server so always has the next statement
queued and never waits for the reactor to read an answer, and one wake-up of the reactor
reads several answers: for the many short statements of claims and inserts that is most
of the cost per statement (``docs/on-demand.md``). Each group is an implicit transaction of
its own, unless an explicit BEGIN sent before it is still open. The server answers groups
in the order they went out, so the connection keeps a queue of what each caller wants.

A multi-statement script (a migration) goes out alone in libpq's ordinary mode, over the
simple query protocol, once the groups before it are answered; statements sent meanwhile
wait for it, in order.

The reactor watches a duplicate of libpq's socket descriptor: libpq closes its own when the
server hangs up, and a descriptor closed while the reactor watches it would leave the
reactor's bookkeeping wrong. A connection that loses its server fails what it has in flight
with :class:`ConnectionLost` (libpq's words), fails new statements at once, and connects
again in the background, backing off from 0.2 s to 5 s; a new session has no prepared
statements, so their names are forgotten.
"""

from __future__ import annotations

import enum
import os
import re
from collections import deque
from collections.abc import Iterator
from typing import Any, Callable, TypeVar

import psycopg
from psycopg import abc as psycopg_abc
from psycopg import errors, pq
from psycopg.adapt import PyFormat, Transformer
from psycopg.conninfo import make_conninfo
from twisted.internet import defer
from twisted.python import failure, log

from buildbot_farm.db._api import Params, qmark_to_numbered
from buildbot_farm.db._errors import UnstorableValue
from buildbot_farm.db._pg_answers import Finish, Group, Reader, nothing, settle
from buildbot_farm.db._pg_connect import open_session

T = TypeVar("T")
MAX_RECONNECT_DELAY = 5.0
MAX_PARAMETERS = 65_535  # the most parameters the protocol carries in one statement
_NOT_READY = 1 << 30  # the load of a connection that cannot send now
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class ConnectionLost(psycopg.OperationalError):
    """The connection's server session is gone (or the farm closed it); so is any
    transaction open in it. The connection is connecting again in the background."""


class RollbackFailed(psycopg.OperationalError):
    """A ROLLBACK failed, so the session's state is unknown: the connection starts a new one."""


class _State(enum.Enum):
    """DOWN -> CONNECTING -> READY -> DOWN (lost: connects again) ...; any -> CLOSED, for good."""

    DOWN = "down"
    CONNECTING = "connecting"
    READY = "ready"
    CLOSED = "closed"


class PipelineConnection:
    """A PostgreSQL connection whose statements go out without waiting for earlier answers.

    ``on_recovery()`` runs each time it connects again after losing its server;
    ``on_notify(channel, payload)`` for each NOTIFY heard on a channel it LISTENs on.
    """

    def __init__(
        self,
        reactor: Any,
        dsn: str,
        on_recovery: Callable[[], object] | None = None,
        on_notify: Callable[[str, str], object] | None = None,
    ) -> None:
        self.reactor = reactor
        self.prepared: set[str] = set()
        self.session = 0  # counts the server sessions the connection has had
        self._conninfo = make_conninfo(dsn, client_encoding="UTF8")
        self._on_recovery = on_recovery
        self._on_notify = on_notify
        self._state = _State.DOWN
        self._why_down = "not connected yet"
        self._pg: pq.abc.PGconn | None = None
        self._watched: int | None = None  # the duplicate descriptor the reactor watches
        self._groups: deque[Group] = deque()
        # sends waiting for a script to end (or, a script, for the pipeline to empty)
        self._held_back: deque[tuple[bool, Callable[[], None]]] = deque()
        self._loader: psycopg_abc.Transformer = Transformer()
        self._begin_deferred = False
        self._in_transaction = False
        self._after_transaction: list[Callable[[], None]] = []
        self._give_up: Callable[[], None] | None = None  # while connecting
        self._retry: Any = None
        self._delays = reconnect_delays()

    @property
    def ready(self) -> bool:
        """Whether statements can go out now (connected, not lost, not closed)."""
        return self._state is _State.READY

    @property
    def load(self) -> int:
        """How many statements are sent or waiting to be, not yet answered; a connection that
        is not ready counts as more loaded than any that is."""
        if self._state is not _State.READY:
            return _NOT_READY
        return len(self._groups) + len(self._held_back)

    def connect(self) -> defer.Deferred[None]:
        """Open a server session (one attempt); fail with libpq's reason."""
        if self._state is _State.CLOSED:
            return defer.fail(ConnectionLost("the connection was closed"))
        self._state = _State.CONNECTING
        opening, self._give_up = open_session(self.reactor, self._conninfo)
        return opening.addCallback(self._connected).addErrback(self._connect_failed)

    def _connected(self, pg: pq.abc.PGconn) -> None:
        self._give_up = None
        try:
            pg.notice_handler = _ignore_notice  # libpq would print them on stderr
            pg.nonblocking = 1
            pg.enter_pipeline_mode()
            self._watched = os.dup(pg.socket)
        except (psycopg.Error, OSError) as e:
            pg.finish()
            raise psycopg.OperationalError(f"cannot set up the connection: {e}") from e
        self._pg = pg
        self._state = _State.READY
        self.session += 1
        self.prepared = set()
        self._begin_deferred = False
        self.reactor.addReader(self)

    def _connect_failed(self, reason: failure.Failure) -> failure.Failure:
        self._give_up = None
        if self._state is _State.CONNECTING:
            self._state = _State.DOWN
        self._why_down = " ".join(reason.getErrorMessage().split()) or "cannot connect"
        return reason

    def reconnect_in_background(self) -> None:
        """While the connection is down, try to connect again, backing off between tries."""
        if self._state is _State.DOWN and self._retry is None:
            self._retry = self.reactor.callLater(next(self._delays), self._try_again)

    def _try_again(self) -> None:
        self._retry = None
        self.connect().addCallbacks(self._recovered, lambda _: self.reconnect_in_background())

    def _recovered(self, _: None) -> None:
        self._delays = reconnect_delays()
        if self._on_recovery is not None:
            defer.maybeDeferred(self._on_recovery).addErrback(
                log.err, "farm database: after reconnecting"
            )

    def close(self) -> None:
        """Close for good: what is in flight fails, and no reconnection follows."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._give_up is not None:
            self._give_up()
            self._give_up = None
        self._drop("the farm closed the connection", then=_State.CLOSED)

    def fileno(self) -> int:
        """The descriptor the reactor watches: a duplicate of libpq's (-1 when not connected)."""
        return -1 if self._watched is None else self._watched

    def logPrefix(self) -> str:  # noqa: N802 - ILoggingContext
        """How the reactor's log names this connection."""
        return "farm-postgres"

    def submit(self, sql: str, params: Params, read: Reader[T], finish: Finish) -> None:
        """Send ``sql`` (``?`` placeholders, one statement) with ``params``; call ``finish``
        with ``read(answer, loader)`` or with the Failure, once, perhaps before returning."""
        numbered, count = qmark_to_numbered(sql)
        try:
            values, types = self._dumped(params, count)
        except Exception:
            finish(failure.Failure())
            return
        command = numbered.encode()
        self._send(
            Group(read, finish),
            lambda pg: pg.send_query_params(command, values, param_types=types),
        )

    def submit_prepared(
        self,
        name: str,
        sql: str,
        params: Params,
        read: Reader[T],
        finish: Finish,
        in_transaction: bool,
    ) -> None:
        """:meth:`submit` ``sql`` as the prepared statement ``name``; PREPARE it in the same
        group where this session has not yet.

        Outside a transaction a statement DEALLOCATEd since it was prepared here is prepared
        again and run (once no transaction holds the connection); inside one, its failed
        EXECUTE has aborted the transaction, so it fails, and is prepared again next time.
        """
        try:
            check_statement_name(name)
            numbered, count = qmark_to_numbered(sql)
            values, _ = self._dumped(params, count)
        except Exception:
            finish(failure.Failure())
            return
        key, command = name.encode(), numbered.encode()

        def send(group: Group) -> None:
            def statements(pg: pq.abc.PGconn) -> None:
                if name not in self.prepared:
                    group.prepared, group.prepare_at = name, int(self._begin_deferred)
                    pg.send_prepare(key, command)
                    self.prepared.add(name)
                pg.send_query_prepared(key, values)

            self._send(group, statements)

        retry = not in_transaction and name in self.prepared

        def settled(outcome: Any) -> None:
            if isinstance(outcome, failure.Failure) and outcome.check(
                errors.InvalidSqlStatementName  # DEALLOCATEd since: prepare it next time
            ):
                self.prepared.discard(name)
                if retry:  # in a transaction, the failed EXECUTE has aborted it already
                    self.outside_transaction(lambda: send(Group(read, finish)))
                    return
            finish(outcome)

        send(Group(read, settled))

    def submit_script(self, script: str, finish: Finish) -> None:
        """Send ``script`` (statements without placeholders) over the simple protocol, alone."""
        command = script.encode()

        def go() -> None:
            self._start_script(command, Group(nothing, finish, script=True))

        if self._groups or self._held_back:
            self._held_back.append((True, go))
        else:
            go()

    def _start_script(self, command: bytes, group: Group) -> None:
        pg = self._pg
        if not self.ready or pg is None:
            group.finish(failure.Failure(ConnectionLost(self._why_down)))
            return
        if self._begin_deferred:
            command = b"BEGIN; " + command
        self._groups.append(group)
        try:
            pg.exit_pipeline_mode()
            pg.send_query(command)
            self._flush(pg)
        except psycopg.Error as e:
            self._drop(str(e))
            return
        self._begin_deferred = False

    def _dumped(self, params: Params, count: int) -> tuple[list[Any], list[int]]:
        """``params`` as text for the server, and their types' OIDs."""
        if len(params) != count:
            raise ValueError(
                f"the statement has {count} '?' placeholder(s) but {len(params)} value(s) "
                f"were given"
            )
        if count > MAX_PARAMETERS:
            raise ValueError(
                f"the statement has {count} parameters; PostgreSQL takes at most "
                f"{MAX_PARAMETERS}: send the values in several statements"
            )
        formats = [PyFormat.TEXT] * count
        try:
            values = self._loader.dump_sequence(params, formats)
        except (psycopg.DataError, UnicodeEncodeError) as e:  # a NUL, a lone surrogate
            raise UnstorableValue(f"a value cannot be stored in PostgreSQL: {e}") from e
        return list(values), list(self._loader.types or ())

    def _send(self, group: Group, statements: Callable[[pq.abc.PGconn], None]) -> None:
        """Send ``statements`` and a Sync as ``group``, after a script that runs or waits."""
        if self._held_back or (self._groups and self._groups[-1].script):
            self._held_back.append((False, lambda: self._send_now(group, statements)))
        else:
            self._send_now(group, statements)

    def _send_now(self, group: Group, statements: Callable[[pq.abc.PGconn], None]) -> None:
        pg = self._pg
        if not self.ready or pg is None:
            group.finish(failure.Failure(ConnectionLost(self._why_down)))
            return
        self._groups.append(group)
        try:
            if self._begin_deferred:  # its answer comes first; the statement's replaces it
                pg.send_query_params(b"BEGIN", None)
            statements(pg)
            pg.pipeline_sync()
            self._flush(pg)
        except psycopg.Error as e:  # libpq can no longer send: the session is lost
            self._drop(str(e))
            return
        self._begin_deferred = False

    def _release_held_back(self) -> None:
        """Send what waited for a script, up to the next script (which waits for the rest)."""
        while self._held_back:
            script, go = self._held_back[0]
            if self._groups and (script or self._groups[-1].script):
                return
            self._held_back.popleft()
            go()

    def _flush(self, pg: pq.abc.PGconn) -> None:
        if pg.flush():
            self.reactor.addWriter(self)

    def defer_begin(self) -> None:
        """Begin a transaction with the next statement: BEGIN goes in front of it, in the
        same round trip. The transaction lasts until :meth:`end_transaction`."""
        self._begin_deferred = True
        self._in_transaction = True

    def end_transaction(self) -> None:
        """The transaction is over (committed, rolled back, or never begun): send what
        waited for it to end."""
        self._in_transaction = False
        waiting, self._after_transaction = self._after_transaction, []
        for go in waiting:
            go()

    def outside_transaction(self, go: Callable[[], None]) -> None:
        """Call ``go`` now, or, while a transaction holds the connection, once it has ended
        (so that a statement of its own does not run inside another caller's transaction)."""
        if self._in_transaction:
            self._after_transaction.append(go)
        else:
            go()

    def began(self) -> bool:
        """Whether the BEGIN deferred by :meth:`defer_begin` has gone to the server (so a
        transaction is open there); it is not sent with later statements either way."""
        began, self._begin_deferred = not self._begin_deferred, False
        return began

    def run(self, sql: str, params: Params, read: Reader[T]) -> defer.Deferred[T]:
        """:meth:`submit`, for a caller that awaits: fire with what ``read`` returns."""
        done: defer.Deferred[T] = defer.Deferred()
        self.submit(sql, params, read, settle(done))
        return done

    def run_prepared(
        self, name: str, sql: str, params: Params, read: Reader[T], in_transaction: bool
    ) -> defer.Deferred[T]:
        """:meth:`submit_prepared`, for a caller that awaits."""
        done: defer.Deferred[T] = defer.Deferred()
        self.submit_prepared(name, sql, params, read, settle(done), in_transaction)
        return done

    def run_script(self, script: str) -> defer.Deferred[None]:
        """:meth:`submit_script`, for a caller that awaits."""
        done: defer.Deferred[None] = defer.Deferred()
        self.submit_script(script, settle(done))
        return done

    def end_session(self, why: str) -> None:
        """End a session whose state is unknown (a ROLLBACK failed); connect again."""
        self._drop(why)

    def doRead(self) -> None:  # noqa: N802 - IReadDescriptor
        """The server sent something: answers, notifications, or its goodbye."""
        pg = self._pg
        if pg is None:
            return
        try:
            pg.consume_input()
        except psycopg.Error as e:
            self._drop(str(e))
            return
        self._take_answers(pg)
        if self._pg is not pg:
            return  # a caller's statement ended the session
        if self._on_notify is not None:
            while (notify := pg.notifies()) is not None:
                self._on_notify(notify.relname.decode(), notify.extra.decode())
        if pg.status == pq.ConnStatus.BAD:
            self._drop(pg.get_error_message())

    def _take_answers(self, pg: pq.abc.PGconn) -> None:
        """Finish each group whose answer has come in full, in the order they went out."""
        nothing = 0  # two Nones in a row: nothing more has come
        while self._groups and self._pg is pg and not pg.is_busy() and nothing < 2:
            result = pg.get_result()
            group = self._groups[0]
            if result is None:
                nothing += 1
                if group.script and nothing == 1:
                    self._end_script(pg)
                continue
            nothing = 0
            if result.status == pq.ExecStatus.PIPELINE_SYNC:
                self._complete(self._groups.popleft())
                if self._held_back:
                    self._release_held_back()
            elif group.take(result) and group.prepared is not None:
                self.prepared.discard(group.prepared)

    def _end_script(self, pg: pq.abc.PGconn) -> None:
        """The script is answered: back to pipeline mode, and out with what waited for it."""
        try:
            pg.enter_pipeline_mode()
        except psycopg.Error as e:
            self._drop(str(e))
            return
        self._complete(self._groups.popleft())
        self._release_held_back()

    def _complete(self, group: Group) -> None:
        if group.error is not None:
            group.finish(failure.Failure(group.error))
            return
        try:
            value = group.read(group.answer, self._loader)
        except Exception:
            group.finish(failure.Failure())
            return
        group.finish(value)

    def doWrite(self) -> None:  # noqa: N802 - IWriteDescriptor
        """The socket takes more of what libpq has to send."""
        pg = self._pg
        try:
            if pg is None or not pg.flush():
                self.reactor.removeWriter(self)
        except psycopg.Error as e:
            self._drop(str(e))

    def connectionLost(self, reason: failure.Failure) -> None:
        """The reactor saw the socket fail or hang up."""
        why = self._pg.get_error_message() if self._pg is not None else ""
        self._drop(why or reason.getErrorMessage())

    def _drop(self, why: str, then: _State = _State.DOWN) -> None:
        """End the session: fail what is in flight with ``why``. A connection left DOWN (its
        server lost) connects again in the background; a CLOSED one never does."""
        was = self._state
        if was is not _State.CLOSED:
            self._state = then
        if was is not _State.READY:
            return
        self._why_down = " ".join(why.split()) or "the server closed the connection"
        self.reactor.removeReader(self)
        self.reactor.removeWriter(self)
        if self._watched is not None:
            os.close(self._watched)
            self._watched = None
        if self._pg is not None:
            self._pg.finish()
            self._pg = None
        self._begin_deferred = False
        lost = failure.Failure(ConnectionLost(self._why_down))
        groups, held_back = list(self._groups), list(self._held_back)
        self._groups.clear()
        self._held_back.clear()
        for group in groups:
            group.finish(lost)
        for _, go in held_back:  # not sent: each fails as a send on a lost connection does
            go()
        self.end_transaction()  # the transaction went with the session
        self.reconnect_in_background()


def reconnect_delays() -> Iterator[float]:
    """The waits between reconnection attempts: at once, then 0.2 s doubling up to 5 s."""
    delay = 0.0
    while True:
        yield delay
        delay = min(max(delay * 2, 0.2), MAX_RECONNECT_DELAY)


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


def _ignore_notice(notice: pq.abc.PGresult) -> None:
    """Drop a server notice (``... already exists, skipping``): the farm has no use for them."""
