-- The hash chain in the rows themselves (issue 14: the chain adds < 10% to an insert).
-- See the SQLite file for the columns. Each record or tombstone stored from now on carries
-- its chain entry: chain_seq (unique: two masters appending the same entry conflict, and
-- the one that loses reloads the head and tries again) and hash (the hash before an entry
-- is the stored hash of the entry at chain_seq - 1). The farm computes the hash
-- (buildbot_farm/records/chain.py) from the head it keeps in memory, so an insert is one
-- plain INSERT with no function of the farm's on its way. Rows stored before this migration
-- keep their entry in farm_record_chain (0006), which stays append-only.
--
-- Both columns are NOT NULL, which PostgreSQL checks without evaluating an expression (a
-- CHECK constraint is prepared again for every statement): the rows stored before read
-- chain_seq 0 and hash '' (the defaults they were added with, kept without rewriting the
-- table), and with the defaults dropped an INSERT that does not give both is refused.
-- chain_seq is unique among the rows that carry an entry (chain_seq > 0).
--
-- Tombstones against records, with no lock of the chain's own in a record's way: a record's
-- INSERT holds farm_records in ROW EXCLUSIVE mode, as every INSERT does, and only then reads
-- farm_record_chain_epoch (a sequence: its value is not bound to any snapshot). A tombstone
-- locks farm_records in SHARE ROW EXCLUSIVE mode (so it waits for the record inserts under
-- way, and those that come later wait for it), moves the epoch on, then reads the head. An
-- INSERT whose master read the head at an older epoch has a NULL hash, which is refused:
-- the master reloads the head (under ROW EXCLUSIVE too) and tries again.
ALTER TABLE farm_records
    ADD COLUMN chain_seq BIGINT NOT NULL DEFAULT 0, ADD COLUMN hash TEXT NOT NULL DEFAULT '';
ALTER TABLE farm_records ALTER COLUMN chain_seq DROP DEFAULT, ALTER COLUMN hash DROP DEFAULT;
CREATE UNIQUE INDEX farm_records_chain_seq ON farm_records (chain_seq) WHERE chain_seq > 0;

ALTER TABLE farm_record_tombstones
    ADD COLUMN chain_seq BIGINT NOT NULL DEFAULT 0, ADD COLUMN hash TEXT NOT NULL DEFAULT '';
ALTER TABLE farm_record_tombstones
    ALTER COLUMN chain_seq DROP DEFAULT, ALTER COLUMN hash DROP DEFAULT;
CREATE UNIQUE INDEX farm_record_tombstones_chain_seq ON farm_record_tombstones (chain_seq)
    WHERE chain_seq > 0;

CREATE SEQUENCE farm_record_chain_epoch;
SELECT nextval('farm_record_chain_epoch');

-- 0006's way of chaining is replaced: no function inserts records any more.
DROP FUNCTION farm_record_insert(TEXT, TEXT, DOUBLE PRECISION, TEXT, TEXT, TEXT,
                                 DOUBLE PRECISION, TEXT);
