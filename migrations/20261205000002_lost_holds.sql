-- Holds a buyer was told about that neither store has (docs/DESIGN.md §3): found when someone
-- reads, commits or releases an id a gate minted (its seal checks) that Redis no longer has and
-- Postgres never recorded. Redis lost the hold before it settled: the buyer cannot have it, and
-- the operator must know. Kept for the audit and the resync report.
CREATE TABLE lost_holds (
    reservation_id UUID PRIMARY KEY,
    sku TEXT NOT NULL REFERENCES skus (sku) ON DELETE CASCADE,
    found_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX lost_holds_sku ON lost_holds (sku);

-- Every hold Postgres refused at settlement, for good. A refusal for a reused idempotency key has
-- no reservation row (the key is taken) and its outbox row goes once Redis has it, so without
-- this a refused hold, once Redis forgot it, would look lost.
CREATE TABLE refused_holds (
    reservation_id UUID PRIMARY KEY,
    sku TEXT NOT NULL REFERENCES skus (sku) ON DELETE CASCADE,
    reason TEXT NOT NULL,
    refused_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

INSERT INTO refused_holds (reservation_id, sku, reason)
SELECT reservation_id, sku, reason FROM rejection_outbox
ON CONFLICT DO NOTHING;
