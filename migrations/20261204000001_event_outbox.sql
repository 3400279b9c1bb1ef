-- Events out (docs/DESIGN.md §11). An event row is inserted in the transaction that records the
-- change it describes, so it exists if and only if Postgres has the change. Relays send each
-- SKU's rows in sequence order and move the SKU's cursor for their sink only over what the sink
-- confirmed.

-- The per-SKU sequence: every transaction that records events for a SKU holds the SKU's
-- inventory row (the settler locks it anyway), takes the next numbers from here and commits
-- them with the events, so the numbers have no gaps and commit in order.
ALTER TABLE inventory ADD COLUMN last_event_seq BIGINT NOT NULL DEFAULT 0;

-- When the sale was first loaded into the gate (prewarm): `sale.opened`.
ALTER TABLE skus ADD COLUMN launched_at TIMESTAMPTZ;

CREATE TABLE event_outbox (
    sku         TEXT NOT NULL REFERENCES skus (sku) ON DELETE CASCADE,
    sequence    BIGINT NOT NULL CONSTRAINT event_outbox_sequence_positive CHECK (sequence > 0),
    -- The event's stable id (UUID v7): the AMQP message_id and the webhook-id. Nothing looks an
    -- event up by it, so it has no index: one index less to write per event.
    id          UUID NOT NULL,
    kind        TEXT NOT NULL,
    -- The message body exactly as every sink sends it.
    body        TEXT NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- How a relay reads a SKU's events after its cursor, and the pull API a page.
    PRIMARY KEY (sku, sequence)
);

-- Pruning after the retention period. Rows arrive in time order, so a BRIN index (a few pages
-- for millions of rows, next to nothing to maintain) finds the old ones.
CREATE INDEX event_outbox_recorded ON event_outbox USING brin (recorded_at);

-- How far each sink has confirmed each SKU's events. A relay only ever sends a SKU's events in
-- order and stops at the first the sink did not confirm, so one number per SKU and sink says
-- what is sent: marking a batch is one row per SKU, not one per event, and what is pending is
-- `last_event_seq - sent_through`.
CREATE TABLE outbox_cursor (
    sku          TEXT NOT NULL REFERENCES skus (sku) ON DELETE CASCADE,
    sink         TEXT NOT NULL CONSTRAINT outbox_cursor_sink_known CHECK (sink IN ('amqp', 'webhook')),
    sent_through BIGINT NOT NULL DEFAULT 0,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (sku, sink)
);

-- Events the webhook kept refusing for FLASHGATE_WEBHOOK_RETRY_FOR: skipped, left for the pull API.
CREATE TABLE webhook_given_up (
    event_id   UUID PRIMARY KEY,
    sku        TEXT NOT NULL,
    sequence   BIGINT NOT NULL,
    reason     TEXT NOT NULL,
    given_up_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
