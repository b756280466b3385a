-- Episode arrays are TOASTed; lz4 compresses them several times faster than the default
-- pglz at a similar ratio, which matters on the ingest path. Servers built without lz4
-- keep pglz (the DO block swallows only that error).
DO $$
BEGIN
    ALTER TABLE run_episodes
        ALTER COLUMN rewards SET COMPRESSION lz4,
        ALTER COLUMN steps SET COMPRESSION lz4,
        ALTER COLUMN epsilons SET COMPRESSION lz4,
        ALTER COLUMN td_errors SET COMPRESSION lz4,
        ALTER COLUMN successes SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'lz4 is not available on this server; episode arrays keep pglz compression';
END;
$$;
