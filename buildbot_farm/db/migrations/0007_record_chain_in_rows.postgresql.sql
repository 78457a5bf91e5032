-- The hash chain in the rows themselves (issue 14: the chain adds < 10% to an insert).
-- See the SQLite file for the columns. Each record or tombstone stored from now on carries
-- its chain entry: chain_seq (unique: two masters appending the same entry conflict, and
-- the one that loses reloads the head and tries again), prev_hash and hash. The farm
-- computes the hash (buildbot_farm/records/chain.py) from the head it keeps in memory, so
-- an insert is one plain INSERT with no function of the farm's on its way. Rows stored
-- before this migration keep their entry in farm_record_chain (0006), which stays
-- append-only; NOT VALID leaves them out of the new CHECKs, which every new row passes.
--
-- Records do not take the chain's advisory lock; a tombstone does, exclusively, and moves
-- farm_record_chain_epoch on before it reads the head. A record's INSERT takes the same lock
-- shared (pg_try_advisory_xact_lock_shared, held until it commits) and then reads the
-- epoch (a sequence: not bound to the statement's snapshot); if a tombstone is being stored,
-- or was stored since the inserting master read its head, its hash is NULL and the CHECK
-- refuses it: the master reloads the head and tries again.
ALTER TABLE farm_records
    ADD COLUMN chain_seq BIGINT, ADD COLUMN prev_hash TEXT, ADD COLUMN hash TEXT;
ALTER TABLE farm_records ADD CONSTRAINT farm_records_chained
    CHECK (chain_seq IS NOT NULL AND prev_hash IS NOT NULL AND hash IS NOT NULL) NOT VALID;
CREATE UNIQUE INDEX farm_records_chain_seq ON farm_records (chain_seq);

ALTER TABLE farm_record_tombstones
    ADD COLUMN chain_seq BIGINT, ADD COLUMN prev_hash TEXT, ADD COLUMN hash TEXT;
ALTER TABLE farm_record_tombstones ADD CONSTRAINT farm_record_tombstones_chained
    CHECK (chain_seq IS NOT NULL AND prev_hash IS NOT NULL AND hash IS NOT NULL) NOT VALID;
CREATE UNIQUE INDEX farm_record_tombstones_chain_seq ON farm_record_tombstones (chain_seq);

CREATE SEQUENCE farm_record_chain_epoch;

-- 0006's way of chaining is replaced: no function inserts records any more.
DROP FUNCTION farm_record_insert(TEXT, TEXT, DOUBLE PRECISION, TEXT, TEXT, TEXT,
                                 DOUBLE PRECISION, TEXT);
