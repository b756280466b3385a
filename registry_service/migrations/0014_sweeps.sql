-- Sweeps of the tuner service: the registry stays the only store. A sweep's spec and state,
-- and one row per trial; the trial's runs are ordinary training runs tagged with the sweep
-- and the trial number. One tuner drives a sweep at a time: a lease with an epoch, fenced
-- like a run's (a write with a stale epoch is refused).
CREATE TABLE sweeps (
    sweep_id          UUID PRIMARY KEY,
    request_id        VARCHAR(200),
    request_caller    VARCHAR(200) NOT NULL DEFAULT '',
    algorithm         VARCHAR(50) NOT NULL,
    spec              JSONB NOT NULL,
    state             VARCHAR(20) NOT NULL DEFAULT 'running'
                      CHECK (state IN ('running', 'succeeded', 'cancelled', 'failed')),
    owner             VARCHAR(200) NOT NULL DEFAULT '',
    tuner_id          VARCHAR(200) NOT NULL DEFAULT '',
    lease_epoch       BIGINT NOT NULL DEFAULT 0 CHECK (lease_epoch >= 0),
    lease_expires_at  TIMESTAMPTZ,
    cancel_requested  BOOLEAN NOT NULL DEFAULT false,
    error_message     TEXT NOT NULL DEFAULT '',
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX sweeps_request_id ON sweeps (request_id) WHERE request_id IS NOT NULL;
CREATE INDEX sweeps_created ON sweeps (created_at DESC, sweep_id DESC);
CREATE INDEX sweeps_running ON sweeps (lease_expires_at) WHERE state = 'running';

CREATE TABLE sweep_trials (
    sweep_id      UUID NOT NULL REFERENCES sweeps (sweep_id) ON DELETE CASCADE,
    trial_number  INTEGER NOT NULL CHECK (trial_number >= 0),
    state         VARCHAR(20) NOT NULL CHECK (state IN ('running', 'complete', 'failed', 'cancelled')),
    body          JSONB NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (sweep_id, trial_number)
);

-- A trial's runs carry their sweep and trial number (NULL for runs outside sweeps).
-- Deleting a sweep leaves its runs: they are ordinary runs.
ALTER TABLE training_runs
    ADD COLUMN sweep_id      UUID,
    ADD COLUMN sweep_trial   INTEGER;
CREATE INDEX training_runs_sweep ON training_runs (sweep_id, sweep_trial) WHERE sweep_id IS NOT NULL;
