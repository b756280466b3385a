-- One writer per run: a run's lease has an epoch. RegisterRun's trainer holds epoch 1;
-- each ClaimRun (a resume) increments it; every trainer write carries its epoch and a
-- stale one is refused (ingest.py), so a trainer that lost its run can never write again.
ALTER TABLE training_runs ADD COLUMN lease_epoch BIGINT NOT NULL DEFAULT 1 CHECK (lease_epoch >= 1);

-- Queued runs hold a lease too (it used to be set only on RUNNING, so a run registered by
-- a trainer that then vanished stayed QUEUED forever). The sweeper (app.py) expires both;
-- a live run without a lease yet counts from its updated_at.
-- The sweeper's scan: live runs by lease end.
CREATE INDEX training_runs_live_lease ON training_runs (lease_expires_at)
    WHERE status IN ('queued', 'running');
