-- Statistics filtered by algorithm (the common case) read the index alone, not the wide rows.
CREATE INDEX training_runs_algorithm_metrics ON training_runs (algorithm, status)
    INCLUDE (success_rate, avg_steps, avg_reward, execution_time, run_id, created_at);
