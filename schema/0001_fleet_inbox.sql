-- The runtime's inbox: one row per (group, eventId) handled, written in the same
-- transaction as the handler's effects, so a redelivered event is recognised.
CREATE SCHEMA IF NOT EXISTS fleet;

CREATE TABLE fleet.inbox (
    group_name   TEXT        NOT NULL,
    event_id     UUID        NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- event_id first: random UUIDs spread inserts and compare faster than the text.
    PRIMARY KEY (event_id, group_name)
);

CREATE INDEX idx_inbox_processed_at ON fleet.inbox (processed_at);
