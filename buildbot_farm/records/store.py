"""All the SQL of build records: insert, look up, list with a cursor, tombstone, chain.

Every insert of a record or a tombstone also appends its entry to the hash chain
(:mod:`buildbot_farm.records.chain`) in the same statement or transaction:
:mod:`buildbot_farm.records.chain_store` keeps concurrent inserts, from several masters on
PostgreSQL, chained one after the other.
"""

from __future__ import annotations

import base64
import json
import weakref
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from buildbot_farm import db
from buildbot_farm.records import chain, chain_store
from buildbot_farm.records.lookups import LookupBatches
from buildbot_farm.records.model import BuildRecord
from buildbot_farm.web import ApiError
from buildbot_farm.web._request import MAX_NUMBER, decode_token


class RecordExists(Exception):
    """A record with the same name and version is already stored (records are never replaced)."""


class NoSuchRecord(Exception):
    """No record has that name and version."""


class AlreadyDeleted(Exception):
    """The record has a tombstone already."""


class BadCursor(ValueError):
    """A paging cursor this server did not hand out."""


@dataclass(frozen=True)
class Tombstone:
    """Who deleted a record, when, and why."""

    deleted_by: str
    deleted_at: float
    reason: str

    def as_json(self) -> dict[str, Any]:
        """The JSON form answered with a deleted record."""
        return {"deletedBy": self.deleted_by, "deletedAt": self.deleted_at, "reason": self.reason}


@dataclass(frozen=True)
class StoredRecord:
    """A record as stored: its canonical JSON document, and its tombstone if deleted."""

    document: bytes
    tombstone: Tombstone | None


@dataclass(frozen=True)
class Query:
    """Filters of a listing; None means no filter."""

    name: str | None = None
    since: float | None = None
    until: float | None = None
    commit: str | None = None
    result: str | None = None
    include_deleted: bool = False


# The databases whose records stored before migration 0006 are chained: the head never
# goes back to "not chained", so each process checks each database once.
_CHAINED: weakref.WeakSet[db.Database] = weakref.WeakSet()

_SELECT = (
    "SELECT r.id, r.name, r.version, r.body, t.deleted_by, t.deleted_at, t.reason"
    " FROM farm_records r LEFT JOIN farm_record_tombstones t ON t.record_id = r.id"
)
# The records of the (name, version) pairs given as two arrays (PostgreSQL).
_GET_MANY = (
    "SELECT r.id, r.name, r.version, r.body, t.deleted_by, t.deleted_at, t.reason"
    " FROM unnest(CAST(? AS TEXT[]), CAST(? AS TEXT[])) AS k (name, version)"
    " JOIN farm_records r ON r.name = k.name AND r.version = k.version"
    " LEFT JOIN farm_record_tombstones t ON t.record_id = r.id"
)

# The body of the record (name, version) and whether it is deleted: the records' own
# read-only SQLite connection runs it on the reactor thread (records.reads).
LIVE_BODY = (
    "SELECT r.body, t.record_id FROM farm_records r"
    " LEFT JOIN farm_record_tombstones t ON t.record_id = r.id"
    " WHERE r.name = ? AND r.version = ?"
)


