-- The gateway's virtual keys, in tables of their own in the ledger's schema. The ledger's
-- spendgate_schema is not theirs to touch: this schema's version lives in gateway_meta
-- ('keys_schema'; schema.KEYS_SCHEMA_VERSION must match the value inserted below). Every
-- statement is idempotent: the script runs at each open, under the schema's advisory lock.

CREATE TABLE IF NOT EXISTS gateway_meta (key text PRIMARY KEY, value bigint NOT NULL);
CREATE TABLE IF NOT EXISTS gateway_keys (
    id           text PRIMARY KEY,      -- key_<16 hex>
    secret_hash  text NOT NULL UNIQUE,  -- SHA-256 hex of the secret; the secret is never stored
    hint         text NOT NULL,
    name         text,
    dim_user     text,
    dim_team     text,
    dim_project  text,
    dim_customer text,
    tags         text NOT NULL,         -- JSON array
    models       text NOT NULL,         -- JSON array of glob patterns
    expires_at   bigint,                -- µs since the epoch, UTC
    disabled     boolean NOT NULL DEFAULT false,
    created_at   bigint NOT NULL,
    updated_at   bigint NOT NULL
);
INSERT INTO gateway_meta (key, value) VALUES ('keys_schema', 1) ON CONFLICT DO NOTHING;
