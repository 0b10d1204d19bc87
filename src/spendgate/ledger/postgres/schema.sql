-- The PostgreSQL ledger's schema, in the schema named by the URL (?schema=, default public).
-- spendgate_schema.version is the schema's version; the statements after "-- migration N"
-- take it from version N-1 to N, run as one script in the transaction that opens the ledger,
-- under an advisory lock (schema.py). Add a migration, never edit a shipped one.
--
-- Amounts are BIGINT nano-USD, instants BIGINT microseconds since the Unix epoch (UTC),
-- as in the SQLite ledger. Every transaction takes the spend rows it changes in one order:
-- wildcard instances first, then shared ones (instance '': the global and team budgets, the
-- rows every request contends on, so they are held the shortest), each by (budget,
-- window_start, instance), text in COLLATE "C" (Python's string order). No deadlock between them.

-- migration 1
CREATE TABLE spendgate_schema (version integer NOT NULL);
INSERT INTO spendgate_schema (version) VALUES (0);

-- Counters: budgets_version and limits_version (a change locks its row, so versions are
-- given in commit order), last_purge (µs), probes (check_writable).
CREATE TABLE meta (key text PRIMARY KEY, value bigint NOT NULL);
INSERT INTO meta (key, value) VALUES
    ('budgets_version', 0), ('limits_version', 0), ('last_purge', 0), ('probes', 0);

CREATE TABLE budgets (
    id             text PRIMARY KEY,
    definition     text NOT NULL,    -- Budget.to_config() without the limit, as JSON
    config_limit   bigint NOT NULL,  -- nano-USD, as last given by put_budget
    limit_override bigint,           -- nano-USD from set_limit(); wins until config_limit changes
    updated_at     bigint NOT NULL
);

-- Every budget change; seq is the budgets_version it made (so readers find the ones they missed).
CREATE TABLE changes (
    seq            bigint PRIMARY KEY,
    budget_id      text NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('put', 'remove', 'limit', 'reset')),
    new_limit      bigint,
    previous_limit bigint,
    instance       text,
    at             bigint NOT NULL
);

-- One row per budget instance per window: the numbers every admission checks.
CREATE TABLE spend (
    budget_id    text NOT NULL,
    window_start bigint NOT NULL,            -- µs; 0 for a budget without window
    instance     text NOT NULL,              -- '' or 'user=alice'
    window_end   bigint,                     -- µs; NULL when the window never resets
    spent        bigint NOT NULL DEFAULT 0,  -- nano-USD settled or expired
    reserved     bigint NOT NULL DEFAULT 0,  -- nano-USD held by open reservations
    alerted      integer NOT NULL DEFAULT 0, -- highest threshold (%) already announced
    PRIMARY KEY (budget_id, window_start, instance)
);

-- Sent threshold alerts: the unique key makes each one go out once per window.
CREATE TABLE alerts (
    budget_id    text NOT NULL,
    window_start bigint NOT NULL,
    instance     text NOT NULL,
    threshold    integer NOT NULL,
    spent        bigint NOT NULL,
    limit_nanos  bigint NOT NULL,
    request_id   text NOT NULL,
    sent_at      bigint NOT NULL,
    PRIMARY KEY (budget_id, window_start, instance, threshold)
);

-- Every request: its reservation while open, then the request log (kept for ``retention``).
CREATE TABLE requests (
    request_id   text PRIMARY KEY,
    state        text NOT NULL CHECK (state IN ('open', 'settled', 'released', 'expired')),
    estimate     bigint NOT NULL,
    cost         bigint,
    started_at   bigint NOT NULL,
    expires_at   bigint NOT NULL,
    finished_at  bigint,
    lines        jsonb NOT NULL,  -- [[budget_id, instance, window_start, window_end], ...]
    dim_key      text,
    dim_user     text,
    dim_team     text,
    dim_project  text,
    dim_customer text,
    dim_model    text,
    tags         jsonb,           -- array of strings, NULL when none
    status       text,
    model        text,
    usage        text,            -- JSON {"input_tokens": 12, ...}
    breakdown    text,            -- JSON {"input": "0.00003", ...} decimal USD strings
    takes        jsonb            -- [[limit_id, generation, instance, bucket, amount], ...] or NULL
);
CREATE INDEX requests_open_by_expiry ON requests (expires_at) WHERE state = 'open';
CREATE INDEX requests_by_time ON requests (started_at);
CREATE INDEX requests_by_key ON requests (dim_key, started_at) WHERE dim_key IS NOT NULL;
CREATE INDEX requests_by_user ON requests (dim_user, started_at) WHERE dim_user IS NOT NULL;
CREATE INDEX requests_by_team ON requests (dim_team, started_at) WHERE dim_team IS NOT NULL;
CREATE INDEX requests_by_project ON requests (dim_project, started_at) WHERE dim_project IS NOT NULL;
CREATE INDEX requests_by_customer ON requests (dim_customer, started_at) WHERE dim_customer IS NOT NULL;
CREATE INDEX requests_by_model ON requests (dim_model, started_at) WHERE dim_model IS NOT NULL;

