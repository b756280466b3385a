-- Pages of runs read their keys from an index alone (issue 15): a listing first finds the page's
-- run_ids and sort values, then reads the whole rows of those runs only (run_sql.PAGE). With the
-- columns a filter tests in the index, finding a page is an index-only scan: the bench's tag
-- listing and filtered listing tested ~1,100 and ~860 wide heap rows per page (1,137 and 869
-- buffers at 100k runs); index-only, they read 12 and 38 index pages.
-- 1. Newest first (the default order) with the run's tags: `tags:"x"` lists test the index entry.
-- 2. One algorithm by avg_steps (the commonest filtered listing, "this algorithm, fastest first")
--    with success_rate and params, which its filters test (`test_metrics.success_rate > 0.95 AND
--    params.alpha = 0.1`). params makes this index about half the table's size (33 of 61 MB at
--    100k runs): the price of never reading a heap row to reject it.
-- INCLUDE columns count for HOT updates, but none of these changes while a run streams episodes.

DROP INDEX training_runs_created;
CREATE INDEX training_runs_created ON training_runs (created_at DESC, run_id DESC) INCLUDE (tags);

DROP INDEX training_runs_steps_by_algorithm;
CREATE INDEX training_runs_steps_by_algorithm ON training_runs
    (algorithm, avg_steps ASC NULLS LAST, run_id ASC) INCLUDE (success_rate, params);
