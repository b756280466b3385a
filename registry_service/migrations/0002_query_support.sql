-- Query support: a never-failing numeric view of a JSONB value (filters compare
-- `params.x > 0.1` without crashing on a string), and the indexes that keep the
-- query API fast at 100k runs.

CREATE FUNCTION jsonb_number(value JSONB) RETURNS DOUBLE PRECISION
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN jsonb_typeof(value) = 'number' THEN (value #>> '{}')::DOUBLE PRECISION END;

-- The seed's own expressions, so its "Requêtes SQL Avancées" and our rankings share them.
CREATE INDEX training_runs_best ON training_runs (
    ((test_metrics->>'success_rate')::FLOAT) DESC, ((test_metrics->>'avg_steps')::FLOAT) ASC, run_id
) WHERE status = 'completed';
CREATE INDEX training_runs_success ON training_runs (((test_metrics->>'success_rate')::FLOAT));
CREATE INDEX training_runs_avg_steps ON training_runs (((test_metrics->>'avg_steps')::FLOAT));
CREATE INDEX training_runs_algorithm ON training_runs (algorithm, created_at DESC, run_id DESC);
CREATE INDEX training_runs_status ON training_runs (status, created_at DESC, run_id DESC);
CREATE INDEX training_runs_updated ON training_runs (updated_at DESC, run_id DESC);
CREATE INDEX training_runs_params ON training_runs USING GIN (params jsonb_path_ops);
CREATE INDEX run_annotations_tags ON run_annotations USING GIN (tags);
