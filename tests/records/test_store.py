"""Records in the farm database on both backends: the immutability triggers and the store."""

from __future__ import annotations

import pytest
import pytest_twisted

from buildbot_farm import db
from buildbot_farm.records.model import BuildRecord
from buildbot_farm.records.store import (
    AlreadyDeleted,
    BadCursor,
    NoSuchRecord,
    Query,
    RecordExists,
    RecordStore,
)


def record(version: str, timestamp: float = 1000.0, commit: str | None = None) -> BuildRecord:
    """A minimal valid record of 'app'."""
    source = {"repository": "https://github.com/o/app", "commit": commit} if commit else None
    return BuildRecord(name="app", version=version, timestamp=timestamp, source=source)


@pytest_twisted.ensureDeferred
async def test_the_database_refuses_to_update_or_delete_a_record(database: db.Database) -> None:
    """Plain SQL UPDATE and DELETE of a record fail with IntegrityError; the row is unchanged.

    (Every row stored since migration 0007 carries its chain entry: one without is refused.)
    """
    unchained = (
        "INSERT INTO farm_records (name, version, timestamp, result, body, recorded_at{})"
        " VALUES ('app', '1', 1, 'success', '{{}}', 1{})"
    )
    for columns, values in (("", ""), (", chain_seq", ", 1"), (", hash", ", 'h'")):
        with pytest.raises(db.IntegrityError, match=r"not chained|not-null"):
            await database.execute(unchained.format(columns, values))
    await database.execute(unchained.format(", chain_seq, hash", ", 1, 'h'"))
    with pytest.raises(db.IntegrityError, match="immutable"):
        await database.execute("UPDATE farm_records SET body = '{\"forged\": 1}'")
    with pytest.raises(db.IntegrityError, match="immutable"):
        await database.execute("DELETE FROM farm_records")
    assert await database.fetchall("SELECT name, body FROM farm_records") == [
        {"name": "app", "body": "{}"}
    ]


@pytest_twisted.ensureDeferred
async def test_tombstones_are_immutable_and_records_unique(database: db.Database) -> None:
    """A second (name, version) row and any change to a tombstone are refused by the database."""
    insert = (
        "INSERT INTO farm_records (name, version, timestamp, result, body, recorded_at,"
        " chain_seq, hash) VALUES ('app', '1', 1, 'success', '{}', 1, 1, 'h')"
    )
    await database.execute(insert)
    with pytest.raises(db.IntegrityError):
        await database.execute(insert)
    row = await database.fetchone("SELECT id FROM farm_records")
    assert row is not None
    await database.execute(
        "INSERT INTO farm_record_tombstones (record_id, deleted_by, deleted_at, reason,"
        " chain_seq, hash) VALUES (?, 'ops', 2, 'why', 2, 'i')",
        (row["id"],),
    )
    with pytest.raises(db.IntegrityError, match="immutable"):
        await database.execute("UPDATE farm_record_tombstones SET reason = 'rewritten'")
    with pytest.raises(db.IntegrityError, match="immutable"):
        await database.execute("DELETE FROM farm_record_tombstones")


@pytest_twisted.ensureDeferred
async def test_store_refuses_duplicates_and_tombstones_once(database: db.Database) -> None:
    """insert() raises RecordExists for a duplicate; delete() buries a record exactly once."""
    store = RecordStore(database)
    document = await store.insert(record("1"), now=5)
    with pytest.raises(RecordExists):
        await store.insert(record("1", timestamp=2000), now=6)
    stored = await store.get("app", "1")
    assert stored is not None
    assert stored.document == document
    assert stored.tombstone is None
    tombstone = await store.delete("app", "1", by="ops", reason="bad build", now=7)
    deleted = await store.get("app", "1")
    assert deleted is not None
    assert deleted.tombstone == tombstone
    with pytest.raises(AlreadyDeleted):
        await store.delete("app", "1", by="ops", reason="again", now=8)
    with pytest.raises(NoSuchRecord):
        await store.delete("app", "9", by="ops", reason="none", now=8)


@pytest_twisted.ensureDeferred
async def test_listing_pages_with_a_cursor_and_filters(database: db.Database) -> None:
    """Pages come newest first, the cursor continues without repeats, and filters narrow them."""
    store = RecordStore(database)
    for n in range(5):
        await store.insert(record(str(n), timestamp=100.0 * n, commit=f"c{n % 2}"), now=n)
    seen, cursor = [], None
    while True:
        page, cursor = await store.list(Query(), limit=2, cursor=cursor)
        seen += [p.document for p in page]
        if cursor is None:
            break
    assert len(seen) == 5
    assert seen[0] == record("4", 400.0, "c0").document()
    since, _ = await store.list(Query(since=200, until=400), limit=10)
    assert len(since) == 2
    by_commit, _ = await store.list(Query(commit="c1"), limit=10)
    assert len(by_commit) == 2
    with pytest.raises(BadCursor):
        await store.list(Query(), limit=2, cursor="not-a-cursor")
