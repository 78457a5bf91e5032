"""The SQLite backend: the embedded default, one file, one writer at a time.

sqlite3 blocks, so every call runs on the reactor's thread pool (``thd_*`` functions);
a DeferredLock keeps one transaction at a time on the writing connection. A lone ``SELECT``
on a database file skips that queue: it runs in one thread-pool call on a second, read-only
connection, which WAL lets read while the writer writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Awaitable, Iterator
from typing import Any, Callable, TypeVar
from urllib.parse import quote

from twisted.internet import defer
from twisted.python import log

from buildbot_farm.db._api import (
    SQLITE_DIALECT,
    Database,
    NotifyCallback,
    Params,
    Row,
    Subscription,
    Transaction,
)
from buildbot_farm.db._errors import DatabaseUnavailable, IntegrityError, NoDatabase
from buildbot_farm.db._url import MEMORY, DatabaseURL
from buildbot_farm.thread_pool import in_thread

T = TypeVar("T")

BUSY_TIMEOUT_SECONDS = 30.0


def split_script(script: str) -> list[str]:
    """Split a SQL script into complete statements (trigger bodies stay whole)."""
    statements: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\n;"):
                statements.append(pending.strip())
            pending = ""
    if pending.strip(" \t\n;"):
        statements.append(pending.strip())
    return statements


def sha256_hex(text: str | bytes | None) -> str | None:
    """SQL ``farm_sha256(x)``: sha256 of x (text as UTF-8) in hex; the build records' chain."""
    if text is None:
        return None
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


class _SqliteTransaction(Transaction):
    dialect = SQLITE_DIALECT

    def __init__(self, database: SqliteDatabase, reactor: Any) -> None:
        self._database = database
        self._reactor = reactor
        self.notifications: list[tuple[str, str]] = []

    async def execute(self, sql: str, params: Params = ()) -> int:
        return await in_thread(self._reactor, self._database.thd_execute, sql, params)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return await in_thread(self._reactor, self._database.thd_fetchall, sql, params)

    async def executescript(self, script: str) -> None:
        for statement in split_script(script):
            await self.execute(statement)

    async def notify(self, channel: str, payload: str = "") -> None:
        self.notifications.append((channel, payload))


class _LocalSubscription(Subscription):
    def __init__(self, listeners: list[NotifyCallback], callback: NotifyCallback) -> None:
        self._listeners = listeners
        self._callback = callback

    async def cancel(self) -> None:
        if self._callback in self._listeners:
            self._listeners.remove(self._callback)


