-- Feed snapshot governance (SPEC §5.4, seed 001): snapshot records, retention holds and the
-- hash-chained audit log. Decisions live in workers/snapshot_retention/core.py; these
-- constraints are the last line of defence when a caller gets them wrong.
CREATE SCHEMA IF NOT EXISTS ingest;

-- One row per imported snapshot. Rows are never deleted: retention's "delete" removes the
-- payload object and sets state 'deleted', keeping the record as history.
CREATE TABLE ingest.feed_snapshots (
    snapshot_id       TEXT         PRIMARY KEY,  -- {tool}-{YYYYMMDDTHHMMSSZ}-{seq:03d}
    tool              TEXT         NOT NULL
        CHECK (tool ~ '^[a-z0-9]([a-z0-9_-]{0,62}[a-z0-9])?$'),
    tool_version      TEXT         NOT NULL CHECK (tool_version <> ''),
    imported_at       TIMESTAMPTZ  NOT NULL,
    source_hash       TEXT         NOT NULL CHECK (source_hash ~ '^b3:[0-9a-f]{64}$'),
    normalized_hash   TEXT         NOT NULL CHECK (normalized_hash ~ '^b3:[0-9a-f]{64}$'),
    record_count      INTEGER      NOT NULL CHECK (record_count >= 0),
    state             TEXT         NOT NULL
        CHECK (state IN ('active', 'previous', 'archived', 'expired', 'deleted')),
    previous_snapshot TEXT         REFERENCES ingest.feed_snapshots (snapshot_id),
    object_key        TEXT         NOT NULL CHECK (object_key <> ''),  -- content-addressed S3 key
    metadata          JSONB        NOT NULL DEFAULT '{}'::jsonb
        CHECK (jsonb_typeof(metadata) = 'object'),
    state_changed_at  TIMESTAMPTZ  NOT NULL,  -- retention ages are measured from here
    -- the id starts with its own tool and ends with a UTC stamp and a sequence 001..999
    CONSTRAINT feed_snapshots_id_format CHECK (
        left(snapshot_id, length(tool) + 1) = tool || '-'
        AND substr(snapshot_id, length(tool) + 2) ~ '^[0-9]{8}T[0-9]{6}Z-[0-9]{3}$'
        AND right(snapshot_id, 3) <> '000'
    ),
    CONSTRAINT feed_snapshots_previous_not_self CHECK (previous_snapshot <> snapshot_id)
);

-- At most one active snapshot per tool. Planners demote the old active row before
-- activating the new one, so the swap never trips this inside a transaction.
CREATE UNIQUE INDEX uq_feed_snapshots_one_active
    ON ingest.feed_snapshots (tool) WHERE state = 'active';

-- Retention scans rows by state and age; listings filter by tool and state.
CREATE INDEX idx_feed_snapshots_state_age
    ON ingest.feed_snapshots (state, state_changed_at);
CREATE INDEX idx_feed_snapshots_tool_state
    ON ingest.feed_snapshots (tool, state, imported_at DESC);
-- Objects are shared by snapshots with identical content; deletion checks other users.
CREATE INDEX idx_feed_snapshots_object_key
    ON ingest.feed_snapshots (object_key);

-- Retention exceptions (audit holds): block every retention action for one snapshot or for
-- every snapshot of a tool until expires_at (exclusive); NULL expires_at holds indefinitely.
CREATE TABLE ingest.retention_exceptions (
    hold_id     BIGINT       GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    snapshot_id TEXT         REFERENCES ingest.feed_snapshots (snapshot_id),
    tool        TEXT         CHECK (tool ~ '^[a-z0-9]([a-z0-9_-]{0,62}[a-z0-9])?$'),
    reason      TEXT         NOT NULL CHECK (btrim(reason) <> ''),
    created_by  TEXT         NOT NULL DEFAULT 'system',
    created_at  TIMESTAMPTZ  NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ,
    CONSTRAINT retention_exceptions_one_scope CHECK ((snapshot_id IS NULL) <> (tool IS NULL)),
    CONSTRAINT retention_exceptions_expiry_after_creation
        CHECK (expires_at IS NULL OR expires_at > created_at)
);

