-- Fewer index entries on the write path of every batch.
--
-- fleet.inbox.processed_at is only read by the bounded age-based expiry
-- (workers/runtime.py), which scans from the oldest rows. Rows arrive in time order, so
-- a BRIN index (one summary per range of pages) serves that scan; a B-tree took one more
-- entry, on its right-most page, for every event of every worker.
DROP INDEX fleet.idx_inbox_processed_at;
CREATE INDEX idx_inbox_processed_at ON fleet.inbox USING brin (processed_at);

-- notify.delivery_log (tenant_id, recorded_at) was read by nothing in the fleet; it cost
-- an entry per delivery recorded. An operator who queries a tenant's delivery history
-- by time can add it back without any change to the workers.
DROP INDEX notify.idx_delivery_log_tenant;
