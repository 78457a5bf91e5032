"""The SQL of the records' hash chain: append a record or a tombstone, read the chain.

Since migration 0007 each record and tombstone row carries its own chain entry
(``chain_seq`` and ``hash``; the hash before it is the entry at ``chain_seq - 1``'s); entries
chained before it stay in ``farm_record_chain``. A :class:`ChainWriter` per database keeps
the chain's head in memory and computes the next entry's hash
(:func:`buildbot_farm.records.chain.entry_hash`), so a record insert is one plain ``INSERT``.
The database keeps the chain linear however many masters append to it:

* two records given the same place: ``chain_seq`` is unique, the second is refused;
* a tombstone stored since the head was read: the record's INSERT carries a guard that
  makes its hash NULL, which the database refuses (SQLite: a tombstone at or after the
  record's place exists; PostgreSQL: a tombstone moved the chain's epoch sequence on while
  it held ``farm_records`` locked against inserts, see migration 0007).

Either way the writer reloads the head and tries again.
"""

from __future__ import annotations

import re
import weakref
from typing import Any

from twisted.internet import defer

from buildbot_farm import db
from buildbot_farm.records import chain

MAX_ATTEMPTS = 100

_RECORD_INSERT = (
    "INSERT INTO farm_records (name, version, timestamp, result, source_commit, body,"
    " recorded_at, chain_seq, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, "
)
_PG_INSERT = _RECORD_INSERT + (
    "CASE WHEN pg_sequence_last_value('farm_record_chain_epoch') = CAST(? AS BIGINT)"
    " THEN CAST(? AS TEXT) END)"
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
    r'|null value in column "hash" of relation "farm_records" violates not-null constraint'
    r"|UNIQUE constraint failed: farm_records\.chain_seq"
    r"|farm_records: not chained, or the chain moved on)"
)


class ChainMoved(Exception):
    """Another master appended to the chain first; reload the head and try again."""


class ChainWriter:
    """Appends records to the chain of one database, one at a time in this process."""

    def __init__(self, database: db.Database) -> None:
        self._database = database
        self._insert_sql, self._provenance_sql = _INSERTS[database.dialect.name]
        self._sqlite = database.dialect.name == "sqlite"
        self._busy = False
        self._waiting: list[defer.Deferred[None]] = []
        self._head: tuple[int, str, int] | None = None  # seq, hash, epoch (0 on SQLite)

    def forget_head(self) -> None:
        """Read the head again before the next append (a tombstone was just stored)."""
        self._head = None

    async def insert_record(
        self, values: tuple[Any, ...], document: bytes, envelope: str | None
    ) -> None:
        """Insert a record: ``values`` are its columns from ``name`` to ``recorded_at``.

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
                seq += 1
                digest = chain.entry_hash(prev, chain.RECORD, values[0], values[1], document)
                # The guard's parameter: the record's place (SQLite), the epoch (PostgreSQL).
                params = (*values, seq, seq if self._sqlite else epoch, digest)
                try:
                    await self._insert(params, envelope)
                except db.IntegrityError as e:
                    if not _MOVED.match(str(e)):
                        raise
                    self._head = None
                    continue
                self._head = (seq, digest, epoch)
                return
            raise ChainMoved(f"the records chain kept moving on: {MAX_ATTEMPTS} attempts")
        finally:
            if self._waiting:
                self._waiting.pop(0).callback(None)
            else:
                self._busy = False

    async def _insert(self, params: tuple[Any, ...], envelope: str | None) -> None:
        """Run the record's INSERT with ``params``, with its provenance if given."""
        if envelope is None:
            await self._database.execute_prepared(
                "farm_record_insert_chained", self._insert_sql, params
            )
        elif not self._sqlite:  # one statement: the record and its provenance
            await self._database.execute(self._provenance_sql, (*params, envelope, params[6]))
        else:
            seq = params[7]

            async def both(txn: db.Transaction) -> None:
                await txn.execute(self._insert_sql, params)
                await txn.execute(self._provenance_sql, (envelope, params[6], seq))

            await self._database.transaction(both)


_WRITERS: weakref.WeakKeyDictionary[db.Database, ChainWriter] = weakref.WeakKeyDictionary()


def writer(database: db.Database) -> ChainWriter:
    """The one chain writer of ``database`` in this process."""
    found = _WRITERS.get(database)
    if found is None:
        found = _WRITERS[database] = ChainWriter(database)
    return found


