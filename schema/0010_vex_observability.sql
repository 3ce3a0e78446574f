-- vex-consensus observability (seed 004): the conflict queue per tenant and a record of
-- issuer trust changes.
--
-- A conflict belongs to the tenant whose event caused the recompute that found it
-- (imports and trust changes: the system tenant, all zeros), so the alert "conflict
-- queue depth > 500 for any tenant" can be evaluated. Existing rows go to the system
-- tenant.
ALTER TABLE vex.consensus_conflicts
    ADD COLUMN tenant_id UUID NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000';

-- The per-tenant depth counts open rows by tenant; keep it off a full scan.
CREATE INDEX idx_consensus_conflicts_open_tenant
    ON vex.consensus_conflicts (tenant_id) WHERE resolved_at IS NULL;

-- One row per issuer whose trust row changed (fleet vex trust set), written in the
-- transaction of the change and its recompute: an audit record (scores and priorities
-- before and after) and the hand-over of its metrics to a running worker. The CLI that
-- makes the change is not scraped, so a vex-consensus worker claims unobserved rows
-- (observed_at IS NULL, FOR UPDATE SKIP LOCKED: each row counted once across replicas)
-- and exports fleet_vex_issuer_trust_changes_total{issuer,tier} and the recompute's
-- fleet_vex_recompute_duration_seconds{reason}.
CREATE TABLE vex.trust_changes (
    change_id          BIGINT        GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recompute_id       UUID          NOT NULL,  -- the changes one recompute answered
    issuer_id          VARCHAR(255)  NOT NULL,
    issuer_type        VARCHAR(50)   NOT NULL,  -- the trust tier after the change
    reason             VARCHAR(50)   NOT NULL
        CHECK (reason IN ('issuer_update', 'policy_knob')),
    score_before       NUMERIC(3,2),            -- NULL: the issuer had no trust row
    score_after        NUMERIC(3,2)  NOT NULL,
    priority_before    INTEGER,
    priority_after     INTEGER       NOT NULL,
    recompute_seconds  DOUBLE PRECISION NOT NULL,
    changed_at         TIMESTAMPTZ   NOT NULL DEFAULT now(),
    observed_at        TIMESTAMPTZ              -- NULL: not yet in a worker's metrics
);

CREATE INDEX idx_trust_changes_unobserved
    ON vex.trust_changes (change_id) WHERE observed_at IS NULL;
