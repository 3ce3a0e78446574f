-- VEX statements, issuer trust and the consensus derived from them (seed 003, schema
-- vex; SPEC §5.2). vex_raw is append-only: a statement's raw_id is a uuid5 of its
-- content, so re-importing a document inserts nothing (ON CONFLICT DO NOTHING).
-- There are deliberately no foreign keys from statements to issuer_trust: a
-- statement from an issuer without a trust row is stored and then excluded by the
-- consensus as missing provenance, so a trust row added later takes effect at once.
CREATE SCHEMA IF NOT EXISTS vex;

CREATE TABLE vex.vex_raw (
    raw_id            UUID          PRIMARY KEY,
    issuer_id         VARCHAR(255)  NOT NULL,
    component_purl    TEXT          NOT NULL,
    vulnerability_id  VARCHAR(100)  NOT NULL,
    status            VARCHAR(50)   NOT NULL
        CHECK (status IN ('not_affected', 'affected', 'fixed', 'under_investigation')),
    justification     VARCHAR(100),
    impact_statement  TEXT,
    raw_statement     JSONB         NOT NULL,  -- the statement as written (CSAF: an excerpt)
    published_at      TIMESTAMPTZ,             -- NULL: excluded from consensus (no provenance)
    signature         JSONB,                   -- DSSE envelope when the document was signed
    source_document   TEXT,                    -- OpenVEX @id or CSAF tracking id
    created_at        TIMESTAMPTZ   NOT NULL DEFAULT now()
);

CREATE INDEX idx_vex_raw_pair ON vex.vex_raw (component_purl, vulnerability_id);
CREATE INDEX idx_vex_raw_vulnerability ON vex.vex_raw (vulnerability_id);
-- A trust change recomputes every pair the issuer has spoken about.
CREATE INDEX idx_vex_raw_issuer ON vex.vex_raw (issuer_id);

CREATE TABLE vex.issuer_trust (
    issuer_id    VARCHAR(255)  PRIMARY KEY,
    trust_score  NUMERIC(3,2)  NOT NULL CHECK (trust_score >= 0 AND trust_score <= 1),
    priority     INTEGER       NOT NULL,  -- lower is better; the best level present decides
    issuer_type  VARCHAR(50)   NOT NULL DEFAULT 'other'
        CHECK (issuer_type IN ('vendor', 'distro', 'researcher', 'community', 'other')),
    updated_at   TIMESTAMPTZ   NOT NULL DEFAULT now()
);

-- One row per pair with at least one eligible statement; the row is deleted when
-- none is left. consensus_id is a uuid5 of the pair, digest the SHA-256 of the
-- canonical JSON of the other decision columns.
CREATE TABLE vex.consensus (
    consensus_id          UUID          PRIMARY KEY,
    component_purl        TEXT          NOT NULL,
    vulnerability_id      VARCHAR(100)  NOT NULL,
    resolved_status       VARCHAR(50)   NOT NULL
        CHECK (resolved_status IN ('not_affected', 'affected', 'fixed', 'under_investigation')),
    conflict_detected     BOOLEAN       NOT NULL DEFAULT false,
    contributing_vex_ids  UUID[]        NOT NULL,
    confidence            NUMERIC(5,4)  NOT NULL CHECK (confidence >= 0 AND confidence <= 1),
    digest                TEXT          NOT NULL CHECK (digest ~ '^[0-9a-f]{64}$'),
    computed_at           TIMESTAMPTZ   NOT NULL DEFAULT now(),
    -- pkg:type/namespace/name of component_purl (the purl itself when it is not one):
    -- finds the pairs a new less specific statement (no version, no qualifiers) speaks for.
    scope_base            TEXT          NOT NULL,
    CONSTRAINT uq_consensus_pair UNIQUE (component_purl, vulnerability_id)
);

CREATE INDEX idx_consensus_vulnerability ON vex.consensus (vulnerability_id, scope_base);

-- The review queue. A conflict is identified by its pair and the digest of the
-- conflicting result, so recomputing the same result queues nothing new, and a
-- resolved conflict is not reopened until the result itself changes. The worker
-- queues results whose deciding level disagrees (status_disagreement, i.e.
-- consensus.conflict_detected); scope_mismatch and missing_provenance are data
-- quality signals counted by fleet_vex_consensus_conflicts_total only.
CREATE TABLE vex.consensus_conflicts (
    conflict_id       UUID          PRIMARY KEY,
    component_purl    TEXT          NOT NULL,
    vulnerability_id  VARCHAR(100)  NOT NULL,
    reason            VARCHAR(50)   NOT NULL
        CHECK (reason IN ('status_disagreement', 'scope_mismatch', 'missing_provenance')),
    statuses          TEXT[]        NOT NULL,  -- the statuses that disagreed
    digest            TEXT          NOT NULL,
    detected_at       TIMESTAMPTZ   NOT NULL DEFAULT now(),
    resolved_at       TIMESTAMPTZ,             -- NULL: open
    -- Why it closed: 'superseded' when the pair's result changed (a superseded conflict
    -- reopens if that exact result comes back); anything else is a reviewer's verdict.
    resolution        VARCHAR(50),
    CONSTRAINT uq_consensus_conflicts_pair_digest
        UNIQUE (component_purl, vulnerability_id, digest)
);

-- vex_conflict_queue_depth counts open rows; keep that count off a full scan.
CREATE INDEX idx_consensus_conflicts_open
    ON vex.consensus_conflicts (detected_at) WHERE resolved_at IS NULL;

-- Transactional outbox: a vex.consensus.updated event is written in the same
-- transaction as the consensus change and published to vex:consensus after commit.
-- seq is taken when the row is written, after the pair's lock: successive results of
-- one pair get increasing seq, so publishing in seq order never sends a stale one last.
CREATE TABLE vex.consensus_outbox (
    event_id    UUID         PRIMARY KEY,
    seq         BIGINT       GENERATED ALWAYS AS IDENTITY,
    payload     JSONB        NOT NULL,
    created_at  TIMESTAMPTZ  NOT NULL DEFAULT now()
);

CREATE INDEX idx_consensus_outbox_seq ON vex.consensus_outbox (seq);
