-- The SQLite ledger's schema. PRAGMA user_version is the file's schema version;
-- the statements after "-- migration N" take a file from version N-1 to N, in one
-- transaction at open (schema.py). Add a migration, never edit a shipped one: SQLite
-- keeps each CREATE statement's text in sqlite_master, so even the indentation of a
-- shipped statement stays as it was.
--
-- Amounts are INTEGER nano-USD, instants INTEGER microseconds since the Unix epoch (UTC).

-- migration 1
CREATE TABLE budgets (
        id             TEXT PRIMARY KEY,
        definition     TEXT NOT NULL,     -- Budget.to_config() without the limit, as JSON
        config_limit   INTEGER NOT NULL,  -- nano-USD, as last given by put_budget
        limit_override INTEGER,           -- nano-USD from set_limit(); wins until config_limit changes
        updated_at     INTEGER NOT NULL
    );

-- Every budget change, so other processes can tell their subscribers what happened.
CREATE TABLE changes (
        seq            INTEGER PRIMARY KEY AUTOINCREMENT,
        budget_id      TEXT NOT NULL,
        kind           TEXT NOT NULL CHECK (kind IN ('put', 'remove', 'limit', 'reset')),
        new_limit      INTEGER,
        previous_limit INTEGER,
        instance       TEXT,
        at             INTEGER NOT NULL
    );

CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('budgets_version', 0), ('last_purge', 0);

-- One row per budget instance per window: the numbers every admission checks.
CREATE TABLE spend (
        budget_id    TEXT NOT NULL,
        window_start INTEGER NOT NULL,            -- µs since epoch; 0 for a budget without window
        instance     TEXT NOT NULL,               -- '' or 'user=alice'
        window_end   INTEGER,                     -- µs; NULL when the window never resets
        spent        INTEGER NOT NULL DEFAULT 0,  -- nano-USD settled or expired
        reserved     INTEGER NOT NULL DEFAULT 0,  -- nano-USD held by open reservations
        alerted      INTEGER NOT NULL DEFAULT 0,  -- highest threshold (%) already announced
        PRIMARY KEY (budget_id, window_start, instance)
    ) WITHOUT ROWID;

-- Sent threshold alerts: the unique key makes each one go out once per window.
CREATE TABLE alerts (
        budget_id    TEXT NOT NULL,
        window_start INTEGER NOT NULL,
        instance     TEXT NOT NULL,
        threshold    INTEGER NOT NULL,
        spent        INTEGER NOT NULL,
        limit_nanos  INTEGER NOT NULL,
        request_id   TEXT NOT NULL,
        sent_at      INTEGER NOT NULL,
        PRIMARY KEY (budget_id, window_start, instance, threshold)
    ) WITHOUT ROWID;