class SqliteDatabase(Database):
    """The farm database in one SQLite file (or in memory, for tests).

    ``reactor`` supplies the thread pool the blocking calls run on; under Buildbot's test
    reactor that pool runs them synchronously, so tests need no real threads. With
    ``create`` False a missing file is ``NoDatabase`` and an existing one keeps its journal
    mode: for looking at a database without making or changing one.
    """

    dialect = SQLITE_DIALECT

    def __init__(self, url: DatabaseURL, reactor: Any, create: bool = True) -> None:
        self.url = url
        self._create = create
        self._reactor = reactor
        self._lock = defer.DeferredLock()
        self._connection: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()
        self._listeners: defaultdict[str, list[NotifyCallback]] = defaultdict(list)

    async def start(self) -> None:
        """Open the database file, creating it if it does not exist (and ``create``)."""
        if self._connection is None:
            self._connection = await in_thread(self._reactor, self.thd_connect)
        if self._reader is None and self.url.path != MEMORY:
            self._reader = await in_thread(self._reactor, self.thd_connect_reader)

    async def stop(self) -> None:
        """Close the file once the running transaction has finished."""
        await self._lock.acquire()
        try:
            if self._reader is not None:
                reader, self._reader = self._reader, None
                await in_thread(self._reactor, self._thd_close_reader, reader)
            if self._connection is not None:
                connection, self._connection = self._connection, None
                await in_thread(self._reactor, connection.close)
        finally:
            self._lock.release()

    def thd_connect(self) -> sqlite3.Connection:
        """Open the connection (blocking): WAL journal, foreign keys on, a busy timeout."""
        path = self.url.path
        target, existing_only = path, not self._create and path != MEMORY
        if existing_only:
            if not os.path.isfile(path):
                raise NoDatabase(f"there is no farm database at {path}: no such file")
            target = f"file:{quote(path)}?mode=rw"  # never creates the file
        elif path != MEMORY:
            directory = os.path.dirname(path) or "."
            if not os.path.isdir(directory):
                raise DatabaseUnavailable(
                    f"cannot open the farm database {path}: the directory {directory} "
                    f"does not exist; create it or change db_url"
                )
            # Private from the start (SQLite gives its -wal and -shm files the same mode):
            # it holds leases' agent secrets, and buildlets may run on this machine.
            with contextlib.suppress(OSError):  # there already, or sqlite3 says why not
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            connection = sqlite3.connect(
                target, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None,
                check_same_thread=False, uri=existing_only,
            )
            connection.row_factory = sqlite3.Row
            if path != MEMORY and not existing_only:
                connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA foreign_keys=ON")
            connection.create_function("farm_sha256", 1, sha256_hex, deterministic=True)
        except sqlite3.Error as e:
            raise DatabaseUnavailable(
                f"cannot open the farm database {path}: {e}; check that the master may "
                f"read and write that file and its directory"
            ) from e
        return connection

    def thd_connect_reader(self) -> sqlite3.Connection:
        """Open the read-only connection of lone queries (blocking), after :meth:`thd_connect`."""
        try:
            reader = sqlite3.connect(
                self.url.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None,
                check_same_thread=False,
            )
            reader.row_factory = sqlite3.Row
            reader.execute("PRAGMA query_only=ON")
        except sqlite3.Error as e:
            raise DatabaseUnavailable(
                f"cannot open the farm database {self.url.path} for reading: {e}"
            ) from e
        return reader

    def _thd_close_reader(self, reader: sqlite3.Connection) -> None:
        with self._reader_lock:  # a read still running finishes first
            reader.close()

    def _require_connection(self) -> sqlite3.Connection:
        if self._connection is None:
            raise DatabaseUnavailable(
                f"the farm database {self.url.text} is not open (the farm service is stopped)"
            )
        return self._connection

    def thd_execute(self, sql: str, params: Params) -> int:
        """Run one statement (blocking); return its row count."""
        with _translated_errors(self.url):
            return self._require_connection().execute(sql, tuple(params)).rowcount

    def thd_fetchall(self, sql: str, params: Params) -> list[Row]:
        """Run one query (blocking); return its rows as dicts."""
        with _translated_errors(self.url):
            cursor = self._require_connection().execute(sql, tuple(params))
            return [dict(row) for row in cursor.fetchall()]

    def thd_read(self, sql: str, params: Params) -> list[Row]:
        """Run one query on the read-only connection (blocking); return its rows as dicts."""
        with self._reader_lock, _translated_errors(self.url):
            reader = self._reader
            if reader is None:
                raise DatabaseUnavailable(
                    f"the farm database {self.url.text} is not open (the farm service is stopped)"
                )
            return [dict(row) for row in reader.execute(sql, tuple(params))]

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        """Run one query: a lone ``SELECT`` in one call on the read-only connection.

        It sees every committed transaction, like a query in a transaction of its own,
        without waiting for the running one. Other statements, and the queries of an
        in-memory database (which has no second connection), queue for a transaction.
        """
        if self._reader is not None and sql.lstrip()[:6].upper() == "SELECT":
            return await in_thread(self._reactor, self.thd_read, sql, params)
        return await super().fetchall(sql, params)

    async def transaction(self, fn: Callable[[Transaction], Awaitable[T]]) -> T:
        """Run ``fn`` in a ``BEGIN IMMEDIATE`` transaction, one transaction at a time."""
        await self._lock.acquire()
        try:
            txn = _SqliteTransaction(self, self._reactor)
            await in_thread(self._reactor, self._thd_begin)
            try:
                result = await fn(txn)
                await in_thread(self._reactor, self.thd_execute, "COMMIT", ())
            except Exception:
                # Not BaseException: a coroutine being closed (GeneratorExit) may not await;
                # the transaction it leaves open is rolled back by the next _thd_begin.
                await in_thread(self._reactor, self._thd_rollback)
                raise
        finally:
            self._lock.release()
        for channel, payload in txn.notifications:
            self._deliver(channel, payload)
        return result

    def _thd_begin(self) -> None:
        self._thd_rollback()
        self.thd_execute("BEGIN IMMEDIATE", ())

    def _thd_rollback(self) -> None:
        connection = self._connection
        if connection is not None and connection.in_transaction:
            connection.execute("ROLLBACK")

    def _deliver(self, channel: str, payload: str) -> None:
        for callback in list(self._listeners.get(channel, ())):
            try:
                callback(payload)
            except Exception:
                log.err(None, f"farm database: listener of {channel!r} failed")

    async def listen(self, channel: str, callback: NotifyCallback) -> Subscription:
        """Register ``callback``; it hears notifications committed by this process."""
        listeners = self._listeners[channel]
        listeners.append(callback)
        return _LocalSubscription(listeners, callback)


@contextlib.contextmanager
def _translated_errors(url: DatabaseURL) -> Iterator[None]:
    """Turn sqlite3's errors into the farm database's own where a caller can act on them."""
    try:
        yield
    except sqlite3.IntegrityError as e:
        raise IntegrityError(str(e)) from e
    except sqlite3.OperationalError as e:
        if "locked" not in str(e):
            raise
        raise DatabaseUnavailable(
            f"the farm database {url.path} stayed locked by another process for "
            f"{BUSY_TIMEOUT_SECONDS:.0f} s: {e}"
        ) from e
