-- Buildlets the coordinator runs and the leases on them. A row lives from the moment a
-- buildlet is asked of its provider until it is destroyed, so a restarted coordinator
-- finds every buildlet again (url + secret reach its agent; handle is the provider's).
CREATE TABLE farm_buildlets (
    name TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    provider TEXT NOT NULL,
    state TEXT NOT NULL,
    owner TEXT,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    handle TEXT NOT NULL,
    coordinator TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    leased_at DOUBLE PRECISION,
    renewed_at DOUBLE PRECISION,
    expires_at DOUBLE PRECISION
);
CREATE INDEX farm_buildlets_owner ON farm_buildlets (owner);
CREATE INDEX farm_buildlets_type_state ON farm_buildlets (type, state);

-- The next number N of each user's buildlets of a type (names are user-NAME-TYPE-N and are
-- never reused, so an old name cannot reach a new buildlet).
CREATE TABLE farm_buildlet_numbers (
    owner TEXT NOT NULL,
    type TEXT NOT NULL,
    next_number INTEGER NOT NULL,
    PRIMARY KEY (owner, type)
);
