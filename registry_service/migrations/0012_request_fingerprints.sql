-- AIP-155: a request_id identifies one request. Who sent a run's creating request, and a
-- fingerprint of what it asked for, so a reused request_id with another request (other
-- parameters, or another caller) is refused instead of silently answered with the first run.
-- NULL for runs registered before this migration: their retries cannot be compared.
ALTER TABLE training_runs
    ADD COLUMN request_caller      VARCHAR(200),
    ADD COLUMN request_fingerprint CHAR(64);
