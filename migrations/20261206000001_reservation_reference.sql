-- The caller's own handle on a hold: its cart or order id and a small JSON object, kept with the
-- reservation so that the order system can tie a hold to its order without a table of its own.
-- Nullable without a default: adding them rewrites no row.
ALTER TABLE reservations
    ADD COLUMN reference text CHECK (char_length(reference) BETWEEN 1 AND 128),
    ADD COLUMN metadata jsonb CHECK (jsonb_typeof(metadata) = 'object');
