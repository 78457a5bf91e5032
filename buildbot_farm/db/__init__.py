"""The farm database: one asynchronous API over SQLite (the default) or PostgreSQL.

``connect(db_url, reactor)`` gives a started :class:`Database` at the newest schema.
SQL uses ``?`` placeholders on both backends; ``database.dialect.skip_locked`` is the
clause that makes concurrent claims safe.
"""

from __future__ import annotations

from typing import Any

from buildbot_farm.db._api import Database, Dialect, Row, Subscription, Transaction
from buildbot_farm.db._errors import (
    DatabaseError,
    DatabaseUnavailable,
    IntegrityError,
    InvalidDatabaseURL,
    NoDatabase,
    SchemaTooNew,
    UnstorableValue,
)
from buildbot_farm.db._migrations import (
    Migration,
    applied_migrations,
    current_version,
    load_migrations,
    migrate,
)
from buildbot_farm.db._url import DatabaseURL, parse_db_url

__all__ = [
    "Database",
    "DatabaseError",
    "DatabaseURL",
    "DatabaseUnavailable",
    "Dialect",
    "IntegrityError",
    "InvalidDatabaseURL",
    "Migration",
    "NoDatabase",
    "Row",
    "SchemaTooNew",
    "Subscription",
    "Transaction",
    "UnstorableValue",
    "applied_migrations",
    "connect",
    "current_version",
    "load_migrations",
    "migrate",
    "open_database",
    "parse_db_url",
]


def open_database(
    url: DatabaseURL,
    reactor: Any,
    pool_size: int = 4,
    timeout: float = 30.0,
    create: bool = True,
) -> Database:
    """Make the backend object for ``url`` (not yet started).

    With ``create`` False, starting it raises ``NoDatabase`` where a SQLite file is missing,
    and leaves an existing file as it is (PostgreSQL never creates a database anyway).
    """
    if url.backend == "sqlite":
        from buildbot_farm.db._sqlite import SqliteDatabase

        return SqliteDatabase(url, reactor, create=create)
    from buildbot_farm.db._postgres import PostgresDatabase

    return PostgresDatabase(url, reactor, pool_size=pool_size, timeout=timeout)


async def connect(
    url: DatabaseURL | str,
    reactor: Any,
    basedir: str = ".",
    pool_size: int = 4,
    timeout: float = 30.0,
) -> Database:
    """Open the farm database at ``url`` and migrate it to the newest schema.

    A relative SQLite path is taken relative to ``basedir``. Raises
    ``DatabaseUnavailable`` when the database cannot be reached and ``SchemaTooNew`` when
    it is newer than this code; in both cases nothing is left open.
    """
    parsed = parse_db_url(url) if isinstance(url, str) else url
    database = open_database(parsed.relative_to(basedir), reactor, pool_size, timeout)
    await database.start()
    try:
        await migrate(database, now=reactor.seconds)
    except BaseException:
        await database.stop()
        raise
    return database