class RecordStore:
    """Build records in the farm database; insert-only (the database refuses updates).

    Keep one store per database: lookups of single records made while others wait for
    the database are answered together, by one query.
    """

    def __init__(self, database: db.Database) -> None:
        self._database = database
        self._lookups: LookupBatches[tuple[str, str], StoredRecord] = LookupBatches(
            self._get_many
        )

    @property
    def database(self) -> db.Database:
        """The database the records are in."""
        return self._database

    def uses(self, database: db.Database) -> bool:
        """Whether this store keeps its records in ``database``."""
        return self._database is database

    async def insert(
        self, record: BuildRecord, now: float, provenance: bytes | None = None
    ) -> bytes:
        """Store ``record`` (and its signed ``provenance``, if given), chained; return its document.

        The record carries its chain entry (migration 0007; see
        :mod:`buildbot_farm.records.chain_store`), so an insert stays one statement. Raise
        :class:`RecordExists` for a duplicate.
        """
        document = record.document()
        values = (
            record.name, record.version, record.timestamp, record.result, record.commit,
            document.decode(), now,
        )
        envelope = None if provenance is None else provenance.decode()
        if self._database not in _CHAINED:
            await self._chain_older()
        try:
            await chain_store.writer(self._database).insert_record(values, document, envelope)
        except db.IntegrityError as e:
            raise RecordExists(f"{record.name} {record.version} is already recorded") from e
        return document

    async def provenance(self, name: str, version: str) -> bytes | None:
        """The provenance envelope stored with record ``name``/``version``, or None."""
        row = await self._database.fetchone(
            "SELECT p.envelope FROM farm_records r"
            " JOIN farm_record_provenance p ON p.record_id = r.id"
            " WHERE r.name = ? AND r.version = ?",
            (name, version),
        )
        return None if row is None else str(row["envelope"]).encode()

    async def keep_provenance(
        self, name: str, version: str, envelope: bytes, now: float
    ) -> bytes:
        """Store ``envelope`` for a record that has none yet; return the one stored.

        For records stored before provenance was signed at insert (or while no signing key
        was loaded): the first envelope kept is the record's for good.
        """

        async def keep(txn: db.Transaction) -> bytes:
            row = await txn.fetchone(
                "SELECT r.id, p.envelope FROM farm_records r"
                " LEFT JOIN farm_record_provenance p ON p.record_id = r.id"
                " WHERE r.name = ? AND r.version = ?",
                (name, version),
            )
            if row is None:
                raise NoSuchRecord(f"no record {name} {version}")
            if row["envelope"] is not None:
                return str(row["envelope"]).encode()
            await txn.execute(
                "INSERT INTO farm_record_provenance (record_id, envelope, signed_at)"
                " VALUES (?, ?, ?)",
                (row["id"], envelope.decode(), now),
            )
            return envelope

        try:
            return await self._database.transaction(keep)
        except db.IntegrityError:  # another master kept its envelope first
            kept = await self.provenance(name, version)
            if kept is None:
                raise
            return kept

    async def _chain_older(self) -> None:
        """Chain the records stored before the chain existed, once per database."""
        head = await self._database.fetchone(
            "SELECT seq FROM farm_record_chain_head WHERE id = 1"
        )
        if head is not None and int(head["seq"]) < 0:
            await self._database.transaction(_chain_head)
        _CHAINED.add(self._database)

    async def chain(self, after: int, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` chain entries after ``after``, in chain order, with their content.

        Records stored before the chain existed are chained first (once).
        """
        if self._database not in _CHAINED:
            await self._chain_older()
        return await chain_store.chain_page(self._database, after, limit)

    async def get(self, name: str, version: str) -> StoredRecord | None:
        """The record ``name``/``version`` (deleted or not), or None."""
        return await self.lookup(name, version)

    def lookup(self, name: str, version: str) -> defer.Deferred[StoredRecord | None]:
        """:meth:`get` as a Deferred, for callers on the reactor that need no coroutine."""
        return self._lookups.get((name, version))

    async def _get_many(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], StoredRecord]:
        """The records of ``keys`` (name, version) that exist, in one query.

        On PostgreSQL a statement prepared once per connection (one key; or any number, as
        two arrays), so no lookup is parsed and planned again.
        """
        if self._database.dialect.name == "postgresql" and len(keys) == 1:
            rows = await self._database.fetchall_prepared(
                "farm_records_get_one", f"{_SELECT} WHERE r.name = ? AND r.version = ?", keys[0]
            )
        elif self._database.dialect.name == "postgresql":
            rows = await self._database.fetchall_prepared(
                "farm_records_get_many", _GET_MANY,
                ([key[0] for key in keys], [key[1] for key in keys]),
            )
        else:
            wanted = " OR ".join(["(r.name = ? AND r.version = ?)"] * len(keys))
            rows = await self._database.fetchall(
                f"{_SELECT} WHERE {wanted}", [part for key in keys for part in key]
            )
        return {(row["name"], row["version"]): _stored(row) for row in rows}

    async def list(
        self, query: Query, limit: int, cursor: str | None = None
    ) -> tuple[list[StoredRecord], str | None]:
        """A page of records, newest recorded first, and the cursor of the next page (or None)."""
        where: list[str] = []
        params: list[Any] = []
        if cursor is not None:
            where.append("r.id < ?")
            params.append(decode_cursor(cursor))
        for column, op, value in (
            ("r.name", "=", query.name),
            ("r.timestamp", ">=", query.since),
            ("r.timestamp", "<", query.until),
            ("r.source_commit", "=", query.commit),
            ("r.result", "=", query.result),
        ):
            if value is not None:
                where.append(f"{column} {op} ?")
                params.append(value)
        if not query.include_deleted:
            where.append("t.record_id IS NULL")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self._database.fetchall(
            f"{_SELECT}{clause} ORDER BY r.id DESC LIMIT ?", (*params, limit + 1)
        )
        page = rows[:limit]
        more = encode_cursor(int(page[-1]["id"])) if len(rows) > limit else None
        return [_stored(row) for row in page], more

    async def delete(self, name: str, version: str, by: str, reason: str, now: float) -> Tombstone:
        """Tombstone a record; raise :class:`NoSuchRecord` or :class:`AlreadyDeleted`."""

        async def bury(txn: db.Transaction) -> Tombstone:
            seq, prev = await _chain_head(txn)
            row = await txn.fetchone(
                f"{_SELECT} WHERE r.name = ? AND r.version = ?", (name, version)
            )
            if row is None:
                raise NoSuchRecord(f"no record {name} {version}")
            if row["deleted_at"] is not None:
                raise AlreadyDeleted(f"{name} {version} was deleted already")
            content = chain.tombstone_content(by, now, reason)
            digest = chain.entry_hash(prev, chain.TOMBSTONE, name, version, content)
            await txn.execute(
                "INSERT INTO farm_record_tombstones (record_id, deleted_by, deleted_at, reason,"
                " chain_seq, hash) VALUES (?, ?, ?, ?, ?, ?)",
                (row["id"], by, now, reason, seq + 1, digest),
            )
            return Tombstone(by, now, reason)

        try:
            return await self._database.transaction(bury)
        except db.IntegrityError as e:  # a concurrent delete won the race
            raise AlreadyDeleted(f"{name} {version} was deleted already") from e
        finally:
            chain_store.writer(self._database).forget_head()


async def _chain_head(txn: db.Transaction) -> tuple[int, str]:
    """Lock the chain for a tombstone; return its head (seq, hash).

    Records stored before migration 0006 are chained first if they are not yet (0006's
    head row says so), into 0006's table, as 0006 did.
    """
    entry = await chain_store.lock_for_tombstone(txn)
    head = await txn.fetchone("SELECT seq FROM farm_record_chain_head WHERE id = 1")
    assert head is not None, "migration 0006 creates the chain head"
    if int(head["seq"]) < 0:
        return await _chain_older(txn)
    return entry


async def _chain_older(txn: db.Transaction) -> tuple[int, str]:
    """Chain the records and tombstones stored before migration 0006; return the new head.

    Records in the order they were stored (id), then tombstones in the order they were
    made (deleted_at, then record id).
    """
    seq, prev = 0, chain.GENESIS
    for row in await txn.fetchall(
        "SELECT id, name, version, body FROM farm_records WHERE COALESCE(chain_seq, 0) = 0"
        " ORDER BY id"
    ):
        seq, prev = await _append_only(txn, seq + 1, prev, chain.RECORD, int(row["id"]),
                                       row["name"], row["version"], str(row["body"]).encode())
    for row in await txn.fetchall(
        "SELECT r.id, r.name, r.version, t.deleted_by, t.deleted_at, t.reason"
        " FROM farm_record_tombstones t JOIN farm_records r ON r.id = t.record_id"
        " ORDER BY t.deleted_at, t.record_id"
    ):
        content = chain.tombstone_content(row["deleted_by"], float(row["deleted_at"]),
                                          row["reason"])
        seq, prev = await _append_only(txn, seq + 1, prev, chain.TOMBSTONE, int(row["id"]),
                                       row["name"], row["version"], content)
    await txn.execute(
        "UPDATE farm_record_chain_head SET seq = ?, hash = ? WHERE id = 1", (seq, prev)
    )
    return seq, prev


async def _append_only(
    txn: db.Transaction, seq: int, prev: str, kind: str, record_id: int, name: str,
    version: str, content: bytes,
) -> tuple[int, str]:
    """Insert entry ``seq`` of the chain (the head is not moved); return (seq, its hash)."""
    digest = chain.entry_hash(prev, kind, name, version, content)
    await txn.execute(
        "INSERT INTO farm_record_chain (seq, kind, name, version, record_id, prev_hash, hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (seq, kind, name, version, record_id, prev, digest),
    )
    return seq, digest


def _stored(row: db.Row) -> StoredRecord:
    tombstone = None
    if row["deleted_at"] is not None:
        tombstone = Tombstone(row["deleted_by"], float(row["deleted_at"]), row["reason"])
    return StoredRecord(document=str(row["body"]).encode(), tombstone=tombstone)


def encode_cursor(record_id: int) -> str:
    """An opaque cursor for the records older than ``record_id``."""
    return base64.urlsafe_b64encode(json.dumps({"before": record_id}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The record id inside a cursor; raise :class:`BadCursor` for anything else."""
    try:
        value = decode_token(cursor)["before"]
    except (ApiError, KeyError, TypeError) as e:
        raise BadCursor("cursor is not one this server handed out; start without it") from e
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < MAX_NUMBER:
        raise BadCursor("cursor is not one this server handed out; start without it")
    return value
