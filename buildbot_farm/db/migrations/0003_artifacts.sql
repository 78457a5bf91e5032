-- Upload tokens of the artifact repository, stored only as the sha256 of the token. A
-- token writes inside its scope (a path pattern, '*' for one segment) until it expires or
-- is revoked (its build finished).
CREATE TABLE farm_artifact_tokens (
    token_hash TEXT PRIMARY KEY,
    build_id BIGINT NOT NULL,
    scope TEXT NOT NULL,
    master TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION
);
CREATE INDEX farm_artifact_tokens_build ON farm_artifact_tokens (build_id);

-- Every stored artifact file: its digest (the ETag), size, and the build directory
-- (prefix) it belongs to, which the retention janitor removes as a whole once expired.
CREATE TABLE farm_artifacts (
    path TEXT PRIMARY KEY,
    prefix TEXT NOT NULL,
    size BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    build_id BIGINT,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION
);
CREATE INDEX farm_artifacts_prefix ON farm_artifacts (prefix);
CREATE INDEX farm_artifacts_expires ON farm_artifacts (expires_at);
