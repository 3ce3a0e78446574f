-- Notification delivery history (seed 003, schema notify). Rules and channels are
-- owned by the notifier, so there are deliberately no foreign keys to them: an
-- event is never rejected for a parent row this database does not hold.
CREATE SCHEMA IF NOT EXISTS notify;

CREATE TABLE notify.delivery_log (
    delivery_id     UUID         PRIMARY KEY,
    tenant_id       UUID         NOT NULL,
    rule_id         UUID,
    channel_id      UUID         NOT NULL,
    channel_type    VARCHAR(16)  NOT NULL
        CHECK (channel_type IN ('slack', 'teams', 'email', 'webhook')),
    event_id        UUID         NOT NULL,  -- the event that triggered the notification
    status          VARCHAR(50)  NOT NULL CHECK (status IN ('sent', 'failed')),
    attempt         INTEGER      NOT NULL CHECK (attempt >= 1),
    delivered_at    TIMESTAMPTZ,
    failed_at       TIMESTAMPTZ,
    status_code     INTEGER,
    error           TEXT,
    retryable       BOOLEAN,
    latency_ms      INTEGER,
    last_event_id   UUID         NOT NULL,  -- eventId of the notification event recorded
    recorded_at     TIMESTAMPTZ  NOT NULL DEFAULT now()
);

CREATE INDEX idx_delivery_log_tenant ON notify.delivery_log (tenant_id, recorded_at);
