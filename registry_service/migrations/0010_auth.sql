-- Authentication: the seed's users table gets a role; API keys are stored only
-- as SHA-256 hashes (keys are 256-bit random secrets, so a fast hash suffices).
ALTER TABLE users
    ADD COLUMN role VARCHAR(20) NOT NULL DEFAULT 'reader'
        CHECK (role IN ('reader', 'trainer', 'admin')),
    ADD COLUMN disabled BOOLEAN NOT NULL DEFAULT false;

CREATE TABLE api_keys (
    key_id       UUID PRIMARY KEY,
    user_id      UUID NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    key_sha256   CHAR(64) NOT NULL UNIQUE,
    -- First characters of the key, to recognise it in listings.
    key_prefix   VARCHAR(16) NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at   TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ
);
CREATE INDEX api_keys_user ON api_keys (user_id);
