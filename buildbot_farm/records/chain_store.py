"""The SQL of the records' hash chain: append a record or a tombstone, read the chain.

Since migration 0007 each record and tombstone row carries its own chain entry
(``chain_seq``, ``prev_hash``, ``hash``); entries chained before it stay in
``farm_record_chain``. A :class:`ChainWriter` per database keeps the chain's head in memory
and computes the next entry's hash (:func:`buildbot_farm.records.chain.entry_hash`), so a
record insert is one plain ``INSERT``. The database keeps the chain linear however many
masters append to it:

* two records given the same place: ``chain_seq`` is unique, the second is refused;
* a tombstone stored since the head was read: the record's INSERT carries a guard that
  makes its hash NULL, which the database refuses (SQLite: a tombstone at or after the
  record's place exists; PostgreSQL: a tombstone holds the chain's advisory lock, or moved
  the chain's epoch sequence on, see migration 0007).

Either way the writer reloads the head and tries again.
"""

from __future__ import annotations

import re
import weakref
from typing import Any

from twisted.internet import defer

from buildbot_farm import db
from buildbot_farm.records import chain

# The advisory lock of the chain on PostgreSQL: tombstones take it exclusive, record
# inserts and head reads shared (as migration 0007 describes).
CHAIN_LOCK = 262221898
MAX_ATTEMPTS = 100

_RECORD_INSERT = (
    "INSERT INTO farm_records (name, version, timestamp, result, source_commit, body,"
    " recorded_at, chain_seq, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, "
)
_PG_INSERT = _RECORD_INSERT + (
    "CASE WHEN NOT pg_try_advisory_xact_lock_shared(?) THEN NULL"
    " WHEN pg_sequence_last_value('farm_record_chain_epoch') IS DISTINCT FROM"
    " CAST(? AS BIGINT) THEN NULL ELSE CAST(? AS TEXT) END)"
)
# Each dialect's record insert (its guard makes the hash NULL when a tombstone came first),
# and what stores the record's provenance with it.
_INSERTS = {
    "sqlite": (
        _RECORD_INSERT + "CASE WHEN EXISTS (SELECT 1 FROM farm_record_tombstones"
        " WHERE chain_seq >= ?) THEN NULL ELSE ? END)",
        "INSERT INTO farm_record_provenance (record_id, envelope, signed_at)"
        " SELECT id, ?, ? FROM farm_records WHERE chain_seq = ?",
    ),
    "postgresql": (
        _PG_INSERT,
        f"WITH r AS ({_PG_INSERT} RETURNING id) INSERT INTO farm_record_provenance"
        " (record_id, envelope, signed_at) SELECT id, ?, ? FROM r",
    ),
}
# What the database says when the chain moved on (not a duplicate record): the start of
# PostgreSQL's message (its detail quotes the row's values), or SQLite's.
_MOVED = re.compile(
    r'^(duplicate key value violates unique constraint "farm_records_chain_seq"'
    r'|new row for relation "farm_records" violates check constraint "farm_records_chained"'
    r"|UNIQUE constraint failed: farm_records\.chain_seq"
    r"|farm_records: not chained, or the chain moved on)"
)


class ChainMoved(Exception):
    """Another master appended to the chain first; reload the head and try again."""


class ChainWriter:
    """Appends records to the chain of one database, one at a time in this process."""

    def __init__(self, database: db.Database) -> None:
        self._database = database
        self._sql = _INSERTS[database.dialect.name]
        self._sqlite = database.dialect.name == "sqlite"
        self._busy = False
        self._waiting: list[defer.Deferred[None]] = []
        self._head: tuple[int, str, int | None] | None = None  # seq, hash, epoch

    def forget_head(self) -> None:
        """Read the head again before the next append (a tombstone was just stored)."""
        self._head = None

    async def insert_record(
        self, values: tuple[Any, ...], document: bytes, envelope: str | None
    ) -> None:
        """Insert a record: ``values`` as in ``_RECORD_COLUMNS`` up to ``recorded_at``.

        ``document`` is its body as bytes; its provenance ``envelope`` is stored with it when
        given. Raise ``db.IntegrityError`` for a duplicate record.
        """
        if self._busy:  # one append at a time: the next one chains after this one
            waiting: defer.Deferred[None] = defer.Deferred()
            self._waiting.append(waiting)
            await waiting
        self._busy = True
        try:
            for _ in range(MAX_ATTEMPTS):
                if self._head is None:
                    self._head = await self._database.transaction(_read_head)
                seq, prev, epoch = self._head
                digest = chain.entry_hash(prev, chain.RECORD, values[0], values[1], document)
                try:
                    await self._insert(values, seq + 1, prev, digest, epoch, envelope)
                except db.IntegrityError as e:
                    if not _MOVED.match(str(e)):
                        raise
                    self._head = None
                    continue
                self._head = (seq + 1, digest, epoch)
                return
            raise ChainMoved(f"the records chain kept moving on: {MAX_ATTEMPTS} attempts")
        finally:
            if self._waiting:
                self._waiting.pop(0).callback(None)
            else:
                self._busy = False

    async def _insert(
        self, values: tuple[Any, ...], seq: int, prev: str, digest: str, epoch: int | None,
        envelope: str | None,
    ) -> None:
        insert, with_provenance = self._sql
        if self._sqlite:
            params: tuple[Any, ...] = (*values, seq, prev, seq, digest)
        else:
            params = (*values, seq, prev, CHAIN_LOCK, epoch, digest)
        if envelope is None:
            await self._database.execute_prepared("farm_record_insert_chained", insert, params)
        elif not self._sqlite:  # one statement: the record and its provenance
            await self._database.execute(with_provenance, (*params, envelope, values[6]))
        else:

            async def both(txn: db.Transaction) -> None:
                await txn.execute(insert, params)
                await txn.execute(with_provenance, (envelope, values[6], seq))

            await self._database.transaction(both)


