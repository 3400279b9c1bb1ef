-- reservations_sku_buyer (sku, buyer_id) is a prefix of the unique index
-- reservations_idempotency_unique (sku, buyer_id, idempotency_key): every query that groups or
-- filters a SKU's reservations by buyer reads that one just as well. The settler paid for the
-- second one on every hold it inserted and every commit, release or expiry it applied (a status
-- change is never a HOT update: status is indexed), ~11 % of a 500-hold insert.
DROP INDEX IF EXISTS reservations_sku_buyer;
