-- Scan metrics and Time-to-Evidence (SPEC §5.1, seed 000): one row per scan in
-- scanner.scan_metrics, one row per execution phase in scanner.execution_phases, the
-- views scanner.scan_tte and scanner.tte_stats and the function scanner.tte_percentile.
--
-- Every column, type and index name of the seed is kept as it is. The worker
-- (workers/scan_metrics) decides what a row converges to; the constraints here are the
-- last line of defence when a writer gets it wrong.
--
-- Durations are whole milliseconds, rounded down: floor((finished_at - started_at) in ms).
--
-- SLOs: TTE p50 < 120 s and p95 < 300 s. Only completed scans that are not replays count
-- towards TTE statistics: failed scans produced no evidence, and a replay re-runs an old
-- scan to prove determinism, so its timing says nothing about what a user waits for.
CREATE SCHEMA IF NOT EXISTS scanner;

CREATE TABLE scanner.scan_metrics (
    metrics_id            UUID         PRIMARY KEY,       -- uuid5 of scan_id (any order, same row)
    scan_id               UUID         NOT NULL UNIQUE,
    tenant_id             UUID         NOT NULL,
    surface_id            UUID,
    artifact_digest       TEXT         NOT NULL,
    artifact_type         TEXT         NOT NULL
        CHECK (artifact_type IN ('oci_image', 'tarball', 'directory', 'other')),
    replay_manifest_hash  TEXT,
    findings_sha256       TEXT,
    vex_bundle_sha256     TEXT,
    proof_bundle_sha256   TEXT,
    sbom_sha256           TEXT,
    policy_digest         TEXT,
    feed_snapshot_id      TEXT,
    started_at            TIMESTAMPTZ,                     -- NULL until an outcome arrives
    finished_at           TIMESTAMPTZ,                     -- completed scans only
    total_duration_ms     INT GENERATED ALWAYS AS (
        floor(extract(epoch FROM (finished_at - started_at)) * 1000)::int
    ) STORED,                                              -- TTE; NULL unless completed
    t_ingest_ms           INT,                             -- per-phase sums; NULL: phase not run
    t_analyze_ms          INT,
    t_reachability_ms     INT,
    t_vex_ms              INT,
    t_sign_ms             INT,
    t_publish_ms          INT,
    package_count         INT,
    finding_count         INT,
    vex_decision_count    INT,
    scanner_version       TEXT,
    scanner_image_digest  TEXT,
    is_replay             BOOLEAN      NOT NULL DEFAULT false,
    created_at            TIMESTAMPTZ  NOT NULL DEFAULT now(),  -- retention ages rows from here

    -- Columns beyond the seed. The seed only describes completed scans; the stream also
    -- carries scan.submitted and scan.failed, which must be recorded without inventing
    -- a finished_at (that would put failed scans into TTE statistics) and must converge
    -- in any arrival order, which needs to know which event each part of the row came from.
    status                TEXT         NOT NULL
        CHECK (status IN ('submitted', 'completed', 'failed')),
    submitted_at          TIMESTAMPTZ,                     -- from scan.submitted
    submitted_event_id    UUID,                            -- the scan.submitted recorded
    failed_at             TIMESTAMPTZ,                     -- failed scans only
    failed_phase          TEXT,
    error_code            TEXT,
    error_message         TEXT,
    retryable             BOOLEAN,
    outcome_event_id      UUID,                            -- the scan.completed/failed recorded
    updated_at            TIMESTAMPTZ  NOT NULL DEFAULT now(),

    CONSTRAINT scan_metrics_outcome_complete CHECK (
        CASE status
            WHEN 'submitted' THEN outcome_event_id IS NULL AND finished_at IS NULL
            WHEN 'completed' THEN outcome_event_id IS NOT NULL AND started_at IS NOT NULL
                AND finished_at IS NOT NULL AND failed_at IS NULL AND error_code IS NULL
            ELSE outcome_event_id IS NOT NULL AND started_at IS NOT NULL
                AND finished_at IS NULL AND failed_at IS NOT NULL AND error_code IS NOT NULL
        END
    ),
    CONSTRAINT scan_metrics_durations_not_negative CHECK (
        finished_at >= started_at AND failed_at >= started_at
        AND t_ingest_ms >= 0 AND t_analyze_ms >= 0 AND t_reachability_ms >= 0
        AND t_vex_ms >= 0 AND t_sign_ms >= 0 AND t_publish_ms >= 0
    )
);

-- The seed's indexes, names and columns exactly.
CREATE INDEX idx_scan_metrics_tenant ON scanner.scan_metrics (tenant_id);
CREATE INDEX idx_scan_metrics_artifact ON scanner.scan_metrics (artifact_digest);
CREATE INDEX idx_scan_metrics_started ON scanner.scan_metrics (started_at);
CREATE INDEX idx_scan_metrics_surface ON scanner.scan_metrics (surface_id);
CREATE INDEX idx_scan_metrics_replay ON scanner.scan_metrics (is_replay);
CREATE INDEX idx_scan_metrics_tenant_started ON scanner.scan_metrics (tenant_id, started_at);
-- Retention deletes by age in batches (workers/snapshot_retention/service.py).
CREATE INDEX idx_scan_metrics_created ON scanner.scan_metrics (created_at);

