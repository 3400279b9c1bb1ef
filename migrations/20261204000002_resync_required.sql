-- A sale the gate must not sell from until a resync (docs/DESIGN.md §2, fencing): the settler
-- found its event stream no longer holding the settlement cursor (Redis lost data, was rolled
-- back or failed over to a replica that lagged). Set by the settler, cleared by the resync.
ALTER TABLE skus ADD COLUMN resync_required TEXT;
ALTER TABLE skus ADD COLUMN resync_required_at TIMESTAMPTZ;

-- /readyz lists them every second: an index of the few, not a scan of the catalogue.
CREATE INDEX skus_resync_required ON skus (sku) WHERE resync_required IS NOT NULL;
