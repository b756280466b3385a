-- Queries at 100k runs (issue 15).
-- 1. A run's tags (the union of its annotations' tags, sorted, distinct) kept on the run by a
--    trigger and GIN-indexed: `tags:"x"` filters test the run's own row instead of probing
--    run_annotations once per listed run, and every listing reads them without a sub-query.
--    run_annotations stays the source; the column is derived from it.
-- 2. Filtered listings by algorithm ordered by a metric walk an index of that algorithm's runs in
--    that order (the commonest filter with the commonest non-default orderings).

ALTER TABLE training_runs ADD COLUMN tags TEXT[] NOT NULL DEFAULT '{}';

CREATE FUNCTION run_tags_refresh(target UUID) RETURNS void
LANGUAGE sql AS $$
    UPDATE training_runs r
    SET tags = ARRAY(SELECT DISTINCT t FROM run_annotations a, unnest(a.tags) t WHERE a.run_id = target ORDER BY t)
    WHERE r.run_id = target;
$$;

CREATE FUNCTION run_tags_track() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- On a run's deletion the cascade removes its annotations after the run: the UPDATE finds no row.
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM run_tags_refresh(OLD.run_id);
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.run_id IS DISTINCT FROM OLD.run_id) THEN
        PERFORM run_tags_refresh(NEW.run_id);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER run_annotations_tags_track
AFTER INSERT OR DELETE OR UPDATE OF run_id, tags ON run_annotations
FOR EACH ROW EXECUTE FUNCTION run_tags_track();

UPDATE training_runs r
SET tags = s.tags
FROM (
    SELECT a.run_id, ARRAY(SELECT DISTINCT t FROM unnest(array_agg(x.t)) t ORDER BY t) AS tags
    FROM run_annotations a, unnest(a.tags) x(t)
    GROUP BY a.run_id
) s
WHERE r.run_id = s.run_id;

CREATE INDEX training_runs_tags ON training_runs USING GIN (tags);

CREATE INDEX training_runs_steps_by_algorithm ON training_runs
    (algorithm, avg_steps ASC NULLS LAST, run_id ASC);
CREATE INDEX training_runs_success_by_algorithm ON training_runs
    (algorithm, success_rate DESC NULLS LAST, run_id DESC);

-- The seed's search by parameters (alpha, gamma, training_runs: /database/runs/search/params),
-- newest first: an equality on each key walks this index in order instead of testing every
-- run's params for containment (SearchRunsByParams adds the equalities for scalar values).
CREATE INDEX training_runs_seed_params ON training_runs
    ((params -> 'alpha'), (params -> 'gamma'), (params -> 'training_runs'), created_at DESC, run_id DESC);