-- Rate limits, shared like the budgets. seq keeps the order they were added in; generation
-- is the limits_version their counts began at (see the SQLite schema, migration 3).
CREATE TABLE limits (
    id          text PRIMARY KEY,
    seq         bigint NOT NULL,
    definition  text NOT NULL,     -- Limit.to_config() as JSON
    kind        text NOT NULL,
    width_us    bigint NOT NULL,   -- one bucket of the window, µs (0: no window)
    generation  bigint NOT NULL,
    updated_at  bigint NOT NULL
);
CREATE TABLE limit_buckets (
    limit_id text NOT NULL,
    instance text NOT NULL,
    bucket   bigint NOT NULL,   -- µs since epoch // width_us
    amount   bigint NOT NULL,
    PRIMARY KEY (limit_id, instance, bucket)
);
CREATE TABLE limit_flight (
    limit_id  text NOT NULL,
    instance  text NOT NULL,
    in_flight bigint NOT NULL,
    PRIMARY KEY (limit_id, instance)
);

-- The budgets and limits as of one snapshot: versions, and what changed since (p_bv, p_lv).
-- NULL fields: unchanged. A function of one statement: everything from the same snapshot.
CREATE FUNCTION sg_catalog(p_bv bigint, p_lv bigint) RETURNS jsonb LANGUAGE sql STABLE AS $$
    WITH v AS (
        SELECT (SELECT value FROM meta WHERE key = 'budgets_version') AS bv,
               (SELECT value FROM meta WHERE key = 'limits_version') AS lv
    )
    SELECT jsonb_build_object(
        'bv', v.bv,
        'lv', v.lv,
        'budgets', CASE WHEN v.bv <> p_bv THEN (
            SELECT coalesce(jsonb_agg(jsonb_build_array(id, definition, config_limit, limit_override)
                                      ORDER BY id COLLATE "C"), '[]'::jsonb)
            FROM budgets) END,
        'changes', CASE WHEN p_bv >= 0 AND v.bv > p_bv THEN (
            SELECT coalesce(jsonb_agg(jsonb_build_array(seq, budget_id, kind, new_limit, previous_limit,
                                                        instance) ORDER BY seq), '[]'::jsonb)
            FROM changes WHERE seq > p_bv AND seq <= v.bv) END,
        'limits', CASE WHEN v.lv <> p_lv THEN (
            SELECT coalesce(jsonb_agg(jsonb_build_array(id, definition, generation) ORDER BY seq),
                            '[]'::jsonb)
            FROM limits) END)
    FROM v
$$;

-- Reserve, in one statement (its own transaction: row locks are held only inside it).
-- Python planned everything (reservations.py): the budget lines in lock order, each
-- [budget, window_start, instance, window_end, limit (a paced budget: its allowance by now),
-- index in the plan], and the rate limit takes in the limits' order, each [kind (0:
-- concurrency, 1: window), limit, instance, bucket, need, oldest bucket, amount]. Nothing is
-- written when the versions are not the plan's ('stale': Python reloads and plans again) or
-- the id exists ('exists'). A refusal undoes what this call wrote and says what refused.
CREATE FUNCTION sg_reserve(
    p_bv bigint, p_lv bigint,
    p_id text, p_est bigint, p_started bigint, p_expires bigint, p_lines jsonb,
    p_key text, p_user text, p_team text, p_project text, p_customer text, p_model text,
    p_tags jsonb, p_takes jsonb, p_holds jsonb, p_checks jsonb, p_static boolean
) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    n integer;
    nb integer := jsonb_array_length(p_holds);
    nk integer := jsonb_array_length(p_checks);
    i integer;
    j integer;
    h jsonb;
    hb text;
    hs bigint;
    hk text;
    hl bigint;
    best integer;
    bestorder integer;
    taken integer := 0;
    sp bigint;
    rs bigint;
    used bigint;
    got bigint;
    refused integer;
    detail jsonb;
    kk integer;
    kid text;
    kkey text;
    kbucket bigint;
    kneed bigint;
    koldest bigint;
    kamount bigint;
