-- The masters that use this farm database, with their last sign of life.
-- Periodic work that must notice a dead master (re-queueing its jobs, reaping its
-- containers) compares heartbeat_at with the time now.
CREATE TABLE farm_masters (
    name TEXT PRIMARY KEY,
    started_at DOUBLE PRECISION NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL,
    version TEXT NOT NULL
);
