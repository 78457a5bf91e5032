"""No DDL of the records' tables on PostgreSQL, where an event trigger can refuse it (issue 14).

Migration 0008 creates the guard when the role migrating is a superuser (the harness's is);
otherwise a superuser runs 0008's file later (docs/records.md), and until then the tables'
owner may alter them.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from urllib.parse import urlsplit, urlunsplit

import psycopg
import psycopg2
import pytest
import pytest_twisted

from buildbot_farm import db
from tests.db.conftest import DbUrlFactory, schema_dsn
from tests.harness.postgres import PostgresCluster
from tests.harness.twisted_reactor import reactor

# What the tables' owner could otherwise do to take the records' immutability away.
REFUSED = [
    "ALTER TABLE farm_records DISABLE TRIGGER farm_records_immutable",
    "ALTER TABLE farm_record_tombstones DISABLE TRIGGER USER",
    "ALTER TABLE farm_records RENAME TO farm_records_old",
    "ALTER TABLE farm_records RENAME COLUMN body TO old_body",
    "ALTER TABLE farm_record_tombstones ADD COLUMN undone BOOLEAN",
    "ALTER TABLE farm_records ENABLE ROW LEVEL SECURITY",
    "DROP TABLE farm_record_tombstones",
    "DROP TABLE farm_records CASCADE",
    "DROP TRIGGER farm_records_immutable ON farm_records",
    "ALTER TRIGGER farm_records_immutable ON farm_records RENAME TO renamed",
    "DROP INDEX farm_records_chain_seq",
    "CREATE RULE keep AS ON UPDATE TO farm_records DO INSTEAD NOTHING",
    "CREATE OR REPLACE FUNCTION farm_refuse_change() RETURNS trigger"
    " LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
    "ALTER FUNCTION farm_refuse_change() RENAME TO harmless",
    "DROP FUNCTION farm_refuse_change() CASCADE",
]


def schema_of(url: str) -> list[tuple[str, str, str]]:
    """The records tables' columns and triggers (with whether each is enabled) (blocking)."""
    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT 'column', table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name LIKE 'farm\\_record%'"
            " UNION ALL SELECT 'trigger', tgname, tgenabled::text FROM pg_trigger"
            " WHERE NOT tgisinternal AND tgname LIKE 'farm\\_record%' ORDER BY 1, 2, 3"
        )
        rows = [(str(a), str(b), str(c)) for a, b, c in cursor.fetchall()]
    connection.close()
    return rows


def as_role(dsn: str, role: str) -> str:
    """``dsn`` with ``role`` as its user (the harness trusts every local role)."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(netloc=f"{role}@{parts.netloc.split('@', 1)[1]}"))


def run(url: str, statement: str) -> None:
    """Run ``statement`` on its own connection, in autocommit (blocking)."""
    connection = psycopg2.connect(url)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()


@pytest_twisted.ensureDeferred
async def test_alter_and_drop_of_the_records_tables_are_refused(
    db_url_for: DbUrlFactory,
) -> None:
    """Every DDL in REFUSED is refused and changes nothing; GRANT and other DDL pass."""
    url = db_url_for("postgresql")
    database = await db.connect(url, reactor, pool_size=2, timeout=10.0)
    before = schema_of(url)
    assert ("trigger", "farm_records_immutable", "O") in before
    for statement in REFUSED:
        with pytest.raises(db.IntegrityError, match=r"build records are immutable: .* refused"):
            await database.execute(statement)
    assert schema_of(url) == before
    await database.execute("GRANT SELECT ON farm_records TO PUBLIC")
    await database.execute("REVOKE SELECT ON farm_records FROM PUBLIC")
    await database.execute("CREATE TABLE unrelated (n INTEGER)")
    await database.execute("DROP TABLE unrelated")
    await database.stop()


@pytest_twisted.ensureDeferred
async def test_a_farm_role_that_is_no_superuser_is_refused_once_a_superuser_ran_0008(
    pg_cluster_factory: Callable[[], PostgresCluster],
) -> None:
    """Migrated by a plain role, the owner may alter its tables until a superuser runs 0008.

    After that the owner's ALTER and DROP are refused, and it cannot remove the guard.
    """
    cluster = pg_cluster_factory()
    superuser = cluster.create_database("farm")
    run(superuser, "CREATE ROLE farm_master LOGIN")
    run(superuser, "GRANT CREATE ON DATABASE farm TO farm_master")
    owner = schema_dsn(as_role(superuser, "farm_master"), "farm_owned")  # created by it
    database = await db.connect(owner, reactor, pool_size=2, timeout=10.0)
    await database.execute("ALTER TABLE farm_records DISABLE TRIGGER farm_records_immutable")
    await database.execute("ALTER TABLE farm_records ENABLE TRIGGER farm_records_immutable")
    guard = resources.files("buildbot_farm.db.migrations").joinpath(
        "0008_records_ddl_guard.postgresql.sql"
    ).read_text()
    run(superuser, f"SET search_path = farm_owned; {guard}")
    for statement in REFUSED:
        with pytest.raises(db.IntegrityError, match="build records are immutable"):
            await database.execute(statement)
    for statement in (
        "DROP EVENT TRIGGER farm_records_no_ddl",
        "ALTER EVENT TRIGGER farm_records_no_drop DISABLE",
        "DROP FUNCTION farm_records_guard.refuse_ddl() CASCADE",
        "DELETE FROM farm_records_guard.schemas",
    ):
        with pytest.raises(psycopg.Error, match=r"must be owner|permission denied"):
            await database.execute(statement)
    await database.stop()