BEGIN
    IF (SELECT value FROM meta WHERE key = 'budgets_version') <> p_bv
       OR (SELECT value FROM meta WHERE key = 'limits_version') <> p_lv THEN
        RETURN '{"s": "stale"}'::jsonb;
    END IF;
    INSERT INTO requests (request_id, state, estimate, started_at, expires_at, lines, dim_key, dim_user,
                          dim_team, dim_project, dim_customer, dim_model, tags, takes)
    VALUES (p_id, 'open', p_est, p_started, p_expires, p_lines, p_key, p_user, p_team, p_project,
            p_customer, p_model, p_tags, p_takes)
    ON CONFLICT (request_id) DO NOTHING;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n = 0 THEN
        RETURN '{"s": "exists"}'::jsonb;
    END IF;
    FOR i IN 0 .. nb - 1 LOOP
        h := p_holds->i;
        hb := h->>0;
        hs := (h->>1)::bigint;
        hk := h->>2;
        hl := (h->>4)::bigint;
        -- Atomic per row under READ COMMITTED: the conflict path locks the row and checks the
        -- condition against its latest committed version.
        INSERT INTO spend AS s (budget_id, window_start, instance, window_end, reserved)
        SELECT hb, hs, hk, (h->>3)::bigint, p_est WHERE p_est <= hl
        ON CONFLICT (budget_id, window_start, instance) DO UPDATE
            SET reserved = s.reserved + excluded.reserved
            WHERE s.spent + s.reserved + excluded.reserved <= hl;
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n = 0 THEN
            -- Name the first refusing line in the plan's order: this one, or a later one
            -- (in lock order) that comes earlier in the plan and would not fit either.
            best := i;
            bestorder := (h->>5)::integer;
            FOR j IN i + 1 .. nb - 1 LOOP
                IF (p_holds->j->>5)::integer < bestorder AND coalesce((
                        SELECT spent + reserved FROM spend
                        WHERE budget_id = p_holds->j->>0 AND window_start = (p_holds->j->>1)::bigint
                          AND instance = p_holds->j->>2), 0) + p_est > (p_holds->j->>4)::bigint THEN
                    best := j;
                    bestorder := (p_holds->j->>5)::integer;
                END IF;
            END LOOP;
            SELECT spent, reserved INTO sp, rs FROM spend
            WHERE budget_id = p_holds->best->>0 AND window_start = (p_holds->best->>1)::bigint
              AND instance = p_holds->best->>2;
            FOR j IN 0 .. i - 1 LOOP
                UPDATE spend SET reserved = reserved - p_est
                WHERE budget_id = p_holds->j->>0 AND window_start = (p_holds->j->>1)::bigint
                  AND instance = p_holds->j->>2;
            END LOOP;
            DELETE FROM requests WHERE request_id = p_id;
            RETURN jsonb_build_object('s', 'budget', 'i', bestorder, 'spent', coalesce(sp, 0),
                                      'reserved', coalesce(rs, 0));
        END IF;
    END LOOP;
    FOR j IN 0 .. nk - 1 LOOP
        h := p_checks->j;
        kk := (h->>0)::integer;
        kid := h->>1;
        kkey := h->>2;
        kneed := (h->>4)::bigint;
        kamount := (h->>6)::bigint;
        IF kk = 0 THEN  -- concurrency: one more in flight while it fits
            INSERT INTO limit_flight AS f (limit_id, instance, in_flight)
            SELECT kid, kkey, kneed WHERE kneed <= kamount
            ON CONFLICT (limit_id, instance) DO UPDATE
                SET in_flight = f.in_flight + excluded.in_flight
                WHERE f.in_flight + excluded.in_flight <= kamount;
            GET DIAGNOSTICS n = ROW_COUNT;
            IF n = 0 THEN
                SELECT in_flight INTO used FROM limit_flight WHERE limit_id = kid AND instance = kkey;
                refused := j;
                detail := to_jsonb(coalesce(used, 0));
                EXIT;
            END IF;
        ELSE
            kbucket := (h->>3)::bigint;
            koldest := (h->>5)::bigint;
            -- A window is a sum over up to 21 rows: check and take under one lock per
            -- instance, or two transactions could both see room for the last unit.
            PERFORM pg_advisory_xact_lock(
                hashtextextended('spendgate limit ' || current_schema() || chr(31) || kid || chr(31) || kkey, 0));
            SELECT coalesce(sum(amount), 0) INTO used FROM limit_buckets
            WHERE limit_id = kid AND instance = kkey AND bucket >= koldest;
            IF used + kneed > kamount THEN
                refused := j;
                SELECT coalesce(jsonb_agg(jsonb_build_array(bucket, amount)), '[]'::jsonb) INTO detail
                FROM limit_buckets WHERE limit_id = kid AND instance = kkey AND bucket >= koldest;
                EXIT;
            END IF;
            INSERT INTO limit_buckets AS lb (limit_id, instance, bucket, amount)
            VALUES (kid, kkey, kbucket, kneed)
            ON CONFLICT (limit_id, instance, bucket) DO UPDATE SET amount = lb.amount + excluded.amount
            RETURNING amount INTO got;
            IF got = kneed THEN  -- a new bucket: drop those that left the window
                DELETE FROM limit_buckets WHERE limit_id = kid AND instance = kkey AND bucket < koldest;
            END IF;
        END IF;
        taken := j + 1;
    END LOOP;
    IF refused IS NULL AND NOT p_static THEN
        RETURN '{"s": "ok"}'::jsonb;
    END IF;
    -- Refused by a limit (or by a prompt_tokens limit, decided in Python): undo it all.
    FOR j IN 0 .. taken - 1 LOOP
        h := p_checks->j;
        IF (h->>0)::integer = 0 THEN
            UPDATE limit_flight SET in_flight = greatest(in_flight - (h->>4)::bigint, 0)
            WHERE limit_id = h->>1 AND instance = h->>2;
        ELSE
            UPDATE limit_buckets SET amount = amount - (h->>4)::bigint
            WHERE limit_id = h->>1 AND instance = h->>2 AND bucket = (h->>3)::bigint;
        END IF;
    END LOOP;
    FOR i IN 0 .. nb - 1 LOOP
        UPDATE spend SET reserved = reserved - p_est
        WHERE budget_id = p_holds->i->>0 AND window_start = (p_holds->i->>1)::bigint
          AND instance = p_holds->i->>2;
    END LOOP;
    DELETE FROM requests WHERE request_id = p_id;
    RETURN jsonb_build_object('s', 'limit', 'j', refused, 'detail', detail);
