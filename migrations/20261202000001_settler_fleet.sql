-- The settlers that are alive, so that they share the catalogue's safety-net scans instead of
-- each scanning every SKU (docs/DESIGN.md §8). Each settler process beats here every scan;
-- a row older than a few beats is a settler that stopped. Ownership is only about cost: the
-- settlement cursor alone decides what is applied, so two owners or none for a while are safe.
CREATE TABLE settler_fleet (
    settler_id UUID PRIMARY KEY,
    seen_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
