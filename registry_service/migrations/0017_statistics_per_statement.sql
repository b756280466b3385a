-- run_statistics (0004) kept small (issue 15).
-- Its row trigger upserted one summary row per inserted or deleted run: a COPY of 100k runs (the
-- bench's seed, a restore) or a purge of thousands rewrote the same ~2,000 (algorithm, day,
-- status) rows 100k times inside one transaction, where no vacuum can reclaim the old versions:
-- 2,173 live rows in 1,620 pages, and unfiltered statistics and total_size read every page
-- (8-16 ms of a 25-40 ms GetStatistics at 100k runs, load 9).
-- 1. Inserts and deletes: one statement-level trigger each, over the statement's transition table,
--    upserting each touched (algorithm, day, status) row once with the statement's sums. Every
--    writer (RegisterRun, COPY, DeleteRun, PurgeRuns, the purge command) goes through them, in its
--    own transaction. Updates (a run's completion, a status change) keep the row trigger: a
--    transition table cannot be limited to the columns statistics depend on, and episode batches
--    update runs all the time.
-- 2. fillfactor 50: a completion's two upserts can stay on their page (HOT), nothing to vacuum
--    out of the primary key.
-- 3. The table rebuilt (TRUNCATE gives it new, compact files) from training_runs, as 0004 filled it.

DROP TRIGGER training_runs_statistics ON training_runs;

CREATE TRIGGER training_runs_statistics
AFTER UPDATE OF algorithm, status, created_at, test_metrics, execution_time
ON training_runs FOR EACH ROW EXECUTE FUNCTION run_statistics_track();

-- The sums of a statement's inserted (sign 1) or deleted (sign -1) runs, one upsert per summary row.
CREATE FUNCTION run_statistics_add_rows() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    sign INTEGER := CASE TG_OP WHEN 'INSERT' THEN 1 ELSE -1 END;
BEGIN
    INSERT INTO run_statistics AS s (algorithm, day, status, runs, success_sum, success_count, steps_sum,
                                     steps_count, reward_sum, reward_count, execution_sum, execution_count)
    SELECT algorithm, (created_at AT TIME ZONE 'UTC')::date, status, sign * count(*),
           sign * coalesce(sum(success_rate), 0), sign * count(success_rate),
           sign * coalesce(sum(avg_steps), 0), sign * count(avg_steps),
           sign * coalesce(sum(avg_reward), 0), sign * count(avg_reward),
           sign * coalesce(sum(execution_time), 0), sign * count(execution_time)
    FROM changed_runs
    GROUP BY 1, 2, 3
    ON CONFLICT (algorithm, day, status) DO UPDATE SET
        runs = s.runs + EXCLUDED.runs,
        success_sum = s.success_sum + EXCLUDED.success_sum,
        success_count = s.success_count + EXCLUDED.success_count,
        steps_sum = s.steps_sum + EXCLUDED.steps_sum,
        steps_count = s.steps_count + EXCLUDED.steps_count,
        reward_sum = s.reward_sum + EXCLUDED.reward_sum,
        reward_count = s.reward_count + EXCLUDED.reward_count,
        execution_sum = s.execution_sum + EXCLUDED.execution_sum,
        execution_count = s.execution_count + EXCLUDED.execution_count;
    RETURN NULL;
END;
$$;

CREATE TRIGGER training_runs_statistics_insert
AFTER INSERT ON training_runs REFERENCING NEW TABLE AS changed_runs
FOR EACH STATEMENT EXECUTE FUNCTION run_statistics_add_rows();

CREATE TRIGGER training_runs_statistics_delete
AFTER DELETE ON training_runs REFERENCING OLD TABLE AS changed_runs
FOR EACH STATEMENT EXECUTE FUNCTION run_statistics_add_rows();

ALTER TABLE run_statistics SET (fillfactor = 50);
TRUNCATE run_statistics;
INSERT INTO run_statistics (algorithm, day, status, runs, success_sum, success_count, steps_sum, steps_count,
                            reward_sum, reward_count, execution_sum, execution_count)
SELECT algorithm, (created_at AT TIME ZONE 'UTC')::date, status, count(*),
       coalesce(sum(success_rate), 0), count(success_rate), coalesce(sum(avg_steps), 0), count(avg_steps),
       coalesce(sum(avg_reward), 0), count(avg_reward), coalesce(sum(execution_time), 0), count(execution_time)
FROM training_runs
GROUP BY 1, 2, 3;
