-- Snapshot governance completed (docs/snapshots.md): per-tool freshness thresholds and the
-- anchors that keep the audit chain verifiable after the one-year pruning.

-- Freshness thresholds of one tool (built-in or custom), overriding the fleet defaults
-- (FLEET_SNAPSHOT_MAX_AGE_DAYS, _STALE_DAYS, _CRITICAL_DAYS). Set with
-- `fleet snapshots thresholds set TOOL --max-age P7D --stale P14D --critical P30D`.
CREATE TABLE ingest.freshness_thresholds (
    tool        TEXT         PRIMARY KEY
        CHECK (tool ~ '^[a-z0-9]([a-z0-9_-]{0,62}[a-z0-9])?$'),
    max_age     INTERVAL     NOT NULL,
    stale       INTERVAL     NOT NULL,
    critical    INTERVAL     NOT NULL,
    updated_by  TEXT         NOT NULL,
    updated_at  TIMESTAMPTZ  NOT NULL DEFAULT now(),
    CONSTRAINT freshness_thresholds_ordered
        CHECK (max_age > interval '0' AND max_age <= stale AND stale <= critical)
);

-- One row per pruning of ingest.snapshot_audit (`fleet snapshots audit prune --before`).
-- last_seq/last_hash name the newest record removed: the first kept record must carry
-- last_hash as its prev_hash, so `audit verify` starts there and still checks every kept
-- record. Anchors chain like the records: hash = BLAKE3(prev_hash, canonical JSON of the
-- other columns), the first anchor's prev_hash being the genesis value b3:000...0, so an
-- altered anchor is detected too.
CREATE TABLE ingest.snapshot_audit_anchors (
    anchor_seq     BIGINT       PRIMARY KEY CHECK (anchor_seq >= 1),
    last_seq       BIGINT       NOT NULL UNIQUE CHECK (last_seq >= 1),
    last_hash      TEXT         NOT NULL UNIQUE CHECK (last_hash ~ '^b3:[0-9a-f]{64}$'),
    pruned_records BIGINT       NOT NULL CHECK (pruned_records >= 1),
    pruned_before  TIMESTAMPTZ  NOT NULL,
    actor          TEXT         NOT NULL,
    created_at     TIMESTAMPTZ  NOT NULL,
    prev_hash      TEXT         NOT NULL UNIQUE CHECK (prev_hash ~ '^b3:[0-9a-f]{64}$'),
    hash           TEXT         NOT NULL UNIQUE CHECK (hash ~ '^b3:[0-9a-f]{64}$')
);

-- Append-only like the audit log itself (same switch, see schema/0005_snapshots.sql).
CREATE TRIGGER snapshot_audit_anchors_no_update_delete
    BEFORE UPDATE OR DELETE ON ingest.snapshot_audit_anchors
    FOR EACH ROW EXECUTE FUNCTION ingest.snapshot_audit_append_only();

CREATE TRIGGER snapshot_audit_anchors_no_truncate
    BEFORE TRUNCATE ON ingest.snapshot_audit_anchors
    FOR EACH STATEMENT EXECUTE FUNCTION ingest.snapshot_audit_append_only();
