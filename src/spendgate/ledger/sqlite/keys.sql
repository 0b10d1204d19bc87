-- The gateway's virtual keys, in their own tables next to the ledger's (same file).
-- The ledger's PRAGMA user_version is not theirs to touch, so this schema's version
-- lives in gateway_meta ('keys_schema'; schema.KEYS_SCHEMA_VERSION must match the
-- value inserted below). Every statement is idempotent: all of them run at each open.
-- SQLite keeps each CREATE statement's text in sqlite_master: leave shipped ones as
-- they are, indentation included.

CREATE TABLE IF NOT EXISTS gateway_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gateway_keys (
        id          TEXT PRIMARY KEY,       -- key_<16 hex>
        secret_hash TEXT NOT NULL UNIQUE,   -- SHA-256 hex of the secret; the secret is never stored
        hint        TEXT NOT NULL,          -- 'sg-abcd…'
        name        TEXT,
        dim_user    TEXT,
        dim_team    TEXT,
        dim_project TEXT,
        dim_customer TEXT,
        tags        TEXT NOT NULL,          -- JSON array
        models      TEXT NOT NULL,          -- JSON array of glob patterns
        expires_at  INTEGER,                -- µs since the epoch, UTC
        disabled    INTEGER NOT NULL DEFAULT 0,
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL
    );
INSERT INTO gateway_meta (key, value) VALUES ('keys_schema', 1) ON CONFLICT DO NOTHING;
-- The file's id as the key storage remembers it at open (connection.py: never start over silently).
INSERT INTO gateway_meta (key, value) VALUES ('file_id', random()) ON CONFLICT DO NOTHING;
