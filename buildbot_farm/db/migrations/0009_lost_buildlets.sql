-- Buildlets lost with their host (its Docker engine stopped answering, ...): the lease is
-- gone, and this says why, so that `buildbot-farm lease list`, the Buildlets page and a
-- restarted coordinator can tell the lessee. Each coordinator keeps its latest ones only.
CREATE TABLE farm_lost_buildlets (
    name TEXT PRIMARY KEY,
    coordinator TEXT NOT NULL,
    type TEXT NOT NULL,
    owner TEXT,
    reason TEXT NOT NULL,
    lost_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX farm_lost_buildlets_coordinator ON farm_lost_buildlets (coordinator, lost_at);
CREATE INDEX farm_lost_buildlets_owner ON farm_lost_buildlets (owner, lost_at);
