-- Signed VEX ingest, the export worker's jobs and the conflict review (docs/exports.md).
--
-- Issuer keys: ed25519 public keys registered per issuer (`fleet vex trust set ISSUER
-- --key FILE`). A signed document (a DSSE envelope, as `vexctl attest` writes) is stored
-- only when a signature by one of its issuer's keys verifies; the key id is recorded in
-- vex_raw.signature. An issuer with require_signature refuses unsigned documents.
ALTER TABLE vex.issuer_trust
    ADD COLUMN require_signature BOOLEAN NOT NULL DEFAULT false;

CREATE TABLE vex.issuer_keys (
    issuer_id   VARCHAR(255)  NOT NULL,
    key_id      TEXT          NOT NULL CHECK (key_id ~ '^[0-9a-f]{64}$'),  -- sha256 of the raw key
    public_key  TEXT          NOT NULL,  -- PEM SubjectPublicKeyInfo, ed25519
    added_at    TIMESTAMPTZ   NOT NULL DEFAULT now(),
    PRIMARY KEY (issuer_id, key_id)
);

-- Documents refused on ingest, kept whole with the reason (the dead letters of `fleet vex
-- import`): nothing a producer sent is lost, and the vex-consensus worker counts new
-- rows in fleet_vex_dsse_verification_failures_total{reason}.
CREATE TABLE vex.ingest_rejections (
    rejection_id     BIGINT        GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    reason           VARCHAR(50)   NOT NULL,
    detail           TEXT          NOT NULL,
    issuer_id        VARCHAR(255),           -- as claimed by the document, when readable
    source           TEXT,                   -- file name given to the importer
    document_sha256  TEXT          NOT NULL CHECK (document_sha256 ~ '^[0-9a-f]{64}$'),
    document         BYTEA         NOT NULL,
    rejected_at      TIMESTAMPTZ   NOT NULL DEFAULT now()
);

-- The review queue: who closed a conflict, why, and the status they decided (when they
-- decided one: it is then also stored as a statement of the review issuer, so the next
-- recompute takes it as input).
ALTER TABLE vex.consensus_conflicts
    ADD COLUMN resolved_by      TEXT,
    ADD COLUMN resolution_note  TEXT,
    ADD COLUMN decided_status   VARCHAR(50)
        CHECK (decided_status IN ('not_affected', 'affected', 'fixed', 'under_investigation'));

-- Export jobs: one row per export.requested eventId, written with the inbox row. The
-- outcome event (export.completed / export.failed) is published after commit; rows with
-- published_at NULL are published again by the worker's background task.
CREATE SCHEMA IF NOT EXISTS export;

CREATE TABLE export.jobs (
    export_id        UUID          PRIMARY KEY,  -- the request's eventId
    tenant_id        UUID          NOT NULL,
    profile          VARCHAR(32)   NOT NULL
        CHECK (profile IN ('vex', 'scan-metrics', 'snapshots')),
    options          JSONB         NOT NULL DEFAULT '{}'::jsonb,
    status           VARCHAR(16)   NOT NULL CHECK (status IN ('completed', 'failed')),
    manifest_key     TEXT,                        -- S3 key of manifest.json
    manifest_sha256  TEXT,
    key_id           TEXT,                        -- the signing key
    file_count       INTEGER,
    bundle_size      BIGINT,
    error            TEXT,
    outcome          JSONB         NOT NULL,      -- the outcome event, as published
    requested_at     TIMESTAMPTZ   NOT NULL,
    finished_at      TIMESTAMPTZ   NOT NULL DEFAULT now(),
    published_at     TIMESTAMPTZ
);

CREATE INDEX idx_export_jobs_unpublished ON export.jobs (finished_at) WHERE published_at IS NULL;
