-- Immutable build records (issue 6). A record is written once and never changed: the
-- triggers below refuse UPDATE and DELETE of records, and of tombstones. Deleting a record
-- means adding its tombstone (who, when, why); the record row stays for the audit trail.
-- body is the record as canonical JSON; the other columns are what the API filters on.
CREATE TABLE farm_records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    timestamp DOUBLE PRECISION NOT NULL,
    result TEXT NOT NULL,
    source_commit TEXT,
    body TEXT NOT NULL,
    recorded_at DOUBLE PRECISION NOT NULL,
    UNIQUE (name, version)
);
CREATE INDEX farm_records_timestamp ON farm_records (timestamp);
CREATE INDEX farm_records_commit ON farm_records (source_commit);

CREATE TABLE farm_record_tombstones (
    record_id INTEGER PRIMARY KEY REFERENCES farm_records (id),
    deleted_by TEXT NOT NULL,
    deleted_at DOUBLE PRECISION NOT NULL,
    reason TEXT NOT NULL
);

CREATE TRIGGER farm_records_no_update BEFORE UPDATE ON farm_records
BEGIN SELECT RAISE(ABORT, 'farm_records are immutable: insert a new version instead'); END;
CREATE TRIGGER farm_records_no_delete BEFORE DELETE ON farm_records
BEGIN SELECT RAISE(ABORT, 'farm_records are immutable: delete with a tombstone'); END;
CREATE TRIGGER farm_record_tombstones_no_update BEFORE UPDATE ON farm_record_tombstones
BEGIN SELECT RAISE(ABORT, 'farm_record_tombstones are immutable'); END;
CREATE TRIGGER farm_record_tombstones_no_delete BEFORE DELETE ON farm_record_tombstones
BEGIN SELECT RAISE(ABORT, 'farm_record_tombstones are immutable'); END;