END
$$;

-- What a request's rate limit takes get back at its ending (limits.window_change; concurrency
-- always whole). A take whose limit's counts started over since (generation) gets nothing.
CREATE FUNCTION sg_give_back(p_takes jsonb, p_how text, p_used jsonb, p_cost bigint)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    t jsonb;
    knd text;
    amt bigint;
    chg bigint;
BEGIN
    FOR t IN SELECT e FROM jsonb_array_elements(p_takes) AS e LOOP
        SELECT kind INTO knd FROM limits WHERE id = t->>0 AND generation = (t->>1)::bigint;
        IF NOT FOUND THEN
            CONTINUE;
        END IF;
        amt := (t->>4)::bigint;
        IF knd = 'concurrency' THEN
            UPDATE limit_flight SET in_flight = greatest(in_flight - amt, 0)
            WHERE limit_id = t->>0 AND instance = t->>2;
            CONTINUE;
        END IF;
        chg := CASE
            WHEN p_how = 'expired' THEN 0
            WHEN p_how = 'released' THEN CASE WHEN knd = 'requests' THEN 0 ELSE -amt END
            WHEN knd = 'usd' THEN p_cost - amt
            WHEN p_used IS NULL THEN 0
            ELSE (p_used->>knd)::bigint - amt
        END;
        IF chg < 0 THEN
            UPDATE limit_buckets SET amount = greatest(amount + chg, 0)
            WHERE limit_id = t->>0 AND instance = t->>2 AND bucket = (t->>3)::bigint;
        ELSIF chg > 0 THEN  -- the provider billed past the bound: count it
            INSERT INTO limit_buckets AS lb (limit_id, instance, bucket, amount)
            VALUES (t->>0, t->>2, (t->>3)::bigint, chg)
            ON CONFLICT (limit_id, instance, bucket) DO UPDATE SET amount = lb.amount + excluded.amount;
        END IF;
    END LOOP;
