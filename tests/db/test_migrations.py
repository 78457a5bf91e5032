"""Schema migrations on both backends: upgrade, idempotence, refusal of newer, atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytest_twisted

from buildbot_farm import db
from buildbot_farm.records.chain import served_entry, verify_entries
from buildbot_farm.records.model import BuildRecord
from buildbot_farm.records.store import RecordStore
from tests.db.conftest import DbUrlFactory
from tests.harness.twisted_reactor import reactor


def test_packaged_migrations_are_numbered_from_one() -> None:
    """Each dialect sees migrations numbered 1..N, with the dialect's own file where one exists."""
    for dialect in ("sqlite", "postgresql"):
        versions = [m.version for m in db.load_migrations(dialect)]
        assert versions == list(range(1, len(versions) + 1))


def test_migrations_of_one_number_must_be_one_migration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dialect's own file of a number may stand in for that number's generic file, but a
    generic file and another migration's dialect files under one number are refused (the
    dialect's file would silently hide the other migration on that dialect)."""
    package = tmp_path / "clashing_migrations"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "0001_first.sql").write_text("SELECT 1;")
    (package / "0002_second.sql").write_text("SELECT 2;")
    (package / "0002_second.sqlite.sql").write_text("SELECT 2;")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert [m.name for m in db.load_migrations("sqlite", "clashing_migrations")] == [
        "first", "second"]
    (package / "0002_other.postgresql.sql").write_text("SELECT 3;")
    for dialect in ("sqlite", "postgresql"):
        with pytest.raises(RuntimeError, match="two migrations are numbered 0002"):
            db.load_migrations(dialect, "clashing_migrations")


@pytest_twisted.ensureDeferred
async def test_empty_database_is_upgraded_to_the_newest_version(
    backend: str, db_url_for: DbUrlFactory
) -> None:
    """connect() on an empty database creates every table and records every version."""
    database = await db.connect(db_url_for(backend), reactor)
    rows = await database.fetchall("SELECT version, name FROM farm_schema_version ORDER BY 1")
    newest = db.load_migrations(backend)
    assert rows == [{"version": m.version, "name": m.name} for m in newest]
    assert await db.applied_migrations(database) == [(m.version, m.name) for m in newest]
    assert await db.current_version(database) == newest[-1].version
    assert await database.fetchall("SELECT * FROM farm_masters") == []
    assert await db.migrate(database, now=reactor.seconds) == newest[-1].version
    await database.stop()


@pytest_twisted.ensureDeferred
async def test_a_newer_database_is_refused(backend: str, db_url_for: DbUrlFactory) -> None:
    """A database at a version this code does not know refuses to start, saying what to do."""
    url = db_url_for(backend)
    database = await db.connect(url, reactor)
    await database.execute(
        "INSERT INTO farm_schema_version (version, name, applied_at) VALUES (999, 'future', 0)"
    )
    await database.stop()
    with pytest.raises(db.SchemaTooNew, match=r"schema version 999.*Install that version"):
        await db.connect(url, reactor)


@pytest_twisted.ensureDeferred
async def test_a_failing_migration_applies_nothing(backend: str, db_url_for: DbUrlFactory) -> None:
    """When one pending migration fails, the earlier ones in the same upgrade are undone too."""
    database = db.open_database(db.parse_db_url(db_url_for(backend)), reactor)
    await database.start()
    steps = [
        db.Migration(1, "good", "CREATE TABLE first_step (n INTEGER);"),
        db.Migration(2, "bad", "CREATE TABLE second_step (n INTEGER); SELECT * FROM missing;"),
    ]
    with pytest.raises(Exception, match="missing"):
        await db.migrate(database, now=reactor.seconds, migrations=steps)
    with pytest.raises(Exception, match="first_step"):
        await database.fetchall("SELECT * FROM first_step")
    assert await db.migrate(database, now=reactor.seconds, migrations=steps[:1]) == 1
    assert await database.fetchall("SELECT * FROM first_step") == []
    await database.stop()


def test_sqlite_scripts_split_into_whole_statements() -> None:
    """Statements sharing a line are split apart, and a trigger body stays one statement."""
    from buildbot_farm.db._sqlite import split_script

    script = """CREATE TABLE a (n INTEGER); CREATE TABLE b (n INTEGER);
CREATE TRIGGER keep BEFORE UPDATE ON a BEGIN SELECT RAISE(ABORT, 'no; never'); END;
"""
    statements = split_script(script)
    assert len(statements) == 3
    assert statements[2].startswith("CREATE TRIGGER")
    assert statements[2].endswith("END;")


@pytest_twisted.ensureDeferred
async def test_records_stored_before_0006_are_chained_and_protected(
    backend: str, db_url_for: DbUrlFactory
) -> None:
    """0006 on records of 0005: they are chained once (id order, then tombstones), and kept."""
    database = db.open_database(db.parse_db_url(db_url_for(backend)), reactor)
    await database.start()
    steps = db.load_migrations(backend)
    assert await db.migrate(database, now=reactor.seconds, migrations=steps[:5]) == 5
    for version in ("1", "2"):
        body = BuildRecord(name="old", version=version, timestamp=1.0).document().decode()
        await database.execute(
            "INSERT INTO farm_records (name, version, timestamp, result, body, recorded_at)"
            " VALUES ('old', ?, 1, 'success', ?, 1)",
            (version, body),
        )
    await database.execute(
        "INSERT INTO farm_record_tombstones (record_id, deleted_by, deleted_at, reason)"
        " SELECT id, 'ops', 2.5, 'why' FROM farm_records WHERE version = '1'"
    )
    assert await db.migrate(database, now=reactor.seconds, migrations=steps) == len(steps)
    with pytest.raises(db.IntegrityError, match=r"immutable|chained"):
        await database.execute(  # with a chain entry: the upsert itself is what is refused
            "INSERT INTO farm_records (name, version, timestamp, result, body, recorded_at,"
            " chain_seq, hash) VALUES ('old', '1', 1, 'success', '{}', 1, 99, 'h')"
            " ON CONFLICT (name, version) DO UPDATE SET body = excluded.body"
        )
    store = RecordStore(database)
    await store.insert(BuildRecord(name="new", version="1", timestamp=3.0), now=3)
    entries = [json.loads(served_entry(row)) for row in await store.chain(0, 100)]
    assert [(e["seq"], e["kind"], e["name"], e["version"]) for e in entries] == [
        (1, "record", "old", "1"), (2, "record", "old", "2"), (3, "tombstone", "old", "1"),
        (4, "record", "new", "1"),
    ]
    assert verify_entries(entries)[::2] == (4, None)
    # The entries 0006 chained stay in its table, append-only; a removed record is named.
    for statement in ("UPDATE farm_record_chain SET hash = 'x'", "DELETE FROM farm_record_chain"):
        with pytest.raises(db.IntegrityError, match=r"append-only|immutable"):
            await database.execute(statement)
    removed = [{**entries[1], "record": None}, *entries[2:]]
    assert "the record was removed" in str(verify_entries([entries[0], *removed])[2])
    await database.stop()
