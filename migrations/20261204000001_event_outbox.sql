-- Events out (docs/DESIGN.md §11). An event row is inserted in the transaction that records the
-- change it describes, so it exists if and only if Postgres has the change. Relays publish the
-- rows in per-SKU sequence order and mark each sink's column only after the sink confirmed.

-- The per-SKU sequence: every transaction that records events for a SKU holds the SKU's
-- inventory row (the settler locks it anyway), takes the next numbers from here and commits
-- them with the events, so the numbers have no gaps and commit in order.
ALTER TABLE inventory ADD COLUMN last_event_seq BIGINT NOT NULL DEFAULT 0;

-- When the sale was first loaded into the gate (prewarm): `sale.opened`.
ALTER TABLE skus ADD COLUMN launched_at TIMESTAMPTZ;

CREATE TABLE event_outbox (
    -- The event's stable id (UUID v7): the AMQP message_id and the webhook-id.
    id             UUID PRIMARY KEY,
    -- Insertion order across SKUs, for fair claiming; within a SKU it follows `sequence`.
    position       BIGINT GENERATED ALWAYS AS IDENTITY,
    sku            TEXT NOT NULL REFERENCES skus (sku) ON DELETE CASCADE,
    sequence       BIGINT NOT NULL CONSTRAINT event_outbox_sequence_positive CHECK (sequence > 0),
    kind           TEXT NOT NULL,
    -- The message body exactly as every sink sends it.
    body           TEXT NOT NULL,
    occurred_at    TIMESTAMPTZ NOT NULL,
    recorded_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Set once the broker confirmed the message (or its dead letter).
    published_at   TIMESTAMPTZ,
    -- Set once the webhook answered 2xx, or its retry period ran out (see webhook_gave_up).
    webhook_at     TIMESTAMPTZ,
    webhook_gave_up BOOLEAN NOT NULL DEFAULT false,
    CONSTRAINT event_outbox_sequence_unique UNIQUE (sku, sequence)
);

-- What each relay still has to send, oldest first; both stay small in normal operation.
CREATE INDEX event_outbox_unpublished ON event_outbox (position) WHERE published_at IS NULL;
CREATE INDEX event_outbox_undelivered ON event_outbox (position) WHERE webhook_at IS NULL;
-- Pruning after the retention period.
CREATE INDEX event_outbox_recorded ON event_outbox (recorded_at);
