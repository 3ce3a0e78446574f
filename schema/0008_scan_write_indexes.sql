-- scan-metrics: the seed's indexes keep their names, columns and purposes; how each is
-- built is chosen for what a scan costs to write (seven rows a scan, so every index entry
-- is paid seven times per phase-row index and once per scan-row index).
--
-- idx_scan_metrics_replay filters replays, a few percent of scans: a partial index on
-- them alone takes no entry for the other scans. A query filtering replays
-- (WHERE is_replay) reads it as before.
DROP INDEX scanner.idx_scan_metrics_replay;
CREATE INDEX idx_scan_metrics_replay ON scanner.scan_metrics (is_replay) WHERE is_replay;

-- idx_scan_metrics_surface serves surface queries (surface_id = $1), which never look
-- for NULL; most scans have no surface, and now take no entry.
DROP INDEX scanner.idx_scan_metrics_surface;
CREATE INDEX idx_scan_metrics_surface ON scanner.scan_metrics (surface_id)
    WHERE surface_id IS NOT NULL;

-- Scans are recorded within minutes of starting, so started_at follows the table's
-- physical order: a BRIN index (one summary per range of pages) serves time-range
-- queries, where a B-tree took an entry per scan. Tenant + time queries keep the B-tree
-- idx_scan_metrics_tenant_started.
DROP INDEX scanner.idx_scan_metrics_started;
CREATE INDEX idx_scan_metrics_started ON scanner.scan_metrics USING brin (started_at);

-- Ours, not the seed's: retention deletes by age from the oldest rows, and created_at is
-- the insertion time itself.
DROP INDEX scanner.idx_scan_metrics_created;
CREATE INDEX idx_scan_metrics_created ON scanner.scan_metrics USING brin (created_at);

-- Ours, not the seed's: a redelivered or newer outcome now replaces a scan's phases
-- (delete, then insert) instead of upserting them by order, so no statement reads this
-- key any more. The scan row's lock serializes the writers of a scan's phases, and a
-- scan's phases are written only by the statement that wrote its winning outcome.
-- Phase lookups by scan keep idx_execution_phases_metrics.
ALTER TABLE scanner.execution_phases DROP CONSTRAINT uq_execution_phases_metrics_order;