-- Every request: its reservation while open, then the request log (kept for ``retention``).
CREATE TABLE requests (
        request_id   TEXT PRIMARY KEY,
        state        TEXT NOT NULL CHECK (state IN ('open', 'settled', 'released', 'expired')),
        estimate     INTEGER NOT NULL,  -- nano-USD held while open
        cost         INTEGER,           -- nano-USD charged when it ended
        started_at   INTEGER NOT NULL,  -- µs: when it was reserved (the ledger's clock)
        expires_at   INTEGER NOT NULL,  -- µs: end of the lease
        finished_at  INTEGER,           -- µs: when it was settled, released or expired
        lines        TEXT NOT NULL,     -- JSON [[budget_id, instance, window_start, window_end], ...]
        dim_key      TEXT,
        dim_user     TEXT,
        dim_team     TEXT,
        dim_project  TEXT,
        dim_customer TEXT,
        dim_model    TEXT,
        tags         TEXT,              -- JSON array, NULL when none
        status       TEXT,              -- RequestRecord.status ('ok', 'error', ...; 'expired')
        model        TEXT,              -- the model as billed (may differ from dim_model)
        usage        TEXT,              -- JSON {"input_tokens": 12, ...}
        breakdown    TEXT               -- JSON {"input": "0.00003", ...} decimal USD strings
    ) WITHOUT ROWID;
CREATE INDEX requests_open_by_expiry ON requests (expires_at) WHERE state = 'open';
CREATE INDEX requests_by_time ON requests (started_at);
-- One per dimension column (codec.DIM_COLUMNS), for the request log's filters and usage_by.
CREATE INDEX requests_by_key ON requests (dim_key, started_at) WHERE dim_key IS NOT NULL;
CREATE INDEX requests_by_user ON requests (dim_user, started_at) WHERE dim_user IS NOT NULL;
CREATE INDEX requests_by_team ON requests (dim_team, started_at) WHERE dim_team IS NOT NULL;
CREATE INDEX requests_by_project ON requests (dim_project, started_at) WHERE dim_project IS NOT NULL;
CREATE INDEX requests_by_customer ON requests (dim_customer, started_at) WHERE dim_customer IS NOT NULL;
CREATE INDEX requests_by_model ON requests (dim_model, started_at) WHERE dim_model IS NOT NULL;

-- migration 2
-- The file's own id, remembered at open: a connection that finds another id is on another
-- file (connection.py refuses it rather than start over). 'probes' counts check_writable().
INSERT INTO meta (key, value) VALUES ('ledger_id', random()), ('probes', 0);

-- migration 3
-- Rate limits (spendgate.limits), shared like the budgets: every process enforces the same
-- set, reloaded when 'limits_version' moves. The rowid keeps the order they were added in
-- (the order a refusal is looked for in, as memory does). 'generation' is the limits_version
-- at which the limit's counts began: a change of kind or window starts them over, and an
-- ending whose take names an older generation gives nothing back to the new counts.
CREATE TABLE limits (
        id          TEXT NOT NULL UNIQUE,
        definition  TEXT NOT NULL,     -- Limit.to_config() as JSON
        width_us    INTEGER NOT NULL,  -- one bucket of the window, µs (0: no window); for the purge
        generation  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL
    );
-- A windowed limit instance's buckets: bucket = µs since epoch // width_us. A window is
-- the rows from bucket - 20 on: one indexed range of at most 21 rows.
CREATE TABLE limit_buckets (
        limit_id TEXT NOT NULL,
        instance TEXT NOT NULL,     -- '' or 'key=k1'
        bucket   INTEGER NOT NULL,
        amount   INTEGER NOT NULL,  -- requests, tokens or nano-USD taken in this bucket
        PRIMARY KEY (limit_id, instance, bucket)
    ) WITHOUT ROWID;
-- A concurrency limit instance's requests in flight.
CREATE TABLE limit_flight (
        limit_id  TEXT NOT NULL,
        instance  TEXT NOT NULL,
        in_flight INTEGER NOT NULL,
        PRIMARY KEY (limit_id, instance)
    ) WITHOUT ROWID;
-- What a reservation took from each limit instance, to give back at its ending:
-- JSON [[limit_id, generation, instance, bucket, amount], ...]; NULL when it matched no limit.
ALTER TABLE requests ADD COLUMN takes TEXT;
INSERT INTO meta (key, value) VALUES ('limits_version', 0);

-- migration 4
-- The alert outbox (spendgate.alerts, docs/alerts.md). An event is one row by its id (the same
-- crossing noticed by several processes is one event); seq is the order events were added in.
CREATE TABLE alert_events (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        id         TEXT NOT NULL UNIQUE,
        kind       TEXT NOT NULL,
        budget_id  TEXT NOT NULL,
        body       TEXT NOT NULL,     -- AlertEvent.to_json(): the webhook body
        created_at INTEGER NOT NULL   -- µs
    );
-- A destination receives the events added after it was first registered (after_seq).
CREATE TABLE alert_destinations (
        name       TEXT PRIMARY KEY,
        after_seq  INTEGER NOT NULL,  -- the last event it has a delivery row for
        created_at INTEGER NOT NULL
    ) WITHOUT ROWID;
-- One event to one destination: claimed by one sender at a time, until claimed_until.
CREATE TABLE alert_deliveries (
        event_seq     INTEGER NOT NULL,
        destination   TEXT NOT NULL,
        state         TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed', 'skipped')),
        attempts      INTEGER NOT NULL DEFAULT 0,
        next_at       INTEGER NOT NULL,  -- µs: due (pending)
        claimed_by    TEXT,
        claimed_until INTEGER,           -- µs
        last_error    TEXT,
        delivered_at  INTEGER,           -- µs
        PRIMARY KEY (event_seq, destination)
    ) WITHOUT ROWID;
CREATE INDEX alert_deliveries_due ON alert_deliveries (next_at) WHERE state = 'pending';

-- migration 5
-- Each logged request's token counts in columns of their own (its usage JSON's input_tokens and
-- output_tokens): usage_timeseries sums them without parsing the JSON of every row (measured:
-- 112 -> 48 ms for 30 days hourly over 100,000 requests). Filled for the rows already here.
ALTER TABLE requests ADD COLUMN input_tokens INTEGER;
ALTER TABLE requests ADD COLUMN output_tokens INTEGER;
UPDATE requests SET input_tokens = json_extract(usage, '$.input_tokens'),
                    output_tokens = json_extract(usage, '$.output_tokens')
    WHERE usage IS NOT NULL;

-- migration 6
-- How many requests each budget or rate limit refused, per minute (RefusalCounts): every process
-- adds its counts every few seconds, so the dashboard's overview counts every process's refusals.
CREATE TABLE refusal_counts (
        minute  INTEGER NOT NULL,  -- µs at a whole UTC minute
        kind    TEXT NOT NULL,     -- budget, rate_limit, cost_cap
        subject TEXT NOT NULL,     -- the budget's or limit's id ('' for a request's own cost cap)
        count   INTEGER NOT NULL,
        PRIMARY KEY (minute, kind, subject)
    ) WITHOUT ROWID;
