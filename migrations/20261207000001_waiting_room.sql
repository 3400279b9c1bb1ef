-- The waiting room of a sale (opt-in): whether buyers must take a place in line before they may
-- reserve, how many places are admitted per second, and for how long an admitted place may
-- reserve. The line itself lives in Redis beside the stock; these are its settings, kept here so
-- that a prewarm loads them with the sale.
ALTER TABLE skus
    ADD COLUMN waiting_room boolean NOT NULL DEFAULT false,
    ADD COLUMN admit_per_second integer NOT NULL DEFAULT 100
        CHECK (admit_per_second BETWEEN 1 AND 100000),
    ADD COLUMN admission_window_seconds integer NOT NULL DEFAULT 60
        CHECK (admission_window_seconds BETWEEN 1 AND 86400);
