"""Numbered, forward-only schema migrations, recorded in ``farm_schema_version``.

Migrations live in ``migrations/NNNN_name.sql``; where the dialects differ, a migration is
written twice as ``NNNN_name.sqlite.sql`` and ``NNNN_name.postgresql.sql``. Everything
pending is applied in one transaction, so a failed upgrade leaves the database as it was.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Callable

from buildbot_farm.db._api import Database, Transaction
from buildbot_farm.db._errors import SchemaTooNew

VERSION_TABLE = "farm_schema_version"
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+?)(?:\.(sqlite|postgresql))?\.sql$")
# One number for every farm master: pg_advisory_xact_lock serialises concurrent upgrades.
_ADVISORY_LOCK = 0x0FA12B0B


@dataclass(frozen=True)
class Migration:
    """One schema step: its number, its name and the SQL for one dialect."""

    version: int
    name: str
    sql: str


def load_migrations(dialect: str, package: str = "buildbot_farm.db.migrations") -> list[Migration]:
    """Read the migrations of ``dialect`` in order; a gap or a duplicate is a packaging bug."""
    chosen: dict[int, tuple[str, str, str | None]] = {}
    names: dict[int, str] = {}
    for entry in resources.files(package).iterdir():
        match = _FILE.match(entry.name)
        if not match:
            continue
        number, name, only_for = int(match[1]), match[2], match[3]
        if names.setdefault(number, name) != name:  # a dialect's file would hide the other
            raise RuntimeError(
                f"two migrations are numbered {number:04d} in {package}:"
                f" {names[number]!r} and {name!r}"
            )
        if only_for not in (None, dialect):
            continue
        if number in chosen and (chosen[number][2] is not None) == (only_for is not None):
            raise RuntimeError(f"two migrations are numbered {number:04d} in {package}")
        if number not in chosen or only_for is not None:
            chosen[number] = (name, entry.read_text(encoding="utf-8"), only_for)
    versions = sorted(chosen)
    if versions != list(range(1, len(versions) + 1)):
        raise RuntimeError(f"migrations in {package} are not numbered 1..N: {versions}")
    return [Migration(v, chosen[v][0], chosen[v][1]) for v in versions]


async def current_version(txn: Transaction | Database) -> int:
    """The schema version recorded in the database (0 when it was never migrated)."""
    row = await txn.fetchone(f"SELECT MAX(version) AS version FROM {VERSION_TABLE}")
    return int(row["version"]) if row and row["version"] is not None else 0


async def applied_migrations(database: Database) -> list[tuple[int, str]]:
    """The migrations recorded in the database, oldest first: ``(version, name)``.

    Fails as the backend does (each words it differently) when there is no version table.
    """
    rows = await database.fetchall(f"SELECT version, name FROM {VERSION_TABLE} ORDER BY version")
    return [(int(row["version"]), str(row["name"])) for row in rows]


async def migrate(
    database: Database, now: Callable[[], float], migrations: list[Migration] | None = None
) -> int:
    """Bring the database up to the newest migration; return the version it is at.

    Raises :class:`SchemaTooNew` when the database was upgraded by a newer buildbot_farm.
    """
    steps = migrations if migrations is not None else load_migrations(database.dialect.name)
    latest = steps[-1].version if steps else 0

    async def upgrade(txn: Transaction) -> int:
        if txn.dialect.name == "postgresql":
            await txn.execute("SELECT pg_advisory_xact_lock(?)", (_ADVISORY_LOCK,))
        await txn.execute(
            f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} ("
            " version INTEGER PRIMARY KEY,"
            " name TEXT NOT NULL,"
            " applied_at DOUBLE PRECISION NOT NULL)"
        )
        version = await current_version(txn)
        if version > latest:
            raise SchemaTooNew(
                f"the farm database is at schema version {version}, but this buildbot_farm "
                f"knows versions up to {latest} only: it was upgraded by a newer buildbot_farm. "
                f"Install that version (or newer), or point db_url at another database"
            )
        for step in steps[version:]:
            await txn.executescript(step.sql)
            await txn.execute(
                f"INSERT INTO {VERSION_TABLE} (version, name, applied_at) VALUES (?, ?, ?)",
                (step.version, step.name, now()),
            )
        return latest

    return await database.transaction(upgrade)
