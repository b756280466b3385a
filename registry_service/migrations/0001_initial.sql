-- The seed's four tables (same names and columns) plus what the gRPC services need:
-- run lifecycle columns, compact per-episode chunks and binary artifacts.

CREATE TABLE training_runs (
    run_id              UUID PRIMARY KEY,
    algorithm           VARCHAR(50) NOT NULL,
    params              JSONB NOT NULL DEFAULT '{}'::jsonb,
    training_metrics    JSONB,
    test_metrics        JSONB,
    system_metrics      JSONB,
    learning_stability  JSONB,
    brute_force_metrics JSONB,
    improvement_metrics JSONB,
    model_path          VARCHAR(500),
    plots               JSONB NOT NULL DEFAULT '{}'::jsonb,
    execution_time      FLOAT,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    status              VARCHAR(20) NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled', 'interrupted')),
    mode                VARCHAR(20) NOT NULL DEFAULT 'user',
    env_id              VARCHAR(100) NOT NULL DEFAULT 'Taxi-v3',
    request_id          VARCHAR(200) UNIQUE,
    episodes_recorded   INTEGER NOT NULL DEFAULT 0 CHECK (episodes_recorded >= 0),
    episodes_planned    INTEGER NOT NULL DEFAULT 0 CHECK (episodes_planned >= 0),
    stop_reason         TEXT NOT NULL DEFAULT '',
    error_message       TEXT NOT NULL DEFAULT '',
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    trainer_id          TEXT NOT NULL DEFAULT '',
    lease_expires_at    TIMESTAMPTZ,
    cancel_requested    BOOLEAN NOT NULL DEFAULT false
);

-- Per-episode curves as columnar chunks: one row per stored batch, keyed by the
-- batch's first episode, so a replayed batch maps onto an existing key and a
-- 6000-episode run is a handful of compressed arrays, not 6000 JSON objects.
-- CompleteRun compacts a run's chunks into one row.
CREATE TABLE run_episodes (
    run_id        UUID NOT NULL REFERENCES training_runs (run_id) ON DELETE CASCADE,
    first_episode INTEGER NOT NULL CHECK (first_episode >= 0),
    episode_count INTEGER NOT NULL CHECK (episode_count > 0),
    rewards       REAL[] NOT NULL,
    steps         INTEGER[] NOT NULL,
    epsilons      REAL[],
    td_errors     REAL[],
    successes     BOOLEAN[],
    PRIMARY KEY (run_id, first_episode)
);

-- Models, checkpoints and plots. run_id is NULL only for a model imported without a run.
CREATE TABLE artifacts (
    artifact_id  UUID PRIMARY KEY,
    run_id       UUID REFERENCES training_runs (run_id) ON DELETE CASCADE,
    kind         VARCHAR(20) NOT NULL CHECK (kind IN ('model', 'checkpoint', 'plot')),
    name         VARCHAR(200) NOT NULL,
    content_type VARCHAR(100) NOT NULL DEFAULT 'application/octet-stream',
    size         BIGINT NOT NULL,
    sha256       CHAR(64) NOT NULL,
    episode      INTEGER NOT NULL DEFAULT 0,
    metadata     JSONB NOT NULL DEFAULT '{}'::jsonb,
    data         BYTEA NOT NULL,
    request_id   VARCHAR(200) UNIQUE,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (run_id, kind, name)
);
CREATE INDEX artifacts_run_kind_episode ON artifacts (run_id, kind, episode DESC, created_at DESC);

CREATE TABLE saved_models (
    model_id       UUID PRIMARY KEY,
    run_id         UUID REFERENCES training_runs (run_id) ON DELETE CASCADE,
    model_name     VARCHAR(100),
    model_path     VARCHAR(500),
    model_size     BIGINT,
    model_metadata JSONB,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    artifact_id    UUID NOT NULL UNIQUE REFERENCES artifacts (artifact_id) ON DELETE CASCADE
);
CREATE INDEX saved_models_run ON saved_models (run_id, created_at);

CREATE TABLE run_annotations (
    annotation_id UUID PRIMARY KEY,
    run_id        UUID NOT NULL REFERENCES training_runs (run_id) ON DELETE CASCADE,
    annotation    TEXT NOT NULL,
    tags          TEXT[] NOT NULL DEFAULT '{}',
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    request_id    VARCHAR(200) UNIQUE
);
CREATE INDEX run_annotations_run ON run_annotations (run_id, created_at, annotation_id);

-- Kept from the seed for future authentication; nothing writes it yet.
CREATE TABLE users (
    user_id    UUID PRIMARY KEY,
    username   VARCHAR(100) UNIQUE,
    email      VARCHAR(255),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX training_runs_created ON training_runs (created_at DESC, run_id DESC);
CREATE INDEX training_runs_status_lease ON training_runs (lease_expires_at) WHERE status = 'running';
