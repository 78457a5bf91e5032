-- On-demand builds: one job per build key. ``attempt`` is the fencing token: a result is
-- recorded only by the attempt whose number the job still carries.
CREATE TABLE farm_ondemand_jobs (
    build_key TEXT PRIMARY KEY,
    scheduler TEXT NOT NULL,
    parameters TEXT NOT NULL,
    status TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    artifact_path TEXT,
    artifact_url TEXT,
    artifact_size BIGINT,
    artifact_sha256 TEXT,
    -- base64 of the Ed25519 signature of the artifact's raw sha256 digest
    artifact_signature TEXT,
    error TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX farm_ondemand_jobs_status ON farm_ondemand_jobs (status, updated_at);

-- Every attempt at a job: who built it and how it ended.
CREATE TABLE farm_ondemand_attempts (
    build_key TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    master TEXT NOT NULL,
    buildset_id BIGINT,
    build_id BIGINT,
    worker TEXT,
    result TEXT,
    error TEXT,
    started_at DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION,
    PRIMARY KEY (build_key, attempt)
);
