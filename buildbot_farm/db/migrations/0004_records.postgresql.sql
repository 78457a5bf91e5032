-- Immutable build records (issue 6): the same tables as the SQLite file, with PostgreSQL's
-- triggers. The trigger function raises integrity_constraint_violation (SQLSTATE 23000),
-- which the farm database reports as IntegrityError, as SQLite's RAISE(ABORT) is.
CREATE TABLE farm_records (
    id BIGSERIAL PRIMARY KEY,
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
    record_id BIGINT PRIMARY KEY REFERENCES farm_records (id),
    deleted_by TEXT NOT NULL,
    deleted_at DOUBLE PRECISION NOT NULL,
    reason TEXT NOT NULL
);

CREATE FUNCTION farm_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% are immutable: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END;
$$;
CREATE TRIGGER farm_records_immutable BEFORE UPDATE OR DELETE ON farm_records
    FOR EACH ROW EXECUTE FUNCTION farm_refuse_change();
CREATE TRIGGER farm_record_tombstones_immutable BEFORE UPDATE OR DELETE
    ON farm_record_tombstones FOR EACH ROW EXECUTE FUNCTION farm_refuse_change();
