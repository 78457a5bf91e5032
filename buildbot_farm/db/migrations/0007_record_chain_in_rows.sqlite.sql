-- The hash chain in the rows themselves (issue 14: the chain adds < 10% to an insert).
--
-- Each record and each tombstone stored from now on carries its own chain entry:
-- chain_seq (its place in the chain, unique: an entry appended twice is refused) and hash
-- (buildbot_farm/records/chain.py's entry_hash, which covers the hash of the entry before
-- it). The hash before an entry is the stored hash of the entry at chain_seq - 1, so it is
-- not stored twice. The farm computes the entry from the head it keeps in memory, so an
-- insert is one INSERT, with no second row to write and no head row to update. Rows stored
-- before this migration keep their entry in farm_record_chain (0006), which stays
-- append-only.
--
-- A record insert carries a guard: if a tombstone took a place at or after the record's
-- (another process stored it since the head was read), its hash is NULL and the trigger
-- below refuses it, saying the chain moved on; the farm reloads the head and tries again.
-- (SQLite has one writer at a time, so the guard's EXISTS sees every tombstone stored.)
ALTER TABLE farm_records ADD COLUMN chain_seq INTEGER;
ALTER TABLE farm_records ADD COLUMN hash TEXT;
CREATE UNIQUE INDEX farm_records_chain_seq ON farm_records (chain_seq);
ALTER TABLE farm_record_tombstones ADD COLUMN chain_seq INTEGER;
ALTER TABLE farm_record_tombstones ADD COLUMN hash TEXT;
CREATE UNIQUE INDEX farm_record_tombstones_chain_seq ON farm_record_tombstones (chain_seq);

CREATE TRIGGER farm_records_chained BEFORE INSERT ON farm_records
WHEN NEW.chain_seq IS NULL OR NEW.hash IS NULL
BEGIN SELECT RAISE(ABORT, 'farm_records: not chained, or the chain moved on (reload the head)'); END;
CREATE TRIGGER farm_record_tombstones_chained BEFORE INSERT ON farm_record_tombstones
WHEN NEW.chain_seq IS NULL OR NEW.hash IS NULL
BEGIN SELECT RAISE(ABORT, 'farm_record_tombstones: not chained, or the chain moved on'); END;

-- 0006's trigger chained records into farm_record_chain; records chain themselves now.
DROP TRIGGER farm_records_chain;