END
$$;

-- Settle ('settled': p_cost charged) or release ('released': nothing), in one statement.
-- Returns the lines as they are after it ([budget, instance, start, end, spent, reserved,
-- alerted], for thresholds and ``remaining``), or how the request ended before.
CREATE FUNCTION sg_end(
    p_id text, p_how text, p_cost bigint, p_now bigint, p_status text, p_model text, p_usage text,
    p_breakdown text, p_used jsonb
) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    est bigint;
    lns jsonb;
    tks jsonb;
    charge bigint := 0;
    st text;
    cst bigint;
    ln jsonb;
    sp bigint;
    rs bigint;
    al integer;
    bv bigint;
    lv bigint;
    out jsonb := '[]'::jsonb;
BEGIN
    IF p_how = 'settled' THEN
        charge := p_cost;
        UPDATE requests SET state = 'settled', cost = p_cost, finished_at = p_now, status = p_status,
                            model = p_model, usage = p_usage, breakdown = p_breakdown
        WHERE request_id = p_id AND state = 'open'
        RETURNING estimate, lines, takes INTO est, lns, tks;
    ELSE
        UPDATE requests SET state = 'released', cost = 0, finished_at = p_now
        WHERE request_id = p_id AND state = 'open'
        RETURNING estimate, lines, takes INTO est, lns, tks;
    END IF;
    IF NOT FOUND THEN
        SELECT state, estimate, cost INTO st, est, cst FROM requests WHERE request_id = p_id;
        IF NOT FOUND THEN
            RETURN '{"s": "unknown"}'::jsonb;
        END IF;
        RETURN jsonb_build_object('s', st, 'est', est, 'cost', cst);
    END IF;
    SELECT max(value) FILTER (WHERE key = 'budgets_version'), max(value) FILTER (WHERE key = 'limits_version')
    INTO bv, lv FROM meta WHERE key IN ('budgets_version', 'limits_version');  -- before any hot row is locked
    FOR ln IN SELECT e FROM jsonb_array_elements(lns) AS e
              ORDER BY (e->>1) = '', (e->>0) COLLATE "C", (e->>2)::bigint, (e->>1) COLLATE "C" LOOP
        UPDATE spend SET reserved = reserved - est, spent = spent + charge
        WHERE budget_id = ln->>0 AND window_start = (ln->>2)::bigint AND instance = ln->>1
        RETURNING spent, reserved, alerted INTO sp, rs, al;
        out := out || jsonb_build_array(jsonb_build_array(ln->0, ln->1, ln->2, ln->3, sp, rs, al));
    END LOOP;
    IF tks IS NOT NULL THEN
        PERFORM sg_give_back(tks, p_how, p_used, p_cost);
    END IF;
    RETURN jsonb_build_object('s', 'ok', 'est', est, 'lines', out, 'bv', bv, 'lv', lv);
END
$$;

-- Charge up to p_batch reservations whose lease ran out at their estimate. SKIP LOCKED: two
-- processes expiring at once take different requests, and never one being settled. The
-- lines are charged summed per row, in lock order (each row once, no deadlock between them).
CREATE FUNCTION sg_expire(p_now bigint, p_batch integer) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    rids text[];
    ests bigint[];
    lns jsonb[];
    tks jsonb[];
    ln record;
    sp bigint;
    rs bigint;
    al integer;
    t jsonb;
    out jsonb := '[]'::jsonb;
