"""The one asynchronous database interface every backend implements.

SQL is written once, with ``?`` placeholders, and runs on both backends. What differs
between dialects (row locking for claims) is spelled by :class:`Dialect`.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from buildbot_farm.db._url import DatabaseURL

T = TypeVar("T")
Row = dict[str, Any]
Params = Sequence[Any]
NotifyCallback = Callable[[str], None]


@dataclass(frozen=True)
class Dialect:
    """What differs between the SQL of the two backends.

    ``skip_locked`` is appended to a ``SELECT`` that claims rows: on PostgreSQL it is
    ``FOR UPDATE SKIP LOCKED``, so concurrent claimers never get the same row. ``for_update``
    is appended to a ``SELECT`` whose rows the transaction will update (``FOR UPDATE``). On
    SQLite both are empty: a SQLite write transaction already excludes every other writer.
    """

    name: str
    skip_locked: str
    for_update: str


SQLITE_DIALECT = Dialect(name="sqlite", skip_locked="", for_update="")
POSTGRESQL_DIALECT = Dialect(
    name="postgresql", skip_locked=" FOR UPDATE SKIP LOCKED", for_update=" FOR UPDATE"
)


class Transaction(abc.ABC):
    """One open transaction; handed to the function given to :meth:`Database.transaction`."""

    dialect: Dialect

    @abc.abstractmethod
    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; return the number of rows it changed."""

    @abc.abstractmethod
    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        """Run one query; return its rows as dicts keyed by column name."""

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        """Run one query; return its first row, or None when it has none."""
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def fetchall_prepared(self, name: str, sql: str, params: Params = ()) -> list[Row]:
        """:meth:`fetchall` for a query run very often, as :meth:`Database.execute_prepared`."""
        return await self.fetchall(sql, params)

    @abc.abstractmethod
    async def executescript(self, script: str) -> None:
        """Run several ``;``-separated statements with no parameters (migrations)."""

    @abc.abstractmethod
    async def notify(self, channel: str, payload: str = "") -> None:
        """Wake the listeners of ``channel`` with ``payload`` once this transaction commits."""


class Subscription(abc.ABC):
    """A listener registered with :meth:`Database.listen`."""

    @abc.abstractmethod
    async def cancel(self) -> None:
        """Stop delivering notifications to this listener."""


class Database(abc.ABC):
    """The farm database: one asynchronous API over SQLite or PostgreSQL.

    Call :meth:`start` before use and :meth:`stop` at the end. Everything else is a
    coroutine; errors are the ones in :mod:`buildbot_farm.db` (``DatabaseUnavailable`` when
    the server cannot be reached, ``IntegrityError`` when a constraint refuses a change).
    """

    url: DatabaseURL
    dialect: Dialect

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect; raise ``DatabaseUnavailable`` with the reason when that is impossible."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Close every connection; safe to call twice."""

    @abc.abstractmethod
    async def transaction(self, fn: Callable[[Transaction], Awaitable[T]]) -> T:
        """Run ``fn`` in one transaction: committed if it returns, rolled back if it raises.

        Keep ``fn`` to database work: on SQLite, transactions run one at a time.
        """

    @abc.abstractmethod
    async def listen(self, channel: str, callback: NotifyCallback) -> Subscription:
        """Call ``callback(payload)`` for each notification on ``channel`` from now on.

        On PostgreSQL this is LISTEN/NOTIFY and reaches every master sharing the database;
        on SQLite notifications reach the listeners of this process only.
        """

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement in its own transaction; return the number of rows it changed."""

        async def run(txn: Transaction) -> int:
            return await txn.execute(sql, params)

        return await self.transaction(run)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        """Run one query in its own transaction; return its rows."""

        async def run(txn: Transaction) -> list[Row]:
            return await txn.fetchall(sql, params)

        return await self.transaction(run)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        """Run one query in its own transaction; return its first row or None."""
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def execute_prepared(self, name: str, sql: str, params: Params = ()) -> int:
        """:meth:`execute` for a statement run very often: kept planned where that pays.

        ``name`` identifies ``sql`` (always the same text for a name). PostgreSQL prepares it
        once per connection, so later calls skip parsing and planning; SQLite's statement
        cache does that already.
        """
        return await self.execute(sql, params)

    async def fetchall_prepared(self, name: str, sql: str, params: Params = ()) -> list[Row]:
        """:meth:`fetchall` for a query run very often, prepared as :meth:`execute_prepared`."""
        return await self.fetchall(sql, params)


@functools.lru_cache(maxsize=1024)
def qmark_to_numbered(sql: str) -> tuple[str, int]:
    """``?`` placeholders as PostgreSQL's ``$1``, ``$2`` ...; and their count."""
    out: list[str] = []
    quote, count = "", 0
    for char in sql:
        if quote:
            quote = "" if char == quote else quote
        elif char in ("'", '"'):
            quote = char
        elif char == "?":
            count += 1
            out.append(f"${count}")
            continue
        out.append(char)
    return "".join(out), count