async def _read_head(txn: db.Transaction) -> tuple[int, str, int]:
    """The chain's last entry (seq, hash) and, on PostgreSQL, its epoch (0 on SQLite).

    On PostgreSQL ``farm_records`` is held as an insert holds it, so no tombstone is half
    stored: any tombstone stored later moves the epoch read here on, and a record insert
    sees that.
    """
    epoch = 0
    if txn.dialect.name == "postgresql":
        await txn.execute("LOCK TABLE farm_records IN ROW EXCLUSIVE MODE")
        row = await txn.fetchone(
            "SELECT pg_sequence_last_value('farm_record_chain_epoch') AS epoch"
        )
        assert row is not None, "a SELECT without FROM answers a row"
        epoch = int(row["epoch"])  # never NULL: migration 0007 starts the sequence
    seq, digest = await last_entry(txn)
    return seq, digest, epoch


async def last_entry(txn: db.Transaction) -> tuple[int, str]:
    """The chain's last entry (seq, hash): in the rows, or in 0006's table before them."""
    best = (0, chain.GENESIS)
    for sql in (
        "SELECT seq, hash FROM farm_record_chain ORDER BY seq DESC LIMIT 1",
        "SELECT chain_seq AS seq, hash FROM farm_records WHERE chain_seq > 0"
        " ORDER BY chain_seq DESC LIMIT 1",
        "SELECT chain_seq AS seq, hash FROM farm_record_tombstones"
        " WHERE chain_seq > 0 ORDER BY chain_seq DESC LIMIT 1",
    ):
        row = await txn.fetchone(sql)
        if row is not None and int(row["seq"]) > best[0]:
            best = (int(row["seq"]), str(row["hash"]))
    return best


async def lock_for_tombstone(txn: db.Transaction) -> tuple[int, str]:
    """Lock the chain for a tombstone and move its epoch on; return the head (seq, hash).

    On PostgreSQL the lock is ``farm_records`` in SHARE ROW EXCLUSIVE mode: it waits for the
    record inserts under way and holds off the next ones until the tombstone is stored.
    """
    if txn.dialect.name == "postgresql":
        await txn.execute("LOCK TABLE farm_records IN SHARE ROW EXCLUSIVE MODE")
        await txn.execute("SELECT nextval('farm_record_chain_epoch')")
    return await last_entry(txn)


async def chain_page(database: db.Database, after: int, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` entries after ``after``, in order, each with ``prev_hash`` filled in.

    An entry's previous hash is the stored hash of the entry before it (GENESIS before the
    first; None when that entry's row is gone, which the seq that does not follow shows).
    """
    rows = await database.fetchall(
        CHAIN_PAGE, (after, limit + 1, after, limit + 1, after, limit + 1, limit + 1)
    )
    prev: str | None = chain.GENESIS if after == 0 else None
    if rows and int(rows[0]["seq"]) == after:
        prev = str(rows.pop(0)["hash"])
    page = []
    for row in rows[:limit]:
        page.append({**row, "prev_hash": prev})
        prev = str(row["hash"])
    return page


CHAIN_PAGE = (
    "SELECT * FROM ("
    "SELECT * FROM (SELECT c.seq, c.kind, c.name, c.version, c.hash, r.body,"
    " t.deleted_by, t.deleted_at, t.reason"
    " FROM farm_record_chain c"
    " LEFT JOIN farm_records r ON r.id = c.record_id AND c.kind = 'record'"
    " LEFT JOIN farm_record_tombstones t ON t.record_id = c.record_id AND c.kind = 'tombstone'"
    " WHERE c.seq >= ? ORDER BY c.seq LIMIT ?) legacy"
    " UNION ALL "
    "SELECT * FROM (SELECT r.chain_seq AS seq, 'record' AS kind, r.name, r.version,"
    " r.hash, r.body, CAST(NULL AS TEXT) AS deleted_by,"
    " CAST(NULL AS DOUBLE PRECISION) AS deleted_at, CAST(NULL AS TEXT) AS reason"
    " FROM farm_records r WHERE r.chain_seq >= ? AND r.chain_seq > 0"
    " ORDER BY r.chain_seq LIMIT ?) records"
    " UNION ALL "
    "SELECT * FROM (SELECT t.chain_seq AS seq, 'tombstone' AS kind, r.name, r.version,"
    " t.hash, CAST(NULL AS TEXT) AS body, t.deleted_by, t.deleted_at, t.reason"
    " FROM farm_record_tombstones t LEFT JOIN farm_records r ON r.id = t.record_id"
    " WHERE t.chain_seq >= ? AND t.chain_seq > 0 ORDER BY t.chain_seq LIMIT ?) tombstones"
    ") entries ORDER BY seq LIMIT ?"
)
"""Up to ``limit`` entries from ``first`` on: params (first, limit) three times, then limit."""
