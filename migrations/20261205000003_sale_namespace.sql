-- The Redis namespace a sale was launched in (docs/DESIGN.md §10). A process configured with
-- another FLASHGATE_REDIS_NAMESPACE finds nothing of the sale in Redis; a prewarm or resync from
-- it would load a second live copy of the sale and sell its units twice, so both refuse unless
-- forced. NULL for sales launched before this was recorded: not checked.
ALTER TABLE skus ADD COLUMN redis_namespace TEXT;
