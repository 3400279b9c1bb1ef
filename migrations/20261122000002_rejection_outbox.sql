-- Holds Postgres refused (docs/DESIGN.md §1), waiting to be written back to Redis. The row is inserted
-- in the settler's batch transaction and deleted once Redis has the rejection, so a crash
-- between the commit and the write-back loses nothing: the next settler pass retries it.
CREATE TABLE rejection_outbox (
    reservation_id  UUID PRIMARY KEY,
    sku             TEXT NOT NULL REFERENCES skus (sku) ON DELETE CASCADE,
    buyer_id        TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    quantity        INTEGER NOT NULL,
    reason          TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX rejection_outbox_sku ON rejection_outbox (sku);