_WRITERS: weakref.WeakKeyDictionary[db.Database, ChainWriter] = weakref.WeakKeyDictionary()


def writer(database: db.Database) -> ChainWriter:
    """The one chain writer of ``database`` in this process."""
    found = _WRITERS.get(database)
    if found is None:
        found = _WRITERS[database] = ChainWriter(database)
    return found


async def _read_head(txn: db.Transaction) -> tuple[int, str, int | None]:
    """The chain's last entry (seq, hash) and, on PostgreSQL, its epoch.

    On PostgreSQL the chain's lock is held shared, so no tombstone is half stored: any
    tombstone stored later moves the epoch read here on, and a record insert sees that.
    """
    epoch = None
    if txn.dialect.name == "postgresql":
        await txn.execute("SELECT pg_advisory_xact_lock_shared(?)", (CHAIN_LOCK,))
        row = await txn.fetchone(
            "SELECT pg_sequence_last_value('farm_record_chain_epoch') AS epoch"
        )
        epoch = None if row is None or row["epoch"] is None else int(row["epoch"])
    seq, digest = await last_entry(txn)
    return seq, digest, epoch


async def last_entry(txn: db.Transaction) -> tuple[int, str]:
    """The chain's last entry (seq, hash): in the rows, or in 0006's table before them."""
    best = (0, chain.GENESIS)
    for sql in (
        "SELECT seq, hash FROM farm_record_chain ORDER BY seq DESC LIMIT 1",
        "SELECT chain_seq AS seq, hash FROM farm_records WHERE chain_seq IS NOT NULL"
        " ORDER BY chain_seq DESC LIMIT 1",
        "SELECT chain_seq AS seq, hash FROM farm_record_tombstones"
        " WHERE chain_seq IS NOT NULL ORDER BY chain_seq DESC LIMIT 1",
    ):
        row = await txn.fetchone(sql)
        if row is not None and int(row["seq"]) > best[0]:
            best = (int(row["seq"]), str(row["hash"]))
    return best


async def lock_for_tombstone(txn: db.Transaction) -> tuple[int, str]:
    """Lock the chain for a tombstone and move its epoch on; return the head (seq, hash)."""
    if txn.dialect.name == "postgresql":
        await txn.execute("SELECT pg_advisory_xact_lock(?)", (CHAIN_LOCK,))
        await txn.execute("SELECT nextval('farm_record_chain_epoch')")
    return await last_entry(txn)


CHAIN_PAGE = (
    "SELECT * FROM ("
    "SELECT * FROM (SELECT c.seq, c.kind, c.name, c.version, c.prev_hash, c.hash, r.body,"
    " t.deleted_by, t.deleted_at, t.reason"
    " FROM farm_record_chain c"
    " LEFT JOIN farm_records r ON r.id = c.record_id AND c.kind = 'record'"
    " LEFT JOIN farm_record_tombstones t ON t.record_id = c.record_id AND c.kind = 'tombstone'"
    " WHERE c.seq > ? ORDER BY c.seq LIMIT ?) legacy"
    " UNION ALL "
    "SELECT * FROM (SELECT r.chain_seq AS seq, 'record' AS kind, r.name, r.version,"
    " r.prev_hash, r.hash, r.body, CAST(NULL AS TEXT) AS deleted_by,"
    " CAST(NULL AS DOUBLE PRECISION) AS deleted_at, CAST(NULL AS TEXT) AS reason"
    " FROM farm_records r WHERE r.chain_seq > ? ORDER BY r.chain_seq LIMIT ?) records"
    " UNION ALL "
    "SELECT * FROM (SELECT t.chain_seq AS seq, 'tombstone' AS kind, r.name, r.version,"
    " t.prev_hash, t.hash, CAST(NULL AS TEXT) AS body, t.deleted_by, t.deleted_at, t.reason"
    " FROM farm_record_tombstones t LEFT JOIN farm_records r ON r.id = t.record_id"
    " WHERE t.chain_seq > ? ORDER BY t.chain_seq LIMIT ?) tombstones"
    ") entries ORDER BY seq LIMIT ?"
)
"""Up to ``limit`` entries after ``after``: params (after, limit) three times, then limit."""