BEGIN
    WITH due AS (
        SELECT request_id FROM requests
        WHERE state = 'open' AND expires_at <= p_now
        ORDER BY expires_at LIMIT p_batch
        FOR UPDATE SKIP LOCKED
    ), ended AS (
        UPDATE requests AS r SET state = 'expired', cost = r.estimate, finished_at = p_now, status = 'expired'
        FROM due WHERE r.request_id = due.request_id AND r.state = 'open'
        RETURNING r.request_id, r.estimate, r.lines, r.takes
    )
    SELECT array_agg(request_id), array_agg(estimate), array_agg(lines), array_agg(takes)
    INTO rids, ests, lns, tks FROM ended;
    IF rids IS NULL THEN
        RETURN '{"expired": [], "lines": []}'::jsonb;
    END IF;
    FOR ln IN
        SELECT l->>0 AS b, (l->>2)::bigint AS st, l->>1 AS k, l->3 AS en, sum(u.est)::bigint AS total,
               max(u.rid) AS rid
        FROM unnest(rids, ests, lns) AS u(rid, est, lines), jsonb_array_elements(u.lines) AS l
        GROUP BY 1, 2, 3, 4
        ORDER BY (l->>1) = '', (l->>0) COLLATE "C", (l->>2)::bigint, (l->>1) COLLATE "C"
    LOOP
        UPDATE spend SET reserved = reserved - ln.total, spent = spent + ln.total
        WHERE budget_id = ln.b AND window_start = ln.st AND instance = ln.k
        RETURNING spent, reserved, alerted INTO sp, rs, al;
        out := out || jsonb_build_array(jsonb_build_array(ln.b, ln.k, ln.st, ln.en, sp, rs, al, ln.rid,
                                                          ln.total));
    END LOOP;
    FOREACH t IN ARRAY tks LOOP
        IF t IS NOT NULL THEN
            PERFORM sg_give_back(t, 'expired', NULL, 0);
        END IF;
    END LOOP;
    RETURN jsonb_build_object(
        'expired', (SELECT jsonb_agg(jsonb_build_array(r, e)) FROM unnest(rids, ests) AS x(r, e)),
        'lines', out);
END
$$;

-- Announce thresholds a settle or an expiry crossed: the ones whose row is new are this
-- caller's to deliver (another process may have sent some first).
CREATE FUNCTION sg_alert(
    p_budget text, p_start bigint, p_instance text, p_thresholds integer[], p_spent bigint,
    p_limit bigint, p_request text, p_now bigint
) RETURNS integer[] LANGUAGE plpgsql AS $$
DECLARE
    sent integer[];
BEGIN
    WITH ins AS (
        INSERT INTO alerts (budget_id, window_start, instance, threshold, spent, limit_nanos, request_id,
                            sent_at)
        SELECT p_budget, p_start, p_instance, t, p_spent, p_limit, p_request, p_now
        FROM unnest(p_thresholds) AS t
        ON CONFLICT DO NOTHING
        RETURNING threshold
    )
    SELECT coalesce(array_agg(threshold ORDER BY threshold), '{}') INTO sent FROM ins;
    UPDATE spend SET alerted = greatest(alerted, (SELECT max(t) FROM unnest(p_thresholds) AS t))
    WHERE budget_id = p_budget AND window_start = p_start AND instance = p_instance;
    RETURN sent;
END
$$;

-- migration 2
-- The alert outbox (spendgate.alerts, docs/alerts.md), the SQLite schema's (its migration 4).
-- An event is one row by its id (the same crossing noticed by several processes is one event).
-- seq is the order events were added in, given by sg_add_alerts under the lock of meta's
-- 'alert_seq' row, so events commit in seq order: whoever sees event n has seen every event
-- before it, and a claim that fans events out up to n misses none still in flight.
INSERT INTO meta (key, value) VALUES ('alert_seq', 0);
CREATE TABLE alert_events (
    seq        bigint PRIMARY KEY,
    id         text NOT NULL UNIQUE,
    kind       text NOT NULL,
    budget_id  text NOT NULL,
    body       text NOT NULL,    -- AlertEvent.to_json(): the webhook body
    created_at bigint NOT NULL   -- µs
);
-- A destination receives the events added after it was first registered (after_seq).
CREATE TABLE alert_destinations (
    name       text PRIMARY KEY,
    after_seq  bigint NOT NULL,  -- the last event it has a delivery row for
    created_at bigint NOT NULL
);
-- One event to one destination: claimed by one sender at a time (FOR UPDATE SKIP LOCKED),
-- until claimed_until.
CREATE TABLE alert_deliveries (
    event_seq     bigint NOT NULL,
    destination   text NOT NULL,
    state         text NOT NULL CHECK (state IN ('pending', 'delivered', 'failed', 'skipped')),
    attempts      integer NOT NULL DEFAULT 0,
    next_at       bigint NOT NULL,  -- µs: due (pending)
    claimed_by    text,
    claimed_until bigint,           -- µs
    last_error    text,
    delivered_at  bigint,           -- µs
    PRIMARY KEY (event_seq, destination)
);
CREATE INDEX alert_deliveries_due ON alert_deliveries (next_at) WHERE state = 'pending';

