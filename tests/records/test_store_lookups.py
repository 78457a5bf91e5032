"""RecordStore.get under load, on both backends: lookups that wait together share a query."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer

from buildbot_farm import db
from buildbot_farm.records.model import BuildRecord
from buildbot_farm.records.store import RecordStore, Tombstone


@pytest_twisted.ensureDeferred
async def test_concurrent_lookups_each_get_their_own_record(database: db.Database) -> None:
    """Concurrent gets of present, missing, deleted and repeated keys each get the right answer."""
    store = RecordStore(database)
    for version in ("1", "2", "3"):
        await store.insert(BuildRecord(name="app", version=version, timestamp=1.0), 5.0)
    await store.insert(BuildRecord(name="lib", version="1", timestamp=2.0), 5.0)
    await store.delete("app", "3", "ops", "bad build", 9.0)
    keys = [("app", "1"), ("lib", "1"), ("app", "9"), ("app", "3"), ("app", "2"), ("app", "1")]
    answers = await defer.gatherResults(
        [defer.ensureDeferred(store.get(name, version)) for name, version in keys]
    )
    documents = [None if a is None else (a.document, a.tombstone) for a in answers]

    def document(name: str, version: str, timestamp: float = 1.0) -> bytes:
        return BuildRecord(name=name, version=version, timestamp=timestamp).document()

    assert documents == [
        (document("app", "1"), None),
        (document("lib", "1", 2.0), None),
        None,
        (document("app", "3"), Tombstone("ops", 9.0, "bad build")),
        (document("app", "2"), None),
        (document("app", "1"), None),
    ]
