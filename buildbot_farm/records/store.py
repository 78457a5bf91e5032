"""All the SQL of build records: insert, look up, list with a cursor, tombstone."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from buildbot_farm import db
from buildbot_farm.records.lookups import LookupBatches
from buildbot_farm.records.model import BuildRecord
from buildbot_farm.web._request import MAX_NUMBER, BadRequest, decode_token


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


_SELECT = (
    "SELECT r.id, r.name, r.version, r.body, t.deleted_by, t.deleted_at, t.reason"
    " FROM farm_records r LEFT JOIN farm_record_tombstones t ON t.record_id = r.id"
)


class RecordStore:
    """Build records in the farm database; insert-only (the database refuses updates).

    Keep one store per database: lookups of single records made while others wait for
    the database are answered together, by one query.
    """

    def __init__(self, database: db.Database) -> None:
        self._database = database
        # SQLite answers lone queries on one reading connection: a second batch would queue.
        in_flight = 1 if database.dialect.name == "sqlite" else 2
        self._lookups: LookupBatches[tuple[str, str], StoredRecord] = LookupBatches(
            self._get_many, in_flight
        )

    def uses(self, database: db.Database) -> bool:
        """Whether this store keeps its records in ``database``."""
        return self._database is database

    async def insert(self, record: BuildRecord, now: float) -> bytes:
        """Store ``record``; return its document. Raise :class:`RecordExists` for a duplicate."""
        document = record.document()
        try:
            await self._database.execute(
                "INSERT INTO farm_records"
                " (name, version, timestamp, result, source_commit, body, recorded_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.name, record.version, record.timestamp, record.result,
                    record.commit, document.decode(), now,
                ),
            )
        except db.IntegrityError as e:
            raise RecordExists(f"{record.name} {record.version} is already recorded") from e
        return document

    async def get(self, name: str, version: str) -> StoredRecord | None:
        """The record ``name``/``version`` (deleted or not), or None."""
        return await self._lookups.get((name, version))

    async def _get_many(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], StoredRecord]:
        """The records of ``keys`` (name, version) that exist, in one query."""
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
            row = await txn.fetchone(
                f"{_SELECT} WHERE r.name = ? AND r.version = ?", (name, version)
            )
            if row is None:
                raise NoSuchRecord(f"no record {name} {version}")
            if row["deleted_at"] is not None:
                raise AlreadyDeleted(f"{name} {version} was deleted already")
            await txn.execute(
                "INSERT INTO farm_record_tombstones (record_id, deleted_by, deleted_at, reason)"
                " VALUES (?, ?, ?, ?)",
                (row["id"], by, now, reason),
            )
            return Tombstone(by, now, reason)

        try:
            return await self._database.transaction(bury)
        except db.IntegrityError as e:  # a concurrent delete won the race
            raise AlreadyDeleted(f"{name} {version} was deleted already") from e


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
    except (BadRequest, KeyError, TypeError) as e:
        raise BadCursor("cursor is not one this server handed out; start without it") from e
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < MAX_NUMBER:
        raise BadCursor("cursor is not one this server handed out; start without it")
    return value