CREATE TABLE scanner.execution_phases (
    id             BIGSERIAL    PRIMARY KEY,
    metrics_id     UUID         NOT NULL
        REFERENCES scanner.scan_metrics (metrics_id) ON DELETE CASCADE,
    phase_name     TEXT         NOT NULL
        CHECK (phase_name IN ('ingest', 'analyze', 'reachability', 'vex', 'sign', 'publish',
                              'other')),
    phase_order    INT          NOT NULL CHECK (phase_order >= 0),
    started_at     TIMESTAMPTZ  NOT NULL,
    finished_at    TIMESTAMPTZ  NOT NULL CHECK (finished_at >= started_at),
    duration_ms    INT GENERATED ALWAYS AS (
        floor(extract(epoch FROM (finished_at - started_at)) * 1000)::int
    ) STORED,
    success        BOOLEAN      NOT NULL DEFAULT true,
    error_code     TEXT,
    error_message  TEXT,
    phase_metrics  JSONB        NOT NULL DEFAULT '{}'::jsonb,
    -- A scan's phases are keyed by their order; a redelivered or newer outcome updates
    -- them in place.
    CONSTRAINT uq_execution_phases_metrics_order UNIQUE (metrics_id, phase_order)
);

CREATE INDEX idx_execution_phases_metrics ON scanner.execution_phases (metrics_id);
CREATE INDEX idx_execution_phases_name ON scanner.execution_phases (phase_name);

-- TTE of every completed scan with each phase's share of it, in percent rounded to two
-- decimals (NULL when the phase did not run or the TTE is 0 ms). Replays are included
-- and flagged (is_replay) so callers choose; SLO figures exclude them.
CREATE VIEW scanner.scan_tte AS
SELECT
    metrics_id,
    scan_id,
    tenant_id,
    surface_id,
    artifact_digest,
    started_at,
    finished_at,
    is_replay,
    total_duration_ms AS tte_ms,
    round(total_duration_ms / 1000.0, 3) AS tte_seconds,
    round(100.0 * t_ingest_ms / NULLIF(total_duration_ms, 0), 2) AS ingest_percent,
    round(100.0 * t_analyze_ms / NULLIF(total_duration_ms, 0), 2) AS analyze_percent,
    round(100.0 * t_reachability_ms / NULLIF(total_duration_ms, 0), 2) AS reachability_percent,
    round(100.0 * t_vex_ms / NULLIF(total_duration_ms, 0), 2) AS vex_percent,
    round(100.0 * t_sign_ms / NULLIF(total_duration_ms, 0), 2) AS sign_percent,
    round(100.0 * t_publish_ms / NULLIF(total_duration_ms, 0), 2) AS publish_percent
FROM scanner.scan_metrics
WHERE status = 'completed';

-- Hourly TTE statistics per tenant over completed, non-replay scans, bucketed by the UTC
-- hour in which the scan started.
--   tte_p50_ms, tte_p95_ms: percentile_cont, i.e. linear interpolation between the two
--       nearest ranks (the same as Python's statistics.quantiles(method='inclusive')).
--   slo_p50_compliance_percent: percent of the bucket's scans whose TTE is at most
--       120 000 ms; the p50 SLO (p50 < 120 s) holds while this is above 50.
--   slo_p95_compliance_percent: percent of the bucket's scans whose TTE is at most
--       300 000 ms; the p95 SLO (p95 < 300 s) holds while this is at least 95.
--   "At most" matches the le="120"/le="300" buckets of fleet_scan_tte_seconds, so the
--   dashboards and this view agree; both percents are rounded to two decimals.
CREATE VIEW scanner.tte_stats AS
SELECT
    tenant_id,
    date_trunc('hour', started_at, 'UTC') AS hour_bucket,
    count(*) AS scan_count,
    round(avg(total_duration_ms), 2) AS tte_avg_ms,
    percentile_cont(0.5) WITHIN GROUP (ORDER BY total_duration_ms) AS tte_p50_ms,
    percentile_cont(0.95) WITHIN GROUP (ORDER BY total_duration_ms) AS tte_p95_ms,
    round(100.0 * count(*) FILTER (WHERE total_duration_ms <= 120000) / count(*), 2)
        AS slo_p50_compliance_percent,
    round(100.0 * count(*) FILTER (WHERE total_duration_ms <= 300000) / count(*), 2)
        AS slo_p95_compliance_percent
FROM scanner.scan_metrics
WHERE status = 'completed' AND NOT is_replay
GROUP BY tenant_id, date_trunc('hour', started_at, 'UTC');

-- The TTE percentile (0..1, linear interpolation) in milliseconds over completed,
-- non-replay scans of a tenant that started at or after p_since. A NULL tenant means
-- every tenant, a NULL p_since all time; no matching scan gives NULL.
CREATE FUNCTION scanner.tte_percentile(
    p_tenant_id UUID,
    p_percentile DOUBLE PRECISION,
    p_since TIMESTAMPTZ
) RETURNS DOUBLE PRECISION
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT percentile_cont(p_percentile) WITHIN GROUP (ORDER BY total_duration_ms)
    FROM scanner.scan_metrics
    WHERE status = 'completed'
      AND NOT is_replay
      AND (p_tenant_id IS NULL OR tenant_id = p_tenant_id)
      AND (p_since IS NULL OR started_at >= p_since)
$$;
