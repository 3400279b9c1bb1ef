-- When a resync paused the sale in Redis (docs/DESIGN.md §10). Set before the pause, cleared
-- when the resync ends either way; a resync killed in between leaves it set, and the settlers'
-- safety-net scan restores the state Postgres records once no resync holds the SKU's lock.
ALTER TABLE skus ADD COLUMN resync_paused_at TIMESTAMPTZ;

CREATE INDEX skus_resync_paused ON skus (sku) WHERE resync_paused_at IS NOT NULL;
