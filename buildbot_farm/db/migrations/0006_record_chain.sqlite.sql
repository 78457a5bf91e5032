-- Build records immutable in fact and tamper-evident (issue 14).
--
-- 1. No statement replaces a record or a tombstone. INSERT OR REPLACE deletes the row it
--    replaces without firing DELETE triggers (recursive_triggers is off by default), and an
--    upsert's DO UPDATE is an UPDATE: a BEFORE INSERT trigger refuses any insert whose key is
--    stored already, before SQLite resolves the conflict, so neither gets that far.
-- 2. Provenance is signed once and kept: farm_record_provenance holds each record's DSSE
--    envelope, insert-only like the records.
-- 3. The records and tombstones form a hash chain: farm_record_chain has one row per record
--    or tombstone, in the order they were stored (seq), with the hash of the entry before it
--    (prev_hash) and its own (hash = sha256 of prev_hash and the entry's canonical JSON; see
--    buildbot_farm/records/chain.py). farm_record_chain_head is the last entry, the one row
--    that inserts lock and advance; seq -1 there means that records stored before this
--    migration are still to be chained (the farm chains them, in id order, on first use).
--    A record chains itself (the trigger farm_records_chain), so an insert stays one
--    statement; farm_sha256(text) is a function of the farm's own connections
--    (buildbot_farm/db/_sqlite.py), so only the farm can insert records. Tombstones are
--    chained by the farm in the transaction that inserts them.
CREATE TRIGGER farm_records_no_replace BEFORE INSERT ON farm_records
WHEN EXISTS (SELECT 1 FROM farm_records
             WHERE id = NEW.id OR (name = NEW.name AND version = NEW.version))
BEGIN SELECT RAISE(ABORT, 'farm_records are immutable: that record is stored already'); END;
CREATE TRIGGER farm_record_tombstones_no_replace BEFORE INSERT ON farm_record_tombstones
WHEN EXISTS (SELECT 1 FROM farm_record_tombstones WHERE record_id = NEW.record_id)
BEGIN SELECT RAISE(ABORT, 'farm_record_tombstones are immutable: that record is deleted already'); END;

CREATE TABLE farm_record_provenance (
    record_id INTEGER PRIMARY KEY REFERENCES farm_records (id),
    envelope TEXT NOT NULL,
    signed_at DOUBLE PRECISION NOT NULL
);
CREATE TRIGGER farm_record_provenance_no_replace BEFORE INSERT ON farm_record_provenance
WHEN EXISTS (SELECT 1 FROM farm_record_provenance WHERE record_id = NEW.record_id)
BEGIN SELECT RAISE(ABORT, 'farm_record_provenance is immutable: signed already'); END;
CREATE TRIGGER farm_record_provenance_no_update BEFORE UPDATE ON farm_record_provenance
BEGIN SELECT RAISE(ABORT, 'farm_record_provenance is immutable'); END;
CREATE TRIGGER farm_record_provenance_no_delete BEFORE DELETE ON farm_record_provenance
BEGIN SELECT RAISE(ABORT, 'farm_record_provenance is immutable'); END;

CREATE TABLE farm_record_chain (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('record', 'tombstone')),
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    record_id INTEGER NOT NULL REFERENCES farm_records (id),
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    UNIQUE (kind, record_id)
);
CREATE TRIGGER farm_record_chain_no_replace BEFORE INSERT ON farm_record_chain
WHEN EXISTS (SELECT 1 FROM farm_record_chain
             WHERE seq = NEW.seq OR (kind = NEW.kind AND record_id = NEW.record_id))
BEGIN SELECT RAISE(ABORT, 'farm_record_chain is append-only: that entry exists'); END;
CREATE TRIGGER farm_record_chain_no_update BEFORE UPDATE ON farm_record_chain
BEGIN SELECT RAISE(ABORT, 'farm_record_chain is append-only'); END;
CREATE TRIGGER farm_record_chain_no_delete BEFORE DELETE ON farm_record_chain
BEGIN SELECT RAISE(ABORT, 'farm_record_chain is append-only'); END;

CREATE TABLE farm_record_chain_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO farm_record_chain_head (id, seq, hash) VALUES (1, -1, '');
-- The head only moves forward, by one entry at a time.
CREATE TRIGGER farm_record_chain_head_forward BEFORE UPDATE ON farm_record_chain_head
WHEN NEW.id != OLD.id OR NEW.seq <= OLD.seq
BEGIN SELECT RAISE(ABORT, 'farm_record_chain_head only moves forward'); END;
CREATE TRIGGER farm_record_chain_head_no_insert BEFORE INSERT ON farm_record_chain_head
BEGIN SELECT RAISE(ABORT, 'farm_record_chain_head has its one row'); END;
CREATE TRIGGER farm_record_chain_head_no_delete BEFORE DELETE ON farm_record_chain_head
BEGIN SELECT RAISE(ABORT, 'farm_record_chain_head stays'); END;

CREATE TRIGGER farm_records_chain AFTER INSERT ON farm_records
WHEN (SELECT seq FROM farm_record_chain_head WHERE id = 1) >= 0
BEGIN
    INSERT INTO farm_record_chain (seq, kind, name, version, record_id, prev_hash, hash)
    SELECT h.seq + 1, 'record', NEW.name, NEW.version, NEW.id, h.hash,
           farm_sha256(h.hash || char(10) || 'record' || char(10) || farm_sha256(NEW.name)
                       || char(10) || farm_sha256(NEW.version) || char(10) || NEW.body)
    FROM farm_record_chain_head h WHERE h.id = 1;
    UPDATE farm_record_chain_head SET (seq, hash) = (
        SELECT seq, hash FROM farm_record_chain WHERE kind = 'record' AND record_id = NEW.id
    ) WHERE id = 1;
END;