-- Add the events not yet in the outbox (p_events: [[id, kind, budget_id, body, created_at],
-- ...], in order); the ids of those this call added. The seq lock is taken only when one is new.
CREATE FUNCTION sg_add_alerts(p_events jsonb) RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    e jsonb;
    n bigint;
    k integer;
    added text[] := '{}';
BEGIN
    FOR e IN SELECT x FROM jsonb_array_elements(p_events) AS x LOOP
        IF EXISTS (SELECT 1 FROM alert_events WHERE id = e->>0) THEN
            CONTINUE;
        END IF;
        IF n IS NULL THEN
            SELECT value INTO n FROM meta WHERE key = 'alert_seq' FOR UPDATE;
        END IF;
        -- Another call may have added it while this one waited for the lock.
        INSERT INTO alert_events (seq, id, kind, budget_id, body, created_at)
        VALUES (n + 1, e->>0, e->>1, e->>2, e->>3, (e->>4)::bigint)
        ON CONFLICT (id) DO NOTHING;
        GET DIAGNOSTICS k = ROW_COUNT;
        IF k > 0 THEN
            n := n + 1;
            added := added || (e->>0);
        END IF;
    END LOOP;
    IF n IS NOT NULL THEN
        UPDATE meta SET value = n WHERE key = 'alert_seq';
    END IF;
    RETURN added;
END
$$;

-- sg_alert, and the outbox events of the thresholds it reports as sent, in one statement: no
-- crossing is announced without its event. p_events holds one event per p_thresholds entry.
CREATE FUNCTION sg_alert_events(
    p_budget text, p_start bigint, p_instance text, p_thresholds integer[], p_spent bigint,
    p_limit bigint, p_request text, p_now bigint, p_events jsonb
) RETURNS integer[] LANGUAGE plpgsql AS $$
DECLARE
    sent integer[];
BEGIN
    sent := sg_alert(p_budget, p_start, p_instance, p_thresholds, p_spent, p_limit, p_request, p_now);
    IF cardinality(sent) > 0 THEN
        PERFORM sg_add_alerts((
            SELECT jsonb_agg(x.e ORDER BY x.i)
            FROM jsonb_array_elements(p_events) WITH ORDINALITY AS x(e, i)
            WHERE p_thresholds[x.i] = ANY (sent)));
    END IF;
    RETURN sent;
END
$$;

-- migration 3
-- Each logged request's token counts as columns (the SQLite schema's migration 5): stored,
-- generated from its usage JSON, so usage_timeseries sums them without parsing every row's
-- JSON, and no statement that writes a request changes. A count that is not a whole number
-- (never written by spendgate) is NULL, not an error.
CREATE FUNCTION sg_tokens(p_usage text, p_key text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN (j->>p_key) ~ '^[0-9]{1,18}$' THEN (j->>p_key)::bigint END
    FROM (SELECT p_usage::jsonb AS j) AS u
$$;
ALTER TABLE requests
    ADD COLUMN input_tokens bigint GENERATED ALWAYS AS (sg_tokens(usage, 'input_tokens')) STORED,
    ADD COLUMN output_tokens bigint GENERATED ALWAYS AS (sg_tokens(usage, 'output_tokens')) STORED;

-- migration 4
-- How many requests each budget or rate limit refused, per minute (RefusalCounts; the SQLite
-- schema's migration 6): every process adds its counts every few seconds.
CREATE TABLE refusal_counts (
    minute  bigint NOT NULL,  -- µs at a whole UTC minute
    kind    text NOT NULL,    -- budget, rate_limit, cost_cap
    subject text NOT NULL,    -- the budget's or limit's id ('' for a request's own cost cap)
    count   bigint NOT NULL,
    PRIMARY KEY (minute, kind, subject)
);
