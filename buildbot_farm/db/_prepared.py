"""Prepared statements on txpostgres connections: PREPARE once per connection, then EXECUTE."""

from __future__ import annotations

import weakref
from typing import Any

import psycopg2.errors
from twisted.internet import defer
from txpostgres import txpostgres

from buildbot_farm.db._api import Params, qmark_to_numbered

# The statements prepared on each connection, by name.
_PREPARED: weakref.WeakKeyDictionary[txpostgres.Connection, set[str]] = (
    weakref.WeakKeyDictionary()
)


def run_prepared(
    connection: txpostgres.Connection, name: str, sql: str, params: Params
) -> defer.Deferred[int]:
    """EXECUTE ``name`` in autocommit, after PREPARE where this connection has not got it."""
    prepared = _PREPARED.setdefault(connection, set())
    numbered, count = qmark_to_numbered(sql)
    execute = f"EXECUTE {name}({', '.join(['%s'] * count)})" if count else f"EXECUTE {name}"

    async def execute_on(cursor: txpostgres.Cursor) -> int:
        if name not in prepared:
            await cursor.execute(f"PREPARE {name} AS {numbered}")
            prepared.add(name)
        try:
            await cursor.execute(execute, tuple(params))
        except psycopg2.errors.InvalidSqlStatementName:  # reconnected since
            prepared.discard(name)
            await cursor.execute(f"PREPARE {name} AS {numbered}")
            prepared.add(name)
            await cursor.execute(execute, tuple(params))
        return int(cursor.rowcount)

    def run() -> defer.Deferred[int]:
        cursor = connection.cursor()

        def close_cursor(outcome: Any) -> Any:
            cursor.close()
            return outcome

        return defer.ensureDeferred(execute_on(cursor)).addBoth(close_cursor)

    return connection.detector.callChecking(run)
