-- Build records immutable in fact and tamper-evident (issue 14); see the SQLite file for
-- the tables. PostgreSQL fires the row-level BEFORE UPDATE trigger for an upsert's
-- DO UPDATE, so only TRUNCATE (which fires no row trigger) needed a trigger of its own:
-- statement-level BEFORE TRUNCATE triggers refuse it on every records table, CASCADE or not.
-- ALTER TABLE, DROP TABLE and DISABLE TRIGGER stay possible for the tables' owner: see
-- docs/records.md for the deployment where the farm's role is not the owner.
CREATE TRIGGER farm_records_no_truncate BEFORE TRUNCATE ON farm_records
    FOR EACH STATEMENT EXECUTE FUNCTION farm_refuse_change();
CREATE TRIGGER farm_record_tombstones_no_truncate BEFORE TRUNCATE ON farm_record_tombstones
    FOR EACH STATEMENT EXECUTE FUNCTION farm_refuse_change();

CREATE TABLE farm_record_provenance (
    record_id BIGINT PRIMARY KEY REFERENCES farm_records (id),
    envelope TEXT NOT NULL,
    signed_at DOUBLE PRECISION NOT NULL
);
CREATE TRIGGER farm_record_provenance_immutable BEFORE UPDATE OR DELETE
    ON farm_record_provenance FOR EACH ROW EXECUTE FUNCTION farm_refuse_change();
CREATE TRIGGER farm_record_provenance_no_truncate BEFORE TRUNCATE ON farm_record_provenance
    FOR EACH STATEMENT EXECUTE FUNCTION farm_refuse_change();

CREATE TABLE farm_record_chain (
    seq BIGINT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('record', 'tombstone')),
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    record_id BIGINT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TRIGGER farm_record_chain_immutable BEFORE UPDATE OR DELETE
    ON farm_record_chain FOR EACH ROW EXECUTE FUNCTION farm_refuse_change();
CREATE TRIGGER farm_record_chain_no_truncate BEFORE TRUNCATE ON farm_record_chain
    FOR EACH STATEMENT EXECUTE FUNCTION farm_refuse_change();

-- On PostgreSQL the chain's last entry is its head, and inserts serialise on an advisory
-- lock (no row lock to write, no head row to update on each insert: issue 14's < 10%).
-- This row says only whether the older records are chained (seq -1: not yet).
CREATE TABLE farm_record_chain_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO farm_record_chain_head (id, seq, hash) VALUES (1, -1, '');

-- The head only moves forward (a WHEN clause: no function call on the way of inserts).
CREATE TRIGGER farm_record_chain_head_forward BEFORE UPDATE ON farm_record_chain_head
    FOR EACH ROW WHEN (NEW.id <> OLD.id OR NEW.seq <= OLD.seq)
    EXECUTE FUNCTION farm_refuse_change();
CREATE TRIGGER farm_record_chain_head_stays BEFORE DELETE ON farm_record_chain_head
    FOR EACH ROW EXECUTE FUNCTION farm_refuse_change();
CREATE TRIGGER farm_record_chain_head_no_truncate BEFORE TRUNCATE ON farm_record_chain_head
    FOR EACH STATEMENT EXECUTE FUNCTION farm_refuse_change();

-- The farm inserts a record with one call: the record, its chain entry (hashed here as
-- buildbot_farm/records/chain.py's entry_hash does) and its provenance if signed, under
-- the chain's advisory lock (CHAIN_LOCK in buildbot_farm/records/store.py), so that
-- masters chain one after the other. The farm chains the older records (head seq -1)
-- before its first insert; until then this refuses.
CREATE FUNCTION farm_record_insert(
    p_name TEXT, p_version TEXT, p_timestamp DOUBLE PRECISION, p_result TEXT,
    p_commit TEXT, p_body TEXT, p_recorded_at DOUBLE PRECISION, p_envelope TEXT
) RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    head_seq BIGINT;
    head_hash TEXT;
    new_id BIGINT;
    new_hash TEXT;
BEGIN
    PERFORM pg_advisory_xact_lock(262221898);
    IF (SELECT seq FROM farm_record_chain_head WHERE id = 1) < 0 THEN
        RAISE EXCEPTION 'farm_records: the records older than the chain are not chained yet'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    SELECT seq, hash INTO head_seq, head_hash FROM farm_record_chain ORDER BY seq DESC LIMIT 1;
    IF head_seq IS NULL THEN
        head_seq := 0;
        head_hash := repeat('0', 64);
    END IF;
    INSERT INTO farm_records (name, version, timestamp, result, source_commit, body,
                              recorded_at)
        VALUES (p_name, p_version, p_timestamp, p_result, p_commit, p_body, p_recorded_at)
        RETURNING id INTO new_id;
    new_hash := encode(sha256(convert_to(
        head_hash || E'\n' || 'record' || E'\n'
        || encode(sha256(convert_to(p_name, 'UTF8')), 'hex') || E'\n'
        || encode(sha256(convert_to(p_version, 'UTF8')), 'hex') || E'\n' || p_body,
        'UTF8')), 'hex');
    INSERT INTO farm_record_chain (seq, kind, name, version, record_id, prev_hash, hash)
        VALUES (head_seq + 1, 'record', p_name, p_version, new_id, head_hash, new_hash);
    IF p_envelope IS NOT NULL THEN
        INSERT INTO farm_record_provenance (record_id, envelope, signed_at)
            VALUES (new_id, p_envelope, p_recorded_at);
    END IF;
    RETURN head_seq + 1;
END;
$$;
