-- Who did what (issue 17): the username of the caller the gateway authenticated,
-- never a value a client sets. NULL means unknown: rows written before this
-- migration, or with authentication off. Usernames are unique and never renamed.
ALTER TABLE training_runs
    ADD COLUMN creator      VARCHAR(100),
    ADD COLUMN resumed_by   VARCHAR(100),
    ADD COLUMN cancelled_by VARCHAR(100);
ALTER TABLE run_annotations ADD COLUMN author VARCHAR(100);
ALTER TABLE saved_models ADD COLUMN imported_by VARCHAR(100);

-- `creator = "alice"` in ListRuns filters (the filter compares COALESCE(creator, ''),
-- so `creator = ""` finds the runs of unknown owners), newest first like the default order.
CREATE INDEX training_runs_creator ON training_runs ((COALESCE(creator, '')), created_at DESC, run_id DESC);

-- A key revoked, a user disabled, deleted or given another role: tell the
-- gateways at once (AuthService.WatchKeyChanges), whatever made the change
-- (the users command or SQL by hand), so no cached answer outlives it.
-- last_used_at updates do not fire: they change nothing about a key's validity.
CREATE FUNCTION notify_key_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('taxidriver_key_changes', COALESCE(NEW.user_id, OLD.user_id)::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER users_key_change
    AFTER UPDATE OF role, disabled OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION notify_key_change();
CREATE TRIGGER api_keys_key_change
    AFTER UPDATE OF revoked_at, key_sha256, user_id OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION notify_key_change();