CREATE INDEX idx_retention_exceptions_snapshot
    ON ingest.retention_exceptions (snapshot_id) WHERE snapshot_id IS NOT NULL;
CREATE INDEX idx_retention_exceptions_tool
    ON ingest.retention_exceptions (tool) WHERE tool IS NOT NULL;

-- The audit log. hash = BLAKE3(prev_hash, canonical JSON of every other column); see
-- core.chain_hash. snapshot_id is deliberately not a foreign key: the log outlives rows.
-- The writer computes the hash before inserting, so it takes seq from the sequence itself
-- (nextval) while holding the chain's tail.
CREATE TABLE ingest.snapshot_audit (
    seq         BIGSERIAL    PRIMARY KEY,
    event       TEXT         NOT NULL CHECK (event IN (
                    'snapshot_imported', 'snapshot_activated', 'snapshot_rolled_back',
                    'snapshot_archived', 'snapshot_expired', 'snapshot_deleted')),
    snapshot_id TEXT         NOT NULL,
    tool        TEXT         NOT NULL,
    actor       TEXT         NOT NULL,
    reason      TEXT,
    details     JSONB        NOT NULL DEFAULT '{}'::jsonb
        CHECK (jsonb_typeof(details) = 'object'),
    occurred_at TIMESTAMPTZ  NOT NULL,
    prev_hash   TEXT         NOT NULL CHECK (prev_hash ~ '^b3:[0-9a-f]{64}$'),
    hash        TEXT         NOT NULL CHECK (hash ~ '^b3:[0-9a-f]{64}$')
);

-- A linear chain: each hash is extended at most once, so two writers racing for the same
-- tail cannot fork it (the loser gets a unique violation and retries on the new tail).
-- The first record's prev_hash is the fixed genesis value b3:000...0.
CREATE UNIQUE INDEX uq_snapshot_audit_prev_hash ON ingest.snapshot_audit (prev_hash);
CREATE UNIQUE INDEX uq_snapshot_audit_hash ON ingest.snapshot_audit (hash);
CREATE INDEX idx_snapshot_audit_snapshot ON ingest.snapshot_audit (snapshot_id, seq);
CREATE INDEX idx_snapshot_audit_occurred ON ingest.snapshot_audit (occurred_at);

-- Append-only: UPDATE, DELETE and TRUNCATE are refused unless the transaction sets
--   SET LOCAL ingest.allow_audit_tamper = 'on';
-- That switch exists for two callers only: the manual one-year audit pruning (which then
-- verifies the remaining tail from its first prev_hash) and tests that play an attacker
-- rewriting history to prove `fleet snapshots audit verify` catches it. The trigger guards
-- against accidents, not against a role that may write to the table; the hash chain is what
-- detects deliberate tampering, and worker roles should hold only INSERT and SELECT here.
CREATE FUNCTION ingest.snapshot_audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('ingest.allow_audit_tamper', true), '') = 'on' THEN
        IF TG_LEVEL = 'STATEMENT' THEN
            RETURN NULL;
        ELSIF TG_OP = 'DELETE' THEN
            RETURN OLD;
        END IF;
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'ingest.snapshot_audit is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'audit records are never changed; see schema/0005_snapshots.sql';
END;
$$;

CREATE TRIGGER snapshot_audit_no_update_delete
    BEFORE UPDATE OR DELETE ON ingest.snapshot_audit
    FOR EACH ROW EXECUTE FUNCTION ingest.snapshot_audit_append_only();

CREATE TRIGGER snapshot_audit_no_truncate
    BEFORE TRUNCATE ON ingest.snapshot_audit
    FOR EACH STATEMENT EXECUTE FUNCTION ingest.snapshot_audit_append_only();
