-- flashgate's authoritative record (docs/DESIGN.md §1). The constraints hold the invariants even if
-- the code is wrong: stock can never go negative, the three buckets always sum to the total,
-- and one (sku, buyer, idempotency key) yields at most one reservation.

CREATE TABLE skus (
    sku              TEXT PRIMARY KEY
                     CONSTRAINT skus_sku_format CHECK (sku ~ '^[A-Za-z0-9._-]{1,64}$'),
    -- A small stable number per SKU, embedded in reservation ids so that any gate instance can
    -- route a reservation id to the SKU's Redis slot (see domain::ReservationId).
    num              INTEGER GENERATED ALWAYS AS IDENTITY
                     CONSTRAINT skus_num_unique UNIQUE,
    name             TEXT NOT NULL,
    price            NUMERIC NOT NULL CONSTRAINT skus_price_nonnegative CHECK (price >= 0),
    currency         CHAR(3) NOT NULL,
    per_buyer_limit  INTEGER NOT NULL CONSTRAINT skus_limit_positive CHECK (per_buyer_limit > 0),
    hold_ttl_seconds INTEGER NOT NULL CONSTRAINT skus_ttl_positive CHECK (hold_ttl_seconds > 0),
    starts_at        TIMESTAMPTZ,
    ends_at          TIMESTAMPTZ,
    state            TEXT NOT NULL DEFAULT 'open'
                     CONSTRAINT skus_state_known CHECK (state IN ('open', 'paused', 'closed')),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT skus_window_ordered CHECK (starts_at IS NULL OR ends_at IS NULL OR starts_at < ends_at)
);

CREATE TABLE inventory (
    sku       TEXT PRIMARY KEY REFERENCES skus (sku) ON DELETE CASCADE,
    total     BIGINT NOT NULL,
    available BIGINT NOT NULL,
    reserved  BIGINT NOT NULL DEFAULT 0,
    sold      BIGINT NOT NULL DEFAULT 0,
    -- Invariant 1 (docs/DESIGN.md §7).
    CONSTRAINT inventory_available_nonnegative CHECK (available >= 0),
    CONSTRAINT inventory_reserved_nonnegative CHECK (reserved >= 0),
    CONSTRAINT inventory_sold_nonnegative CHECK (sold >= 0),
    CONSTRAINT inventory_balanced CHECK (available + reserved + sold = total)
);

CREATE TABLE reservations (
    id              UUID PRIMARY KEY,
    sku             TEXT NOT NULL REFERENCES skus (sku) ON DELETE CASCADE,
    buyer_id        TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    quantity        INTEGER NOT NULL CONSTRAINT reservations_quantity_positive CHECK (quantity > 0),
    -- The price the hold was sold at, kept even if the SKU's price changes later.
    unit_price      NUMERIC NOT NULL,
    total           NUMERIC NOT NULL,
    currency        CHAR(3) NOT NULL,
    status          TEXT NOT NULL
                    CONSTRAINT reservations_status_known
                    CHECK (status IN ('held', 'committed', 'released', 'expired', 'rejected')),
    created_at      TIMESTAMPTZ NOT NULL,
    expires_at      TIMESTAMPTZ NOT NULL,
    -- The stream id of the event that created the row, and of the last event applied to it.
    created_event   TEXT NOT NULL,
    last_event      TEXT NOT NULL,
    settled_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT reservations_total_exact CHECK (total = unit_price * quantity),
    -- Invariant 3 (docs/DESIGN.md §7).
    CONSTRAINT reservations_idempotency_unique UNIQUE (sku, buyer_id, idempotency_key)
);

CREATE INDEX reservations_sku_status ON reservations (sku, status);
CREATE INDEX reservations_sku_buyer ON reservations (sku, buyer_id);

-- Exactly-once, in-order settlement (docs/DESIGN.md §2): a settler batch locks this row, checks it
-- still names the event it read from, applies the batch and advances it in one transaction.
CREATE TABLE settlement_cursor (
    sku           TEXT PRIMARY KEY REFERENCES skus (sku) ON DELETE CASCADE,
    last_event_id TEXT NOT NULL DEFAULT '0-0',
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
